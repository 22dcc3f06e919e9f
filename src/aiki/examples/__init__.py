"""Example workflows (a morning routine, user onboarding), used by `aiki dev` and the tests."""

from aiki.examples.morning import morning_routine, morning_routine_v2, ring_alarm, stretch
from aiki.examples.onboarding import (
    NewUser,
    create_user_profile,
    send_welcome_email,
    user_onboarding_v1,
    user_onboarding_v2,
)
from aiki.sdk import Registry

__all__ = [
    "NewUser",
    "create_user_profile",
    "morning_routine",
    "morning_routine_v2",
    "registry",
    "ring_alarm",
    "send_welcome_email",
    "stretch",
    "user_onboarding_v1",
    "user_onboarding_v2",
]


def registry() -> Registry:
    """Every example workflow, ready for `worker.registry` or `aiki worker`."""
    return (
        Registry()
        .add(morning_routine)
        .add(morning_routine_v2)
        .add(user_onboarding_v1)
        .add(user_onboarding_v2)
    )
