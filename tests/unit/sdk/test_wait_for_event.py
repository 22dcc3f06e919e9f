"""`workflow_run.wait_for_event`: the checks on its arguments, before the worker sees them."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

import aiki
from aiki._core.ids import RunId


class EventRecorder:
    """The worker's side of a run, reduced to recording waits for events."""

    def __init__(self) -> None:
        self.waits: list[tuple[str, int | None]] = []

    async def call_task(self, task: Any, payload: object) -> Any:
        raise AssertionError("no task is called here")

    async def sleep(self, name: str, duration_ms: int) -> None:
        raise AssertionError("no sleep here")

    async def wait_for_event(self, name: str, timeout_ms: int | None) -> Any:
        self.waits.append((name, timeout_ms))
        return {"name": name}

    def now(self) -> datetime:
        return datetime(2026, 1, 1, tzinfo=UTC)


def make_run(execution: EventRecorder) -> aiki.WorkflowRun[Any]:
    return aiki.WorkflowRun(
        id=RunId("run-1"),
        name="approval",
        version="1.0.0",
        payload=None,
        attempt=1,
        execution=execution,
    )


@pytest.mark.parametrize(
    ("timeout", "ms"),
    [(None, None), (0, 0), (1.5, 1_500), (timedelta(minutes=2), 120_000), (0.0001, 1)],
)
async def test_timeouts_become_milliseconds(timeout: Any, ms: int | None) -> None:
    recorder = EventRecorder()
    assert await make_run(recorder).wait_for_event("approved", timeout) == {"name": "approved"}
    assert recorder.waits == [("approved", ms)]


@pytest.mark.parametrize(
    ("name", "timeout", "error", "match"),
    [
        ("", None, ValueError, "empty"),
        ("  ", None, ValueError, "empty"),
        ("x" * 201, None, ValueError, "at most 200"),
        (7, None, TypeError, "str"),
        ("approved", -1, ValueError, "negative"),
        ("approved", float("inf"), ValueError, "finite"),
        ("approved", "soon", TypeError, "timedelta"),
    ],
)
async def test_bad_arguments_are_refused(
    name: Any, timeout: Any, error: type[Exception], match: str
) -> None:
    recorder = EventRecorder()
    with pytest.raises(error, match=match):
        await make_run(recorder).wait_for_event(name, timeout)
    assert recorder.waits == []
