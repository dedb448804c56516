"""Whole-model upload: what ``plume upload-model`` does (client/cli/
checkpoint_commands.cc), for the Python clients.

A checkpoint is one ``.safetensors`` file, or the shards its
``model.safetensors.index.json`` names (``weight_map``: tensor -> file,
relative to the index's folder; a scale tensor may sit in another shard
than its matrix). Every 2-D tensor whose name ends in ``weight`` (or matches
`match`, searched) is uploaded as `prefix` + name, never the scale tensors:
F8_E4M3 / F8_E5M2 ones pre-packed with their scale tensor (``<key>_scale``
or ``<key>_scale_inv``; for ``<p>.weight`` those are ``<p>.weight_scale`` /
``<p>.weight_scale_inv``), F32 / F16 / BF16 ones quantized by the server
with `format` / `scale`. Every tensor is planned from the headers first: a
missing or ambiguous scale tensor, a scale shape that fits no mode, or an
unsupported dtype is a ValueError naming all of them, and nothing is sent.

Each upload carries the plume64v2 content hash (plume/_hash.py, the same
labels as the C++ client's), so that a tensor resident under its name with
the same hash is skipped; one with another hash is reported and left alone
unless `replace` (delete, then upload).
"""
from __future__ import annotations

import json
import math
import mmap
import os
import re
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import numpy as np

from plume import _checkpoint, _hash

_ITEMSIZE = {"F64": 8, "I64": 8, "U64": 8, "F32": 4, "I32": 4, "U32": 4, "F16": 2, "BF16": 2, "I16": 2,
             "U16": 2, "I8": 1, "U8": 1, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1}
_FLOATS = {"F32": 1, "F16": 2, "BF16": 3}  # plume.v1.DType numbering
_FORMATS = {"e4m3": 4, "e5m2": 5}
_MODES = {"none": 1, "tensor": 2, "row": 3, "block128": 4, "block128x128": 5}  # plume.v1.ScaleMode


@dataclass(frozen=True)
class _Tensor:
    name: str
    dtype: str
    shape: tuple[int, ...]
    path: str    # the file holding it
    offset: int  # of its bytes in the file
    nbytes: int


class Checkpoint:
    """The tensors of a .safetensors file or of a sharded checkpoint's index
    (headers only; bytes are read when asked for)."""

    def __init__(self, path: str | os.PathLike):
        path = os.fspath(path)
        self.path = path
        self._tensors: dict[str, _Tensor] = {}
        if not path.endswith(".json"):
            for t in _read_header(path):
                self._tensors[t.name] = t
            return
        try:
            with open(path, "rb") as f:
                index = json.load(f)
        except OSError as e:
            raise ValueError(f"{path}: cannot read: {e.strerror}") from None
        except ValueError as e:
            raise ValueError(f"{path}: not JSON: {e}") from None
        wm = index.get("weight_map") if isinstance(index, dict) else None
        if not isinstance(wm, dict):
            raise ValueError(f"{path}: no \"weight_map\" object (a safetensors index maps each tensor name "
                             "to its shard file)")
        shards: dict[str, dict[str, _Tensor]] = {}
        folder = os.path.dirname(path)
        for name, rel in wm.items():
            if not isinstance(rel, str):
                raise ValueError(f"{path}: weight_map[{name!r}] is not a file name")
            if rel not in shards:
                shards[rel] = {t.name: t for t in _read_header(os.path.join(folder, rel))}
            if name not in shards[rel]:
                raise ValueError(f"{path}: weight_map puts {name!r} in {rel}, which has no such tensor")
            self._tensors[name] = shards[rel][name]

    def names(self) -> list[str]:
        return sorted(self._tensors)

    def tensor(self, name: str) -> _Tensor:
        return self._tensors[name]

    def read(self, name: str) -> bytes:
        t = self._tensors[name]
        with open(t.path, "rb") as f:
            f.seek(t.offset)
            b = f.read(t.nbytes)
        if len(b) != t.nbytes:
            raise OSError(f"{t.path}: short read of {name!r}")
        return b

    def view(self, name: str) -> memoryview:
        """The tensor's bytes, mapped (read as they are used)."""
        t = self._tensors[name]
        with open(t.path, "rb") as f:
            mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        return memoryview(mm)[t.offset:t.offset + t.nbytes]


