"""Writes a ROWS x COLS float32 .npy of seeded random values (magnitudes in
[0.125, 2), random signs, never zero) without numpy, fast enough for
8192 x 8192: random bytes from random.Random(SEED), with each float's sign
and exponent bits forced into range by one bytes.translate over the top bytes.
Usage: make_random_npy.py OUT.npy ROWS COLS [SEED]"""
import random
import sys


def main():
    path, rows, cols = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    seed = int(sys.argv[4]) if len(sys.argv) > 4 else 1
    if rows <= 0 or cols <= 0:
        sys.exit("ROWS and COLS must be positive")
    rng = random.Random(seed)
    total = rows * cols * 4
    chunk = 1 << 24  # randbytes takes at most INT_MAX bits at once
    data = bytearray()
    while len(data) < total:
        data += rng.randbytes(min(chunk, total - len(data)))
    # Top byte of a little-endian float32: sign and the exponent's high 7 bits.
    # 0x3e/0x3f with either low exponent bit gives exponents 2^-3 .. 2^0.
    table = bytes((b & 0x80) | (0x3e + (b & 1)) for b in range(256))
    data[3::4] = bytes(data[3::4]).translate(table)
    header = "{'descr': '<f4', 'fortran_order': False, 'shape': (%d, %d), }" % (rows, cols)
    pad = 64 - (10 + len(header) + 1) % 64
    header += " " * pad + "\n"
    with open(path, "wb") as f:
        f.write(b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header.encode("latin1"))
        f.write(data)


if __name__ == "__main__":
    main()
