CREATE OR REPLACE FUNCTION server_snapshot(server servers) RETURNS jsonb
LANGUAGE sql STABLE AS $$
    SELECT to_jsonb(server) - 'mysql_password_sealed' - 'ssh_private_key_sealed' - 'steps_packed'
        || jsonb_build_object(
               'mysql_password_sealed', server.mysql_password_sealed IS NOT NULL,
               'ssh_private_key_sealed', server.ssh_private_key_sealed IS NOT NULL)
$$;
ALTER TABLE servers DROP COLUMN index_shard;
