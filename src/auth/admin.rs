//! Tenant and key management for the command line (and tests): create, list, revoke, and the
//! first-start bootstrap key.

use std::time::Duration;

use uuid::Uuid;

use super::keys;
use crate::{
    config::DatabaseConfig,
    domain::{Permission, Refused},
    store::{KeySummary, NewApiKey, Store, StoreError, TenantSummary, WriteError},
};

/// Why an administrative command failed.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Refused(#[from] Refused),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<WriteError> for AdminError {
    fn from(error: WriteError) -> AdminError {
        match error {
            WriteError::Refused(refused) => AdminError::Refused(refused),
            WriteError::Store(error) => AdminError::Store(error),
        }
    }
}

/// A key just created: its id and the secret, shown once.
#[derive(Debug, Clone)]
pub struct CreatedKey {
    pub id: Uuid,
    pub secret: String,
}

/// Administrative operations over the store.
#[derive(Clone)]
pub struct Admin {
    store: Store,
}

/// Every permission, as the command line writes them.
fn known_permissions() -> String {
    let names: Vec<&str> = Permission::ALL
        .iter()
        .map(|permission| permission.as_str())
        .collect();
    names.join(", ")
}

/// Parses `servers:read,servers:write` into permissions.
pub fn parse_permissions(texts: &[&str]) -> Result<Vec<Permission>, AdminError> {
    if texts.is_empty() {
        return Err(AdminError::Invalid(format!(
            "at least one permission is needed: {}",
            known_permissions()
        )));
    }
    let mut permissions = Vec::new();
    for text in texts {
        let permission = Permission::parse(text.trim()).ok_or_else(|| {
            AdminError::Invalid(format!(
                "unknown permission {text:?}: use {}",
                known_permissions()
            ))
        })?;
        if !permissions.contains(&permission) {
            permissions.push(permission);
        }
    }
    Ok(permissions)
}

fn new_key(
    tenant_id: Uuid,
    name: &str,
    permissions: &[Permission],
    expires_in: Option<Duration>,
) -> Result<(NewApiKey, CreatedKey), AdminError> {
    let secret = keys::generate();
    let expires_at = match expires_in {
        Some(duration) => Some(
            crate::domain::now()
                + chrono::Duration::from_std(duration)
                    .map_err(|_| AdminError::Invalid("expiry is too far away".into()))?,
        ),
        None => None,
    };
    let id = Uuid::now_v7();
    let record = NewApiKey {
        id,
        tenant_id,
        name: name.to_owned(),
        key_hash: keys::hash(&secret),
        prefix: keys::display_prefix(&secret),
        permissions: permissions
            .iter()
            .map(|permission| permission.as_str().to_owned())
            .collect(),
        expires_at,
    };
    Ok((record, CreatedKey { id, secret }))
}

impl Admin {
    /// Administration over an existing store handle.
    pub fn new(store: Store) -> Admin {
        Admin { store }
    }

    /// Connects to the database at `database_url` (which must be migrated).
    pub async fn connect(database_url: &str) -> Result<Admin, AdminError> {
        let store = Store::connect(&DatabaseConfig {
            database_url: Some(database_url.to_owned()),
            pool_size: 2,
            pool_timeout: Duration::from_secs(5),
            statement_timeout: Duration::from_secs(10),
        })?;
        Ok(Admin { store })
    }

    /// Creates a tenant.
    pub async fn create_tenant(
        &self,
        name: &str,
        server_limit: Option<i32>,
    ) -> Result<Uuid, AdminError> {
        let valid_name = !name.is_empty()
            && name.len() <= 100
            && name
                .bytes()
                .all(|byte| byte.is_ascii_alphanumeric() || byte == b'-' || byte == b'_');
        if !valid_name {
            return Err(AdminError::Invalid(format!(
                "tenant name {name:?} must be 1 to 100 letters, digits, '-' or '_'"
            )));
        }
        if server_limit.is_some_and(|limit| limit < 0) {
            return Err(AdminError::Invalid(
                "server limit must not be negative".into(),
            ));
        }
        Ok(self.store.create_tenant(name, server_limit).await?)
    }

    /// Every tenant.
    pub async fn list_tenants(&self) -> Result<Vec<TenantSummary>, AdminError> {
        Ok(self.store.list_tenants().await?)
    }

    /// Creates a key for a tenant; the secret is returned once and stored only as a hash.
    pub async fn create_key(
        &self,
        tenant_name: &str,
        permissions: &[&str],
        name: Option<&str>,
        expires_in: Option<Duration>,
    ) -> Result<CreatedKey, AdminError> {
        let permissions = parse_permissions(permissions)?;
        let tenant_id = self.store.tenant_id(tenant_name).await?;
        let (record, created) = new_key(tenant_id, name.unwrap_or(""), &permissions, expires_in)?;
        self.store.insert_api_key(record).await?;
        Ok(created)
    }

    /// A tenant's keys (never their secrets).
    pub async fn list_keys(&self, tenant_name: &str) -> Result<Vec<KeySummary>, AdminError> {
        let tenant_id = self.store.tenant_id(tenant_name).await?;
        Ok(self.store.list_api_keys(tenant_id).await?)
    }

    /// Revokes a key on every replica.
    pub async fn revoke_key(&self, key_id: Uuid) -> Result<(), AdminError> {
        Ok(self.store.revoke_api_key(key_id).await?)
    }

    /// On an empty database: tenant `default` and one key with every permission.
    pub async fn bootstrap(&self) -> Result<Option<CreatedKey>, AdminError> {
        let tenant_id = Uuid::now_v7();
        let (record, created) = new_key(tenant_id, "bootstrap", Permission::ALL, None)?;
        let made = self
            .store
            .bootstrap_if_empty(tenant_id, "default", record)
            .await?;
        Ok(made.then_some(created))
    }
}
