"""`aiki server`, with each HTTP request counted by route, for `bench/service.py`.

Run as `python _counting_server.py server ...` (the `aiki` command's arguments). The counts so
far are at `GET /bench/requests`, itself not counted: the bench reads them before and after a
phase and prints requests per workflow. Counting is a dict increment per request.
"""

from __future__ import annotations

import json
import re
import socket
from collections import Counter
from typing import Any

from aiki.cli import _serve
from aiki.cli._main import main

COUNTS_PATH = "/bench/requests"

# `/v1/runs/<id>/tasks/finish` -> `/v1/runs/{id}/tasks/finish`: one row per route.
_RUN_ID = re.compile(r"^/v1/runs/[^/]+")

_counts: Counter[str] = Counter()


# Routes under /v1/runs that are not a run's.
_FIXED = {"/v1/runs", "/v1/runs/wait-any"}


def _route(method: str, path: str) -> str:
    if path not in _FIXED:
        path = _RUN_ID.sub("/v1/runs/{id}", path)
    return f"{method} {path}"


class _Counting:
    def __init__(self, app: Any) -> None:
        self._app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            if scope["path"] == COUNTS_PATH:
                body = json.dumps(_counts).encode()
                headers = [(b"content-type", b"application/json")]
                await send({"type": "http.response.start", "status": 200, "headers": headers})
                await send({"type": "http.response.body", "body": body})
                return
            _counts[_route(scope["method"], scope["path"])] += 1
        await self._app(scope, receive, send)


_HttpServer = _serve.HttpServer


def _counting_http_server(app: Any, sock: socket.socket) -> Any:
    return _HttpServer(_Counting(app), sock)


_serve.HttpServer = _counting_http_server  # type: ignore[misc,assignment]

if __name__ == "__main__":
    main()
