-- Events sent to runs (`RunHandle.send_event`), consumed in send order by `wait_for_event`.
-- A run's consumption is recorded in task_results (`aiki.event/<name>`), never here: replay
-- reads what was consumed from there, and this table only holds what was sent.

CREATE TABLE events (
    seq             bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    run_id          text COLLATE "C" NOT NULL,
    name            text COLLATE "C" NOT NULL,
    data            json NOT NULL,
    idempotency_key text COLLATE "C",
    created_at      bigint NOT NULL
);

CREATE INDEX events_by_run ON events (run_id, name, seq);
CREATE UNIQUE INDEX events_idempotency_key ON events (run_id, name, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
