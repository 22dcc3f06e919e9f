"""Defining tasks and workflows, and registering workflow versions.

Every invalid definition fails where it is written, at import time of the user's module, with
an error that names the problem, never later on a worker.
"""

import functools
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pydantic
import pytest

import aiki
from aiki._core.ids import RunId
from aiki._core.models import WorkflowKey


class Order(pydantic.BaseModel):
    order_id: int
    amount_cents: int


class Receipt(pydantic.BaseModel):
    order_id: int
    charged_cents: int


class FakeExecution:
    """The worker's side of a run, reduced to recording task calls."""

    def __init__(self, result: Any = None) -> None:
        self.result = result
        self.calls: list[tuple[str, object]] = []

    async def call_task(self, task: Any, payload: object) -> Any:
        self.calls.append((task.name, payload))
        return self.result

    async def sleep(self, name: str, duration_ms: int) -> None:
        self.calls.append((f"sleep {name}", duration_ms))

    async def wait_for_event(self, name: str, timeout_ms: int | None) -> Any:
        self.calls.append((f"event {name}", timeout_ms))
        return self.result

    def now(self) -> datetime:
        return datetime(2026, 1, 1, tzinfo=UTC)


def make_run(payload: Any = None, execution: FakeExecution | None = None) -> aiki.WorkflowRun[Any]:
    return aiki.WorkflowRun(
        id=RunId("run-1"),
        name="checkout",
        version="1.0.0",
        payload=payload,
        attempt=1,
        execution=execution or FakeExecution(),
    )


def make_context(payload: Any) -> aiki.TaskContext[Any]:
    return aiki.TaskContext(payload=payload, workflow_run=make_run(), attempt=1)


async def charge(ctx: aiki.TaskContext[Order]) -> Receipt:
    return Receipt(order_id=ctx.payload.order_id, charged_cents=ctx.payload.amount_cents)


async def checkout(workflow_run: aiki.WorkflowRun[Order]) -> Receipt:
    return Receipt(order_id=workflow_run.payload.order_id, charged_cents=0)


# --- tasks: function form ---------------------------------------------------------------------


def test_task_function_form_builds_a_task() -> None:
    retry = aiki.Retry.fixed(max_attempts=3, delay_ms=1_000)
    ring_alarm: aiki.Task[dict[str, str], str] = aiki.task(
        name="ring-alarm", run=lambda ctx: ctx.payload["song"], retry=retry
    )
    assert isinstance(ring_alarm, aiki.Task)
    assert ring_alarm.name == "ring-alarm"
    assert ring_alarm.retry == retry


def test_task_without_retry_is_tried_once() -> None:
    assert aiki.task(name="charge", run=charge).retry == aiki.Retry.never()


async def test_function_form_sync_task_runs_in_another_thread() -> None:
    threads: list[int] = []

    def ring(ctx: aiki.TaskContext[dict[str, str]]) -> str:
        threads.append(threading.get_ident())
        return ctx.payload["song"]

    ring_alarm = aiki.task(name="ring-alarm", run=ring)
    assert await ring_alarm.invoke(make_context({"song": "Wake up!"})) == "Wake up!"
    assert threads != [threading.get_ident()]


async def test_function_form_lambda_task_runs() -> None:
    ring_alarm: aiki.Task[dict[str, str], str] = aiki.task(
        name="ring-alarm", run=lambda ctx: ctx.payload["song"]
    )
    assert await ring_alarm.invoke(make_context({"song": "Wake up!"})) == "Wake up!"


async def test_a_sync_callable_returning_a_coroutine_is_awaited() -> None:
    async def later(value: int) -> int:
        return value * 2

    doubled: aiki.Task[int, int] = aiki.task(name="double", run=lambda ctx: later(ctx.payload))
    assert await doubled.invoke(make_context(21)) == 42


async def test_function_form_async_task_runs_on_the_event_loop() -> None:
    loop_thread = threading.get_ident()
    threads: list[int] = []

    async def stretch(ctx: aiki.TaskContext[dict[str, int]]) -> int:
        threads.append(threading.get_ident())
        return ctx.payload["duration"]

    task = aiki.task(name="stretch", run=stretch)
    assert await task.invoke(make_context({"duration": 300})) == 300
    assert threads == [loop_thread]


# --- tasks: decorator form --------------------------------------------------------------------


def test_task_decorator_form_builds_a_task() -> None:
    retry = aiki.Retry.exponential(max_attempts=5, base_delay_ms=200)

    @aiki.task(name="stretch", retry=retry)
    async def stretch(ctx: aiki.TaskContext[dict[str, int]]) -> int:
        return ctx.payload["duration"]

    assert isinstance(stretch, aiki.Task)
    assert stretch.name == "stretch"
    assert stretch.retry == retry


