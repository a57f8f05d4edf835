-- WatchServers (api.md §8): every change of a tenant's servers (a new server, or a new version
-- of one) gets the tenant's next revision, and its history row keeps the server after and before
-- it (secrets as presence only), so a watcher resumes gap-free from any kept revision and tells
-- ADDED, MODIFIED and DELETED apart under its filter.
--
-- A trigger records it, so no write path can forget to, and the rows are built by PostgreSQL
-- (to_jsonb), not serialized by the service. The counter is its own table: its row lock orders a
-- tenant's changes until the commit. A change takes it at its UPDATE (or INSERT) of the server,
-- whose row it already holds; what the transaction does after that only touches that row and
-- rows that refer to it, so it never waits on another transaction while holding the counter.
CREATE TABLE server_revisions (
    tenant_id uuid PRIMARY KEY REFERENCES tenants (id),
    revision  bigint NOT NULL
);

CREATE TABLE server_history (
    tenant_id  uuid NOT NULL REFERENCES tenants (id),
    revision   bigint NOT NULL,
    server_id  uuid NOT NULL REFERENCES servers (id),
    -- The server after the change, and before it (none when it was registered).
    server     jsonb NOT NULL,
    previous   jsonb,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, revision)
);
CREATE INDEX server_history_created_at ON server_history (created_at);

-- A server row as a history row keeps it: its secrets' ciphertext replaced by whether there is one.
CREATE FUNCTION server_snapshot(server servers) RETURNS jsonb
LANGUAGE sql STABLE AS $$
    SELECT to_jsonb(server) - 'mysql_password_sealed' - 'ssh_private_key_sealed'
        || jsonb_build_object(
               'mysql_password_sealed', server.mysql_password_sealed IS NOT NULL,
               'ssh_private_key_sealed', server.ssh_private_key_sealed IS NOT NULL)
$$;

CREATE FUNCTION record_server_change() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    next_revision bigint;
BEGIN
    INSERT INTO server_revisions AS counter (tenant_id, revision) VALUES (NEW.tenant_id, 1)
    ON CONFLICT (tenant_id) DO UPDATE SET revision = counter.revision + 1
    RETURNING revision INTO next_revision;
    INSERT INTO server_history (tenant_id, revision, server_id, server, previous)
    VALUES (NEW.tenant_id, next_revision, NEW.id, server_snapshot(NEW),
            CASE WHEN TG_OP = 'UPDATE' THEN server_snapshot(OLD) END);
    PERFORM pg_notify('dbtrail_servers', NEW.tenant_id::text || ':' || next_revision::text);
    RETURN NULL;
END
$$;

CREATE TRIGGER servers_registered AFTER INSERT ON servers
    FOR EACH ROW EXECUTE FUNCTION record_server_change();
-- Only a new version is a change: the lease and progress columns move without one.
CREATE TRIGGER servers_changed AFTER UPDATE ON servers
    FOR EACH ROW WHEN (NEW.version IS DISTINCT FROM OLD.version)
    EXECUTE FUNCTION record_server_change();

-- Every server there is now, as a change of its tenant, so the history starts complete.
INSERT INTO server_revisions (tenant_id, revision)
SELECT tenant_id, count(*) FROM servers GROUP BY tenant_id;
INSERT INTO server_history (tenant_id, revision, server_id, server)
SELECT tenant_id, row_number() OVER (PARTITION BY tenant_id ORDER BY created_at, id), id,
       server_snapshot(servers)
FROM servers;
