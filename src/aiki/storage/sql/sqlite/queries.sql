-- Every statement the SQLite backend runs, by name (`-- name: NAME` opens a block).
-- Rows are read by column name; a run's columns are the fragment run_columns, the names
-- `_records.run_from_row` reads.

-- fragment: run_columns
id, workflow, version, state, payload, result, error, idempotency_key, attempt,
recovery_attempts, revision, wait_kind, wait_until, wait_detail, worker_id,
lease_expires_at, cancel_requested, cancel_reason, created_at, updated_at

-- name: get_run
SELECT {run_columns}
FROM runs
WHERE id = :id;

-- name: get_runs
-- `:ids`: a JSON array of run ids.
SELECT {run_columns}
FROM runs
WHERE id IN (SELECT value FROM json_each(:ids));

-- name: find_by_idempotency_key
SELECT {run_columns}
FROM runs
WHERE workflow = :workflow AND version = :version AND idempotency_key = :idempotency_key;

-- name: insert_run
INSERT INTO runs (id, workflow, version, state, payload, idempotency_key, created_at, updated_at)
VALUES (:id, :workflow, :version, 'pending', :payload, :idempotency_key, :now, :now);

-- name: insert_claimed_run
-- A new run already claimed (`claim_run` of a run just inserted).
INSERT INTO runs (id, workflow, version, state, payload, attempt, revision, worker_id,
                  lease_expires_at, created_at, updated_at)
VALUES (:id, :workflow, :version, 'running', :payload, 1, 1, :worker_id, :lease_expires_at,
        :now, :now)
RETURNING {run_columns};

-- name: insert_workflow
INSERT OR IGNORE INTO workflows (name, version, first_seen) VALUES (:name, :version, :now);

-- name: append_event
-- seq numbers each run's events 1, 2, 3...; the MAX is one seek at the end of the run's key range.
INSERT INTO history (run_id, seq, at, kind, state, data)
VALUES (:run_id,
        (SELECT COALESCE(MAX(seq), 0) + 1 FROM history WHERE run_id = :run_id),
        :at, :kind, :state, :data);

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

-- name: pending_ids
-- `state = 'pending'` spelled out so that the partial index runs_pending applies.
SELECT id FROM runs
WHERE state = 'pending' AND workflow = :workflow AND version = :version
ORDER BY id
LIMIT :limit;

-- name: claim_run
UPDATE runs
SET state = 'running', revision = revision + 1, attempt = attempt + 1,
    worker_id = :worker_id, lease_expires_at = :lease_expires_at,
    wait_kind = NULL, wait_until = NULL, wait_detail = NULL, updated_at = :now
WHERE id = :id AND state = 'pending'
RETURNING {run_columns};

-- name: task_results_of_runs
-- `:run_ids` is a JSON array of run ids: one statement for a whole claimed batch.
SELECT run_id, task, digest, idx, outcome, attempts, result, error
FROM task_results
WHERE run_id IN (SELECT value FROM json_each(:run_ids))
ORDER BY run_id, task, digest, idx;

-- name: lease_state
SELECT state, revision, cancel_requested, worker_id FROM runs WHERE id = :id;

-- name: extend_lease
UPDATE runs SET lease_expires_at = :lease_expires_at
WHERE id = :id AND revision = :revision AND state = 'running'
RETURNING cancel_requested;

-- name: touch_worker
INSERT INTO workers (id, workflows, last_seen, alive_until)
VALUES (:id, '[]', :now, :alive_until)
ON CONFLICT (id) DO UPDATE
SET last_seen = excluded.last_seen, alive_until = excluded.alive_until;

-- name: upsert_worker
INSERT INTO workers (id, workflows, last_seen, alive_until)
VALUES (:id, :workflows, :now, :alive_until)
ON CONFLICT (id) DO UPDATE
SET workflows = excluded.workflows, last_seen = excluded.last_seen,
    alive_until = excluded.alive_until;

-- name: unregister_worker
UPDATE workers SET alive_until = MIN(alive_until, :now) WHERE id = :id;

-- name: list_workers
SELECT id, workflows, last_seen, alive_until, alive_until > :now AS alive
FROM workers
ORDER BY id;

-- name: register_workflow
INSERT INTO workflows (name, version, first_seen, registered_at, payload_schema)
VALUES (:name, :version, :now, :now, :payload_schema)
ON CONFLICT (name, version) DO UPDATE
SET registered_at = coalesce(workflows.registered_at, excluded.registered_at),
    payload_schema = excluded.payload_schema;

-- name: served_versions
SELECT name, version, payload_schema FROM workflows
WHERE name = :name AND registered_at IS NOT NULL
ORDER BY version;

