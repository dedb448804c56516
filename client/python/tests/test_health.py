"""health(): SERVING, NOT_SERVING while draining, and its hand-made codec."""
from __future__ import annotations

import signal
import threading
import time

import numpy as np
import pytest

import plume
from plume import _common


def test_health_codec():
    assert _common.health_request("") == b""
    assert _common.health_request("plume.v1.MatrixService") == b"\x0a\x16plume.v1.MatrixService"
    assert _common.health_status(b"\x08\x01") == 1
    assert _common.health_status(b"\x08\x02") == 2
    assert _common.health_status(b"") == 0
    # Unknown fields of every wire type are skipped.
    assert _common.health_status(b"\x12\x03abc\x19" + b"\0" * 8 + b"\x25\0\0\0\0\x08\x03") == 3
    assert _common.health_status(b"\x10\xac\x02\x08\x01") == 1  # a multi-byte varint first
    for bad in (b"\x08", b"\x12\x05ab", b"\x0b", b"\x08\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01"):
        with pytest.raises(ValueError, match="malformed"):
            _common.health_status(bad)


def test_not_serving_while_draining(start_server, rng):
    """SIGTERM turns health NOT_SERVING while a stream still runs (the drain)."""
    s = start_server("--drain_timeout=20s")
    with plume.Client(s.address) as c:
        assert c.health() is True
        with pytest.raises(plume.NotFound):  # a service the server does not report on
            c.health("no.such.Service")
        c.upload("w", rng.standard_normal((8, 16)).astype(np.float32))
        release = threading.Event()

        def source():
            yield np.ones(16, np.float32)
            release.wait(20)

        it = c.gemv_stream("w", source())
        assert next(it).shape == (8,)  # the stream is open and served
        s.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 10
        seen = None
        while time.monotonic() < deadline:
            try:
                seen = c.health(timeout=2)
            except plume.Unavailable:
                seen = "unavailable"
            if seen is not True:
                break
            time.sleep(0.05)
        release.set()
        it.close()
    assert seen is False, f"health during the drain: {seen!r}"
    assert s.proc.wait(timeout=30) == 0
