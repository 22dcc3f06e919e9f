"""User onboarding, in two versions that run side by side."""

from __future__ import annotations

from typing import Any

import pydantic

from aiki.sdk import TaskContext, WorkflowRun, task, workflow


class NewUser(pydantic.BaseModel):
    """What version 2 takes: a typed payload, checked before any run is created."""

    user_id: str


@task(name="send-welcome-email")
async def send_welcome_email(ctx: TaskContext[dict[str, Any]]) -> str:
    return f"welcome email sent to user {ctx.payload['user_id']}"


@task(name="create-user-profile")
def create_user_profile(ctx: TaskContext[dict[str, Any]]) -> dict[str, Any]:
    # A sync task: Aiki runs it in a thread so it never blocks the event loop.
    return {"user_id": ctx.payload["user_id"], "profile": "created"}


@workflow(name="user-onboarding", version="1.0.0")
async def user_onboarding_v1(workflow_run: WorkflowRun[dict[str, Any]]) -> dict[str, Any]:
    user_id = workflow_run.params.payload["user_id"]
    email = await send_welcome_email.run(workflow_run, payload={"user_id": user_id})
    return {"email": email}


@workflow(name="user-onboarding", version="2.0.0")
async def user_onboarding_v2(workflow_run: WorkflowRun[NewUser]) -> dict[str, Any]:
    user_id = workflow_run.payload.user_id
    email = await send_welcome_email.run(workflow_run, payload={"user_id": user_id})
    profile = await create_user_profile.run(workflow_run, payload={"user_id": user_id})
    return {"email": email, "profile": profile}
