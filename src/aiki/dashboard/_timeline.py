"""A run's history turned into what the run page shows: the timeline, tasks and sleeps.

Everything here is derived from the history events alone, so the page shows exactly what the
audit trail holds. Texts are plain strings; the templates escape them.

A sleep is recorded as a completed task named `aiki.sleep/<name>` whose duration is the
sleep's: it is shown as a sleep, never as a task.

Numbers people read count from 1, as the CLI prints them: attempts are stored that way, and a
call's occurrence (`index`, stored from 0) is shown as `#index + 1`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from aiki._core.models import EventKind, HistoryEvent, WaitInfo, WaitKind, event_name, sleep_name
from aiki._core.states import RunState


@dataclass(frozen=True, slots=True, kw_only=True)
class ErrorView:
    """An error as stored in an event: type, message and maybe a traceback."""

    type: str
    message: str
    traceback: str | None = None

    @classmethod
    def from_data(cls, data: Any) -> ErrorView | None:
        if not isinstance(data, dict):
            return None
        trace = data.get("traceback")
        return cls(
            type=str(data.get("type", "")),
            message=str(data.get("message", "")),
            traceback=trace if isinstance(trace, str) and trace else None,
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class TimelineEntry:
    """One history event, described for people."""

    seq: int
    at_ms: int
    offset_ms: int  # since the run's first event
    kind: EventKind
    label: str
    state: RunState  # the run's state right after the event
    summary: str
    error: ErrorView | None = None


@dataclass(slots=True, kw_only=True)
class AttemptView:
    """One try of one task call. Built up while the history is read, then only displayed."""

    attempt: int
    worker_id: str | None = None
    started_ms: int | None = None
    ended_ms: int | None = None
    duration_ms: int | None = None
    # completed | retrying (failed, another try follows) | failed (for good) |
    # interrupted (its worker was lost) | running | cancelled (with its run) |
    # unfinished (the run ended otherwise before the attempt reported)
    outcome: str = "running"
    error: ErrorView | None = None
    retry_delay_ms: int | None = None

    @property
    def open(self) -> bool:
        return self.outcome == "running"


@dataclass(slots=True, kw_only=True)
class TaskView:
    """A task call (name, payload digest, occurrence) and its attempts, oldest first."""

    task: str
    index: int  # the n-th call of this task with this payload in the run, from 0
    digest: str
    attempts: list[AttemptView] = field(default_factory=list)
    show_digest: bool = False  # another call has the same name and index: tell them apart

    @property
    def number(self) -> int:
        """The call's occurrence as shown, from 1."""
        return self.index + 1

    @property
    def outcome(self) -> str:
        return self.attempts[-1].outcome if self.attempts else "running"


@dataclass(frozen=True, slots=True, kw_only=True)
class SleepView:
    """A durable sleep of the run: its name, occurrence, length and wake-up time."""

    name: str
    index: int  # the n-th sleep of this name in the run, from 0
    duration_ms: int
    recorded_ms: int  # when the first call recorded it (storage clock)
    worker_id: str | None = None
    sleeping: bool = False  # the run is waiting for this sleep now

    @property
    def number(self) -> int:
        """The sleep's occurrence as shown, from 1."""
        return self.index + 1

    @property
    def until_ms(self) -> int:
        """The wake-up time, give or take the record's write latency.

        The worker reckons it from the storage time of its claim just before it writes the
        record; the record's time is when storage wrote it. A waiting run's status has the
        exact time.
        """
        return self.recorded_ms + self.duration_ms


_LABELS: dict[EventKind, str] = {
    EventKind.ENQUEUED: "enqueued",
    EventKind.CLAIMED: "claimed",
    EventKind.RELEASED: "released",
    EventKind.LEASE_EXPIRED: "lease expired",
    EventKind.SUSPENDED: "waiting",
    EventKind.WOKEN: "woken",
    EventKind.TASK_STARTED: "task started",
    EventKind.TASK_COMPLETED: "task completed",
    EventKind.TASK_FAILED: "task failed",
    EventKind.CANCEL_REQUESTED: "cancel requested",
    EventKind.EVENT_SENT: "event sent",
    EventKind.COMPLETED: "completed",
    EventKind.FAILED: "failed",
    EventKind.CANCELLED: "cancelled",
}


