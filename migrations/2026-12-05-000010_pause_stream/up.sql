-- PauseStream / ResumeStream (api.md §8, streaming.md §6): the wanted state of a server's stream,
-- kept across replica restarts, lease moves and re-onboarding; a paused server's status is
-- 'paused' (not streamable: the sweep and the lease renewal skip it).
ALTER TABLE servers ADD COLUMN stream_paused boolean NOT NULL DEFAULT false;
ALTER TABLE servers DROP CONSTRAINT servers_status_check;
ALTER TABLE servers ADD CONSTRAINT servers_status_check
    CHECK (status IN ('pending', 'active', 'disconnected', 'paused', 'error', 'decommissioned'));
