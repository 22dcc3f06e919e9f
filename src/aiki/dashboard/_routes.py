"""The dashboard's pages: runs, one run's timeline, workflows, workers, and cancelling a run.

Server-rendered HTML over the service layer (`EngineApi`), mounted by the server at
`/dashboard`. Every page is a template with autoescaping on; links are built from the mount
point, so the dashboard works wherever it is mounted.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote, urlencode

import jinja2
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Receive, Scope, Send

from aiki._core.api import EngineApi
from aiki._core.ids import RunId
from aiki._core.models import RunStatus
from aiki._core.states import RunState
from aiki.dashboard._security import COOKIE, Gate, read_form, safe_next, same_origin
from aiki.dashboard._timeline import format_duration, format_time, sleeps, tasks, timeline
from aiki.errors import RunNotFoundError

PAGE_SIZE = 50
_MAX_PAGE_SIZE = 500
_MAX_REASON = 1000

# No inline script or style anywhere, so the policy can forbid them: injected markup that
# escaped the escaping still could not run.
_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'self'; script-src 'self'; img-src 'self'; "
        "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


def create_dashboard(api: EngineApi, *, api_key: str | None = None) -> Starlette:
    """The dashboard as an ASGI app, to mount (the server mounts it at `/dashboard`).

    Args:
        api: The service layer it reads and acts through.
        api_key: When set, every page requires it: as the API's `Authorization: Bearer <key>`
            header, or the session cookie set by the login form at `login`.
    """
    gate = Gate(api_key)
    pages = _Pages(api, gate)
    routes = [
        Route("/", pages.runs, methods=["GET"]),
        Route("/runs/{run_id}", pages.run, methods=["GET"]),
        Route("/runs/{run_id}/cancel", pages.cancel, methods=["POST"]),
        Route("/workflows", pages.workflows, methods=["GET"]),
        Route("/workers", pages.workers, methods=["GET"]),
        Route("/login", pages.login_form, methods=["GET"]),
        Route("/login", pages.login, methods=["POST"]),
        Route("/logout", pages.logout, methods=["POST"]),
        Mount("/static", app=StaticFiles(packages=[("aiki.dashboard", "static")])),
    ]
    return Starlette(
        routes=routes,
        middleware=[Middleware(_RequireLogin, gate=gate, render=pages.render)],
        exception_handlers={HTTPException: pages.http_error},
    )


_ENV = jinja2.Environment(
    loader=jinja2.PackageLoader("aiki.dashboard", "templates"),
    autoescape=True,
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
    auto_reload=False,  # the templates ship with the package: no need to stat them per page
)


def _when_exact(ms: int | None) -> str:
    if ms is None:
        return ""
    return datetime.fromtimestamp(ms / 1000, tz=UTC).isoformat(timespec="milliseconds")


def _offset(ms: int | None) -> str:
    return "" if ms is None else f"+{format_duration(ms)}"


def _pretty(value: Any) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False)


_ENV.filters.update(
    when=lambda ms: "" if ms is None else format_time(ms),
    when_exact=_when_exact,
    offset=_offset,
    duration=lambda ms: "" if ms is None else format_duration(int(ms)),
    pretty=_pretty,
    path=lambda text: quote(str(text), safe=""),
)


def _base(request: Request) -> str:
    """Where the dashboard is mounted, e.g. "/dashboard" (with any proxy prefix)."""
    return str(request.scope.get("root_path", "")).rstrip("/")


class _Pages:
    def __init__(self, api: EngineApi, gate: Gate) -> None:
        self._api = api
        self._gate = gate

    def render(
        self, request: Request, template: str, status_code: int = 200, **context: Any
    ) -> HTMLResponse:
        context.setdefault("nav", "")
        context.setdefault("refreshable", False)
        context.setdefault("bare", False)  # no navigation (the login page)
        html = _ENV.get_template(template).render(
            base=_base(request), locked=self._gate.locked, **context
        )
        return HTMLResponse(html, status_code=status_code, headers=_HEADERS)

    async def http_error(self, request: Request, exc: Exception) -> Response:
        status = exc.status_code if isinstance(exc, HTTPException) else 500
        detail = exc.detail if isinstance(exc, HTTPException) else "error"
        if status == 404 and detail == "Not Found":
            detail = f"There is no page at {request.url.path}."
        elif status == 405:
            detail = f"{request.method} is not allowed here."
        return self.render(request, "error.html", status, status=status, detail=detail)

    # --- runs ---------------------------------------------------------------------------

    async def runs(self, request: Request) -> Response:
        query = request.query_params
        workflow = query.get("workflow") or None
        state = _state(query.get("state"))
        after = query.get("after") or None
        limit = _limit(query.get("limit"))
        page = await self._api.list_runs(
            workflow=workflow,
            state=state,
            after=None if after is None else RunId(after),
            limit=limit + 1,  # one more tells whether an older page exists
        )
        runs, more = page[:limit], len(page) > limit
        names = sorted({w.name for w in await self._api.list_workflows()} | {workflow or ""})
        filters = {"workflow": workflow, "state": state, "limit": query.get("limit")}
        return self.render(
            request,
            "runs.html",
            nav="runs",
            refreshable=True,
            runs=runs,
            notes={run.id: _note(run) for run in runs},
            workflow=workflow or "",
            state=state or "",
            states=list(RunState),
            workflow_names=[name for name in names if name],
            filtered=workflow is not None or state is not None,
            paged=after is not None,
            older_url=_runs_url(request, **filters, after=runs[-1].id) if more else None,
            newest_url=_runs_url(request, **filters) if after is not None else None,
        )

    async def run(self, request: Request) -> Response:
        run_id = RunId(request.path_params["run_id"])
        try:
            status = await self._api.get_status(run_id)
            history = await self._api.get_history(run_id)
        except RunNotFoundError:
            raise HTTPException(404, f"There is no run {run_id}.") from None
        return self.render(
            request,
            "run.html",
            nav="runs",
            refreshable=not status.state.is_final,
            run=status,
            notice=_NOTICES.get(request.query_params.get("cancel", "")),
            timeline=timeline(history),
            tasks=tasks(history),
            sleeps=sleeps(history, status.wait),
            start=history[0].at_ms if history else status.created_at_ms,
        )

    async def cancel(self, request: Request) -> Response:
        if not same_origin(request):
            raise HTTPException(403, "This form must be sent from the dashboard's own pages.")
        form = await read_form(request)
        if form is None:
            raise HTTPException(400, "Send the cancel form as a small url-encoded form.")
        reason = form.get("reason", "").strip() or None
        if reason is not None and len(reason) > _MAX_REASON:
            raise HTTPException(400, f"The reason is longer than {_MAX_REASON} characters.")
        run_id = RunId(request.path_params["run_id"])
        try:
            before = await self._api.get_status(run_id)
            after = await self._api.cancel(run_id, reason)
        except RunNotFoundError:
            raise HTTPException(404, f"There is no run {run_id}.") from None
        if before.state.is_final:
            outcome = "ended"
        elif after.state is RunState.CANCELLED:
            outcome = "done"
        else:
            outcome = "requested"
        url = f"{_base(request)}/runs/{quote(run_id, safe='')}?cancel={outcome}"
        return RedirectResponse(url, status_code=303)

    # --- workflows and workers ----------------------------------------------------------

    async def workflows(self, request: Request) -> Response:
        summaries = await self._api.list_workflows()
        return self.render(
            request,
            "workflows.html",
            nav="workflows",
            refreshable=True,
            workflows=summaries,
            states=list(RunState),
        )

    async def workers(self, request: Request) -> Response:
        workers = sorted(
            await self._api.list_workers(), key=lambda w: (not w.alive, -w.last_seen_ms, w.id)
        )
        return self.render(
            request, "workers.html", nav="workers", refreshable=True, workers=workers
        )

    # --- login --------------------------------------------------------------------------

    async def login_form(self, request: Request) -> Response:
        target = safe_next(request.query_params.get("next"), _base(request))
        if not self._gate.locked or self._gate.allows(request):
            return RedirectResponse(target, status_code=303)
        return self.render(request, "login.html", bare=True, next=target, error=None)

    async def login(self, request: Request) -> Response:
        if not same_origin(request):
            raise HTTPException(403, "This form must be sent from the dashboard's own pages.")
        form = await read_form(request) or {}
        target = safe_next(form.get("next"), _base(request))
        if not self._gate.locked:
            return RedirectResponse(target, status_code=303)
        if not self._gate.is_key(form.get("key", "")):
            return self.render(
                request,
                "login.html",
                401,
                bare=True,
                next=target,
                error="That is not the server's API key.",
            )
        response = RedirectResponse(target, status_code=303)
        response.set_cookie(
            COOKIE,
            self._gate.session,
            path=f"{_base(request)}/",
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
        )
        return response

    async def logout(self, request: Request) -> Response:
        if not same_origin(request):
            raise HTTPException(403, "This form must be sent from the dashboard's own pages.")
        response = RedirectResponse(f"{_base(request)}/login", status_code=303)
        response.delete_cookie(COOKIE, path=f"{_base(request)}/", httponly=True, samesite="strict")
        return response


_NOTICES = {
    "done": "The run is cancelled.",
    "requested": (
        "Cancel requested: the run's worker stops it at its next heartbeat or task end, "
        "and the run then ends cancelled."
    ),
    "ended": "The run had already ended; there was nothing to cancel.",
}


def _state(text: str | None) -> RunState | None:
    if not text:
        return None
    try:
        return RunState(text)
    except ValueError:
        known = ", ".join(state.value for state in RunState)
        raise HTTPException(400, f"Unknown state {text!r}: the states are {known}.") from None


def _limit(text: str | None) -> int:
    if not text:
        return PAGE_SIZE
    if not text.isdigit() or not 1 <= int(text) <= _MAX_PAGE_SIZE:
        raise HTTPException(400, f"limit must be a number from 1 to {_MAX_PAGE_SIZE}.")
    return int(text)


def _runs_url(request: Request, **params: str | None) -> str:
    query = urlencode({name: value for name, value in params.items() if value})
    return f"{_base(request)}/" + (f"?{query}" if query else "")


@dataclass(frozen=True, slots=True)
class _ListNote:
    text: str = ""
    warn: bool = False  # the run cannot go on as things stand: shown in the warning colour


def _note(run: RunStatus) -> _ListNote:
    """The one thing worth knowing about a run in the list, if any."""
    if run.note:
        return _ListNote(run.note, warn=True)
    if run.wait is not None:
        detail = f" of {run.wait.detail}" if run.wait.detail else ""
        if run.wait.until_ms is None:
            return _ListNote(f"{run.wait.kind.value}{detail}")
        return _ListNote(f"{run.wait.kind.value}{detail} until {format_time(run.wait.until_ms)}")
    if run.state is RunState.FAILED and run.error is not None:
        return _ListNote(f"{run.error.type.rsplit('.', 1)[-1]}: {run.error.message}")
    if run.cancel_reason and (run.state is RunState.CANCELLED or run.cancel_requested):
        return _ListNote(f"reason: {run.cancel_reason}")
    return _ListNote()


class _RequireLogin:
    """ASGI middleware: with an API key, send people without it to the login form."""

    def __init__(self, app: ASGIApp, *, gate: Gate, render: Any) -> None:
        self.app = app
        self._gate = gate
        self._render = render

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self._gate.locked:
            await self.app(scope, receive, send)
            return
        request = Request(scope, receive)
        base = _base(request)
        path = request.url.path[len(base) :] if request.url.path.startswith(base) else "/"
        if path == "/login" or path.startswith("/static/") or self._gate.allows(request):
            await self.app(scope, receive, send)
            return
        response: Response
        if request.method in ("GET", "HEAD"):
            target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
            login = f"{base}/login?{urlencode({'next': target})}"
            response = RedirectResponse(login, status_code=303)
        else:
            response = self._render(
                request, "error.html", 401, status=401, detail="Log in to the dashboard first."
            )
        await response(scope, receive, send)
