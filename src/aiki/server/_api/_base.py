"""What every endpoint shares: its description, reading and validating the request, replying.

An `Endpoint` describes one route (method, path, body and reply types, the error codes it may
send); the same description builds the Starlette route and its entry in the OpenAPI document.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import msgspec
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive

from aiki._core.api import EngineApi
from aiki._http.codec import BodyError, Codec, error_path
from aiki._http.codec import encode as encode_body
from aiki._http.errors import error_reply, plain_error
from aiki.errors import InvalidRequestError, PayloadTooLargeError

_log = logging.getLogger("aiki.server.http")

T = TypeVar("T")

# One long-poll request waits this long at most; a client wanting longer asks again. It keeps
# each request well below the idle timeouts of proxies and load balancers.
LONG_POLL_CAP_S = 25.0

_JSON = "application/json"


@dataclass(frozen=True, slots=True, kw_only=True)
class Limits:
    """What the HTTP layer accepts.

    There is one size limit users set, `max_payload_bytes`; a body may be larger than the
    payload it carries (JSON escapes, the other fields), so `max_body_bytes` is derived from it,
    and a body over it is refused naming the payload limit: the one the user can act on.
    """

    max_payload_bytes: int
    max_body_bytes: int
    long_poll_cap_s: float = LONG_POLL_CAP_S


class ClientGoneError(Exception):
    """The client closed the connection while a long-poll waited: nobody to answer."""


@dataclass(slots=True)
class Call:
    """One request to an endpoint: the service to call and the request's parts."""

    api: EngineApi
    request: Request
    limits: Limits

    def path(self, name: str) -> str:
        """A path parameter, e.g. the run id of `/v1/runs/{run_id}`."""
        value: str = self.request.path_params[name]
        return value

    async def body(self, codec: Codec[T], *, optional: bool = False) -> T:
        """The request's JSON body, read as `codec`'s type.

        With `optional`, an empty body counts as `{}`.

        Raises:
            InvalidRequestError: not JSON, or not of the expected shape (names the field).
            PayloadTooLargeError: a body larger than the server accepts.
        """
        data = await self._read_body()
        if optional and not data.strip():
            data = b"{}"
        try:
            return codec.decode(data)
        except BodyError as exc:
            raise invalid_request(exc, where="body") from None

    def query(self, codec: Codec[T]) -> T:
        """The query parameters, read as `codec`'s type."""
        try:
            return codec.from_query(self.request.query_params)
        except BodyError as exc:
            raise invalid_request(exc, where="query") from None

    async def _read_body(self) -> bytes:
        limit = self.limits.max_body_bytes
        declared = self.request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise _body_too_large(int(declared), self.limits)
        chunks: list[bytes] = []
        size = 0
        async for chunk in self.request.stream():
            size += len(chunk)
            if size > limit:
                raise _body_too_large(size, self.limits)
            chunks.append(chunk)
        return b"".join(chunks)

    async def long_poll(self, work: Awaitable[T]) -> tuple[T, bool]:
        """Run `work`, cancelling it if the client disconnects first.

        Returns the result and whether the client is known to be gone already (it left while
        the result was being made), so that a caller can undo what nobody will receive.

        Raises:
            ClientGoneError: the client left and `work` was cancelled.
        """
        task = asyncio.ensure_future(work)
        watcher = asyncio.ensure_future(_disconnected(self.request.receive))
        try:
            await asyncio.wait((task, watcher), return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            # The server is stopping or (in-process transports) the caller gave up: the work
            # must see the cancellation too, and finish reacting to it before we go.
            task.cancel()
            watcher.cancel()
            await asyncio.gather(task, watcher, return_exceptions=True)
            raise
        gone = watcher.done()
        watcher.cancel()
        await asyncio.gather(watcher, return_exceptions=True)
        if not task.done():
            task.cancel()
            await asyncio.wait((task,))
        if task.cancelled():
            raise ClientGoneError
        return task.result(), gone


async def _disconnected(receive: Receive) -> None:
    """Return once the client has closed the connection (the body was read before)."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return


def _body_too_large(size: int, limits: Limits) -> PayloadTooLargeError:
    limit = limits.max_payload_bytes
    return PayloadTooLargeError(
        f"request body of {size} bytes cannot hold a payload within the limit of {limit} bytes "
        "(max_payload_bytes)",
        size=size,
        limit=limit,
    )


def invalid_request(
    exc: msgspec.ValidationError | msgspec.DecodeError, *, where: str
) -> InvalidRequestError:
    """Describe a body or query that is not what the endpoint reads, naming the field."""
    if not isinstance(exc, msgspec.ValidationError):
        reason = str(exc).removeprefix("JSON is malformed: ")
        return InvalidRequestError(f"request {where} is not valid JSON: {reason}")
    reason, path = error_path(exc)
    if path is None:
        return InvalidRequestError(f"request {where}: {reason}", field=None)
    return InvalidRequestError(f"invalid request {where}: {path}: {reason}", field=path)


def json_response(body: object, status: int = 200) -> Response:
    """A JSON reply (compact, UTF-8) of a record or of plain JSON values."""
    return Response(encode_body(body), status_code=status, media_type=_JSON)


def error_response(exc: Exception) -> Response:
    """The reply for an exception: its stable code, or 500 `internal_error`."""
    mapped = error_reply(exc)
    if mapped is None:
        _log.error("unexpected error answering a request", exc_info=exc)
        message = f"internal server error ({type(exc).__name__}); see the server log"
        return json_response(plain_error("internal_error", message), 500)
    status, error = mapped
    return json_response(error, status)


Handler = Callable[[Call], Awaitable[Response]]


@dataclass(frozen=True, slots=True, kw_only=True)
class Endpoint:
    """One route of the API, as served and as documented."""

    method: str
    path: str
    name: str
    summary: str
    handler: Handler
    body: Codec[Any] | None = None
    query: Codec[Any] | None = None
    reply: Codec[Any] | None = None  # None: 204 No Content
    status: int = 200
    errors: tuple[str, ...] = field(default=())
    tag: str = "runs"


def no_content() -> Response:
    """The reply of a call that returns nothing."""
    return Response(status_code=204)
