"""The workflow of `bench/service.py`: two no-op async tasks, one after the other.

The bench's `aiki worker` processes load it as `_two_tasks:two_tasks` (with this folder on
PYTHONPATH); the bench process imports it to enqueue runs.
"""

from __future__ import annotations

from typing import Any

import aiki

TASKS_PER_RUN = 2


@aiki.task(name="service-step-a")
async def step_a(ctx: aiki.TaskContext[dict[str, Any]]) -> dict[str, Any]:
    return {}


@aiki.task(name="service-step-b")
async def step_b(ctx: aiki.TaskContext[dict[str, Any]]) -> dict[str, Any]:
    return {}


@aiki.workflow(name="service-two-tasks", version="1")
async def two_tasks(workflow_run: aiki.WorkflowRun[dict[str, Any]]) -> dict[str, Any]:
    i = workflow_run.payload["i"]
    await step_a.run(workflow_run, payload={"i": i})
    await step_b.run(workflow_run, payload={"i": i})
    return {"i": i}
