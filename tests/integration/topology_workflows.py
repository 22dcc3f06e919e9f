"""Workflows served by the `aiki worker` processes of the topology tests (many servers).

`pipeline` computes `f"{n}:{n * n + 1}"` from the payload's `n` in three tasks. Every task
call appends one line, `<key> <task> <pid> <run attempt>`, to the file the payload's `log`
names (the format `processes.SideEffects` reads), before the task goes on. The last field is
the run's attempt, how many times a worker has taken the run: the test compares it with the
claims in the run's history to tell which claim each execution belonged to.

The line goes out in one `write()` to a file opened for appending: lines from several
processes never interleave, and a SIGKILL right after the call cannot lose it (the kernel
has it). Unlike `crash_workflows`, no fsync: these tests kill processes, not the machine,
and hundreds of runs would spend their time in fsync. The payload's `sleep_ms` keeps each
task busy that long, so that a kill finds tasks mid-flight.

The worker runs these with `PYTHONPATH` set to this folder: `aiki worker
topology_workflows:registry`.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

import aiki


def record(ctx: aiki.TaskContext[dict[str, Any]], task: str) -> None:
    """Append this call's line to the log file, in one write."""
    payload = ctx.payload
    line = f"{payload['key']} {task} {os.getpid()} {ctx.workflow_run.attempt}\n"
    fd = os.open(payload["log"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


async def _busy(ctx: aiki.TaskContext[dict[str, Any]]) -> None:
    sleep_ms = ctx.payload.get("sleep_ms", 0)
    if sleep_ms:
        await asyncio.sleep(sleep_ms / 1000)


@aiki.task(name="square")
async def square(ctx: aiki.TaskContext[dict[str, Any]]) -> int:
    record(ctx, "square")
    await _busy(ctx)
    n: int = ctx.payload["n"]
    return n * n


@aiki.task(name="increment")
async def increment(ctx: aiki.TaskContext[dict[str, Any]]) -> int:
    record(ctx, "increment")
    await _busy(ctx)
    value: int = ctx.payload["value"]
    return value + 1


@aiki.task(name="label")
async def label(ctx: aiki.TaskContext[dict[str, Any]]) -> str:
    record(ctx, "label")
    await _busy(ctx)
    return f"{ctx.payload['n']}:{ctx.payload['value']}"


@aiki.workflow(name="pipeline", version="1")
async def pipeline(workflow_run: aiki.WorkflowRun[dict[str, Any]]) -> str:
    """square, increment, label: `f"{n}:{n * n + 1}"`."""
    payload = workflow_run.payload
    squared = await square.run(workflow_run, payload=payload)
    value = await increment.run(workflow_run, payload={**payload, "value": squared})
    labelled: str = await label.run(workflow_run, payload={**payload, "value": value})
    return labelled


registry = aiki.Registry().add(pipeline)
