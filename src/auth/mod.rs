//! API keys and permissions: who is calling, as which tenant, allowed to do what. Keys are
//! cached so a call costs no database round trip; every replica forgets a revoked key on NOTIFY.
//! Keys that match nothing cost one lookup each at most: a key found unknown is remembered as
//! such for a minute, a client address that keeps presenting unknown keys is refused lookups for
//! a while, and only a few lookups run at once, so a flood of made-up keys cannot drain the pool.

pub mod admin;
pub mod client;
pub mod keys;
mod layer;
pub mod throttle;

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use chrono::{DateTime, Utc};
use tokio::sync::{Semaphore, broadcast};
use uuid::Uuid;

pub use client::{ClientAddress, PeerAddress, TrustedProxies};
pub use layer::{AuthLayer, SERVICE_PREFIX, required_permission};
use throttle::{Buckets, Rate, client_key};

use crate::{
    domain::{Permission, TenantId, audit::Actor},
    store::{ApiKeyRecord, Store, StoreError},
};

/// How long a cached key is trusted without NOTIFY; a safety net, not the revocation path.
const CACHE_TTL: Duration = Duration::from_secs(60);
const CACHE_CAPACITY: usize = 10_000;
/// How long a key that matched nothing is answered as invalid without asking the database.
const MISS_TTL: Duration = Duration::from_secs(60);
/// Unknown keys a client address may present: 20 at once, then 2 a second.
const FAILURES: Rate = Rate {
    burst: 20.0,
    per_second: 2.0,
};
const TRACKED_ADDRESSES: usize = 10_000;
/// Key lookups in flight at once: a quarter of the API pool's default, whatever the flood.
const LOOKUPS_IN_FLIGHT: usize = 4;
/// How long a lookup waits for one of those.
const LOOKUP_WAIT: Duration = Duration::from_secs(2);

/// Why a call was not let through.
#[derive(Debug, Clone, thiserror::Error)]
pub enum AuthError {
    #[error("missing credentials: send the header authorization: Bearer <api key>")]
    MissingCredentials,
    #[error("invalid API key")]
    InvalidKey,
    #[error(
        "more than one authorization header: send exactly one, authorization: Bearer <api key>"
    )]
    DuplicateCredentials,
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
    #[error(
        "too many unknown API keys from this address; retry in {} s with a valid key",
        retry_after.as_secs().max(1)
    )]
    TooManyFailures { retry_after: Duration },
}

/// The authenticated caller of a request.
#[derive(Debug, Clone)]
pub struct Principal {
    pub key_id: Uuid,
    /// The key's name (its label, `keys create --name`), for the audit log.
    pub key_name: Arc<str>,
    pub tenant_id: TenantId,
    pub permissions: Vec<Permission>,
    pub expires_at: Option<DateTime<Utc>>,
    key_hash: Vec<u8>,
}

