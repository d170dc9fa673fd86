-- Task events for clients that wait on a task (GET /api/v1/tasks/{id}?wait=...,
-- GET /api/v1/tasks/{id}/events): the ingest API holds ONE `LISTEN taskflow_task_events`
-- connection and fans each notification out to the requests waiting on that task, so
-- no waiter polls the database.
--
-- One notification per status change of a task and per insert or status change of an
-- execution (lease renewals and other updates send none). Payload, plain text:
--   task:<task id>:<status>:<version>
--   execution:<task id>:<attempt>:<status>
-- It only says which task changed and whether re-reading it is worth it; listeners read
-- the rows themselves. Notifications are delivered at commit, in commit order, and never
-- for a rolled-back change. Task inserts notify nothing here (nobody waits on a task that
-- does not exist yet; the dispatcher has its own channel, taskflow_outbox).

CREATE FUNCTION taskflow_task_event_notify() RETURNS trigger
LANGUAGE plpgsql AS $$
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

CREATE TRIGGER tasks_status_event AFTER UPDATE OF status ON tasks
    FOR EACH ROW WHEN (OLD.status IS DISTINCT FROM NEW.status)
    EXECUTE FUNCTION taskflow_task_event_notify();

CREATE TRIGGER task_executions_insert_event AFTER INSERT ON task_executions
    FOR EACH ROW EXECUTE FUNCTION taskflow_task_event_notify();

CREATE TRIGGER task_executions_status_event AFTER UPDATE OF status ON task_executions
    FOR EACH ROW WHEN (OLD.status IS DISTINCT FROM NEW.status)
    EXECUTE FUNCTION taskflow_task_event_notify();
