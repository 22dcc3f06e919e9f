"""How many times one workflow's payload and results are parsed or serialised on the HTTP path.

One server (uvicorn on 127.0.0.1, SQLite in a temporary directory), one worker and one client,
all talking HTTP. The workflow takes a payload, calls one task and returns a result; each of
the three values carries a marker key, and every JSON parse or serialise in the process
(`json`, pydantic) is watched: a call counts when the value it reads or writes holds the marker
as a JSON object, that is when the payload itself is materialised or written, not when text
holding it is merely moved inside a string. pydantic validations of a value already parsed
count as "validate". msgspec only moves the values as strings here, so it is not watched.

Runs on any commit of Aiki since the HTTP API existed (it needs only the public API):

    uv run python bench/payload_passes.py
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import os
import tempfile
import traceback
from collections.abc import AsyncIterator, Callable
from typing import Any

import pydantic
import uvicorn

import aiki

_MARKS = {
    "payload": "aiki-mark-payload",
    "task result": "aiki-mark-task",
    "result": "aiki-mark-result",
}
_TRACE = bool(os.environ.get("AIKI_PASSES_TRACE"))  # print where each pass happens
_stack = traceback.extract_stack
counts: collections.Counter[tuple[str, str]] = collections.Counter()


def _holds(value: Any, mark: str, depth: int = 0) -> bool:
    """Whether `value` holds `{mark: ...}` as a structure (not as text inside a string)."""
    if depth > 50:
        return False
    if isinstance(value, dict):
        return mark in value or any(_holds(v, mark, depth + 1) for v in value.values())
    if isinstance(value, list | tuple):
        return any(_holds(v, mark, depth + 1) for v in value)
    if isinstance(value, pydantic.BaseModel):
        return _holds(value.__dict__, mark, depth + 1)
    return False


def _note(kind: str, value: Any) -> None:
    for what, mark in _MARKS.items():
        if _holds(value, mark):
            counts[(what, kind)] += 1
            if _TRACE:
                caller = [f"{f.filename.split('/src/')[-1]}:{f.lineno}" for f in _stack()[-7:-3]]
                print(f"{what} {kind}: {' <- '.join(reversed(caller))}")


def _watch(owner: Any, name: str, kind: str, *, look_at: str) -> None:
    original: Callable[..., Any] = getattr(owner, name)

    def watched(*args: Any, **kwargs: Any) -> Any:
        result = original(*args, **kwargs)
        if look_at == "result":
            _note(kind, result)
        else:  # the value given: the first argument after self, for methods
            given = [a for a in args if not isinstance(a, json.JSONEncoder | pydantic.TypeAdapter)]
            _note(kind, given[0] if given else None)
        return result

    setattr(owner, name, watched)


def watch_everything() -> None:
    _watch(json.JSONDecoder, "decode", "parse", look_at="result")  # json.loads calls it
    _watch(json.JSONEncoder, "encode", "serialise", look_at="args")
    _watch(pydantic.TypeAdapter, "validate_json", "parse", look_at="result")
    _watch(pydantic.TypeAdapter, "validate_strings", "parse", look_at="result")
    _watch(pydantic.TypeAdapter, "validate_python", "validate", look_at="args")
    _watch(pydantic.TypeAdapter, "dump_json", "serialise", look_at="args")
    _watch(pydantic.TypeAdapter, "dump_python", "validate", look_at="args")


@aiki.task(name="mark-task")
async def mark_task(ctx: aiki.TaskContext[dict[str, Any]]) -> dict[str, Any]:
    return {_MARKS["task result"]: True, "n": ctx.payload["n"]}


@aiki.workflow(name="mark-workflow", version="1")
async def mark_workflow(workflow_run: aiki.WorkflowRun[dict[str, Any]]) -> dict[str, Any]:
    # The task gets a payload of its own and the result does not nest the task's: each
    # value is counted on its own.
    done = await mark_task.run(workflow_run, payload={"n": len(workflow_run.params.payload)})
    return {_MARKS["result"]: done["n"]}


@contextlib.asynccontextmanager
async def serving(app: Any) -> AsyncIterator[str]:
    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning")
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.01)
    try:
        yield f"127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}"
    finally:
        server.should_exit = True
        await task


async def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        async with aiki.server(f"sqlite:///{tmp}/aiki.db") as srv, serving(srv.app) as address:
            worker_client = await aiki.create_client(url=address)
            client = await aiki.create_client(url=address)
            worker = await aiki.worker(worker_client)
            worker.registry.add(mark_workflow)
            await worker.start()
            try:
                # One warm-up run first, so that lazily built adapters do not count.
                warm = await mark_workflow.enqueue(client, payload={"warm": 1})
                await warm.wait_for_completion(timeout=30)
                watch_everything()
                handle = await mark_workflow.enqueue(client, payload={_MARKS["payload"]: 1})
                result = await handle.wait_for_completion(timeout=30)
                assert _MARKS["result"] in result
            finally:
                await worker.stop()
                await client.aclose()
                await worker_client.aclose()
    total = 0
    print(f"{'value':12} {'parse':>6} {'serialise':>10} {'validate':>9}")
    for what in _MARKS:
        row = [counts[(what, kind)] for kind in ("parse", "serialise", "validate")]
        total += row[0] + row[1]
        print(f"{what:12} {row[0]:6} {row[1]:10} {row[2]:9}")
    print(f"parse + serialise per workflow: {total}")


if __name__ == "__main__":
    asyncio.run(main())
