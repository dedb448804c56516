"""`python -m pip install ./client/python` as docs/api.md shows it: into a venv
made with --system-site-packages, offline, stubs generated from proto/."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[3]


def test_pip_install_into_a_venv(tmp_path, server):
    # A copy of the two directories the build reads, so the source tree gets
    # no build/ or .egg-info of pip's in-tree build.
    src = tmp_path / "repo"
    shutil.copytree(REPO / "client" / "python", src / "client" / "python",
                    ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__", "tests"))
    shutil.copytree(REPO / "proto", src / "proto")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True)
    py = venv / "bin" / "python"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # not the build tree's package
    r = subprocess.run([str(py), "-m", "pip", "install", "--no-index", "--disable-pip-version-check",
                        str(src / "client" / "python")], capture_output=True, text=True, env=env,
                       cwd=tmp_path, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    probe = (
        "import sys, numpy as np, plume, plume.aio, plume.v1.plume_pb2 as pb\n"
        "assert plume.__file__.startswith(sys.prefix), plume.__file__\n"
        "assert pb.__file__.startswith(sys.prefix), pb.__file__\n"
        "with plume.Client(sys.argv[1]) as c:\n"
        "    c.upload('installed', np.eye(16, dtype=np.float32), scale='none')\n"
        "    print(c.gemv('installed', np.arange(16, dtype=np.float32)).tolist())\n"
        "    c.delete('installed')\n")
    r = subprocess.run([str(py), "-c", probe, server.address], capture_output=True, text=True, env=env,
                       cwd=tmp_path, timeout=120)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == np.arange(16).tolist()  # the identity (scale none: 1.0 is a code) times 0..15
