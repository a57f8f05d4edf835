//! One WatchOnboarding stream: the current status (or the history after since_revision), then
//! every committed change in revision order with no gap and no duplicate, until the server
//! settles, the key is revoked or expires, the client leaves, or the replica shuts down.
//!
//! The stream is a state machine polled by the connection's own stream task: no task or
//! channel of its own, so a change fanned out to 100,000 streams wakes each once, and a client
//! that leaves simply drops it.

use std::{pin::Pin, sync::Arc};

use futures_util::Stream;

use super::{
    Subscription, WatchHub,
    lifeline::Lifeline,
    queue::{self, Outbox},
};
use crate::{
    auth::{AuthError, Authenticator, Principal},
    domain::{ServerId, onboarding::OnboardingStatus},
    store::{Store, StoreError},
};

/// How many history rows one replay read takes; a replay sends one page before reading the
/// next, so a stream holds at most this many statuses.
const REPLAY_PAGE: i64 = 500;

/// Why a watch stream ended before the server settled.
#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    #[error(transparent)]
    Auth(#[from] AuthError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the service is shutting down; reconnect to another replica")]
    ShuttingDown,
    #[error("watch fell behind: resume with since_revision={0}")]
    Lagged(i64),
}

/// What a watcher asked for.
#[derive(Debug, Clone, Copy)]
pub struct WatchRequest {
    pub since_revision: Option<i64>,
    pub follow: bool,
}

/// A stream of statuses; it ends after a final status unless `follow` is set.
pub type WatchStream =
    Pin<Box<dyn Stream<Item = Result<Arc<OnboardingStatus>, WatchError>> + Send>>;

type Item = Result<Arc<OnboardingStatus>, WatchError>;

/// Starts a watch from `current`, the status the subscription was opened at (WatchHub::open).
pub fn watch(
    hub: Arc<WatchHub>,
    authenticator: Arc<Authenticator>,
    principal: Principal,
    (subscription, current): (Subscription, Arc<OnboardingStatus>),
    request: WatchRequest,
) -> WatchStream {
    let watcher = Watcher {
        server_id: current.server_id,
        store: hub.store.clone(),
        lifeline: Lifeline::new(hub.shutdown.clone(), authenticator, principal),
        request,
        subscription,
        start: Some(current),
        replay_through: None,
        outbox: Outbox::default(),
        last_sent: 0,
    };
    queue::into_stream(watcher)
}

struct Watcher {
    server_id: ServerId,
    store: Store,
    lifeline: Lifeline,
    request: WatchRequest,
    subscription: Subscription,
    /// Where the stream starts, until it has.
    start: Option<Arc<OnboardingStatus>>,
    /// A replay from the history still to send, up to this revision.
    replay_through: Option<i64>,
    outbox: Outbox<Arc<OnboardingStatus>>,
    last_sent: i64,
}

impl queue::Watcher for Watcher {
    type Item = Item;

    /// The next item for the client; None when the stream is over.
    async fn next_item(&mut self) -> Option<Item> {
        loop {
            if let Some(item) = self.outbox.ready(self.lifeline.is_shutting_down()) {
                return item;
            }
            if let Some(current) = self.start.take() {
                self.begin(current);
            } else if let Some(through) = self.replay_through {
                self.replay_page(through).await;
            } else {
                self.wait_for_event().await;
            }
        }
    }
}

impl Watcher {
    /// The first status, or the replay after since_revision.
    fn begin(&mut self, current: Arc<OnboardingStatus>) {
        match self.request.since_revision {
            // Already has the final revision: nothing more will come.
            Some(since)
                if since >= current.revision && current.is_final() && !self.request.follow =>
            {
                self.outbox.finish(true);
            }
            Some(since) => {
                self.last_sent = since;
                self.replay_through = (since < current.revision).then_some(current.revision);
            }
            None => self.send(current, true),
        }
    }

    async fn wait_for_event(&mut self) {
        let queue = &mut self.subscription.queue;
        tokio::select! {
            ending = self.lifeline.ended() => self.outbox.end(ending),
            change = queue.next() => match change {
                Some(status) => self.deliver(status),
                None => self.outbox.queue_ended(queue, self.last_sent),
            },
        }
    }

    /// A change from the hub: skipped when already sent, gaps filled from the history.
    fn deliver(&mut self, status: Arc<OnboardingStatus>) {
        if status.revision <= self.last_sent {
            return;
        }
        if status.revision == self.last_sent + 1 && self.replay_through.is_none() {
            return self.send(status, true);
        }
        let through = self
            .replay_through
            .map_or(status.revision, |through| through.max(status.revision));
        self.replay_through = Some(through);
    }

    /// Sends the next page of revisions after `last_sent` up to `through`, from the history.
    async fn replay_page(&mut self, through: i64) {
        let page = match self
            .store
            .onboarding_history(self.server_id, self.last_sent, REPLAY_PAGE)
            .await
        {
            Ok(page) => page,
            Err(error) => return self.outbox.fail(error.into()),
        };
        let exhausted = page.len() < REPLAY_PAGE as usize;
        for status in page {
            if status.revision > through || self.outbox.is_finished() {
                break;
            }
            // The history was compacted under this replay: say where to resume, skip nothing.
            if status.revision != self.last_sent + 1 {
                return self
                    .outbox
                    .fail(StoreError::Compacted(status.revision - 1).into());
            }
            // Only the newest known status may end the stream; older finals were superseded.
            let newest = status.revision == through;
            self.send(Arc::new(status), newest);
        }
        if self.last_sent >= through || exhausted {
            self.replay_through = None;
        }
    }

    fn send(&mut self, status: Arc<OnboardingStatus>, may_end: bool) {
        let ends = may_end && status.is_final() && !self.request.follow;
        self.last_sent = status.revision;
        self.outbox.push(status);
        self.outbox.finish(ends);
    }
}
