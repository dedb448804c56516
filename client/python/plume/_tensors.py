"""numpy <-> wire tensors, and matrix sources (.npy, .safetensors, torch).

Every conversion is one numpy operation over the whole buffer
(np.frombuffer, tobytes, astype, views); no Python loop touches elements.
"""
from __future__ import annotations

import json
import mmap
import os
import struct
from dataclasses import dataclass
from typing import Any, Union

import numpy as np

from plume.v1 import plume_pb2 as pb

try:  # optional: numpy's bfloat16
    import ml_dtypes as _ml_dtypes  # type: ignore[import-not-found]

    BF16: np.dtype | None = np.dtype(_ml_dtypes.bfloat16)
except ImportError:  # pragma: no cover - depends on the machine
    BF16 = None

F32 = np.dtype("<f4")
F16 = np.dtype("<f2")

ArrayLike = Union[np.ndarray, Any]  # numpy arrays, torch tensors

_NAMES = {"f32": pb.DTYPE_F32, "float32": pb.DTYPE_F32, "f16": pb.DTYPE_F16, "float16": pb.DTYPE_F16,
          "bf16": pb.DTYPE_BF16, "bfloat16": pb.DTYPE_BF16}
_ITEMSIZE = {pb.DTYPE_F32: 4, pb.DTYPE_F16: 2, pb.DTYPE_BF16: 2, pb.DTYPE_E4M3: 1, pb.DTYPE_E5M2: 1}


@dataclass
class Wire:
    """A tensor ready for the wire: dtype, shape and a C-contiguous
    little-endian buffer of exactly prod(shape) elements."""

    dtype: int
    shape: tuple[int, ...]
    buf: Any  # numpy array, memoryview or mmap slice: anything with the buffer protocol

    def nbytes(self) -> int:
        return memoryview(self.buf).nbytes

    def to_proto(self, t: pb.Tensor) -> pb.Tensor:
        t.dtype = self.dtype
        t.shape[:] = self.shape
        t.data = self.buf.tobytes() if isinstance(self.buf, np.ndarray) else bytes(self.buf)
        return t


def wire_dtype(dtype: Any) -> int:
    """The wire DType of "f32"/"f16"/"bf16", a numpy dtype or a torch dtype."""
    if isinstance(dtype, str):
        key = dtype.lower()
        if key.startswith("torch."):
            key = key[len("torch."):]
        if key in _NAMES:
            return _NAMES[key]
        raise ValueError(f"unknown dtype {dtype!r}: use 'f32', 'f16' or 'bf16'")
    if type(dtype).__module__ == "torch":
        return wire_dtype(str(dtype))
    d = np.dtype(dtype)
    if d.name == "bfloat16":
        return pb.DTYPE_BF16
    if d == F32:
        return pb.DTYPE_F32
    if d == F16:
        return pb.DTYPE_F16
    raise ValueError(f"dtype {d} is not on the wire: use float32, float16 or bfloat16")


def numpy_dtype(dtype: int) -> np.dtype:
    """The numpy dtype of a wire DType (bfloat16 needs ml_dtypes)."""
    if dtype == pb.DTYPE_F32:
        return F32
    if dtype == pb.DTYPE_F16:
        return F16
    if dtype == pb.DTYPE_BF16:
        if BF16 is None:
            raise ValueError("bfloat16 results need ml_dtypes (pip install ml_dtypes); "
                             "ask for out_dtype='f32' or 'f16' instead")
        return BF16
    raise ValueError(f"unexpected tensor dtype {pb.DType.Name(dtype)}")


def _is_torch(x: Any) -> bool:
    return type(x).__module__.startswith("torch") and hasattr(x, "detach")


def to_wire(x: ArrayLike, what: str, ndims: tuple[int, ...]) -> Wire:
    """A numpy array (float32, float16, bfloat16) or a torch tensor as a wire
    tensor. `ndims` lists the numbers of dimensions allowed."""
    if _is_torch(x):
        import torch  # noqa: PLC0415 - present, since x is a torch tensor

        t = x.detach().to("cpu").contiguous()
        if t.dtype == torch.bfloat16:
            arr, dtype = t.view(torch.int16).numpy(), pb.DTYPE_BF16
        elif t.dtype in (torch.float32, torch.float16):
            arr = t.numpy()
            dtype = wire_dtype(arr.dtype)
        else:
            raise ValueError(f"{what}: torch dtype {t.dtype} is not float32, float16 or bfloat16")
    else:
        arr = np.asarray(x)
        if arr.dtype.kind == "f" and arr.dtype.itemsize in (2, 4) and arr.dtype.byteorder == ">":
            arr = arr.astype(arr.dtype.newbyteorder("<"))
        try:
            dtype = wire_dtype(arr.dtype)
        except ValueError:
            raise ValueError(f"{what}: dtype {arr.dtype} is not float32, float16 or bfloat16 "
                             "(convert with .astype(np.float32))") from None
    if arr.ndim not in ndims:
        allowed = " or ".join(f"{n}-D" for n in ndims)
        raise ValueError(f"{what}: expected a {allowed} array, got shape {arr.shape}")
    return Wire(dtype, tuple(int(d) for d in arr.shape), np.ascontiguousarray(arr))


