//! Tenants and API keys (stored only as hashes), the NOTIFY that makes every replica forget
//! a revoked key, and the keys every replica of a deployment shares. Creating a tenant or a key
//! and revoking a key are recorded in the audit log (as the command line's: an [`Operator`]) in
//! the same transaction; never the key itself, nor its hash.

use chrono::{DateTime, Utc};
use diesel::{prelude::*, result::DatabaseErrorKind};
use diesel_async::{AsyncConnection, RunQueryDsl};
use uuid::Uuid;

use super::{
    API_KEYS_CHANNEL, Connection, Store, StoreError, WriteError, audit,
    schema::{api_keys, tenants},
};
use crate::domain::{
    Refused, TenantId,
    audit::{
        AuditEvent, CREATE_API_KEY, CREATE_TENANT, FieldChange, Operator, Outcome, REVOKE_API_KEY,
        created,
    },
    server::Sealed,
};

/// A key to store: everything but the secret itself.
#[derive(Debug, Clone, Insertable)]
#[diesel(table_name = api_keys)]
pub struct NewApiKey {
    pub id: Uuid,
    pub tenant_id: Uuid,
    pub name: String,
    pub key_hash: Vec<u8>,
    pub prefix: String,
    pub permissions: Vec<String>,
    pub expires_at: Option<DateTime<Utc>>,
}

/// What authentication needs to know of a key.
#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = api_keys, check_for_backend(diesel::pg::Pg))]
pub struct ApiKeyRecord {
    pub id: Uuid,
    pub tenant_id: Uuid,
    pub name: String,
    pub permissions: Vec<String>,
    pub expires_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
}

/// A key as `keys list` shows it.
#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = api_keys, check_for_backend(diesel::pg::Pg))]
pub struct KeySummary {
    pub id: Uuid,
    pub name: String,
    pub prefix: String,
    pub permissions: Vec<String>,
    pub created_at: DateTime<Utc>,
    pub expires_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
}

/// A tenant as `tenants list` shows it.
#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = tenants, check_for_backend(diesel::pg::Pg))]
pub struct TenantSummary {
    pub id: Uuid,
    pub name: String,
    pub server_limit: Option<i32>,
    pub created_at: DateTime<Utc>,
}

/// Records the operator's creation of a tenant.
async fn record_tenant_created(
    connection: &mut Connection,
    operator: &Operator,
    id: Uuid,
    name: &str,
    server_limit: Option<i32>,
) -> Result<(), StoreError> {
    let changes = created(vec![
        ("name", serde_json::json!(name)),
        ("server_limit", serde_json::json!(server_limit)),
    ]);
    let actor = operator.actor(TenantId::from_uuid(id), CREATE_TENANT);
    let event = AuditEvent::new(actor, None, changes, Outcome::ok()).about(format!("tenants/{id}"));
    audit::record(connection, &event).await
}

/// Records the operator's creation of a key: its name, permissions and expiry (never the key).
async fn record_key_created(
    connection: &mut Connection,
    operator: &Operator,
    key: &NewApiKey,
) -> Result<(), StoreError> {
    let changes = created(vec![
        ("name", serde_json::json!(key.name)),
        ("permissions", serde_json::json!(key.permissions)),
        ("expires_at", serde_json::json!(key.expires_at)),
    ]);
    let actor = operator.actor(TenantId::from_uuid(key.tenant_id), CREATE_API_KEY);
    let event =
        AuditEvent::new(actor, None, changes, Outcome::ok()).about(format!("apiKeys/{}", key.id));
    audit::record(connection, &event).await
}

impl Store {
    /// Creates a tenant, recorded as `operator`'s; refused when the name is taken.
    pub async fn create_tenant(
        &self,
        name: &str,
        server_limit: Option<i32>,
        operator: &Operator,
    ) -> Result<Uuid, WriteError> {
        let mut connection = self.connection().await?;
        let id = Uuid::now_v7();
        connection
            .transaction(async move |connection| -> Result<_, WriteError> {
                diesel::insert_into(tenants::table)
                    .values((
                        tenants::id.eq(id),
                        tenants::name.eq(name),
                        tenants::server_limit.eq(server_limit),
                    ))
                    .execute(connection)
                    .await
                    .map_err(|error| match error {
                        diesel::result::Error::DatabaseError(
                            DatabaseErrorKind::UniqueViolation,
                            _,
                        ) => WriteError::Refused(Refused::TenantNameTaken(name.to_owned())),
                        other => other.into(),
                    })?;
                record_tenant_created(connection, operator, id, name, server_limit).await?;
                Ok(id)
            })
            .await
    }

    /// Every tenant, oldest first.
    pub async fn list_tenants(&self) -> Result<Vec<TenantSummary>, StoreError> {
        let mut connection = self.connection().await?;
        Ok(tenants::table
            .select(TenantSummary::as_select())
            .order(tenants::created_at.asc())
            .load(&mut connection)
            .await?)
    }

