"""Fixtures: real plume-server processes on 127.0.0.1:0.

PLUME_SERVER names the plume-server binary (ctest sets it to the one this
build made). Without it, or when it is not executable, the session stops
with an error: the suite never skips its way to success.
"""
from __future__ import annotations

import json
import re
import os
import signal
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

import plume  # noqa: E402


def pytest_configure(config: pytest.Config) -> None:
    binary = os.environ.get("PLUME_SERVER", "")
    if not binary:
        raise pytest.UsageError("PLUME_SERVER is not set: it must name the plume-server binary to test "
                                "against (ctest -L python sets it)")
    if not (os.path.isfile(binary) and os.access(binary, os.X_OK)):
        raise pytest.UsageError(f"PLUME_SERVER={binary} is not an executable file")


class Server:
    """A plume-server child process; `address` is 127.0.0.1:<its port>."""

    def __init__(self, *args: str, cwd: Path):
        self.dir = Path(tempfile.mkdtemp(prefix="plume-py-", dir=cwd))
        ready = self.dir / "ready.json"
        self.log_path = self.dir / "server.log"
        cmd = [os.environ["PLUME_SERVER"], "--grpc_address=127.0.0.1:0",
               "--metrics_address=127.0.0.1:0", f"--ready_file={ready}",
               f"--store_dir={self.dir / 'store'}", "--log_level=warn", *args]
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60  # an ASan debug build starts slowly
        while not ready.exists() or not ready.read_text().strip().endswith("}"):
            if self.proc.poll() is not None:
                raise RuntimeError(f"plume-server exited with {self.proc.returncode}:\n{self.log()}")
            if time.monotonic() > deadline:
                self.proc.kill()
                raise RuntimeError(f"plume-server wrote no ready file in 60 s:\n{self.log()}")
            time.sleep(0.02)
        self.port = json.loads(ready.read_text())["grpc_port"]
        self.address = f"127.0.0.1:{self.port}"

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")[-4000:]

    def stop(self) -> int:
        """SIGTERM (a graceful drain), then the exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode


@pytest.fixture(scope="session")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("plume")


@pytest.fixture(scope="session")
def start_server(workdir: Path):
    """start_server(*flags) -> Server; every server is stopped at the end of
    the session and must exit 0 (a crash or a sanitizer report fails)."""
    servers: list[Server] = []

    def start(*args: str) -> Server:
        s = Server(*args, cwd=workdir)
        servers.append(s)
        return s

    yield start
    bad = []
    for s in servers:
        rc = s.stop()
        if rc != 0:
            bad.append(f"plume-server {s.address} exited with {rc}:\n{s.log()}")
    assert not bad, "\n".join(bad)


@pytest.fixture(scope="session")
def server(start_server) -> Server:
    return start_server()


@pytest.fixture()
def client(server: Server):
    with plume.Client(server.address) as c:
        yield c


@pytest.fixture()
def rng(request: pytest.FixtureRequest) -> np.random.Generator:
    """Seeded per test (from its name), so every run sees the same inputs."""
    return np.random.default_rng(zlib.crc32(request.node.nodeid.encode()))


_counter = iter(range(1 << 30))


@pytest.fixture()
def name(request: pytest.FixtureRequest) -> str:
    """A name no other test uses on the shared server."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", f"{request.node.name[:40]}-{next(_counter)}")
