"""plume.aio.Client: the asyncio client. Same methods and arguments as
:class:`plume.Client`, as coroutines; gemv_stream is an async iterator.

    async with plume.aio.Client("localhost:50051") as client:
        y = await client.gemv("w", x)
        async for y in client.gemv_stream("w", xs):
            ...
"""
from __future__ import annotations

import asyncio
import os
from typing import Any, AsyncIterable, AsyncIterator, Callable, Iterable, Optional, Union

import grpc
import grpc.aio
import numpy as np

from plume import _checkpoint
from plume import _common as c
from plume import _errors, _model
from plume._common import KVInfo, MatrixInfo
from plume._model import ModelUploadSummary
from plume._tensors import from_proto
from plume.v1 import attention_pb2 as apb
from plume.v1 import plume_pb2 as pb

__all__ = ["Client"]

_UNSET: Any = object()


class Client:
    """The asyncio twin of :class:`plume.Client`; see there for the arguments.
    Make it (or enter it with ``async with``) inside the event loop that uses it."""

    def __init__(self, address: str = c.DEFAULT_ADDRESS, *, token: str | None = None,
                 token_file: str | os.PathLike | None = None, tls: bool = False,
                 ca: str | os.PathLike | None = None, cert: str | os.PathLike | None = None,
                 key: str | os.PathLike | None = None, timeout: float | None = 30.0):
        self._conn = c.connection(address, token, token_file, tls, ca, cert, key, timeout)
        self._channel, self._matrices, self._kv, self._health = c.open_channel(grpc.aio, self._conn)

    async def close(self) -> None:
        """Closes the channel; calls in flight are cancelled."""
        await self._channel.close()

    async def __aenter__(self) -> "Client":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()

    def _timeout(self, timeout: Any) -> Optional[float]:
        return self._conn.timeout if timeout is _UNSET else timeout

    async def _call(self, method: Any, request: Any, timeout: Any) -> Any:
        try:
            return await method(request, timeout=self._timeout(timeout), metadata=self._conn.metadata)
        except grpc.RpcError as e:
            raise _errors.from_rpc_error(e) from None

    async def health(self, service: str = "", *, timeout: Any = _UNSET) -> bool:
        """True when SERVING; see :meth:`plume.Client.health`."""
        try:
            return await self._health(service, timeout=self._timeout(timeout)) == 1
        except grpc.RpcError as e:
            raise _errors.from_rpc_error(e) from None

    # -------------------------------------------------------------- matrices

    async def upload(self, name: str, src: Any, *, format: str = "e4m3", scale: str = "row",
                     non_saturating: bool = False, placement: str = "auto", tensor: str | None = None,
                     progress: Any = False, content_hash: str = "", timeout: Any = _UNSET) -> MatrixInfo:
        """See :meth:`plume.Client.upload`."""
        bar = c.Progress(progress, f"upload {name}")
        total, reqs = c.upload_requests(name, src, format=format, scale=scale,
                                        non_saturating=non_saturating, placement=placement,
                                        tensor=tensor, progress=bar if bar.active else None,
                                        content_hash=content_hash)
        resp = await self._upload(self._matrices.UploadMatrix, reqs, total, bar, timeout)
        return MatrixInfo.from_proto(resp.matrix)

    async def _upload(self, method: Any, reqs: Any, total: int, bar: c.Progress, timeout: Any) -> Any:
        bar.start(total)
        try:
            return await self._call(method, reqs, timeout)
        finally:
            bar.close()

    async def upload_packed(self, name: str, codes: Any, scales: Any, *, format: str, scale: str,
                            placement: str = "auto", content_hash: str = "", non_saturating: bool = False,
                            timeout: Any = _UNSET) -> MatrixInfo:
        """See :meth:`plume.Client.upload_packed`."""
        reqs = c.packed_requests(name, codes, scales, format=format, scale=scale, placement=placement,
                                 content_hash=content_hash, non_saturating=non_saturating)
        return MatrixInfo.from_proto((await self._call(self._matrices.UploadMatrix, reqs, timeout)).matrix)

    async def upload_fp8(self, name: str, path: Any, *, tensor: str | None = None,
                         scale_tensor: str | None = None, scale: str | None = None, placement: str = "auto",
                         content_hash: str = "", timeout: Any = _UNSET) -> MatrixInfo:
        """See :meth:`plume.Client.upload_fp8`."""
        if scale not in (None, "none"):
            raise ValueError("an FP8 tensor's scale mode comes from its scale tensor's shape; scale= may only be 'none'")
        t = _checkpoint.read_fp8_tensor(path, tensor, scale_tensor, no_scale=scale == "none")
        return await self.upload_packed(name, t.codes, t.scales, format=t.format, scale=t.scale,
                                        placement=placement, content_hash=content_hash, timeout=timeout)

    async def upload_model(self, path: str | os.PathLike, *, match: str | None = None, prefix: str = "",
                           format: str = "e4m3", scale: str = "row", non_saturating: bool = False,
                           placement: str = "auto", replace: bool = False,
                           progress: Optional[Callable[[int, int], None]] = None,
                           timeout: Any = _UNSET) -> ModelUploadSummary:
        """See :meth:`plume.Client.upload_model`. Reading and hashing the
        checkpoint's files runs in the event loop's thread."""
        c._choice(c._FORMATS, format, "format")
        c._choice(c._SCALES, scale, "scale")
        ckpt = _model.Checkpoint(path)
        todo = _model.plan(ckpt, match=match, prefix=prefix, scale=scale.lower())
        resident = {m.name: m for m in await self.list(timeout=timeout)}
        run = _model.Run(ckpt, resident, format=format, non_saturating=non_saturating, placement=placement,
                         replace=replace, progress=progress, total=sum(u.bytes for u in todo))
        for u in todo:
            steps = run.steps(u)
            try:
                op = next(steps)
                while True:
                    err = None
                    try:
                        if op[0] == "delete":
                            await self.delete(op[1], timeout=timeout)
                        else:
                            kw = dict(op[1])
                            if kw.pop("kind") == "packed":
                                await self.upload_packed(kw.pop("name"), kw.pop("codes"), kw.pop("scales"),
                                                         timeout=timeout, **kw)
                            else:
                                await self.upload(kw.pop("name"), kw.pop("src"), timeout=timeout, **kw)
                    except (_errors.PlumeError, ValueError, OSError) as e:
                        err = e
                    op = steps.send(err)
            except StopIteration:
                pass
        return ModelUploadSummary(todo)

    async def packed(self, name: str, *, timeout: Any = _UNSET) -> tuple[MatrixInfo, np.ndarray, np.ndarray]:
        """See :meth:`plume.Client.packed`."""
        resp = await self._call(self._matrices.GetMatrix, pb.GetMatrixRequest(name=name, include_packed=True),
                                timeout)
        return c.packed_result(resp)

    async def info(self, name: str, *, timeout: Any = _UNSET) -> MatrixInfo:
        resp = await self._call(self._matrices.GetMatrix, pb.GetMatrixRequest(name=name), timeout)
        return MatrixInfo.from_proto(resp.matrix)

    async def list(self, *, timeout: Any = _UNSET) -> list[MatrixInfo]:
        resp = await self._call(self._matrices.ListMatrices, pb.ListMatricesRequest(), timeout)
        return [MatrixInfo.from_proto(m) for m in resp.matrices]

    async def delete(self, name: str, *, timeout: Any = _UNSET) -> None:
        await self._call(self._matrices.DeleteMatrix, pb.DeleteMatrixRequest(name=name), timeout)

    async def gemv(self, name: str, x: Any, *, out_dtype: Any = None,
                   timeout: Any = _UNSET) -> np.ndarray:
        """See :meth:`plume.Client.gemv`."""
        req = c.gemv_request(name, x, c.out_wire_dtype(out_dtype))
        return from_proto((await self._call(self._matrices.Gemv, req, timeout)).output)

    async def gemv_stream(self, name: str, xs: Union[Iterable[Any], AsyncIterable[Any]], *,
                          max_in_flight: int = 64, out_dtype: Any = None,
                          timeout: float | None = None) -> AsyncIterator[np.ndarray]:
        """See :meth:`plume.Client.gemv_stream`; `xs` may be an async iterable.
        Leaving the loop early cancels the stream once the generator is
        closed (``contextlib.aclosing`` closes it at once)."""
        if max_in_flight < 1:
            raise ValueError("max_in_flight must be at least 1")
        out = c.out_wire_dtype(out_dtype)
        call = self._matrices.GemvStream(timeout=timeout, metadata=self._conn.metadata)
        slots = asyncio.Semaphore(max_in_flight)
        failed: list[tuple[int, BaseException]] = []

        async def write() -> None:
            # A slot first, then the next x: the source is not read ahead.
            it = _aiter(xs)
            i = 0
            try:
                while True:
                    await slots.acquire()
                    try:
                        x = await it.__anext__()
                    except StopAsyncIteration:
                        break
                    await call.write(c.gemv_request(name, x, out, i))
                    i += 1
            except grpc.RpcError:
                return  # the read side sees the call's status
            except Exception as e:  # noqa: BLE001 - a bad input or xs raised: raised at its place
                failed.append((i, e))
            await call.done_writing()

        writer = asyncio.create_task(write())
        order = c.InOrder()
        try:
            while True:
                resp = await call.read()
                if resp is grpc.aio.EOF:
                    break
                for r in order.add(resp):
                    slots.release()
                    yield c.item_result(r)
            code = await call.code()
            if code != grpc.StatusCode.OK:
                raise _errors.from_code(code, await call.details() or "")
            await writer
            order.end(failed[0] if failed else None)
        except grpc.RpcError as e:
            raise _errors.from_rpc_error(e) from None
        finally:
            writer.cancel()
            call.cancel()

    # -------------------------------------------------------------- K/V caches

    async def kv_upload(self, name: str, k: Any, v: Any, *, format: str = "e4m3",
                        scale: str = "token_block", non_saturating: bool = False, progress: Any = False,
                        timeout: Any = _UNSET) -> KVInfo:
        """See :meth:`plume.Client.kv_upload`."""
        bar = c.Progress(progress, f"kv_upload {name}")
        total, reqs = c.kv_upload_requests(name, k, v, format=format, scale=scale,
                                           non_saturating=non_saturating,
                                           progress=bar if bar.active else None)
        resp = await self._upload(self._kv.UploadKV, reqs, total, bar, timeout)
        return KVInfo.from_proto(resp.cache)

    async def kv_append(self, name: str, k: Any, v: Any, *, timeout: Any = _UNSET) -> KVInfo:
        resp = await self._call(self._kv.AppendKV, c.kv_append_request(name, k, v), timeout)
        return KVInfo.from_proto(resp.cache)

    async def kv_info(self, name: str, *, timeout: Any = _UNSET) -> KVInfo:
        return KVInfo.from_proto((await self._call(self._kv.GetKV, apb.GetKVRequest(name=name),
                                                   timeout)).cache)

    async def kv_list(self, *, timeout: Any = _UNSET) -> list[KVInfo]:
        resp = await self._call(self._kv.ListKV, apb.ListKVRequest(), timeout)
        return [KVInfo.from_proto(x) for x in resp.caches]

    async def kv_delete(self, name: str, *, timeout: Any = _UNSET) -> None:
        await self._call(self._kv.DeleteKV, apb.DeleteKVRequest(name=name), timeout)

    async def attend(self, name: str, q: Any, *, causal: bool = False, scale: float | None = None,
                     out_dtype: Any = None, timeout: Any = _UNSET) -> np.ndarray:
        """See :meth:`plume.Client.attend`."""
        req, squeeze = c.attention_request(name, q, causal, scale, out_dtype)
        out = from_proto((await self._call(self._kv.Attention, req, timeout)).output)
        return out[0] if squeeze else out


async def _aiter(xs: Union[Iterable[Any], AsyncIterable[Any]]) -> AsyncIterator[Any]:
    if hasattr(xs, "__aiter__"):
        async for x in xs:  # type: ignore[union-attr]
            yield x
    else:
        for x in xs:  # type: ignore[union-attr]
            yield x