impl Principal {
    /// The caller of `method` as the audit log names it.
    pub fn actor(&self, method: &str, request_id: &str, client: Option<IpAddr>) -> Actor {
        Actor {
            tenant_id: self.tenant_id,
            key_id: Some(self.key_id),
            key_name: self.key_name.to_string(),
            request_id: request_id.to_owned(),
            method: method.to_owned(),
            client_address: client,
        }
    }

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

/// A key as the cache keeps it, shared by the calls that present it.
struct KnownKey {
    record: ApiKeyRecord,
    /// The key's name, shared by every Principal of the key.
    name: Arc<str>,
}

struct CachedKey {
    key: Arc<KnownKey>,
    fetched: Instant,
}

/// Checks API keys against a cache backed by the store.
pub struct Authenticator {
    store: Store,
    cache: Mutex<HashMap<Vec<u8>, CachedKey>>,
    /// Hashes that matched no key, and when.
    misses: Mutex<HashMap<Vec<u8>, Instant>>,
    /// Unknown keys presented, by client address.
    failures: Buckets<IpAddr>,
    lookups_in_flight: Semaphore,
    lookups: AtomicU64,
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
            misses: Mutex::new(HashMap::new()),
            failures: Buckets::new(FAILURES, TRACKED_ADDRESSES),
            lookups_in_flight: Semaphore::new(LOOKUPS_IN_FLIGHT),
            lookups: AtomicU64::new(0),
            revocations: broadcast::channel(256).0,
            generation: AtomicU64::new(0),
        })
    }

    /// Authenticates the value of an authorization header sent from `client`.
    pub async fn authenticate(
        &self,
        header: Option<&str>,
        client: Option<IpAddr>,
    ) -> Result<Principal, AuthError> {
        let key = match keys::parse_authorization(header) {
            keys::Credentials::Missing => return Err(AuthError::MissingCredentials),
            keys::Credentials::Malformed => return Err(AuthError::InvalidKey),
            keys::Credentials::Key(key) => key,
        };
        self.check_hash(keys::hash(key), client.map(client_key))
            .await
    }

    /// Checks again that a principal's key is still valid (after a possible missed revocation).
    pub async fn recheck(&self, principal: &Principal) -> Result<(), AuthError> {
        self.check_hash(principal.key_hash.clone(), None)
            .await
            .map(drop)
    }

    /// How many times a key was looked up in the database.
    pub fn key_lookups(&self) -> u64 {
        self.lookups.load(Ordering::Relaxed)
    }

    async fn check_hash(
        &self,
        key_hash: Vec<u8>,
        client: Option<IpAddr>,
    ) -> Result<Principal, AuthError> {
        let known = match self.cached(&key_hash) {
            Some(known) => known,
            None => self.look_up(&key_hash, client).await?,
        };
        let record = &known.record;
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
            key_name: known.name.clone(),
            tenant_id: TenantId::from_uuid(record.tenant_id),
            permissions: record
                .permissions
                .iter()
                .filter_map(|text| Permission::parse(text))
                .collect(),
            expires_at: record.expires_at,
            key_hash,
        })
    }

    /// The key of `key_hash` from the database, unless it is known to match nothing or its
    /// client has presented too many unknown keys.
    async fn look_up(
        &self,
        key_hash: &[u8],
        client: Option<IpAddr>,
    ) -> Result<Arc<KnownKey>, AuthError> {
        if self.known_miss(key_hash) {
            return Err(AuthError::InvalidKey);
        }
        // Waiting is bounded too: under a flood from many addresses a lookup fails fast.
        let _permit = tokio::time::timeout(LOOKUP_WAIT, self.lookups_in_flight.acquire())
            .await
            .map_err(|_| AuthError::Unavailable)?
            .map_err(|_| AuthError::Unavailable)?;
        // Another lookup of the same key may have finished while this one waited.
        if let Some(known) = self.cached(key_hash) {
            return Ok(known);
        }
        if self.known_miss(key_hash) {
            return Err(AuthError::InvalidKey);
        }
        // A lookup takes a token of its client up front (so concurrent ones cannot all pass a
        // check first) and gives it back when the key exists. A key this replica found valid
        // before (its cache entry only expired) takes none: a busy address's good keys are
        // never refused for its bad ones.
        let throttled = client.filter(|_| !self.was_valid(key_hash));
        if let Some(client) = throttled {
            self.failures
                .try_take(&client)
                .map_err(|retry_after| AuthError::TooManyFailures { retry_after })?;
        }
        self.lookups.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("dbtrail_auth_key_lookups_total").increment(1);
        let generation = self.generation.load(Ordering::Acquire);
        let found = self.store.find_api_key(key_hash).await.map_err(|error| {
            // The database failed, not the key: the client's token is given back.
            if let Some(client) = throttled {
                self.failures.refund(&client);
            }
            if !matches!(error, StoreError::Unavailable(_)) {
                tracing::error!(%error, "API key lookup failed");
            }
            AuthError::Unavailable
        })?;
        let Some(record) = found else {
            self.remember_miss(key_hash);
            return Err(AuthError::InvalidKey);
        };
        if let Some(client) = throttled {
            self.failures.refund(&client);
        }
        let known = Arc::new(KnownKey {
            name: Arc::from(record.name.as_str()),
            record,
        });
        self.remember(key_hash.to_vec(), known.clone(), generation);
        Ok(known)
    }

    /// Whether the cache holds the key, expired or not.
    fn was_valid(&self, key_hash: &[u8]) -> bool {
        self.cache().contains_key(key_hash)
    }

    fn misses(&self) -> std::sync::MutexGuard<'_, HashMap<Vec<u8>, Instant>> {
        self.misses
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn known_miss(&self, key_hash: &[u8]) -> bool {
        self.misses()
            .get(key_hash)
            .is_some_and(|at| at.elapsed() < MISS_TTL)
    }

    fn remember_miss(&self, key_hash: &[u8]) {
        let mut misses = self.misses();
        if misses.len() >= CACHE_CAPACITY {
            misses.retain(|_, at| at.elapsed() < MISS_TTL);
            if misses.len() >= CACHE_CAPACITY {
                misses.clear();
            }
        }
        misses.insert(key_hash.to_vec(), Instant::now());
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, HashMap<Vec<u8>, CachedKey>> {
        // A poisoned cache only means a panic elsewhere mid-insert; its data is still usable.
        self.cache
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn cached(&self, key_hash: &[u8]) -> Option<Arc<KnownKey>> {
        let cache = self.cache();
        let entry = cache.get(key_hash)?;
        (entry.fetched.elapsed() < CACHE_TTL).then(|| entry.key.clone())
    }

    fn remember(&self, key_hash: Vec<u8>, key: Arc<KnownKey>, generation: u64) {
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
                key,
                fetched: Instant::now(),
            },
        );
    }

    /// A key was revoked (NOTIFY): forget it and end its streams.
    pub fn key_revoked(&self, key_id: Uuid) {
        {
            let mut cache = self.cache();
            self.generation.fetch_add(1, Ordering::AcqRel);
            cache.retain(|_, entry| entry.key.record.id != key_id);
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
