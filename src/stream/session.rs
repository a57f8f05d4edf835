//! One binlog connection of a stream: connects through the server's path, checks that the
//! checkpoint is still readable and the source is the same, asks for heartbeats, then reads
//! events and decodes the rows of tracked tables, handing them in batches with their checkpoint
//! to the connection's writer (`sink`: a pipeline, the reader reads on while a batch is written).
//! It ends on a fault (sorted into the stream states of streaming.md §3) or when told to stop.

use std::time::Duration;

use futures_util::StreamExt;
use mysql_async::{
    BinlogStream, BinlogStreamRequest, Conn, binlog::events::Event, prelude::Queryable,
};
use tokio::time::Instant;

use super::{
    context::StreamContext,
    ending::SessionEnd,
    holder::Holder,
    reader::Reader,
    sink::{Batch, Report, Sink},
};
use crate::{
    domain::change::RowChange,
    source::{
        connection::{self, Link, mysql, mysql::classify as classify_mysql},
        replication::{end_dump_thread, is_replica_id_clash, replication_refusal, source_identity},
        tables::Tables,
    },
    store::{Lease, StreamCheckpoint, StreamPosition},
    telemetry,
};
use tracing::Instrument;

/// What a lost position's message ends with: the way out.
const RETRY_FROM_HERE: &str =
    "RetryOnboarding restarts from the current position and records the gap";
/// Rows stored per transaction write at most.
const BATCH_ROWS: usize = 10_000;
/// How long complete transactions wait for more before they are written, while the writer is
/// busy with the batch before them (an idle writer takes them at once).
const FLUSH_DELAY: Duration = Duration::from_millis(100);

/// The binlog files the source still has.
async fn binary_logs(
    connection: &mut Conn,
    address: &mysql::Endpoint,
) -> Result<Vec<String>, SessionEnd> {
    let listed = address.ask("SHOW BINARY LOGS", async {
        Ok(connection
            .query::<mysql_async::Row, _>("SHOW BINARY LOGS")
            .await)
    });
    match listed.await? {
        Ok(rows) => Ok(rows
            .into_iter()
            .filter_map(|row| row.get::<String, _>(0))
            .collect()),
        Err(mysql_async::Error::Server(error)) if error.code == 1381 => Err(SessionEnd::Failed(
            format!("binary logging is off on {address}: enable log_bin and restart MySQL"),
        )),
        Err(error) => Err(classify_mysql(&error, address).into()),
    }
}

fn purged_message(file: &str, address: &str) -> String {
    format!(
        "the binlog file {file} that the stream's checkpoint points to is no longer on {address} \
         (purged); raise binlog retention (binlog_expire_logs_seconds / expire_logs_days) so the \
         binlog outlives an outage; {RETRY_FROM_HERE}"
    )
}

/// A connection ready for the binlog request, with the reader that continues the checkpoint.
struct Opened {
    link: Link,
    reader: Reader,
    /// The connection's id on the source, to end its dump thread after a stop.
    dump_connection_id: Option<u64>,
    /// The source's identity, carried into each checkpoint.
    identity: String,
}

/// Connects and starts reading from the checkpoint: everything up to the first event.
async fn open(
    context: &StreamContext,
    position: &StreamPosition,
    heartbeat: Duration,
) -> Result<Opened, SessionEnd> {
    let address = mysql::address(&context.source());
    let mut link = connection::connect(&context.source()).await?;
    let connection = &mut link.connection;
    let (flavour, _) = mysql::version(connection, &address).await?;
    let mariadb = flavour == "MariaDB";
    let identity = check_source(connection, &address, position, mariadb).await?;
    let tables = stored_tables(context).await?;
    ask_for_heartbeats(connection, &address, heartbeat, mariadb).await?;
    let checksum: Option<String> = address
        .ask(
            "SELECT @@global.binlog_checksum",
            connection.query_first("SELECT @@global.binlog_checksum"),
        )
        .await?;
    let dump_connection_id: Option<u64> = address
        .ask(
            "SELECT CONNECTION_ID()",
            connection.query_first("SELECT CONNECTION_ID()"),
        )
        .await?;
    let checksums = checksum.is_some_and(|algorithm| !algorithm.eq_ignore_ascii_case("NONE"));
    let reader = Reader::new(address, mariadb, tables, position, checksums);
    Ok(Opened {
        link,
        reader,
        dump_connection_id,
        identity,
    })
}

