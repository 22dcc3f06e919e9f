"""A PostgreSQL timer pass with something due: lock the due runs, decide, apply at once."""

from __future__ import annotations

from aiki._core.models import TimerReport
from aiki.storage._postgres_statements import Connection, fetch, fetchone
from aiki.storage._records import dump_json, error_text
from aiki.storage._rules import ExpiredLease, TimerPass


async def fire_due(conn: Connection, timers: TimerPass) -> TimerReport:
    """Lock the due runs (SKIP LOCKED), decide their changes, apply them in one statement.

    Runs in the caller's transaction, which holds the locks until the changes commit.
    """
    now = timers.now_ms
    for row in await fetch(conn, "lock_expired_leases", now=now, limit=timers.limit):
        lease = ExpiredLease(
            run_id=row["id"],
            worker_id=row["worker_id"],
            recovery_attempts=row["recovery_attempts"],
            cancel_requested=row["cancel_requested"],
            cancel_reason=row["cancel_reason"],
            task_events=zip(row["kinds"] or (), row["data"] or (), strict=True),
        )
        timers.expire(lease)
    if timers.remaining > 0:
        for row in await fetch(conn, "lock_due_waits", now=now, limit=timers.remaining):
            timers.wake(row["id"], row["wait_kind"], row["wait_detail"])
    changes = timers.changes
    applied = await fetchone(
        conn,
        "apply_timers",
        ids=[change.run_id for change in changes],
        states=[change.state.value for change in changes],
        recovered=[change.recovered for change in changes],
        errors=[error_text(change.error) for change in changes],
        kinds=[change.event.value for change in changes],
        data=[dump_json(change.data) for change in changes],
        now=now,
    )
    return timers.report(applied["next_wait"], applied["next_lease"])
