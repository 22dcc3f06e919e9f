"""`workflow_run.sleep` arguments, and the `aiki.` task names it reserves.

Bad arguments are refused where the workflow calls `sleep`, before the worker records anything.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

import aiki
from aiki._core.ids import RunId


class SleepRecorder:
    """The worker's side of a run, reduced to recording sleeps."""

    def __init__(self) -> None:
        self.sleeps: list[tuple[str, int]] = []

    async def call_task(self, task: Any, payload: object) -> Any:
        raise AssertionError("no task is called here")

    async def sleep(self, name: str, duration_ms: int) -> None:
        self.sleeps.append((name, duration_ms))

    async def wait_for_event(self, name: str, timeout_ms: int | None) -> Any:
        raise AssertionError("no event is waited for here")

    def now(self) -> datetime:
        return datetime(2026, 1, 1, tzinfo=UTC)


def make_run(execution: SleepRecorder) -> aiki.WorkflowRun[Any]:
    return aiki.WorkflowRun(
        id=RunId("run-1"),
        name="morning-routine",
        version="1.0.0",
        payload=None,
        attempt=1,
        execution=execution,
    )


@pytest.mark.parametrize(
    ("duration", "ms"),
    [
        (timedelta(minutes=5), 300_000),
        (timedelta(0), 0),
        (timedelta(microseconds=1), 1),  # rounded up: a sleep never ends early
        (timedelta(milliseconds=1, microseconds=500), 2),
        (0, 0),
        (2, 2_000),
        (1.1, 1_100),  # not 1101, whatever 1.1 * 1000 is in binary
        (0.0001, 1),
        (timedelta.max, 86_400_000_000_000_000),  # the longest there is, rounded up
    ],
)
async def test_duration_is_whole_milliseconds_rounded_up(duration: Any, ms: int) -> None:
    execution = SleepRecorder()
    await make_run(execution).sleep("coffee", duration)
    assert execution.sleeps == [("coffee", ms)]


@pytest.mark.parametrize(
    ("name", "duration", "error", "message"),
    [
        ("", 1, ValueError, "workflow 'morning-routine': sleep name must not be empty"),
        ("  ", 1, ValueError, "sleep name must not be empty"),
        (None, 1, TypeError, "workflow 'morning-routine': sleep name must be a str, got NoneType"),
        ("coffee", -0.5, ValueError, "sleep 'coffee': duration must not be negative"),
        ("coffee", timedelta(microseconds=-1), ValueError, "duration must not be negative"),
        ("coffee", float("nan"), ValueError, "sleep 'coffee': duration must be finite"),
        ("coffee", float("inf"), ValueError, "duration must be finite"),
        ("coffee", 1e300, ValueError, "duration of 1e+300 s is too long"),
        ("coffee", False, TypeError, "timedelta or a number of seconds, got bool"),
        ("coffee", "5", TypeError, "got str"),
        ("coffee", None, TypeError, "got NoneType"),
        ("coffee", datetime(2026, 1, 1), TypeError, "got datetime"),
    ],
)
async def test_bad_arguments_are_refused_before_the_worker_sees_them(
    name: Any, duration: Any, error: type[Exception], message: str
) -> None:
    execution = SleepRecorder()
    with pytest.raises(error) as refused:
        await make_run(execution).sleep(name, duration)
    assert message in str(refused.value)
    assert execution.sleeps == []


async def noop(ctx: aiki.TaskContext[Any]) -> None:
    return None


@pytest.mark.parametrize("name", ["aiki.sleep/coffee", "aiki.anything", "aiki."])
def test_task_names_under_aiki_are_reserved(name: str) -> None:
    with pytest.raises(ValueError, match=r"names starting with 'aiki\.' are reserved"):
        aiki.task(name=name, run=noop)
    with pytest.raises(ValueError, match="reserved"):
        aiki.task(name=name)(noop)
    with pytest.raises(ValueError, match="reserved"):
        aiki.Task[Any, None](name=name, run=noop)


@pytest.mark.parametrize("name", ["aiki", "aikido", "my.aiki.task", "Aiki.sleep"])
def test_names_merely_like_the_prefix_are_allowed(name: str) -> None:
    assert aiki.task(name=name, run=noop).name == name
