-- Which workflow versions a worker has registered, and the JSON Schema of their payload.
-- An enqueue also adds its version to `workflows` (so it is listed with its runs), but only
-- a worker's registration makes a version known: enqueues of a version never registered are
-- refused unless the caller allows it. A database from before this migration cannot tell the
-- two apart, so its versions count as registered: nothing that was accepted stops working.

ALTER TABLE workflows ADD COLUMN registered_at INTEGER;
ALTER TABLE workflows ADD COLUMN payload_schema TEXT;
UPDATE workflows SET registered_at = first_seen;
