-- Runs, their task results and history; workers and workflow definitions.
-- The same logical schema as SQLite's. Times are bigint milliseconds since the Unix epoch on the
-- database clock (aiki_now_ms below). Ids and names sort bytewise (COLLATE "C"), as in SQLite,
-- whatever the database's locale: paging and "oldest first" compare ids.
-- Payloads, results, errors and event data are `json`, not `jsonb`: json keeps the canonical
-- text exactly (idempotent enqueues compare it) and accepts every escape Python's encoder
-- writes, \u0000 included, which jsonb refuses.

-- The storage clock: the database's, unless a test passes its fake clock's reading.
-- statement_timestamp() is one value for the whole statement, and every method is one statement.
CREATE FUNCTION aiki_now_ms(override bigint) RETURNS bigint
LANGUAGE sql STABLE PARALLEL SAFE
AS $$ SELECT COALESCE(override, floor(extract(epoch FROM statement_timestamp()) * 1000)::bigint) $$;

CREATE TABLE runs (
    id                text COLLATE "C" PRIMARY KEY,
    workflow          text COLLATE "C" NOT NULL,
    version           text COLLATE "C" NOT NULL,
    state             text COLLATE "C" NOT NULL
                      CHECK (state IN ('pending', 'running', 'waiting', 'completed', 'failed',
                                       'cancelled')),
    payload           json NOT NULL,
    result            json,
    error             json,
    idempotency_key   text COLLATE "C",
    attempt           integer NOT NULL DEFAULT 0,
    recovery_attempts integer NOT NULL DEFAULT 0,
    revision          bigint NOT NULL DEFAULT 0,
    wait_kind         text,
    wait_until        bigint,
    wait_detail       text,
    worker_id         text COLLATE "C",
    lease_expires_at  bigint,
    cancel_requested  boolean NOT NULL DEFAULT false,
    cancel_reason     text,
    -- The seq of the run's last history event. Every write that appends an event increments it
    -- in the same UPDATE, which also locks the run: concurrent appends to one run get 1, 2, 3...
    -- without a MAX(seq) read that a concurrent transaction could make stale.
    last_seq          integer NOT NULL DEFAULT 0,
    created_at        bigint NOT NULL,
    updated_at        bigint NOT NULL
) WITH (fillfactor = 90);  -- room for HOT updates of task writes and heartbeats

CREATE UNIQUE INDEX runs_idempotency_key ON runs (workflow, version, idempotency_key)
    WHERE idempotency_key IS NOT NULL;

-- Partial indexes stay as small as the set of runs in that state, however many runs have ended.
CREATE INDEX runs_pending ON runs (workflow, version, id) WHERE state = 'pending';
CREATE INDEX runs_wait_due ON runs (wait_until, id) WHERE state = 'waiting';
CREATE INDEX runs_lease_due ON runs (lease_expires_at, id) WHERE state = 'running';

-- Listings: newest first, optionally by workflow or state.
CREATE INDEX runs_by_workflow ON runs (workflow, id);
CREATE INDEX runs_by_state ON runs (state, id);

CREATE TABLE task_results (
    run_id     text COLLATE "C" NOT NULL,
    task       text COLLATE "C" NOT NULL,
    digest     text COLLATE "C" NOT NULL,
    idx        integer NOT NULL,
    outcome    text NOT NULL,
    attempts   integer NOT NULL,
    result     json,
    error      json,
    updated_at bigint NOT NULL,
    PRIMARY KEY (run_id, task, digest, idx)
);

CREATE TABLE history (
    run_id text COLLATE "C" NOT NULL,
    seq    integer NOT NULL,
    at     bigint NOT NULL,
    kind   text NOT NULL,
    state  text NOT NULL,
    data   json,
    PRIMARY KEY (run_id, seq)
);

CREATE TABLE workers (
    id          text COLLATE "C" PRIMARY KEY,
    workflows   json NOT NULL,
    last_seen   bigint NOT NULL,
    alive_until bigint NOT NULL  -- last heartbeat + its lease; a stopped worker sets it to now
);

CREATE TABLE workflows (
    name       text COLLATE "C" NOT NULL,
    version    text COLLATE "C" NOT NULL,
    first_seen bigint NOT NULL,
    PRIMARY KEY (name, version)
);
