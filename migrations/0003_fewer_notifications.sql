-- Fewer notifications (issue 5): notify task events only for tasks somebody waits on,
-- and tell the dispatcher when a dead letter is pending.
--
-- Migration 0002 sent up to four pg_notify per task (claim: task status + execution
-- insert; completion: task status + execution status). Each notifying commit takes the
-- cluster-wide notify queue lock and wakes every LISTEN backend, which then runs a
-- transaction to read the queue, although almost nobody waits on almost every task.

-- 1. Who waits. The ingest API sets watched_until (now + a TTL, renewed while requests
--    wait; see services/ingest-api/.../waiters.py) with an UPDATE of the task row BEFORE
--    its first read of the task. That UPDATE takes the same row lock as every status
--    change, so a change either committed before the watch (the first read sees it) or
--    runs after it and sees watched_until in NEW (the trigger below notifies). Not
--    indexed: setting it touches no index a status change does not already touch.
ALTER TABLE tasks ADD COLUMN watched_until timestamptz;

-- 2. Task status changes notify only while the task is watched.
DROP TRIGGER tasks_status_event ON tasks;
CREATE TRIGGER tasks_status_event AFTER UPDATE OF status ON tasks
    FOR EACH ROW WHEN (OLD.status IS DISTINCT FROM NEW.status AND NEW.watched_until > now())
    EXECUTE FUNCTION taskflow_task_event_notify();

-- 3. Execution changes that happen in the same statement as a status change of their task
--    need no notification of their own: a listener re-reads the task and its executions
--    together. That holds for every execution insert (a claim inserts the execution in
--    the statement that moves the task to processing) and for every 'succeeded' (the
--    statement that completes the task). Any other execution status change may happen
--    alone (a cancel closes the running attempt after the task is cancelled; an orphan's
--    lease expiry; a failure fenced off the task) and still notifies, watched or not:
--    those are rare, and the task row is not locked by them, so the watch could race.
DROP TRIGGER task_executions_insert_event ON task_executions;
DROP TRIGGER task_executions_status_event ON task_executions;
CREATE TRIGGER task_executions_status_event AFTER UPDATE OF status ON task_executions
    FOR EACH ROW WHEN (OLD.status IS DISTINCT FROM NEW.status AND NEW.status <> 'succeeded')
    EXECUTE FUNCTION taskflow_task_event_notify();

-- 4. The dispatcher's channel says whether the statement left a dead letter pending
--    (payload 'dead'; else empty), so the dispatcher looks for dead letters only then
--    (and on its fallback poll) instead of on every pass. Still one NOTIFY per statement,
--    and none for the dispatcher's own updates that clear the flags.
CREATE OR REPLACE FUNCTION taskflow_outbox_notify() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM new_rows WHERE dead_letter_pending) THEN
        PERFORM pg_notify('taskflow_outbox', 'dead');
    ELSIF EXISTS (SELECT 1 FROM new_rows WHERE dispatch_pending) THEN
        PERFORM pg_notify('taskflow_outbox', '');
    END IF;
    RETURN NULL;
END;
$$;