    /// A tenant's id by name.
    pub async fn tenant_id(&self, name: &str) -> Result<Uuid, StoreError> {
        let mut connection = self.connection().await?;
        tenants::table
            .filter(tenants::name.eq(name))
            .select(tenants::id)
            .first(&mut connection)
            .await
            .optional()?
            .ok_or_else(|| StoreError::Missing(format!("tenant {name:?}")))
    }

    /// Stores a new key, recorded as `operator`'s.
    pub async fn insert_api_key(
        &self,
        key: NewApiKey,
        operator: &Operator,
    ) -> Result<(), StoreError> {
        let mut connection = self.connection().await?;
        connection
            .transaction(async move |connection| {
                record_key_created(connection, operator, &key).await?;
                diesel::insert_into(api_keys::table)
                    .values(key)
                    .execute(connection)
                    .await?;
                Ok(())
            })
            .await
    }

    /// The key with this hash, if any.
    pub async fn find_api_key(&self, key_hash: &[u8]) -> Result<Option<ApiKeyRecord>, StoreError> {
        let mut connection = self.connection().await?;
        Ok(api_keys::table
            .filter(api_keys::key_hash.eq(key_hash))
            .select(ApiKeyRecord::as_select())
            .first(&mut connection)
            .await
            .optional()?)
    }

    /// A tenant's keys, newest first.
    pub async fn list_api_keys(&self, tenant_id: Uuid) -> Result<Vec<KeySummary>, StoreError> {
        let mut connection = self.connection().await?;
        Ok(api_keys::table
            .filter(api_keys::tenant_id.eq(tenant_id))
            .select(KeySummary::as_select())
            .order(api_keys::created_at.desc())
            .load(&mut connection)
            .await?)
    }

    /// Revokes a key and tells every replica, recorded as `operator`'s, in one transaction
    /// (a key revoked before is recorded as a call that changed nothing).
    pub async fn revoke_api_key(
        &self,
        key_id: Uuid,
        operator: &Operator,
    ) -> Result<(), StoreError> {
        let mut connection = self.connection().await?;
        connection
            .transaction(async move |connection| -> Result<_, StoreError> {
                let now = crate::domain::now();
                let revoked: Option<Uuid> = diesel::update(api_keys::table.find(key_id))
                    .set(api_keys::revoked_at.eq(Some(now)))
                    .filter(api_keys::revoked_at.is_null())
                    .returning(api_keys::tenant_id)
                    .get_result(connection)
                    .await
                    .optional()?;
                let (tenant, changes) = match revoked {
                    Some(tenant) => {
                        let change = FieldChange::value(
                            "revoked_at",
                            serde_json::Value::Null,
                            serde_json::json!(now),
                        );
                        (tenant, vec![change])
                    }
                    None => {
                        let tenant: Option<Uuid> = api_keys::table
                            .find(key_id)
                            .select(api_keys::tenant_id)
                            .first(connection)
                            .await
                            .optional()?;
                        let tenant = tenant
                            .ok_or_else(|| StoreError::Missing(format!("API key {key_id}")))?;
                        (tenant, Vec::new())
                    }
                };
                let actor = operator.actor(TenantId::from_uuid(tenant), REVOKE_API_KEY);
                let event = AuditEvent::new(actor, None, changes, Outcome::ok())
                    .about(format!("apiKeys/{key_id}"));
                audit::record(connection, &event).await?;
                super::prepared::notify(connection, API_KEYS_CHANNEL, key_id.to_string()).await
            })
            .await
    }

    /// On an empty database, creates the tenant with the given key; returns whether it did.
    /// Serialised across replicas so only one bootstrap key is ever made.
    pub async fn bootstrap_if_empty(
        &self,
        tenant_id: Uuid,
        tenant_name: &str,
        key: NewApiKey,
        operator: &Operator,
    ) -> Result<bool, StoreError> {
        let mut connection = self.connection().await?;
        connection
            .transaction(async move |connection| -> Result<_, StoreError> {
                diesel::sql_query("SELECT pg_advisory_xact_lock(7310453)")
                    .execute(connection)
                    .await?;
                let tenants_count: i64 = tenants::table.count().get_result(connection).await?;
                if tenants_count > 0 {
                    return Ok(false);
                }
                diesel::insert_into(tenants::table)
                    .values((tenants::id.eq(tenant_id), tenants::name.eq(tenant_name)))
                    .execute(connection)
                    .await?;
                record_tenant_created(connection, operator, tenant_id, tenant_name, None).await?;
                record_key_created(connection, operator, &key).await?;
                diesel::insert_into(api_keys::table)
                    .values(key)
                    .execute(connection)
                    .await?;
                Ok(true)
            })
            .await
    }

