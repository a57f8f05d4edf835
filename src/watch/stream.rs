//! One WatchOnboarding stream: the current status (or the history after since_revision), then
//! every committed change in revision order with no gap and no duplicate, until the server
//! settles, the key is revoked or expires, the client leaves, or the replica shuts down.
//!
//! The stream is a state machine polled by the connection's own stream task: no task or
//! channel of its own, so a change fanned out to 100,000 streams wakes each once, and a client
//! that leaves simply drops it.

use std::{collections::VecDeque, pin::Pin, sync::Arc};

use futures_util::Stream;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use super::{Subscription, WatchHub};
use crate::{
    auth::{AuthError, Authenticator, Principal, Revocation},
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
    let expiry = principal.expires_at.map(|at| {
        let wait = (at - chrono::Utc::now()).to_std().unwrap_or_default();
        Box::pin(tokio::time::sleep(wait))
    });
    let watcher = Watcher {
        server_id: current.server_id,
        store: hub.store.clone(),
        shutdown: hub.shutdown.clone(),
        revocations: authenticator.subscribe(),
        authenticator,
        principal,
        request,
        subscription,
        expiry,
        start: Some(current),
        replay_through: None,
        pending: VecDeque::new(),
        finished: false,
        last_sent: 0,
    };
    Box::pin(futures_util::stream::unfold(
        watcher,
        |mut watcher| async move {
            let item = watcher.next_item().await?;
            Some((item, watcher))
        },
    ))
}

struct Watcher {
    server_id: ServerId,
    store: Store,
    shutdown: CancellationToken,
    authenticator: Arc<Authenticator>,
    revocations: broadcast::Receiver<Revocation>,
    principal: Principal,
    request: WatchRequest,
    subscription: Subscription,
    /// When the key expires, if it does.
    expiry: Option<Pin<Box<tokio::time::Sleep>>>,
    /// Where the stream starts, until it has.
    start: Option<Arc<OnboardingStatus>>,
    /// A replay from the history still to send, up to this revision.
    replay_through: Option<i64>,
    /// What is ready for the client.
    pending: VecDeque<Item>,
    /// Nothing comes after `pending`.
    finished: bool,
    last_sent: i64,
}

impl Watcher {
    /// The next item for the client; None when the stream is over.
    async fn next_item(&mut self) -> Option<Item> {
        loop {
            // A replica that stops ends its streams at once, also mid-replay.
            if self.shutdown.is_cancelled() && !self.finished {
                self.pending.clear();
                self.fail(WatchError::ShuttingDown);
            }
            if let Some(item) = self.pending.pop_front() {
                return Some(item);
            }
            if self.finished {
                return None;
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

    /// The first status, or the replay after since_revision.
    fn begin(&mut self, current: Arc<OnboardingStatus>) {
        match self.request.since_revision {
            // Already has the final revision: nothing more will come.
            Some(since)
                if since >= current.revision && current.is_final() && !self.request.follow =>
            {
                self.finished = true;
            }
            Some(since) => {
                self.last_sent = since;
                self.replay_through = (since < current.revision).then_some(current.revision);
            }
            None => self.send(current, true),
        }
    }

    async fn wait_for_event(&mut self) {
        let expired = async {
            match self.expiry.as_mut() {
                Some(sleep) => sleep.as_mut().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = self.shutdown.cancelled() => self.fail(WatchError::ShuttingDown),
            () = expired => self.fail(AuthError::Expired.into()),
            revocation = self.revocations.recv() => self.revocation(revocation).await,
            change = self.subscription.next() => match change {
                Some(status) => self.deliver(status),
                None if self.subscription.overflowed() => {
                    self.fail(WatchError::Lagged(self.last_sent))
                }
                None => self.fail(WatchError::ShuttingDown),
            },
        }
    }

    async fn revocation(&mut self, revocation: Result<Revocation, broadcast::error::RecvError>) {
        match revocation {
            Ok(Revocation::Key(key_id)) if key_id == self.principal.key_id => {
                self.fail(AuthError::Revoked.into())
            }
            Ok(Revocation::Key(_)) => {}
            Ok(Revocation::Unknown) | Err(broadcast::error::RecvError::Lagged(_)) => {
                match self.authenticator.recheck(&self.principal).await {
                    Ok(()) | Err(AuthError::Unavailable) => {}
                    Err(error) => self.fail(error.into()),
                }
            }
            Err(broadcast::error::RecvError::Closed) => self.finished = true,
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
            Err(error) => return self.fail(error.into()),
        };
        let exhausted = page.len() < REPLAY_PAGE as usize;
        for status in page {
            if status.revision > through || self.finished {
                break;
            }
            // The history was compacted under this replay: say where to resume, skip nothing.
            if status.revision != self.last_sent + 1 {
                return self.fail(StoreError::Compacted(status.revision - 1).into());
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
        self.pending.push_back(Ok(status));
        self.finished = ends;
    }

    fn fail(&mut self, error: WatchError) {
        self.pending.push_back(Err(error));
        self.finished = true;
    }
}
