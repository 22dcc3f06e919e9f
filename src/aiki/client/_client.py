"""`Client` and `create_client()`: how applications and workers reach the server."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Any, Protocol

from aiki._core.api import EngineApi
from aiki._core.ids import RunId
from aiki._core.models import NewRun, RunStatus
from aiki._core.serde import Decoder
from aiki._core.states import RunState
from aiki.client._handles import RunHandle
from aiki.client._http import DEFAULT_RETRY_TIMEOUT_S, HttpApi
from aiki.client._transport import HttpTransport
from aiki.errors import ConfigError


class ServesApi(Protocol):
    """Anything with a service layer a client can call in-process, such as `aiki.server()`."""

    @property
    def service(self) -> EngineApi: ...


class Client:
    """A connection to an Aiki server. Build one with `aiki.create_client(...)`."""

    def __init__(
        self, api: EngineApi, *, aclose: Callable[[], Awaitable[None]] | None = None
    ) -> None:
        self.api = api
        self._aclose = aclose

    async def enqueue(self, new: NewRun, *, result: Decoder | None = None) -> RunHandle[Any]:
        """Enqueue a run from an already-encoded request (workflows call this for you)."""
        enqueued = await self.api.enqueue(new)
        return RunHandle(self.api, enqueued.id, result=result)

    def get_handle(self, run_id: str) -> RunHandle[Any]:
        """A handle on an existing run; its result comes back as plain JSON."""
        if not isinstance(run_id, str) or not run_id:
            raise ValueError(f"run_id must be a non-empty str, got {run_id!r}")
        return RunHandle(self.api, RunId(run_id))

    async def list_runs(
        self,
        *,
        workflow: str | None = None,
        state: RunState | str | None = None,
        after: str | None = None,
        limit: int = 100,
    ) -> list[RunStatus]:
        """Runs, newest first; pass the last id of one page as `after` to get the next."""
        return await self.api.list_runs(
            workflow=workflow,
            state=None if state is None else RunState(state),
            after=None if after is None else RunId(after),
            limit=limit,
        )

    async def aclose(self) -> None:
        """Release the client's connections (an in-process client holds none)."""
        if self._aclose is not None:
            await self._aclose()

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()


async def create_client(
    *,
    url: str | None = None,
    server: ServesApi | None = None,
    api_key: str | None = None,
    retry_timeout: float = DEFAULT_RETRY_TIMEOUT_S,
    _transport: HttpTransport | None = None,
) -> Client:
    """Connect to an Aiki server.

    Args:
        url: Address of a server over HTTP, e.g. "localhost:9090" (no scheme means http://).
        server: An `aiki.server(...)` in this process, called directly with no network hop.
        api_key: The server's API key, sent as a bearer token (HTTP only).
        retry_timeout: Seconds to keep retrying while the server cannot be reached, before
            `ServerUnavailableError` (HTTP only).
        _transport: A transport to use instead of the network (tests).

    Raises:
        ConfigError: neither or both of `url` and `server` given, a URL that is not http(s),
            or HTTP options given with `server`.
    """
    if (url is None) == (server is None):
        raise ConfigError("create_client() needs exactly one of url= or server=")
    if server is not None:
        if api_key is not None:
            raise ConfigError("api_key= is for clients of a server URL, not of server=")
        return Client(server.service)
    assert url is not None
    api = HttpApi(url, api_key=api_key, retry_timeout=retry_timeout, transport=_transport)
    return Client(api, aclose=api.aclose)
