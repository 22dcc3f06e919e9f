-- Every statement the PostgreSQL backend runs, by name (`-- name: NAME` opens a block).
-- `:name` is a parameter (`_postgres_queries` turns them into $1, $2...). `:now` is a test
-- clock's reading or NULL; aiki_now_ms(:now) is then the database clock.
-- Each protocol method is one statement where it can be: data-modifying CTEs make the checks,
-- the writes and the history event one atomic round trip. A write that must not happen (stale
-- lease, forbidden transition) is a CTE whose WHERE finds no row, so nothing is written, and
-- the statement also returns what Python needs to raise the same error as SQLite.
-- Rows are read by column name; a run's columns are the fragment run_columns, the names
-- `_records.run_from_row` reads (a row holding two runs renames one's: `cur_id`...).

-- fragment: run_columns
id, workflow, version, state, payload, result, error, idempotency_key, attempt,
recovery_attempts, revision, wait_kind, wait_until, wait_detail, worker_id,
lease_expires_at, cancel_requested, cancel_reason, created_at, updated_at

-- name: now
SELECT aiki_now_ms(NULL);

-- name: get_run
SELECT {run_columns}
FROM runs
WHERE id = :id;

-- name: get_runs
SELECT {run_columns}
FROM runs
WHERE id = ANY(:ids::text[]);

-- name: find_by_idempotency_key
SELECT {run_columns}
FROM runs
WHERE workflow = :workflow AND version = :version AND idempotency_key = :idempotency_key;

-- name: enqueue
-- Runs to create, one per element of the arrays (the caller puts an idempotency key at most
-- once in one statement); one row per element comes back, `n` its position. A run whose key is
-- taken is not inserted (`created` false). The run holding the key comes along when
-- this statement's snapshot sees it; when it was committed by a concurrent enqueue after the
-- snapshot (ON CONFLICT waited for it), the caller reads it with find_by_idempotency_key.
WITH req AS (
    SELECT *
    FROM unnest(:ids::text[], :nows::bigint[], :workflows::text[], :versions::text[],
                :payloads::text[], :idempotency_keys::text[]) WITH ORDINALITY
         AS r(id, now, workflow, version, payload, idempotency_key, n)
),
inserted AS (
    INSERT INTO runs (id, workflow, version, state, payload, idempotency_key, last_seq,
                      created_at, updated_at)
    SELECT id, workflow, version, 'pending', payload::json, idempotency_key, 1,
           aiki_now_ms(now), aiki_now_ms(now)
    FROM req
    ON CONFLICT (workflow, version, idempotency_key) WHERE idempotency_key IS NOT NULL
    DO NOTHING
    RETURNING id, workflow, version, created_at
),
known_workflow AS (
    INSERT INTO workflows (name, version, first_seen)
    SELECT workflow, version, min(created_at) FROM inserted GROUP BY workflow, version
    ON CONFLICT DO NOTHING
),
event AS (
    INSERT INTO history (run_id, seq, at, kind, state)
    SELECT id, 1, created_at, 'run_enqueued', 'pending' FROM inserted
)
SELECT req.n, inserted.id IS NOT NULL AS created, {existing.run_columns}
FROM req
LEFT JOIN inserted ON inserted.id = req.id
LEFT JOIN LATERAL (
    SELECT {run_columns}
    FROM runs
    WHERE inserted.id IS NULL
      AND workflow = req.workflow AND version = req.version
      AND idempotency_key = req.idempotency_key
) AS existing ON true;

-- name: enqueue_claimed
-- A new run (no idempotency key) created already claimed by a worker whose poll waits for
-- work: what `enqueue` and then `claim` would store, in one statement.
WITH clock AS (SELECT aiki_now_ms(:now) AS now),
inserted AS (
    INSERT INTO runs (id, workflow, version, state, payload, attempt, revision, worker_id,
                      lease_expires_at, last_seq, created_at, updated_at)
    SELECT :id, :workflow, :version, 'running', :payload::json, 1, 1, :worker_id,
           clock.now + :lease_ms, 2, clock.now, clock.now
    FROM clock
    RETURNING {run_columns}
),
known_workflow AS (
    INSERT INTO workflows (name, version, first_seen)
    SELECT workflow, version, created_at FROM inserted
    ON CONFLICT DO NOTHING
),
event AS (
    INSERT INTO history (run_id, seq, at, kind, state, data)
    SELECT id, 1, created_at, 'run_enqueued', 'pending', NULL FROM inserted
    UNION ALL
    SELECT id, 2, created_at, 'run_claimed', 'running',
           json_build_object('worker_id', worker_id, 'attempt', attempt)
    FROM inserted
)
SELECT {run_columns} FROM inserted;

-- name: get_history
SELECT seq, at, kind, state, data FROM history WHERE run_id = :run_id ORDER BY seq;

-- name: list_runs
-- `:after` is the last id of the previous page, or '~' (sorts after every id) for the first page.
SELECT {run_columns}
FROM runs
WHERE id < :after
ORDER BY id DESC
LIMIT :limit;

-- name: list_runs_by_workflow
SELECT {run_columns}
FROM runs
WHERE workflow = :workflow AND id < :after
ORDER BY id DESC
LIMIT :limit;

-- name: list_runs_by_state
SELECT {run_columns}
FROM runs
WHERE state = :state AND id < :after
ORDER BY id DESC
LIMIT :limit;

-- name: list_runs_by_workflow_and_state
SELECT {run_columns}
FROM runs
WHERE workflow = :workflow AND state = :state AND id < :after
ORDER BY id DESC
LIMIT :limit;

-- name: claim
-- Per workflow key, the oldest pending runs no other claimer holds (an ordered scan of the
-- partial index runs_pending, skipping locked rows), merged oldest first. `state = 'pending'` is
-- spelled out so that the partial index applies. Locking a row checks the WHERE again on its
-- latest version, so a run claimed and committed since this statement's snapshot is skipped;
-- the lock then holds it until the UPDATE, which finds the picked rows by primary key (a plain
-- join let the planner scan every pending run).
WITH clock AS (SELECT aiki_now_ms(:now) AS now),
picked AS (
    SELECT candidate.id
    FROM unnest(:names::text[], :versions::text[]) AS k(name, version)
    CROSS JOIN LATERAL (
        SELECT id FROM runs
        -- (workflow, version) = (k.name, k.version), spelled as a range on purpose: with an
        -- equality the planner reduces the ORDER BY to `id`, which runs_by_state and the
        -- primary key also provide, and may then walk every pending (or every) run betting
        -- that this workflow's come first. Only runs_pending provides this order.
        WHERE state = 'pending'
          AND (workflow, version) >= (k.name, k.version)
          AND (workflow, version) <= (k.name, k.version)
        ORDER BY workflow, version, id
        LIMIT :limit
        FOR UPDATE SKIP LOCKED
    ) AS candidate
    ORDER BY candidate.id
    LIMIT :limit
),
claimed AS (
    UPDATE runs AS r
    -- Never before the run's last change: a claim's time is read before it runs, and a run
    -- woken meanwhile (at a later time) must not be claimed "before" it was due.
    SET state = 'running', revision = r.revision + 1, attempt = r.attempt + 1,
        worker_id = :worker_id,
        lease_expires_at = GREATEST(clock.now, r.updated_at) + :lease_ms,
        wait_kind = NULL, wait_until = NULL, wait_detail = NULL,
        updated_at = GREATEST(clock.now, r.updated_at),
        last_seq = r.last_seq + 1
    FROM clock
    WHERE r.id = ANY(ARRAY(SELECT id FROM picked))
    RETURNING {r.run_columns}, r.last_seq
),
event AS (
    INSERT INTO history (run_id, seq, at, kind, state, data)
    SELECT id, last_seq, updated_at, 'run_claimed', 'running',
           json_build_object('worker_id', worker_id, 'attempt', attempt)
    FROM claimed
)
SELECT {c.run_columns},
       t.tasks, t.digests, t.indexes, t.outcomes, t.attempts, t.results, t.errors
FROM claimed AS c
LEFT JOIN LATERAL (
    SELECT array_agg(task ORDER BY task, digest, idx) AS tasks,
           array_agg(digest ORDER BY task, digest, idx) AS digests,
           array_agg(idx ORDER BY task, digest, idx) AS indexes,
           array_agg(outcome ORDER BY task, digest, idx) AS outcomes,
           array_agg(attempts ORDER BY task, digest, idx) AS attempts,
           array_agg(result::text ORDER BY task, digest, idx) AS results,
           array_agg(error::text ORDER BY task, digest, idx) AS errors
    FROM task_results
    WHERE run_id = c.id
) AS t ON true
ORDER BY c.id;

-- name: heartbeat
-- Leases come as two arrays in the caller's order; the reply keeps that order. The runs are
-- found by primary key and only then checked for their state, as in start_task.
WITH clock AS (SELECT aiki_now_ms(:now) AS now),
lease AS (
    SELECT * FROM unnest(:ids::text[], :revisions::bigint[]) WITH ORDINALITY AS l(id, revision, n)
),
locked AS MATERIALIZED (
    SELECT r.id, r.state
    FROM runs AS r JOIN lease ON lease.id = r.id
    WHERE r.id = ANY(:ids::text[]) AND r.revision = lease.revision
    FOR UPDATE OF r
),
extended AS (
    UPDATE runs AS r SET lease_expires_at = clock.now + :lease_ms
    FROM locked, clock
    WHERE r.id = locked.id AND locked.state = 'running'
    RETURNING r.id, r.cancel_requested
),
worker AS (
    INSERT INTO workers (id, workflows, last_seen, alive_until)
    SELECT :worker_id, '[]', now, now + :lease_ms FROM clock
    ON CONFLICT (id) DO UPDATE
    SET last_seen = excluded.last_seen, alive_until = excluded.alive_until
)
SELECT lease.id, extended.id IS NOT NULL AS held, extended.cancel_requested
FROM lease LEFT JOIN extended ON extended.id = lease.id
ORDER BY lease.n;

-- name: start_task
-- Task starts, one per element of the arrays (at most one per run), each taken only if its
-- lease is current and the run running: the rows returned are those taken, `n` their
-- position. A start that is already the run's last event is the same start sent again (its
-- reply was lost): it is taken, and written no second time. The runs are locked by primary
-- key (and revision), and only then checked for their state: a condition on the state in the
-- same scan lets the planner look them up through runs_by_state or runs_lease_due instead,
-- reading every running run to find these few.
WITH req AS (
    SELECT *
    FROM unnest(:ids::text[], :revisions::bigint[], :nows::bigint[], :tasks::text[],
                :digests::text[], :indexes::int[], :attempts::int[], :data::text[])
         WITH ORDINALITY AS r(id, revision, now, task, digest, idx, attempt, data, n)
),
locked AS MATERIALIZED (
    SELECT req.*, runs.state, runs.last_seq
    FROM req JOIN runs ON runs.id = req.id
    WHERE runs.id = ANY(:ids::text[]) AND runs.revision = req.revision
    FOR UPDATE OF runs
),
held AS (SELECT * FROM locked WHERE state = 'running'),
fresh AS (
    SELECT * FROM held
    WHERE NOT EXISTS (
        SELECT 1 FROM history AS h
        WHERE h.run_id = held.id AND h.seq = held.last_seq AND h.kind = 'task_started'
          AND h.data ->> 'task' = held.task AND h.data ->> 'digest' = held.digest
          AND (h.data ->> 'index')::int = held.idx AND (h.data ->> 'attempt')::int = held.attempt
    )
),
written AS (
    UPDATE runs SET last_seq = runs.last_seq + 1
    FROM fresh
    WHERE runs.id = fresh.id
    RETURNING runs.id, runs.last_seq, aiki_now_ms(fresh.now) AS at, fresh.data
),
event AS (
    INSERT INTO history (run_id, seq, at, kind, state, data)
    SELECT id, last_seq, at, 'task_started', 'running', data::json FROM written
)
SELECT n FROM held;

