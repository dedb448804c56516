"""Whole-model upload (Client.upload_model) of sharded checkpoints generated
here (fixed seeds, never all zeros): FP8 tensors pre-packed with their scale
tensors (found across shards), F32/F16/BF16 ones quantized by the server,
GEMV against float64 references; reruns skip by content hash, other content
is replaced only when asked; problems refuse before anything is sent. And
plume64v2: the labels the C++ client pins, and the same label from Python
and from the C++ CLI for the same tensors."""
from __future__ import annotations

import asyncio
import json
import os
import subprocess

import numpy as np
import pytest

from _ref import TABLES, bf16_bits, grid_matrix, random_codes
from plume import _hash
from test_matrix import assert_gemv, write_safetensors

import plume
import plume.aio


def _pow2(rng, n):
    return (2.0 ** rng.integers(-6, -1, size=n)).astype(np.float32)


def _dequantized(codes, fmt, tiles):
    """FP8 codes times 128x128 block scales ([ceil(rows/128), ceil(cols/128)])."""
    rows, cols = codes.shape
    full = np.repeat(np.repeat(tiles.astype(np.float64), 128, axis=0), 128, axis=1)[:rows, :cols]
    return TABLES[fmt][codes] * full


class Model:
    """A two-shard checkpoint with its index: FP8 E4M3 (block128x128 scales
    in the other shard), FP8 E5M2 with row scales and ragged columns, a BF16
    and an F16 weight, and tensors upload_model must leave alone (1-D, not
    a weight)."""

    def __init__(self, rng, folder):
        self.folder = folder
        self.down = random_codes(rng, "e4m3", 200, 300)
        self.down_tiles = _pow2(rng, 6).reshape(2, 3)
        self.q = random_codes(rng, "e5m2", 130, 100)  # 100 columns: padded to 112
        self.q_rows = _pow2(rng, 130)
        self.head = grid_matrix(rng, 64, 96, "e4m3", "row")  # exact in BF16 and on the FP8 grid
        self.embed = grid_matrix(rng, 50, 32, "e4m3", "row") / 64
        self.write()

    def write(self):
        s1 = {"model.layers.0.mlp.down_proj.weight": ("F8_E4M3", self.down.shape, self.down.tobytes()),
              "model.layers.0.self_attn.q_proj.weight_scale": ("F32", (130,), self.q_rows.tobytes()),
              "lm_head.weight": ("BF16", self.head.shape, bf16_bits(self.head).astype("<u2").tobytes()),
              "model.norm.weight": ("F32", (96,), np.ones(96, "<f4").tobytes())}
        s2 = {"model.layers.0.mlp.down_proj.weight_scale_inv": ("F32", (2, 3), self.down_tiles.tobytes()),
              "model.layers.0.self_attn.q_proj.weight": ("F8_E5M2", self.q.shape, self.q.tobytes()),
              "model.embed_tokens.weight": ("F16", self.embed.shape, self.embed.astype("<f2").tobytes()),
              "model.layers.0.mlp.bias_table": ("F32", (4, 4), np.ones((4, 4), "<f4").tobytes())}
        write_safetensors(self.folder / "model-00001-of-00002.safetensors", s1)
        write_safetensors(self.folder / "model-00002-of-00002.safetensors", s2)
        wm = {k: "model-00001-of-00002.safetensors" for k in s1}
        wm.update({k: "model-00002-of-00002.safetensors" for k in s2})
        self.index = self.folder / "model.safetensors.index.json"
        self.index.write_text(json.dumps({"metadata": {}, "weight_map": wm}))

    def check_resident(self, client, prefix, rng):
        x = rng.standard_normal((2, 300)).astype(np.float32)
        assert_gemv(client.gemv(prefix + "model.layers.0.mlp.down_proj.weight", x),
                    _dequantized(self.down, "e4m3", self.down_tiles), x)
        info, codes, scales = client.packed(prefix + "model.layers.0.self_attn.q_proj.weight")
        assert (info.format, info.scale) == ("e5m2", "row")
        assert np.array_equal(codes, self.q) and np.array_equal(scales, self.q_rows)
        x = rng.standard_normal(96).astype(np.float32)
        assert_gemv(client.gemv(prefix + "lm_head.weight", x), self.head, x)
        x = rng.standard_normal(32).astype(np.float32)
        assert_gemv(client.gemv(prefix + "model.embed_tokens.weight", x), self.embed, x)


WEIGHTS = ["lm_head.weight", "model.embed_tokens.weight", "model.layers.0.mlp.down_proj.weight",
           "model.layers.0.self_attn.q_proj.weight"]