/// The source's identity, once it is the server the checkpoint was read from and still has the
/// checkpoint's binlog file; otherwise the position is lost.
async fn check_source(
    connection: &mut Conn,
    address: &mysql::Endpoint,
    position: &StreamPosition,
    mariadb: bool,
) -> Result<String, SessionEnd> {
    let identity = source_identity(connection, address, mariadb).await?;
    if let Some(expected) = &position.source_identity
        && *expected != identity
    {
        return Err(SessionEnd::LostPosition(format!(
            "the source at {address} is a different server now ({identity}, was {expected}); \
             its binlog positions do not continue the checkpoint's; {RETRY_FROM_HERE}"
        )));
    }
    let files = binary_logs(connection, address).await?;
    if !files.contains(&position.binlog_file) {
        return Err(SessionEnd::LostPosition(purged_message(
            &position.binlog_file,
            address,
        )));
    }
    Ok(identity)
}

/// The tracked tables' columns, from the stored schema snapshots (their tables first brought to
/// the template's version, for a server an older template made).
async fn stored_tables(context: &StreamContext) -> Result<Tables, SessionEnd> {
    context
        .store
        .prepare_index_tables(Lease::Stream, context.claim)
        .await?;
    let history = context.store.snapshot_history(context.server.id).await?;
    let options = &context.server.spec.stream_options;
    Tables::from_history(history, options).map_err(|error| {
        SessionEnd::Failed(format!(
            "the stored schema snapshot cannot be read ({error}); RetryOnboarding takes a new one"
        ))
    })
}

/// Asks the source for a heartbeat every `heartbeat` (and, on MariaDB, for its GTID events).
async fn ask_for_heartbeats(
    connection: &mut Conn,
    address: &mysql::Endpoint,
    heartbeat: Duration,
    mariadb: bool,
) -> Result<(), SessionEnd> {
    let period = heartbeat.as_nanos().min(u128::from(u64::MAX));
    let mut settings = vec![format!("SET @master_heartbeat_period = {period}")];
    if mariadb {
        // Sends MariaDB's GTID events, so the checkpoint's GTID set can advance.
        settings.push("SET @mariadb_slave_capability = 4".to_owned());
    }
    for setting in settings {
        address.ask("SET", connection.query_drop(setting)).await?;
    }
    Ok(())
}

/// How a refused binlog request or read ends the connection: error 1236 (the binlog cannot be
/// read from the checkpoint) is a lost position unless replica ids clash; other refusals are
/// permanent; anything else is sorted like any MySQL error.
fn refusal(
    error: &mysql_async::Error,
    context: &StreamContext,
    replica_id: u32,
    address: &str,
) -> SessionEnd {
    let account = &context.server.spec.mysql_user;
    let Some(reason) = replication_refusal(error, account, replica_id) else {
        return classify_mysql(error, address).into();
    };
    match error {
        mysql_async::Error::Server(server)
            if server.code == 1236 && !is_replica_id_clash(&server.message) =>
        {
            SessionEnd::LostPosition(format!("{reason}; {RETRY_FROM_HERE}"))
        }
        _ => SessionEnd::Failed(reason),
    }
}

/// Runs one connection until it ends.
pub async fn run(holder: &mut Holder, checkpoint: StreamCheckpoint) -> SessionEnd {
    let context = holder.context();
    let Opened {
        link,
        mut reader,
        dump_connection_id,
        identity,
    } = match Box::pin(open_traced(holder, &context, &checkpoint.position)).await {
        Ok(opened) => opened,
        Err(end) => return end,
    };
    holder.progress.source_server_uuid = identity.clone();
    let Link { connection, tunnel } = link;
    let replica_id = u32::try_from(checkpoint.replication_server_id).unwrap_or(u32::MAX);
    // The login may have taken long (or the process been paused): a runner whose lease may have
    // lapsed must not register as a replica, since the source would end the new holder's dump
    // for it (same replica server id).
    if holder.lease_lost() {
        mysql::close(connection).await;
        drop(tunnel);
        return SessionEnd::Stopped;
    }
    let mut stream =
        match Box::pin(request_binlog(connection, &reader, &checkpoint, &context)).await {
            Ok(stream) => stream,
            Err(end) => return end,
        };
    let mut sink = Sink::start(holder);
    let end = read(
        holder,
        (&mut stream, &mut sink),
        &mut reader,
        &identity,
        &context,
        replica_id,
    )
    .await;
    sink.finish(holder).await;
    let _ = tokio::time::timeout(Duration::from_secs(1), stream.close()).await;
    // Through a tunnel, closing it closes the jumphost's connection to MySQL, and the dump
    // thread ends at its next heartbeat; a second login through the jumphost would be one the
    // customer did not expect (the jumphost may be moving).
    if let (Some(id), SessionEnd::Stopped, None) = (dump_connection_id, &end, &tunnel) {
        Box::pin(end_dump_thread(&context.source(), id)).await;
    }
    drop(tunnel);
    end
}

