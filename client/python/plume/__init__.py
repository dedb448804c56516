"""plume: the Python client of plume-server.

    import numpy as np
    import plume

    with plume.Client("localhost:50051") as client:
        client.upload("w", np.random.randn(4096, 4096).astype(np.float32), format="e4m3", scale="row")
        y = client.gemv("w", np.ones(4096, np.float16))

:class:`Client` is synchronous; :class:`plume.aio.Client` has the same
methods for asyncio. Failures raise :class:`PlumeError`, one subclass per
gRPC status code.
"""
from __future__ import annotations

try:
    from plume.v1 import plume_pb2 as _pb  # noqa: F401 - generated at build time
except ImportError as _e:  # pragma: no cover - a source tree without stubs
    raise ImportError(
        "plume's gRPC stubs (plume.v1) are missing: they are generated from proto/ when the package "
        "is installed (python3 -m pip install ./client/python) or built by CMake "
        "(build/<preset>/client/python); a bare source checkout has none") from _e

from plume._client import Client
from plume._common import KVInfo, KVLayout, MatrixInfo, PackedLayout
from plume._model import ModelUploadSummary, TensorUpload
from plume._errors import (Aborted, AlreadyExists, Cancelled, DataLoss, DeadlineExceeded,
                           FailedPrecondition, Internal, InvalidArgument, NotFound, OutOfRange,
                           PermissionDenied, PlumeError, ResourceExhausted, Unauthenticated,
                           Unavailable, Unimplemented, Unknown)

__version__ = "0.1.0"

__all__ = [
    "Client", "MatrixInfo", "KVInfo", "PackedLayout", "KVLayout", "ModelUploadSummary", "TensorUpload",
    "PlumeError", "Cancelled", "Unknown",
    "InvalidArgument", "DeadlineExceeded", "NotFound", "AlreadyExists", "PermissionDenied",
    "ResourceExhausted", "FailedPrecondition", "Aborted", "OutOfRange", "Unimplemented", "Internal",
    "Unavailable", "DataLoss", "Unauthenticated",
]
