"""Matrices: upload (every source kind, format and scaling mode),
upload_packed, info / list / delete, gemv, against float64 references."""
from __future__ import annotations

import json
import struct

import numpy as np
import pytest

import plume
from _ref import TABLES, bf16_bits, finite_codes, from_bf16_bits, grid_matrix

# fp32 accumulation over up to a few hundred products of exact operands.
RTOL = 2e-6


def assert_gemv(y: np.ndarray, w: np.ndarray, x: np.ndarray, rtol: float = RTOL) -> None:
    """y against float64 W @ x, relative to the sum of |products| (so
    cancellation cannot hide an error or fake one)."""
    ref = x.astype(np.float64) @ w.T if x.ndim == 2 else w @ x.astype(np.float64)
    mag = np.abs(x.astype(np.float64)) @ np.abs(w).T if x.ndim == 2 else np.abs(w) @ np.abs(x.astype(np.float64))
    assert y.shape == ref.shape
    assert np.all(np.isfinite(y))
    err = np.abs(y.astype(np.float64) - ref)
    assert np.all(err <= rtol * mag + 1e-30), f"max error {np.max(err / (mag + 1e-30)):.3g} x |W||x|"


@pytest.mark.parametrize("fmt", ["e4m3", "e5m2"])
@pytest.mark.parametrize("scale", ["none", "tensor", "row", "block128"])
def test_upload_exact_grid_every_mode(client, rng, name, fmt, scale):
    rows, cols = 37, 300  # ragged: neither a multiple of 16 nor of 128
    w = grid_matrix(rng, rows, cols, fmt, scale)
    info = client.upload(name, w.astype(np.float32), format=fmt, scale=scale)
    assert (info.name, info.rows, info.cols, info.shape) == (name, rows, cols, (rows, cols))
    assert (info.format, info.scale, info.source_dtype) == (fmt, scale, "f32")
    assert info.layout.padded_cols == 304 and info.layout.row_stride_bytes == 304
    assert info.layout.num_scales == {"none": 0, "tensor": 1, "row": rows, "block128": rows * 3}[scale]
    assert info.resident_bytes == rows * 304 + 4 * info.layout.num_scales
    x = rng.standard_normal(cols).astype(np.float32)
    assert_gemv(client.gemv(name, x), w, x)


def test_upload_f16_source_and_batched_f16_vectors(client, rng, name):
    w = grid_matrix(rng, 64, 96, "e4m3", "row") / 16  # exact in float16 too
    assert np.array_equal(w.astype(np.float16).astype(np.float64), w)
    info = client.upload(name, w.astype(np.float16))
    assert info.source_dtype == "f16" and (info.format, info.scale) == ("e4m3", "row")
    x = rng.standard_normal((5, 96)).astype(np.float16)
    y = client.gemv(name, x)
    assert y.dtype == np.float32 and y.shape == (5, 64)
    assert_gemv(y, w, x)


def test_gemv_out_dtype_f16(client, rng, name):
    w = grid_matrix(rng, 40, 64, "e4m3", "row") / 64
    client.upload(name, w.astype(np.float32))
    x = rng.standard_normal(64).astype(np.float32)
    y16 = client.gemv(name, x, out_dtype="f16")
    y32 = client.gemv(name, x, out_dtype=np.float32)
    assert y16.dtype == np.float16 and y32.dtype == np.float32
    assert_gemv(y32, w, x)
    assert np.array_equal(y16, y32.astype(np.float16))
    assert y32.flags.writeable  # results are the caller's to change


def test_upload_random_normal_within_fp8_error(client, rng, name):
    """A matrix that does not sit on the grid: the error is the quantization's
    (E4M3: half an ulp, 2^-4 relative, per element)."""
    w = rng.standard_normal((128, 256))
    client.upload(name, w.astype(np.float32), scale="row")
    x = rng.standard_normal(256).astype(np.float32)
    assert_gemv(client.gemv(name, x), w, x, rtol=2.0 ** -4)
    y = client.gemv(name, x)
    assert not np.allclose(y, w @ x, rtol=1e-6)  # it really is quantized


