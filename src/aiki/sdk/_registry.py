"""The set of workflow versions a worker can execute."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from aiki._core.models import ServedVersion, WorkflowKey
from aiki.sdk.workflow import Workflow


class Registry:
    """Workflow versions by name and version; `add()` chains."""

    def __init__(self) -> None:
        self._workflows: dict[WorkflowKey, Workflow[Any, Any]] = {}

    def add(self, workflow: Workflow[Any, Any]) -> Registry:
        """Register a workflow version and return the registry, so calls chain.

        Raises:
            TypeError: `workflow` is not an `aiki.workflow`.
            ValueError: another definition already has this name and version.
        """
        if not isinstance(workflow, Workflow):
            raise TypeError(
                f"registry.add() takes a workflow made with aiki.workflow, "
                f"got {type(workflow).__name__}"
            )
        existing = self._workflows.get(workflow.key)
        if existing is not None and existing is not workflow:
            raise ValueError(f"workflow {workflow.key} is already registered")
        self._workflows[workflow.key] = workflow
        return self

    def get(self, key: WorkflowKey) -> Workflow[Any, Any] | None:
        """The registered definition for `key`, if any."""
        return self._workflows.get(key)

    @property
    def keys(self) -> tuple[WorkflowKey, ...]:
        """Every registered name and version."""
        return tuple(self._workflows)

    @property
    def served(self) -> tuple[ServedVersion, ...]:
        """Every registered version with its payload's JSON Schema, as a worker registers them."""
        return tuple(workflow.served for workflow in self._workflows.values())

    def __iter__(self) -> Iterator[Workflow[Any, Any]]:
        return iter(self._workflows.values())

    def __len__(self) -> int:
        return len(self._workflows)
