#!/usr/bin/env python3
"""Writes the fuzzers' seed corpus (fuzz/corpus/<fuzzer>/), deterministically.
Plain Python: protobuf, .npy, .safetensors and store files are encoded by hand
from their definitions (proto/plume/v1/plume.proto, server/core/durable_store.h)."""
import json, os, random, struct

root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus")
rng = random.Random(7)

def put(fuzzer, name, data):
    d = os.path.join(root, fuzzer)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)

# --- protobuf by hand
def varint(v):
    v &= (1 << 64) - 1
    out = b""
    while True:
        b = v & 0x7F
        v >>= 7
        if v:
            out += bytes([b | 0x80])
        else:
            return out + bytes([b])
def fv(field, v): return varint(field << 3) + varint(v)
def fb(field, b): return varint((field << 3) | 2) + varint(len(b)) + b
def ff(field, x): return varint((field << 3) | 5) + struct.pack("<f", x)

def header(name, rows, cols, src=1, fmt=4, mode=3):
    return fb(1, name.encode()) + fv(2, rows) + fv(3, cols) + fv(4, src) + fv(5, fmt) + fv(6, mode)
def tensor(dtype, shape, data):
    return fv(1, dtype) + fb(2, b"".join(varint(s) for s in shape)) + fb(3, data)

put("fuzz_validators", "upload_ok", b"\x00" + fb(1, header("w", 8, 40)))
put("fuzz_validators", "upload_packed", b"\x00" + fb(1, header("p", 2, 20, 4, 4, 3)) + fb(3, struct.pack("<2f", 1.0, 0.5)))
put("fuzz_validators", "upload_bad_name", b"\x00" + fb(1, header("../x", 8, 40)))
put("fuzz_validators", "upload_huge", b"\x00" + fb(1, header("h", 1 << 40, 1 << 40, 2, 5, 4)))
put("fuzz_validators", "gemv_ok", b"\x01" + fb(1, b"w") + fb(2, tensor(1, [40], b"\x01" * 160)) + fv(3, 1) + fv(4, 9))
put("fuzz_validators", "gemv_batch", b"\x01" + fb(1, b"w") + fb(2, tensor(2, [3, 40], b"\x02" * 240)) + fv(3, 3))
put("fuzz_validators", "gemv_fp8", b"\x01" + fb(1, b"w") + fb(2, tensor(4, [40], b"\x38" * 40)) + ff(5, 0.25))
put("fuzz_validators", "name", b"\x02layer0.attn_q-proj")

# Headers with the limits at their maximum: sizes near and past 2^64.
put("fuzz_header_limits", "packed_wrap_2p64", b"\x00" + header("m", 1 << 32, 4294967281, 4, 4, 3))
put("fuzz_header_limits", "packed_cols_2p44", b"\x00" + header("m", 1 << 20, 1 << 44, 4, 4, 1))
put("fuzz_header_limits", "block128_big", b"\x00" + header("m", 1 << 29, 4294967281, 4, 4, 4))
put("fuzz_header_limits", "f32_ok", b"\x00" + header("m", 1024, 4096))
def kv_header(name, heads, seq, dim, src=1, mode=4):
    return fb(1, name.encode()) + fv(2, heads) + fv(3, seq) + fv(4, dim) + fv(5, src) + fv(7, mode)
put("fuzz_header_limits", "kv_ok", b"\x01" + kv_header("c", 8, 4096, 128))
put("fuzz_header_limits", "kv_huge_dim", b"\x01" + kv_header("c", 1 << 20, 1, 1 << 40))
put("fuzz_header_limits", "kv_long", b"\x01" + kv_header("c", 1, 1 << 48, 16, 1, 2))

# --- .npy
def npy(descr, shape, data, fortran=False):
    d = "{'descr': '%s', 'fortran_order': %s, 'shape': (%s), }" % (
        descr, "True" if fortran else "False", "".join("%d, " % s for s in shape) if len(shape) != 1 else "%d," % shape[0])
    hl = len(d) + 1
    pad = (64 - (10 + hl) % 64) % 64
    h = d + " " * pad + "\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(h)) + h.encode() + data
