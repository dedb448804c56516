"""plume.aio.Client: the same calls under asyncio."""
from __future__ import annotations

import asyncio
import contextlib

import numpy as np
import pytest

import plume
import plume.aio
from _ref import E4M3, attention, finite_codes, grid_matrix
from test_matrix import assert_gemv


def run(coro):
    return asyncio.run(coro)


def test_matrix_calls(server, rng, name):
    w = grid_matrix(rng, 40, 72, "e4m3", "block128")

    async def main():
        async with plume.aio.Client(server.address) as c:
            assert await c.health()
            info = await c.upload(name, w.astype(np.float32), scale="block128")
            assert info.shape == (40, 72) and info.scale == "block128"
            assert await c.info(name) == info
            assert name in {m.name for m in await c.list()}
            x = rng.standard_normal((3, 72)).astype(np.float16)
            assert_gemv(await c.gemv(name, x), w, x)
            codes = rng.choice(finite_codes("e4m3"), size=(5, 20)).astype(np.uint8)
            await c.upload_packed(name + "-p", codes, np.float32([0.5]), format="e4m3", scale="tensor")
            x1 = rng.standard_normal(20).astype(np.float32)
            assert_gemv(await c.gemv(name + "-p", x1), E4M3[codes] * 0.5, x1)
            await c.delete(name)
            with pytest.raises(plume.NotFound):
                await c.info(name)

    run(main())


def test_concurrent_calls_match_sync(server, client, rng, name):
    w = grid_matrix(rng, 64, 128, "e4m3", "row")
    client.upload(name, w.astype(np.float32))
    xs = [rng.standard_normal(128).astype(np.float32) for _ in range(64)]

    async def main():
        async with plume.aio.Client(server.address) as c:
            return await asyncio.gather(*(c.gemv(name, x) for x in xs))

    ys = run(main())
    assert len(ys) == 64
    for x, y in zip(xs, ys):
        assert np.array_equal(y, client.gemv(name, x))


async def _enumerate(ait):
    i = 0
    async for x in ait:
        yield i, x
        i += 1


def test_stream_order_failure_and_async_source(server, rng, name):
    w = grid_matrix(rng, 32, 48, "e4m3", "row")
    xs = [rng.standard_normal(48).astype(np.float32) for _ in range(100)]

    pulled = 0

    async def source():
        nonlocal pulled
        for x in xs:
            await asyncio.sleep(0)
            pulled += 1
            yield x

    async def main():
        async with plume.aio.Client(server.address) as c:
            await c.upload(name, w.astype(np.float32))
            ys = []
            async for y in c.gemv_stream(name, source(), max_in_flight=5):
                ys.append(y)
                assert pulled - len(ys) <= 5  # the source is read only as slots free up
            assert len(ys) == 100
            for x, y in zip(xs, ys):
                assert_gemv(y, w, x)
            bad = xs[:4] + [np.ones(47, np.float32)] + xs[4:8]
            got = []
            with pytest.raises(plume.InvalidArgument, match="47"):
                async for y in c.gemv_stream(name, bad):
                    got.append(y)
            assert len(got) == 4
            got = []
            with pytest.raises(ValueError, match="int32"):
                async for y in c.gemv_stream(name, xs[:2] + [np.ones(48, np.int32)]):
                    got.append(y)
            assert len(got) == 2
            # Leaving early: aclosing cancels the stream at once.
            async with contextlib.aclosing(c.gemv_stream(name, iter(xs * 100), max_in_flight=4)) as it:
                async for i, _ in _enumerate(it):
                    if i == 3:
                        break
            assert np.array_equal(await c.gemv(name, xs[0]), ys[0])

    run(main())


def test_attention_calls(server, rng, name):
    vals = E4M3[finite_codes("e4m3")]
    vals = vals[np.abs(vals) <= 2]
    k, v = rng.choice(vals, size=(1, 80, 16)), rng.choice(vals, size=(1, 80, 16))

    async def main():
        async with plume.aio.Client(server.address) as c:
            info = await c.kv_upload(name, k.astype(np.float32), v.astype(np.float32), scale="none")
            assert info.seq == 80 and await c.kv_info(name) == info
            q = rng.standard_normal((1, 2, 3, 16)).astype(np.float32)
            out = await c.attend(name, q, causal=True)
            assert np.max(np.abs(out - attention(q, k, v, True, None))) <= 2e-5
            info = await c.kv_append(name, k[:, :5].astype(np.float32), v[:, :5].astype(np.float32))
            assert info.seq == 85
            assert name in {x.name for x in await c.kv_list()}
            await c.kv_delete(name)
            with pytest.raises(plume.NotFound):
                await c.attend(name, q)

    run(main())


def test_errors_and_token(start_server, tmp_path):
    f = tmp_path / "token"
    f.write_text("aio-token")
    s = start_server(f"--auth_token_file={f}")

    async def main():
        async with plume.aio.Client(s.address) as none, plume.aio.Client(s.address, token_file=f) as ok:
            assert await none.health()
            with pytest.raises(plume.Unauthenticated):
                await none.list()
            assert await ok.list() == []
            with pytest.raises(plume.NotFound):
                await ok.gemv("nothing", np.ones(4, np.float32))
            await ok.upload("m", np.ones((4, 16), np.float32))

            async def slow():
                yield np.ones(16, np.float32)
                await asyncio.sleep(1.0)
                yield np.ones(16, np.float32)

            got = []
            with pytest.raises(plume.DeadlineExceeded):
                async for y in ok.gemv_stream("m", slow(), timeout=0.2):
                    got.append(y)
            assert len(got) == 1 and np.array_equal(got[0], np.full(4, 16, np.float32))

    run(main())