    /// The deployment's key for `purpose`: 32 random bytes made by the first replica that asks,
    /// the same for every replica after that.
    pub async fn deployment_key(&self, purpose: &str) -> Result<Vec<u8>, StoreError> {
        #[derive(QueryableByName)]
        struct Key {
            #[diesel(sql_type = diesel::sql_types::Bytea)]
            key: Vec<u8>,
        }
        let mut connection = self.connection().await?;
        let fresh: [u8; 32] = rand::random();
        diesel::sql_query(
            "INSERT INTO deployment_keys (purpose, key) VALUES ($1, $2) ON CONFLICT DO NOTHING",
        )
        .bind::<diesel::sql_types::Text, _>(purpose)
        .bind::<diesel::sql_types::Bytea, _>(&fresh[..])
        .execute(&mut connection)
        .await?;
        let stored: Key = diesel::sql_query("SELECT key FROM deployment_keys WHERE purpose = $1")
            .bind::<diesel::sql_types::Text, _>(purpose)
            .get_result(&mut connection)
            .await?;
        Ok(stored.key)
    }

    /// Checks this replica's secrets key against the deployment's, under a lock so two replicas
    /// starting at once decide one after the other: when no key check is stored yet, or
    /// `opens` accepts one of them, `ours` is stored too (if new) and the answer is Ok;
    /// otherwise the ids of the keys stored.
    pub async fn check_secrets_key(
        &self,
        ours: Sealed,
        opens: impl Fn(&Sealed) -> bool + Send,
    ) -> Result<Result<(), Vec<String>>, StoreError> {
        #[derive(QueryableByName)]
        struct Check {
            #[diesel(sql_type = diesel::sql_types::Text)]
            key_id: String,
            #[diesel(sql_type = diesel::sql_types::Bytea)]
            check_value: Vec<u8>,
        }
        let mut connection = self.connection().await?;
        connection
            .transaction(async move |connection| {
                diesel::sql_query("SELECT pg_advisory_xact_lock(hashtext('secrets_key_checks'))")
                    .execute(connection)
                    .await?;
                let stored: Vec<Check> =
                    diesel::sql_query("SELECT key_id, check_value FROM secrets_key_checks")
                        .load(connection)
                        .await?;
                let stored: Vec<Sealed> = stored
                    .into_iter()
                    .map(|check| Sealed {
                        key_id: check.key_id,
                        ciphertext: check.check_value,
                    })
                    .collect();
                if !stored.is_empty() && !stored.iter().any(&opens) {
                    return Ok(Err(stored.into_iter().map(|check| check.key_id).collect()));
                }
                diesel::sql_query(
                    "INSERT INTO secrets_key_checks (key_id, check_value) VALUES ($1, $2) \
                     ON CONFLICT DO NOTHING",
                )
                .bind::<diesel::sql_types::Text, _>(&ours.key_id)
                .bind::<diesel::sql_types::Bytea, _>(&ours.ciphertext)
                .execute(connection)
                .await?;
                Ok(Ok(()))
            })
            .await
    }

    /// Removes the key checks of secrets keys that are retired: not among `held` (this replica's
    /// keys), and sealing no stored secret any more. Only while a check of `held` is stored, so
    /// the deployment's key is always on record; under the lock `check_secrets_key` takes.
    /// Returns the key ids removed. (A replica still on an older key during a rolling rotation
    /// may remove the new key's check while nothing is sealed with it yet; the new replicas'
    /// next `check_secrets_key` puts it back.)
    pub async fn forget_retired_key_checks(
        &self,
        held: &[String],
    ) -> Result<Vec<String>, StoreError> {
        #[derive(QueryableByName)]
        struct Removed {
            #[diesel(sql_type = diesel::sql_types::Text)]
            key_id: String,
        }
        let mut connection = self.connection().await?;
        connection
            .transaction(async move |connection| {
                diesel::sql_query("SELECT pg_advisory_xact_lock(hashtext('secrets_key_checks'))")
                    .execute(connection)
                    .await?;
                let removed: Vec<Removed> = diesel::sql_query(
                    "DELETE FROM secrets_key_checks retired \
                     WHERE NOT (retired.key_id = ANY($1)) \
                       AND EXISTS (SELECT 1 FROM secrets_key_checks ours \
                                   WHERE ours.key_id = ANY($1)) \
                       AND NOT EXISTS (SELECT 1 FROM servers \
                                       WHERE servers.mysql_password_key_id = retired.key_id \
                                          OR servers.ssh_private_key_key_id = retired.key_id) \
                       AND NOT EXISTS (SELECT 1 FROM webhooks \
                                       WHERE webhooks.secret_key_id = retired.key_id) \
                     RETURNING retired.key_id",
                )
                .bind::<diesel::sql_types::Array<diesel::sql_types::Text>, _>(held)
                .load(connection)
                .await?;
                Ok(removed.into_iter().map(|row| row.key_id).collect())
            })
            .await
    }
}
