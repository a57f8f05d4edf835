-- The index split (docs/archive.md "Growing the index"): the change index may be several
-- PostgreSQL databases, each with its own id (the index's `index_identity`). A server's events
-- live in one of them, chosen the first time the server needs the index (its stream's start, at
-- onboarding) and recorded here, so that every replica and every restart finds them again.
-- NULL: not chosen yet.
ALTER TABLE servers ADD COLUMN index_shard uuid;
-- Choosing the shard with the fewest live servers counts them.
CREATE INDEX servers_index_shard ON servers (index_shard) WHERE index_shard IS NOT NULL;

-- A history row keeps the server as before: where its events are is not part of it.
CREATE OR REPLACE FUNCTION server_snapshot(server servers) RETURNS jsonb
LANGUAGE sql STABLE AS $$
    SELECT to_jsonb(server) - 'mysql_password_sealed' - 'ssh_private_key_sealed' - 'steps_packed'
           - 'index_shard'
        || jsonb_build_object(
               'mysql_password_sealed', server.mysql_password_sealed IS NOT NULL,
               'ssh_private_key_sealed', server.ssh_private_key_sealed IS NOT NULL)
$$;