-- name: list_workflows
SELECT name, version FROM workflows ORDER BY name, version;

-- name: run_counts
SELECT workflow, version, state, count(*) AS n FROM runs GROUP BY workflow, version, state;

-- name: upsert_task_result
INSERT INTO task_results (run_id, task, digest, idx, outcome, attempts, result, error, updated_at)
VALUES (:run_id, :task, :digest, :idx, :outcome, :attempts, :result, :error, :now)
ON CONFLICT (run_id, task, digest, idx) DO UPDATE
SET outcome = excluded.outcome, attempts = excluded.attempts, result = excluded.result,
    error = excluded.error, updated_at = excluded.updated_at;

-- name: suspend_run
UPDATE runs
SET state = 'waiting', revision = revision + 1,
    wait_kind = :wait_kind, wait_until = :wait_until, wait_detail = :wait_detail,
    worker_id = NULL, lease_expires_at = NULL, updated_at = :now
WHERE id = :id;

-- name: requeue_run
-- Back to pending: a released run, or a woken one (`:recovered` 0), or one whose lease expired (1).
UPDATE runs
SET state = 'pending', revision = revision + 1, recovery_attempts = recovery_attempts + :recovered,
    wait_kind = NULL, wait_until = NULL, wait_detail = NULL,
    worker_id = NULL, lease_expires_at = NULL, updated_at = :now
WHERE id = :id;

-- name: end_run
-- Completed, failed or cancelled: a final state; the lease and any wait end with it.
UPDATE runs
SET state = :state, revision = revision + 1, result = :result, error = :error,
    cancel_reason = COALESCE(:reason, cancel_reason),
    wait_kind = NULL, wait_until = NULL, wait_detail = NULL,
    worker_id = NULL, lease_expires_at = NULL, updated_at = :now
WHERE id = :id
RETURNING {run_columns};

-- name: request_cancel
UPDATE runs SET cancel_requested = 1, cancel_reason = :reason, updated_at = :now
WHERE id = :id
RETURNING {run_columns};

-- name: due_waits
-- INDEXED BY: without statistics the planner would take runs_by_state and sort every waiting run.
SELECT id, wait_kind, wait_detail FROM runs INDEXED BY runs_wait_due
WHERE state = 'waiting' AND wait_until <= :now
ORDER BY wait_until
LIMIT :limit;

-- name: expired_leases
SELECT id, worker_id, recovery_attempts, cancel_requested, cancel_reason
FROM runs INDEXED BY runs_lease_due
WHERE state = 'running' AND lease_expires_at <= :now
ORDER BY lease_expires_at
LIMIT :limit;

-- name: task_events_of_attempt
-- The task events since the run's last claim: what its lost worker started and did not finish.
SELECT kind, data FROM history
WHERE run_id = :run_id
  AND kind IN ('task_started', 'task_completed', 'task_failed')
  AND seq > (SELECT COALESCE(MAX(seq), 0) FROM history
             WHERE run_id = :run_id AND kind = 'run_claimed')
ORDER BY seq;

-- name: next_wait_due
SELECT MIN(wait_until) AS due FROM runs INDEXED BY runs_wait_due WHERE state = 'waiting';

-- name: next_lease_due
SELECT MIN(lease_expires_at) AS due FROM runs INDEXED BY runs_lease_due WHERE state = 'running';

-- name: task_result_state
SELECT outcome, attempts FROM task_results
WHERE run_id = :run_id AND task = :task AND digest = :digest AND idx = :idx;

-- name: last_event
SELECT kind, data FROM history WHERE run_id = :run_id ORDER BY seq DESC LIMIT 1;

-- name: run_for_event
SELECT state, workflow, version, wait_kind FROM runs WHERE id = :id;

-- name: event_by_key
SELECT seq, data FROM events WHERE run_id = :run_id AND name = :name AND idempotency_key = :key;

-- name: insert_event
INSERT INTO events (run_id, name, data, idempotency_key, created_at)
VALUES (:run_id, :name, :data, :key, :now)
RETURNING seq;

-- name: next_event
SELECT seq, name, data FROM events
WHERE run_id = :run_id AND name = :name AND seq > :after_seq
ORDER BY seq
LIMIT 1;

-- name: unconsumed_event
-- Whether the run has more events of this name than its recorded waits have received.
SELECT ((SELECT count(*) FROM events WHERE run_id = :run_id AND name = :name)
     > (SELECT count(*) FROM task_results
        WHERE run_id = :run_id AND task = :task AND digest = :digest)) AS unconsumed;