/// `open` in a span of its own that continues the trace of the call that started onboarding,
/// with whether it connected.
async fn open_traced(
    holder: &Holder,
    context: &StreamContext,
    position: &StreamPosition,
) -> Result<Opened, SessionEnd> {
    let span = tracing::info_span!(
        "stream_connect",
        otel.name = "binlog stream connect",
        server_id = %context.server.id,
        reconnects = holder.progress.reconnects,
        outcome = tracing::field::Empty,
    );
    telemetry::continue_traceparent(&span, context.server.trace_parent.as_deref());
    let opened = open(context, position, holder.settings.heartbeat)
        .instrument(span.clone())
        .await;
    span.record(
        "outcome",
        if opened.is_ok() {
            "connected"
        } else {
            "failed"
        },
    );
    opened
}

/// Asks the source for its binlog from the checkpoint, as this server's replica.
async fn request_binlog(
    connection: Conn,
    reader: &Reader,
    checkpoint: &StreamCheckpoint,
    context: &StreamContext,
) -> Result<BinlogStream, SessionEnd> {
    let replica_id = u32::try_from(checkpoint.replication_server_id).unwrap_or(u32::MAX);
    let request = BinlogStreamRequest::new(replica_id)
        .with_filename(checkpoint.position.binlog_file.as_bytes())
        .with_pos(u64::try_from(checkpoint.position.binlog_position).unwrap_or(4));
    let requested = reader.address.ask("the binlog request", async {
        Ok(connection.get_binlog_stream(request).await)
    });
    match requested.await {
        Ok(Ok(stream)) => Ok(stream),
        Ok(Err(error)) => Err(refusal(&error, context, replica_id, &reader.address)),
        Err(stalled) => Err(stalled.into()),
    }
}

/// What the event loop woke up for.
enum Wake {
    Event(Option<Result<Event, mysql_async::Error>>),
    Flush,
    Silent,
    Control,
    Written(Report),
}

/// When the reader last heard from the source and last wrote, and whether it runs yet.
struct Pace {
    /// How long the source may stay silent (3 heartbeat periods and a margin).
    silence: Duration,
    last_seen: Instant,
    last_flush: Instant,
    /// Whether the first write (or the first quiet flush) happened: the stream runs.
    running: bool,
}

impl Pace {
    /// The pace of a connection that starts now.
    fn new(heartbeat: Duration) -> Pace {
        Pace {
            silence: heartbeat * 3 + Duration::from_millis(500),
            last_seen: Instant::now(),
            last_flush: Instant::now(),
            running: false,
        }
    }

    /// When the next write is due: at once while complete transactions wait and the writer is
    /// idle (while it writes, they gather into the next batch), soon when the stream does not run
    /// yet, else when the checkpoint is due.
    fn flush_at(&self, reader: &Reader, sink: &Sink, checkpoint_interval: Duration) -> Instant {
        if reader.committed_rows > 0 && sink.idle() {
            self.last_flush
        } else if reader.committed_rows > 0 || !self.running {
            self.last_flush + FLUSH_DELAY
        } else {
            self.last_flush + checkpoint_interval
        }
    }
}

/// Reads events until the connection ends, writing them in batches.
async fn read(
    holder: &mut Holder,
    (stream, sink): (&mut BinlogStream, &mut Sink),
    reader: &mut Reader,
    identity: &str,
    context: &StreamContext,
    replica_id: u32,
) -> SessionEnd {
    let mut pace = Pace::new(holder.settings.heartbeat);
    loop {
        let flush_at = pace.flush_at(reader, sink, holder.settings.checkpoint_interval);
        let wake = tokio::select! {
            biased;
            () = holder.control.wait() => Wake::Control,
            report = sink.report() => Wake::Written(report),
            event = stream.next() => Wake::Event(event),
            () = tokio::time::sleep_until(flush_at) => Wake::Flush,
            () = tokio::time::sleep_until(pace.last_seen + pace.silence) => Wake::Silent,
        };
        match wake {
            Wake::Control => {
                if holder.must_stop().await {
                    return stop(holder, sink, reader, identity).await;
                }
            }
            Wake::Written(report) => sink.take(holder, report).await,
            Wake::Silent => return silent(reader, pace.silence),
            Wake::Flush => {
                if let Err(end) = timely_flush(holder, sink, reader, identity, &mut pace).await {
                    return end;
                }
            }
            Wake::Event(None) => return ended(reader),
            Wake::Event(Some(Err(error))) => {
                return refusal(&error, context, replica_id, &reader.address);
            }
            Wake::Event(Some(Ok(event))) => {
                let taken = take_event(
                    holder,
                    (stream, &mut *sink),
                    reader,
                    &event,
                    identity,
                    context,
                    &mut pace,
                );
                if let Err(end) = taken.await {
                    return store_before_failing(holder, sink, reader, identity, end).await;
                }
            }
        }
    }
}