-- name: finish_task
-- Task ends, one per element of the arrays (at most one per run), each taken only if its
-- lease is current and the run running (checked as in start_task): the rows returned are
-- those taken, `n` their position. An end whose outcome and attempt are already recorded for
-- its task is the same end sent again (its reply was lost): it is taken, and written no second
-- time. A `start_data` is the attempt's start event when the worker did not write it (a quick
-- task): it gets the seq before the end's.
WITH req AS (
    SELECT *
    FROM unnest(:ids::text[], :revisions::bigint[], :nows::bigint[], :tasks::text[],
                :digests::text[], :indexes::int[], :outcomes::text[], :attempts::int[],
                :results::text[], :errors::text[], :kinds::text[], :data::text[],
                :start_data::text[]) WITH ORDINALITY
         AS r(id, revision, now, task, digest, idx, outcome, attempts, result, error, kind, data,
              start_data, n)
),
locked AS MATERIALIZED (
    SELECT req.*, runs.state, runs.cancel_requested
    FROM req JOIN runs ON runs.id = req.id
    WHERE runs.id = ANY(:ids::text[]) AND runs.revision = req.revision
    FOR UPDATE OF runs
),
held AS (SELECT * FROM locked WHERE state = 'running'),
fresh AS (
    SELECT * FROM held
    WHERE NOT EXISTS (
        SELECT 1 FROM task_results AS t
        WHERE t.run_id = held.id AND t.task = held.task AND t.digest = held.digest
          AND t.idx = held.idx AND t.outcome = held.outcome AND t.attempts = held.attempts
    )
),
written AS (
    UPDATE runs SET last_seq = runs.last_seq + 1 + (fresh.start_data IS NOT NULL)::int
    FROM fresh
    WHERE runs.id = fresh.id
    RETURNING runs.id, runs.last_seq, aiki_now_ms(fresh.now) AS at, fresh.task, fresh.digest,
              fresh.idx, fresh.outcome, fresh.attempts, fresh.result, fresh.error, fresh.kind,
              fresh.data, fresh.start_data
),
recorded AS (
    INSERT INTO task_results (run_id, task, digest, idx, outcome, attempts, result, error,
                              updated_at)
    SELECT id, task, digest, idx, outcome, attempts, result::json, error::json, at
    FROM written
    ON CONFLICT (run_id, task, digest, idx) DO UPDATE
    SET outcome = excluded.outcome, attempts = excluded.attempts, result = excluded.result,
        error = excluded.error, updated_at = excluded.updated_at
),
event AS (
    INSERT INTO history (run_id, seq, at, kind, state, data)
    SELECT id, last_seq - 1, at, 'task_started', 'running', start_data::json
    FROM written
    WHERE start_data IS NOT NULL
    UNION ALL
    SELECT id, last_seq, at, kind, 'running', data::json FROM written
)
SELECT n, cancel_requested FROM held;

