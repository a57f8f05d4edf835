-- The archive tier (streaming.md §4, docs/archive.md): time partitions of any width, registered
-- with their bounds, archived as Parquet files whose manifest lives beside them, then dropped.

-- Every partition of change_events with its bounds: what maintenance created, what the archive
-- took (archived_at: its files are written, read back, verified and in the manifest), and when
-- it was dropped. The archive's lease on a partition (epoch, holder, until) keeps two replicas
-- from archiving the same one; a write of the manifest or a drop with an older epoch does nothing.
CREATE TABLE change_partitions (
    name text PRIMARY KEY,
    starts_at timestamptz NOT NULL,
    ends_at timestamptz NOT NULL CHECK (ends_at > starts_at),
    archived_at timestamptz,
    dropped_at timestamptz,
    lease_epoch bigint NOT NULL DEFAULT 0,
    lease_holder text,
    lease_until timestamptz,
    failures integer NOT NULL DEFAULT 0,
    last_failure text
);
CREATE INDEX change_partitions_open ON change_partitions (ends_at) WHERE dropped_at IS NULL;

-- The day partitions that replicas made before this migration.
INSERT INTO change_partitions (name, starts_at, ends_at)
SELECT c.relname, to_date(substr(c.relname, 15), 'YYYYMMDD')::timestamp AT TIME ZONE 'UTC',
       (to_date(substr(c.relname, 15), 'YYYYMMDD') + 1)::timestamp AT TIME ZONE 'UTC'
FROM pg_inherits i
JOIN pg_class c ON c.oid = i.inhrelid
JOIN pg_class p ON p.oid = i.inhparent
WHERE p.relname = 'change_events' AND c.relnamespace = p.relnamespace
  AND c.relname ~ '^change_events_[0-9]{8}$'
ON CONFLICT DO NOTHING;

-- The partition [starts, ends), named by its start (change_events_YYYYMMDD_HHMM, UTC), and
-- registered; nothing when a partition of that name exists.
CREATE OR REPLACE FUNCTION change_events_partition_range(starts timestamptz, ends timestamptz)
RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    partition text := 'change_events_' || to_char(starts AT TIME ZONE 'UTC', 'YYYYMMDD_HH24MI');
BEGIN
    EXECUTE format(
        'CREATE TABLE IF NOT EXISTS %I PARTITION OF change_events FOR VALUES FROM (%L) TO (%L)',
        partition, starts, ends);
    INSERT INTO change_partitions (name, starts_at, ends_at) VALUES (partition, starts, ends)
    ON CONFLICT (name) DO NOTHING;
END
$$;

-- The manifest: one row per archived file (one server's events of one partition), with what
-- was verified when it was read back. Reads of the archive go by this table only: a file not
-- in it does not exist for them.
CREATE TABLE change_archive_files (
    server_id uuid NOT NULL,
    partition text NOT NULL REFERENCES change_partitions (name),
    path text NOT NULL UNIQUE,
    first_sequence bigint NOT NULL,
    last_sequence bigint NOT NULL,
    row_count bigint NOT NULL CHECK (row_count > 0),
    bytes bigint NOT NULL,
    checksum text NOT NULL,
    first_committed_at timestamptz NOT NULL,
    last_committed_at timestamptz NOT NULL,
    archived_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (server_id, first_sequence)
);
CREATE INDEX change_archive_files_by_last ON change_archive_files (server_id, last_sequence);
CREATE INDEX change_archive_files_by_partition ON change_archive_files (partition);
