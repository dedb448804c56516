"""PlumeError: one subclass per gRPC code, each carrying the server's message."""
from __future__ import annotations

import socket
import time

import grpc
import numpy as np
import pytest

import plume
from plume import _errors


def test_every_code_has_its_class():
    expected = {
        "CANCELLED": plume.Cancelled, "UNKNOWN": plume.Unknown, "INVALID_ARGUMENT": plume.InvalidArgument,
        "DEADLINE_EXCEEDED": plume.DeadlineExceeded, "NOT_FOUND": plume.NotFound,
        "ALREADY_EXISTS": plume.AlreadyExists, "PERMISSION_DENIED": plume.PermissionDenied,
        "RESOURCE_EXHAUSTED": plume.ResourceExhausted, "FAILED_PRECONDITION": plume.FailedPrecondition,
        "ABORTED": plume.Aborted, "OUT_OF_RANGE": plume.OutOfRange, "UNIMPLEMENTED": plume.Unimplemented,
        "INTERNAL": plume.Internal, "UNAVAILABLE": plume.Unavailable, "DATA_LOSS": plume.DataLoss,
        "UNAUTHENTICATED": plume.Unauthenticated,
    }
    for code in grpc.StatusCode:
        if code == grpc.StatusCode.OK:
            continue
        cls = expected.pop(code.name)
        for key in (code, code.value[0]):  # a grpc.StatusCode, or a stream item's integer
            e = _errors.from_code(key, "the server's words")
            assert type(e) is cls and isinstance(e, plume.PlumeError)
            assert e.code == code and e.message == "the server's words"
            assert str(e) == f"{code.name}: the server's words"
    assert not expected
    assert type(_errors.from_code(99, "x")) is plume.Unknown
    # The familiar builtins still catch the obvious ones.
    assert issubclass(plume.NotFound, LookupError) and issubclass(plume.InvalidArgument, ValueError)
    assert issubclass(plume.DeadlineExceeded, TimeoutError) and issubclass(plume.Unavailable, ConnectionError)


def test_not_found(client):
    with pytest.raises(plume.NotFound) as e:
        client.gemv("absent-matrix", np.ones(4, np.float32))
    assert e.value.code == grpc.StatusCode.NOT_FOUND and "absent-matrix" in e.value.message


def test_invalid_argument(client, rng, name):
    client.upload(name, rng.standard_normal((8, 32)).astype(np.float32))
    with pytest.raises(plume.InvalidArgument, match="33"):
        client.gemv(name, np.ones(33, np.float32))
    with pytest.raises(plume.InvalidArgument, match="name"):
        client.upload("bad name!", np.ones((2, 2), np.float32))


def test_already_exists(client, rng, name):
    w = rng.standard_normal((4, 16)).astype(np.float32)
    client.upload(name, w)
    with pytest.raises(plume.AlreadyExists, match=name):
        client.upload(name, w)


def test_resource_exhausted(start_server, rng):
    s = start_server("--memory_budget_bytes=1048576", "--max_vectors_per_request=4")
    with plume.Client(s.address) as c:
        c.upload("small", rng.standard_normal((64, 64)).astype(np.float32))
        with pytest.raises(plume.ResourceExhausted) as e:
            c.upload("big", rng.standard_normal((2048, 1024)).astype(np.float32))
        assert e.value.message  # the server says what did not fit
        assert "big" not in {m.name for m in c.list()}
        with pytest.raises(plume.InvalidArgument, match="max_vectors_per_request"):
            c.gemv("small", np.ones((5, 64), np.float32))


def test_deadline_exceeded(client, rng, name):
    """gRPC keeps deadlines to the millisecond: a 1 ms deadline on a call that
    sends 4 MiB and multiplies 256 vectors by a 4 Mi-element matrix, and a
    stream whose source outlives its 0.2 s deadline."""
    client.upload(name, rng.standard_normal((1024, 4096)).astype(np.float32))
    x = rng.standard_normal((256, 4096)).astype(np.float32)
    with pytest.raises(plume.DeadlineExceeded):
        client.gemv(name, x, timeout=1e-3)

    def slow():
        yield x[0]
        time.sleep(1.0)
        yield x[1]

    with pytest.raises(plume.DeadlineExceeded):
        list(client.gemv_stream(name, slow(), timeout=0.2))
    assert client.gemv(name, x[0]).shape == (1024,)  # a plain call still works


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unavailable():
    with plume.Client(f"127.0.0.1:{free_port()}", timeout=5) as c:
        with pytest.raises(plume.Unavailable):
            c.health()
        with pytest.raises(plume.Unavailable):
            c.gemv("w", np.ones(4, np.float32))


def test_client_argument_errors(tmp_path):
    with pytest.raises(ValueError, match="its key"):
        plume.Client("localhost:1", cert=tmp_path / "c.pem")
    with pytest.raises(ValueError, match="not both"):
        plume.Client("localhost:1", token="a", token_file=tmp_path / "t")
    with pytest.raises(ValueError, match="cannot read"):
        plume.Client("localhost:1", token_file=tmp_path / "missing")
    with pytest.raises(ValueError, match="timeout"):
        plume.Client("localhost:1", timeout=0)
