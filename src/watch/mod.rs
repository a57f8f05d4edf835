//! The watch room. This file is the onboarding hub: it fans onboarding changes out to
//! WatchOnboarding streams (one read per changed server, whatever the number of watchers);
//! `stream` is one such stream. `fleet` is WatchServers' hub and stream; `lifeline` what ends
//! any watch stream (shutdown, key expiry, revocation); `queue` the hub-to-stream queue and the
//! outbox both kinds of stream use. The router in `notify.rs` tells the hubs
//! what changed.

pub mod fleet;
mod lifeline;
mod queue;
mod stream;

use std::{
    collections::{HashMap, HashSet},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use futures_util::{
    FutureExt,
    future::{BoxFuture, Shared},
};
use tokio_util::sync::CancellationToken;

pub use stream::{WatchError, WatchRequest, WatchStream, watch};

use queue::{QueueReceiver, QueueSender};

use crate::{
    domain::{ServerId, TenantId, onboarding::OnboardingStatus},
    store::{Store, StoreError},
};

/// How many changes a watcher may have queued before it is cut off as too slow.
const WATCHER_BUFFER: usize = 64;
/// The pauses between the reads of one change, when they fail.
const READ_RETRIES: [Duration; 2] = [Duration::from_millis(100), Duration::from_millis(500)];
/// How often the servers whose change could not be read are read again.
const RECHECK_INTERVAL: Duration = Duration::from_secs(5);

/// Where a watch of a server starts: its tenant and status, read after the watch subscribed.
/// None when the read failed; each open then reads again by itself, to report its own error.
type Start = Option<(TenantId, Arc<OnboardingStatus>)>;

/// One read of a server's status that every open joining it shares.
type SharedRead = Shared<BoxFuture<'static, Start>>;

/// A server with watchers on this replica.
struct Watched {
    watchers: Vec<QueueSender<OnboardingStatus>>,
    /// The read that opens join until it starts. It starts once the read before it has
    /// finished, so a burst of opens of one server costs two reads, not one each, and every open
    /// that joined it had subscribed before it started: no change can fall between.
    next_read: Option<SharedRead>,
    /// Held while a read of this server runs.
    reading: Arc<tokio::sync::Mutex<()>>,
}

impl Default for Watched {
    fn default() -> Watched {
        Watched {
            watchers: Vec::new(),
            next_read: None,
            reading: Arc::new(tokio::sync::Mutex::new(())),
        }
    }
}

/// This replica's two hubs: WatchOnboarding's and WatchServers'.
#[derive(Clone)]
pub struct Hubs {
    pub onboarding: Arc<WatchHub>,
    pub fleet: Arc<fleet::FleetHub>,
}

impl Hubs {
    /// Both hubs over the watch pool, with their recheck loops running until `shutdown`.
    pub fn start(store: Store, shutdown: CancellationToken) -> Hubs {
        let onboarding = WatchHub::new(store.clone(), shutdown.clone());
        let fleet = fleet::FleetHub::new(store, shutdown);
        tokio::spawn(onboarding.clone().recheck());
        tokio::spawn(fleet.clone().recheck());
        Hubs { onboarding, fleet }
    }
}

/// Fans committed onboarding changes out to this replica's watch streams.
pub struct WatchHub {
    store: Store,
    watched: Mutex<HashMap<ServerId, Watched>>,
    /// Watched servers whose latest change could not be read: read again until it can.
    missed: Mutex<HashSet<ServerId>>,
    next_id: AtomicU64,
    shutdown: CancellationToken,
}

/// One stream's registration; unregisters on drop.
pub struct Subscription {
    hub: Arc<WatchHub>,
    server_id: ServerId,
    id: u64,
    pub queue: QueueReceiver<OnboardingStatus>,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.hub.unsubscribe(self.server_id, self.id);
    }
}

impl WatchHub {
    /// A hub with no watchers; `shutdown` ends every stream.
    pub fn new(store: Store, shutdown: CancellationToken) -> Arc<WatchHub> {
        Arc::new(WatchHub {
            store,
            watched: Mutex::new(HashMap::new()),
            missed: Mutex::new(HashSet::new()),
            next_id: AtomicU64::new(1),
            shutdown,
        })
    }

    fn watched(&self) -> std::sync::MutexGuard<'_, HashMap<ServerId, Watched>> {
        self.watched
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Subscribes to a tenant's server and reads where the stream starts, after subscribing,
    /// sharing the read with the other opens of the same server.
    pub async fn open(
        self: &Arc<WatchHub>,
        tenant: TenantId,
        server_id: ServerId,
    ) -> Result<(Subscription, Arc<OnboardingStatus>), StoreError> {
        let (subscription, read) = self.subscribe(server_id);
        let (owner, current) = match read.await {
            Some(start) => start,
            None => {
                let server = self.store.server_by_id(server_id).await?;
                (server.tenant_id, Arc::new(server.onboarding_status()))
            }
        };
        if owner != tenant {
            return Err(StoreError::NotFound);
        }
        Ok((subscription, current))
    }