-- name: suspend
-- `:allowed` lists the states the state machine lets a run suspend from. `cur` is the
-- run as this statement's snapshot sees it, for the error when nothing changed.
WITH clock AS (SELECT aiki_now_ms(:now) AS now),
cur AS (SELECT state, revision FROM runs WHERE id = :id),
changed AS (
    UPDATE runs
    SET state = 'waiting', revision = revision + 1,
        wait_kind = :wait_kind, wait_until = :wait_until, wait_detail = :wait_detail,
        worker_id = NULL, lease_expires_at = NULL, updated_at = clock.now,
        last_seq = last_seq + 1
    FROM clock
    WHERE id = :id AND revision = :revision AND state = ANY(:allowed::text[])
    RETURNING id, last_seq, updated_at
),
event AS (
    INSERT INTO history (run_id, seq, at, kind, state, data)
    SELECT id, last_seq, updated_at, 'run_waiting', 'waiting', :data FROM changed
)
SELECT (SELECT count(*) FROM changed) AS changed, cur.state, cur.revision
FROM (SELECT 1) AS one LEFT JOIN cur ON true;

-- name: release
-- The worker that held the run is read from the snapshot: it cannot have changed if the
-- revision still matches (only a claim sets it, and a claim bumps the revision).
WITH clock AS (SELECT aiki_now_ms(:now) AS now),
cur AS (SELECT state, revision, worker_id FROM runs WHERE id = :id),
changed AS (
    UPDATE runs
    SET state = 'pending', revision = revision + 1,
        wait_kind = NULL, wait_until = NULL, wait_detail = NULL,
        worker_id = NULL, lease_expires_at = NULL, updated_at = clock.now,
        last_seq = last_seq + 1
    FROM clock
    WHERE id = :id AND revision = :revision AND state = ANY(:allowed::text[])
    RETURNING id, last_seq, updated_at
),
event AS (
    INSERT INTO history (run_id, seq, at, kind, state, data)
    SELECT changed.id, changed.last_seq, changed.updated_at, 'run_released', 'pending',
           json_build_object('worker_id', cur.worker_id)
    FROM changed, cur
)
SELECT (SELECT count(*) FROM changed) AS changed, cur.state, cur.revision
FROM (SELECT 1) AS one LEFT JOIN cur ON true;

