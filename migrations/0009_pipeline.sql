-- The batched pipeline (issue 10, ADR 0005): cheaper appends and a cheaper outbox.

-- Outbox rows are written by the append statement itself, in the same statement as their
-- events, so the foreign key only cost a row lock (FOR KEY SHARE, a write to the event's
-- page) and a lookup per event.
ALTER TABLE outbox DROP CONSTRAINT IF EXISTS outbox_global_position_fkey;

-- Notify only when rows were enqueued: a statement that enqueued nothing (an append to an
-- internal stream) no longer takes PostgreSQL's commit-time NOTIFY lock, which serialises the
-- commits of every notifying transaction.
CREATE OR REPLACE FUNCTION hcp_notify_outbox() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM enqueued) THEN
        PERFORM pg_notify('hcp_outbox', '');
    END IF;
    RETURN NULL;
END $$;

DROP TRIGGER IF EXISTS outbox_notify ON outbox;
CREATE TRIGGER outbox_notify
    AFTER INSERT ON outbox
    REFERENCING NEW TABLE AS enqueued
    FOR EACH STATEMENT EXECUTE FUNCTION hcp_notify_outbox();

-- A queue and position tables rewritten all the time: vacuum them by row count, not by a
-- fraction of the table (dead versions of hot rows slow every lookup until vacuumed).
ALTER TABLE outbox SET (autovacuum_vacuum_scale_factor = 0, autovacuum_vacuum_threshold = 1000);
ALTER TABLE consumer_offsets SET (autovacuum_vacuum_scale_factor = 0, autovacuum_vacuum_threshold = 1000);
ALTER TABLE consumer_stream_positions SET (autovacuum_vacuum_scale_factor = 0.02, autovacuum_vacuum_threshold = 1000);
