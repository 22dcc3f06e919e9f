-- Runs, their task results and history; workers and workflow definitions.
-- Times are INTEGER milliseconds since the Unix epoch (the storage clock).

CREATE TABLE runs (
    id                TEXT PRIMARY KEY,
    workflow          TEXT NOT NULL,
    version           TEXT NOT NULL,
    state             TEXT NOT NULL,
    payload           TEXT NOT NULL,
    result            TEXT,
    error             TEXT,
    idempotency_key   TEXT,
    attempt           INTEGER NOT NULL DEFAULT 0,
    recovery_attempts INTEGER NOT NULL DEFAULT 0,
    revision          INTEGER NOT NULL DEFAULT 0,
    wait_kind         TEXT,
    wait_until        INTEGER,
    wait_detail       TEXT,
    worker_id         TEXT,
    lease_expires_at  INTEGER,
    cancel_requested  INTEGER NOT NULL DEFAULT 0,
    cancel_reason     TEXT,
    created_at        INTEGER NOT NULL,
    updated_at        INTEGER NOT NULL
);

CREATE UNIQUE INDEX runs_idempotency_key ON runs (workflow, version, idempotency_key)
    WHERE idempotency_key IS NOT NULL;

-- Partial indexes stay as small as the set of runs in that state, however many runs have ended.
CREATE INDEX runs_pending ON runs (workflow, version, id) WHERE state = 'pending';
CREATE INDEX runs_wait_due ON runs (wait_until) WHERE state = 'waiting';
CREATE INDEX runs_lease_due ON runs (lease_expires_at) WHERE state = 'running';

-- Listings: newest first, optionally by workflow or state.
CREATE INDEX runs_by_workflow ON runs (workflow, id);
CREATE INDEX runs_by_state ON runs (state, id);

CREATE TABLE task_results (
    run_id     TEXT NOT NULL,
    task       TEXT NOT NULL,
    digest     TEXT NOT NULL,
    idx        INTEGER NOT NULL,
    outcome    TEXT NOT NULL,
    attempts   INTEGER NOT NULL,
    result     TEXT,
    error      TEXT,
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (run_id, task, digest, idx)
);

CREATE TABLE history (
    run_id TEXT NOT NULL,
    seq    INTEGER NOT NULL,
    at     INTEGER NOT NULL,
    kind   TEXT NOT NULL,
    state  TEXT NOT NULL,
    data   TEXT,
    PRIMARY KEY (run_id, seq)
);

CREATE TABLE workers (
    id          TEXT PRIMARY KEY,
    workflows   TEXT NOT NULL,
    last_seen   INTEGER NOT NULL,
    alive_until INTEGER NOT NULL  -- last heartbeat + its lease; a stopped worker sets it to now
);

CREATE TABLE workflows (
    name       TEXT NOT NULL,
    version    TEXT NOT NULL,
    first_seen INTEGER NOT NULL,
    PRIMARY KEY (name, version)
);
