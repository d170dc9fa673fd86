-- Schedules and retention (issue 15).
--
-- 1. schedules: periodic tasks kept in Postgres. Every dispatcher runs the schedule loop;
--    a pass locks the due rows (FOR UPDATE SKIP LOCKED) and, in the same transaction,
--    inserts each tick's task and advances next_fire_at, so no leader is needed and a
--    tick is neither lost (the transaction commits or nothing happened) nor doubled.
-- 2. tasks.schedule / tasks.scheduled_for: the schedule and tick a task belongs to,
--    UNIQUE together, so a replayed tick cannot make a second task
--    (INSERT ... ON CONFLICT DO NOTHING).
-- 3. Indexes for the dispatcher's pruner: terminal tasks by finish time, resolved dead
--    letters by resolution time.
--
-- HOT updates: a tick updates only next_fire_at, last_fire_at and last_task_id, none of
-- them indexed, and the table keeps half of each page free (fillfactor 50), so those
-- updates stay heap-only: the primary key never bloats however often a schedule fires.
-- The due scan is therefore a sequential scan; schedules are few (operators make them),
-- and a pass reads at most a few hundred rows. The tasks indexes below use columns that
-- never change after insert (schedule, scheduled_for) or change only together with
-- status (finished_at), which tasks_status_created already indexes: no task update that
-- was heap-only before stops being so.
--
-- On a large existing tasks table the index builds below block task writes while they
-- run. They are IF NOT EXISTS so an operator can build them first with CREATE INDEX
-- CONCURRENTLY under the same names; this migration then only adds what is missing.

CREATE TABLE schedules (
    name          text PRIMARY KEY CHECK (name ~ '^[A-Za-z0-9_.:-]{1,128}$'),
    -- The task template: what every tick submits (the same checks as tasks' columns).
    -- max_attempts NULL: the dispatcher's WORKER_MAX_ATTEMPTS when the tick fires.
    task_type     text NOT NULL CHECK (task_type ~ '^[A-Za-z0-9_.:-]{1,128}$'),
    payload       jsonb NOT NULL DEFAULT '{}'::jsonb,
    priority      text NOT NULL DEFAULT 'normal' CHECK (priority IN ('high', 'normal', 'low')),
    tags          jsonb NOT NULL DEFAULT '{}'::jsonb,
    max_attempts  integer CHECK (max_attempts BETWEEN 1 AND 100),
    timeout_s     double precision CHECK (timeout_s > 0),
    -- The cadence: a cron expression (5 fields, or 6 with seconds first) read in the
    -- IANA zone `timezone`, or a fixed interval of every_s seconds (timezone 'UTC').
    -- Validated by taskflow_common.cadence before it is stored.
    cron          text CHECK (length(cron) BETWEEN 1 AND 256),
    timezone      text NOT NULL DEFAULT 'UTC' CHECK (length(timezone) BETWEEN 1 AND 64),
    every_s       double precision CHECK (every_s >= 1),
    CONSTRAINT schedules_one_cadence CHECK ((cron IS NULL) <> (every_s IS NULL)),
    -- Policies (taskflow_common.ticks): missed ticks, and ticks whose last run is going.
    missed        text NOT NULL DEFAULT 'skip' CHECK (missed IN ('skip', 'catch_up')),
    catch_up_max  integer NOT NULL DEFAULT 10 CHECK (catch_up_max BETWEEN 1 AND 1000),
    overlap       text NOT NULL DEFAULT 'allow' CHECK (overlap IN ('allow', 'skip', 'queue')),
    paused        boolean NOT NULL DEFAULT false,
    -- The next tick to process (in the past while a tick waits under overlap 'queue',
    -- while paused, or while every dispatcher is down); the last tick that made a task
    -- and that task (no foreign key: the pruner may delete it; readers LEFT JOIN).
    next_fire_at  timestamptz NOT NULL,
    last_fire_at  timestamptz,
    last_task_id  uuid,
    -- Bumped by every change a client makes (never by a tick): the schedule loop
    -- listens for those (below).
    version       bigint NOT NULL DEFAULT 1,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now()
) WITH (fillfactor = 50);

-- Wake the schedule loops when a client creates or changes a schedule (LISTEN
-- taskflow_schedules): a new schedule's first tick, or a resumed one, is then found at
-- once instead of at the loop's next poll. A tick's own update does not set version and
-- notifies nothing.
CREATE FUNCTION taskflow_schedules_notify() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('taskflow_schedules', '');
    RETURN NULL;
END;
$$;

CREATE TRIGGER schedules_changed AFTER INSERT OR UPDATE OF version ON schedules
    FOR EACH STATEMENT EXECUTE FUNCTION taskflow_schedules_notify();

-- The tick a task belongs to. Both NULL for tasks not made by a schedule. NOT VALID:
-- every existing row is NULL in both, so the check needs no scan; new rows are checked.
ALTER TABLE tasks
    ADD COLUMN schedule text,
    ADD COLUMN scheduled_for timestamptz,
    ADD CONSTRAINT tasks_schedule_tick_pair
        CHECK ((schedule IS NULL) = (scheduled_for IS NULL)) NOT VALID;

-- One task per (schedule, tick): the schedule loop's ON CONFLICT target.
CREATE UNIQUE INDEX IF NOT EXISTS tasks_schedule_tick ON tasks (schedule, scheduled_for)
    WHERE schedule IS NOT NULL;
-- GET /api/v1/tasks?schedule=name, newest first like every task list.
CREATE INDEX IF NOT EXISTS tasks_schedule_created ON tasks (schedule, created_at DESC, id DESC)
    WHERE schedule IS NOT NULL;

-- Retention: terminal tasks of one status, oldest finish first (one range scan per
-- status and batch; min(finished_at) per status for the oldest-task gauge).
CREATE INDEX IF NOT EXISTS tasks_finished ON tasks (status, finished_at)
    WHERE status IN ('completed', 'failed', 'cancelled');
-- Retention of dead letters: resolved ones (replayed, discarded) by resolution time.
-- Open dead letters are never pruned and are not in this index.
CREATE INDEX IF NOT EXISTS dead_letters_resolved ON dead_letters (resolved_at)
    WHERE status <> 'open';
