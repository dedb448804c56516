#!/usr/bin/env python3
"""The Python quickstart of README.md ("Quickstart", "Python"), kept running by the
tests (client/python/tests/test_quickstart.py).

    python3 examples/python/quickstart.py [HOST:PORT]   (default localhost:50051)
"""
import sys

import numpy as np

import plume

address = sys.argv[1] if len(sys.argv) > 1 else "localhost:50051"

# --- README begin
rng = np.random.default_rng(0)
w = rng.standard_normal((4096, 4096), dtype=np.float32)

with plume.Client(address) as client:  # token=..., ca=..., cert=..., key=... as the server needs
    info = client.upload("quickstart", w, format="e4m3", scale="row")
    print(info.name, info.shape, info.format, info.scale, info.resident_bytes, "bytes resident")

    x = rng.standard_normal(4096).astype(np.float16)
    y = client.gemv("quickstart", x)  # float32 [4096]; a [batch, 4096] x gives [batch, 4096]
    ref = w.astype(np.float64) @ x.astype(np.float64)
    print("relative error against float64:", np.linalg.norm(y - ref) / np.linalg.norm(ref))

    xs = rng.standard_normal((256, 4096)).astype(np.float16)
    ys = np.stack(list(client.gemv_stream("quickstart", xs, max_in_flight=64)))  # in input order
    print("streamed", ys.shape)

    try:
        client.gemv("no-such-matrix", x)
    except plume.NotFound as e:
        print("as expected:", e)
    client.delete("quickstart")
# --- README end