async def test_decorated_async_task_runs() -> None:
    @aiki.task(name="stretch")
    async def stretch(ctx: aiki.TaskContext[dict[str, int]]) -> int:
        return ctx.payload["duration"] + ctx.attempt

    assert await stretch.invoke(make_context({"duration": 300})) == 301


async def test_decorated_sync_task_runs_in_another_thread() -> None:
    threads: list[int] = []

    @aiki.task(name="stretch")
    def stretch(ctx: aiki.TaskContext[dict[str, int]]) -> int:
        threads.append(threading.get_ident())
        return ctx.payload["duration"]

    assert await stretch.invoke(make_context({"duration": 300})) == 300
    assert threads != [threading.get_ident()]


def test_task_decodes_its_payload_and_result_into_the_annotated_models() -> None:
    task = aiki.task(name="charge", run=charge)
    assert task.decode_payload({"order_id": 1, "amount_cents": 5}) == Order(
        order_id=1, amount_cents=5
    )
    assert task.decode_result({"order_id": 1, "charged_cents": 5}) == Receipt(
        order_id=1, charged_cents=5
    )


def test_untyped_task_keeps_plain_json() -> None:
    task: aiki.Task[Any, Any] = aiki.task(name="echo", run=lambda ctx: ctx.payload)
    assert task.decode_payload({"a": [1]}) == {"a": [1]}
    assert task.decode_result([1, 2]) == [1, 2]


async def test_task_run_goes_through_the_workflow_runs_execution() -> None:
    receipt = Receipt(order_id=1, charged_cents=5)
    execution = FakeExecution(result=receipt)
    task = aiki.task(name="charge", run=charge)
    order = Order(order_id=1, amount_cents=5)
    assert await task.run(make_run(execution=execution), payload=order) is receipt
    assert execution.calls == [("charge", order)]


async def test_task_run_refuses_anything_but_a_workflow_run() -> None:
    task = aiki.task(name="charge", run=charge)
    with pytest.raises(TypeError, match="WorkflowRun"):
        await task.run(make_context(None), payload=None)  # type: ignore[arg-type]


# --- workflows --------------------------------------------------------------------------------


def test_workflow_function_form_builds_a_workflow() -> None:
    wf = aiki.workflow(name="checkout", version="1.0.0", run=checkout)
    assert isinstance(wf, aiki.Workflow)
    assert (wf.name, wf.version) == ("checkout", "1.0.0")
    assert wf.key == WorkflowKey(name="checkout", version="1.0.0")


def test_workflow_decorator_form_builds_a_workflow() -> None:
    @aiki.workflow(name="morning-routine", version="2")
    async def morning_routine(workflow_run: aiki.WorkflowRun[dict[str, str]]) -> dict[str, str]:
        return {"user": workflow_run.payload["user_id"]}

    assert isinstance(morning_routine, aiki.Workflow)
    assert morning_routine.key == WorkflowKey(name="morning-routine", version="2")


async def test_workflow_execute_calls_the_function_with_the_run() -> None:
    wf = aiki.workflow(name="checkout", version="1.0.0", run=checkout)
    result = await wf.execute(make_run(Order(order_id=7, amount_cents=1)))
    assert result == Receipt(order_id=7, charged_cents=0)


def test_workflow_decodes_its_payload_and_result_into_the_annotated_models() -> None:
    wf = aiki.workflow(name="checkout", version="1.0.0", run=checkout)
    assert wf.decode_payload({"order_id": 1, "amount_cents": 2}) == Order(
        order_id=1, amount_cents=2
    )
    assert wf.decode_result({"order_id": 1, "charged_cents": 2}) == Receipt(
        order_id=1, charged_cents=2
    )


def test_workflow_run_exposes_its_identity_payload_and_clock() -> None:
    run = make_run({"user_id": "123"})
    assert (run.id, run.name, run.version, run.attempt) == ("run-1", "checkout", "1.0.0", 1)
    assert run.payload == run.params.payload == {"user_id": "123"}
    assert run.now() == datetime(2026, 1, 1, tzinfo=UTC)


# --- invalid definitions ----------------------------------------------------------------------


async def one_arg(ctx: Any) -> None:
    return None


DEFINE_TASK: dict[str, Callable[[Any], object]] = {
    "task function form": lambda name: aiki.task(name=name, run=one_arg),
    "task decorator form": lambda name: aiki.task(name=name)(one_arg),
    "workflow function form": lambda name: aiki.workflow(name=name, version="1", run=one_arg),
    "workflow decorator form": lambda name: aiki.workflow(name=name, version="1")(one_arg),
}


