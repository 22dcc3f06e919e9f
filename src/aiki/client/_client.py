"""`Client` and `create_client()`: how applications and workers reach the server."""

from __future__ import annotations

from types import TracebackType
from typing import Any, Protocol

from aiki._core.api import EngineApi
from aiki._core.ids import RunId
from aiki._core.models import NewRun, RunStatus
from aiki._core.serde import Decoder
from aiki._core.states import RunState
from aiki.client._handles import RunHandle
from aiki.errors import ConfigError


class ServesApi(Protocol):
    """Anything with a service layer a client can call in-process, such as `aiki.server()`."""

    @property
    def service(self) -> EngineApi: ...


class Client:
    """A connection to an Aiki server. Build one with `aiki.create_client(...)`."""

    def __init__(self, api: EngineApi) -> None:
        self.api = api

    async def enqueue(self, new: NewRun, *, result: Decoder | None = None) -> RunHandle[Any]:
        """Enqueue a run from an already-encoded request (workflows call this for you)."""
        enqueued = await self.api.enqueue(new)
        return RunHandle(self.api, enqueued.run.id, result=result)

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

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()


async def create_client(*, url: str | None = None, server: ServesApi | None = None) -> Client:
    """Connect to an Aiki server.

    Args:
        url: Address of a server over HTTP, e.g. "localhost:9090".
        server: An `aiki.server(...)` in this process, called directly with no network hop.

    Raises:
        ConfigError: neither or both of `url` and `server` given.
    """
    if (url is None) == (server is None):
        raise ConfigError("create_client() needs exactly one of url= or server=")
    if server is not None:
        return Client(server.service)
    raise ConfigError(
        f"create_client(url={url!r}): the HTTP client is not available in this version; "
        "pass server= to use an embedded server"
    )
