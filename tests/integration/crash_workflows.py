"""Workflows served by the `aiki worker` processes of the process tests.

Every task call appends one line, `<key> <task> <pid> <attempt>`, to the file the payload's
`log` names, flushed and fsync'd before the task goes on: the test counts side effects from
that file, and a SIGKILL right after the line cannot lose it. `blocking-step` then waits
until the file the payload's `gate` names exists, so a test holds a task mid-flight for as
long as it needs (and, in a worker started with CRASH_WORKFLOWS_STALL_S, first freezes the
whole worker for that many seconds). The worker runs these with `PYTHONPATH` set to this folder:
`aiki worker crash_workflows:registry`.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

import aiki

# How often a blocked task looks for its gate file.
_GATE_POLL_S = 0.01
# Seconds `blocking-step` blocks its worker's event loop right after logging its call.
STALL_ENV = "CRASH_WORKFLOWS_STALL_S"


def record(payload: dict[str, Any], task: str, attempt: int) -> None:
    """Append this call's line to the log file; durable before it returns."""
    line = f"{payload['key']} {task} {os.getpid()} {attempt}\n"
    with open(payload["log"], "a", encoding="utf-8") as log:
        log.write(line)
        log.flush()
        os.fsync(log.fileno())


@aiki.task(name="step-one")
async def step_one(ctx: aiki.TaskContext[dict[str, Any]]) -> str:
    record(ctx.payload, "step-one", ctx.attempt)
    return "one"


@aiki.task(name="blocking-step")
async def blocking_step(ctx: aiki.TaskContext[dict[str, Any]]) -> str:
    record(ctx.payload, "blocking-step", ctx.attempt)
    stall_s = float(os.environ.get(STALL_ENV, "0"))
    if stall_s:
        # On purpose, the whole worker freezes (as in a long GC pause or a stopped VM): nothing
        # it has scheduled runs until this returns, and the test has time to SIGSTOP it.
        time.sleep(stall_s)
    while not os.path.exists(ctx.payload["gate"]):
        await asyncio.sleep(_GATE_POLL_S)
    return "unblocked"


@aiki.task(name="final-step")
async def final_step(ctx: aiki.TaskContext[dict[str, Any]]) -> str:
    record(ctx.payload, "final-step", ctx.attempt)
    return "final"


@aiki.task(name="flaky-step", retry=aiki.Retry.fixed(max_attempts=2, delay_ms=3_000))
async def flaky_step(ctx: aiki.TaskContext[dict[str, Any]]) -> str:
    record(ctx.payload, "flaky-step", ctx.attempt)
    if ctx.attempt == 1:
        raise RuntimeError("first attempt fails; the next is due in 3 s")
    return "flaky"


@aiki.workflow(name="blocking", version="1")
async def blocking(workflow_run: aiki.WorkflowRun[dict[str, Any]]) -> list[str]:
    """step-one, then blocking-step (until the gate file exists), then final-step."""
    payload = workflow_run.payload
    return [
        await step_one.run(workflow_run, payload=payload),
        await blocking_step.run(workflow_run, payload=payload),
        await final_step.run(workflow_run, payload=payload),
    ]


@aiki.workflow(name="retry-later", version="1")
async def retry_later(workflow_run: aiki.WorkflowRun[dict[str, Any]]) -> list[str]:
    """flaky-step (its retry waits 3 s off the worker: the run is `waiting`), then final-step."""
    payload = workflow_run.payload
    return [
        await flaky_step.run(workflow_run, payload=payload),
        await final_step.run(workflow_run, payload=payload),
    ]


registry = aiki.Registry().add(blocking).add(retry_later)
