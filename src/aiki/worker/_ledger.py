"""The replay ledger of one run: the results its history recorded, and which replay has consumed.

Replay is content-addressed: a task call's address is (task name, SHA-256 of its payload's
canonical JSON, occurrence). A call whose address holds a final result gets it back without
running; a new call runs the task. A new call made while recorded results are still
unconsumed means the code no longer matches what was recorded, and the run fails with
`NondeterminismError` before the new task has any side effect.
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiki._core.ids import RunId
from aiki._core.models import TaskAddress, TaskOutcome, TaskRecord, event_name, sleep_name
from aiki._core.serde import loads
from aiki.errors import NondeterminismError
from aiki.sdk import Workflow

# How many loop turns without replay progress before a new call may judge that recorded
# results are truly left over (see `Ledger._settle`).
SETTLE_TURNS = 3

# Occurrences of `wait_for_event(name)` are counted under this digest; the n-th wait's
# records sit at index n under the digests of `aiki._core.models` (received, timeout, deadline).
EVENT_WAIT_KEY = "wait"


class Ledger:
    """What one run's history recorded, by address, and how far replay has consumed it."""

    def __init__(
        self, records: tuple[TaskRecord, ...], *, workflow: Workflow[Any, Any], run_id: RunId
    ) -> None:
        self._recorded: dict[TaskAddress, TaskRecord] = {t.address: t for t in records}
        self._unconsumed = sum(1 for t in records if t.outcome is not TaskOutcome.RETRYING)
        self._occurrences: dict[tuple[str, str], int] = {}
        self._workflow = workflow
        self._run_id = run_id
        self.consumed = 0  # replay progress, as the suspension scheduler counts it
        self.fatal: NondeterminismError | None = None  # replay diverged: the run fails

    def next_address(self, task: str, payload_digest: str) -> TaskAddress:
        """The address of this call: the next occurrence of (`task`, `payload_digest`)."""
        key = (task, payload_digest)
        index = self._occurrences.get(key, 0)
        self._occurrences[key] = index + 1
        return TaskAddress(task=task, digest=payload_digest, index=index)

    def recorded(self, address: TaskAddress) -> TaskRecord | None:
        return self._recorded.get(address)

    def consume(self) -> None:
        """A recorded result was replayed."""
        self._unconsumed -= 1
        self.consumed += 1

    async def check_new_call(self, address: TaskAddress) -> None:
        """A call with nothing recorded at its address may start only once replay is done."""
        if self._unconsumed > 0:
            await self._settle()
            if self._unconsumed > 0:
                raise self._diverged(address)

    async def _settle(self) -> None:
        """Give concurrent branches of the workflow (asyncio.gather) the chance to replay.

        A branch that reaches a new call may do so before a sibling has consumed its recorded
        result; replayed calls finish without I/O, so a few loop turns without progress mean
        every branch that can replay has.
        """
        quiet = 0
        seen = self._unconsumed
        while self._unconsumed > 0 and quiet < SETTLE_TURNS:
            await asyncio.sleep(0)
            quiet = quiet + 1 if self._unconsumed == seen else 0
            seen = self._unconsumed

    def _diverged(self, address: TaskAddress) -> NondeterminismError:
        left = sorted(
            _describe(a, call=True)
            for a, r in self._recorded.items()
            if r.outcome is not TaskOutcome.RETRYING and not self._was_consumed(a)
        )
        self.fatal = NondeterminismError(
            f"workflow {self._workflow.name!r} version {self._workflow.version!r}, run "
            f"{self._run_id}: new call to {_describe(address)} "
            f"while recorded results remain unconsumed: {', '.join(left)}. The workflow code "
            "changed in a way its recorded history cannot replay; deploy it as a new version."
        )
        return self.fatal

    def _was_consumed(self, address: TaskAddress) -> bool:
        digest_key = EVENT_WAIT_KEY if event_name(address.task) is not None else address.digest
        return self._occurrences.get((address.task, digest_key), 0) > address.index

    def recorded_value(self, what: str, record: TaskRecord) -> dict[str, Any]:
        """The JSON object an engine record holds (a sleep's wake-up, an event received...)."""
        value = loads(record.result_json or "null")
        if not isinstance(value, dict):
            raise self.bad_record(what, record)
        return value

    def bad_record(self, what: str, record: TaskRecord) -> NondeterminismError:
        """The run fails: the history holds a record of `what` that Aiki did not write."""
        self.fatal = NondeterminismError(
            f"workflow {self._workflow.name!r} version {self._workflow.version!r}, run "
            f"{self._run_id}: the record of {what} is not one Aiki wrote: {record.result_json}"
        )
        return self.fatal


def _describe(address: TaskAddress, *, call: bool = False) -> str:
    """A recorded call for a person: `task 'x' (payload 1a2b..., call 2)`, `sleep 'y'`."""
    sleep = sleep_name(address.task)
    event = event_name(address.task)
    details = [f"payload {address.digest[:12]}"] if sleep is None and event is None else []
    if call:
        details.append(f"call {address.index + 1}")
    if sleep is not None:
        what = f"sleep {sleep!r}"
    elif event is not None:
        what = f"wait for event {event!r}"
    else:
        what = f"task {address.task!r}"
    return what + (f" ({', '.join(details)})" if details else "")
