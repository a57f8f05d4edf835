//! One WatchServers stream: the watcher's list at the revision it registered at (or the history
//! after since_revision up to it), then every later change of the tenant's servers in revision
//! order, each as ADDED, MODIFIED or DELETED under the watcher's view, or nothing when the server
//! is outside it before and after. It ends when the key is revoked or expires, the client
//! leaves, the watcher falls behind, or the replica shuts down.
//!
//! Like WatchOnboarding's, the stream is a state machine polled by the connection's own task.

use std::{pin::Pin, sync::Arc};

use futures_util::Stream;

use super::{FleetHub, FleetSubscription, Start};
use crate::{
    auth::{Authenticator, Principal},
    domain::server::{FleetView, Seen, Server, ServerChange},
    store::{Store, StoreError},
    watch::{
        WatchError,
        lifeline::Lifeline,
        queue::{self, Outbox},
    },
};

/// How many history rows one replay read takes; a replay sends one page before reading on.
const REPLAY_PAGE: i64 = 500;

/// What a WatchServers stream sends.
#[derive(Debug)]
pub enum FleetItem {
    /// The servers the watcher lists at `revision`, newest first.
    List {
        revision: i64,
        servers: Vec<Arc<Server>>,
    },
    /// A change of a server in the watcher's list (or leaving it).
    Event {
        seen: Seen,
        revision: i64,
        server: Arc<Server>,
    },
}

type Item = Result<FleetItem, WatchError>;

pub type FleetStream = Pin<Box<dyn Stream<Item = Item> + Send>>;

/// What a WatchServers watcher asked for.
#[derive(Debug, Clone)]
pub struct FleetRequest {
    pub view: FleetView,
    pub since_revision: Option<i64>,
}

/// Starts a watch of the fleet from where [`FleetHub::open`] registered it.
pub fn watch_fleet(
    hub: &FleetHub,
    authenticator: Arc<Authenticator>,
    principal: Principal,
    (subscription, start): (FleetSubscription, Start),
    request: FleetRequest,
) -> FleetStream {
    let since = request.since_revision;
    let mut watcher = Watcher {
        store: hub.store.clone(),
        lifeline: Lifeline::new(hub.shutdown.clone(), authenticator, principal),
        view: request.view,
        subscription,
        last_seen: since.unwrap_or(start.revision),
        replay_through: None,
        outbox: Outbox::default(),
    };
    match since {
        None => watcher.list(start),
        Some(since) if since < start.revision => watcher.replay_through = Some(start.revision),
        Some(_) => {}
    }
    queue::into_stream(watcher)
}

struct Watcher {
    store: Store,
    lifeline: Lifeline,
    view: FleetView,
    subscription: FleetSubscription,
    /// The last revision this watcher has taken in, sent or not (outside its view).
    last_seen: i64,
    /// A replay from the history still to take in, up to this revision.
    replay_through: Option<i64>,
    outbox: Outbox<FleetItem>,
}

impl queue::Watcher for Watcher {
    type Item = Item;

    /// The next item for the client; None when the stream is over.
    async fn next_item(&mut self) -> Option<Item> {
        loop {
            if let Some(item) = self.outbox.ready(self.lifeline.is_shutting_down()) {
                return item;
            }
            match self.replay_through {
                Some(through) => self.replay_page(through).await,
                None => self.wait_for_change().await,
            }
        }
    }
}

impl Watcher {
    /// The first message: the servers in view at the start, newest first (ListServers' order).
    fn list(&mut self, start: Start) {
        let mut servers: Vec<Arc<Server>> = start
            .servers
            .into_iter()
            .filter(|server| self.view.lists(server))
            .collect();
        servers.sort_by_key(|server| std::cmp::Reverse((server.created_at, server.id.uuid())));
        self.outbox.push(FleetItem::List {
            revision: start.revision,
            servers,
        });
    }

    async fn wait_for_change(&mut self) {
        let queue = &mut self.subscription.queue;
        tokio::select! {
            ending = self.lifeline.ended() => self.outbox.end(ending),
            change = queue.next() => match change {
                Some(change) => self.deliver(&change),
                None => self.outbox.queue_ended(queue, self.last_seen),
            },
        }
    }

    /// A change from the hub: skipped when already taken in (a resume ahead of this replica's
    /// feed); a gap, which the hub never leaves, is filled from the history all the same.
    fn deliver(&mut self, change: &ServerChange) {
        if change.revision <= self.last_seen {
            return;
        }
        if change.revision == self.last_seen + 1 && self.replay_through.is_none() {
            return self.take_in(change);
        }
        let through = self
            .replay_through
            .map_or(change.revision, |through| through.max(change.revision));
        self.replay_through = Some(through);
    }

    /// Takes in the next page of the history after `last_seen`, up to `through`.
    async fn replay_page(&mut self, through: i64) {
        let tenant = self.subscription.tenant();
        let page = match self
            .store
            .fleet_history(tenant, self.last_seen, REPLAY_PAGE)
            .await
        {
            Ok(page) => page,
            Err(error) => return self.outbox.fail(error.into()),
        };
        let exhausted = page.len() < REPLAY_PAGE as usize;
        for change in page.iter().take_while(|change| change.revision <= through) {
            // The history was compacted under this replay: say where to resume, skip nothing.
            if change.revision != self.last_seen + 1 {
                return self
                    .outbox
                    .fail(StoreError::Compacted(change.revision - 1).into());
            }
            self.take_in(change);
        }
        if self.last_seen >= through || exhausted {
            self.replay_through = None;
        }
    }

    fn take_in(&mut self, change: &ServerChange) {
        self.last_seen = change.revision;
        if let Some(seen) = self.view.seen(change) {
            self.outbox.push(FleetItem::Event {
                seen,
                revision: change.revision,
                server: change.server.clone(),
            });
        }
    }
}
