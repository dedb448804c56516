"""plume's content hash, "plume64v2:<16 hex digits>": the label the clients
put on an upload (MatrixHeader.content_hash) so that a later run can skip what
is already resident with the same content. The same definition as the C++
client's (client/io/include/plume/io/content_hash.h); tests check that both
give the same labels. Not cryptographic: it tells "the same bytes as last
time" from "other bytes" and does not resist an adversary.

The hashed stream is cut into little-endian 64-bit words w_0, w_1, ... (the
last one zero-padded). Each word is mixed on its own with its position,
``m_i = Mix(w_i + (i + 1) * G)`` (mod 2^64), the m_i are summed modulo 2^64
into S, and the digest is ``Mix(S + Mix(L ^ A))`` with L the stream's length
in bytes; Mix is splitmix64's finalizer. A field is its length as one word,
then its bytes zero-padded to whole words.

Since every word is mixed on its own, numpy computes a chunk of words at a
time (a GiB in 1.2-3 s on the shared 2-core development VM, 0.6-1.9 s of
CPU); no Python loop touches a word.
"""
from __future__ import annotations

import os
from typing import Any

import numpy as np

PREFIX = "plume64v2:"

_MASK = (1 << 64) - 1
_G = 0x9E3779B97F4A7C15
_A = 0xBF58476D1CE4E5B9
_B = 0x94D049BB133111EB
_CHUNK_WORDS = 1 << 17  # 1 MiB of words per numpy step: it stays in cache
_READ_BYTES = 8 << 20   # bytes read from a file at a time

# (k + 1) * G for k in [0, _CHUNK_WORDS): a chunk's positions are these plus
# its first word's index times G.
_STEPS = np.arange(1, _CHUNK_WORDS + 1, dtype=np.uint64) * np.uint64(_G)


def _mix(z: int) -> int:
    z ^= z >> 30
    z = (z * _A) & _MASK
    z ^= z >> 27
    z = (z * _B) & _MASK
    return z ^ (z >> 31)


def _sum_words(words: np.ndarray, first: int) -> int:
    """The sum of m_i (mod 2^64) over `words` (uint64), word 0 being number `first`."""
    total = 0
    z = np.empty(min(len(words), _CHUNK_WORDS), np.uint64)
    t = np.empty_like(z)
    with np.errstate(over="ignore"):
        for off in range(0, len(words), _CHUNK_WORDS):
            w = words[off:off + _CHUNK_WORDS]
            n = len(w)
            zc, tc = z[:n], t[:n]
            np.add(_STEPS[:n], np.uint64(((first + off) * _G) & _MASK), out=zc)
            np.add(zc, w, out=zc)
            np.right_shift(zc, np.uint64(30), out=tc)
            np.bitwise_xor(zc, tc, out=zc)
            np.multiply(zc, np.uint64(_A), out=zc)
            np.right_shift(zc, np.uint64(27), out=tc)
            np.bitwise_xor(zc, tc, out=zc)
            np.multiply(zc, np.uint64(_B), out=zc)
            np.right_shift(zc, np.uint64(31), out=tc)
            np.bitwise_xor(zc, tc, out=zc)
            total += int(zc.sum(dtype=np.uint64))
    return total & _MASK


class ContentHasher:
    """Streams bytes and fields into a plume64v2 hash."""

    def __init__(self) -> None:
        self._sum = 0
        self._words = 0   # whole words summed
        self._total = 0   # bytes given
        self._tail = b""  # bytes of the next word

    def update(self, data: Any) -> None:
        """Bytes of the stream (anything with the buffer protocol)."""
        mv = memoryview(data).cast("B")
        self._total += len(mv)
        if self._tail:
            take = min(len(mv), 8 - len(self._tail))
            self._tail += bytes(mv[:take])
            mv = mv[take:]
            if len(self._tail) < 8:
                return
            self._add(np.frombuffer(self._tail, "<u8"))
            self._tail = b""
        whole = len(mv) // 8 * 8
        if whole:
            self._add(np.frombuffer(mv[:whole], "<u8"))
        self._tail = bytes(mv[whole:])

    def _add(self, words: np.ndarray) -> None:
        self._sum = (self._sum + _sum_words(words.astype(np.uint64, copy=False), self._words)) & _MASK
        self._words += len(words)

    def field_int(self, v: int) -> None:
        self.update((v & _MASK).to_bytes(8, "little"))

    def field(self, data: Any) -> None:
        """Length-prefixed and zero-padded to whole words."""
        mv = memoryview(data).cast("B")
        self.field_int(len(mv))
        self.update(mv)
        self.update(bytes(-len(mv) % 8))

    def field_file(self, path: str | os.PathLike, offset: int, size: int) -> None:
        """A field of `size` bytes of a file from `offset`, read a few MiB at
        a time. OSError when the file is shorter than that."""
        self.field_int(size)
        buf = bytearray(min(size, _READ_BYTES))
        with open(path, "rb", buffering=0) as f:
            f.seek(offset)
            left = size
            while left:
                n = min(left, len(buf))
                view = memoryview(buf)[:n]
                got = 0
                while got < n:
                    r = f.readinto(view[got:])
                    if not r:
                        raise OSError(f"{os.fspath(path)}: short read at byte {offset + size - left + got}")
                    got += r
                self.update(view)
                left -= n
        self.update(bytes(-size % 8))

    def digest(self) -> int:
        s = self._sum
        if self._tail:
            w = int.from_bytes(self._tail.ljust(8, b"\0"), "little")
            s = (s + _mix((w + (self._words + 1) * _G) & _MASK)) & _MASK
        return _mix((s + _mix(self._total ^ _A)) & _MASK)

    def label(self) -> str:
        return f"{PREFIX}{self.digest():016x}"


def float_content_hash(shape: tuple[int, ...], data: Any, *, source_dtype: int, format: int, scale_mode: int,
                       non_saturating: bool) -> str:
    """The label of a float upload the server quantizes (wire enum numbers),
    as the C++ FloatContentHash: its bytes as they are sent (a buffer, or
    (path, offset, size) of a file holding them)."""
    h = ContentHasher()
    h.field(b"plume float v1")
    h.field_int(len(shape))
    for d in shape:
        h.field_int(int(d))
    for v in (source_dtype, format, scale_mode, int(non_saturating)):
        h.field_int(int(v))
    if isinstance(data, tuple):
        h.field_file(*data)
    else:
        h.field(data)
    return h.label()


def fp8_content_hash(rows: int, cols: int, *, format: int, scale_mode: int, non_saturating: bool,
                     codes: Any, scales: np.ndarray) -> str:
    """The label of a pre-packed FP8 upload (wire enum numbers), as the C++
    Fp8CodesContentHash: `codes` [rows, cols] bytes unpadded (a buffer, or
    (path, offset) of a file holding them), `scales` float32 in the mode's
    layout."""
    h = ContentHasher()
    h.field(b"plume fp8 pre-packed v1")
    for v in (rows, cols, format, scale_mode, int(non_saturating)):
        h.field_int(int(v))
    if isinstance(codes, tuple):
        h.field_file(codes[0], codes[1], rows * cols)
    else:
        h.field(codes)
    h.field(np.ascontiguousarray(scales, dtype="<f4").reshape(-1))
    return h.label()
