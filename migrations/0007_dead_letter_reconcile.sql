-- Every failed task keeps its dead letter, whatever happens to the bus (issue 11, item 7).
--
-- Before: dead_letter_pending was cleared at the dispatcher's PubAck, so a dead letter
-- lived only on the DLQ stream until the dlq-monitor recorded it; a wiped NATS store, or
-- a monitor down for longer than DLQ_MAX_AGE, lost it for good.
--
-- Now dead_letter_pending stays true until the dead_letters row exists: the monitor's
-- record clears it in the statement that inserts the row. The dispatcher remembers where
-- it put the message (the DLQ stream's identity, its creation time, and the PubAck's
-- stream sequence) and publishes again only when that stream no longer holds it (another
-- incarnation of the stream, or a sequence below its first one: aged out or purged).
--
--   dead_letter_pending AND dead_letter_seq IS NULL      to publish (the outbox)
--   dead_letter_pending AND dead_letter_seq IS NOT NULL  on the bus, not yet recorded
--   NOT dead_letter_pending                              recorded (or replayed); seq NULL
ALTER TABLE tasks
    ADD COLUMN dead_letter_stream text,
    ADD COLUMN dead_letter_seq    bigint,
    ADD CONSTRAINT tasks_dead_letter_seq_pending
        CHECK (dead_letter_pending OR (dead_letter_seq IS NULL AND dead_letter_stream IS NULL));

DROP INDEX tasks_dead_letter_due;
CREATE INDEX tasks_dead_letter_due ON tasks (updated_at)
    WHERE dead_letter_pending AND dead_letter_seq IS NULL;
CREATE INDEX tasks_dead_letter_on_bus ON tasks (dead_letter_seq)
    WHERE dead_letter_pending AND dead_letter_seq IS NOT NULL;

-- The dead-letter hint only for a dead letter still to publish: the dispatcher's own
-- update that records the PubAck leaves the flag set and must not wake it again.
CREATE OR REPLACE FUNCTION taskflow_outbox_notify() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM new_rows WHERE dead_letter_pending AND dead_letter_seq IS NULL) THEN
        PERFORM pg_notify('taskflow_outbox', 'dead');
    ELSIF EXISTS (SELECT 1 FROM new_rows WHERE dispatch_pending) THEN
        PERFORM pg_notify('taskflow_outbox', '');
    END IF;
    RETURN NULL;
END;
$$;

-- Reconcile what earlier versions lost: a failed task without a dead letter for its last
-- attempt gets one published again.
UPDATE tasks AS t
   SET dead_letter_pending = true
 WHERE t.status = 'failed' AND NOT t.dead_letter_pending
   AND NOT EXISTS (SELECT 1 FROM dead_letters AS d
                    WHERE (d.task_id = t.id AND d.attempts = t.attempts)
                       OR d.dedupe_key = 'dlq:' || t.id::text || ':' || t.attempts::text);