def test_uploads_every_weight_then_skips_what_is_resident(client, rng, name, tmp_path):
    m = Model(rng, tmp_path)
    prefix = name + "."
    seen = []
    s = client.upload_model(m.index, prefix=prefix, progress=lambda done, total: seen.append((done, total)))
    assert [t.key for t in s.tensors] == WEIGHTS
    assert [t.result for t in s.tensors] == ["uploaded"] * 4, str(s)
    assert (s.uploaded, s.skipped, s.conflicts, s.failed, s.ok) == (4, 0, 0, 0, True)
    by = {t.key: t for t in s.tensors}
    assert by["model.layers.0.mlp.down_proj.weight"].mode == "block128x128"
    assert by["model.layers.0.mlp.down_proj.weight"].scale_key == "model.layers.0.mlp.down_proj.weight_scale_inv"
    assert by["model.layers.0.self_attn.q_proj.weight"].mode == "row"
    assert by["model.layers.0.self_attn.q_proj.weight"].bytes == 130 * 112 + 130 * 4
    assert by["lm_head.weight"].mode == "row" and by["lm_head.weight"].bytes == 64 * 96 * 2
    assert seen[-1][0] == seen[-1][1] == sum(t.bytes for t in s.tensors)
    for t in s.tensors:
        assert client.info(t.name).content_hash == t.content_hash
        assert t.content_hash.startswith("plume64v2:") and len(t.content_hash) == 26
    assert not [i for i in client.list() if i.name.startswith(prefix) and i.name[len(prefix):] not in WEIGHTS]
    m.check_resident(client, prefix, rng)
    assert "4 uploaded, 0 skipped as already resident" in str(s)

    again = client.upload_model(m.index, prefix=prefix)
    assert [t.result for t in again.tensors] == ["skipped (resident, same content)"] * 4
    assert (again.uploaded, again.skipped, again.ok) == (0, 4, True)
    assert [t.content_hash for t in again.tensors] == [t.content_hash for t in s.tensors]


def test_other_content_is_replaced_only_when_asked(client, rng, name, tmp_path):
    m = Model(rng, tmp_path)
    prefix = name + "."
    client.upload_model(m.index, prefix=prefix)
    m.down = m.down.copy()
    m.down[5, 7] = 0x40 if m.down[5, 7] != 0x40 else 0x41  # one code
    m.write()
    s = client.upload_model(m.index, prefix=prefix)
    by = {t.key: t for t in s.tensors}
    down = by["model.layers.0.mlp.down_proj.weight"]
    assert down.result == "skipped (resident, other content)" and "replace=True" in down.error
    assert (s.conflicts, s.skipped, s.ok) == (1, 3, False)
    _, codes, _ = client.packed(prefix + down.key)
    assert codes[5, 7] != m.down[5, 7]  # left alone

    s = client.upload_model(m.index, prefix=prefix, replace=True)
    assert {t.key: t.result for t in s.tensors}[down.key] == "replaced"
    assert (s.uploaded, s.skipped, s.ok) == (1, 3, True)
    m.check_resident(client, prefix, rng)


def test_match_selects_and_problems_refuse_before_anything_is_sent(client, rng, name, tmp_path):
    m = Model(rng, tmp_path)
    prefix = name + "."
    s = client.upload_model(m.index, prefix=prefix, match=r"mlp\.(down_proj\.weight|bias)")
    assert [t.key for t in s.tensors] == ["model.layers.0.mlp.bias_table", "model.layers.0.mlp.down_proj.weight"]
    assert s.ok

    bad = tmp_path / "bad.safetensors"
    codes = random_codes(rng, "e4m3", 20, 32)
    write_safetensors(bad, {"a.weight": ("F8_E4M3", (20, 32), codes.tobytes()),        # no scale tensor
                            "b.weight": ("I32", (2, 2), b"\1" * 16),                    # a dtype plume has not
                            "c.weight": ("F8_E4M3", (20, 32), codes.tobytes()),
                            "c.weight_scale": ("F32", (20,), np.ones(20, "<f4").tobytes()),
                            "c.weight_scale_inv": ("F32", (20,), np.ones(20, "<f4").tobytes()),  # two of them
                            "d.weight": ("F8_E4M3", (20, 32), codes.tobytes()),
                            "d.weight_scale": ("F32", (3, 2), np.ones(6, "<f4").tobytes()),   # fits no mode
                            "e.weight": ("F32", (20, 32), np.ones((20, 32), "<f4").tobytes())})
    before = {i.name for i in client.list()}
    with pytest.raises(ValueError) as e:
        client.upload_model(bad, prefix=prefix + "bad-")
    for words in ("'a.weight'", "'b.weight'", "I32", "'c.weight'", "several", "[3, 2]", "nothing uploaded"):
        assert words in str(e.value)
    assert {i.name for i in client.list()} == before  # not even e.weight
    with pytest.raises(ValueError, match="no 2-D tensor matches"):
        client.upload_model(m.index, match="^nope$")
    with pytest.raises(ValueError, match="format"):
        client.upload_model(m.index, format="e3m4")


def test_aio_upload_model(server, rng, name, tmp_path):
    m = Model(rng, tmp_path)

    async def main():
        async with plume.aio.Client(server.address) as c:
            first = await c.upload_model(m.index, prefix=name + ".", match="q_proj")
            again = await c.upload_model(m.index, prefix=name + ".", match="q_proj")
            return first, again

    first, again = asyncio.run(main())
    assert [t.result for t in first.tensors] == ["uploaded"]
    assert [t.result for t in again.tensors] == ["skipped (resident, same content)"]


