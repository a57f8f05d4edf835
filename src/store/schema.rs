//! The diesel table definitions, matching `migrations/`.

diesel::table! {
    tenants (id) {
        id -> Uuid,
        name -> Text,
        server_limit -> Nullable<Int4>,
        created_at -> Timestamptz,
    }
}

diesel::table! {
    api_keys (id) {
        id -> Uuid,
        tenant_id -> Uuid,
        name -> Text,
        key_hash -> Bytea,
        prefix -> Text,
        permissions -> Array<Text>,
        created_at -> Timestamptz,
        expires_at -> Nullable<Timestamptz>,
        revoked_at -> Nullable<Timestamptz>,
    }
}

diesel::table! {
    agents (id) {
        id -> Uuid,
        name -> Text,
        outbound_ip -> Text,
        capacity -> Int4,
        heartbeat_at -> Timestamptz,
        assigned -> Int4,
    }
}

diesel::table! {
    servers (id) {
        id -> Uuid,
        tenant_id -> Uuid,
        name -> Text,
        host -> Text,
        port -> Int4,
        mysql_user -> Text,
        mysql_password_sealed -> Nullable<Bytea>,
        mysql_password_key_id -> Nullable<Text>,
        connection_method -> Text,
        ssh_host -> Nullable<Text>,
        ssh_port -> Nullable<Int4>,
        ssh_user -> Nullable<Text>,
        ssh_private_key_sealed -> Nullable<Bytea>,
        ssh_private_key_key_id -> Nullable<Text>,
        ssh_host_key_fingerprint -> Nullable<Text>,
        stream_schemas -> Array<Text>,
        stream_tables -> Array<Text>,
        stream_exclude_tables -> Array<Text>,
        ssl_mode -> Text,
        labels -> Jsonb,
        status -> Text,
        steps -> Jsonb,
        steps_packed -> Array<Nullable<Text>>,
        revision -> Int8,
        version -> Int8,
        agent_id -> Nullable<Uuid>,
        agent_outbound_ip -> Nullable<Text>,
        runnable -> Bool,
        lease_owner -> Nullable<Uuid>,
        lease_expires_at -> Nullable<Timestamptz>,
        lease_epoch -> Int8,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
        decommissioned_at -> Nullable<Timestamptz>,
        stream_state -> Nullable<Text>,
        stream_error -> Nullable<Text>,
        stream_progress -> Nullable<Jsonb>,
        stream_owner -> Nullable<Uuid>,
        stream_expires_at -> Nullable<Timestamptz>,
        stream_epoch -> Int8,
        trace_parent -> Nullable<Text>,
        stream_paused -> Bool,
        index_shard -> Nullable<Uuid>,
    }
}

diesel::table! {
    onboarding_history (server_id, revision) {
        server_id -> Uuid,
        revision -> Int8,
        status -> Jsonb,
        created_at -> Timestamptz,
    }
}

diesel::table! {
    idempotency_keys (tenant_id, request_id) {
        tenant_id -> Uuid,
        request_id -> Text,
        method -> Text,
        request_hash -> Bytea,
        server_id -> Uuid,
        created_at -> Timestamptz,
    }
}

diesel::table! {
    server_revisions (tenant_id) {
        tenant_id -> Uuid,
        revision -> Int8,
    }
}

diesel::table! {
    server_history (tenant_id, revision) {
        tenant_id -> Uuid,
        revision -> Int8,
        server_id -> Uuid,
        server -> Jsonb,
        previous -> Nullable<Jsonb>,
        created_at -> Timestamptz,
    }
}

diesel::joinable!(api_keys -> tenants (tenant_id));
diesel::joinable!(servers -> tenants (tenant_id));
diesel::allow_tables_to_appear_in_same_query!(
    tenants,
    api_keys,
    agents,
    servers,
    onboarding_history,
    idempotency_keys,
    server_revisions,
    server_history
);

diesel::table! {
    /// Partitioned by month on `time`; its key for diesel is `id` (unique, v7).
    audit_events (id) {
        time -> Timestamptz,
        id -> Uuid,
        tenant_id -> Uuid,
        key_id -> Nullable<Uuid>,
        key_name -> Text,
        request_id -> Text,
        method -> Text,
        server_id -> Nullable<Uuid>,
        resource -> Text,
        changes -> Jsonb,
        outcome -> Text,
        reason -> Text,
        client_address -> Nullable<Text>,
    }
}
