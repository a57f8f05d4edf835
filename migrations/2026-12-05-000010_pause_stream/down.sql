UPDATE servers SET status = 'active' WHERE status = 'paused';
ALTER TABLE servers DROP CONSTRAINT servers_status_check;
ALTER TABLE servers ADD CONSTRAINT servers_status_check
    CHECK (status IN ('pending', 'active', 'disconnected', 'error', 'decommissioned'));
ALTER TABLE servers DROP COLUMN stream_paused;
