-- The live binlog stream of each active server (streaming.md): its health, as the domain sees it
-- (state and error are revisions; progress is written by the holder and read live), and its
-- lease, held by one replica's embedded agent and fenced by an epoch like the onboarding lease.
ALTER TABLE servers DROP CONSTRAINT servers_status_check;
ALTER TABLE servers ADD CONSTRAINT servers_status_check
    CHECK (status IN ('pending', 'active', 'disconnected', 'error', 'decommissioned'));
ALTER TABLE servers
    ADD COLUMN stream_state text CHECK (stream_state IN
        ('starting', 'running', 'stalled', 'disconnected', 'lost_position', 'failed', 'stopped')),
    ADD COLUMN stream_error text,
    ADD COLUMN stream_progress jsonb,
    ADD COLUMN stream_owner uuid,
    ADD COLUMN stream_expires_at timestamptz,
    ADD COLUMN stream_epoch bigint NOT NULL DEFAULT 0;

-- The servers whose stream should run: what the stream sweep scans.
CREATE INDEX servers_streamable ON servers (stream_expires_at NULLS FIRST)
    WHERE status IN ('active', 'disconnected');