/// A stop asked for: what was read is written first, unless the lease is gone.
async fn stop(
    holder: &mut Holder,
    sink: &mut Sink,
    reader: &mut Reader,
    identity: &str,
) -> SessionEnd {
    if !holder.lease_lost() && flush(holder, sink, reader, identity).await.is_ok() {
        let _ = sink.settle(holder).await;
    }
    SessionEnd::Stopped
}

/// No event and no heartbeat for `silence`: the connection is presumed dead.
fn silent(reader: &Reader, silence: Duration) -> SessionEnd {
    SessionEnd::Disconnected(format!(
        "no binlog event or heartbeat from {} for {}s (3 heartbeat periods): the connection is presumed dead",
        reader.address,
        silence.as_secs()
    ))
}

/// The source closed the stream.
fn ended(reader: &Reader) -> SessionEnd {
    SessionEnd::Disconnected(format!(
        "the source at {} ended the binlog stream (dump thread killed or server restarting)",
        reader.address
    ))
}

/// A stream that fails on an event first stores the complete transactions read before it, so
/// the checkpoint stands right before the event that stopped it.
async fn store_before_failing(
    holder: &mut Holder,
    sink: &mut Sink,
    reader: &mut Reader,
    identity: &str,
    end: SessionEnd,
) -> SessionEnd {
    if matches!(end, SessionEnd::Failed(_)) && reader.committed_rows > 0 && !holder.lease_lost() {
        let stored = match flush(holder, sink, reader, identity).await {
            Ok(()) => sink.settle(holder).await,
            Err(write) => Err(write),
        };
        if let Err(write) = stored {
            return write;
        }
    }
    end
}

/// The write that is due by the clock; the first one, once stored, marks the stream running.
/// A running stream whose checkpoint has not moved since its last write (an idle source: only
/// heartbeats) writes nothing to the index: its progress says the checkpoint is current, in
/// the replica's next progress batch, which is fenced by the lease like the write it replaces.
async fn timely_flush(
    holder: &mut Holder,
    sink: &mut Sink,
    reader: &mut Reader,
    identity: &str,
    pace: &mut Pace,
) -> Result<(), SessionEnd> {
    let unmoved = pace.running
        && reader.committed_rows == 0
        && reader.committed_statements.skipped == 0
        && sink.stored_at(&reader.position(reader.transactions.committed.clone(), 0, identity));
    if unmoved {
        holder.checkpoint_current().await;
        pace.last_flush = Instant::now();
        return Ok(());
    }
    flush(holder, sink, reader, identity).await?;
    pace.last_flush = Instant::now();
    if !pace.running {
        sink.settle(holder).await?;
        pace.running = true;
        holder.running().await;
    }
    Ok(())
}

/// Takes in one event, and writes the batch once it is full.
async fn take_event(
    holder: &mut Holder,
    (stream, sink): (&BinlogStream, &mut Sink),
    reader: &mut Reader,
    event: &Event,
    identity: &str,
    context: &StreamContext,
    pace: &mut Pace,
) -> Result<(), SessionEnd> {
    pace.last_seen = Instant::now();
    holder.progress.last_heartbeat_at = Some(crate::domain::now());
    reader.handle(holder, stream, event, context).await?;
    if reader.committed_rows >= BATCH_ROWS || reader.batch.len() >= BATCH_ROWS * 2 {
        flush(holder, sink, reader, identity).await?;
        pace.last_flush = Instant::now();
    }
    Ok(())
}

/// Hands the complete transactions buffered (or, for one very large transaction, its rows so
/// far) to the writer with the checkpoint after them.
async fn flush(
    holder: &mut Holder,
    sink: &mut Sink,
    reader: &mut Reader,
    identity: &str,
) -> Result<(), SessionEnd> {
    let (rows, mut position) = if reader.committed_rows == 0 && reader.batch.len() >= BATCH_ROWS * 2
    {
        // One transaction larger than memory should hold: store its rows so far and resume
        // at its start, skipping them.
        let stored = reader.transaction_rows;
        let start = reader.transactions.committed.clone();
        (reader.batch.len(), reader.position(start, stored, identity))
    } else {
        (
            reader.committed_rows,
            reader.position(reader.transactions.committed.clone(), 0, identity),
        )
    };
    if rows == reader.committed_rows {
        position.statement_changes = std::mem::take(&mut reader.committed_statements);
    }
    let events: Vec<RowChange> = reader.batch.drain(..rows).collect();
    reader.committed_rows = 0;
    sink.hand_over(holder, Batch { events, position }).await
}