def timeline(history: Sequence[HistoryEvent]) -> list[TimelineEntry]:
    """Every event in order, with its time since the first one and a one-line summary.

    A sleep's record is stored as a task's start and end written together; its start adds
    nothing, so the sleep is one entry.
    """
    if not history:
        return []
    start = history[0].at_ms
    return [
        TimelineEntry(
            seq=event.seq,
            at_ms=event.at_ms,
            offset_ms=event.at_ms - start,
            kind=event.kind,
            label=_label(event),
            state=event.state,
            summary=summarize(event),
            error=ErrorView.from_data(event.data.get("error")),
        )
        for event in history
        if not (event.kind is EventKind.TASK_STARTED and _engine_record(event))
    ]


def _label(event: HistoryEvent) -> str:
    if event.kind is EventKind.TASK_COMPLETED and _sleep_of(event) is not None:
        return "sleep"
    if event.kind is EventKind.TASK_COMPLETED and _event_of(event) is not None:
        return "wait for event"
    return _LABELS.get(event.kind, event.kind.value)


def _event_of(event: HistoryEvent) -> str | None:
    """The event's name if `event` is about a `wait_for_event` record."""
    task = event.data.get("task")
    return event_name(task) if isinstance(task, str) else None


def _engine_record(event: HistoryEvent) -> bool:
    return _sleep_of(event) is not None or _event_of(event) is not None


def _sleep_of(event: HistoryEvent) -> str | None:
    """The sleep's name if `event` is about a sleep's record."""
    task = event.data.get("task")
    return sleep_name(task) if isinstance(task, str) else None


def summarize(event: HistoryEvent) -> str:
    """What an event says, in a line: who, which task or sleep, how long, why."""
    describe = _SUMMARIES.get(event.kind)
    return "" if describe is None else describe(event.kind, event.data)


def _claimed(kind: EventKind, data: dict[str, Any]) -> str:
    attempt = data.get("attempt")
    return f"by worker {data.get('worker_id')}" + (
        "" if attempt is None else f" (run attempt {attempt})"
    )


def _released(kind: EventKind, data: dict[str, Any]) -> str:
    return f"handed back by worker {data.get('worker_id')}"


def _lease_expired(kind: EventKind, data: dict[str, Any]) -> str:
    parts = [f"worker {data.get('worker_id')} went silent", *_interrupted(data)]
    if data.get("recovery_attempts") is not None:
        parts.append(f"recovery attempt {data['recovery_attempts']}")
    return "; ".join(parts)


def _waiting(kind: EventKind, data: dict[str, Any]) -> str:
    text = str(data.get("kind") or "")
    if data.get("detail"):
        if text == WaitKind.RETRY:
            text += f" of {data['detail']}"
        elif text == WaitKind.SLEEP:
            text += f" {data['detail']!r}"
        else:
            text += f" ({data['detail']})"
    if kind is EventKind.SUSPENDED and isinstance(data.get("until_ms"), int):
        text += f" until {format_time(data['until_ms'])} UTC"
    return text


def _cancel(kind: EventKind, data: dict[str, Any]) -> str:
    parts: list[str] = []
    if data.get("reason"):
        parts.append(f"reason: {data['reason']}")
    if data.get("lease_expired"):
        parts.append(f"after worker {data.get('worker_id')} went silent")
        parts.extend(_interrupted(data))
    return "; ".join(parts)


def _failed(kind: EventKind, data: dict[str, Any]) -> str:
    error = ErrorView.from_data(data.get("error"))
    return "" if error is None else f"{error.type}: {error.message}"


