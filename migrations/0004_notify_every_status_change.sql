-- Every task status change notifies again (issue 5 follow-up; replaces the "watched
-- tasks" scheme of migration 0003).
--
-- 0003 let a task's status changes notify only while a waiter had marked the task
-- watched (tasks.watched_until), set by an UPDATE of the task row before the waiter's
-- first read. That UPDATE waits for the row lock, and the dispatcher holds due rows
-- locked while it waits for PubAcks: during a NATS outage a `?wait` or `/events` read
-- stalled up to the publish timeout (or answered 503 at the statement timeout), and the
-- renewals (SKIP LOCKED) could miss a busy row until its watch ran out, so an open event
-- stream missed the task's completion for good. Notifying every status change has no
-- such window and needs no write on the read path; with batched claims and completions
-- the listener reads the notifications of a whole batch in one transaction, so the
-- saving 0003 bought is small now. Kept from 0003: execution inserts and successes do
-- not notify (they share their statement with the task's status change), and the
-- outbox channel's dead-letter hint.
DROP TRIGGER tasks_status_event ON tasks;
CREATE TRIGGER tasks_status_event AFTER UPDATE OF status ON tasks
    FOR EACH ROW WHEN (OLD.status IS DISTINCT FROM NEW.status)
    EXECUTE FUNCTION taskflow_task_event_notify();

ALTER TABLE tasks DROP COLUMN watched_until;
