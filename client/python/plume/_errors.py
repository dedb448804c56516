"""plume.PlumeError and one subclass per gRPC status code."""
from __future__ import annotations

import grpc


class PlumeError(Exception):
    """A call failed. ``code`` is the gRPC status code, ``message`` the
    server's (or the client's) own words, ``details`` gRPC's debug string."""

    code: grpc.StatusCode = grpc.StatusCode.UNKNOWN

    def __init__(self, message: str, *, code: grpc.StatusCode | None = None, details: str = ""):
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.details = details

    def __str__(self) -> str:
        return f"{self.code.name}: {self.message}"


class Cancelled(PlumeError):
    code = grpc.StatusCode.CANCELLED


class Unknown(PlumeError):
    code = grpc.StatusCode.UNKNOWN


class InvalidArgument(PlumeError, ValueError):
    code = grpc.StatusCode.INVALID_ARGUMENT


class DeadlineExceeded(PlumeError, TimeoutError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED


class NotFound(PlumeError, LookupError):
    code = grpc.StatusCode.NOT_FOUND


class AlreadyExists(PlumeError):
    code = grpc.StatusCode.ALREADY_EXISTS


class PermissionDenied(PlumeError):
    code = grpc.StatusCode.PERMISSION_DENIED


class ResourceExhausted(PlumeError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class FailedPrecondition(PlumeError):
    code = grpc.StatusCode.FAILED_PRECONDITION


class Aborted(PlumeError):
    code = grpc.StatusCode.ABORTED


class OutOfRange(PlumeError):
    code = grpc.StatusCode.OUT_OF_RANGE


class Unimplemented(PlumeError):
    code = grpc.StatusCode.UNIMPLEMENTED


class Internal(PlumeError):
    code = grpc.StatusCode.INTERNAL


class Unavailable(PlumeError, ConnectionError):
    code = grpc.StatusCode.UNAVAILABLE


class DataLoss(PlumeError):
    code = grpc.StatusCode.DATA_LOSS


class Unauthenticated(PlumeError):
    code = grpc.StatusCode.UNAUTHENTICATED


_BY_CODE: dict[grpc.StatusCode, type[PlumeError]] = {
    cls.code: cls
    for cls in (Cancelled, Unknown, InvalidArgument, DeadlineExceeded, NotFound, AlreadyExists,
                PermissionDenied, ResourceExhausted, FailedPrecondition, Aborted, OutOfRange,
                Unimplemented, Internal, Unavailable, DataLoss, Unauthenticated)
}
_BY_VALUE: dict[int, grpc.StatusCode] = {c.value[0]: c for c in grpc.StatusCode}


def error_class(code: grpc.StatusCode) -> type[PlumeError]:
    """The PlumeError subclass of a gRPC status code (PlumeError for OK)."""
    return _BY_CODE.get(code, PlumeError)


def from_code(code: grpc.StatusCode | int, message: str, details: str = "") -> PlumeError:
    """The exception for `code` (a grpc.StatusCode or its integer value, as a
    stream item's Status carries it)."""
    if isinstance(code, int):
        code = _BY_VALUE.get(code, grpc.StatusCode.UNKNOWN)
    cls = error_class(code)
    return cls(message, code=code, details=details)


def from_rpc_error(e: grpc.RpcError) -> PlumeError:
    """Converts the RpcError of a sync or asyncio grpc call."""
    code = e.code() if hasattr(e, "code") else grpc.StatusCode.UNKNOWN
    message = e.details() if hasattr(e, "details") else str(e)
    debug = e.debug_error_string() if hasattr(e, "debug_error_string") else ""
    return from_code(code or grpc.StatusCode.UNKNOWN, message or "", debug or "")
