-- Tenants own API keys and servers.
CREATE TABLE tenants (
    id           uuid PRIMARY KEY,
    name         text NOT NULL UNIQUE,
    server_limit integer CHECK (server_limit IS NULL OR server_limit >= 0),
    created_at   timestamptz NOT NULL DEFAULT now()
);

-- API keys are stored only as a SHA-256 hash of the secret.
CREATE TABLE api_keys (
    id          uuid PRIMARY KEY,
    tenant_id   uuid NOT NULL REFERENCES tenants (id),
    name        text NOT NULL,
    key_hash    bytea NOT NULL UNIQUE,
    prefix      text NOT NULL,
    permissions text[] NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz,
    revoked_at  timestamptz
);
CREATE INDEX api_keys_tenant ON api_keys (tenant_id);

-- Agents run onboarding and streaming; each replica registers its embedded agent at start-up.
CREATE TABLE agents (
    id           uuid PRIMARY KEY,
    name         text NOT NULL UNIQUE,
    outbound_ip  text NOT NULL,
    capacity     integer NOT NULL CHECK (capacity >= 0),
    heartbeat_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE servers (
    id                       uuid PRIMARY KEY,
    tenant_id                uuid NOT NULL REFERENCES tenants (id),
    name                     text NOT NULL,
    host                     text NOT NULL,
    port                     integer NOT NULL,
    mysql_user               text NOT NULL,
    -- Secrets: AEAD ciphertext (nonce || ciphertext || tag) and the id of the key that sealed it.
    mysql_password_sealed    bytea,
    mysql_password_key_id    text,
    connection_method        text NOT NULL CHECK (connection_method IN ('direct', 'vpn', 'ssh_tunnel')),
    ssh_host                 text,
    ssh_port                 integer,
    ssh_user                 text,
    ssh_private_key_sealed   bytea,
    ssh_private_key_key_id   text,
    ssh_host_key_fingerprint text,
    stream_schemas           text[] NOT NULL DEFAULT '{}',
    stream_tables            text[] NOT NULL DEFAULT '{}',
    ssl_mode                 text NOT NULL DEFAULT 'preferred',
    labels                   jsonb NOT NULL DEFAULT '{}',
    status                   text NOT NULL CHECK (status IN ('pending', 'active', 'error', 'decommissioned')),
    -- The six steps' progress, in order (domain::onboarding::Steps as JSON).
    steps                    jsonb NOT NULL,
    revision                 bigint NOT NULL,
    -- Bumped on every change of the server resource; the etag.
    version                  bigint NOT NULL DEFAULT 1,
    agent_id                 uuid REFERENCES agents (id),
    agent_outbound_ip        text,
    -- Onboarding engine: a runner is wanted while runnable; the lease fences its writes.
    runnable                 boolean NOT NULL DEFAULT false,
    lease_owner              uuid,
    lease_expires_at         timestamptz,
    lease_epoch              bigint NOT NULL DEFAULT 0,
    created_at               timestamptz NOT NULL DEFAULT now(),
    updated_at               timestamptz NOT NULL DEFAULT now(),
    decommissioned_at        timestamptz
);
CREATE UNIQUE INDEX servers_live_name ON servers (tenant_id, name) WHERE status <> 'decommissioned';
CREATE INDEX servers_listing ON servers (tenant_id, created_at DESC, id DESC);
CREATE INDEX servers_runnable ON servers (lease_expires_at NULLS FIRST) WHERE runnable;
CREATE INDEX servers_agent ON servers (agent_id) WHERE agent_id IS NOT NULL;

-- Every revision of every server's onboarding status, for watch replay.
CREATE TABLE onboarding_history (
    server_id  uuid NOT NULL REFERENCES servers (id),
    revision   bigint NOT NULL,
    status     jsonb NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (server_id, revision)
);

-- request_id idempotency: a retried mutation returns the server the first one touched.
CREATE TABLE idempotency_keys (
    tenant_id    uuid NOT NULL REFERENCES tenants (id),
    request_id   text NOT NULL,
    method       text NOT NULL,
    request_hash bytea NOT NULL,
    server_id    uuid NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, request_id)
);
