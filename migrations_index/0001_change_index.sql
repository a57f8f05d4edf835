-- The change index's shared tables (streaming.md §2, §4). Before migrations, replicas created
-- them at start with these same statements; every one is safe over that shape, so this first
-- migration applies cleanly to an index that an older replica prepared.

-- Each stream's checkpoint, fenced by the epoch of the stream lease that last took it.
CREATE TABLE IF NOT EXISTS stream_checkpoints (
    server_id uuid PRIMARY KEY,
    epoch bigint NOT NULL DEFAULT 0,
    binlog_file text NOT NULL,
    binlog_position bigint NOT NULL,
    skip_rows bigint NOT NULL DEFAULT 0,
    gtid_set text,
    source_identity text,
    replication_server_id bigint NOT NULL,
    next_sequence bigint NOT NULL DEFAULT 1,
    last_event_at timestamptz,
    recorded_at timestamptz NOT NULL DEFAULT now()
);
-- Statement-format DML met up to the checkpoint (streaming.md §6), and the replay bound.
ALTER TABLE stream_checkpoints
    ADD COLUMN IF NOT EXISTS statement_changes bigint NOT NULL DEFAULT 0,
    ADD COLUMN IF NOT EXISTS statement_changes_since timestamptz,
    ADD COLUMN IF NOT EXISTS last_statement_change text NOT NULL DEFAULT '',
    ADD COLUMN IF NOT EXISTS replay_until_file text,
    ADD COLUMN IF NOT EXISTS replay_until_position bigint;

-- The binlog a lost position left unread.
CREATE TABLE IF NOT EXISTS stream_gaps (
    id bigserial PRIMARY KEY,
    server_id uuid NOT NULL,
    from_file text NOT NULL,
    from_position bigint NOT NULL,
    to_file text NOT NULL,
    to_position bigint NOT NULL,
    reason text NOT NULL,
    recorded_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS stream_gaps_server ON stream_gaps (server_id, id);

-- Every captured row change, partitioned by day of indexing: retention drops whole partitions.
CREATE TABLE IF NOT EXISTS change_events (
    server_id uuid NOT NULL,
    sequence bigint NOT NULL,
    binlog_file text NOT NULL,
    binlog_position bigint NOT NULL,
    row_index integer NOT NULL,
    gtid text NOT NULL DEFAULT '',
    committed_at timestamptz NOT NULL,
    schema_name text NOT NULL,
    table_name text NOT NULL,
    operation text NOT NULL CHECK (operation IN ('insert', 'update', 'delete')),
    primary_key jsonb,
    row_before jsonb,
    row_after jsonb,
    indexed_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (server_id, sequence, indexed_at)
) PARTITION BY RANGE (indexed_at);
-- ListChangeEvents filtered by table walks this index in binlog order.
CREATE INDEX IF NOT EXISTS change_events_by_table
    ON change_events (server_id, schema_name, table_name, sequence);

-- The partition of one day (change_events_YYYYMMDD), when missing: what partition maintenance
-- calls for the days ahead, so the statement lives here with the rest of the schema.
CREATE OR REPLACE FUNCTION change_events_partition(day date) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE format(
        'CREATE TABLE IF NOT EXISTS %I PARTITION OF change_events FOR VALUES FROM (%L) TO (%L)',
        'change_events_' || to_char(day, 'YYYYMMDD'), day, day + 1);
END
$$;