@pytest.mark.parametrize("define", DEFINE_TASK.values(), ids=DEFINE_TASK.keys())
@pytest.mark.parametrize("name", ["", "   "])
def test_empty_name_is_refused(define: Callable[[Any], object], name: str) -> None:
    with pytest.raises(ValueError, match="name must not be empty"):
        define(name)


@pytest.mark.parametrize("define", DEFINE_TASK.values(), ids=DEFINE_TASK.keys())
@pytest.mark.parametrize("name", [None, 1, b"charge"])
def test_non_str_name_is_refused(define: Callable[[Any], object], name: object) -> None:
    with pytest.raises(TypeError, match="name must be a str"):
        define(name)


def test_empty_name_is_refused_before_decorating() -> None:
    with pytest.raises(ValueError, match="task name"):
        aiki.task(name="")


@pytest.mark.parametrize("version", [1.0, 1, None])
def test_non_str_version_is_refused(version: object) -> None:
    with pytest.raises(TypeError, match="version must be a str"):
        aiki.workflow(name="checkout", version=version, run=checkout)  # type: ignore[call-overload]


def test_non_str_version_is_refused_by_the_decorator_form() -> None:
    with pytest.raises(TypeError, match="'checkout': version must be a str"):
        aiki.workflow(name="checkout", version=1.0)  # type: ignore[call-overload]


@pytest.mark.parametrize("version", ["", "  "])
def test_empty_version_is_refused(version: str) -> None:
    with pytest.raises(ValueError, match="'checkout': version must not be empty"):
        aiki.workflow(name="checkout", version=version, run=checkout)


async def no_args() -> None:
    return None


async def two_args(ctx: Any, extra: Any) -> None:
    return None


async def keyword_only(*, ctx: Any) -> None:
    return None


def sync_two_args(ctx: Any, extra: Any) -> None:
    return None


BAD_SIGNATURES = [
    pytest.param(no_args, id="zero-args"),
    pytest.param(two_args, id="two-required-args"),
    pytest.param(keyword_only, id="keyword-only"),
    pytest.param(sync_two_args, id="sync-two-required-args"),
]


@pytest.mark.parametrize("run", BAD_SIGNATURES)
def test_task_with_the_wrong_signature_is_refused(run: Callable[..., Any]) -> None:
    with pytest.raises(TypeError, match="'charge': run function must take exactly one argument"):
        aiki.task(name="charge", run=run)


@pytest.mark.parametrize("run", BAD_SIGNATURES)
def test_decorated_task_with_the_wrong_signature_is_refused(run: Callable[..., Any]) -> None:
    with pytest.raises(TypeError, match="'charge': run function must take exactly one argument"):
        aiki.task(name="charge")(run)


@pytest.mark.parametrize("run", BAD_SIGNATURES)
def test_workflow_with_the_wrong_signature_is_refused(run: Callable[..., Any]) -> None:
    with pytest.raises(TypeError, match="'checkout': run function must take exactly one argument"):
        aiki.workflow(name="checkout", version="1")(run)


class CallableWithoutArgs:
    def __call__(self) -> None:
        return None


@pytest.mark.parametrize(
    "run",
    [
        pytest.param(CallableWithoutArgs(), id="callable-object"),
        pytest.param(functools.partial(two_args, 1, 2), id="partial"),
    ],
)
def test_callable_object_with_the_wrong_signature_is_refused_naming_the_task(
    run: Callable[..., Any],
) -> None:
    with pytest.raises(TypeError, match="'charge': run function must take exactly one argument"):
        aiki.task(name="charge", run=run)


def test_callable_object_with_one_argument_is_accepted() -> None:
    class Runner:
        def __call__(self, ctx: Any) -> int:
            return 1

    assert aiki.task(name="charge", run=Runner()).name == "charge"


def test_arguments_with_defaults_are_allowed_after_the_first() -> None:
    async def run(ctx: Any, retries: int = 3) -> None:
        return None

    assert aiki.task(name="charge", run=run).name == "charge"


def test_non_callable_run_is_refused() -> None:
    with pytest.raises(TypeError, match="run must be callable"):
        aiki.task(name="charge", run="charge_card")  # type: ignore[call-overload]


def test_sync_workflow_function_is_refused() -> None:
    def sync_checkout(workflow_run: aiki.WorkflowRun[Any]) -> None:
        return None

    with pytest.raises(TypeError, match="'checkout': run must be an async function"):
        aiki.workflow(name="checkout", version="1", run=sync_checkout)  # type: ignore[arg-type]


