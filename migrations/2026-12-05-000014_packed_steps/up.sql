-- The onboarding steps as the service reads them: a text array PostgreSQL derives from the
-- `steps` jsonb (which stays what is written, and what SQL and the history rows read), so that
-- a server read decodes six steps without parsing JSON (`src/store/packed_steps.rs`; the JSON
-- cost a GetServer about 19k instructions, `scripts/bench callgrind`).
--
-- Per step, in order: name, status, started_at, completed_at, message, error, attempts, the
-- number of warnings, then each warning. A JSON null (or a missing key) is a NULL element.
CREATE FUNCTION packed_steps(steps jsonb) RETURNS text[]
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT coalesce(array_agg(field ORDER BY step_number, field_number), '{}')
    FROM jsonb_array_elements(steps) WITH ORDINALITY AS step(progress, step_number),
         LATERAL unnest(
             ARRAY[progress->>'name', progress->>'status', progress->>'started_at',
                   progress->>'completed_at', progress->>'message', progress->>'error',
                   progress->>'attempts',
                   jsonb_array_length(coalesce(progress->'warnings', '[]'))::text]
             || ARRAY(SELECT jsonb_array_elements_text(coalesce(progress->'warnings', '[]')))
         ) WITH ORDINALITY AS fields(field, field_number)
$$;

ALTER TABLE servers
    ADD COLUMN steps_packed text[] GENERATED ALWAYS AS (packed_steps(steps)) STORED;

-- A history row keeps the server as before: the derived column is not part of it.
CREATE OR REPLACE FUNCTION server_snapshot(server servers) RETURNS jsonb
LANGUAGE sql STABLE AS $$
    SELECT to_jsonb(server) - 'mysql_password_sealed' - 'ssh_private_key_sealed' - 'steps_packed'
        || jsonb_build_object(
               'mysql_password_sealed', server.mysql_password_sealed IS NOT NULL,
               'ssh_private_key_sealed', server.ssh_private_key_sealed IS NOT NULL)
$$;
