"""The run state machine: the states and which actions each one allows."""

from __future__ import annotations

from enum import StrEnum

from aiki.errors import IllegalTransitionError


class RunState(StrEnum):
    """Where a workflow run is in its life."""

    PENDING = "pending"
    RUNNING = "running"
    WAITING = "waiting"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def is_final(self) -> bool:
        """Completed, failed and cancelled runs never change again."""
        return self in FINAL_STATES


FINAL_STATES = frozenset({RunState.COMPLETED, RunState.FAILED, RunState.CANCELLED})


class RunAction(StrEnum):
    """Every way a run's state can change; the table below says from where."""

    CLAIM = "claim"  # a worker takes the run
    RELEASE = "release"  # a worker hands it back unfinished (graceful stop)
    EXPIRE_LEASE = "expire lease"  # its worker went silent
    SUSPEND = "suspend"  # wait for a time (retry backoff; later sleeps, events)
    WAKE = "wake"  # the wait is over
    COMPLETE = "complete"
    FAIL = "fail"
    CANCEL = "cancel"


_ALLOWED: dict[RunAction, frozenset[RunState]] = {
    RunAction.CLAIM: frozenset({RunState.PENDING}),
    RunAction.RELEASE: frozenset({RunState.RUNNING}),
    RunAction.EXPIRE_LEASE: frozenset({RunState.RUNNING}),
    RunAction.SUSPEND: frozenset({RunState.RUNNING}),
    RunAction.WAKE: frozenset({RunState.WAITING}),
    RunAction.COMPLETE: frozenset({RunState.RUNNING}),
    RunAction.FAIL: frozenset({RunState.RUNNING}),
    RunAction.CANCEL: frozenset({RunState.RUNNING, RunState.PENDING, RunState.WAITING}),
}

TARGET: dict[RunAction, RunState] = {
    RunAction.CLAIM: RunState.RUNNING,
    RunAction.RELEASE: RunState.PENDING,
    RunAction.EXPIRE_LEASE: RunState.PENDING,
    RunAction.SUSPEND: RunState.WAITING,
    RunAction.WAKE: RunState.PENDING,
    RunAction.COMPLETE: RunState.COMPLETED,
    RunAction.FAIL: RunState.FAILED,
    RunAction.CANCEL: RunState.CANCELLED,
}


def allowed(action: RunAction, current: RunState) -> bool:
    """Whether `action` may happen to a run in state `current`."""
    return current in _ALLOWED[action]


def check_transition(run_id: str, current: RunState, action: RunAction) -> RunState:
    """Return the state `action` leads to, or raise `IllegalTransitionError`."""
    if current not in _ALLOWED[action]:
        raise IllegalTransitionError(run_id, current.value, action.value)
    return TARGET[action]
