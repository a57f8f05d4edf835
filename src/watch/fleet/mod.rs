//! The fleet hub: WatchServers' side of the watch room. For each tenant watched on this replica,
//! one feed holds the tenant's servers at a revision and brings them forward from the history,
//! one read per change whatever the number of watchers, handing each change to its watchers in
//! revision order. A watcher registered at revision R therefore gets R+1, R+2, ... with no gap;
//! the router in `notify.rs` tells the hub which tenant reached which revision.

mod stream;

use std::{
    collections::{HashMap, HashSet},
    sync::{
        Arc, Mutex, MutexGuard,
        atomic::{AtomicU64, Ordering},
    },
};

use tokio_util::sync::CancellationToken;

pub use stream::{FleetItem, FleetRequest, FleetStream, watch_fleet};

use super::{
    READ_RETRIES, RECHECK_INTERVAL,
    queue::{self, QueueReceiver, QueueSender},
};
use crate::{
    domain::{
        ServerId, TenantId,
        server::{Server, ServerChange},
    },
    store::{Store, StoreError},
};

/// How many changes a watcher may have queued before it is cut off as too slow.
const WATCHER_BUFFER: usize = 128;
/// How many history rows one read of a feed takes.
const HISTORY_PAGE: i64 = 500;

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A tenant's servers at a revision, and who watches them.
#[derive(Default)]
struct FeedState {
    revision: i64,
    servers: HashMap<ServerId, Arc<Server>>,
    watchers: Vec<QueueSender<ServerChange>>,
}

/// One watched tenant.
struct Feed {
    tenant: TenantId,
    /// Read once, by the first open; concurrent opens wait for that read.
    loaded: tokio::sync::OnceCell<()>,
    state: Mutex<FeedState>,
    /// Held while the feed reads the history: one read at a time, in order.
    reading: tokio::sync::Mutex<()>,
}

impl Feed {
    fn state(&self) -> MutexGuard<'_, FeedState> {
        lock(&self.state)
    }

    /// Applies changes in order and hands each to the watchers; a full queue cuts its watcher
    /// off. False when the changes do not follow the feed's revision (the history was
    /// compacted under it): nothing is applied then.
    fn apply(&self, changes: Vec<ServerChange>) -> bool {
        let mut state = self.state();
        for change in changes {
            if change.revision <= state.revision {
                continue;
            }
            if change.revision != state.revision + 1 {
                return false;
            }
            state.revision = change.revision;
            state
                .servers
                .insert(change.server.id, change.server.clone());
            queue::fan_out(&mut state.watchers, change);
        }
        true
    }

    /// Starts the feed over from a snapshot, cutting every watcher off (each resumes from
    /// what it has, or learns that its revision is gone).
    fn restart(&self, revision: i64, servers: Vec<Server>) {
        let mut state = self.state();
        for watcher in state.watchers.drain(..) {
            watcher.cut_off();
        }
        state.revision = revision;
        state.servers = servers
            .into_iter()
            .map(|server| (server.id, Arc::new(server)))
            .collect();
    }
}

/// Fans the committed changes of tenants' servers out to this replica's WatchServers streams.
pub struct FleetHub {
    store: Store,
    /// The watched tenants' feeds, each with how many opens and watchers hold it.
    feeds: Mutex<HashMap<TenantId, (Arc<Feed>, usize)>>,
    /// Tenants whose latest change could not be read: read again until it can.
    missed: Mutex<HashSet<TenantId>>,
    next_id: AtomicU64,
    shutdown: CancellationToken,
}

/// Where a watch starts: the revision it registered at and, for a watch without
/// since_revision, every server of the tenant at that revision.
pub struct Start {
    pub revision: i64,
    pub servers: Vec<Arc<Server>>,
}

/// A hold on a tenant's feed; the feed goes with its last hold.
struct FeedHold {
    hub: Arc<FleetHub>,
    feed: Arc<Feed>,
}

impl Drop for FeedHold {
    fn drop(&mut self) {
        self.hub.release(self.feed.tenant);
    }
}

/// One stream's registration with its tenant's feed; unregisters on drop. Its queue is cut
/// off when the watcher falls behind, or when the feed starts over.
pub struct FleetSubscription {
    hold: FeedHold,
    id: u64,
    queue: QueueReceiver<ServerChange>,
}

impl FleetSubscription {
    fn tenant(&self) -> TenantId {
        self.hold.feed.tenant
    }
}

impl Drop for FleetSubscription {
    fn drop(&mut self) {
        self.hold
            .feed
            .state()
            .watchers
            .retain(|watcher| watcher.id != self.id);
        metrics::gauge!("dbtrail_watch_streams_open").decrement(1.0);
    }
}

impl FleetHub {
    /// A hub with no watchers; `shutdown` ends every stream.
    pub fn new(store: Store, shutdown: CancellationToken) -> Arc<FleetHub> {
        Arc::new(FleetHub {
            store,
            feeds: Mutex::new(HashMap::new()),
            missed: Mutex::new(HashSet::new()),
            next_id: AtomicU64::new(1),
            shutdown,
        })
    }