def test_non_saturating(client, name):
    """scale none: 1000 saturates to 448, or becomes NaN when non-saturating.
    A one-hot x reads column 0 back."""
    w = np.full((4, 16), 2.0, np.float32)
    w[1, 0] = 1000.0
    x = np.zeros(16, np.float32)
    x[0] = 1.0
    client.upload(name, w, scale="none")
    assert client.gemv(name, x)[1] == 448.0
    client.upload(name + "-ns", w, scale="none", non_saturating=True)
    assert client.info(name + "-ns").non_saturating
    y = client.gemv(name + "-ns", x)
    assert np.isnan(y[1]) and y[0] == 2.0


def test_upload_npy_path(client, rng, name, tmp_path):
    w = grid_matrix(rng, 33, 70, "e4m3", "block128")
    path = tmp_path / "w.npy"
    np.save(path, w.astype(np.float32))
    info = client.upload(name, str(path), scale="block128")
    assert info.shape == (33, 70)
    x = rng.standard_normal(70).astype(np.float32)
    assert_gemv(client.gemv(name, x), w, x)
    with pytest.raises(ValueError, match="tensor="):
        client.upload(name + "-x", path, tensor="a")


def write_safetensors(path, tensors: dict[str, tuple[str, tuple[int, ...], bytes]]) -> None:
    header, blobs, off = {"__metadata__": {"format": "pt"}}, [], 0
    for key, (dtype, shape, data) in tensors.items():
        header[key] = {"dtype": dtype, "shape": list(shape), "data_offsets": [off, off + len(data)]}
        blobs.append(data)
        off += len(data)
    h = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(h)) + h + b"".join(blobs))


def test_upload_safetensors_f32_f16_bf16(client, rng, name, tmp_path):
    a = grid_matrix(rng, 20, 48, "e4m3", "row")
    b = grid_matrix(rng, 24, 40, "e4m3", "row") / 64
    c = rng.standard_normal((16, 32)).astype(np.float32)
    c_bits = bf16_bits(c)  # a BF16 tensor, written without any bfloat16 library
    path = tmp_path / "m.safetensors"
    write_safetensors(path, {"a": ("F32", a.shape, a.astype("<f4").tobytes()),
                             "b": ("F16", b.shape, b.astype("<f2").tobytes()),
                             "c": ("BF16", c.shape, c_bits.astype("<u2").tobytes())})
    with pytest.raises(ValueError, match="holds 3 tensors"):
        client.upload(name, path)
    with pytest.raises(ValueError, match="no tensor 'zz'"):
        client.upload(name, path, tensor="zz")
    for key, w, src in (("a", a, "f32"), ("b", b, "f16")):
        info = client.upload(f"{name}-{key}", path, tensor=key)
        assert (info.shape, info.source_dtype) == (w.shape, src)
        x = rng.standard_normal(w.shape[1]).astype(np.float32)
        assert_gemv(client.gemv(f"{name}-{key}", x), w, x)
    info = client.upload(f"{name}-c", path, tensor="c", scale="none")
    assert info.source_dtype == "bf16"
    # Column 3 read back with a one-hot x: the bf16 values, quantized to E4M3.
    x = np.zeros(32, np.float32)
    x[3] = 1
    col = client.gemv(f"{name}-c", x).astype(np.float64)
    ref = from_bf16_bits(c_bits)[:, 3]
    assert np.all(np.abs(col - ref) <= 2.0 ** -4 * np.abs(ref) + 2.0 ** -9)


def test_upload_safetensors_rejects_a_truncated_file(client, name, tmp_path):
    path = tmp_path / "bad.safetensors"
    write_safetensors(path, {"w": ("F32", (4, 4), b"\0" * 60)})
    with pytest.raises(ValueError, match="needs 64"):
        client.upload(name, path)


@pytest.mark.parametrize("fmt", ["e4m3", "e5m2"])
@pytest.mark.parametrize("scale", ["none", "tensor", "row", "block128"])
def test_upload_packed_matches_decoded_reference(client, rng, name, fmt, scale):
    rows, cols = 19, 260
    codes = rng.choice(finite_codes(fmt), size=(rows, cols)).astype(np.uint8)
    if fmt == "e5m2":  # keep |products| well inside f32 for the tolerance
        codes = codes & np.uint8(0xBF)
    n = {"none": 0, "tensor": 1, "row": rows, "block128": rows * 3}[scale]
    scales = rng.uniform(0.5, 2.0, size=n).astype(np.float32)
    info = client.upload_packed(name, codes, scales, format=fmt, scale=scale)
    assert (info.source_dtype, info.format, info.scale) == (fmt, fmt, scale)
    dec = TABLES[fmt][codes]
    if scale == "tensor":
        dec = dec * scales[0]
    elif scale == "row":
        dec = dec * scales[:, None].astype(np.float64)
    elif scale == "block128":
        dec = dec * np.repeat(scales.reshape(rows, 3).astype(np.float64), 128, axis=1)[:, :cols]
    x = rng.standard_normal((3, cols)).astype(np.float32)
    assert_gemv(client.gemv(name, x), dec, x)


