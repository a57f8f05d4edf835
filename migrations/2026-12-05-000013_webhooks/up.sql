-- Webhooks (api.md §8, docs/api.md "Webhooks"): a tenant's subscriptions to events of its
-- servers, and the outbox their deliveries are sent from.
--
-- Every event is written by a trigger on `servers`, in the transaction of the change that caused
-- it, so no write path can forget one and none is sent for a change that rolled back. The
-- trigger fans an event out to one delivery per subscribed webhook of the tenant at once; the
-- replicas' delivery workers claim deliveries with a lease (owner, expiry, epoch) like the
-- engine's, so a killed replica's claims are taken over once they expire.

CREATE TABLE webhooks (
    id            uuid PRIMARY KEY,
    tenant_id     uuid NOT NULL REFERENCES tenants (id),
    url           text NOT NULL,
    -- The event types it wants (domain::webhook::EventType's wire names).
    events        text[] NOT NULL,
    -- The signing secret: AEAD ciphertext and the id of the secrets key that sealed it.
    secret_sealed bytea NOT NULL,
    secret_key_id text NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX webhooks_tenant ON webhooks (tenant_id, created_at, id);

-- One event of one server, as its deliveries send it: the JSON body without the delivery's own
-- ids (added when sent).
CREATE TABLE webhook_events (
    id         uuid PRIMARY KEY,
    tenant_id  uuid NOT NULL REFERENCES tenants (id),
    server_id  uuid NOT NULL REFERENCES servers (id),
    type       text NOT NULL,
    payload    jsonb NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX webhook_events_created_at ON webhook_events (created_at);

CREATE TABLE webhook_deliveries (
    id                 uuid PRIMARY KEY,
    -- Insertion order, the tie-break after position and the order of ListWebhookDeliveries.
    seq                bigint GENERATED ALWAYS AS IDENTITY,
    webhook_id         uuid NOT NULL REFERENCES webhooks (id) ON DELETE CASCADE,
    event_id           uuid NOT NULL REFERENCES webhook_events (id) ON DELETE CASCADE,
    -- The tenant's revision of the change (migration 000011): a tenant's changes take it in
    -- commit order, so a webhook's deliveries go out in the order their changes committed.
    position           bigint NOT NULL,
    status             text NOT NULL DEFAULT 'pending'
                       CHECK (status IN ('pending', 'delivered', 'dead')),
    attempts           integer NOT NULL DEFAULT 0,
    next_attempt_at    timestamptz NOT NULL DEFAULT now(),
    -- Retries stop once the retry window has passed since this (the event, or a redelivery).
    retrying_since     timestamptz NOT NULL DEFAULT now(),
    last_attempt_at    timestamptz,
    last_response_code integer,
    last_error         text,
    delivered_at       timestamptz,
    lease_owner        uuid,
    lease_expires_at   timestamptz,
    lease_epoch        bigint NOT NULL DEFAULT 0,
    created_at         timestamptz NOT NULL DEFAULT now()
);
-- A webhook's queue: its first pending delivery is the only one that may be sent.
CREATE INDEX webhook_deliveries_queue ON webhook_deliveries (webhook_id, position, seq)
    WHERE status = 'pending';
CREATE INDEX webhook_deliveries_listing ON webhook_deliveries (webhook_id, seq);
CREATE INDEX webhook_deliveries_event ON webhook_deliveries (event_id);
CREATE INDEX webhook_deliveries_finished ON webhook_deliveries (created_at)
    WHERE status <> 'pending';

-- A timestamp as the API writes it: RFC 3339 in UTC, microseconds, `Z`.
CREATE FUNCTION webhook_time(at timestamptz) RETURNS text
LANGUAGE sql IMMUTABLE AS $$
    SELECT to_char(at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')
$$;

-- A server as an event's body shows it: what it is and its state, never a secret.
CREATE FUNCTION webhook_server(server servers) RETURNS jsonb
LANGUAGE sql STABLE AS $$
    SELECT jsonb_build_object(
        'server_id', server.id,
        'name', server.name,
        'host', server.host,
        'port', server.port,
        'connection_method', server.connection_method,
        'labels', server.labels,
        'status', server.status,
        'onboarding_step', CASE WHEN server.status <> 'decommissioned' THEN
            (SELECT step->>'name' FROM jsonb_array_elements(server.steps) AS step
             WHERE step->>'status' <> 'completed' LIMIT 1) END,
        'error', CASE WHEN server.status = 'error' THEN
            (SELECT step->>'error' FROM jsonb_array_elements(server.steps) AS step
             WHERE step->>'status' = 'failed' LIMIT 1) END,
        'stream_state', server.stream_state,
        'stream_error', server.stream_error,
        'updated_at', webhook_time(server.updated_at),
        'decommissioned_at', webhook_time(server.decommissioned_at))
$$;

-- The events a change of a server is, and their deliveries to the tenant's webhooks that want
-- them. Runs after `servers_changed` (triggers fire in name order), so the tenant's revision
-- it reads is this change's.
CREATE FUNCTION record_webhook_events() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    kinds text[] := '{}';
    kind text;
    event uuid;
    change_position bigint;
    server_state jsonb;
    previous jsonb;
BEGIN
    IF NEW.status IS DISTINCT FROM OLD.status THEN
        kinds := kinds || 'server_status_changed'::text;
    END IF;
    IF NEW.stream_state IS DISTINCT FROM OLD.stream_state THEN
        kinds := kinds || 'stream_state_changed'::text;
    END IF;
    IF NEW.status = 'error' AND OLD.status = 'pending' THEN
        kinds := kinds || 'onboarding_failed'::text;
    END IF;
    IF NEW.stream_state = 'lost_position' AND OLD.stream_state IS DISTINCT FROM 'lost_position' THEN
        kinds := kinds || 'lost_position'::text;
    END IF;
    IF NEW.status = 'decommissioned' AND OLD.status <> 'decommissioned' THEN
        kinds := kinds || 'decommissioned'::text;
    END IF;
    -- Without a subscriber a change costs this one lookup.
    IF NOT EXISTS (SELECT 1 FROM webhooks WHERE tenant_id = NEW.tenant_id AND events && kinds) THEN
        RETURN NULL;
    END IF;
    SELECT revision INTO change_position FROM server_revisions WHERE tenant_id = NEW.tenant_id;
    server_state := webhook_server(NEW);
    previous := jsonb_build_object('status', OLD.status, 'stream_state', OLD.stream_state);
    FOREACH kind IN ARRAY kinds LOOP
        CONTINUE WHEN NOT EXISTS (
            SELECT 1 FROM webhooks WHERE tenant_id = NEW.tenant_id AND kind = ANY (events));
        event := gen_random_uuid();
        INSERT INTO webhook_events (id, tenant_id, server_id, type, payload)
        VALUES (event, NEW.tenant_id, NEW.id, kind, jsonb_build_object(
            'event_id', event,
            'type', kind,
            'occurred_at', webhook_time(now()),
            'server', server_state,
            'previous', previous));
        INSERT INTO webhook_deliveries (id, webhook_id, event_id, position)
        SELECT gen_random_uuid(), webhooks.id, event, COALESCE(change_position, 0)
        FROM webhooks WHERE tenant_id = NEW.tenant_id AND kind = ANY (events)
        ORDER BY webhooks.created_at, webhooks.id;
    END LOOP;
    PERFORM pg_notify('dbtrail_webhooks', '');
    RETURN NULL;
END
$$;

CREATE TRIGGER servers_webhook_events AFTER UPDATE ON servers
    FOR EACH ROW WHEN (NEW.status IS DISTINCT FROM OLD.status
                       OR NEW.stream_state IS DISTINCT FROM OLD.stream_state)
    EXECUTE FUNCTION record_webhook_events();
