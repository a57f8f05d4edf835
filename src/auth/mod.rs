//! API keys and permissions: who is calling, as which tenant, allowed to do what. Keys are
//! cached so a call costs no database round trip; every replica forgets a revoked key on NOTIFY.

pub mod admin;
pub mod keys;
mod layer;

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use chrono::{DateTime, Utc};
use tokio::sync::broadcast;
use uuid::Uuid;

pub use layer::{AuthLayer, required_permission};

use crate::{
    domain::{Permission, TenantId},
    store::{ApiKeyRecord, Store, StoreError},
};

/// How long a cached key is trusted without NOTIFY; a safety net, not the revocation path.
const CACHE_TTL: Duration = Duration::from_secs(60);
const CACHE_CAPACITY: usize = 10_000;

/// Why a call was not let through.
#[derive(Debug, Clone, thiserror::Error)]
pub enum AuthError {
    #[error("missing credentials: send the header authorization: Bearer <api key>")]
    MissingCredentials,
    #[error("invalid API key")]
    InvalidKey,
    #[error("API key has been revoked")]
    Revoked,
    #[error("API key has expired")]
    Expired,
    #[error("API key lacks the permission {0}")]
    MissingPermission(Permission),
    #[error("credentials could not be checked: the database is unavailable")]
    Unavailable,
    #[error("no such method of dbtrail.servers.v1.ServersService")]
    UnknownMethod,
}

/// The authenticated caller of a request.
#[derive(Debug, Clone)]
pub struct Principal {
    pub key_id: Uuid,
    pub tenant_id: TenantId,
    pub permissions: Vec<Permission>,
    pub expires_at: Option<DateTime<Utc>>,
    key_hash: Vec<u8>,
}

impl Principal {
    /// Ok when the key carries the permission.
    pub fn require(&self, permission: Permission) -> Result<(), AuthError> {
        if self.permissions.contains(&permission) {
            Ok(())
        } else {
            Err(AuthError::MissingPermission(permission))
        }
    }
}

/// A change that may invalidate open streams' keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Revocation {
    /// This key was revoked.
    Key(Uuid),
    /// Revocations may have been missed (the LISTEN connection dropped): re-check every key.
    Unknown,
}

struct CachedKey {
    record: ApiKeyRecord,
    fetched: Instant,
}

/// Checks API keys against a cache backed by the store.
pub struct Authenticator {
    store: Store,
    cache: Mutex<HashMap<Vec<u8>, CachedKey>>,
    revocations: broadcast::Sender<Revocation>,
    /// Bumped by every revocation: a lookup that raced one must not cache what it read.
    generation: AtomicU64,
}

impl Authenticator {
    /// An authenticator with an empty cache.
    pub fn new(store: Store) -> Arc<Authenticator> {
        Arc::new(Authenticator {
            store,
            cache: Mutex::new(HashMap::new()),
            revocations: broadcast::channel(256).0,
            generation: AtomicU64::new(0),
        })
    }

    /// Authenticates the value of an authorization header.
    pub async fn authenticate(&self, header: Option<&str>) -> Result<Principal, AuthError> {
        let key = match keys::parse_authorization(header) {
            keys::Credentials::Missing => return Err(AuthError::MissingCredentials),
            keys::Credentials::Malformed => return Err(AuthError::InvalidKey),
            keys::Credentials::Key(key) => key,
        };
        self.check_hash(keys::hash(key)).await
    }

    /// Checks again that a principal's key is still valid (after a possible missed revocation).
    pub async fn recheck(&self, principal: &Principal) -> Result<(), AuthError> {
        self.check_hash(principal.key_hash.clone()).await.map(drop)
    }

    async fn check_hash(&self, key_hash: Vec<u8>) -> Result<Principal, AuthError> {
        let record = match self.cached(&key_hash) {
            Some(record) => record,
            None => {
                let generation = self.generation.load(Ordering::Acquire);
                let record = self
                    .store
                    .find_api_key(&key_hash)
                    .await
                    .map_err(|error| match error {
                        StoreError::Unavailable(_) => AuthError::Unavailable,
                        other => {
                            tracing::error!(error = %other, "API key lookup failed");
                            AuthError::Unavailable
                        }
                    })?
                    .ok_or(AuthError::InvalidKey)?;
                self.remember(key_hash.clone(), record.clone(), generation);
                record
            }
        };
        if record.revoked_at.is_some() {
            return Err(AuthError::Revoked);
        }
        if record
            .expires_at
            .is_some_and(|expires| expires <= Utc::now())
        {
            return Err(AuthError::Expired);
        }
        Ok(Principal {
            key_id: record.id,
            tenant_id: TenantId(record.tenant_id),
            permissions: record
                .permissions
                .iter()
                .filter_map(|text| Permission::parse(text))
                .collect(),
            expires_at: record.expires_at,
            key_hash,
        })
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, HashMap<Vec<u8>, CachedKey>> {
        // A poisoned cache only means a panic elsewhere mid-insert; its data is still usable.
        self.cache
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn cached(&self, key_hash: &[u8]) -> Option<ApiKeyRecord> {
        let cache = self.cache();
        let entry = cache.get(key_hash)?;
        (entry.fetched.elapsed() < CACHE_TTL).then(|| entry.record.clone())
    }

    fn remember(&self, key_hash: Vec<u8>, record: ApiKeyRecord, generation: u64) {
        let mut cache = self.cache();
        // Checked under the cache lock, which revocations also take.
        if self.generation.load(Ordering::Acquire) != generation {
            return;
        }
        if cache.len() >= CACHE_CAPACITY {
            cache.clear();
        }
        cache.insert(
            key_hash,
            CachedKey {
                record,
                fetched: Instant::now(),
            },
        );
    }

    /// A key was revoked (NOTIFY): forget it and end its streams.
    pub fn key_revoked(&self, key_id: Uuid) {
        {
            let mut cache = self.cache();
            self.generation.fetch_add(1, Ordering::AcqRel);
            cache.retain(|_, entry| entry.record.id != key_id);
        }
        let _ = self.revocations.send(Revocation::Key(key_id));
    }

    /// Revocations may have been missed: forget everything and have streams re-check.
    pub fn revocations_missed(&self) {
        {
            let mut cache = self.cache();
            self.generation.fetch_add(1, Ordering::AcqRel);
            cache.clear();
        }
        let _ = self.revocations.send(Revocation::Unknown);
    }

    /// Revocations as they happen, for long-lived streams.
    pub fn subscribe(&self) -> broadcast::Receiver<Revocation> {
        self.revocations.subscribe()
    }
}
