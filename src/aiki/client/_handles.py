"""`RunHandle`: what an application holds on to for one run."""

from __future__ import annotations

from typing import Any, Generic, TypeVar

from aiki._core.api import EngineApi
from aiki._core.ids import RunId
from aiki._core.models import EventSent, HistoryEvent, NewEvent, RunStatus, check_event_name
from aiki._core.serde import Decoder, encode
from aiki._core.states import RunState
from aiki.errors import WorkflowRunCancelledError, WorkflowRunFailedError

R = TypeVar("R", covariant=True)  # a handle only hands results out

_RAW = Decoder(Any)


class RunHandle(Generic[R]):
    """A reference to one workflow run: its status, history, result, events and cancellation."""

    __slots__ = ("_api", "_final", "_result", "id")

    def __init__(self, api: EngineApi, run_id: RunId, *, result: Decoder | None = None) -> None:
        self.id = run_id
        self._api = api
        self._result = result or _RAW
        self._final: RunStatus | None = None  # once the run has ended, its end is kept

    async def get_status(self) -> RunStatus:
        """The run's current status.

        Raises:
            RunNotFoundError: no run has this id.
        """
        return await self._api.get_status(self.id)

    async def get_history(self) -> list[HistoryEvent]:
        """Every transition and task attempt of the run, oldest first."""
        return await self._api.get_history(self.id)

    async def wait_for_completion(self, timeout: float | None = None) -> R:
        """Wait until the run ends and return its result.

        The wait is pushed by the server when the run ends; nothing polls in a loop.

        Args:
            timeout: Seconds to wait at most; None waits for as long as it takes.

        Raises:
            WorkflowRunFailedError: the run failed (`.error` says why).
            WorkflowRunCancelledError: the run was cancelled.
            TimeoutError: the run had not ended after `timeout` seconds.
        """
        if timeout is not None and timeout < 0:
            raise ValueError(f"timeout must be >= 0, got {timeout}")
        status = self._final or await self._api.wait(self.id, timeout)
        if status.state.is_final:
            self._final = status
        if status.state is RunState.COMPLETED:
            result: R = self._result.decode_json(status.result_json)
            return result
        if status.state is RunState.FAILED:
            assert status.error is not None  # a failed run always stores its error
            raise WorkflowRunFailedError(run_id=self.id, error=status.error)
        if status.state is RunState.CANCELLED:
            raise WorkflowRunCancelledError(run_id=self.id, reason=status.cancel_reason)
        raise TimeoutError(
            f"workflow run {self.id} is still {status.state} after {timeout} seconds"
        )

    async def send_event(
        self, name: str, data: object = None, idempotency_key: str | None = None
    ) -> EventSent:
        """Send the run an event: the data its `workflow_run.wait_for_event(name)` returns.

        Events of one name are received in the order they were sent; one sent before the
        run waits for it is kept until it does.

        Args:
            name: The event's name, as the workflow waits for it.
            data: A JSON value or a pydantic model.
            idempotency_key: Sending again with the same key (and name) stores nothing new
                and returns the event sent first.

        Returns:
            The event's `seq` and whether this call stored it (`created`).

        Raises:
            RunNotFoundError: no run has this id.
            EventRejectedError: the run has ended, or the key was sent with other data.
            PayloadError: `data` is not JSON (PayloadTooLargeError: over the server's limit).
            TypeError, ValueError: `name` or `idempotency_key` is not a non-empty str.
        """
        check_event_name(name)
        if idempotency_key is not None and (
            not isinstance(idempotency_key, str) or not idempotency_key
        ):
            raise ValueError(f"idempotency_key must be a non-empty str, got {idempotency_key!r}")
        data_json = encode(data, what=f"data of event {name!r}", limit=None)
        new = NewEvent(
            run_id=self.id, name=name, data_json=data_json, idempotency_key=idempotency_key
        )
        return await self._api.send_event(new)

    async def cancel(self, reason: str | None = None) -> RunStatus:
        """Cancel the run: at once if it is not running, else at its worker's next chance.

        Cancelling a run that has already ended changes nothing.
        """
        return await self._api.cancel(self.id, reason)

    def __repr__(self) -> str:
        return f"RunHandle(id={self.id!r})"
