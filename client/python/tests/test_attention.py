"""K/V caches and attention against a float64 reference."""
from __future__ import annotations

import numpy as np
import pytest

import plume
from _ref import E4M3, attention, finite_codes

ATOL = 2e-5  # fp32 softmax and accumulation over <= a few hundred tokens of O(1) values


def grid(rng, *shape):
    """Values that E4M3 holds exactly, |x| <= 2, so scale 'none' is lossless."""
    vals = E4M3[finite_codes("e4m3")]
    vals = vals[np.abs(vals) <= 2]
    return rng.choice(vals, size=shape)


@pytest.fixture()
def cache(client, rng, name):
    kv_heads, seq, d = 2, 100, 24  # seq spans two 64-token pages; d not a multiple of 16
    k, v = grid(rng, kv_heads, seq, d), grid(rng, kv_heads, seq, d)
    info = client.kv_upload(name, k.astype(np.float32), v.astype(np.float32), scale="none")
    return name, k, v, info


def test_kv_upload_info_list_delete(client, cache):
    name, k, v, info = cache
    assert (info.name, info.kv_heads, info.seq, info.head_dim) == (name, 2, 100, 24)
    assert (info.format, info.scale, info.source_dtype) == ("e4m3", "none", "f32")
    assert info.layout.page_tokens == 64 and info.layout.pages == 2 and info.layout.capacity_tokens == 128
    assert info.layout.row_stride_bytes == 32
    assert client.kv_info(name) == info
    assert name in {c.name for c in client.kv_list()}
    client.kv_delete(name)
    assert name not in {c.name for c in client.kv_list()}
    with pytest.raises(plume.NotFound):
        client.kv_info(name)
    with pytest.raises(plume.NotFound):
        client.attend(name, np.ones((1, 2, 1, 24), np.float32))


@pytest.mark.parametrize("causal", [False, True])
def test_attend_grouped_query_heads(client, rng, cache, causal):
    name, k, v, _ = cache
    q = rng.standard_normal((2, 4, 5, 24)).astype(np.float32)  # 4 query heads over 2 kv heads
    out = client.attend(name, q, causal=causal)
    assert out.shape == q.shape and out.dtype == np.float32
    ref = attention(q, k, v, causal, None)
    assert np.max(np.abs(out - ref)) <= ATOL
    other = attention(q, k, v, not causal, None)
    assert np.max(np.abs(other - ref)) > 100 * ATOL  # causal really changes the answer


def test_attend_scale_f16_and_3d_queries(client, rng, cache):
    name, k, v, _ = cache
    q = rng.standard_normal((2, 3, 24)).astype(np.float16)
    out = client.attend(name, q, scale=0.05, out_dtype="f16")
    assert out.shape == (2, 3, 24) and out.dtype == np.float16
    ref = attention(q[None], k, v, False, 0.05)[0]
    assert np.max(np.abs(out.astype(np.float64) - ref)) <= 2e-3  # f16 output rounding
    with pytest.raises(ValueError, match="scale"):
        client.attend(name, q, scale=-1.0)


def test_kv_append_grows_what_attention_sees(client, rng, cache):
    name, k, v, _ = cache
    k2, v2 = grid(rng, 2, 40, 24), grid(rng, 2, 40, 24)
    info = client.kv_append(name, k2.astype(np.float16), v2.astype(np.float16))
    assert info.seq == 140 and info.layout.pages == 3
    kk, vv = np.concatenate([k, k2], axis=1), np.concatenate([v, v2], axis=1)
    q = rng.standard_normal((1, 2, 1, 24)).astype(np.float32)
    out = client.attend(name, q)
    assert np.max(np.abs(out - attention(q, kk, vv, False, None))) <= ATOL
    assert np.max(np.abs(out - attention(q, k, v, False, None))) > 100 * ATOL
    with pytest.raises(plume.InvalidArgument):
        client.kv_append(name, np.ones((2, 3, 16), np.float32), np.ones((2, 3, 16), np.float32))


def test_kv_token_block_scales_quantize(client, rng, name):
    k = rng.standard_normal((1, 70, 32)).astype(np.float32) * 3
    v = rng.standard_normal((1, 70, 32)).astype(np.float32)
    info = client.kv_upload(name, k, v)
    assert info.scale == "token_block"
    q = rng.standard_normal((1, 1, 2, 32)).astype(np.float32)
    out = client.attend(name, q, causal=True)
    assert np.max(np.abs(out - attention(q, k, v, True, None))) <= 0.1  # FP8's error, not exact


def test_kv_local_argument_errors(client, name):
    with pytest.raises(ValueError, match="same shape"):
        client.kv_upload(name, np.ones((1, 4, 8), np.float32), np.ones((1, 5, 8), np.float32))
    with pytest.raises(ValueError, match="3-D"):
        client.kv_upload(name, np.ones((4, 8), np.float32), np.ones((4, 8), np.float32))
    with pytest.raises(ValueError, match="scale"):
        client.kv_upload(name, np.ones((1, 4, 8), np.float32), np.ones((1, 4, 8), np.float32), scale="row")
