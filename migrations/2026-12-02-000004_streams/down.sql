DROP INDEX servers_streamable;
ALTER TABLE servers DROP COLUMN stream_state, DROP COLUMN stream_error,
    DROP COLUMN stream_progress, DROP COLUMN stream_owner, DROP COLUMN stream_expires_at,
    DROP COLUMN stream_epoch;
UPDATE servers SET status = 'active' WHERE status = 'disconnected';
ALTER TABLE servers DROP CONSTRAINT servers_status_check;
ALTER TABLE servers ADD CONSTRAINT servers_status_check
    CHECK (status IN ('pending', 'active', 'error', 'decommissioned'));
