//! Tenant and key management for the command line (and tests): create, list, revoke, and the
//! first-start bootstrap key. Every change is in the audit log as the command line's
//! (`cli:USER`, the OS user who ran it), or the first start's (`bootstrap`).

use std::time::Duration;

use uuid::Uuid;

use super::keys;
use crate::{
    config::DatabaseConfig,
    domain::{
        Permission, Refused,
        audit::{CLI_KEY_NAME, Operator},
    },
    store::{KeySummary, NewApiKey, Store, StoreError, TenantSummary, WriteError},
};

/// The audit log's name for the first start's bootstrap of the default tenant and its key.
const BOOTSTRAP: &str = "bootstrap";

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
    /// Who the audit log says made the changes.
    operator: Operator,
}

/// The command line as the audit log names it: `cli:USER`, with the OS user running it (its
/// uid when it has no name).
fn command_line() -> Operator {
    Operator {
        name: format!("{CLI_KEY_NAME}:{}", os_user()),
    }
}

/// The name of the OS user running this process, or `uid=N` when it has none.
fn os_user() -> String {
    // SAFETY: getuid cannot fail.
    let uid = unsafe { libc::getuid() };
    let mut buffer = vec![0 as libc::c_char; 4096];
    // SAFETY: a passwd of zeroes is a valid value (null pointers) for getpwuid_r to fill.
    let mut entry: libc::passwd = unsafe { std::mem::zeroed() };
    let mut found: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: getpwuid_r writes only into `entry`, `buffer` (of the length given) and `found`.
    let status = unsafe {
        libc::getpwuid_r(
            uid,
            &mut entry,
            buffer.as_mut_ptr(),
            buffer.len(),
            &mut found,
        )
    };
    if status != 0 || found.is_null() || entry.pw_name.is_null() {
        return format!("uid={uid}");
    }
    // SAFETY: on success pw_name points at a NUL-terminated string inside `buffer`.
    unsafe { std::ffi::CStr::from_ptr(entry.pw_name) }
        .to_string_lossy()
        .into_owned()
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
        Admin {
            store,
            operator: command_line(),
        }
    }

    /// Connects to the database at `database_url` (which must be migrated).
    pub async fn connect(database_url: &str) -> Result<Admin, AdminError> {
        let store = Store::connect(&DatabaseConfig {
            database_url: Some(database_url.to_owned()),
            pool_size: 2,
            pool_timeout: Duration::from_secs(5),
            statement_timeout: Duration::from_secs(10),
        })?;
        Ok(Admin::new(store))
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
        self.store.prepare_audit_log().await?;
        Ok(self
            .store
            .create_tenant(name, server_limit, &self.operator)
            .await?)
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
        self.store.prepare_audit_log().await?;
        self.store.insert_api_key(record, &self.operator).await?;
        Ok(created)
    }

    /// A tenant's keys (never their secrets).
    pub async fn list_keys(&self, tenant_name: &str) -> Result<Vec<KeySummary>, AdminError> {
        let tenant_id = self.store.tenant_id(tenant_name).await?;
        Ok(self.store.list_api_keys(tenant_id).await?)
    }

    /// Revokes a key on every replica.
    pub async fn revoke_key(&self, key_id: Uuid) -> Result<(), AdminError> {
        self.store.prepare_audit_log().await?;
        Ok(self.store.revoke_api_key(key_id, &self.operator).await?)
    }

    /// On an empty database: tenant `default` and one key with every permission.
    pub async fn bootstrap(&self) -> Result<Option<CreatedKey>, AdminError> {
        let tenant_id = Uuid::now_v7();
        let (record, created) = new_key(tenant_id, "bootstrap", Permission::ALL, None)?;
        let operator = Operator {
            name: BOOTSTRAP.to_owned(),
        };
        self.store.prepare_audit_log().await?;
        let made = self
            .store
            .bootstrap_if_empty(tenant_id, "default", record, &operator)
            .await?;
        Ok(made.then_some(created))
    }
}
