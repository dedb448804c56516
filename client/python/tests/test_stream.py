"""gemv_stream: input order, backpressure, a failed item at its place,
early exit."""
from __future__ import annotations

import time

import numpy as np
import pytest

import plume
from _ref import grid_matrix
from test_matrix import assert_gemv


@pytest.fixture()
def matrix(client, rng, name):
    w = grid_matrix(rng, 48, 80, "e4m3", "row")
    client.upload(name, w.astype(np.float32))
    return name, w


def test_results_in_input_order(client, rng, matrix):
    name, w = matrix
    xs = [rng.standard_normal(80).astype(np.float32 if i % 2 else np.float16) for i in range(200)]
    ys = list(client.gemv_stream(name, iter(xs), max_in_flight=64))
    assert len(ys) == len(xs)
    for x, y in zip(xs, ys):
        assert_gemv(y, w, x)
        assert np.array_equal(y, client.gemv(name, x))


def test_batched_items_and_out_dtype(client, rng, matrix):
    name, w = matrix
    xs = [rng.standard_normal((b, 80)).astype(np.float32) for b in (1, 3, 7, 2)]
    ys = list(client.gemv_stream(name, xs, out_dtype="f16"))
    assert [y.shape for y in ys] == [(1, 48), (3, 48), (7, 48), (2, 48)]
    assert all(y.dtype == np.float16 for y in ys)
    for x, y in zip(xs, ys):
        assert np.array_equal(y, client.gemv(name, x).astype(np.float16))


def test_max_in_flight_bounds_what_is_sent(client, rng, matrix):
    name, _ = matrix
    pulled = 0

    def source():
        nonlocal pulled
        for _ in range(40):
            pulled += 1
            yield rng.standard_normal(80).astype(np.float32)

    got = 0
    for _ in client.gemv_stream(name, source(), max_in_flight=3):
        got += 1
        # Sent and not yet handed over: at most 3; the source is not read ahead.
        assert pulled - got <= 3
    assert got == 40


def test_failed_item_raises_at_its_place(client, rng, matrix):
    name, w = matrix
    xs = [rng.standard_normal(80).astype(np.float32) for _ in range(5)]
    xs.insert(3, rng.standard_normal(81).astype(np.float32))  # wrong length: the server refuses it
    it = client.gemv_stream(name, xs, max_in_flight=2)
    for i in range(3):
        assert_gemv(next(it), w, xs[i])
    with pytest.raises(plume.InvalidArgument, match="81"):
        next(it)
    with pytest.raises(StopIteration):
        next(it)


def test_unsendable_item_raises_at_its_place(client, rng, matrix):
    name, w = matrix
    xs = [rng.standard_normal(80).astype(np.float32) for _ in range(4)]
    xs[2] = np.ones(80, np.int64)  # refused by the client, before the wire
    it = client.gemv_stream(name, xs)
    assert_gemv(next(it), w, xs[0])
    assert_gemv(next(it), w, xs[1])
    with pytest.raises(ValueError, match="int64"):
        next(it)


def test_missing_matrix_fails_its_items(client, rng):
    xs = [rng.standard_normal(8).astype(np.float32) for _ in range(3)]
    with pytest.raises(plume.NotFound, match="no-such-matrix"):
        list(client.gemv_stream("no-such-matrix", xs))


def test_leaving_early_and_empty_streams(client, rng, matrix):
    name, w = matrix
    xs = (rng.standard_normal(80).astype(np.float32) for _ in range(10_000))
    it = client.gemv_stream(name, xs, max_in_flight=8)
    for i, _ in enumerate(it):
        if i == 5:
            break
    it.close()  # cancels the stream
    assert list(client.gemv_stream(name, [])) == []
    x = rng.standard_normal(80).astype(np.float32)
    assert_gemv(client.gemv(name, x), w, x)  # the client is still good
    with pytest.raises(ValueError, match="max_in_flight"):
        client.gemv_stream(name, [x], max_in_flight=0)


def test_stream_outlives_the_unary_deadline(server, rng, matrix):
    """Client(timeout=...) bounds unary calls; a stream has no deadline unless
    given one, since it lasts as long as its source."""
    name, w = matrix
    xs = [rng.standard_normal(80).astype(np.float32) for _ in range(3)]

    def slow():
        for x in xs:
            yield x
            time.sleep(0.4)

    with plume.Client(server.address, timeout=0.3) as c:
        ys = list(c.gemv_stream(name, slow()))
        assert len(ys) == 3
        for x, y in zip(xs, ys):
            assert_gemv(y, w, x)
