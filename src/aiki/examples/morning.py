"""The morning routine: two tasks, one after the other.

Version 2.0.0 takes a coffee break between them: a durable sleep, recorded so that a crash or
restart mid-coffee does not start it over.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from aiki._core.retry import Retry
from aiki.sdk import Task, TaskContext, WorkflowRun, task, workflow

ring_alarm: Task[dict[str, Any], str] = task(
    name="ring-alarm",
    run=lambda ctx: ctx.payload["song"],
    retry=Retry.fixed(max_attempts=3, delay_ms=1000),
)


@task(name="stretch", retry=Retry.exponential(max_attempts=5, base_delay_ms=200))
async def stretch(ctx: TaskContext[dict[str, Any]]) -> int:
    duration: int = ctx.payload["duration"]
    return duration


@workflow(name="morning-routine", version="1.0.0")
async def morning_routine(workflow_run: WorkflowRun[dict[str, Any]]) -> dict[str, Any]:
    alarm_result = await ring_alarm.run(workflow_run, payload={"song": "Wake up!"})
    stretch_result = await stretch.run(workflow_run, payload={"duration": 300})
    return {"alarm_result": alarm_result, "stretch_result": stretch_result}


# Long enough to take the run off the worker (sleeps over a second do), short enough to watch.
COFFEE_BREAK = timedelta(seconds=2)


@workflow(name="morning-routine", version="2.0.0")
async def morning_routine_v2(workflow_run: WorkflowRun[dict[str, Any]]) -> dict[str, Any]:
    alarm_result = await ring_alarm.run(workflow_run, payload={"song": "Wake up!"})
    await workflow_run.sleep("coffee", COFFEE_BREAK)  # durable: the worker is free meanwhile
    stretch_result = await stretch.run(workflow_run, payload={"duration": 300})
    return {"alarm_result": alarm_result, "stretch_result": stretch_result}
