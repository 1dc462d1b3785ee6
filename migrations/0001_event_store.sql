-- The event store: an append-only log with per-stream optimistic concurrency and a global
-- position, plus the transactional outbox and consumer positions.

CREATE TABLE streams (
    stream_id  TEXT PRIMARY KEY,
    -- Sequence of the last event in the stream; appends compare-and-set it.
    version    BIGINT NOT NULL CHECK (version >= 1),
    updated_at TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp()
);

CREATE TABLE events (
    global_position BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    event_id        UUID NOT NULL UNIQUE,
    stream_id       TEXT NOT NULL,
    stream_sequence BIGINT NOT NULL CHECK (stream_sequence >= 1),
    event_type      TEXT NOT NULL,
    schema_version  SMALLINT NOT NULL CHECK (schema_version >= 1),
    occurred_at     TIMESTAMPTZ NOT NULL,
    -- When the store learned the fact; "as of" reads use this.
    recorded_at     TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp(),
    correlation_id  UUID NOT NULL,
    causation_id    UUID,
    producer        TEXT NOT NULL,
    payload         JSONB NOT NULL,
    -- W3C trace context of the appending span, so the relay can continue the trace on Kafka.
    traceparent     TEXT,
    tracestate      TEXT,
    CONSTRAINT events_stream_sequence_key UNIQUE (stream_id, stream_sequence)
);
CREATE INDEX events_recorded_at_idx ON events (recorded_at);
CREATE INDEX events_correlation_idx ON events (correlation_id);

CREATE FUNCTION hcp_refuse_event_mutation() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'the event log is append-only (% refused on events)', TG_OP
        USING ERRCODE = 'restrict_violation';
END $$;

CREATE TRIGGER events_append_only
    BEFORE UPDATE OR DELETE ON events
    FOR EACH ROW EXECUTE FUNCTION hcp_refuse_event_mutation();
CREATE TRIGGER events_no_truncate
    BEFORE TRUNCATE ON events
    FOR EACH STATEMENT EXECUTE FUNCTION hcp_refuse_event_mutation();

-- Events waiting to be published. Rows are written in the appending transaction and deleted
-- by the relay in the transaction that saw the broker acknowledge them.
CREATE TABLE outbox (
    global_position BIGINT PRIMARY KEY REFERENCES events (global_position),
    topic           TEXT NOT NULL,
    enqueued_at     TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp()
);

-- Where each consumer group is in each partition. The source of truth for resuming; the
-- broker's committed offsets are only a hint.
CREATE TABLE consumer_offsets (
    consumer    TEXT NOT NULL,
    topic       TEXT NOT NULL,
    partition   INTEGER NOT NULL,
    next_offset BIGINT NOT NULL,
    updated_at  TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (consumer, topic, partition)
);

-- Idempotency: the last stream sequence each consumer applied. Absorbs duplicates on the wire
-- (an outbox relay re-publishing after a crash) whatever their offsets.
CREATE TABLE consumer_stream_positions (
    consumer      TEXT NOT NULL,
    stream_id     TEXT NOT NULL,
    last_sequence BIGINT NOT NULL,
    PRIMARY KEY (consumer, stream_id)
);

-- Wake the relay as soon as a transaction enqueues events (it also polls as a fallback).
CREATE FUNCTION hcp_notify_outbox() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('hcp_outbox', '');
    RETURN NULL;
END $$;

CREATE TRIGGER outbox_notify
    AFTER INSERT ON outbox
    FOR EACH STATEMENT EXECUTE FUNCTION hcp_notify_outbox();