def _read_header(path: str) -> list[_Tensor]:
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise ValueError(f"{path}: not a safetensors file (shorter than its header length)")
            n = int.from_bytes(head, "little")
            if n > size - 8:
                raise ValueError(f"{path}: header length {n} runs past the end of the file")
            header = json.loads(f.read(n))
    except OSError as e:
        raise ValueError(f"{path}: cannot read: {e.strerror}") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: malformed safetensors header: {e}") from None
    if not isinstance(header, dict):
        raise ValueError(f"{path}: malformed safetensors header: not a JSON object")
    base, data = 8 + n, size - 8 - n
    out = []
    for name, e in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype, shape = e["dtype"], tuple(int(d) for d in e["shape"])
            begin, end = (int(o) for o in e["data_offsets"])
        except (KeyError, TypeError, ValueError):
            raise ValueError(f"{path}: tensor {name!r}: malformed entry {e!r}") from None
        if dtype not in _ITEMSIZE:
            raise ValueError(f"{path}: tensor {name!r}: unknown dtype {dtype!r}")
        if any(d < 0 for d in shape) or not 0 <= begin <= end <= data:
            raise ValueError(f"{path}: tensor {name!r}: data_offsets [{begin}, {end}] fall outside the "
                             f"{data}-byte data section")
        if math.prod(shape) * _ITEMSIZE[dtype] != end - begin:
            raise ValueError(f"{path}: tensor {name!r}: shape {list(shape)} needs "
                             f"{math.prod(shape) * _ITEMSIZE[dtype]} bytes but data_offsets span {end - begin}")
        out.append(_Tensor(name, dtype, shape, path, base + begin, end - begin))
    return out


def is_scale_tensor_name(name: str, names: set[str]) -> bool:
    """True when `name` is the scale tensor of a tensor in `names`."""
    return any(name.endswith(s) and name[:-len(s)] in names for s in ("_scale_inv", "_scale"))


@dataclass
class TensorUpload:
    """One tensor of a model upload and what happened to it."""

    key: str            # its name in the checkpoint
    name: str           # on the server: prefix + key
    shape: tuple[int, int]
    dtype: str          # as in the file: "F8_E4M3", "BF16", ...
    mode: str           # the scale mode it was (or would be) uploaded with
    bytes: int          # what its upload sends: packed codes and scales, or the source
    result: str = ""    # "uploaded", "replaced", "skipped (resident, same content)",
                        # "skipped (resident, other content)", "failed", "failed (read)", "failed (delete)"
    seconds: float = 0.0
    content_hash: str = ""
    error: str = ""     # why it failed or was not replaced
    scale_key: str = ""  # FP8: its scale tensor


@dataclass
class ModelUploadSummary:
    """What upload_model did; ``ok`` when nothing failed and nothing was
    left resident with other content."""

    tensors: list[TensorUpload] = field(default_factory=list)

    def _count(self, *results: str) -> int:
        return sum(t.result in results for t in self.tensors)

    @property
    def uploaded(self) -> int:
        return self._count("uploaded", "replaced")

    @property
    def skipped(self) -> int:
        return self._count("skipped (resident, same content)")

    @property
    def conflicts(self) -> int:
        return self._count("skipped (resident, other content)")

    @property
    def failed(self) -> int:
        return sum(t.result.startswith("failed") for t in self.tensors)

    @property
    def ok(self) -> bool:
        return self.failed == 0 and self.conflicts == 0

    def __str__(self) -> str:
        rows = [("NAME", "SHAPE", "DTYPE", "MODE", "BYTES", "SECONDS", "RESULT")]
        rows += [(t.name, f"{t.shape[0]}x{t.shape[1]}", t.dtype.lower(), t.mode, str(t.bytes), f"{t.seconds:.2f}",
                  t.result) for t in self.tensors]
        width = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        lines = ["  ".join(c.rjust(w) if i in (4, 5) else c.ljust(w) for i, (c, w) in enumerate(zip(r, width))).rstrip()
                 for r in rows]
        lines.append(f"{self.uploaded} uploaded, {self.skipped} skipped as already resident, "
                     f"{self.conflicts} resident with other content, {self.failed} failed")
        lines += [f"error: {t.name}: {t.error}" for t in self.tensors if t.error]
        return "\n".join(lines)