def test_sync_workflow_function_is_refused_by_the_decorator_form() -> None:
    def sync_checkout(workflow_run: aiki.WorkflowRun[Any]) -> None:
        return None

    with pytest.raises(TypeError, match="async function"):
        aiki.workflow(name="checkout", version="1")(sync_checkout)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "retry",
    [
        pytest.param(3, id="int"),
        pytest.param({"max_attempts": 3}, id="dict"),
        pytest.param(aiki.Retry.never, id="uncalled-factory"),
    ],
)
def test_retry_that_is_not_a_retry_is_refused(retry: object) -> None:
    with pytest.raises(TypeError, match=r"'charge': retry must be an aiki\.Retry"):
        aiki.task(name="charge", run=charge, retry=retry)  # type: ignore[call-overload]


def test_retry_that_is_not_a_retry_is_refused_by_the_decorator_form() -> None:
    with pytest.raises(TypeError, match=r"retry must be an aiki\.Retry"):
        aiki.task(name="charge", retry=3)(charge)  # type: ignore[call-overload]


# --- enqueue refuses bad input before reaching the client ---------------------------------------


class UnreachableApi:
    """A client API that fails the test if it is ever reached."""

    async def enqueue(self, new: object) -> object:
        raise AssertionError("the payload should have been refused before the client")


def unreachable_client() -> aiki.Client:
    return aiki.Client(UnreachableApi())  # type: ignore[arg-type]


async def test_enqueue_refuses_a_non_json_payload_naming_the_workflow() -> None:
    wf = aiki.workflow(name="checkout", version="1", run=checkout)
    with pytest.raises(aiki.PayloadError, match=r"workflow 'checkout' payload.*set"):
        await wf.enqueue(unreachable_client(), payload={1, 2})  # type: ignore[arg-type]


async def test_enqueue_refuses_a_non_str_idempotency_key() -> None:
    wf = aiki.workflow(name="checkout", version="1", run=checkout)
    order = Order(order_id=1, amount_cents=1)
    with pytest.raises(TypeError, match="idempotency_key must be a str"):
        await wf.enqueue(unreachable_client(), payload=order, idempotency_key=7)  # type: ignore[arg-type]


# --- the registry -----------------------------------------------------------------------------


def make_workflow(name: str = "checkout", version: str = "1.0.0") -> aiki.Workflow[Order, Receipt]:
    return aiki.workflow(name=name, version=version, run=checkout)


def test_registry_add_chains() -> None:
    registry = aiki.Registry()
    first, second = make_workflow("a"), make_workflow("b")
    assert registry.add(first).add(second) is registry
    assert list(registry) == [first, second]
    assert len(registry) == 2


def test_registry_finds_a_workflow_by_key() -> None:
    wf = make_workflow()
    registry = aiki.Registry().add(wf)
    assert registry.get(WorkflowKey(name="checkout", version="1.0.0")) is wf
    assert registry.get(WorkflowKey(name="checkout", version="9")) is None


def test_registry_refuses_another_definition_with_the_same_name_and_version() -> None:
    registry = aiki.Registry().add(make_workflow())
    with pytest.raises(ValueError, match=r"checkout@1\.0\.0 is already registered"):
        registry.add(make_workflow())


def test_registry_accepts_the_same_definition_twice() -> None:
    wf = make_workflow()
    registry = aiki.Registry().add(wf).add(wf)
    assert len(registry) == 1


def test_registry_holds_two_versions_of_one_name_side_by_side() -> None:
    v1, v2 = make_workflow(version="1"), make_workflow(version="2")
    registry = aiki.Registry().add(v1).add(v2)
    assert registry.keys == (
        WorkflowKey(name="checkout", version="1"),
        WorkflowKey(name="checkout", version="2"),
    )
    assert registry.get(v1.key) is v1
    assert registry.get(v2.key) is v2


def test_registry_refuses_a_task() -> None:
    with pytest.raises(TypeError, match=r"takes a workflow made with aiki\.workflow, got Task"):
        aiki.Registry().add(aiki.task(name="charge", run=charge))  # type: ignore[arg-type]


def test_registry_refuses_a_plain_function() -> None:
    with pytest.raises(TypeError, match="got function"):
        aiki.Registry().add(checkout)  # type: ignore[arg-type]


def test_definitions_have_readable_reprs() -> None:
    assert repr(make_workflow()) == "Workflow(name='checkout', version='1.0.0')"
    assert repr(aiki.task(name="charge", run=charge)).startswith("Task(name='charge', retry=")