# ------------------------------------------------------------------ the hash


def test_known_labels_as_the_cpp_client_pins_them():
    """The values tests/client/checkpoint_test.cc (ContentHash.KnownLabels) pins."""
    assert _hash.ContentHasher().label() == "plume64v2:9ac2bac5a9c38ba3"
    b = bytes((i * 7 + 1) & 0xFF for i in range(1001))
    h = _hash.ContentHasher()
    h.field(b"plume")
    h.field_int(-3)
    h.field(b)
    assert h.label() == "plume64v2:98680d85597aae6d"
    assert _hash.float_content_hash((2, 3), b[:24], source_dtype=1, format=4, scale_mode=3,
                                    non_saturating=False) == "plume64v2:9108e2b69ffff326"
    assert _hash.fp8_content_hash(3, 5, format=4, scale_mode=2, non_saturating=True, codes=b[:15],
                                  scales=np.frombuffer(b[100:104], "<f4")) == "plume64v2:8fab85142e02f710"


def test_hash_is_chunking_invariant_and_sensitive(rng, tmp_path):
    data = rng.integers(0, 256, size=300_001, dtype=np.uint8).tobytes()
    whole = _hash.ContentHasher()
    whole.update(data)
    pieces = _hash.ContentHasher()
    off, step = 0, 1
    while off < len(data):
        pieces.update(data[off:off + step])
        off, step = off + step, step * 3 % 97 + 1
    assert pieces.digest() == whole.digest()
    flipped = bytearray(data)
    flipped[len(data) // 2] ^= 4
    h = _hash.ContentHasher()
    h.update(flipped)
    assert h.digest() != whole.digest()
    swapped = data[8:16] + data[:8] + data[16:]
    h = _hash.ContentHasher()
    h.update(swapped)
    assert h.digest() != whole.digest()
    # A field read from a file (in 8 MiB pieces: this one spans two) equals the same bytes in memory.
    big = rng.integers(0, 256, size=(9 << 20) + 3, dtype=np.uint8).tobytes()
    (tmp_path / "f").write_bytes(b"xyz" + big)
    a, b = _hash.ContentHasher(), _hash.ContentHasher()
    a.field_file(tmp_path / "f", 3, len(big))
    b.field(big)
    assert a.label() == b.label()
    with pytest.raises(OSError, match="short read"):
        _hash.ContentHasher().field_file(tmp_path / "f", 3, len(big) + 1)


def _cli(*args: str) -> str:
    cli = os.environ.get("PLUME_CLI", "")
    assert cli and os.access(cli, os.X_OK), "PLUME_CLI must name the plume CLI (ctest -L python sets it)"
    r = subprocess.run([cli, *args], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return r.stdout


def test_python_and_the_cpp_cli_label_the_same_tensors_alike(server, client, rng, name, tmp_path):
    """The same FP8 (ragged, BF16 block scales) and BF16 tensors uploaded by
    the C++ CLI and hashed here: one label each."""
    codes = random_codes(rng, "e4m3", 257, 200)
    tiles = _pow2(rng, 6).reshape(3, 2)
    w = grid_matrix(rng, 40, 72, "e4m3", "row")
    path = tmp_path / "m.safetensors"
    write_safetensors(path, {"w8": ("F8_E4M3", codes.shape, codes.tobytes()),
                             "w8_scale_inv": ("BF16", (3, 2), bf16_bits(tiles).astype("<u2").tobytes()),
                             "wf": ("BF16", w.shape, bf16_bits(w).astype("<u2").tobytes())})
    _cli("--server", server.address, "upload", name + "-w8", str(path), "--tensor", "w8")
    _cli("--server", server.address, "upload", name + "-wf", str(path), "--tensor", "wf", "--format", "e5m2",
         "--scale", "block128")
    by_cpp = {n: client.info(name + "-" + n).content_hash for n in ("w8", "wf")}
    assert all(h.startswith("plume64v2:") for h in by_cpp.values()), by_cpp

    from plume import _model
    ckpt = _model.Checkpoint(path)
    u8 = _model.plan(ckpt, match="^w8$", prefix="", scale="row")[0]
    h8 = _model.content_hash(ckpt, u8, _model.fp8_scales(ckpt, u8), format="e4m3", non_saturating=False)
    uf = _model.plan(ckpt, match="^wf$", prefix="", scale="block128")[0]
    hf = _model.content_hash(ckpt, uf, None, format="e5m2", non_saturating=False)
    assert {"w8": h8, "wf": hf} == by_cpp
    # upload_model, which hashes the same way, finds both resident.
    s = client.upload_model(path, match="^w[8f]$", prefix=name + "-", format="e5m2", scale="block128")
    assert [(t.name, t.result) for t in s.tensors] == [(name + "-w8", "skipped (resident, same content)"),
                                                      (name + "-wf", "skipped (resident, same content)")]
