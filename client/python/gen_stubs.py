#!/usr/bin/env python3
"""Generates plume's Python gRPC stubs from proto/plume/v1/*.proto.

The stubs are never committed: setup.py runs this when the package is built
or installed, and CMake runs it for the build tree. It uses Debian's protoc
(3.21, matching python3-protobuf) and the grpc_python_plugin of
protobuf-compiler-grpc (1.51, matching python3-grpcio).

    python3 gen_stubs.py --out DIR [--proto-dir DIR] [--protoc PATH] [--plugin PATH]

writes DIR/plume/v1/{plume,attention,diagnostics}_pb2.py and *_pb2_grpc.py.
The proto package is plume.v1, so the modules land inside the `plume`
Python package as `plume.v1`, and their own imports (`from plume.v1 import
plume_pb2`) resolve there.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

PROTOS = ("plume.proto", "attention.proto", "diagnostics.proto")


def default_proto_dir() -> Path:
    """proto/ of the repository that holds this file (client/python/..)."""
    return Path(__file__).resolve().parent.parent.parent / "proto"


def find_tool(name: str, env: str, explicit: str | None) -> str:
    path = explicit or os.environ.get(env) or shutil.which(name)
    if not path or not os.access(path, os.X_OK):
        raise SystemExit(
            f"gen_stubs: cannot find {name} (set {env}); on Debian: "
            "apt-get install protobuf-compiler protobuf-compiler-grpc")
    return path


def generate(out: Path, proto_dir: Path | None = None, protoc: str | None = None,
             plugin: str | None = None) -> list[Path]:
    proto_dir = Path(proto_dir or os.environ.get("PLUME_PROTO_DIR") or default_proto_dir())
    sources = [proto_dir / "plume" / "v1" / p for p in PROTOS]
    missing = [str(s) for s in sources if not s.is_file()]
    if missing:
        raise SystemExit(f"gen_stubs: missing {', '.join(missing)} (set PLUME_PROTO_DIR to the "
                         "repository's proto/ directory)")
    protoc = find_tool("protoc", "PLUME_PROTOC", protoc)
    plugin = find_tool("grpc_python_plugin", "PLUME_GRPC_PYTHON_PLUGIN", plugin)
    pkg = out / "plume" / "v1"
    pkg.mkdir(parents=True, exist_ok=True)
    cmd = [protoc, f"-I{proto_dir}", f"--python_out={out}", f"--grpc_python_out={out}",
           f"--plugin=protoc-gen-grpc_python={plugin}", *map(str, sources)]
    subprocess.run(cmd, check=True)
    init = pkg / "__init__.py"
    init.write_text('"""Generated from proto/plume/v1 by gen_stubs.py; not committed."""\n')
    made = [init]
    for p in PROTOS:
        stem = p[:-len(".proto")]
        for suffix in ("_pb2.py", "_pb2_grpc.py"):
            f = pkg / (stem + suffix)
            if not f.is_file():
                raise SystemExit(f"gen_stubs: protoc did not write {f}")
            made.append(f)
    return made


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, type=Path, help="directory that holds (or will hold) plume/")
    ap.add_argument("--proto-dir", type=Path, help="the repository's proto/ (default: ../../proto)")
    ap.add_argument("--protoc")
    ap.add_argument("--plugin", help="grpc_python_plugin")
    ap.add_argument("--stamp", type=Path, help="touch this file when done (for build systems)")
    a = ap.parse_args(argv)
    generate(a.out, a.proto_dir, a.protoc, a.plugin)
    if a.stamp:
        a.stamp.parent.mkdir(parents=True, exist_ok=True)
        a.stamp.touch()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