    /// Registers a watcher and joins the next read of its server.
    fn subscribe(self: &Arc<WatchHub>, server_id: ServerId) -> (Subscription, SharedRead) {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (sender, queue) = queue::queue(id, WATCHER_BUFFER);
        let read = {
            let mut watched = self.watched();
            let entry = watched.entry(server_id).or_default();
            entry.watchers.push(sender);
            let reading = entry.reading.clone();
            entry
                .next_read
                .get_or_insert_with(|| self.clone().read_start(server_id, reading))
                .clone()
        };
        metrics::gauge!("dbtrail_watch_streams_open").increment(1.0);
        let subscription = Subscription {
            hub: self.clone(),
            server_id,
            id,
            queue,
        };
        (subscription, read)
    }

    /// The next read of a server's start: it waits for the read before it, then closes itself
    /// to new opens and reads.
    fn read_start(
        self: Arc<WatchHub>,
        server_id: ServerId,
        reading: Arc<tokio::sync::Mutex<()>>,
    ) -> SharedRead {
        async move {
            let _reading = reading.lock_owned().await;
            if let Some(entry) = self.watched().get_mut(&server_id) {
                entry.next_read = None;
            }
            let server = self.store.server_by_id(server_id).await.ok()?;
            Some((server.tenant_id, Arc::new(server.onboarding_status())))
        }
        .boxed()
        .shared()
    }

    fn unsubscribe(&self, server_id: ServerId, id: u64) {
        let mut watched = self.watched();
        if let Some(entry) = watched.get_mut(&server_id) {
            entry.watchers.retain(|watcher| watcher.id != id);
            if entry.watchers.is_empty() {
                watched.remove(&server_id);
            }
        }
        metrics::gauge!("dbtrail_watch_streams_open").decrement(1.0);
    }

    pub fn is_watched(&self, server_id: ServerId) -> bool {
        self.watched().contains_key(&server_id)
    }

    /// Hands a status to every watcher of its server; a full queue cuts that watcher off.
    fn fan_out(&self, status: OnboardingStatus) {
        let mut watched = self.watched();
        if let Some(entry) = watched.get_mut(&status.server_id) {
            queue::fan_out(&mut entry.watchers, status);
        }
    }

    fn missed(&self) -> std::sync::MutexGuard<'_, HashSet<ServerId>> {
        self.missed
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// A server's onboarding reached `revision`: one read (retried twice), then fan-out. A
    /// change that cannot be read is read again by [`WatchHub::recheck`], so no watcher waits
    /// for it forever.
    pub async fn changed(&self, server_id: ServerId, revision: i64) {
        let mut pauses = READ_RETRIES.iter();
        loop {
            if !self.is_watched(server_id) {
                return;
            }
            match self
                .store
                .onboarding_history(server_id, revision - 1, 1)
                .await
            {
                Ok(statuses) => {
                    statuses.into_iter().for_each(|status| self.fan_out(status));
                    return;
                }
                Err(error) => match pauses.next() {
                    Some(pause) => tokio::time::sleep(*pause).await,
                    None => {
                        tracing::warn!(%error, %server_id, "could not read a change for watchers; reading it again later");
                        self.missed().insert(server_id);
                        return;
                    }
                },
            }
        }
    }

    /// Every few seconds until shutdown: the latest status of each watched server whose change
    /// could not be read, from which each stream fills its gap out of the history.
    pub async fn recheck(self: Arc<WatchHub>) {
        let mut tick = tokio::time::interval(RECHECK_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = self.shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            let missed: Vec<ServerId> = self.missed().drain().collect();
            for server_id in missed.into_iter().filter(|id| self.is_watched(*id)) {
                match self.store.server_by_id(server_id).await {
                    Ok(server) => self.fan_out(server.onboarding_status()),
                    Err(_) => {
                        self.missed().insert(server_id);
                    }
                }
            }
        }
    }

    /// After the LISTEN connection came back: send every watched server's latest status, from
    /// which each stream fills any gap out of the history.
    pub async fn catch_up(&self) {
        let watched: Vec<ServerId> = self.watched().keys().copied().collect();
        for server_id in watched {
            match self.store.server_by_id(server_id).await {
                Ok(server) => self.fan_out(server.onboarding_status()),
                Err(error) => tracing::warn!(%error, %server_id, "could not catch a watcher up"),
            }
        }
    }
}
