"""Workflows: versioned async functions whose task calls are recorded and replayed."""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from typing import Any, Generic, Protocol, TypeVar, overload

from aiki._core.models import NewRun, ServedVersion, WorkflowKey
from aiki._core.serde import Decoder, JSONValue, encode_json_value, to_json_value
from aiki.client import Client, RunHandle
from aiki.sdk._context import WorkflowRun
from aiki.sdk._signature import check_single_argument, first_argument_type, return_type
from aiki.sdk._validate import check_name, check_version

P = TypeVar("P")
R = TypeVar("R")


class Workflow(Generic[P, R]):
    """A named, versioned workflow definition. Build one with `aiki.workflow(...)`."""

    __slots__ = ("_fn", "_payload", "_result", "key", "name", "version")

    def __init__(
        self,
        *,
        name: str,
        version: str,
        run: Callable[[WorkflowRun[P]], Awaitable[R]],
    ) -> None:
        self.name = check_name(name, kind="workflow")
        self.version = check_version(version, workflow=name)
        check_single_argument(run, what=f"workflow {name!r}", argument="WorkflowRun")
        if not inspect.iscoroutinefunction(run):
            raise TypeError(f"workflow {name!r}: run must be an async function (async def)")
        self.key = WorkflowKey(name=name, version=version)
        self._fn = run
        self._payload = Decoder(first_argument_type(run))
        self._result = Decoder(return_type(run))

    async def enqueue(
        self,
        client: Client,
        payload: P | None = None,
        *,
        idempotency_key: str | None = None,
        allow_unknown: bool = False,
    ) -> RunHandle[R]:
        """Start a run of this version of the workflow.

        Args:
            client: Where to enqueue.
            payload: JSON value or pydantic model given to the workflow.
            idempotency_key: Enqueueing again with the same key and payload returns the same
                run, in whatever state it is.
            allow_unknown: Enqueue even if no worker has ever registered this version (the
                run waits for one); by default that is refused, as it is most often a typo or
                a version not yet deployed.

        Raises:
            WorkflowNotFoundError: no worker has ever registered this version, and
                `allow_unknown` is False; the error lists the versions that are known.
            PayloadError: the payload is not JSON, does not match the workflow's payload type
                (nothing is sent then), or is too large.
            IdempotencyConflictError: the key is taken by a run with another payload.
        """
        if idempotency_key is not None and not isinstance(idempotency_key, str):
            raise TypeError(
                f"workflow {self.name!r}: idempotency_key must be a str, "
                f"got {type(idempotency_key).__name__}"
            )
        what = f"workflow {self.name!r} payload"
        value = to_json_value(payload, what=what)
        # Checked here, as the worker will decode it: a payload the workflow cannot take must
        # not become a run that fails on the worker.
        self._payload.check(value, what=what)
        text = encode_json_value(value, what=what, limit=None)
        new = NewRun(
            workflow=self.name,
            version=self.version,
            payload_json=text,
            idempotency_key=idempotency_key,
            checked=True,
            allow_unknown=allow_unknown,
        )
        return await client.enqueue(new, result=self._result)

    @property
    def served(self) -> ServedVersion:
        """This version as a worker registers it, with its payload's JSON Schema."""
        return ServedVersion(
            name=self.name, version=self.version, payload_schema_json=self._payload.json_schema()
        )

    async def execute(self, workflow_run: WorkflowRun[P]) -> R:
        """Call the workflow function (the worker does this, replaying recorded tasks)."""
        return await self._fn(workflow_run)

    def decode_payload(self, value: JSONValue) -> P:
        """The payload as the workflow function's annotation wants it."""
        payload: P = self._payload.decode(value)
        return payload

    def decode_payload_json(self, text: str) -> P:
        """`decode_payload` of the stored text: parsed once, straight into the type."""
        payload: P = self._payload.decode_json(text)
        return payload

    def decode_result(self, value: JSONValue) -> R:
        """A stored result as the workflow function's return annotation wants it."""
        result: R = self._result.decode(value)
        return result

    def __repr__(self) -> str:
        return f"Workflow(name={self.name!r}, version={self.version!r})"


class _WorkflowDecorator(Protocol):
    def __call__(self, run: Callable[[WorkflowRun[P]], Awaitable[R]], /) -> Workflow[P, R]: ...


@overload
def workflow(
    *, name: str, version: str, run: Callable[[WorkflowRun[P]], Awaitable[R]]
) -> Workflow[P, R]: ...
@overload
def workflow(*, name: str, version: str) -> _WorkflowDecorator: ...
def workflow(
    *,
    name: str,
    version: str,
    run: Callable[[WorkflowRun[Any]], Awaitable[Any]] | None = None,
) -> Workflow[Any, Any] | _WorkflowDecorator:
    """Define a workflow version, as a call (`workflow(..., run=fn)`) or a decorator.

    Args:
        name: The workflow's name; several versions may share it.
        version: The version, e.g. "1.0.0". Runs stay on the version they were enqueued with.
        run: An async function taking the `WorkflowRun`.

    Raises:
        ValueError: empty name or version.
        TypeError: version not a str, or `run` not an async function of one argument.
    """
    check_name(name, kind="workflow")
    check_version(version, workflow=name)
    if run is not None:
        return Workflow(name=name, version=version, run=run)

    def decorate(fn: Callable[[WorkflowRun[Any]], Awaitable[Any]]) -> Workflow[Any, Any]:
        return Workflow(name=name, version=version, run=fn)

    return decorate
