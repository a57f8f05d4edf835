//! Step 6, streaming: reads the binlog coordinates (and GTID set), opens a replication stream
//! as a replica with this server's own server id, waits for the first event, and records where
//! the live stream (`crate::stream`) starts: the current position for a new server, the stream's
//! own checkpoint when onboarding re-runs after a settings change, and the current position with
//! the gap recorded when a retry follows a lost position.

use std::time::Duration;

use async_trait::async_trait;
use futures_util::StreamExt;
use mysql_async::{BinlogStreamRequest, Conn};

use super::{Step, StepContext, initializing::account};
use crate::{
    domain::{OnboardingStep, StreamState, onboarding::StepOutcome},
    source::{
        connection::{
            self, Link, MysqlFailure,
            mysql::{self, Endpoint},
        },
        replication::{Coordinates, coordinates, replication_refusal, source_identity},
    },
    store::{StoreError, StreamCheckpoint, StreamGap, StreamPosition},
};

/// Where the live stream starts: `current` for a new stream; the stream's own checkpoint when it
/// has one (nothing is skipped); `current` with the gap recorded after a lost position.
async fn record_start(
    context: &StepContext,
    current: &StreamCheckpoint,
) -> Result<StreamCheckpoint, StoreError> {
    let server_id = context.server.id;
    let index = context.index.for_server(server_id).await?;
    let Some(existing) = index.stream_checkpoint(server_id).await? else {
        index.start_stream_at(server_id, current).await?;
        return Ok(current.clone());
    };
    let lost = context
        .server
        .stream
        .as_ref()
        .filter(|stream| stream.state == StreamState::LostPosition);
    let Some(lost) = lost else {
        return Ok(existing);
    };
    let gap = StreamGap {
        from_file: existing.position.binlog_file,
        from_position: existing.position.binlog_position,
        to_file: current.position.binlog_file.clone(),
        to_position: current.position.binlog_position,
        reason: lost.error.clone().unwrap_or_else(|| "lost position".into()),
    };
    index
        .restart_stream_after_gap(server_id, &current.position, &gap)
        .await?;
    Ok(current.clone())
}

/// Opens the stream and records the checkpoint.
pub struct Streaming;

/// How long the first binlog event may take.
const FIRST_EVENT_TIMEOUT: Duration = Duration::from_secs(10);

/// What the attempt ends with: the checkpoint the first event confirmed, a refusal the operator
/// must fix, or a fault.
type Attempt = Result<Result<StreamCheckpoint, String>, StreamFault>;

/// Where and as whom the binlog is asked for.
struct StreamRequest {
    coordinates: Coordinates,
    /// The source's identity, so the live stream notices a different server.
    identity: String,
    /// The MySQL account, for the GRANT a refusal asks for.
    account: String,
    /// This server's own replica server id.
    replication_server_id: i64,
}

impl StreamRequest {
    /// The replica server id as the binlog request carries it.
    fn replica_id(&self) -> u32 {
        u32::try_from(self.replication_server_id).unwrap_or(u32::MAX)
    }

    /// The checkpoint at the requested coordinates, once an event arrived from there.
    fn checkpoint(self) -> StreamCheckpoint {
        StreamCheckpoint {
            position: StreamPosition {
                binlog_file: self.coordinates.file,
                binlog_position: i64::try_from(self.coordinates.position).unwrap_or(i64::MAX),
                skip_rows: 0,
                gtid_set: self.coordinates.gtid_set,
                source_identity: Some(self.identity),
                last_event_at: None,
                statement_changes: Default::default(),
                replay_until: None,
            },
            replication_server_id: self.replication_server_id,
            events_indexed: 0,
        }
    }

    /// A replication error: a refusal the operator must fix, or a fault sorted like any MySQL
    /// error.
    fn refused(&self, error: &mysql_async::Error, address: &Endpoint) -> Attempt {
        match replication_refusal(error, &self.account, self.replica_id()) {
            Some(reason) => Ok(Err(reason)),
            None => Err(mysql::classify(error, address).into()),
        }
    }
}

