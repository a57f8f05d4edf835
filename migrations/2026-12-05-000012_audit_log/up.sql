-- The audit log (ListAuditEvents, api.md §8): who changed what. One row per call that changes
-- something (written in the change's own transaction) and per refused call (permission denied,
-- bad input, a failed precondition), never a secret: a secret field's change is recorded as
-- "set", "changed" or "removed", never its value or ciphertext.
--
-- Append-only: a trigger refuses every UPDATE and DELETE (and TRUNCATE); the only removal is
-- retention, which drops a whole month's partition once all of it is older than
-- --audit-retention. Partitions are made ahead by the housekeeping job (and by the command line
-- before it writes), through audit_events_partition below.
CREATE TABLE audit_events (
    time           timestamptz NOT NULL,
    id             uuid NOT NULL,
    tenant_id      uuid NOT NULL,
    -- The calling API key; none for the command line (key_name says "cli").
    key_id         uuid,
    key_name       text NOT NULL,
    request_id     text NOT NULL,
    method         text NOT NULL,
    server_id      uuid,
    -- What the call acted on, by name: servers/ID, apiKeys/ID, tenants/ID, webhooks/ID; empty
    -- when not known.
    resource       text NOT NULL,
    -- [{"field": ..., "old": ..., "new": ...} or {"field": ..., "secret": "changed"}, ...]
    changes        jsonb NOT NULL,
    -- "OK", or the gRPC code of the refusal with its ErrorInfo reason.
    outcome        text NOT NULL,
    reason         text NOT NULL,
    client_address text
) PARTITION BY RANGE (time);

-- ListAuditEvents: a tenant's events newest first, and those of one server.
CREATE INDEX audit_events_listing ON audit_events (tenant_id, time DESC, id DESC);
CREATE INDEX audit_events_server ON audit_events (tenant_id, server_id, time DESC, id DESC)
    WHERE server_id IS NOT NULL;

CREATE FUNCTION audit_events_refuse_change() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit_events is append-only: % is refused', TG_OP
        USING ERRCODE = 'insufficient_privilege',
              HINT = 'retention drops whole partitions (--audit-retention)';
END
$$;

-- Row triggers on the partitioned table apply to every partition; TRUNCATE triggers are each
-- table's own, so audit_events_partition adds one to every partition it makes.
CREATE TRIGGER audit_events_append_only BEFORE UPDATE OR DELETE ON audit_events
    FOR EACH ROW EXECUTE FUNCTION audit_events_refuse_change();
CREATE TRIGGER audit_events_no_truncate BEFORE TRUNCATE ON audit_events
    FOR EACH STATEMENT EXECUTE FUNCTION audit_events_refuse_change();

-- The partition of the month holding `day` (audit_events_YYYYMM, bounds in UTC), when missing.
CREATE FUNCTION audit_events_partition(day date) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    first date := date_trunc('month', day)::date;
    name text := 'audit_events_' || to_char(first, 'YYYYMM');
BEGIN
    IF to_regclass(name) IS NOT NULL THEN
        RETURN;
    END IF;
    EXECUTE format(
        'CREATE TABLE %I PARTITION OF audit_events FOR VALUES FROM (%L) TO (%L)',
        name, to_char(first, 'YYYY-MM-DD') || ' 00:00:00+00',
        to_char(first + interval '1 month', 'YYYY-MM-DD') || ' 00:00:00+00');
    EXECUTE format(
        'CREATE TRIGGER audit_events_no_truncate BEFORE TRUNCATE ON %I '
        'FOR EACH STATEMENT EXECUTE FUNCTION audit_events_refuse_change()', name);
END
$$;

-- This month's and the next's, so that the first writes find theirs.
SELECT audit_events_partition(current_date);
SELECT audit_events_partition((current_date + interval '1 month')::date);