def _summarize_task(kind: EventKind, data: dict[str, Any]) -> str:
    sleep = sleep_name(str(data.get("task")))
    if sleep is not None:
        return _summarize_sleep(sleep, data)
    waited = event_name(str(data.get("task")))
    if waited is not None:  # the record's digest says what it holds
        return f"{waited!r} #{_number(data)} {data.get('digest')}"
    text = f"{data.get('task')} #{_number(data)} attempt {data.get('attempt')}"
    if kind is EventKind.TASK_STARTED:
        return f"{text} on worker {data.get('worker_id')}"
    if data.get("duration_ms") is not None:
        text += f" in {format_duration(int(data['duration_ms']))}"
    if kind is EventKind.TASK_FAILED:
        error = ErrorView.from_data(data.get("error"))
        if error is not None:
            text += f": {error.type}: {error.message}"
        if data.get("final"):
            text += "; no retries left"
        elif data.get("retry_delay_ms") is not None:
            text += f"; retry in {format_duration(int(data['retry_delay_ms']))}"
    return text


def _summarize_sleep(name: str, data: dict[str, Any]) -> str:
    text = f"{name!r} #{_number(data)}"
    duration = data.get("duration_ms")
    if isinstance(duration, int):
        text += f" for {format_duration(duration)}"
    return text


def _number(data: dict[str, Any]) -> int:
    """A call's stored occurrence (from 0) as shown (from 1)."""
    return int(data.get("index", 0)) + 1


def _event_sent(kind: EventKind, data: dict[str, Any]) -> str:
    return f"{data.get('name')!r} seq {data.get('seq')}"


def _interrupted(data: dict[str, Any]) -> list[str]:
    tasks = data.get("interrupted") or []
    if not tasks:
        return []
    names = ", ".join(f"{t.get('task')} #{_number(t)} attempt {t.get('attempt')}" for t in tasks)
    return [f"interrupted: {names}"]


_SUMMARIES: dict[EventKind, Callable[[EventKind, dict[str, Any]], str]] = {
    EventKind.CLAIMED: _claimed,
    EventKind.RELEASED: _released,
    EventKind.LEASE_EXPIRED: _lease_expired,
    EventKind.SUSPENDED: _waiting,
    EventKind.WOKEN: _waiting,
    EventKind.TASK_STARTED: _summarize_task,
    EventKind.TASK_COMPLETED: _summarize_task,
    EventKind.TASK_FAILED: _summarize_task,
    EventKind.CANCEL_REQUESTED: _cancel,
    EventKind.EVENT_SENT: _event_sent,
    EventKind.CANCELLED: _cancel,
    EventKind.FAILED: _failed,
}


def tasks(history: Sequence[HistoryEvent]) -> list[TaskView]:
    """Each task call of the run with its attempts, in the order the calls first started.

    Sleeps are left out (see `sleeps`).
    """
    views: dict[tuple[str, str, int], TaskView] = {}
    for event in history:
        data = event.data
        if _engine_record(event):
            continue
        if event.kind is EventKind.TASK_STARTED:
            view = _view(views, data)
            view.attempts.append(
                AttemptView(
                    attempt=int(data.get("attempt", 0)),
                    worker_id=data.get("worker_id"),
                    started_ms=event.at_ms,
                )
            )
        elif event.kind in (EventKind.TASK_COMPLETED, EventKind.TASK_FAILED):
            _end_attempt(_view(views, data), event)
        elif event.kind in (EventKind.LEASE_EXPIRED, EventKind.CANCELLED, EventKind.FAILED):
            for lost in data.get("interrupted") or []:
                _interrupt(views, lost, event.at_ms)
    result = list(views.values())
    if history and history[-1].state.is_final:
        # Nothing more will be recorded: an attempt still open never reported its end.
        cancelled = history[-1].state is RunState.CANCELLED
        for attempt in (a for view in result for a in view.attempts if a.open):
            attempt.outcome = "cancelled" if cancelled else "unfinished"
    calls = Counter((view.task, view.index) for view in result)
    for view in result:
        view.show_digest = calls[(view.task, view.index)] > 1
    return result