def plan(ckpt: Checkpoint, *, match: Optional[str], prefix: str, scale: str) -> list[TensorUpload]:
    """The tensors to upload, from the headers alone; ValueError naming every
    problem (nothing is sent then)."""
    try:
        pattern = re.compile(match) if match else None
    except re.error as e:
        raise ValueError(f"match={match!r} is not a regular expression: {e}") from None
    names = ckpt.names()
    name_set = set(names)
    out, problems = [], []
    for key in names:
        t = ckpt.tensor(key)
        if len(t.shape) != 2:
            continue
        if (pattern.search(key) is None) if pattern else not key.endswith("weight"):
            continue
        if is_scale_tensor_name(key, name_set):
            continue
        rows, cols = t.shape
        u = TensorUpload(key, prefix + key, (rows, cols), t.dtype, scale, t.nbytes)
        if t.dtype in _checkpoint.FP8_DTYPES:
            cands = _checkpoint.scale_candidates(key)
            found = [c for c in cands if c in name_set]
            if not found:
                problems.append(f"no scale tensor for FP8 tensor {key!r} (looked for {', '.join(cands)})")
                continue
            if len(found) > 1:
                problems.append(f"FP8 tensor {key!r} has several scale tensors ({', '.join(found)})")
                continue
            s = ckpt.tensor(found[0])
            if s.dtype not in ("F32", "BF16", "F16"):
                problems.append(f"scale tensor {found[0]!r} has dtype {s.dtype}; scales must be F32, BF16 or F16")
                continue
            try:
                u.mode = _checkpoint.scale_mode_for_shape(s.shape, rows, cols)
            except ValueError as e:
                problems.append(f"scale tensor {found[0]!r} of {key!r}: {e}")
                continue
            u.scale_key = found[0]
            padded = -(-cols // 16) * 16
            u.bytes = rows * padded + 4 * math.prod(s.shape)
        elif t.dtype not in _FLOATS:
            problems.append(f"tensor {key!r} has dtype {t.dtype}; plume takes F8_E4M3, F8_E5M2, F32, F16 or BF16 "
                            "(narrow the selection with match=)")
            continue
        out.append(u)
    if problems:
        raise ValueError("; ".join(problems) + "; nothing uploaded")
    if not out:
        raise ValueError(f"{ckpt.path}: no 2-D tensor matches "
                         + (f"match={match!r}" if match else "(names ending in \"weight\")"))
    return out


def fp8_scales(ckpt: Checkpoint, u: TensorUpload) -> np.ndarray:
    """The FP32 scales of FP8 tensor `u` (F32, F16 or BF16 in the file)."""
    s = ckpt.tensor(u.scale_key)
    raw = ckpt.read(u.scale_key)
    if s.dtype == "BF16":  # the high half of a float32
        return (np.frombuffer(raw, "<u2").astype(np.uint32) << 16).view(np.float32)
    return np.frombuffer(raw, "<f4" if s.dtype == "F32" else "<f2").astype(np.float32)


def content_hash(ckpt: Checkpoint, u: TensorUpload, scales: Optional[np.ndarray], *, format: str,
                 non_saturating: bool) -> str:
    """The label the C++ client gives the same upload."""
    t = ckpt.tensor(u.key)
    if t.dtype in _checkpoint.FP8_DTYPES:
        return _hash.fp8_content_hash(t.shape[0], t.shape[1], format=_FORMATS[_checkpoint.FP8_DTYPES[t.dtype]],
                                      scale_mode=_MODES[u.mode], non_saturating=non_saturating,
                                      codes=(t.path, t.offset), scales=scales)
    return _hash.float_content_hash(t.shape, (t.path, t.offset, t.nbytes), source_dtype=_FLOATS[t.dtype],
                                    format=_FORMATS[format.lower()], scale_mode=_MODES[u.mode],
                                    non_saturating=non_saturating)


class Run:
    """One tensor's steps, shared by the sync and asyncio clients: each
    yields what the client must do (``("delete", name)`` or ``("upload",
    kwargs)``) and is told the outcome."""

    def __init__(self, ckpt: Checkpoint, resident: dict[str, Any], *, format: str, non_saturating: bool,
                 placement: str, replace: bool, progress: Optional[Callable[[int, int], None]], total: int):
        self.ckpt, self.resident = ckpt, resident
        self.format, self.non_saturating, self.placement, self.replace = format, non_saturating, placement, replace
        self.progress, self.total, self.done = progress, total, 0

    def steps(self, u: TensorUpload):
        """A generator: ``("delete", name)`` and ``("upload", kwargs)`` to
        perform; send() back None, or the exception it raised."""
        t0 = time.monotonic()
        try:
            t = self.ckpt.tensor(u.key)
            scales = fp8_scales(self.ckpt, u) if u.scale_key else None
            u.content_hash = content_hash(self.ckpt, u, scales, format=self.format,
                                          non_saturating=self.non_saturating)
        except (OSError, ValueError) as e:
            u.result, u.error = "failed (read)", str(e)
            return self._end(u, t0)
        r = self.resident.get(u.name)
        replace = False
        if r is not None:
            if r.content_hash == u.content_hash:
                u.result = "skipped (resident, same content)"
                return self._end(u, t0)
            if not self.replace:
                u.result = "skipped (resident, other content)"
                u.error = (f"resident with content hash {r.content_hash!r}, this tensor's is {u.content_hash!r}; "
                           "not replaced (replace=True)")
                return self._end(u, t0)
            err = yield ("delete", u.name)
            if err is not None and type(err).__name__ != "NotFound":
                u.result, u.error = "failed (delete)", str(err)
                return self._end(u, t0)
            replace = True
        if u.scale_key:
            codes = np.frombuffer(self.ckpt.view(u.key), np.uint8).reshape(t.shape)
            kwargs = dict(kind="packed", name=u.name, codes=codes, scales=scales,
                          format=_checkpoint.FP8_DTYPES[t.dtype], scale=u.mode, placement=self.placement,
                          content_hash=u.content_hash, non_saturating=self.non_saturating)
        else:
            kwargs = dict(kind="float", name=u.name, src=t.path, tensor=u.key, format=self.format, scale=u.mode,
                          non_saturating=self.non_saturating, placement=self.placement,
                          content_hash=u.content_hash)
        err = yield ("upload", kwargs)
        if err is not None:
            u.result, u.error = "failed", str(err)
        else:
            u.result = "replaced" if replace else "uploaded"
        return self._end(u, t0)

    def _end(self, u: TensorUpload, t0: float) -> None:
        u.seconds = time.monotonic() - t0
        self.done += u.bytes
        if self.progress is not None:
            self.progress(self.done, self.total)


def drive(steps: Any, do: Callable[[tuple], None], errors: tuple[type, ...]) -> None:
    """Runs one tensor's steps with `do` (the sync client); an exception of
    `errors` from it is handed back to the steps."""
    try:
        op = next(steps)
        while True:
            try:
                do(op)
                err = None
            except errors as e:
                err = e
            op = steps.send(err)
    except StopIteration:
        pass