def from_proto(t: pb.Tensor) -> np.ndarray:
    """A result tensor as a writable numpy array of its shape."""
    dt = numpy_dtype(t.dtype)
    shape = tuple(t.shape)
    n = int(np.prod(shape, dtype=np.int64))
    if len(t.data) != n * dt.itemsize:
        raise ValueError(f"malformed result: {len(t.data)} bytes for shape {shape} of {dt}")
    return np.frombuffer(t.data, dtype=dt).reshape(shape).copy()


# ------------------------------------------------------------------ matrix sources

_ST_DTYPES = {"F32": pb.DTYPE_F32, "F16": pb.DTYPE_F16, "BF16": pb.DTYPE_BF16}


def open_safetensors(path: str | os.PathLike) -> tuple[Any, dict, int]:
    """The mapped file, its parsed JSON header and where its data starts."""
    with open(path, "rb") as f:
        mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    if len(mm) < 8:
        raise ValueError(f"{path}: not a safetensors file (shorter than its header length)")
    (hlen,) = struct.unpack("<Q", mm[:8])
    if hlen > len(mm) - 8:
        raise ValueError(f"{path}: header length {hlen} runs past the end of the file")
    try:
        header = json.loads(mm[8:8 + hlen])
    except (ValueError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: malformed safetensors header: {e}") from None
    if not isinstance(header, dict):
        raise ValueError(f"{path}: malformed safetensors header: not a JSON object")
    return mm, header, 8 + hlen


def read_safetensors(path: str | os.PathLike, tensor: str | None) -> Wire:
    """One tensor of a .safetensors file, as a read-only view of the mapped
    file (nothing is copied until it is sent)."""
    mm, header, base = open_safetensors(path)
    names = sorted(k for k in header if k != "__metadata__")
    if tensor is None:
        if len(names) != 1:
            raise ValueError(f"{path} holds {len(names)} tensors; pick one with tensor=: "
                             + ", ".join(names[:20]))
        tensor = names[0]
    if tensor not in header or tensor == "__metadata__":
        raise ValueError(f"{path}: no tensor {tensor!r}; it has " + ", ".join(names[:20]))
    entry = header[tensor]
    dtype = _ST_DTYPES.get(entry.get("dtype"))
    if dtype is None:
        raise ValueError(f"{path}: tensor {tensor!r} is {entry.get('dtype')}, not F32, F16 or BF16")
    shape = tuple(int(d) for d in entry["shape"])
    begin, end = (int(o) for o in entry["data_offsets"])
    want = int(np.prod(shape, dtype=np.int64)) * _ITEMSIZE[dtype]
    if end - begin != want or begin < 0 or base + end > len(mm):
        raise ValueError(f"{path}: tensor {tensor!r} has {end - begin} bytes at offsets "
                         f"[{begin}, {end}), its shape {shape} needs {want}")
    return Wire(dtype, shape, memoryview(mm)[base + begin:base + end])


def matrix_source(src: Any, tensor: str | None) -> Wire:
    """upload()'s source: an array, a torch tensor, or a .npy / .safetensors path."""
    if isinstance(src, (str, os.PathLike)):
        path = os.fspath(src)
        if path.endswith(".safetensors"):
            return _check_matrix(read_safetensors(path, tensor), path)
        if tensor is not None:
            raise ValueError("tensor= names a tensor of a .safetensors file; this source is " + path)
        if path.endswith(".npy"):
            return _check_matrix(to_wire(np.load(path, mmap_mode="r"), path, (2,)), path)
        raise ValueError(f"{path}: a matrix file must be .npy or .safetensors")
    if tensor is not None:
        raise ValueError("tensor= only applies to .safetensors paths")
    return _check_matrix(to_wire(src, "matrix", (2,)), "matrix")


def _check_matrix(w: Wire, what: str) -> Wire:
    if len(w.shape) != 2:
        raise ValueError(f"{what}: a matrix must be 2-D, got shape {w.shape}")
    return w