def sleeps(history: Sequence[HistoryEvent], wait: WaitInfo | None = None) -> list[SleepView]:
    """Each durable sleep of the run, in the order they were first reached.

    With the run's current `wait`, the sleep it waits for is marked `sleeping`.
    """
    found = [
        SleepView(
            name=name,
            index=int(event.data.get("index", 0)),
            duration_ms=int(event.data.get("duration_ms") or 0),
            recorded_ms=event.at_ms,
            worker_id=event.data.get("worker_id"),
        )
        for event in history
        if event.kind is EventKind.TASK_COMPLETED and (name := _sleep_of(event)) is not None
    ]
    if wait is None or wait.kind is not WaitKind.SLEEP or wait.until_ms is None:
        return found
    candidates = [s for s in found if s.name == wait.detail]
    if not candidates:
        return found
    # The wait's time is exact, the views' are not quite (see `SleepView.until_ms`).
    until_ms = wait.until_ms
    waited = min(candidates, key=lambda s: abs(s.until_ms - until_ms))
    return [replace(s, sleeping=True) if s is waited else s for s in found]


def _view(views: dict[tuple[str, str, int], TaskView], data: dict[str, Any]) -> TaskView:
    task, digest, index = str(data.get("task")), str(data.get("digest", "")), data.get("index", 0)
    key = (task, digest, int(index))
    view = views.get(key)
    if view is None:
        view = views[key] = TaskView(task=task, index=int(index), digest=digest)
    return view


def _end_attempt(view: TaskView, event: HistoryEvent) -> None:
    data = event.data
    number = int(data.get("attempt", 0))
    attempt = next(
        (a for a in reversed(view.attempts) if a.open and a.attempt == number),
        None,
    )
    if attempt is None:  # its start was not recorded: show the end alone
        attempt = AttemptView(attempt=number, worker_id=data.get("worker_id"))
        view.attempts.append(attempt)
    attempt.ended_ms = event.at_ms
    attempt.duration_ms = data.get("duration_ms")
    attempt.error = ErrorView.from_data(data.get("error"))
    attempt.retry_delay_ms = data.get("retry_delay_ms")
    if event.kind is EventKind.TASK_COMPLETED:
        attempt.outcome = "completed"
    else:
        attempt.outcome = "failed" if data.get("final") else "retrying"


def _interrupt(
    views: dict[tuple[str, str, int], TaskView], lost: dict[str, Any], at_ms: int
) -> None:
    key = (str(lost.get("task")), str(lost.get("digest", "")), int(lost.get("index", 0)))
    view = views.get(key)
    if view is None:
        return
    for attempt in view.attempts:
        if attempt.open and attempt.attempt == lost.get("attempt"):
            attempt.outcome = "interrupted"
            attempt.ended_ms = at_ms


def format_duration(ms: int) -> str:
    """A duration the way people read it: 12 ms, 1.5 s, 2 min 5 s, 1 h 3 min."""
    if ms < 1000:
        return f"{ms} ms"
    if ms < 60_000:
        return f"{ms // 100 / 10:.1f} s" if ms < 10_000 else f"{ms // 1000} s"
    minutes, rest = divmod(ms // 1000, 60)
    if minutes < 60:
        return f"{minutes} min {rest} s" if rest else f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours} h {minutes} min" if minutes else f"{hours} h"
    days, hours = divmod(hours, 24)
    return f"{days} d {hours} h" if hours else f"{days} d"


def format_time(ms: int) -> str:
    """A storage timestamp as UTC date and time to the second."""
    return datetime.fromtimestamp(ms / 1000, tz=UTC).strftime("%Y-%m-%d %H:%M:%S")
