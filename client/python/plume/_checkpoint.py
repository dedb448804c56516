"""FP8 checkpoints as they ship: an F8_E4M3 / F8_E5M2 tensor of a
.safetensors file and its scale tensor, mapped onto a pre-packed upload.
The same rules as the C++ client (client/io/include/plume/io/checkpoint.h).

value = code x scale in every mode (DeepSeek-V3's ``weight_scale_inv`` and
Llama-FP8's ``weight_scale`` are both multipliers). The scale tensor's shape
picks the mode, both dimensions compared: ``[]``/``[1]`` tensor,
``[rows]``/``[rows, 1]`` row, ``[rows, ceil(cols/128)]`` block128,
``[ceil(rows/128), ceil(cols/128)]`` block128x128. Shapes coincide only where
a dimension is 1, and the coinciding modes then scale every element alike;
the coarsest wins (tensor, row, block128, block128x128 in that order).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from plume import _tensors

FP8_DTYPES = {"F8_E4M3": "e4m3", "F8_E5M2": "e5m2"}  # safetensors dtype -> format
_SCALE_DTYPES = {"F32": np.dtype("<f4"), "F16": np.dtype("<f2"), "BF16": None}


def scale_mode_for_shape(shape: tuple[int, ...], rows: int, cols: int) -> str:
    """The scale mode a scale tensor of `shape` gives a [rows, cols] matrix;
    ValueError naming both shapes when it fits none."""
    shape = tuple(int(d) for d in shape)
    bc, br = -(-cols // 128), -(-rows // 128)
    if shape in ((), (1,)):
        return "tensor"
    if shape == (rows,):
        return "row"
    if len(shape) == 2:
        row, block, block2 = shape == (rows, 1), shape == (rows, bc), shape == (br, bc)
        if row or block or block2:
            if shape == (1, 1):
                return "tensor"
            return "row" if row else "block128" if block else "block128x128"
    raise ValueError(f"a scale tensor of shape {list(shape)} fits no scale layout of a matrix of shape "
                     f"{[rows, cols]} (expected [] or [1] for tensor, {[rows]} or {[rows, 1]} for row, "
                     f"{[rows, bc]} for block128, {[br, bc]} for block128x128)")


def scale_candidates(key: str) -> list[str]:
    """Scale tensor names tried for `key`: <key>_scale, <key>_scale_inv (for
    <prefix>.weight these are <prefix>.weight_scale / _scale_inv)."""
    return [key + "_scale", key + "_scale_inv"]


@dataclass
class Fp8Tensor:
    """Codes ([rows, cols] uint8, as in the file) and float32 scales."""

    codes: np.ndarray
    scales: np.ndarray
    format: str  # "e4m3" | "e5m2"
    scale: str   # "none" | "tensor" | "row" | "block128" | "block128x128"
    key: str
    scale_key: str | None


def _raw(mm: Any, base: int, entry: dict, what: str, path: str) -> memoryview:
    begin, end = (int(o) for o in entry["data_offsets"])
    if begin < 0 or begin > end or base + end > len(mm):
        raise ValueError(f"{path}: tensor {what!r} has data offsets [{begin}, {end}) outside the file")
    return memoryview(mm)[base + begin:base + end]


def read_fp8_tensor(path: str | os.PathLike, tensor: str | None = None, scale_tensor: str | None = None,
                    no_scale: bool = False) -> Fp8Tensor:
    """Reads FP8 tensor `tensor` of a .safetensors file and its scales."""
    path = os.fspath(path)
    mm, header, base = _tensors.open_safetensors(path)
    names = sorted(k for k in header if k != "__metadata__")
    if tensor is None:
        scale_names = {c for n in names for c in scale_candidates(n)}
        mats = [n for n in names if n not in scale_names and n != scale_tensor]
        if len(mats) != 1:
            raise ValueError(f"{path} holds {len(names)} tensors; pick one with tensor=: " + ", ".join(names[:20]))
        tensor = mats[0]
    if tensor not in names:
        raise ValueError(f"{path}: no tensor {tensor!r}")
    entry = header[tensor]
    fmt = FP8_DTYPES.get(entry.get("dtype"))
    if fmt is None:
        raise ValueError(f"{path}: tensor {tensor!r} is {entry.get('dtype')}, not F8_E4M3 or F8_E5M2")
    shape = tuple(int(d) for d in entry["shape"])
    if len(shape) != 2:
        raise ValueError(f"{path}: tensor {tensor!r} has shape {list(shape)}; a matrix must be 2-D")
    rows, cols = shape
    raw = _raw(mm, base, entry, tensor, path)
    if len(raw) != rows * cols:
        raise ValueError(f"{path}: tensor {tensor!r} has {len(raw)} bytes, its shape needs {rows * cols}")
    codes = np.frombuffer(raw, np.uint8).reshape(rows, cols)
    if no_scale:
        if scale_tensor is not None:
            raise ValueError("scale_tensor= and scale='none' exclude each other")
        return Fp8Tensor(codes, np.zeros(0, np.float32), fmt, "none", tensor, None)
    if scale_tensor is None:
        found = [c for c in scale_candidates(tensor) if c in header]
        if not found:
            raise ValueError(f"no scale tensor for FP8 tensor {tensor!r} (looked for "
                             f"{', '.join(scale_candidates(tensor))}); name it with scale_tensor=, or "
                             "upload the codes unscaled with scale='none'")
        if len(found) > 1:
            raise ValueError(f"FP8 tensor {tensor!r} has several scale tensors ({', '.join(found)}); "
                             "choose one with scale_tensor=")
        scale_tensor = found[0]
    if scale_tensor not in names:
        raise ValueError(f"{path}: no scale tensor {scale_tensor!r}")
    se = header[scale_tensor]
    sdt = se.get("dtype")
    if sdt not in _SCALE_DTYPES:
        raise ValueError(f"scale tensor {scale_tensor!r} has dtype {sdt}; scales must be F32, BF16 or F16")
    try:
        mode = scale_mode_for_shape(tuple(se["shape"]), rows, cols)
    except ValueError as e:
        raise ValueError(f"scale tensor {scale_tensor!r} of {tensor!r}: {e}") from None
    sraw = _raw(mm, base, se, scale_tensor, path)
    if sdt == "BF16":  # the high half of a float32
        bits = np.frombuffer(sraw, "<u2").astype(np.uint32) << 16
        scales = bits.view(np.float32)
    else:
        scales = np.frombuffer(sraw, _SCALE_DTYPES[sdt]).astype(np.float32)
    return Fp8Tensor(codes, np.ascontiguousarray(scales.reshape(-1)), fmt, mode, tensor, scale_tensor)


def unpack_codes(words: bytes, rows: int, cols: int, padded_cols: int) -> np.ndarray:
    """Packed words (little-endian uint32, 4 codes each, rows padded to
    padded_cols codes) as [rows, cols] uint8 codes."""
    a = np.frombuffer(words, np.uint8)
    if a.size != rows * padded_cols:
        raise ValueError(f"malformed packed words: {a.size} bytes for {rows} rows of {padded_cols} codes")
    return a.reshape(rows, padded_cols)[:, :cols].copy()