-- name: finish
-- Runs to end, one per element of the arrays (at most one per run): completed, failed or
-- cancelled, each from the states its `allowed` lists (comma-separated, from the state
-- machine); the lease and any wait end with it. A cancelled run's event names its reason: the
-- one given, else the one its cancel request gave. One row per element comes back, `n` its
-- position: the run as this statement's snapshot saw it (`cur_*` columns: why nothing changed,
-- or what an end sent again finds) and, if it changed, as it is now (NULL if it did not).
-- `ends` (a JSON array, or NULL) holds task ends not written yet, recorded before the run's
-- end, in order, only if the run's end is: each as finish_task records it, with its start
-- event first when it has `start_data`.
WITH req AS (
    SELECT *
    FROM unnest(:ids::text[], :revisions::bigint[], :nows::bigint[], :allowed::text[],
                :states::text[], :kinds::text[], :results::text[], :errors::text[],
                :reasons::text[], :error_data::text[], :ends::text[]) WITH ORDINALITY
         AS r(id, revision, now, allowed, state, kind, result, error, reason, error_data, ends,
              n)
),
req_end AS (
    -- `upto`: the history events the run's ends up to this one take (an end, and its start).
    SELECT req.n, e.value ->> 'task' AS task, e.value ->> 'digest' AS digest,
           (e.value ->> 'idx')::int AS idx, e.value ->> 'outcome' AS outcome,
           (e.value ->> 'attempts')::int AS attempts, e.value ->> 'result' AS result,
           e.value ->> 'error' AS error, e.value ->> 'kind' AS kind,
           e.value ->> 'data' AS data, e.value ->> 'start_data' AS start_data,
           sum(1 + (e.value ->> 'start_data' IS NOT NULL)::int)
               OVER (PARTITION BY req.n ORDER BY e.ord) AS upto
    FROM req, json_array_elements(req.ends::json) WITH ORDINALITY AS e(value, ord)
    WHERE req.ends IS NOT NULL
),
end_events AS (SELECT n, max(upto) AS events FROM req_end GROUP BY n),
cur AS (
    SELECT {run_columns}
    FROM runs
    WHERE id = ANY(:ids::text[])
),
changed AS (
    UPDATE runs
    SET state = req.state, revision = runs.revision + 1, result = req.result::json,
        error = req.error::json, cancel_reason = COALESCE(req.reason, runs.cancel_reason),
        wait_kind = NULL, wait_until = NULL, wait_detail = NULL,
        worker_id = NULL, lease_expires_at = NULL, updated_at = aiki_now_ms(req.now),
        last_seq = runs.last_seq + 1
                   + COALESCE((SELECT events FROM end_events WHERE end_events.n = req.n), 0)
    FROM req
    WHERE runs.id = ANY(:ids::text[])
      AND runs.id = req.id AND runs.revision = req.revision
      AND runs.state = ANY(string_to_array(req.allowed, ','))
    RETURNING req.n, req.kind, req.error_data, {runs.run_columns}, runs.last_seq
),
ended_task AS (
    -- The run's end takes the last seq; its task ends the ones before, in order.
    SELECT changed.id, changed.updated_at AS at,
           changed.last_seq - 1 - end_events.events + req_end.upto AS seq, req_end.*
    FROM changed
    JOIN req_end ON req_end.n = changed.n
    JOIN end_events ON end_events.n = changed.n
),
recorded AS (
    INSERT INTO task_results (run_id, task, digest, idx, outcome, attempts, result, error,
                              updated_at)
    SELECT id, task, digest, idx, outcome, attempts, result::json, error::json, at
    FROM ended_task
    ON CONFLICT (run_id, task, digest, idx) DO UPDATE
    SET outcome = excluded.outcome, attempts = excluded.attempts, result = excluded.result,
        error = excluded.error, updated_at = excluded.updated_at
),
event AS (
    INSERT INTO history (run_id, seq, at, kind, state, data)
    SELECT id, seq - 1, at, 'task_started', 'running', start_data::json
    FROM ended_task
    WHERE start_data IS NOT NULL
    UNION ALL
    SELECT id, seq, at, kind, 'running', data::json FROM ended_task
    UNION ALL
    SELECT id, last_seq, updated_at, kind, state,
           CASE
               WHEN state <> 'cancelled' THEN error_data::json
               WHEN error IS NULL THEN json_build_object('reason', cancel_reason)
               ELSE json_build_object('error', error, 'reason', cancel_reason)
           END
    FROM changed
)
SELECT req.n, {changed.run_columns}, {cur.run_columns AS cur_*}
FROM req
LEFT JOIN cur ON cur.id = req.id
LEFT JOIN changed ON changed.n = req.n;

