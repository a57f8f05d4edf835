//! The replica's one dedicated LISTEN connection: it turns NOTIFYs into typed events and
//! reconnects by itself, announcing each (re)connection so consumers can catch up.

use std::time::Duration;

use diesel_async::{AsyncPgConnection, RunQueryDsl};
use futures_util::StreamExt;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::{
    API_KEYS_CHANNEL, ONBOARDING_CHANNEL, RUNNABLE_CHANNEL, SERVERS_CHANNEL, WEBHOOKS_CHANNEL,
};
use crate::domain::{ServerId, TenantId};

/// What happened, as told by a NOTIFY.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notification {
    /// A server's onboarding status reached this revision.
    Onboarding { server_id: ServerId, revision: i64 },
    /// A tenant's servers reached this revision (WatchServers).
    Servers { tenant: TenantId, revision: i64 },
    /// A server needs a runner.
    Runnable(ServerId),
    /// An API key was revoked.
    KeyRevoked(Uuid),
    /// Webhook deliveries became due.
    Webhooks,
    /// The listening connection was (re)established: anything may have been missed before.
    Connected,
}

fn parse(channel: &str, payload: &str) -> Option<Notification> {
    match channel {
        ONBOARDING_CHANNEL => {
            let (id, revision) = payload.split_once(':')?;
            Some(Notification::Onboarding {
                server_id: ServerId::parse(id)?,
                revision: revision.parse().ok()?,
            })
        }
        SERVERS_CHANNEL => {
            let (tenant, revision) = payload.split_once(':')?;
            Some(Notification::Servers {
                tenant: TenantId::from_uuid(Uuid::try_parse(tenant).ok()?),
                revision: revision.parse().ok()?,
            })
        }
        RUNNABLE_CHANNEL => ServerId::parse(payload).map(Notification::Runnable),
        API_KEYS_CHANNEL => Uuid::try_parse(payload).ok().map(Notification::KeyRevoked),
        WEBHOOKS_CHANNEL => Some(Notification::Webhooks),
        _ => None,
    }
}

/// How long the connection may stay silent before it is checked with a round trip.
const IDLE_CHECK: Duration = Duration::from_secs(5);

/// Listens until `shutdown`, reconnecting with backoff; events go to `events`.
pub async fn listen(
    database_url: String,
    events: mpsc::Sender<Notification>,
    shutdown: CancellationToken,
) {
    let mut backoff = Duration::from_millis(100);
    while !shutdown.is_cancelled() {
        let connected = tokio::select! {
            () = shutdown.cancelled() => return,
            result = connect(&database_url) => result,
        };
        match connected {
            Ok(mut connection) => {
                backoff = Duration::from_millis(100);
                if events.send(Notification::Connected).await.is_err() {
                    return;
                }
                if let Err(reason) = forward(&mut connection, &events, &shutdown).await {
                    tracing::warn!(%reason, "LISTEN connection lost; reconnecting");
                }
            }
            Err(error) => {
                tracing::warn!(%error, "LISTEN connection failed; retrying");
            }
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}

async fn connect(database_url: &str) -> Result<AsyncPgConnection, diesel::result::Error> {
    let mut connection = tokio::time::timeout(
        Duration::from_secs(5),
        super::connect::establish(database_url),
    )
    .await
    .map_err(|_| diesel::result::Error::BrokenTransactionManager)?
    .map_err(|error| diesel::result::Error::QueryBuilderError(Box::new(error)))?;
    for channel in [
        ONBOARDING_CHANNEL,
        SERVERS_CHANNEL,
        RUNNABLE_CHANNEL,
        API_KEYS_CHANNEL,
        WEBHOOKS_CHANNEL,
    ] {
        diesel::sql_query(format!("LISTEN {channel}"))
            .execute(&mut connection)
            .await?;
    }
    Ok(connection)
}

/// Forwards notifications until the connection fails; Ok only on shutdown.
async fn forward(
    connection: &mut AsyncPgConnection,
    events: &mpsc::Sender<Notification>,
    shutdown: &CancellationToken,
) -> Result<(), String> {
    loop {
        let idle = {
            let mut stream = std::pin::pin!(connection.notifications_stream());
            loop {
                tokio::select! {
                    () = shutdown.cancelled() => return Ok(()),
                    () = tokio::time::sleep(IDLE_CHECK) => break true,
                    item = stream.next() => match item {
                        Some(Ok(notification)) => {
                            if let Some(event) = parse(&notification.channel, &notification.payload)
                                && events.send(event).await.is_err()
                            {
                                return Ok(());
                            }
                        }
                        Some(Err(error)) => return Err(error.to_string()),
                        None => return Err("notification stream ended".into()),
                    }
                }
            }
        };
        if idle {
            tokio::time::timeout(
                Duration::from_secs(3),
                diesel::sql_query("SELECT 1").execute(connection),
            )
            .await
            .map_err(|_| "idle check timed out".to_owned())?
            .map_err(|error| error.to_string())?;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_parse() {
        let id = Uuid::now_v7();
        assert_eq!(
            parse(ONBOARDING_CHANNEL, &format!("{id}:7")),
            Some(Notification::Onboarding {
                server_id: ServerId::from_uuid(id),
                revision: 7
            })
        );
        assert_eq!(
            parse(RUNNABLE_CHANNEL, &id.to_string()),
            Some(Notification::Runnable(ServerId::from_uuid(id)))
        );
        assert_eq!(
            parse(API_KEYS_CHANNEL, &id.to_string()),
            Some(Notification::KeyRevoked(id))
        );
        assert_eq!(
            parse(SERVERS_CHANNEL, &format!("{id}:12")),
            Some(Notification::Servers {
                tenant: TenantId::from_uuid(id),
                revision: 12
            })
        );
        assert_eq!(parse(WEBHOOKS_CHANNEL, ""), Some(Notification::Webhooks));
        assert_eq!(parse(ONBOARDING_CHANNEL, "garbage"), None);
        assert_eq!(parse(SERVERS_CHANNEL, &format!("{id}:x")), None);
    }
}
