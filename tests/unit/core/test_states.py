"""The run state machine: exactly which actions each state allows, and where they lead."""

import itertools

import pytest

from aiki import IllegalTransitionError, RunState
from aiki._core.states import FINAL_STATES, RunAction, allowed, check_transition

PENDING, RUNNING, WAITING = RunState.PENDING, RunState.RUNNING, RunState.WAITING
COMPLETED, FAILED, CANCELLED = RunState.COMPLETED, RunState.FAILED, RunState.CANCELLED

# Written out here independently of states.py: (action, from) -> to.
EXPECTED: dict[tuple[RunAction, RunState], RunState] = {
    (RunAction.CLAIM, PENDING): RUNNING,
    (RunAction.RELEASE, RUNNING): PENDING,
    (RunAction.EXPIRE_LEASE, RUNNING): PENDING,
    (RunAction.SUSPEND, RUNNING): WAITING,
    (RunAction.WAKE, WAITING): PENDING,
    (RunAction.COMPLETE, RUNNING): COMPLETED,
    (RunAction.FAIL, RUNNING): FAILED,
    (RunAction.CANCEL, PENDING): CANCELLED,
    (RunAction.CANCEL, RUNNING): CANCELLED,
    (RunAction.CANCEL, WAITING): CANCELLED,
}

ALL_PAIRS = list(itertools.product(RunAction, RunState))
ALLOWED_PAIRS = [pair for pair in ALL_PAIRS if pair in EXPECTED]
FORBIDDEN_PAIRS = [pair for pair in ALL_PAIRS if pair not in EXPECTED]


def _id(pair: tuple[RunAction, RunState]) -> str:
    return f"{pair[0].value}-from-{pair[1].value}"


def test_the_states_and_actions_are_the_known_ones() -> None:
    assert [s.value for s in RunState] == [
        "pending",
        "running",
        "waiting",
        "completed",
        "failed",
        "cancelled",
    ]
    assert {a.value for a in RunAction} == {
        "claim",
        "release",
        "expire lease",
        "suspend",
        "wake",
        "complete",
        "fail",
        "cancel",
    }


@pytest.mark.parametrize("pair", ALLOWED_PAIRS, ids=_id)
def test_allowed_transition_leads_to_its_target(pair: tuple[RunAction, RunState]) -> None:
    action, current = pair
    assert allowed(action, current)
    assert check_transition("run-1", current, action) is EXPECTED[pair]


@pytest.mark.parametrize("pair", FORBIDDEN_PAIRS, ids=_id)
def test_forbidden_transition_raises(pair: tuple[RunAction, RunState]) -> None:
    action, current = pair
    assert not allowed(action, current)
    with pytest.raises(IllegalTransitionError) as raised:
        check_transition("run-1", current, action)
    error = raised.value
    assert (error.run_id, error.current, error.action) == ("run-1", current.value, action.value)
    assert "run-1" in str(error)
    assert current.value in str(error)
    assert action.value in str(error)


@pytest.mark.parametrize("state", sorted(FINAL_STATES))
def test_final_states_allow_no_action(state: RunState) -> None:
    assert [a for a in RunAction if allowed(a, state)] == []


def test_exactly_completed_failed_and_cancelled_are_final() -> None:
    assert {s for s in RunState if s.is_final} == {COMPLETED, FAILED, CANCELLED}
    assert frozenset({COMPLETED, FAILED, CANCELLED}) == FINAL_STATES


def test_every_non_final_state_can_be_cancelled() -> None:
    assert all(allowed(RunAction.CANCEL, s) for s in RunState if not s.is_final)


def test_states_compare_equal_to_their_strings() -> None:
    assert RunState("waiting") is WAITING
    assert RUNNING == "running"