    /// Registers a watcher of the tenant's servers, once the feed has reached the tenant's
    /// latest committed revision: a list then holds every change committed before the call.
    /// Without `since`, the start carries the tenant's servers; with it, none (the watcher
    /// replays the history after `since` up to the start's revision itself).
    pub async fn open(
        self: &Arc<FleetHub>,
        tenant: TenantId,
        since: Option<i64>,
    ) -> Result<(FleetSubscription, Start), StoreError> {
        let hold = self.hold(tenant);
        let feed = hold.feed.clone();
        feed.loaded
            .get_or_try_init(|| async {
                let (revision, servers) = self.store.fleet(tenant).await?;
                feed.restart(revision, servers);
                Ok::<_, StoreError>(())
            })
            .await?;
        let current = self.store.fleet_revision(tenant).await?;
        self.bring_forward(&feed, current).await?;
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (sender, queue) = queue::queue(id, WATCHER_BUFFER);
        let start = {
            let mut state = feed.state();
            state.watchers.push(sender);
            Start {
                revision: state.revision,
                servers: match since {
                    None => state.servers.values().cloned().collect(),
                    Some(_) => Vec::new(),
                },
            }
        };
        metrics::gauge!("dbtrail_watch_streams_open").increment(1.0);
        let subscription = FleetSubscription { hold, id, queue };
        Ok((subscription, start))
    }

    fn feeds(&self) -> MutexGuard<'_, HashMap<TenantId, (Arc<Feed>, usize)>> {
        lock(&self.feeds)
    }

    fn hold(self: &Arc<FleetHub>, tenant: TenantId) -> FeedHold {
        let mut feeds = self.feeds();
        let (feed, holds) = feeds.entry(tenant).or_insert_with(|| {
            let feed = Feed {
                tenant,
                loaded: tokio::sync::OnceCell::new(),
                state: Mutex::new(FeedState::default()),
                reading: tokio::sync::Mutex::new(()),
            };
            (Arc::new(feed), 0)
        });
        *holds += 1;
        FeedHold {
            hub: self.clone(),
            feed: feed.clone(),
        }
    }

    fn release(&self, tenant: TenantId) {
        let mut feeds = self.feeds();
        if let Some((_, holds)) = feeds.get_mut(&tenant) {
            *holds -= 1;
            if *holds == 0 {
                feeds.remove(&tenant);
            }
        }
    }

    fn loaded_feed(&self, tenant: TenantId) -> Option<Arc<Feed>> {
        self.feeds()
            .get(&tenant)
            .map(|(feed, _)| feed.clone())
            .filter(|feed| feed.loaded.initialized())
    }

    pub fn is_watched(&self, tenant: TenantId) -> bool {
        self.feeds().contains_key(&tenant)
    }

    /// Reads the history into the feed until it reaches `through`. A read that fails is tried
    /// again twice; a history compacted under the feed starts the feed over.
    async fn bring_forward(&self, feed: &Feed, through: i64) -> Result<(), StoreError> {
        let _reading = feed.reading.lock().await;
        loop {
            let from = feed.state().revision;
            if from >= through {
                return Ok(());
            }
            let changes = self.read_history(feed.tenant, from).await?;
            if changes.is_empty() {
                return Ok(());
            }
            if !feed.apply(changes) {
                tracing::warn!(tenant = %feed.tenant.uuid(), from, "fleet history compacted under a feed; starting it over");
                let (revision, servers) = self.store.fleet(feed.tenant).await?;
                feed.restart(revision, servers);
            }
        }
    }

    async fn read_history(
        &self,
        tenant: TenantId,
        after: i64,
    ) -> Result<Vec<ServerChange>, StoreError> {
        let mut pauses = READ_RETRIES.iter();
        loop {
            match self.store.fleet_history(tenant, after, HISTORY_PAGE).await {
                Ok(changes) => return Ok(changes),
                Err(error) => match pauses.next() {
                    Some(pause) => tokio::time::sleep(*pause).await,
                    None => return Err(error),
                },
            }
        }
    }

    /// A tenant's servers reached `revision`: its feed, if watched here, reads up to it. A
    /// change that cannot be read is read again by [`FleetHub::recheck`].
    pub async fn changed(&self, tenant: TenantId, revision: i64) {
        let Some(feed) = self.loaded_feed(tenant) else {
            return;
        };
        if let Err(error) = self.bring_forward(&feed, revision).await {
            tracing::warn!(%error, tenant = %tenant.uuid(), "could not read a fleet change for watchers; reading it again later");
            lock(&self.missed).insert(tenant);
        }
    }

    /// Brings a watched tenant's feed to the tenant's latest revision.
    async fn catch_up_tenant(&self, tenant: TenantId) -> Result<(), StoreError> {
        let Some(feed) = self.loaded_feed(tenant) else {
            return Ok(());
        };
        let current = self.store.fleet_revision(tenant).await?;
        self.bring_forward(&feed, current).await
    }

    /// Every few seconds until shutdown: the tenants whose change could not be read.
    pub async fn recheck(self: Arc<FleetHub>) {
        let mut tick = tokio::time::interval(RECHECK_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = self.shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            let missed: Vec<TenantId> = lock(&self.missed).drain().collect();
            for tenant in missed {
                if self.catch_up_tenant(tenant).await.is_err() {
                    lock(&self.missed).insert(tenant);
                }
            }
        }
    }

    /// After the LISTEN connection came back: every watched tenant's feed reads what it missed.
    pub async fn catch_up(&self) {
        let tenants: Vec<TenantId> = self.feeds().keys().copied().collect();
        for tenant in tenants {
            if let Err(error) = self.catch_up_tenant(tenant).await {
                tracing::warn!(%error, tenant = %tenant.uuid(), "could not catch a fleet feed up");
                lock(&self.missed).insert(tenant);
            }
        }
    }
}
