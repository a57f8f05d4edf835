//! What ends any watch stream before its client leaves: the replica shutting down, the key
//! expiring, or the key revoked (told at once by the authenticator; after a missed revocation,
//! the key is checked again).

use std::pin::Pin;
use std::sync::Arc;

use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use super::WatchError;
use crate::auth::{AuthError, Authenticator, Principal, Revocation};

/// Why a stream ends: with an error for the client, or quietly (the revocations ended with the
/// authenticator, so the replica is going away).
pub enum Ending {
    Fail(WatchError),
    Quiet,
}

/// A watch stream's ties to its key and its replica.
pub struct Lifeline {
    shutdown: CancellationToken,
    authenticator: Arc<Authenticator>,
    revocations: broadcast::Receiver<Revocation>,
    principal: Principal,
    /// When the key expires, if it does.
    expiry: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl Lifeline {
    pub fn new(
        shutdown: CancellationToken,
        authenticator: Arc<Authenticator>,
        principal: Principal,
    ) -> Lifeline {
        let expiry = principal.expires_at.map(|at| {
            let wait = (at - chrono::Utc::now()).to_std().unwrap_or_default();
            Box::pin(tokio::time::sleep(wait))
        });
        Lifeline {
            shutdown,
            revocations: authenticator.subscribe(),
            authenticator,
            principal,
            expiry,
        }
    }

    pub fn is_shutting_down(&self) -> bool {
        self.shutdown.is_cancelled()
    }

    /// Resolves when the stream must end; cancel-safe, for a `select!` beside the stream's own
    /// wait.
    pub async fn ended(&mut self) -> Ending {
        loop {
            let expired = async {
                match self.expiry.as_mut() {
                    Some(sleep) => sleep.as_mut().await,
                    None => std::future::pending().await,
                }
            };
            let revocation = tokio::select! {
                () = self.shutdown.cancelled() => return Ending::Fail(WatchError::ShuttingDown),
                () = expired => return Ending::Fail(AuthError::Expired.into()),
                revocation = self.revocations.recv() => revocation,
            };
            match revocation {
                Ok(Revocation::Key(key_id)) if key_id == self.principal.key_id => {
                    return Ending::Fail(AuthError::Revoked.into());
                }
                Ok(Revocation::Key(_)) => {}
                Ok(Revocation::Unknown) | Err(broadcast::error::RecvError::Lagged(_)) => {
                    match self.authenticator.recheck(&self.principal).await {
                        Ok(()) | Err(AuthError::Unavailable) => {}
                        Err(error) => return Ending::Fail(error.into()),
                    }
                }
                Err(broadcast::error::RecvError::Closed) => return Ending::Quiet,
            }
        }
    }
}
