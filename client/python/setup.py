"""Builds the `plume` Python package; its gRPC stubs are generated here from
the repository's proto/ (gen_stubs.py), never committed.

    python3 -m pip install ./client/python

There is deliberately no pyproject.toml: without one, pip (23.0, Debian
bookworm) builds with the setuptools and wheel already installed
(python3-setuptools, python3-wheel) instead of fetching them into an
isolated environment, so the install works with no access to PyPI.
"""
import os
import sys

from setuptools import setup
from setuptools.command.build_py import build_py

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gen_stubs  # noqa: E402


class BuildWithStubs(build_py):
    """build_py, then plume/v1/*_pb2*.py from proto/ into the build dir."""

    def run(self):
        super().run()
        if not self.dry_run:
            gen_stubs.generate(__import__("pathlib").Path(self.build_lib))


setup(
    name="plume-client",
    version="0.1.0",
    description="Python client of plume-server: FP8 GEMV and attention over gRPC",
    packages=["plume"],
    package_data={"plume": ["py.typed"]},
    python_requires=">=3.9",
    # Debian: python3-grpcio (1.51), python3-protobuf (3.21), python3-numpy.
    install_requires=["grpcio>=1.51", "protobuf>=3.20", "numpy>=1.21"],
    extras_require={"bf16": ["ml_dtypes"], "progress": ["tqdm"]},
    cmdclass={"build_py": BuildWithStubs},
    zip_safe=False,
)
