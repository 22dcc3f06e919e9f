"""Who may use the dashboard, and which form posts it accepts.

With an API key, a request gets in when it carries the key as the API's bearer header or
the session cookie that the login form sets. The cookie holds an HMAC of the key, not the
key itself: it opens the dashboard but is no API credential, and changing the key ends every
session. Posts must come from a page of the same origin (Origin, else Referer), so another
site cannot make a logged-in browser cancel runs.
"""

from __future__ import annotations

import hashlib
import hmac
from urllib.parse import parse_qsl, urlsplit

from starlette.requests import Request

COOKIE = "aiki_dashboard"
_MAX_FORM_BYTES = 64 * 1024


class Gate:
    """The dashboard's lock: open when the server has no API key."""

    def __init__(self, api_key: str | None) -> None:
        self._key = None if api_key is None else api_key.encode()
        self._session = (
            None
            if self._key is None
            else hmac.new(self._key, b"aiki dashboard session", hashlib.sha256).hexdigest()
        )

    @property
    def locked(self) -> bool:
        return self._key is not None

    def allows(self, request: Request) -> bool:
        if self._key is None or self._session is None:
            return True
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer" and self.is_key(token.strip()):
            return True
        cookie = request.cookies.get(COOKIE)
        # Constant-time comparisons, so neither secret can be guessed byte by byte.
        return cookie is not None and hmac.compare_digest(cookie.encode(), self._session.encode())

    def is_key(self, candidate: str) -> bool:
        return self._key is not None and hmac.compare_digest(candidate.encode(), self._key)

    @property
    def session(self) -> str:
        if self._session is None:
            raise RuntimeError("the dashboard has no API key, hence no sessions")
        return self._session


def same_origin(request: Request) -> bool:
    """Whether a post comes from a page of this site (Origin, or Referer when it is absent).

    Host and port are compared, not the scheme: behind a proxy that ends TLS the app sees
    http while the browser says https, and a cross-site page never has our host anyway.
    """
    host = request.headers.get("host", "").lower()
    if not host:
        return False
    source = request.headers.get("origin")
    if source is None or source == "null":
        source = request.headers.get("referer")
    if not source:
        return False
    return urlsplit(source).netloc.lower() == host


async def read_form(request: Request) -> dict[str, str] | None:
    """A small url-encoded form's fields, or None when the body is not one."""
    if request.headers.get("content-type", "").split(";")[0].strip() != (
        "application/x-www-form-urlencoded"
    ):
        return None
    length = request.headers.get("content-length")
    if length is not None and (not length.isdigit() or int(length) > _MAX_FORM_BYTES):
        return None
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > _MAX_FORM_BYTES:
            return None
    try:
        text = body.decode()
    except UnicodeDecodeError:
        return None
    return dict(parse_qsl(text, keep_blank_values=True))


def safe_next(target: str | None, base: str) -> str:
    """Where to go after logging in: a page of the dashboard, never another site."""
    default = f"{base}/"
    if not target or not target.startswith(f"{base}/") or target.startswith("//"):
        return default
    if "\\" in target or urlsplit(target).netloc:
        return default
    return target