def test_upload_packed_checks_scales(client, name):
    with pytest.raises(ValueError, match="needs 4 scales"):
        client.upload_packed(name, np.ones((4, 16), np.uint8), np.ones(3, np.float32),
                             format="e4m3", scale="row")
    with pytest.raises(ValueError, match="uint8"):
        client.upload_packed(name, np.ones((4, 16), np.float32), np.ones(4, np.float32),
                             format="e4m3", scale="row")


def test_info_list_delete(client, rng, name):
    w = rng.standard_normal((8, 32)).astype(np.float32)
    made = client.upload(name, w, format="e5m2", scale="tensor")
    got = client.info(name)
    assert got == made and got.format == "e5m2" and got.scale == "tensor"
    assert got.backend and got.created_unix_ms > 0 and got.placement == "single"
    assert name in {m.name for m in client.list()}
    client.delete(name)
    assert name not in {m.name for m in client.list()}
    with pytest.raises(plume.NotFound, match=name):
        client.info(name)
    with pytest.raises(plume.NotFound):
        client.delete(name)


def test_upload_progress_callable_and_tqdm(client, rng, name, capsys):
    w = rng.standard_normal((512, 1024)).astype(np.float32)  # 2 MiB: two full chunks
    seen = []
    client.upload(name, w, progress=lambda sent, total: seen.append((sent, total)))
    assert seen == [(1 << 20, w.nbytes), (w.nbytes, w.nbytes)]
    pytest.importorskip("tqdm", reason="tqdm is optional (python3-tqdm)")
    client.upload(name + "-bar", w, progress=True)
    err = capsys.readouterr().err
    assert "upload " + name + "-bar" in err and "2.00M" in err


def test_local_argument_errors(client, name):
    with pytest.raises(ValueError, match="2-D"):
        client.upload(name, np.ones(8, np.float32))
    with pytest.raises(ValueError, match="float32"):
        client.upload(name, np.ones((2, 2), np.int32))
    with pytest.raises(ValueError, match="format"):
        client.upload(name, np.ones((2, 2), np.float32), format="e3m4")
    with pytest.raises(ValueError, match="scale"):
        client.upload(name, np.ones((2, 2), np.float32), scale="column")
    with pytest.raises(ValueError, match="1-D or 2-D"):
        client.gemv(name, np.ones((1, 2, 3), np.float32))
    with pytest.raises(ValueError, match="float64"):
        client.gemv(name, np.ones(3))


def test_bf16_results_need_ml_dtypes(client, rng, name):
    w = grid_matrix(rng, 16, 32, "e4m3", "row")
    client.upload(name, w.astype(np.float32))
    x = rng.standard_normal(32).astype(np.float32)
    try:
        import ml_dtypes  # noqa: F401
    except ImportError:
        with pytest.raises(ValueError, match="ml_dtypes"):
            client.gemv(name, x, out_dtype="bf16")
        return
    y = client.gemv(name, x, out_dtype="bf16")
    assert y.dtype.name == "bfloat16"
    assert np.allclose(y.astype(np.float32), client.gemv(name, x), rtol=2 ** -8)
    xb = x.astype(ml_dtypes.bfloat16)
    assert_gemv(client.gemv(name, xb), w, xb.astype(np.float64), rtol=RTOL)


def test_torch_tensors(client, rng, name):
    torch = pytest.importorskip("torch", reason="torch is optional")
    w = grid_matrix(rng, 24, 48, "e4m3", "row")
    client.upload(name, torch.tensor(w, dtype=torch.float32))
    x = torch.tensor(rng.standard_normal(48), dtype=torch.bfloat16)
    xs = x.float().numpy()
    assert_gemv(client.gemv(name, x), w, xs)