put("fuzz_npy", "f32_2d", npy("<f4", [3, 5], struct.pack("<15f", *[rng.gauss(0, 1) for _ in range(15)])))
put("fuzz_npy", "f16_1d", npy("<f2", [4], struct.pack("<4e", 1.0, -2.0, 0.5, 65504.0)))
put("fuzz_npy", "f32_fortran", npy("<f4", [2, 2], struct.pack("<4f", 1, 2, 3, 4), True))
put("fuzz_npy", "truncated", npy("<f4", [8, 8], b"\x00" * 10))

# --- .safetensors
def st(tensors):
    hdr, blob = {}, b""
    for name, (dtype, shape, data) in tensors.items():
        hdr[name] = {"dtype": dtype, "shape": shape, "data_offsets": [len(blob), len(blob) + len(data)]}
        blob += data
    hdr["__metadata__"] = {"format": "pt"}
    h = json.dumps(hdr).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    return struct.pack("<Q", len(h)) + h + blob
put("fuzz_safetensors", "two", st({"a": ("F32", [2, 3], struct.pack("<6f", *range(6))),
                                   "b": ("BF16", [4], b"\x80\x3f" * 4)}))
put("fuzz_safetensors", "f16", st({"w": ("F16", [2, 2], struct.pack("<4e", 1, 2, 3, 4))}))

# --- store files (server/core/durable_store.h)
def crc32c(data, crc=0):
    crc ^= 0xFFFFFFFF
    for b in data:
        crc ^= b
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
    return crc ^ 0xFFFFFFFF
