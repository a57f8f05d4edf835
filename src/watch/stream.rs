//! One WatchOnboarding stream: the current status (or the history after since_revision), then
//! every committed change in revision order with no gap and no duplicate, until the server
//! settles, the key is revoked or expires, the client leaves, or the replica shuts down.

use std::{pin::Pin, sync::Arc};

use futures_util::{Stream, StreamExt};
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;

use super::{Subscription, WatchHub};
use crate::{
    auth::{AuthError, Authenticator, Principal, Revocation},
    domain::{ServerId, onboarding::OnboardingStatus},
    store::{Store, StoreError},
};

/// How many history rows one replay read takes.
const REPLAY_PAGE: i64 = 500;
/// Messages a stream holds for a client that reads slowly.
const OUTPUT_BUFFER: usize = 16;

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

/// What the stream's buffer holds: an error is boxed so that every slot stays two words
/// (the buffer's memory is allocated up front, for each of possibly 100,000 streams).
type Item = Result<Arc<OnboardingStatus>, Box<WatchError>>;

/// Starts a watch from `current`, the status the subscription was opened at (WatchHub::open).
pub fn watch(
    hub: Arc<WatchHub>,
    authenticator: Arc<Authenticator>,
    principal: Principal,
    (subscription, current): (Subscription, Arc<OnboardingStatus>),
    request: WatchRequest,
) -> WatchStream {
    let (output, receiver) = mpsc::channel::<Item>(OUTPUT_BUFFER);
    let revocations = authenticator.subscribe();
    let watcher = Watcher {
        server_id: current.server_id,
        store: hub.store.clone(),
        shutdown: hub.shutdown.clone(),
        authenticator,
        principal,
        request,
        output,
        last_sent: 0,
    };
    tokio::spawn(watcher.run(current, subscription, revocations));
    Box::pin(ReceiverStream::new(receiver).map(|item| item.map_err(|error| *error)))
}

struct Watcher {
    server_id: ServerId,
    store: Store,
    shutdown: tokio_util::sync::CancellationToken,
    authenticator: Arc<Authenticator>,
    principal: Principal,
    request: WatchRequest,
    output: mpsc::Sender<Item>,
    last_sent: i64,
}

/// Whether the stream goes on.
enum Flow {
    Continue,
    Stop,
}

impl Watcher {
    async fn run(
        mut self,
        current: Arc<OnboardingStatus>,
        mut subscription: Subscription,
        mut revocations: broadcast::Receiver<Revocation>,
    ) {
        let flow = match self.request.since_revision {
            // Already has the final revision: nothing more will come.
            Some(since)
                if since >= current.revision && current.is_final() && !self.request.follow =>
            {
                Flow::Stop
            }
            Some(since) => {
                self.last_sent = since;
                self.send_history_through(current.revision).await
            }
            None => self.send(current, true).await,
        };
        if let Flow::Stop = flow {
            return;
        }
        let expiry = self.principal.expires_at;
        let expired = async move {
            match expiry {
                Some(at) => {
                    let wait = (at - chrono::Utc::now()).to_std().unwrap_or_default();
                    tokio::time::sleep(wait).await
                }
                None => std::future::pending().await,
            }
        };
        tokio::pin!(expired);
        loop {
            let flow = tokio::select! {
                () = self.shutdown.cancelled() => self.fail(WatchError::ShuttingDown).await,
                () = self.output.closed() => Flow::Stop,
                () = &mut expired => self.fail(AuthError::Expired.into()).await,
                revocation = revocations.recv() => self.revocation(revocation).await,
                change = subscription.next() => match change {
                    Some(status) => self.deliver(status).await,
                    None if subscription.overflowed() => {
                        self.fail(WatchError::Lagged(self.last_sent)).await
                    }
                    None => self.fail(WatchError::ShuttingDown).await,
                },
            };
            if let Flow::Stop = flow {
                return;
            }
        }
    }

    async fn revocation(
        &mut self,
        revocation: Result<Revocation, broadcast::error::RecvError>,
    ) -> Flow {
        match revocation {
            Ok(Revocation::Key(key_id)) if key_id == self.principal.key_id => {
                self.fail(AuthError::Revoked.into()).await
            }
            Ok(Revocation::Key(_)) => Flow::Continue,
            Ok(Revocation::Unknown) | Err(broadcast::error::RecvError::Lagged(_)) => {
                match self.authenticator.recheck(&self.principal).await {
                    Ok(()) | Err(AuthError::Unavailable) => Flow::Continue,
                    Err(error) => self.fail(error.into()).await,
                }
            }
            Err(broadcast::error::RecvError::Closed) => Flow::Stop,
        }
    }

    /// A change from the hub: skipped when already sent, gaps filled from the history.
    async fn deliver(&mut self, status: Arc<OnboardingStatus>) -> Flow {
        if status.revision <= self.last_sent {
            return Flow::Continue;
        }
        if status.revision == self.last_sent + 1 {
            return self.send(status, true).await;
        }
        self.send_history_through(status.revision).await
    }

    /// Sends every revision after `last_sent` up to `through`, from the history table.
    async fn send_history_through(&mut self, through: i64) -> Flow {
        while self.last_sent < through {
            let page = match self
                .store
                .onboarding_history(self.server_id, self.last_sent, REPLAY_PAGE)
                .await
            {
                Ok(page) => page,
                Err(error) => return self.fail(error.into()).await,
            };
            if page.is_empty() {
                return Flow::Continue;
            }
            for status in page {
                if status.revision > through {
                    return Flow::Continue;
                }
                // Only the newest known status may end the stream; older finals were superseded.
                let newest = status.revision == through;
                if let Flow::Stop = self.send(Arc::new(status), newest).await {
                    return Flow::Stop;
                }
            }
        }
        Flow::Continue
    }

    async fn send(&mut self, status: Arc<OnboardingStatus>, may_end: bool) -> Flow {
        let ends = may_end && status.is_final() && !self.request.follow;
        self.last_sent = status.revision;
        if !self.emit(Ok(status)).await || ends {
            return Flow::Stop;
        }
        Flow::Continue
    }

    async fn fail(&mut self, error: WatchError) -> Flow {
        self.emit(Err(Box::new(error))).await;
        Flow::Stop
    }

    /// Hands an item to the client's buffer; false when the client left or the replica stops
    /// while the buffer is full (a client that stopped reading must not hold up a shutdown).
    async fn emit(&mut self, item: Item) -> bool {
        let shutdown = self.shutdown.clone();
        tokio::select! {
            sent = self.output.send(item) => sent.is_ok(),
            () = shutdown.cancelled() => {
                let _ = self.output.try_send(Err(Box::new(WatchError::ShuttingDown)));
                false
            }
        }
    }
}