-- name: cancel
-- A running run is flagged for its worker (once); a pending or waiting one (`:allowed`) ends
-- now; any other is returned as it is. At most one of `flagged` and `ended` matches the row.
-- When neither changed a run that the snapshot shows could change, a concurrent write moved
-- it first: the caller runs this again.
WITH clock AS (SELECT aiki_now_ms(:now) AS now),
flagged AS (
    UPDATE runs SET cancel_requested = true, cancel_reason = :reason, updated_at = clock.now,
                    last_seq = last_seq + 1
    FROM clock
    WHERE id = :id AND state = 'running' AND NOT cancel_requested
    RETURNING {run_columns}, last_seq
),
ended AS (
    UPDATE runs
    SET state = 'cancelled', revision = revision + 1, result = NULL, error = NULL,
        cancel_reason = COALESCE(:reason, cancel_reason),
        wait_kind = NULL, wait_until = NULL, wait_detail = NULL,
        worker_id = NULL, lease_expires_at = NULL, updated_at = clock.now,
        last_seq = last_seq + 1
    FROM clock
    WHERE id = :id AND state = ANY(:allowed::text[])
    RETURNING {run_columns}, last_seq
),
event AS (
    INSERT INTO history (run_id, seq, at, kind, state, data)
    SELECT id, last_seq, updated_at, 'cancel_requested', 'running',
           json_build_object('reason', :reason::text)
    FROM flagged
    UNION ALL
    SELECT id, last_seq, updated_at, 'run_cancelled', 'cancelled',
           json_build_object('reason', :reason::text)
    FROM ended
)
SELECT true AS changed, {run_columns}
FROM flagged
UNION ALL
SELECT true, {run_columns}
FROM ended
UNION ALL
SELECT false, {run_columns}
FROM runs
WHERE id = :id AND NOT EXISTS (SELECT 1 FROM flagged) AND NOT EXISTS (SELECT 1 FROM ended);

