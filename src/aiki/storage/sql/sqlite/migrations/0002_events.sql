-- Events sent to runs (`RunHandle.send_event`), consumed in send order by `wait_for_event`.
-- A run's consumption is recorded in task_results (`aiki.event/<name>`), never here: replay
-- reads what was consumed from there, and this table only holds what was sent.

CREATE TABLE events (
    seq             INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id          TEXT NOT NULL,
    name            TEXT NOT NULL,
    data            TEXT NOT NULL,
    idempotency_key TEXT,
    created_at      INTEGER NOT NULL
);

CREATE INDEX events_by_run ON events (run_id, name, seq);
CREATE UNIQUE INDEX events_idempotency_key ON events (run_id, name, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
