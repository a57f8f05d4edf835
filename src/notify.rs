//! The one LISTEN/NOTIFY router: the replica's dedicated LISTEN connection (store::listener)
//! feeds it, and it tells each room what changed: the engine and the streams (a server's
//! onboarding changed, or became runnable), the watch hubs (a server's onboarding for
//! WatchOnboarding, a tenant's servers for WatchServers), the authenticator (a key was
//! revoked), and the webhook deliveries (some became due). After a reconnect, what may have been
//! missed is caught up.

use std::sync::Arc;

use tokio::sync::mpsc;

use crate::{
    auth::Authenticator, onboarding::Engine, store::listener::Notification, stream::Streams,
    watch::Hubs, webhooks::Deliveries,
};

/// Routes notifications from the LISTEN connection until it closes.
pub async fn dispatch(
    mut notifications: mpsc::Receiver<Notification>,
    hubs: Hubs,
    authenticator: Arc<Authenticator>,
    engine: Arc<Engine>,
    streams: Arc<Streams>,
    deliveries: Arc<Deliveries>,
) {
    let wake_engine = engine.waker();
    let mut connected_before = false;
    while let Some(notification) = notifications.recv().await {
        match notification {
            // The read runs beside the loop, so revocations and wake-ups never wait behind it;
            // streams put out-of-order changes back in order themselves.
            Notification::Onboarding {
                server_id,
                revision,
            } => {
                engine.changed(server_id, revision);
                streams.changed(server_id);
                if hubs.onboarding.is_watched(server_id) {
                    let hub = hubs.onboarding.clone();
                    tokio::spawn(async move { hub.changed(server_id, revision).await });
                }
            }
            Notification::Servers { tenant, revision } => {
                if hubs.fleet.is_watched(tenant) {
                    let hub = hubs.fleet.clone();
                    tokio::spawn(async move { hub.changed(tenant, revision).await });
                }
            }
            Notification::Runnable(server_id) => {
                let _ = wake_engine.try_send(Some(server_id));
            }
            Notification::KeyRevoked(key_id) => authenticator.key_revoked(key_id),
            Notification::Webhooks => deliveries.wake(),
            Notification::Connected => {
                if connected_before {
                    authenticator.revocations_missed();
                    let hubs = hubs.clone();
                    tokio::spawn(async move {
                        hubs.onboarding.catch_up().await;
                        hubs.fleet.catch_up().await;
                    });
                    let _ = wake_engine.try_send(None);
                    deliveries.wake();
                }
                connected_before = true;
            }
        }
    }
}