-- name: timers_due
-- The cheap look before fire_timers takes any lock: the clock and the earliest due times.
-- ORDER BY ... LIMIT 1 reads one entry of each partial index.
SELECT aiki_now_ms(:now) AS now,
       (SELECT wait_until FROM runs WHERE state = 'waiting'
        ORDER BY wait_until LIMIT 1) AS next_wait,
       (SELECT lease_expires_at FROM runs WHERE state = 'running'
        ORDER BY lease_expires_at LIMIT 1) AS next_lease;

-- name: lock_expired_leases
-- Runs whose lease passed, locked for this transaction (another server's timers skip them),
-- with the task events since their last claim: what the lost worker started and did not end.
SELECT r.id, r.worker_id, r.recovery_attempts, r.cancel_requested, r.cancel_reason,
       events.kinds, events.data
FROM (
    SELECT id, worker_id, recovery_attempts, cancel_requested, cancel_reason, lease_expires_at
    FROM runs
    WHERE state = 'running' AND lease_expires_at <= :now
    ORDER BY lease_expires_at, id
    LIMIT :limit
    FOR UPDATE SKIP LOCKED
) AS r
LEFT JOIN LATERAL (
    SELECT array_agg(h.kind ORDER BY h.seq) AS kinds, array_agg(h.data::text ORDER BY h.seq) AS data
    FROM history AS h
    WHERE h.run_id = r.id
      AND h.kind IN ('task_started', 'task_completed', 'task_failed')
      AND h.seq > (SELECT COALESCE(max(seq), 0) FROM history
                   WHERE run_id = r.id AND kind = 'run_claimed')
) AS events ON true
ORDER BY r.lease_expires_at, r.id;

-- name: lock_due_waits
SELECT id, wait_kind, wait_detail FROM runs
WHERE state = 'waiting' AND wait_until <= :now
ORDER BY wait_until, id
LIMIT :limit
FOR UPDATE SKIP LOCKED;

-- name: apply_timers
-- The changes fire_timers decided for the runs it locked, as parallel arrays: each run gets
-- its new state and one history event. `:recovered` is 1 for a lease that expired back to
-- pending; `:errors` is the error of a run that ends failed. The next due times leave out
-- the runs changed here (this statement's snapshot still shows them as they were).
WITH change AS (
    SELECT *
    FROM unnest(:ids::text[], :states::text[], :recovered::int[], :errors::text[],
                :kinds::text[], :data::text[]) AS c(id, state, recovered, error, kind, data)
),
changed AS (
    UPDATE runs AS r
    SET state = change.state, revision = r.revision + 1,
        recovery_attempts = r.recovery_attempts + change.recovered,
        result = CASE WHEN change.state IN ('completed', 'failed', 'cancelled') THEN NULL
                      ELSE r.result END,
        error = CASE WHEN change.state IN ('completed', 'failed', 'cancelled')
                     THEN change.error::json ELSE r.error END,
        wait_kind = NULL, wait_until = NULL, wait_detail = NULL,
        worker_id = NULL, lease_expires_at = NULL, updated_at = :now,
        last_seq = r.last_seq + 1
    FROM change
    WHERE r.id = ANY(:ids::text[]) AND r.id = change.id
    RETURNING r.id, r.last_seq
),
event AS (
    INSERT INTO history (run_id, seq, at, kind, state, data)
    SELECT changed.id, changed.last_seq, :now, change.kind, change.state, change.data::json
    FROM changed JOIN change ON change.id = changed.id
)
SELECT (SELECT wait_until FROM runs WHERE state = 'waiting' AND id <> ALL(:ids::text[])
        ORDER BY wait_until LIMIT 1) AS next_wait,
       (SELECT lease_expires_at FROM runs WHERE state = 'running' AND id <> ALL(:ids::text[])
        ORDER BY lease_expires_at LIMIT 1) AS next_lease;

-- name: register_worker
WITH clock AS (SELECT aiki_now_ms(:now) AS now),
worker AS (
    INSERT INTO workers (id, workflows, last_seen, alive_until)
    SELECT :id, :workflows, now, now + :lease_ms FROM clock
    ON CONFLICT (id) DO UPDATE
    SET workflows = excluded.workflows, last_seen = excluded.last_seen,
        alive_until = excluded.alive_until
)
INSERT INTO workflows (name, version, first_seen, registered_at, payload_schema)
SELECT k.name, k.version, clock.now, clock.now, k.payload_schema
FROM unnest(:names::text[], :versions::text[], :schemas::text[]) AS k(name, version, payload_schema),
    clock
ON CONFLICT (name, version) DO UPDATE
SET registered_at = coalesce(workflows.registered_at, excluded.registered_at),
    payload_schema = excluded.payload_schema;

-- name: unregister_worker
UPDATE workers SET alive_until = LEAST(alive_until, aiki_now_ms(:now)) WHERE id = :id;

-- name: list_workers
SELECT id, workflows, last_seen, alive_until, alive_until > aiki_now_ms(:now) AS alive
FROM workers
ORDER BY id;

-- name: served_versions
SELECT name, version, payload_schema FROM workflows
WHERE name = :name AND registered_at IS NOT NULL
ORDER BY version;

-- name: list_workflows
-- One row per workflow version: its run counts by state and its live workers, in id order.
WITH clock AS (SELECT aiki_now_ms(:now) AS now),
counts AS (
    SELECT workflow, version, array_agg(state) AS states, array_agg(n) AS counts
    FROM (SELECT workflow, version, state, count(*) AS n
          FROM runs GROUP BY workflow, version, state) AS per_state
    GROUP BY workflow, version
),
live AS (
    SELECT entry ->> 'name' AS name, entry ->> 'version' AS version,
           array_agg(DISTINCT w.id ORDER BY w.id) AS ids
    FROM workers AS w, clock, json_array_elements(w.workflows) AS entry
    WHERE w.alive_until > clock.now
    GROUP BY 1, 2
)
SELECT wf.name, wf.version, counts.states, counts.counts, live.ids
FROM workflows AS wf
LEFT JOIN counts ON counts.workflow = wf.name AND counts.version = wf.version
LEFT JOIN live ON live.name = wf.name AND live.version = wf.version
ORDER BY wf.name, wf.version;

-- name: lock_run_for_event
-- Locks the run for the whole send: a suspend of the run waits for the send to commit, so
-- the event is either seen by the suspend (which then wakes the run) or finds it waiting.
SELECT state, workflow, version, wait_kind, aiki_now_ms(:now) AS now
FROM runs WHERE id = :id
FOR UPDATE;

-- name: event_by_key
SELECT seq, data::text AS data FROM events
WHERE run_id = :run_id AND name = :event_name AND idempotency_key = :key;

-- name: insert_event
INSERT INTO events (run_id, name, data, idempotency_key, created_at)
VALUES (:run_id, :event_name, :data::json, :key, :now)
RETURNING seq;

-- name: event_sent
WITH bumped AS (
    UPDATE runs SET last_seq = last_seq + 1 WHERE id = :id RETURNING id, last_seq, state
)
INSERT INTO history (run_id, seq, at, kind, state, data)
SELECT id, last_seq, :now::bigint, 'event_sent', state, :data::json FROM bumped;

-- name: wake_for_event
-- A waiting run back to pending. With `:revision` and `:task` (after a suspend), only if it
-- has more events of that name than its recorded waits received: one sent while it ran.
WITH clock AS (SELECT aiki_now_ms(:now) AS now),
changed AS (
    UPDATE runs
    SET state = 'pending', revision = revision + 1,
        wait_kind = NULL, wait_until = NULL, wait_detail = NULL,
        worker_id = NULL, lease_expires_at = NULL, updated_at = clock.now,
        last_seq = last_seq + 1
    FROM clock
    WHERE id = :id AND state = 'waiting'
      AND (:revision::bigint IS NULL OR revision = :revision::bigint)
      AND (:task::text IS NULL
           OR (SELECT count(*) FROM events WHERE run_id = :id AND name = :event_name)
              > (SELECT count(*) FROM task_results
                 WHERE run_id = :id AND task = :task AND digest = :digest))
    RETURNING id, last_seq, updated_at
),
event AS (
    INSERT INTO history (run_id, seq, at, kind, state, data)
    SELECT id, last_seq, updated_at, 'run_woken', 'pending', :data::json FROM changed
)
SELECT count(*) FROM changed;

-- name: next_event
SELECT seq, name, data::text AS data FROM events
WHERE run_id = :run_id AND name = :event_name AND seq > :after_seq
ORDER BY seq
LIMIT 1;
