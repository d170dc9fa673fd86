-- TaskFlow schema: tasks, their attempts (executions) and dead letters.
-- All timestamps come from the database clock (now()) and are timestamptz.

CREATE TABLE tasks (
    id                  uuid PRIMARY KEY,
    type                text NOT NULL CHECK (type ~ '^[A-Za-z0-9_.:-]{1,128}$'),
    payload             jsonb NOT NULL DEFAULT '{}'::jsonb,
    priority            text NOT NULL CHECK (priority IN ('high', 'normal', 'low')),
    status              text NOT NULL CHECK (status IN
                            ('queued', 'processing', 'retrying', 'completed', 'failed', 'cancelled')),
    -- attempts: runs started so far; execution rows are numbered 1..attempts.
    attempts            integer NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    -- failed_attempts: runs that count against max_attempts (failed, timed out, abandoned).
    -- Interrupted (graceful shutdown) and cancelled runs do not count.
    failed_attempts     integer NOT NULL DEFAULT 0 CHECK (failed_attempts >= 0),
    max_attempts        integer NOT NULL CHECK (max_attempts BETWEEN 1 AND 100),
    version             bigint NOT NULL DEFAULT 1,
    last_error          text,
    result              jsonb,
    idempotency_key     text CHECK (length(idempotency_key) BETWEEN 1 AND 255),
    request_hash        bytea,
    timeout_s           double precision CHECK (timeout_s > 0),
    tags                jsonb NOT NULL DEFAULT '{}'::jsonb,
    trace_parent        text,
    -- Outbox: a task is due for publishing when dispatch_pending and run_at <= now().
    -- dispatch_seq counts publishes; a message carries it, and only the current one claims.
    run_at              timestamptz NOT NULL DEFAULT now(),
    dispatch_pending    boolean NOT NULL DEFAULT true,
    dispatch_seq        integer NOT NULL DEFAULT 0,
    dispatched_at       timestamptz,
    -- Outbox for tasks.dlq: set when a task fails for good, cleared after the PubAck.
    dead_letter_pending boolean NOT NULL DEFAULT false,
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now(),
    started_at          timestamptz,
    finished_at         timestamptz
);

CREATE UNIQUE INDEX tasks_idempotency_key ON tasks (idempotency_key)
    WHERE idempotency_key IS NOT NULL;
CREATE INDEX tasks_created ON tasks (created_at DESC, id DESC);
CREATE INDEX tasks_status_created ON tasks (status, created_at DESC, id DESC);
CREATE INDEX tasks_type_created ON tasks (type, created_at DESC, id DESC);
CREATE INDEX tasks_priority_created ON tasks (priority, created_at DESC, id DESC);
CREATE INDEX tasks_tags ON tasks USING gin (tags jsonb_path_ops);
CREATE INDEX tasks_dispatch_due ON tasks (run_at) WHERE dispatch_pending;
CREATE INDEX tasks_dead_letter_due ON tasks (updated_at) WHERE dead_letter_pending;
-- Published but not yet claimed: scanned when the stream is found recreated (empty store).
CREATE INDEX tasks_waiting_on_bus ON tasks (dispatched_at)
    WHERE status IN ('queued', 'retrying') AND NOT dispatch_pending;

CREATE TABLE task_executions (
    id               uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    task_id          uuid NOT NULL REFERENCES tasks (id) ON DELETE CASCADE,
    attempt          integer NOT NULL CHECK (attempt >= 1),
    status           text NOT NULL CHECK (status IN
                         ('started', 'succeeded', 'failed', 'abandoned', 'interrupted', 'cancelled')),
    worker_id        text NOT NULL,
    error            text,
    error_type       text,
    started_at       timestamptz NOT NULL DEFAULT now(),
    finished_at      timestamptz,
    duration_ms      double precision,
    -- The worker renews the lease while the handler runs; an expired lease on a
    -- 'started' row means its worker is gone (or frozen) and the attempt is abandoned.
    lease_expires_at timestamptz NOT NULL,
    UNIQUE (task_id, attempt)
);

CREATE INDEX task_executions_lease ON task_executions (lease_expires_at)
    WHERE status = 'started';

CREATE TABLE dead_letters (
    id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    -- The Nats-Msg-Id of the dead-letter message: recording is idempotent on redelivery.
    dedupe_key  text NOT NULL UNIQUE,
    task_id     uuid REFERENCES tasks (id) ON DELETE SET NULL,
    type        text,
    priority    text,
    attempts    integer,
    error       text,
    reason      text NOT NULL,
    subject     text,
    raw         bytea,
    trace_id    text,
    status      text NOT NULL DEFAULT 'open' CHECK (status IN ('open', 'replayed', 'discarded')),
    failed_at   timestamptz NOT NULL,
    recorded_at timestamptz NOT NULL DEFAULT now(),
    resolved_at timestamptz
);

CREATE INDEX dead_letters_failed ON dead_letters (failed_at DESC, id DESC);
CREATE INDEX dead_letters_task ON dead_letters (task_id);
CREATE INDEX dead_letters_type ON dead_letters (type, failed_at DESC);

-- Wake the dispatcher as soon as a due task is committed (LISTEN taskflow_outbox).
-- Statement-level with a transition table: one NOTIFY per statement, and none for the
-- dispatcher's own updates that clear the flags.
CREATE FUNCTION taskflow_outbox_notify() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM new_rows WHERE dispatch_pending OR dead_letter_pending) THEN
        PERFORM pg_notify('taskflow_outbox', '');
    END IF;
    RETURN NULL;
END;
$$;

CREATE TRIGGER tasks_outbox_insert AFTER INSERT ON tasks
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION taskflow_outbox_notify();
CREATE TRIGGER tasks_outbox_update AFTER UPDATE ON tasks
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION taskflow_outbox_notify();
