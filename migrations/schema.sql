-- The schema that migrations/*.sql build, as pg_dump --schema-only shows it (normalised).
-- Generated: do not edit. Refresh with `.venv/bin/python -m tests.support.schema` after adding a migration;
-- tests/migrations/test_schema.py fails while this file and the migrations disagree.

CREATE FUNCTION public.taskflow_outbox_notify() RETURNS trigger
    LANGUAGE plpgsql
    AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM new_rows WHERE dead_letter_pending AND dead_letter_seq IS NULL) THEN
        PERFORM pg_notify('taskflow_outbox', 'dead');
    ELSIF EXISTS (SELECT 1 FROM new_rows WHERE dispatch_pending) THEN
        PERFORM pg_notify('taskflow_outbox', '');
    END IF;
    RETURN NULL;
END;
$$;

CREATE FUNCTION public.taskflow_schedules_notify() RETURNS trigger
    LANGUAGE plpgsql
    AS $$
BEGIN
    PERFORM pg_notify('taskflow_schedules', '');
    RETURN NULL;
END;
$$;

CREATE FUNCTION public.taskflow_task_event_notify() RETURNS trigger
    LANGUAGE plpgsql
    AS $$
BEGIN
    IF TG_TABLE_NAME = 'tasks' THEN
        PERFORM pg_notify('taskflow_task_events',
                          'task:' || NEW.id || ':' || NEW.status || ':' || NEW.version);
    ELSE
        PERFORM pg_notify('taskflow_task_events',
                          'execution:' || NEW.task_id || ':' || NEW.attempt || ':' || NEW.status);
    END IF;
    RETURN NULL;
END;
$$;

CREATE TABLE public.bus_streams (
    name text NOT NULL,
    created text NOT NULL,
    updated_at timestamp with time zone DEFAULT now() NOT NULL
);

CREATE TABLE public.dead_letters (
    id uuid DEFAULT gen_random_uuid() NOT NULL,
    dedupe_key text NOT NULL,
    task_id uuid,
    type text,
    priority text,
    attempts integer,
    error text,
    reason text NOT NULL,
    subject text,
    raw bytea,
    trace_id text,
    status text DEFAULT 'open'::text NOT NULL,
    failed_at timestamp with time zone NOT NULL,
    recorded_at timestamp with time zone DEFAULT now() NOT NULL,
    resolved_at timestamp with time zone,
    CONSTRAINT dead_letters_status_check CHECK ((status = ANY (ARRAY['open'::text, 'replayed'::text, 'discarded'::text])))
);

CREATE TABLE public.schedules (
    name text NOT NULL,
    task_type text NOT NULL,
    payload jsonb DEFAULT '{}'::jsonb NOT NULL,
    priority text DEFAULT 'normal'::text NOT NULL,
    tags jsonb DEFAULT '{}'::jsonb NOT NULL,
    max_attempts integer,
    timeout_s double precision,
    cron text,
    timezone text DEFAULT 'UTC'::text NOT NULL,
    every_s double precision,
    missed text DEFAULT 'skip'::text NOT NULL,
    catch_up_max integer DEFAULT 10 NOT NULL,
    overlap text DEFAULT 'allow'::text NOT NULL,
    paused boolean DEFAULT false NOT NULL,
    next_fire_at timestamp with time zone NOT NULL,
    last_fire_at timestamp with time zone,
    last_task_id uuid,
    version bigint DEFAULT 1 NOT NULL,
    created_at timestamp with time zone DEFAULT now() NOT NULL,
    updated_at timestamp with time zone DEFAULT now() NOT NULL,
    CONSTRAINT schedules_catch_up_max_check CHECK (((catch_up_max >= 1) AND (catch_up_max <= 1000))),
    CONSTRAINT schedules_cron_check CHECK (((length(cron) >= 1) AND (length(cron) <= 256))),
    CONSTRAINT schedules_every_s_check CHECK ((every_s >= (1)::double precision)),
    CONSTRAINT schedules_max_attempts_check CHECK (((max_attempts >= 1) AND (max_attempts <= 100))),
    CONSTRAINT schedules_missed_check CHECK ((missed = ANY (ARRAY['skip'::text, 'catch_up'::text]))),
    CONSTRAINT schedules_name_check CHECK ((name ~ '^[A-Za-z0-9_.:-]{1,128}$'::text)),
    CONSTRAINT schedules_one_cadence CHECK (((cron IS NULL) <> (every_s IS NULL))),
    CONSTRAINT schedules_overlap_check CHECK ((overlap = ANY (ARRAY['allow'::text, 'skip'::text, 'queue'::text]))),
    CONSTRAINT schedules_priority_check CHECK ((priority = ANY (ARRAY['high'::text, 'normal'::text, 'low'::text]))),
    CONSTRAINT schedules_task_type_check CHECK ((task_type ~ '^[A-Za-z0-9_.:-]{1,128}$'::text)),
    CONSTRAINT schedules_timeout_s_check CHECK ((timeout_s > (0)::double precision)),
    CONSTRAINT schedules_timezone_check CHECK (((length(timezone) >= 1) AND (length(timezone) <= 64)))
)
WITH (fillfactor='50');

CREATE TABLE public.schema_migrations (
    version integer NOT NULL,
    name text NOT NULL,
    checksum text NOT NULL,
    applied_at timestamp with time zone DEFAULT now() NOT NULL
);

CREATE TABLE public.task_executions (
    id uuid DEFAULT gen_random_uuid() NOT NULL,
    task_id uuid NOT NULL,
    attempt integer NOT NULL,
    status text NOT NULL,
    worker_id text NOT NULL,
    error text,
    error_type text,
    started_at timestamp with time zone DEFAULT now() NOT NULL,
    finished_at timestamp with time zone,
    duration_ms double precision,
    lease_expires_at timestamp with time zone NOT NULL,
    CONSTRAINT task_executions_attempt_check CHECK ((attempt >= 1)),
    CONSTRAINT task_executions_status_check CHECK ((status = ANY (ARRAY['started'::text, 'succeeded'::text, 'failed'::text, 'abandoned'::text, 'interrupted'::text, 'cancelled'::text])))
);

CREATE TABLE public.tasks (
    id uuid NOT NULL,
    type text NOT NULL,
    payload jsonb DEFAULT '{}'::jsonb NOT NULL,
    priority text NOT NULL,
    status text NOT NULL,
    attempts integer DEFAULT 0 NOT NULL,
    failed_attempts integer DEFAULT 0 NOT NULL,
    max_attempts integer NOT NULL,
    version bigint DEFAULT 1 NOT NULL,
    last_error text,
    result jsonb,
    idempotency_key text,
    request_hash bytea,
    timeout_s double precision,
    tags jsonb DEFAULT '{}'::jsonb NOT NULL,
    trace_parent text,
    run_at timestamp with time zone DEFAULT now() NOT NULL,
    dispatch_pending boolean DEFAULT true NOT NULL,
    dispatch_seq integer DEFAULT 0 NOT NULL,
    dispatched_at timestamp with time zone,
    dead_letter_pending boolean DEFAULT false NOT NULL,
    created_at timestamp with time zone DEFAULT now() NOT NULL,
    updated_at timestamp with time zone DEFAULT now() NOT NULL,
    started_at timestamp with time zone,
    finished_at timestamp with time zone,
    schedule text,
    scheduled_for timestamp with time zone,
    stream_seq bigint,
    dead_letter_stream text,
    dead_letter_seq bigint,
    CONSTRAINT tasks_attempts_check CHECK ((attempts >= 0)),
    CONSTRAINT tasks_dead_letter_seq_pending CHECK ((dead_letter_pending OR ((dead_letter_seq IS NULL) AND (dead_letter_stream IS NULL)))),
    CONSTRAINT tasks_failed_attempts_check CHECK ((failed_attempts >= 0)),
    CONSTRAINT tasks_idempotency_key_check CHECK (((length(idempotency_key) >= 1) AND (length(idempotency_key) <= 255))),
    CONSTRAINT tasks_max_attempts_check CHECK (((max_attempts >= 1) AND (max_attempts <= 100))),
    CONSTRAINT tasks_priority_check CHECK ((priority = ANY (ARRAY['high'::text, 'normal'::text, 'low'::text]))),
    CONSTRAINT tasks_status_check CHECK ((status = ANY (ARRAY['queued'::text, 'processing'::text, 'retrying'::text, 'completed'::text, 'failed'::text, 'cancelled'::text]))),
    CONSTRAINT tasks_timeout_s_check CHECK ((timeout_s > (0)::double precision)),
    CONSTRAINT tasks_type_check CHECK ((type ~ '^[A-Za-z0-9_.:-]{1,128}$'::text))
);

ALTER TABLE ONLY public.bus_streams
    ADD CONSTRAINT bus_streams_pkey PRIMARY KEY (name);

ALTER TABLE ONLY public.dead_letters
    ADD CONSTRAINT dead_letters_dedupe_key_key UNIQUE (dedupe_key);

ALTER TABLE ONLY public.dead_letters
    ADD CONSTRAINT dead_letters_pkey PRIMARY KEY (id);

ALTER TABLE ONLY public.schedules
    ADD CONSTRAINT schedules_pkey PRIMARY KEY (name);

ALTER TABLE ONLY public.schema_migrations
    ADD CONSTRAINT schema_migrations_pkey PRIMARY KEY (version);

ALTER TABLE ONLY public.task_executions
    ADD CONSTRAINT task_executions_pkey PRIMARY KEY (id);

ALTER TABLE ONLY public.task_executions
    ADD CONSTRAINT task_executions_task_id_attempt_key UNIQUE (task_id, attempt);

ALTER TABLE ONLY public.tasks
    ADD CONSTRAINT tasks_pkey PRIMARY KEY (id);

ALTER TABLE public.tasks
    ADD CONSTRAINT tasks_schedule_tick_pair CHECK (((schedule IS NULL) = (scheduled_for IS NULL))) NOT VALID;

CREATE INDEX dead_letters_failed ON public.dead_letters USING btree (failed_at DESC, id DESC);

CREATE INDEX dead_letters_resolved ON public.dead_letters USING btree (resolved_at) WHERE (status <> 'open'::text);

CREATE INDEX dead_letters_task ON public.dead_letters USING btree (task_id);

CREATE INDEX dead_letters_type ON public.dead_letters USING btree (type, failed_at DESC);

CREATE INDEX task_executions_lease ON public.task_executions USING btree (lease_expires_at) WHERE (status = 'started'::text);

CREATE INDEX tasks_created ON public.tasks USING btree (created_at DESC, id DESC);

CREATE INDEX tasks_dead_letter_due ON public.tasks USING btree (updated_at) WHERE (dead_letter_pending AND (dead_letter_seq IS NULL));

CREATE INDEX tasks_dead_letter_on_bus ON public.tasks USING btree (dead_letter_seq) WHERE (dead_letter_pending AND (dead_letter_seq IS NOT NULL));

CREATE INDEX tasks_dispatch_due ON public.tasks USING btree (run_at) WHERE dispatch_pending;

CREATE INDEX tasks_finished ON public.tasks USING btree (status, finished_at) WHERE (status = ANY (ARRAY['completed'::text, 'failed'::text, 'cancelled'::text]));

CREATE UNIQUE INDEX tasks_idempotency_key ON public.tasks USING btree (idempotency_key) WHERE (idempotency_key IS NOT NULL);

CREATE INDEX tasks_priority_created ON public.tasks USING btree (priority, created_at DESC, id DESC);

CREATE INDEX tasks_schedule_created ON public.tasks USING btree (schedule, created_at DESC, id DESC) WHERE (schedule IS NOT NULL);

CREATE UNIQUE INDEX tasks_schedule_tick ON public.tasks USING btree (schedule, scheduled_for) WHERE (schedule IS NOT NULL);

CREATE INDEX tasks_status_created ON public.tasks USING btree (status, created_at DESC, id DESC);

CREATE INDEX tasks_tags ON public.tasks USING gin (tags jsonb_path_ops);

CREATE INDEX tasks_type_created ON public.tasks USING btree (type, created_at DESC, id DESC);

CREATE INDEX tasks_waiting_on_bus ON public.tasks USING btree (dispatched_at) WHERE ((status = ANY (ARRAY['queued'::text, 'retrying'::text])) AND (NOT dispatch_pending));

CREATE INDEX tasks_waiting_on_stream ON public.tasks USING btree (priority, stream_seq) WHERE ((status = ANY (ARRAY['queued'::text, 'retrying'::text])) AND (NOT dispatch_pending));

CREATE TRIGGER schedules_changed AFTER INSERT OR UPDATE OF version ON public.schedules FOR EACH STATEMENT EXECUTE FUNCTION public.taskflow_schedules_notify();

CREATE TRIGGER task_executions_status_event AFTER UPDATE OF status ON public.task_executions FOR EACH ROW WHEN (((old.status IS DISTINCT FROM new.status) AND (new.status <> 'succeeded'::text))) EXECUTE FUNCTION public.taskflow_task_event_notify();

CREATE TRIGGER tasks_outbox_insert AFTER INSERT ON public.tasks REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION public.taskflow_outbox_notify();

CREATE TRIGGER tasks_outbox_update AFTER UPDATE ON public.tasks REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION public.taskflow_outbox_notify();

CREATE TRIGGER tasks_status_event AFTER UPDATE OF status ON public.tasks FOR EACH ROW WHEN ((old.status IS DISTINCT FROM new.status)) EXECUTE FUNCTION public.taskflow_task_event_notify();

ALTER TABLE ONLY public.dead_letters
    ADD CONSTRAINT dead_letters_task_id_fkey FOREIGN KEY (task_id) REFERENCES public.tasks(id) ON DELETE SET NULL;

ALTER TABLE ONLY public.task_executions
    ADD CONSTRAINT task_executions_task_id_fkey FOREIGN KEY (task_id) REFERENCES public.tasks(id) ON DELETE CASCADE;
