"""float64 references for the tests: FP8 decoding and exactly quantizable
inputs, attention, bf16 bits."""
from __future__ import annotations

import numpy as np


def _decode_table(exp_bits: int, man_bits: int, bias: int, ieee_specials: bool) -> np.ndarray:
    codes = np.arange(256)
    sign = np.where(codes & 0x80, -1.0, 1.0)
    e = (codes >> man_bits) & ((1 << exp_bits) - 1)
    m = codes & ((1 << man_bits) - 1)
    frac = m / float(1 << man_bits)
    val = np.where(e == 0, frac * 2.0 ** (1 - bias), (1 + frac) * 2.0 ** (e - bias))
    val = sign * val
    top = (1 << exp_bits) - 1
    if ieee_specials:  # E5M2: inf and NaN at the top exponent
        val = np.where((e == top) & (m == 0), sign * np.inf, val)
        val = np.where((e == top) & (m != 0), np.nan, val)
    else:  # E4M3: only S.1111.111 is NaN
        val = np.where((e == top) & (m == (1 << man_bits) - 1), np.nan, val)
    return val


E4M3 = _decode_table(4, 3, 7, False)
E5M2 = _decode_table(5, 2, 15, True)
MAX = {"e4m3": 448.0, "e5m2": 57344.0}
TABLES = {"e4m3": E4M3, "e5m2": E5M2}


def finite_codes(fmt: str) -> np.ndarray:
    t = TABLES[fmt]
    return np.nonzero(np.isfinite(t))[0].astype(np.uint8)

def random_codes(rng: np.random.Generator, fmt: str, rows: int, cols: int) -> np.ndarray:
    """Random finite FP8 codes [rows, cols]; E5M2 kept to |x| < 2 so products stay
    well inside f32 for the tests' tolerance; never all zero."""
    codes = rng.choice(finite_codes(fmt), size=(rows, cols)).astype(np.uint8)
    if fmt == "e5m2":
        codes = codes & np.uint8(0xBF)
    codes[0, 0] = 0x38
    return codes


def grid_matrix(rng: np.random.Generator, rows: int, cols: int, fmt: str, scale: str) -> np.ndarray:
    """A float64 matrix that quantizes without loss under `scale` (values on
    the FP8 grid times a power of two, each scale group holding +-max, so the
    server's scale amax / max is that power of two exactly)."""
    codes = rng.choice(finite_codes(fmt), size=(rows, cols))
    grid = TABLES[fmt][codes]
    mx = MAX[fmt]
    if scale == "none":
        return grid
    if scale == "tensor":
        grid[0, 0] = mx
        return grid * 2.0 ** rng.integers(-4, 5)
    if scale == "row":
        grid[:, 0] = mx * np.where(rng.random(rows) < 0.5, -1, 1)
        return grid * 2.0 ** rng.integers(-4, 5, size=(rows, 1))
    assert scale == "block128"
    blocks = -(-cols // 128)
    pow2 = 2.0 ** rng.integers(-4, 5, size=(rows, blocks))
    for b in range(blocks):
        grid[:, b * 128] = mx
    return grid * np.repeat(pow2, 128, axis=1)[:, :cols]


def bf16_bits(x: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 bit patterns (round to nearest even), as uint16."""
    u = np.asarray(x, np.float32).view(np.uint32).astype(np.uint64)
    u = (u + 0x7FFF + ((u >> 16) & 1)) >> 16
    return u.astype(np.uint16)


def from_bf16_bits(b: np.ndarray) -> np.ndarray:
    return (b.astype(np.uint32) << 16).view(np.float32).astype(np.float64)


def attention(q: np.ndarray, k: np.ndarray, v: np.ndarray, causal: bool, scale: float | None) -> np.ndarray:
    """softmax(scale q k^T) v in float64: q [B, H, L, D], k/v [KH, S, D]."""
    q = q.astype(np.float64)
    k = k.astype(np.float64)
    v = v.astype(np.float64)
    b, h, ql, d = q.shape
    kh, s, _ = k.shape
    scale = 1.0 / np.sqrt(d) if scale is None else scale
    group = h // kh
    out = np.empty((b, h, ql, d))
    for hi in range(h):
        kk, vv = k[hi // group], v[hi // group]
        logits = scale * q[:, hi] @ kk.T  # [B, L, S]
        if causal:
            visible = np.arange(s)[None, :] <= (s - ql + np.arange(ql))[:, None]
            logits = np.where(visible[None], logits, -np.inf)
        logits -= logits.max(axis=-1, keepdims=True)
        p = np.exp(logits)
        p /= p.sum(axis=-1, keepdims=True)
        out[:, hi] = p @ vv
    return out