def nscales(mode, rows, cols):
    return {1: 0, 2: 1, 3: rows, 4: rows * ((cols + 127) // 128)}[mode]
def store_file(name, rows, cols, fmt, mode, sat=1, src=1):
    padded = (cols + 15) // 16 * 16
    codes = bytearray()
    for r in range(rows):
        codes += bytes(rng.randrange(0, 0x7F) for _ in range(cols)) + bytes(padded - cols)
    scales = struct.pack("<%df" % nscales(mode, rows, cols), *[rng.uniform(0.01, 2) for _ in range(nscales(mode, rows, cols))])
    nb = name.encode()
    npad = (len(nb) + 15) // 16 * 16
    size = 80 + npad + len(scales) + len(codes)
    tail = struct.pack("<QIIqqBBBBIqQQ", size, 1, len(nb), rows, cols, fmt, mode, sat, src, 0, 1700000000000,
                       nscales(mode, rows, cols), len(codes) // 4) + nb + bytes(npad - len(nb))
    body = tail + scales + bytes(codes)
    return b"PLUMEMX\n" + struct.pack("<II", 1, crc32c(body)) + body
put("fuzz_store_file", "row", store_file("w", 3, 20, 4, 3))
put("fuzz_store_file", "block128", store_file("layer.0", 2, 130, 5, 4, 0, 2))
put("fuzz_store_file", "none", store_file("n", 1, 16, 4, 1))
put("fuzz_store_file", "tensor", store_file("t-1", 4, 7, 5, 2))

# --- FP8: floats, specials and boundaries
specials = [0.0, -0.0, 1.0, -1.0, 448.0, 464.0, 480.0, 57344.0, 61440.0, float("inf"), float("-inf"),
            float("nan"), 2.0 ** -9, 2.0 ** -10, 2.0 ** -16, 2.0 ** -17, 1.0625, 1.125, 3e38]
put("fuzz_fp8", "specials", struct.pack("<%df" % len(specials), *specials))
put("fuzz_fp8", "random", struct.pack("<64f", *[rng.gauss(0, 100) for _ in range(64)]))

# --- K/V cache store files (server/core/durable_store.h, "<name>.pkv"); an
# own generator so the seeds above stay as they are.
kv_rng = random.Random(11)
def kv_page(heads, dim, mode, tokens):
    row = (dim + 15) // 16 * 16
    codes = bytearray(2 * heads * 64 * row)
    for side in range(2):
        for h in range(heads):
            for t in range(tokens):
                o = side * heads * 64 * row + h * 64 * row + t * row
                codes[o:o + dim] = bytes(kv_rng.randrange(0, 0x7F) for _ in range(dim))
    scales = struct.pack("<%df" % (2 * heads), *[kv_rng.uniform(0.01, 2) for _ in range(2 * heads)]) if mode == 4 else b""
    page = bytes(codes) + scales
    return page + bytes((-len(page)) % 256)
def kv_file(name, heads, dim, mode, steps, fmt=4, sat=1, src=1):
    g = {1: 0, 2: 1, 3: heads, 4: 0}[mode]
    nb = name.encode()
    npad = (len(nb) + 15) // 16 * 16
    page_bytes = len(kv_page(heads, dim, mode, 0))
    hb = 80 + npad + 8 * g
    tail = struct.pack("<QIIqqBBBBIqQQ", hb, 2, len(nb), heads, dim, fmt, mode, sat, src, 0, 1700000000000,
                       page_bytes, g) + nb + bytes(npad - len(nb))
    tail += struct.pack("<%df" % (2 * g), *[kv_rng.uniform(0.01, 2) for _ in range(2 * g)])
    out = b"PLUMEKV\n" + struct.pack("<II", 1, crc32c(tail)) + tail
    seq = 0
    for tokens in steps:
        first, seq = seq // 64, seq + tokens
        count = (seq + 63) // 64 - first
        pages = b"".join(kv_page(heads, dim, mode, min(64, seq - 64 * p)) for p in range(first, first + count))
        body = struct.pack("<Qqqqq", 48 + len(pages), seq, first, count, 0) + pages
        out += struct.pack("<II", 0x52564B50, crc32c(body)) + body
    return out
put("fuzz_store_file", "kv_block", kv_file("cache", 1, 8, 4, [70, 1]))
put("fuzz_store_file", "kv_head", kv_file("kv.1", 2, 4, 3, [3, 61, 2]))
put("fuzz_store_file", "kv_torn", kv_file("t", 1, 8, 2, [5, 64])[:-300])

# --- matrix store files of version 2 (a content hash; BLOCK128X128 scales),
# with an own generator so the seeds above stay as they are.
v2_rng = random.Random(23)
def store_file_v2(name, rows, cols, fmt, mode, content_hash):
    padded = (cols + 15) // 16 * 16
    n = {1: 0, 2: 1, 3: rows, 4: rows * ((cols + 127) // 128),
         5: ((rows + 127) // 128) * ((cols + 127) // 128)}[mode]
    codes = bytearray()
    for r in range(rows):
        codes += bytes(v2_rng.randrange(0, 0x7F) for _ in range(cols)) + bytes(padded - cols)
    scales = struct.pack("<%df" % n, *[v2_rng.uniform(0.01, 2) for _ in range(n)])
    nb, hb = name.encode(), content_hash.encode()
    npad, hpad = (len(nb) + 15) // 16 * 16, (len(hb) + 15) // 16 * 16
    size = 96 + npad + hpad + len(scales) + len(codes)
    tail = struct.pack("<QIIqqBBBBIqQQI12x", size, 1, len(nb), rows, cols, fmt, mode, 1, 1, 0,
                       1700000000000, n, len(codes) // 4, len(hb))
    body = tail + nb + bytes(npad - len(nb)) + hb + bytes(hpad - len(hb)) + scales + bytes(codes)
    return b"PLUMEMX\n" + struct.pack("<II", 2, crc32c(body)) + body
put("fuzz_store_file", "block128x128_v2", store_file_v2("ckpt.w", 130, 200, 4, 5, "plume64:0123456789abcdef"))
put("fuzz_store_file", "row_v2_nohash", store_file_v2("r", 3, 20, 5, 3, ""))
