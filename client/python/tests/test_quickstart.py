"""examples/python/quickstart.py runs against a real server, and README.md
shows it as it is."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
QUICKSTART = REPO / "examples" / "python" / "quickstart.py"


def test_quickstart_runs(server):
    r = subprocess.run([sys.executable, str(QUICKSTART), server.address], capture_output=True, text=True,
                       timeout=300, env=os.environ.copy())
    assert r.returncode == 0, r.stderr
    assert "quickstart (4096, 4096) e4m3 row 16793600 bytes resident" in r.stdout
    err = float(re.search(r"relative error against float64: (\S+)", r.stdout).group(1))
    assert 0 < err < 0.05  # E4M3 with row scales: a few percent at most, never exact
    assert "streamed (256, 4096)" in r.stdout
    assert "as expected: NOT_FOUND" in r.stdout


def test_readme_mirrors_quickstart():
    body = QUICKSTART.read_text().split("# --- README begin\n")[1].split("# --- README end\n")[0]
    readme = (REPO / "README.md").read_text()
    assert body in readme, "README.md's Python quickstart differs from examples/python/quickstart.py"
