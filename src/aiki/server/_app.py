"""`create_app()`: the server's HTTP JSON API as a Starlette ASGI app.

A thin adapter: each endpoint validates its request, calls the service layer (`EngineApi`)
and turns the reply, or the error, into JSON. `/health` answers without the API key;
`/openapi.json` documents every API route. The dashboard is mounted at `/dashboard/` (and `/`
leads there); with an API key it asks for the key itself, with a login form.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Protocol

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.types import ASGIApp, Receive, Scope, Send

from aiki._core.api import EngineApi
from aiki._http.bodies import HealthBody
from aiki._http.errors import plain_error
from aiki.config import ServerSettings
from aiki.dashboard import create_dashboard
from aiki.server._api import runs, workers
from aiki.server._api._base import (
    LONG_POLL_CAP_S,
    Call,
    ClientGoneError,
    Endpoint,
    Limits,
    error_response,
    json_response,
)
from aiki.server._api.openapi import build_openapi

ENDPOINTS: tuple[Endpoint, ...] = (*runs.ENDPOINTS, *workers.ENDPOINTS)

# JSON escapes can make a string six times longer ("\u0001"), so a body may be that much
# larger than the payload it carries; the payload's own limit is checked on the decoded text.
_BODY_OVERHEAD = 6
_BODY_SLACK = 64 * 1024


class Hosted(Protocol):
    """What the app serves: a server's service layer, settings and lifecycle."""

    @property
    def service(self) -> EngineApi: ...
    @property
    def settings(self) -> ServerSettings: ...
    @property
    def running(self) -> bool: ...
    async def start(self) -> None: ...
    async def stop(self) -> None: ...


def create_app(
    server: Hosted, *, api_key: str | None = None, long_poll_cap_s: float = LONG_POLL_CAP_S
) -> Starlette:
    """The HTTP API of `server` as an ASGI app.

    Under an ASGI server with lifespan events (uvicorn), the app starts the server if it is not
    running yet, and stops it on shutdown if it started it.

    Args:
        server: What to serve, usually an `aiki.server(...)`.
        api_key: When set, every endpoint but `/health` requires `Authorization: Bearer <key>`.
        long_poll_cap_s: Longest one long-poll request (wait, poll) is held open; clients ask
            again to wait longer.
    """
    if api_key is not None and not api_key:
        raise ValueError("api_key must be a non-empty string or None")
    if long_poll_cap_s <= 0:
        raise ValueError(f"long_poll_cap_s must be > 0, got {long_poll_cap_s}")
    limits = Limits(
        max_payload_bytes=server.settings.max_payload_bytes,
        max_body_bytes=server.settings.max_payload_bytes * _BODY_OVERHEAD + _BODY_SLACK,
        long_poll_cap_s=long_poll_cap_s,
    )
    openapi = json.dumps(build_openapi(ENDPOINTS, secured=api_key is not None)).encode()

    async def health(request: Request) -> Response:
        return json_response(HealthBody())

    async def openapi_json(request: Request) -> Response:
        return Response(openapi, media_type="application/json")

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        owned = not server.running
        if owned:
            await server.start()
        try:
            yield
        finally:
            if owned:
                await server.stop()

    routes = [
        Route("/health", health, methods=["GET"]),
        Route("/openapi.json", openapi_json, methods=["GET"]),
        *(_route(e, server.service, limits) for e in ENDPOINTS),
        Mount("/dashboard", app=create_dashboard(server.service, api_key=api_key)),
    ]
    middleware = [Middleware(HomeToDashboard)]
    if api_key is not None:
        middleware.append(Middleware(RequireApiKey, api_key=api_key))
    return Starlette(
        routes=routes,
        middleware=middleware,
        exception_handlers={404: _http_error, 405: _http_error},
        lifespan=lifespan,
    )


def _route(endpoint: Endpoint, api: EngineApi, limits: Limits) -> Route:
    handler = endpoint.handler

    async def serve(request: Request) -> Response:
        try:
            return await handler(Call(api, request, limits))
        except ClientGoneError:
            return Response(status_code=499)  # never sent: the connection is gone
        except Exception as exc:
            return error_response(exc)

    return Route(endpoint.path, serve, methods=[endpoint.method], name=endpoint.name)


_HTTP_CODES = {404: "not_found", 405: "method_not_allowed"}


async def _http_error(request: Request, exc: Exception) -> Response:
    status = exc.status_code if isinstance(exc, HTTPException) else 500
    detail = exc.detail if isinstance(exc, HTTPException) else "error"
    body = plain_error(
        _HTTP_CODES.get(status, "http_error"), f"{request.method} {request.url.path}: {detail}"
    )
    response = json_response(body, status)
    if isinstance(exc, HTTPException) and exc.headers:
        response.headers.update(exc.headers)
    return response


class HomeToDashboard:
    """ASGI middleware: `GET /` leads to the dashboard.

    A middleware rather than a route, so that the app's routes stay exactly the API that
    `/openapi.json` documents.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] == "/" and scope["method"] in ("GET", "HEAD"):
            response = RedirectResponse(f"{scope.get('root_path', '')}/dashboard/", 307)
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)


class RequireApiKey:
    """ASGI middleware: refuse every request but `/health` without `Bearer <api_key>`.

    The dashboard checks the key itself: it also accepts the session cookie of its login
    form, and sends people to that form rather than a 401.
    """

    def __init__(self, app: ASGIApp, *, api_key: str) -> None:
        self.app = app
        self._key = api_key.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or _open_path(scope["path"]) or self._allowed(scope):
            await self.app(scope, receive, send)
            return
        sent = any(name == b"authorization" for name, _ in scope["headers"])
        message = (
            "the API key sent is not this server's"
            if sent
            else "this server requires an API key: send 'Authorization: Bearer <key>'"
        )
        response = json_response(plain_error("unauthorized", message), 401)
        response.headers["WWW-Authenticate"] = "Bearer"
        await response(scope, receive, send)

    def _allowed(self, scope: Scope) -> bool:
        for name, value in scope["headers"]:
            if name == b"authorization":
                scheme, _, token = value.partition(b" ")
                # Compare in constant time so the key cannot be guessed byte by byte.
                return scheme.lower() == b"bearer" and hmac.compare_digest(token.strip(), self._key)
        return False


def _open_path(path: str) -> bool:
    return path in ("/health", "/dashboard") or path.startswith("/dashboard/")
