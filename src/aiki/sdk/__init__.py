"""What workflow code imports: tasks, workflows, their contexts and the registry."""

from aiki.sdk._context import Params, TaskContext, WorkflowRun
from aiki.sdk._registry import Registry
from aiki.sdk.task import Task, task
from aiki.sdk.workflow import Workflow, workflow

__all__ = [
    "Params",
    "Registry",
    "Task",
    "TaskContext",
    "Workflow",
    "WorkflowRun",
    "task",
    "workflow",
]
