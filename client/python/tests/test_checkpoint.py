"""FP8 checkpoints: upload_fp8 of generated F8_E4M3 / F8_E5M2 safetensors
tensors with scale tensors of every layout, GEMV against the float64 product
of the dequantized checkpoint; the shape rules; content_hash and packed()."""
from __future__ import annotations

import numpy as np
import pytest

from _ref import TABLES, bf16_bits, random_codes
from plume import _checkpoint
from test_matrix import assert_gemv, write_safetensors

import plume


def _scale_bytes(s: np.ndarray, dtype: str) -> bytes:
    if dtype == "F32":
        return s.astype("<f4").tobytes()
    if dtype == "F16":
        return s.astype("<f2").tobytes()
    return bf16_bits(s).astype("<u2").tobytes()


def _dequantized(codes, fmt, mode, s):
    rows, cols = codes.shape
    dec = TABLES[fmt][codes]
    if mode == "tensor":
        return dec * float(s.reshape(-1)[0])
    if mode == "row":
        return dec * s.reshape(rows, 1).astype(np.float64)
    if mode == "block128":
        return dec * np.repeat(s.reshape(rows, -1).astype(np.float64), 128, axis=1)[:, :cols]
    full = np.repeat(np.repeat(s.reshape(-(-rows // 128), -1).astype(np.float64), 128, axis=0), 128, axis=1)
    return dec * full[:rows, :cols]


def test_scale_mode_for_shape():
    f = _checkpoint.scale_mode_for_shape
    assert f((), 200, 300) == f((1,), 200, 300) == "tensor"
    assert f((200,), 200, 300) == f((200, 1), 200, 300) == "row"
    assert f((200, 3), 200, 300) == "block128"
    assert f((2, 3), 200, 300) == "block128x128"
    assert f((1, 1), 100, 100) == "tensor"      # coinciding shapes: the coarsest mode
    assert f((100, 1), 100, 100) == "row"
    assert f((1, 3), 1, 300) == "block128"
    with pytest.raises(ValueError, match=r"\[3, 2\].*\[200, 300\]"):
        f((3, 2), 200, 300)


@pytest.mark.parametrize("fmt", ["e4m3", "e5m2"])
@pytest.mark.parametrize("shape,mode,sdt", [((), "tensor", "F32"), ((1,), "tensor", "BF16"),
                                            ((200,), "row", "F16"), ((200, 1), "row", "BF16"),
                                            ((200, 3), "block128", "F32")])
def test_upload_fp8_matches_the_checkpoint(client, rng, name, tmp_path, fmt, shape, mode, sdt):
    rows, cols = 200, 300
    codes = random_codes(rng, fmt, rows, cols)
    # m/8 * 2^e: exact in F32, BF16 and F16 alike
    s = (rng.integers(8, 16, size=int(np.prod(shape, dtype=np.int64))) / 8.0
         * 2.0 ** rng.integers(-8, -1, size=int(np.prod(shape, dtype=np.int64)))).astype(np.float32)
    path = tmp_path / "ckpt.safetensors"
    write_safetensors(path, {"l.weight": ("F8_E4M3" if fmt == "e4m3" else "F8_E5M2", (rows, cols), codes.tobytes()),
                             "l.weight_scale_inv": (sdt, shape, _scale_bytes(s, sdt))})
    t = _checkpoint.read_fp8_tensor(path)
    assert (t.key, t.scale_key, t.format, t.scale) == ("l.weight", "l.weight_scale_inv", fmt, mode)
    assert np.array_equal(t.codes, codes)
    info = client.upload_fp8(name, path)
    assert (info.source_dtype, info.format, info.scale) == (fmt, fmt, mode)
    x = rng.standard_normal((2, cols)).astype(np.float32)
    assert_gemv(client.gemv(name, x), _dequantized(codes, fmt, mode, s), x)


def test_upload_fp8_scale_problems(client, rng, name, tmp_path):
    codes = random_codes(rng, "e4m3", 20, 30)
    path = tmp_path / "c.safetensors"
    write_safetensors(path, {"a.weight": ("F8_E4M3", (20, 30), codes.tobytes()),
                             "a.weight_scale": ("F32", (3, 2), b"\0" * 24)})
    with pytest.raises(ValueError, match=r"\[3, 2\].*\[20, 30\]"):
        client.upload_fp8(name, path)
    write_safetensors(path, {"a.weight": ("F8_E4M3", (20, 30), codes.tobytes())})
    with pytest.raises(ValueError, match="scale_tensor="):
        client.upload_fp8(name, path)
    info = client.upload_fp8(name, path, scale="none")
    assert info.scale == "none"
    x = rng.standard_normal(30).astype(np.float32)
    assert_gemv(client.gemv(name, x), TABLES["e4m3"][codes], x)


def test_upload_fp8_block128x128_content_hash_and_packed(client, rng, name, tmp_path):
    rows, cols = 200, 300
    codes = random_codes(rng, "e5m2", rows, cols)
    s = (2.0 ** rng.integers(-6, -1, size=6)).astype(np.float32)
    path = tmp_path / "b.safetensors"
    write_safetensors(path, {"q": ("F8_E5M2", (rows, cols), codes.tobytes()), "q_scale": ("F32", (2, 3), s.tobytes())})
    info = client.upload_fp8(name, path, content_hash="sha256:test")
    assert info.scale == "block128x128"
    assert info.content_hash == "sha256:test"
    x = rng.standard_normal((2, cols)).astype(np.float32)
    assert_gemv(client.gemv(name, x), _dequantized(codes, "e5m2", "block128x128", s), x)
    got_info, got_codes, got_scales = client.packed(name)
    assert np.array_equal(got_codes, codes)
    assert np.array_equal(got_scales, s)


def test_unpack_codes():
    codes = np.arange(4 * 20, dtype=np.uint8).reshape(4, 20)
    padded = np.zeros((4, 32), np.uint8)
    padded[:, :20] = codes
    assert np.array_equal(_checkpoint.unpack_codes(padded.tobytes(), 4, 20, 32), codes)
    with pytest.raises(ValueError, match="malformed"):
        _checkpoint.unpack_codes(padded.tobytes()[:-4], 4, 20, 32)


def test_packed_reads_back_or_says_the_server_cannot(client, rng, name):
    """A server with include_packed returns the codes as uploaded; one
    without it returns none, which packed() reports as FailedPrecondition."""
    codes = random_codes(rng, "e4m3", 4, 20)
    client.upload_packed(name, codes, np.full(4, 0.5, np.float32), format="e4m3", scale="row")
    try:
        info, got, scales = client.packed(name)
    except plume.FailedPrecondition as e:
        assert "include_packed" in str(e)
        return
    assert info.shape == (4, 20)
    assert np.array_equal(got, codes)
    assert np.array_equal(scales, np.full(4, 0.5, np.float32))
