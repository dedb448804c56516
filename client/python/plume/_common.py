"""What the sync and asyncio clients share: options, channel setup,
request building, and MatrixInfo / KVInfo."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Optional

import grpc
import numpy as np

from plume import _checkpoint, _errors, _tensors
from plume.v1 import attention_pb2 as apb
from plume.v1 import attention_pb2_grpc as apb_grpc
from plume.v1 import plume_pb2 as pb
from plume.v1 import plume_pb2_grpc as pb_grpc

DEFAULT_ADDRESS = "localhost:50051"
MAX_MESSAGE_BYTES = 64 << 20  # the server's default --max_message_bytes
UPLOAD_CHUNK_BYTES = 1 << 20  # as the C++ SDK

_FORMATS = {"e4m3": pb.DTYPE_E4M3, "e5m2": pb.DTYPE_E5M2}
_SCALES = {"none": pb.SCALE_MODE_NONE, "tensor": pb.SCALE_MODE_TENSOR, "row": pb.SCALE_MODE_ROW,
           "block128": pb.SCALE_MODE_BLOCK128, "block128x128": pb.SCALE_MODE_BLOCK128X128}
_KV_SCALES = {"none": apb.KV_SCALE_MODE_NONE, "tensor": apb.KV_SCALE_MODE_TENSOR,
              "head": apb.KV_SCALE_MODE_HEAD, "token_block": apb.KV_SCALE_MODE_TOKEN_BLOCK}
_PLACEMENTS = {"auto": pb.PLACEMENT_AUTO, "single": pb.PLACEMENT_SINGLE,
               "sharded": pb.PLACEMENT_SHARDED, "replicated": pb.PLACEMENT_REPLICATED}
_DTYPE_NAMES = {pb.DTYPE_UNSPECIFIED: "", pb.DTYPE_F32: "f32", pb.DTYPE_F16: "f16",
                pb.DTYPE_BF16: "bf16", pb.DTYPE_E4M3: "e4m3", pb.DTYPE_E5M2: "e5m2"}

# Calls that are safe to repeat; an upload, append or delete may have taken
# effect before the connection broke. Same policy as the C++ SDK.
_RETRYABLE = [("plume.v1.MatrixService", m) for m in ("GetMatrix", "ListMatrices", "Gemv")] + \
    [("plume.v1.AttentionService", m) for m in ("GetKV", "ListKV", "Attention")] + \
    [("grpc.health.v1.Health", "Check")]


def _choice(table: dict[str, int], value: str, what: str) -> int:
    try:
        return table[value.lower()]
    except (KeyError, AttributeError):
        raise ValueError(f"{what} must be one of {', '.join(table)}; got {value!r}") from None


def _name_of(table: dict[str, int], value: int) -> str:
    for k, v in table.items():
        if v == value:
            return k
    return str(value)


# ------------------------------------------------------------------ results


@dataclass(frozen=True)
class PackedLayout:
    padded_cols: int
    row_stride_bytes: int
    num_scales: int


@dataclass(frozen=True)
class MatrixInfo:
    """A resident matrix, as the server describes it."""

    name: str
    rows: int
    cols: int
    format: str          # "e4m3" | "e5m2"
    scale: str           # "none" | "tensor" | "row" | "block128" | "block128x128"
    source_dtype: str    # "f32" | "f16" | "bf16" | "e4m3" | "e5m2" (pre-packed)
    non_saturating: bool
    layout: PackedLayout
    resident_bytes: int  # packed codes plus scales
    created_unix_ms: int
    backend: str
    placement: str       # "single" | "sharded" | "replicated"
    devices: tuple[int, ...]
    shard_rows: tuple[int, ...]
    content_hash: str = ""  # as uploaded; "" if none (or the server keeps none)

    @property
    def shape(self) -> tuple[int, int]:
        return (self.rows, self.cols)

    @classmethod
    def from_proto(cls, m: pb.MatrixInfo) -> "MatrixInfo":
        return cls(m.name, m.rows, m.cols, _DTYPE_NAMES.get(m.format, str(m.format)),
                   _name_of(_SCALES, m.scale_mode), _DTYPE_NAMES.get(m.source_dtype, str(m.source_dtype)),
                   m.non_saturating,
                   PackedLayout(m.layout.padded_cols, m.layout.row_stride_bytes, m.layout.num_scales),
                   m.resident_bytes, m.created_unix_ms, m.backend, _name_of(_PLACEMENTS, m.placement),
                   tuple(m.devices), tuple(m.shard_rows), m.content_hash)


@dataclass(frozen=True)
class KVLayout:
    page_tokens: int
    row_stride_bytes: int
    page_bytes: int
    pages: int
    capacity_tokens: int


@dataclass(frozen=True)
class KVInfo:
    """A resident K/V cache: K and V are [kv_heads, seq, head_dim]."""

    name: str
    kv_heads: int
    seq: int
    head_dim: int
    format: str
    scale: str           # "none" | "tensor" | "head" | "token_block"
    source_dtype: str
    non_saturating: bool
    layout: KVLayout
    resident_bytes: int
    created_unix_ms: int
    backend: str

    @classmethod
    def from_proto(cls, c: apb.KVInfo) -> "KVInfo":
        lay = c.layout
        return cls(c.name, c.kv_heads, c.seq, c.head_dim, _DTYPE_NAMES.get(c.format, str(c.format)),
                   _name_of(_KV_SCALES, c.scale_mode), _DTYPE_NAMES.get(c.source_dtype, str(c.source_dtype)),
                   c.non_saturating,
                   KVLayout(lay.page_tokens, lay.row_stride_bytes, lay.page_bytes, lay.pages,
                            lay.capacity_tokens),
                   c.resident_bytes, c.created_unix_ms, c.backend)


# ------------------------------------------------------------------ connection


@dataclass
class Connection:
    """What both clients build a channel from."""

    address: str
    credentials: Optional[grpc.ChannelCredentials]
    options: list[tuple[str, Any]]
    metadata: tuple[tuple[str, str], ...]
    timeout: Optional[float]


def _read(path: str | os.PathLike, what: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise ValueError(f"{what}: cannot read {path}: {e.strerror}") from None


def connection(address: str, token: str | None, token_file: str | os.PathLike | None, tls: bool,
               ca: str | os.PathLike | None, cert: str | os.PathLike | None,
               key: str | os.PathLike | None, timeout: float | None,
               max_attempts: int = 3) -> Connection:
    if not address:
        raise ValueError("empty server address")
    if token is not None and token_file is not None:
        raise ValueError("give token or token_file, not both")
    if token_file is not None:
        token = _read(token_file, "token_file").decode().strip()
        if not token:
            raise ValueError(f"token_file: {token_file} holds only whitespace")
    if (cert is None) != (key is None):
        raise ValueError("a TLS client certificate needs its key, and vice versa")
    creds = None
    if tls or ca is not None or cert is not None:
        creds = grpc.ssl_channel_credentials(
            root_certificates=_read(ca, "ca") if ca is not None else None,
            private_key=_read(key, "key") if key is not None else None,
            certificate_chain=_read(cert, "cert") if cert is not None else None)
    config: dict[str, Any] = {}
    if max_attempts >= 2:
        config["methodConfig"] = [{
            "name": [{"service": s, "method": m} for s, m in _RETRYABLE],
            "retryPolicy": {"maxAttempts": min(max_attempts, 5), "initialBackoff": "0.1s",
                            "maxBackoff": "1s", "backoffMultiplier": 2,
                            "retryableStatusCodes": ["UNAVAILABLE"]},
        }]
    options = [("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
               ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
               ("grpc.service_config", json.dumps(config)),
               ("grpc.enable_retries", 1 if max_attempts >= 2 else 0)]
    metadata = (("authorization", "Bearer " + token),) if token else ()
    if timeout is not None and timeout <= 0:
        raise ValueError("timeout must be positive (None: no deadline)")
    return Connection(address, creds, options, metadata, timeout)


def open_channel(grpc_module: Any, conn: Connection) -> tuple[Any, Any, Any, Any]:
    """The channel, MatrixService and AttentionService stubs and the health
    call, from `grpc` (the sync client) or `grpc.aio`."""
    if conn.credentials is not None:
        channel = grpc_module.secure_channel(conn.address, conn.credentials, options=conn.options)
    else:
        channel = grpc_module.insecure_channel(conn.address, options=conn.options)
    health = channel.unary_unary(HEALTH_METHOD, request_serializer=health_request,
                                 response_deserializer=health_status)
    return (channel, pb_grpc.MatrixServiceStub(channel), apb_grpc.AttentionServiceStub(channel), health)


# ------------------------------------------------------------------ requests


def upload_requests(name: str, src: Any, *, format: str, scale: str, non_saturating: bool,
                    placement: str, tensor: str | None, progress: Any,
                    content_hash: str = "") -> tuple[int, Iterator[pb.UploadMatrixRequest]]:
    """The UploadMatrix stream of a matrix source; returns (bytes, requests)."""
    w = _tensors.matrix_source(src, tensor)
    h = pb.MatrixHeader(name=name, rows=w.shape[0], cols=w.shape[1], source_dtype=w.dtype,
                        format=_choice(_FORMATS, format, "format"),
                        scale_mode=_choice(_SCALES, scale, "scale"), non_saturating=non_saturating,
                        placement=_choice(_PLACEMENTS, placement, "placement"), content_hash=content_hash)
    return w.nbytes(), _chunked(pb.UploadMatrixRequest(header=h), pb.UploadMatrixRequest,
                                [("data", _bytes_view(w.buf))], progress)


def packed_requests(name: str, codes: Any, scales: Any, *, format: str, scale: str,
                    placement: str, content_hash: str = "",
                    non_saturating: bool = False) -> Iterator[pb.UploadMatrixRequest]:
    """UploadMatrix of pre-packed FP8: `codes` are [rows, cols] uint8 FP8 codes
    (or an ml_dtypes float8 array), `scales` float32 in the mode's shape."""
    fmt = _choice(_FORMATS, format, "format")
    mode = _choice(_SCALES, scale, "scale")
    c = np.asarray(codes)
    if c.dtype.itemsize != 1 or c.dtype.kind not in "uiV" and not c.dtype.name.startswith("float8"):
        raise ValueError(f"codes must be uint8 FP8 codes, got dtype {c.dtype}")
    if c.ndim != 2:
        raise ValueError(f"codes must be [rows, cols], got shape {c.shape}")
    rows, cols = c.shape
    c = c.view(np.uint8)
    padded = -(-cols // 16) * 16
    if padded != cols:  # rows are padded with zero codes to a multiple of 16 codes
        p = np.zeros((rows, padded), np.uint8)
        p[:, :cols] = c
        c = p
    c = np.ascontiguousarray(c)
    s = np.ascontiguousarray(np.asarray(scales, dtype=np.float32).reshape(-1), dtype="<f4")
    want = {pb.SCALE_MODE_NONE: 0, pb.SCALE_MODE_TENSOR: 1, pb.SCALE_MODE_ROW: rows,
            pb.SCALE_MODE_BLOCK128: rows * (-(-cols // 128)),
            pb.SCALE_MODE_BLOCK128X128: (-(-rows // 128)) * (-(-cols // 128))}[mode]
    if s.size != want:
        raise ValueError(f"scale={scale!r} on {rows}x{cols} needs {want} scales, got {s.size}")
    h = pb.MatrixHeader(name=name, rows=rows, cols=cols, source_dtype=fmt, format=fmt,
                        scale_mode=mode, placement=_choice(_PLACEMENTS, placement, "placement"),
                        content_hash=content_hash, non_saturating=non_saturating)
    return _chunked(pb.UploadMatrixRequest(header=h), pb.UploadMatrixRequest,
                    [("data", _bytes_view(c)), ("scales", _bytes_view(s))], None)


def packed_result(resp: pb.GetMatrixResponse) -> tuple[MatrixInfo, np.ndarray, np.ndarray]:
    """A GetMatrix response with include_packed: info, [rows, cols] codes, scales."""
    m = resp.matrix
    if not resp.packed_words and m.rows > 0 and m.cols > 0:
        raise _errors.from_code(grpc.StatusCode.FAILED_PRECONDITION,
                                f"the server returned no packed codes for {m.name!r} "
                                "(it does not support GetMatrix include_packed)")
    codes = _checkpoint.unpack_codes(resp.packed_words, m.rows, m.cols, m.layout.padded_cols)
    if len(resp.scales) % 4:
        raise ValueError("malformed GetMatrix response: scales are not whole float32s")
    scales = np.frombuffer(resp.scales, "<f4").astype(np.float32)
    return MatrixInfo.from_proto(m), codes, scales


def kv_upload_requests(name: str, k: Any, v: Any, *, format: str, scale: str,
                       non_saturating: bool, progress: Any) -> tuple[int, Iterator[apb.UploadKVRequest]]:
    kw = _tensors.to_wire(k, "k", (3,))
    vw = _tensors.to_wire(v, "v", (3,))
    if kw.shape != vw.shape or kw.dtype != vw.dtype:
        raise ValueError("k and v must both be [kv_heads, seq, head_dim] of the same shape and dtype; "
                         f"got {kw.shape} and {vw.shape}")
    h = apb.KVHeader(name=name, kv_heads=kw.shape[0], seq=kw.shape[1], head_dim=kw.shape[2],
                     source_dtype=kw.dtype, format=_choice(_FORMATS, format, "format"),
                     scale_mode=_choice(_KV_SCALES, scale, "scale"), non_saturating=non_saturating)
    return kw.nbytes() + vw.nbytes(), _chunked(apb.UploadKVRequest(header=h), apb.UploadKVRequest,
                                               [("k", _bytes_view(kw.buf)), ("v", _bytes_view(vw.buf))],
                                               progress)


def kv_append_request(name: str, k: Any, v: Any) -> apb.AppendKVRequest:
    req = apb.AppendKVRequest(name=name)
    _tensors.to_wire(k, "k", (3,)).to_proto(req.k)
    _tensors.to_wire(v, "v", (3,)).to_proto(req.v)
    return req


def _bytes_view(buf: Any) -> memoryview:
    if isinstance(buf, np.ndarray):
        buf = buf.reshape(-1).view(np.uint8)
    return memoryview(buf).cast("B")


def _chunked(first: Any, cls: Any, parts: list[tuple[str, memoryview]],
             progress: Optional[Callable[[int], None]]) -> Iterator[Any]:
    yield first
    for field, mv in parts:
        for off in range(0, len(mv), UPLOAD_CHUNK_BYTES):
            piece = mv[off:off + UPLOAD_CHUNK_BYTES]
            yield cls(**{field: piece.tobytes()})
            if progress is not None:
                progress(len(piece))


class Progress:
    """progress=True: a tqdm bar over the upload's bytes when tqdm is
    importable (nothing otherwise); a callable gets (bytes_sent, total).
    The request builders call it with each chunk's size once gRPC took it."""

    def __init__(self, progress: Any, desc: str):
        self._desc = desc
        self._bar: Any = None
        self._fn = progress if callable(progress) else None
        self._sent = 0
        self._total = 0
        self.active = self._fn is not None
        if progress and self._fn is None:
            try:
                from tqdm import tqdm  # noqa: PLC0415 - optional
            except ImportError:
                return
            self._tqdm = tqdm
            self.active = True

    def start(self, total: int) -> None:
        self._total = total
        if self.active and self._fn is None:
            self._bar = self._tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024,
                                   desc=self._desc)

    def __call__(self, n: int) -> None:
        self._sent += n
        if self._bar is not None:
            self._bar.update(n)
        if self._fn is not None:
            self._fn(self._sent, self._total)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


def gemv_request(name: str, x: Any, out_dtype: int, request_id: int = 0) -> pb.GemvRequest:
    """out_dtype: a wire DType (out_wire_dtype)."""
    req = pb.GemvRequest(matrix=name, request_id=request_id, output_dtype=out_dtype)
    _tensors.to_wire(x, "x", (1, 2)).to_proto(req.input)
    return req


def out_wire_dtype(out_dtype: Any) -> int:
    """None: float32. bfloat16 results need ml_dtypes, so that is checked
    before anything is sent."""
    if out_dtype is None:
        return pb.DTYPE_F32
    d = _tensors.wire_dtype(out_dtype)
    _tensors.numpy_dtype(d)
    return d


class InOrder:
    """Puts a GemvStream's responses back in request order (request_id 0, 1, ...)."""

    def __init__(self) -> None:
        self._pending: dict[int, Any] = {}
        self.next_id = 0

    def add(self, resp: pb.GemvResponse) -> Iterator[pb.GemvResponse]:
        """Takes `resp`; yields the responses now next in order (item_result
        turns each into its array or its error)."""
        self._pending[resp.request_id] = resp
        while self.next_id in self._pending:
            r = self._pending.pop(self.next_id)
            self.next_id += 1
            yield r

    def end(self, failed: Optional[tuple[int, BaseException]]) -> None:
        """The stream closed cleanly: `failed` is the item the client could
        not send (it stopped there), if any."""
        if failed is not None and failed[0] == self.next_id:
            raise failed[1]
        if self._pending:
            raise _errors.Internal(f"the stream ended with results {sorted(self._pending)[:5]} "
                                   f"out of order (waiting for {self.next_id})")


def item_result(r: pb.GemvResponse) -> np.ndarray:
    """A stream item's result, or its error."""
    if r.status.code != 0:
        raise _errors.from_code(r.status.code, r.status.message)
    return _tensors.from_proto(r.output)


def attention_request(name: str, q: Any, causal: bool, scale: float | None,
                      out_dtype: Any, request_id: int = 0) -> tuple[apb.AttentionRequest, bool]:
    """The request, and whether q was 3-D (then the result drops the batch axis)."""
    w = _tensors.to_wire(q, "q", (3, 4))
    squeeze = len(w.shape) == 3
    if squeeze:
        w.shape = (1, *w.shape)
    if scale is not None and not scale > 0:
        raise ValueError(f"scale must be positive (None: 1/sqrt(head_dim)); got {scale}")
    req = apb.AttentionRequest(cache=name, causal=causal, softmax_scale=scale or 0.0,
                               output_dtype=out_wire_dtype(out_dtype), request_id=request_id)
    w.to_proto(req.query)
    return req, squeeze


# ------------------------------------------------------------------ grpc.health.v1
# Debian has no grpcio-health-checking, so the two one-field messages are
# encoded by hand: HealthCheckRequest{string service = 1},
# HealthCheckResponse{ServingStatus status = 1} (SERVING = 1).

HEALTH_METHOD = "/grpc.health.v1.Health/Check"


def health_request(service: str) -> bytes:
    b = service.encode()
    if not b:
        return b""
    return b"\x0a" + _varint(len(b)) + b


def _varint(v: int) -> bytes:
    out = bytearray()
    while v >= 0x80:
        out.append((v & 0x7F) | 0x80)
        v >>= 7
    out.append(v)
    return bytes(out)


def health_status(data: bytes) -> int:
    """The `status` field of a HealthCheckResponse (0 if absent)."""
    pos, status = 0, 0

    def varint() -> int:
        nonlocal pos
        v, shift = 0, 0
        while True:
            if pos >= len(data) or shift > 63:
                raise ValueError("malformed health response")
            b = data[pos]
            pos += 1
            v |= (b & 0x7F) << shift
            shift += 7
            if not b & 0x80:
                return v

    while pos < len(data):
        tag = varint()
        wt = tag & 7
        if wt == 0:
            v = varint()
            if tag >> 3 == 1:
                status = v
        elif wt == 2:
            n = varint()  # not `pos += varint()`: that adds to pos as it was before the length
            pos += n
        elif wt == 1:
            pos += 8
        elif wt == 5:
            pos += 4
        else:
            raise ValueError("malformed health response")
        if pos > len(data):
            raise ValueError("malformed health response")
    return status
