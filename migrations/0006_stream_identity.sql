-- Where a published task's message is, and which stream that is (issue 11, items 6 and 9).
--
-- 1. tasks.stream_seq: the stream sequence of the PubAck of the task's current dispatch,
--    recorded with the publish (NULL: not published, or published in a way that did not
--    tell the sequence: a claim through the "publish not yet recorded" branch, or a row
--    published before this migration). The dispatcher asks the stream whether that
--    message is still there instead of re-publishing every task that waited long.
ALTER TABLE tasks ADD COLUMN stream_seq bigint;

-- 2. The published-but-unclaimed rows, by priority (one consumer per priority) and
--    sequence: the dispatcher's audit reads the ranges that may hold a lost message
--    (below what the priority's consumer delivered, above the stream's last sequence).
CREATE INDEX tasks_waiting_on_stream ON tasks (priority, stream_seq)
    WHERE status IN ('queued', 'retrying') AND NOT dispatch_pending;

-- 3. The identity of each stream as last seen: its creation time as the server reports
--    it. A stream created again (deleted, or a NATS store wiped) has another one, and
--    whoever created it (a worker, the dlq-monitor), the dispatcher finds that out by
--    comparing, at start and on every stream check, and re-publishes what it held.
CREATE TABLE bus_streams (
    name       text PRIMARY KEY,
    created    text NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);
