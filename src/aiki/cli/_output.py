"""Tables for people, JSON for programs."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, is_dataclass
from datetime import datetime
from enum import Enum
from typing import Any

import click

from aiki._core.clock import to_datetime
from aiki._core.models import EventKind, HistoryEvent, RunStatus, event_name, sleep_name


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    """Print rows under headers, each column as wide as its widest cell."""
    cells = [[str(h) for h in headers], *[["" if c is None else str(c) for c in r] for r in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    for n, row in enumerate(cells):
        click.echo("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)))
        if n == 0:
            click.echo("  ".join("-" * width for width in widths))


def to_json(value: object) -> str:
    """JSON of dataclasses, enums and datetimes, for --json."""
    return json.dumps(plain(value), indent=2, sort_keys=True)


def plain(value: object) -> Any:
    """`value` as JSON values: one shape per record, whichever command prints it.

    A record's JSON text fields (`payload_json`, `result_json`...) are shown as the values
    they hold, under the name without `_json`: people and `jq` read values, not strings.
    """
    if is_dataclass(value) and not isinstance(value, type):
        fields: dict[str, Any] = {}
        for k, v in asdict(value).items():
            if k.endswith("_json") and (v is None or isinstance(v, str)):
                fields[k.removesuffix("_json")] = None if v is None else json.loads(v)
            else:
                fields[k] = plain(v)
        return fields
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, datetime):
        return value.isoformat()
    return value


def when(ms: int | None) -> str:
    """A storage timestamp for a table cell."""
    return "" if ms is None else f"{to_datetime(ms):%Y-%m-%d %H:%M:%S}"


def describe_run(status: RunStatus, history: list[HistoryEvent]) -> None:
    """`aiki runs show`: the status, then the history as a timeline."""
    click.echo(f"run       {status.id}")
    click.echo(f"workflow  {status.workflow}@{status.version}")
    click.echo(f"state     {status.state}")
    if status.note:
        click.echo(f"note      {status.note}")
    if status.wait is not None:
        until = "" if status.wait.until_ms is None else f" until {when(status.wait.until_ms)}"
        click.echo(f"waiting   {status.wait.kind} {status.wait.detail}{until}")
    click.echo(f"created   {when(status.created_at_ms)}   attempt {status.attempt}")
    click.echo(f"payload   {json.dumps(status.payload)}")
    if status.result is not None:
        click.echo(f"result    {json.dumps(status.result)}")
    if status.error is not None:
        click.echo(f"error     {status.error.type}: {status.error.message}")
    if status.cancel_reason:
        click.echo(f"cancel    {status.cancel_reason}")
    click.echo("\ntimeline")
    start = history[0].at_ms if history else 0
    for event, label in timeline(history):
        click.echo(f"  +{event.at_ms - start:>7} ms  {label:<17} {_event_detail(event)}")


def timeline(history: list[HistoryEvent]) -> list[tuple[HistoryEvent, str]]:
    """The events worth a line each, with their labels: a sleep is one "sleep" line.

    A durable sleep is recorded as a task's start and end (`aiki.sleep/<name>`); shown as
    such it would read like a task nobody wrote.
    """
    lines: list[tuple[HistoryEvent, str]] = []
    for event in history:
        task = str(event.data.get("task", ""))
        if sleep_name(task) is None and event_name(task) is None:
            lines.append((event, event.kind.value))
        elif event.kind is EventKind.TASK_COMPLETED:
            lines.append((event, "sleep" if sleep_name(task) is not None else "wait for event"))
    return lines


def _event_detail(event: HistoryEvent) -> str:
    data = event.data
    parts: list[str] = []
    sleep = sleep_name(str(data.get("task", "")))
    if sleep is not None:
        return f"{sleep!r} for {data.get('duration_ms')} ms"
    waited = event_name(str(data.get("task", "")))
    if waited is not None:  # a wait's record: its digest says which
        return f"{waited!r} {data.get('digest')}"
    if event.kind is EventKind.EVENT_SENT:
        return f"{data.get('name')!r} seq {data.get('seq')}"
    if "task" in data:
        parts.append(f"{data['task']}#{data.get('index', 0) + 1} attempt {data.get('attempt')}")
    if data.get("duration_ms") is not None:
        parts.append(f"{data['duration_ms']} ms")
    if data.get("error"):
        parts.append(f"{data['error'].get('type')}: {data['error'].get('message')}")
    if data.get("worker_id"):
        parts.append(f"on {data['worker_id']}")
    if data.get("reason"):
        parts.append(f"reason: {data['reason']}")
    if data.get("kind"):
        parts.append(str(data["kind"]))
    if data.get("until_ms"):
        parts.append(f"until {when(data['until_ms'])}")
    return "  ".join(parts)
