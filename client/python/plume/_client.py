"""plume.Client: the synchronous client."""
from __future__ import annotations

import os
import threading
from typing import Any, Callable, Iterable, Iterator, Optional

import grpc
import numpy as np

from plume import _checkpoint
from plume import _common as c
from plume import _errors, _model
from plume._common import KVInfo, MatrixInfo
from plume._model import ModelUploadSummary
from plume._tensors import from_proto
from plume.v1 import attention_pb2 as apb
from plume.v1 import plume_pb2 as pb

_UNSET: Any = object()


class Client:
    """A connection to a plume-server. Thread-safe; one per process is enough.

    Args:
        address: ``host:port`` of the server.
        token: bearer token every MatrixService / AttentionService call carries.
        token_file: file holding the token (surrounding whitespace is dropped).
        tls: use TLS with the system's roots (implied by ``ca``/``cert``).
        ca: PEM file of the CA that signed the server's certificate.
        cert, key: PEM client certificate and key (mutual TLS).
        timeout: default deadline of each unary or upload call in seconds
            (None: none); every method takes its own ``timeout=`` too.
            gemv_stream has no deadline unless given one.

    Every method raises :class:`plume.PlumeError` (a subclass per gRPC code)
    when the server or the channel refuses, and ``ValueError`` for arguments
    it can refuse without asking the server.
    """

    def __init__(self, address: str = c.DEFAULT_ADDRESS, *, token: str | None = None,
                 token_file: str | os.PathLike | None = None, tls: bool = False,
                 ca: str | os.PathLike | None = None, cert: str | os.PathLike | None = None,
                 key: str | os.PathLike | None = None, timeout: float | None = 30.0):
        self._conn = c.connection(address, token, token_file, tls, ca, cert, key, timeout)
        self._channel, self._matrices, self._kv, self._health = c.open_channel(grpc, self._conn)

    # -------------------------------------------------------------- plumbing

    def close(self) -> None:
        """Closes the channel; calls in flight are cancelled."""
        self._channel.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _timeout(self, timeout: Any) -> Optional[float]:
        return self._conn.timeout if timeout is _UNSET else timeout

    def _call(self, method: Any, request: Any, timeout: Any) -> Any:
        try:
            return method(request, timeout=self._timeout(timeout), metadata=self._conn.metadata)
        except grpc.RpcError as e:
            raise _errors.from_rpc_error(e) from None

    # -------------------------------------------------------------- health

    def health(self, service: str = "", *, timeout: Any = _UNSET) -> bool:
        """grpc.health.v1 Check: True when the server (or `service`) is
        SERVING, False when it is NOT_SERVING (draining) or unknown. Raises
        :class:`plume.Unavailable` when it cannot be reached and
        :class:`plume.NotFound` for a `service` it does not report on.
        Needs no token."""
        try:
            return self._health(service, timeout=self._timeout(timeout)) == 1
        except grpc.RpcError as e:
            raise _errors.from_rpc_error(e) from None

    # -------------------------------------------------------------- matrices

    def upload(self, name: str, src: Any, *, format: str = "e4m3", scale: str = "row",
               non_saturating: bool = False, placement: str = "auto", tensor: str | None = None,
               progress: Any = False, content_hash: str = "", timeout: Any = _UNSET) -> MatrixInfo:
        """Uploads a matrix; the server quantizes it to FP8 and keeps it resident.

        Args:
            src: a 2-D numpy array (float32, float16; bfloat16 with ml_dtypes),
                a torch tensor, or a path to a ``.npy`` or ``.safetensors`` file
                (files are memory-mapped and streamed, never loaded whole).
            format: ``"e4m3"`` or ``"e5m2"``.
            scale: ``"none"``, ``"tensor"``, ``"row"`` or ``"block128"``.
            non_saturating: overflow becomes NaN (E4M3) / inf (E5M2) instead of ±max.
            placement: ``"auto"``, ``"single"``, ``"sharded"``, ``"replicated"``
                (servers with several devices).
            tensor: the tensor of a ``.safetensors`` file holding several.
            progress: True shows a tqdm bar (when tqdm is importable); a
                callable receives ``(bytes_sent, total_bytes)``.
            content_hash: an optional label of the content the server keeps
                (see :meth:`upload_packed`).
        """
        bar = c.Progress(progress, f"upload {name}")
        total, reqs = c.upload_requests(name, src, format=format, scale=scale,
                                        non_saturating=non_saturating, placement=placement,
                                        tensor=tensor, progress=bar if bar.active else None,
                                        content_hash=content_hash)
        resp = self._upload(self._matrices.UploadMatrix, reqs, total, bar, timeout)
        return MatrixInfo.from_proto(resp.matrix)

    def _upload(self, method: Any, reqs: Iterator[Any], total: int, bar: c.Progress,
                timeout: Any) -> Any:
        bar.start(total)
        try:
            return self._call(method, reqs, timeout)
        finally:
            bar.close()

    def upload_packed(self, name: str, codes: Any, scales: Any, *, format: str, scale: str,
                      placement: str = "auto", content_hash: str = "", non_saturating: bool = False,
                      timeout: Any = _UNSET) -> MatrixInfo:
        """Uploads FP8 codes as they are (no quantization on the server).

        Args:
            codes: ``[rows, cols]`` uint8 FP8 codes of `format` (or an ml_dtypes
                float8 array); rows are padded to plume's packed layout here.
            scales: float32 scales: none for ``"none"``, one for ``"tensor"``,
                ``[rows]`` for ``"row"``, ``[rows, ceil(cols/128)]`` for
                ``"block128"``, ``[ceil(rows/128), ceil(cols/128)]`` for
                ``"block128x128"``. Element (r, c) is ``decode(code) * scale``.
            content_hash: an optional label of the content (at most 128 of
                ``[A-Za-z0-9:._+/=-]``) the server keeps and returns in
                :attr:`MatrixInfo.content_hash`.
        """
        reqs = c.packed_requests(name, codes, scales, format=format, scale=scale, placement=placement,
                                 content_hash=content_hash, non_saturating=non_saturating)
        return MatrixInfo.from_proto(self._call(self._matrices.UploadMatrix, reqs, timeout).matrix)

    def upload_fp8(self, name: str, path: Any, *, tensor: str | None = None, scale_tensor: str | None = None,
                   scale: str | None = None, placement: str = "auto", content_hash: str = "",
                   timeout: Any = _UNSET) -> MatrixInfo:
        """Uploads an F8_E4M3 / F8_E5M2 tensor of a ``.safetensors`` file
        pre-packed, with the scales of its scale tensor (``<tensor>_scale`` or
        ``<tensor>_scale_inv``, or `scale_tensor`); the scale tensor's shape
        picks the mode. ``scale="none"`` uploads the codes unscaled."""
        if scale not in (None, "none"):
            raise ValueError("an FP8 tensor's scale mode comes from its scale tensor's shape; scale= may only be 'none'")
        t = _checkpoint.read_fp8_tensor(path, tensor, scale_tensor, no_scale=scale == "none")
        return self.upload_packed(name, t.codes, t.scales, format=t.format, scale=t.scale, placement=placement,
                                  content_hash=content_hash, timeout=timeout)

    def upload_model(self, path: str | os.PathLike, *, match: str | None = None, prefix: str = "",
                     format: str = "e4m3", scale: str = "row", non_saturating: bool = False,
                     placement: str = "auto", replace: bool = False,
                     progress: Optional[Callable[[int, int], None]] = None,
                     timeout: Any = _UNSET) -> ModelUploadSummary:
        """Uploads every 2-D weight of a checkpoint, as ``plume upload-model``.

        Args:
            path: a ``.safetensors`` file or a ``model.safetensors.index.json``.
            match: a regular expression searched in tensor names (default:
                names ending in ``weight``); scale tensors are never uploaded.
            prefix: put in front of each tensor's name on the server.
            format, scale: for F32 / F16 / BF16 tensors, which the server
                quantizes; FP8 ones go pre-packed with their scale tensor
                (``<key>_scale`` / ``<key>_scale_inv``), whose shape picks the mode.
            replace: a tensor resident under its name with another content
                hash is deleted and uploaded again (otherwise it is left and
                reported).
            progress: called with ``(bytes_done, total_bytes)`` after each tensor.

        Returns a :class:`ModelUploadSummary` (``str()`` of it is the CLI's
        table). Tensors resident with the same content hash (plume64v2, as
        the C++ client computes it) are skipped. Raises ValueError before
        anything is sent when a tensor cannot be planned (a missing or
        ambiguous scale tensor, a scale shape that fits no mode, an
        unsupported dtype), naming every one; a tensor whose upload fails is
        reported in the summary and the others go on.
        """
        c._choice(c._FORMATS, format, "format")
        c._choice(c._SCALES, scale, "scale")
        ckpt = _model.Checkpoint(path)
        todo = _model.plan(ckpt, match=match, prefix=prefix, scale=scale.lower())
        resident = {m.name: m for m in self.list(timeout=timeout)}
        run = _model.Run(ckpt, resident, format=format, non_saturating=non_saturating, placement=placement,
                         replace=replace, progress=progress, total=sum(u.bytes for u in todo))

        def do(op: tuple) -> None:
            if op[0] == "delete":
                self.delete(op[1], timeout=timeout)
                return
            kw = dict(op[1])
            if kw.pop("kind") == "packed":
                self.upload_packed(kw.pop("name"), kw.pop("codes"), kw.pop("scales"), timeout=timeout, **kw)
            else:
                self.upload(kw.pop("name"), kw.pop("src"), timeout=timeout, **kw)

        for u in todo:
            _model.drive(run.steps(u), do, (_errors.PlumeError, ValueError, OSError))
        return ModelUploadSummary(todo)

    def packed(self, name: str, *, timeout: Any = _UNSET) -> tuple[MatrixInfo, np.ndarray, np.ndarray]:
        """The resident matrix as it is served: its info, its ``[rows, cols]``
        uint8 FP8 codes and its float32 scales (GetMatrix include_packed).
        :class:`plume.FailedPrecondition` from a server that returns no codes."""
        resp = self._call(self._matrices.GetMatrix, pb.GetMatrixRequest(name=name, include_packed=True), timeout)
        return c.packed_result(resp)

    def info(self, name: str, *, timeout: Any = _UNSET) -> MatrixInfo:
        """The matrix `name` (:class:`plume.NotFound` if there is none)."""
        resp = self._call(self._matrices.GetMatrix, pb.GetMatrixRequest(name=name), timeout)
        return MatrixInfo.from_proto(resp.matrix)

    def list(self, *, timeout: Any = _UNSET) -> list[MatrixInfo]:
        """Every resident matrix."""
        resp = self._call(self._matrices.ListMatrices, pb.ListMatricesRequest(), timeout)
        return [MatrixInfo.from_proto(m) for m in resp.matrices]

    def delete(self, name: str, *, timeout: Any = _UNSET) -> None:
        """Deletes a matrix; requests already running on it finish first."""
        self._call(self._matrices.DeleteMatrix, pb.DeleteMatrixRequest(name=name), timeout)

    def gemv(self, name: str, x: Any, *, out_dtype: Any = None, timeout: Any = _UNSET) -> np.ndarray:
        """``y = W @ x``: x is ``[cols]`` or ``[batch, cols]`` (float32,
        float16, bfloat16; numpy or torch); y is ``[rows]`` or ``[batch, rows]``
        of `out_dtype` (``"f32"`` when None, ``"f16"``, ``"bf16"``)."""
        resp = self._call(self._matrices.Gemv, c.gemv_request(name, x, c.out_wire_dtype(out_dtype)), timeout)
        return from_proto(resp.output)

    def gemv_stream(self, name: str, xs: Iterable[Any], *, max_in_flight: int = 64,
                    out_dtype: Any = None, timeout: float | None = None) -> Iterator[np.ndarray]:
        """GEMVs over one bidirectional stream: yields ``W @ x`` for each x of
        `xs`, in the order of `xs`, with at most `max_in_flight` vectors sent
        and not yet yielded. A failed item raises its :class:`plume.PlumeError`
        at its place, and the stream ends there. Leaving the loop early
        cancels the stream. `timeout` bounds the whole stream; unlike the
        unary calls it has no deadline by default, since a stream lasts as
        long as its source."""
        if max_in_flight < 1:
            raise ValueError("max_in_flight must be at least 1")
        out = c.out_wire_dtype(out_dtype)
        stream = _OrderedStream(max_in_flight)

        def requests() -> Iterator[pb.GemvRequest]:
            # A slot first, then the next x: the source is not read ahead.
            it = iter(xs)
            i = 0
            while stream.acquire():
                try:
                    req = c.gemv_request(name, next(it), out, i)
                except StopIteration:
                    return
                except Exception as e:  # noqa: BLE001 - raised at its place by results()
                    stream.fail(i, e)
                    return
                yield req
                i += 1

        call = self._matrices.GemvStream(requests(), timeout=timeout,
                                         metadata=self._conn.metadata)
        return stream.results(call)

    # -------------------------------------------------------------- K/V caches

    def kv_upload(self, name: str, k: Any, v: Any, *, format: str = "e4m3", scale: str = "token_block",
                  non_saturating: bool = False, progress: Any = False,
                  timeout: Any = _UNSET) -> KVInfo:
        """Creates a K/V cache from k and v, both ``[kv_heads, seq, head_dim]``
        of the same float dtype; the server quantizes them to FP8. `scale`:
        ``"none"``, ``"tensor"``, ``"head"`` or ``"token_block"`` (per kv head
        per 64 tokens)."""
        bar = c.Progress(progress, f"kv_upload {name}")
        total, reqs = c.kv_upload_requests(name, k, v, format=format, scale=scale,
                                           non_saturating=non_saturating,
                                           progress=bar if bar.active else None)
        return KVInfo.from_proto(self._upload(self._kv.UploadKV, reqs, total, bar, timeout).cache)

    def kv_append(self, name: str, k: Any, v: Any, *, timeout: Any = _UNSET) -> KVInfo:
        """Appends tokens: k and v are ``[kv_heads, tokens, head_dim]``."""
        return KVInfo.from_proto(self._call(self._kv.AppendKV, c.kv_append_request(name, k, v),
                                            timeout).cache)

    def kv_info(self, name: str, *, timeout: Any = _UNSET) -> KVInfo:
        return KVInfo.from_proto(self._call(self._kv.GetKV, apb.GetKVRequest(name=name), timeout).cache)

    def kv_list(self, *, timeout: Any = _UNSET) -> list[KVInfo]:
        resp = self._call(self._kv.ListKV, apb.ListKVRequest(), timeout)
        return [KVInfo.from_proto(x) for x in resp.caches]

    def kv_delete(self, name: str, *, timeout: Any = _UNSET) -> None:
        self._call(self._kv.DeleteKV, apb.DeleteKVRequest(name=name), timeout)

    def attend(self, name: str, q: Any, *, causal: bool = False, scale: float | None = None,
               out_dtype: Any = None, timeout: Any = _UNSET) -> np.ndarray:
        """``softmax(scale * q K^T) V`` against the cache `name`.

        q is ``[batch, heads, q_len, head_dim]`` (or ``[heads, q_len, head_dim]``);
        heads is a multiple of the cache's kv_heads (query head h reads kv head
        ``h // (heads // kv_heads)``). `scale` defaults to 1/sqrt(head_dim).
        With `causal`, the queries are the last q_len positions: query i sees
        tokens up to ``seq - q_len + i``. The result has q's shape."""
        req, squeeze = c.attention_request(name, q, causal, scale, out_dtype)
        out = from_proto(self._call(self._kv.Attention, req, timeout).output)
        return out[0] if squeeze else out


class _OrderedStream:
    """Puts a stream's completions back in request order, with at most
    `limit` requests sent and not yet handed to the caller."""

    def __init__(self, limit: int):
        self._slots = threading.Semaphore(limit)
        self._done = threading.Event()
        self._error: Optional[tuple[int, Exception]] = None

    def acquire(self) -> bool:
        """Waits for a slot; False once the stream is over."""
        while not self._slots.acquire(timeout=0.1):
            if self._done.is_set():
                return False
        return not self._done.is_set()

    def fail(self, index: int, error: Exception) -> None:
        """Item `index` could not be sent (a bad input, or `xs` raised): it
        raises `error` at its place; nothing after it is sent."""
        self._error = (index, error)

    def results(self, call: Any) -> Iterator[np.ndarray]:
        order = c.InOrder()
        try:
            for resp in call:
                for r in order.add(resp):
                    self._slots.release()
                    yield c.item_result(r)
            order.end(self._error)
        except grpc.RpcError as e:
            raise _errors.from_rpc_error(e) from None
        finally:
            self._done.set()
            call.cancel()