/// Connects, reads where the binlog is now, and asks for it from there as a replica.
async fn open_stream(context: &StepContext) -> Attempt {
    let address = mysql::address(&context.source());
    let Link {
        mut connection,
        tunnel,
    } = connection::connect(&context.source()).await?;
    let (flavour, _) = mysql::version(&mut connection, &address).await?;
    let identity = source_identity(&mut connection, &address, flavour == "MariaDB").await?;
    let Some(coordinates) = coordinates(&mut connection, &address, &flavour).await? else {
        mysql::close(connection).await;
        return Ok(Err(
            "the binlog is unavailable: SHOW MASTER STATUS returns nothing; enable log_bin".into(),
        ));
    };
    let account = account(&mut connection, &address).await?;
    let replication_server_id = context
        .store
        .replication_server_id(context.server.id)
        .await?;
    let request = StreamRequest {
        coordinates,
        identity,
        account,
        replication_server_id,
    };
    let result = first_event(connection, &address, request).await;
    drop(tunnel);
    result
}

/// Asks for the binlog from the request's coordinates and waits for its first event; the stream
/// is closed again either way.
async fn first_event(connection: Conn, address: &Endpoint, request: StreamRequest) -> Attempt {
    // Non-blocking: the source sends what is there and ends the dump itself, so no dump thread
    // lingers and none has to be killed. (A KILL wakes every dump thread waiting on the binlog,
    // and MariaDB starts each one's heartbeat period over: many of them postpone every
    // heartbeat of every stream on that source.)
    let binlog = BinlogStreamRequest::new(request.replica_id())
        .with_filename(request.coordinates.file.as_bytes())
        .with_pos(request.coordinates.position)
        .with_non_blocking();
    let requested = address.ask("the binlog request", async {
        Ok(connection.get_binlog_stream(binlog).await)
    });
    let mut stream = match requested.await? {
        Ok(stream) => stream,
        Err(error) => return request.refused(&error, address),
    };
    let first = tokio::time::timeout(FIRST_EVENT_TIMEOUT, stream.next()).await;
    let result = match first {
        Ok(Some(Ok(_event))) => Ok(Ok(request.checkpoint())),
        Ok(Some(Err(error))) => request.refused(&error, address),
        Ok(None) => Err(MysqlFailure::Transient(format!(
            "the binlog stream from {address} ended before its first event"
        ))
        .into()),
        Err(_) => Err(MysqlFailure::Transient(format!(
            "no binlog event from {address} within {}s",
            FIRST_EVENT_TIMEOUT.as_secs()
        ))
        .into()),
    };
    let _ = tokio::time::timeout(Duration::from_secs(2), stream.close()).await;
    result
}

/// A fault of the stream attempt: from MySQL, or from the service's own database.
enum StreamFault {
    Mysql(MysqlFailure),
    Store(StoreError),
}

impl From<MysqlFailure> for StreamFault {
    fn from(failure: MysqlFailure) -> StreamFault {
        StreamFault::Mysql(failure)
    }
}

impl From<StoreError> for StreamFault {
    fn from(error: StoreError) -> StreamFault {
        StreamFault::Store(error)
    }
}

#[async_trait]
impl Step for Streaming {
    fn name(&self) -> OnboardingStep {
        OnboardingStep::Streaming
    }

    async fn run(&self, context: &StepContext) -> Result<StepOutcome, StoreError> {
        let checkpoint = match open_stream(context).await {
            Ok(Ok(checkpoint)) => checkpoint,
            Ok(Err(error)) => return Ok(StepOutcome::Failed { error }),
            Err(StreamFault::Mysql(failure)) => return Ok(context.outcome_of(failure)),
            Err(StreamFault::Store(error)) => return Err(error),
        };
        let start = record_start(context, &checkpoint).await?.position;
        let gtid = start
            .gtid_set
            .as_deref()
            .map(|set| format!(" (GTID {set})"))
            .unwrap_or_default();
        Ok(StepOutcome::Completed {
            message: format!(
                "streaming from {}:{}{gtid} as replica server id {}; first event received",
                start.binlog_file, start.binlog_position, checkpoint.replication_server_id
            ),
            warnings: Vec::new(),
        })
    }
}
