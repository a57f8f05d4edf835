//! One binlog connection of a stream: connects through the server's path, checks that the
//! checkpoint is still readable and the source is the same, asks for heartbeats, then reads
//! events, decodes the rows of tracked tables and writes them in batches with their checkpoint.
//! It ends on a fault (sorted into the stream states of streaming.md §3) or when told to stop.

use std::time::Duration;

use chrono::{DateTime, Utc};
use futures_util::StreamExt;
use mysql_async::{
    BinlogStream, BinlogStreamRequest, Conn,
    binlog::events::{Event, QueryEvent, RowsEventData},
    prelude::Queryable,
};
use tokio::time::Instant;

use super::{
    runner::Holder,
    tables::{Tables, ddl_tables},
};
use crate::{
    domain::{change::RowChange, stream::BinlogPoint},
    onboarding::{
        MysqlFailure, StepContext, classify_mysql,
        connection::{self, Link, mysql},
        end_dump_thread, is_replica_id_clash, replication_refusal, source_identity,
    },
    source::{
        decode::{self, ChangeRow},
        events::{self, Meaning, Place, Transactions},
        gtid::GtidSet,
    },
    store::{StatementChanges, StoreError, StreamCheckpoint, StreamPosition},
    telemetry,
};
use tracing::Instrument;

/// What a lost position's message ends with: the way out.
const RETRY_FROM_HERE: &str =
    "RetryOnboarding restarts from the current position and records the gap";
/// Rows stored per transaction write at most.
const BATCH_ROWS: usize = 5_000;
/// How long complete transactions wait for more before they are written.
const FLUSH_DELAY: Duration = Duration::from_millis(100);

/// Why a connection ended.
#[derive(Debug)]
pub enum SessionEnd {
    /// Told to stop (after writing what was complete): lease lost, server changed, shutdown.
    Stopped,
    /// The connection is down; retry with backoff.
    Disconnected(String),
    /// The checkpoint cannot be resumed from.
    LostPosition(String),
    /// A permanent refusal.
    Failed(String),
}

impl From<MysqlFailure> for SessionEnd {
    fn from(failure: MysqlFailure) -> SessionEnd {
        match failure {
            MysqlFailure::Transient(message) => SessionEnd::Disconnected(message),
            MysqlFailure::Permanent(message) => SessionEnd::Failed(message),
        }
    }
}

/// The reading state between events.
struct Reader {
    address: mysql::Endpoint,
    mariadb: bool,
    tables: Tables,
    /// Transactions, GTIDs and the resume point.
    transactions: Transactions,
    /// Events of complete transactions not yet written.
    committed_rows: usize,
    /// Rows of the first transaction that an earlier connection stored already.
    skip_rows: i64,
    /// Rows of the current transaction seen (stored or skipped) so far.
    transaction_rows: i64,
    batch: Vec<RowChange>,
    last_event_at: Option<DateTime<Utc>>,
    /// Statement-format DML of the open transaction, and of complete ones not yet written.
    open_statements: StatementChanges,
    committed_statements: StatementChanges,
    /// After a restart that reads part of the binlog again: rows before this place are stored.
    replay_until: Option<BinlogPoint>,
}

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
    context: &StepContext,
    position: &StreamPosition,
    heartbeat: Duration,
) -> Result<Opened, SessionEnd> {
    let address = mysql::address(context);
    let mut link = connection::connect(context).await?;
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

/// The tracked tables' columns, from the stored schema snapshots.
async fn stored_tables(context: &StepContext) -> Result<Tables, SessionEnd> {
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
    context: &StepContext,
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
    let context = holder.step_context();
    let Opened {
        link,
        mut reader,
        dump_connection_id,
        identity,
    } = match open_traced(holder, &context, &checkpoint.position).await {
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
    let mut stream = match request_binlog(connection, &reader, &checkpoint, &context).await {
        Ok(stream) => stream,
        Err(end) => return end,
    };
    let end = read(
        holder,
        &mut stream,
        &mut reader,
        &identity,
        &context,
        replica_id,
    )
    .await;
    let _ = tokio::time::timeout(Duration::from_secs(1), stream.close()).await;
    // Through a tunnel, closing it closes the jumphost's connection to MySQL, and the dump
    // thread ends at its next heartbeat; a second login through the jumphost would be one the
    // customer did not expect (the jumphost may be moving).
    if let (Some(id), SessionEnd::Stopped, None) = (dump_connection_id, &end, &tunnel) {
        end_dump_thread(&context, id).await;
    }
    drop(tunnel);
    end
}

/// `open` in a span of its own that continues the trace of the call that started onboarding,
/// with whether it connected.
async fn open_traced(
    holder: &Holder,
    context: &StepContext,
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
    context: &StepContext,
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

    /// When the next write is due: soon while complete transactions wait (or the stream does not
    /// run yet), else when the checkpoint is due.
    fn flush_at(&self, reader: &Reader, checkpoint_interval: Duration) -> Instant {
        if reader.committed_rows > 0 || !self.running {
            self.last_flush + FLUSH_DELAY
        } else {
            self.last_flush + checkpoint_interval
        }
    }
}

/// Reads events until the connection ends, writing them in batches.
async fn read(
    holder: &mut Holder,
    stream: &mut BinlogStream,
    reader: &mut Reader,
    identity: &str,
    context: &StepContext,
    replica_id: u32,
) -> SessionEnd {
    let mut pace = Pace::new(holder.settings.heartbeat);
    loop {
        let flush_at = pace.flush_at(reader, holder.settings.checkpoint_interval);
        let wake = tokio::select! {
            biased;
            () = holder.control.wait() => Wake::Control,
            event = stream.next() => Wake::Event(event),
            () = tokio::time::sleep_until(flush_at) => Wake::Flush,
            () = tokio::time::sleep_until(pace.last_seen + pace.silence) => Wake::Silent,
        };
        match wake {
            Wake::Control => {
                if holder.must_stop().await {
                    if !holder.lease_lost() {
                        let _ = flush(holder, reader, identity).await;
                    }
                    return SessionEnd::Stopped;
                }
            }
            Wake::Silent => {
                return SessionEnd::Disconnected(format!(
                    "no binlog event or heartbeat from {} for {}s (3 heartbeat periods): the connection is presumed dead",
                    reader.address,
                    pace.silence.as_secs()
                ));
            }
            Wake::Flush => {
                if let Err(end) = timely_flush(holder, reader, identity, &mut pace).await {
                    return end;
                }
            }
            Wake::Event(None) => {
                return SessionEnd::Disconnected(format!(
                    "the source at {} ended the binlog stream (dump thread killed or server restarting)",
                    reader.address
                ));
            }
            Wake::Event(Some(Err(error))) => {
                return refusal(&error, context, replica_id, &reader.address);
            }
            Wake::Event(Some(Ok(event))) => {
                let taken =
                    take_event(holder, stream, reader, &event, identity, context, &mut pace);
                if let Err(end) = taken.await {
                    return store_before_failing(holder, reader, identity, end).await;
                }
            }
        }
    }
}

/// A stream that fails on an event first stores the complete transactions read before it, so
/// the checkpoint stands right before the event that stopped it.
async fn store_before_failing(
    holder: &mut Holder,
    reader: &mut Reader,
    identity: &str,
    end: SessionEnd,
) -> SessionEnd {
    if matches!(end, SessionEnd::Failed(_))
        && reader.committed_rows > 0
        && !holder.lease_lost()
        && let Err(write) = flush(holder, reader, identity).await
    {
        return write;
    }
    end
}

/// The write that is due by the clock; the first one marks the stream running.
async fn timely_flush(
    holder: &mut Holder,
    reader: &mut Reader,
    identity: &str,
    pace: &mut Pace,
) -> Result<(), SessionEnd> {
    flush(holder, reader, identity).await?;
    pace.last_flush = Instant::now();
    if !pace.running {
        pace.running = true;
        holder.running().await;
    }
    Ok(())
}

/// Takes in one event, and writes the batch once it is full.
async fn take_event(
    holder: &mut Holder,
    stream: &BinlogStream,
    reader: &mut Reader,
    event: &Event,
    identity: &str,
    context: &StepContext,
    pace: &mut Pace,
) -> Result<(), SessionEnd> {
    pace.last_seen = Instant::now();
    holder.progress.last_heartbeat_at = Some(crate::domain::now());
    reader.handle(holder, stream, event, context).await?;
    if reader.committed_rows >= BATCH_ROWS || reader.batch.len() >= BATCH_ROWS * 2 {
        flush(holder, reader, identity).await?;
        pace.last_flush = Instant::now();
    }
    Ok(())
}

/// Writes the complete transactions buffered (or, for one very large transaction, its rows so
/// far) with the checkpoint after them.
async fn flush(holder: &mut Holder, reader: &mut Reader, identity: &str) -> Result<(), SessionEnd> {
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
    holder.write(events, position).await
}

impl Reader {
    /// A reader that continues from `position`, before any event.
    fn new(
        address: mysql::Endpoint,
        mariadb: bool,
        tables: Tables,
        position: &StreamPosition,
        checksums: bool,
    ) -> Reader {
        let start = BinlogPoint {
            file: position.binlog_file.clone(),
            position: u64::try_from(position.binlog_position).unwrap_or(4),
        };
        let gtids = GtidSet::parse(position.gtid_set.as_deref().unwrap_or_default());
        Reader {
            address,
            mariadb,
            tables,
            transactions: Transactions::new(start, gtids, checksums),
            committed_rows: 0,
            skip_rows: position.skip_rows,
            transaction_rows: 0,
            batch: Vec::new(),
            last_event_at: position.last_event_at,
            open_statements: StatementChanges::default(),
            committed_statements: StatementChanges::default(),
            replay_until: position.replay_until.clone(),
        }
    }

    fn position(&self, at: BinlogPoint, skip_rows: i64, identity: &str) -> StreamPosition {
        StreamPosition {
            binlog_file: at.file,
            binlog_position: i64::try_from(at.position).unwrap_or(i64::MAX),
            skip_rows,
            gtid_set: self.transactions.gtids.render(),
            source_identity: Some(identity.to_owned()),
            last_event_at: self.last_event_at,
            statement_changes: StatementChanges::default(),
            replay_until: None,
        }
    }

    /// The open transaction commits with an event of `timestamp`, ending at `end`.
    fn commit(&mut self, end: u64, timestamp: u32) {
        self.transactions.commit(end);
        if let Some(rows) = self.batch.get_mut(self.committed_rows..)
            && !rows.is_empty()
        {
            let at = decode::event_time(timestamp);
            decode::stamp_commit(rows, at);
            self.last_event_at = Some(at);
        }
        self.committed_rows = self.batch.len();
        self.transaction_rows = 0;
        self.skip_rows = 0;
        let open = std::mem::take(&mut self.open_statements);
        self.committed_statements.add(open);
    }

    /// Takes in one event: moves the transaction, the binlog file and the resume point on,
    /// buffers the rows of tracked tables, and re-reads the tables a DDL statement touched. An
    /// event that cannot be classified fails the stream, naming its type and place.
    async fn handle(
        &mut self,
        holder: &mut Holder,
        stream: &BinlogStream,
        event: &Event,
        context: &StepContext,
    ) -> Result<(), SessionEnd> {
        let header = event.header();
        metrics::counter!("dbtrail_stream_bytes_read_total")
            .increment(u64::from(header.event_size()));
        let place = self.transactions.place(event).map_err(SessionEnd::Failed)?;
        let meaning = events::classify(event).map_err(|reason| {
            SessionEnd::Failed(format!(
                "{reason}, at {}:{}; the stream stopped there so that nothing is skipped silently",
                self.transactions.file, place.start
            ))
        })?;
        match meaning {
            Meaning::Described => self.transactions.described(),
            Meaning::Rotate(rotate) => self.transactions.rotate(&rotate, event),
            Meaning::Begin(gtid) => {
                if gtid.is_some() || !self.transactions.in_transaction {
                    self.transactions.begin(gtid);
                    self.transaction_rows = 0;
                }
            }
            Meaning::Commit => self.commit(place.end, header.timestamp()),
            Meaning::Statement(query) => {
                let at = (place.end, header.timestamp());
                self.statement(holder, &query, at, context).await?;
            }
            Meaning::StatementDml(_) => {
                self.statement_dml(place);
                if !self.transactions.in_transaction {
                    self.commit(place.end, header.timestamp());
                }
            }
            Meaning::Heartbeat => {
                // The source had nothing to send: the reader is caught up.
                holder.progress.lag_millis = 0;
                holder.record_progress(false).await;
            }
            Meaning::Payload => self.transactions.enter_payload(place),
            Meaning::Rows(rows) => {
                self.rows(holder, stream, &rows, header.timestamp(), place)?;
                if !self.transactions.in_transaction {
                    // Row events outside BEGIN ... COMMIT (non-transactional engines) commit alone.
                    self.commit(place.end, header.timestamp());
                }
            }
            Meaning::NoRows => self.transactions.pass(place.end, event),
        }
        Ok(())
    }

    /// Statement-format DML: rows changed that the binlog does not carry as rows. Counted and
    /// shown on the stream, with its place, never dropped in silence.
    fn statement_dml(&mut self, place: Place) {
        let read_before = BinlogPoint {
            file: self.transactions.file.clone(),
            position: place.start,
        };
        if self
            .replay_until
            .as_ref()
            .is_some_and(|until| read_before < *until)
        {
            // Read again after a restart (an overlap): counted when it was first read, as its
            // rows would have been stored.
            return;
        }
        let at = format!("{}:{}", self.transactions.file, place.start);
        tracing::warn!(position = %at, "statement-format DML in the binlog cannot be captured as rows");
        metrics::counter!("dbtrail_stream_statement_changes_skipped_total").increment(1);
        self.open_statements.record(at);
    }

    /// A statement that commits alone (DDL), ending at `end`.
    async fn statement(
        &mut self,
        holder: &mut Holder,
        query: &QueryEvent<'_>,
        (end, timestamp): (u64, u32),
        context: &StepContext,
    ) -> Result<(), SessionEnd> {
        // The columns of the tables it touches from here on, read before the checkpoint can
        // pass it (a replay finds them stored).
        let at = BinlogPoint {
            file: self.transactions.file.clone(),
            position: end,
        };
        let statement = query.query();
        let schema = query.schema().into_owned();
        for (schema, table) in ddl_tables(statement.trim(), &schema) {
            if !self.tables.has_version_at(&schema, &table, &at) {
                self.refresh(holder, &schema, &table, &at, context).await?;
            }
        }
        self.commit(end, timestamp);
        Ok(())
    }

    /// Reads a table's columns again after a DDL statement touched it.
    async fn refresh(
        &mut self,
        holder: &mut Holder,
        schema: &str,
        table: &str,
        at: &BinlogPoint,
        context: &StepContext,
    ) -> Result<(), SessionEnd> {
        let mut link = connection::connect(context).await?;
        let reloaded = self
            .tables
            .reload(
                &mut link.connection,
                &self.address,
                (&context.server.spec.stream_options, context.agent.snapshot),
                self.mariadb,
                (schema, table),
                at,
            )
            .await;
        link.close().await;
        holder
            .snapshot_refreshed((schema, table), reloaded?, at)
            .await;
        Ok(())
    }

    /// Buffers the row changes of a rows event of a tracked table, past the rows an earlier
    /// connection stored already.
    fn rows(
        &mut self,
        holder: &mut Holder,
        stream: &BinlogStream,
        rows: &RowsEventData<'_>,
        timestamp: u32,
        place: Place,
    ) -> Result<(), SessionEnd> {
        let Some(table_map) = stream.get_tme(rows.table_id()) else {
            return Err(SessionEnd::Disconnected(
                "a rows event came without its table map; reconnecting".into(),
            ));
        };
        let schema = table_map.database_name().into_owned();
        let table = table_map.table_name().into_owned();
        let at = BinlogPoint {
            file: self.transactions.file.clone(),
            position: place.start,
        };
        let stored_already = self.replay_until.as_ref().is_some_and(|until| at < *until);
        let columns = self.tables.get(&schema, &table, &at).cloned();
        let Some(columns) = columns.filter(|_| !stored_already) else {
            // Not tracked (stream_options), not a table of the snapshot, or read again after a
            // restart and stored already.
            let count = decode::row_count(rows, table_map).map_err(|error| {
                SessionEnd::Failed(format!(
                    "{error} ({schema}.{table} at {}:{})",
                    self.transactions.file, place.start
                ))
            })?;
            self.transactions.count_rows(count);
            return Ok(());
        };
        let committed_at = DateTime::from_timestamp(i64::from(timestamp), 0).unwrap_or_default();
        self.last_event_at = Some(committed_at);
        holder.progress.lag_millis = (Utc::now() - committed_at).num_milliseconds().max(0);
        let mut count = 0;
        for (index, row) in rows.rows(table_map).enumerate() {
            count += 1;
            let undecodable = |error: String| {
                SessionEnd::Failed(format!(
                    "a row of {schema}.{table} at {}:{} cannot be decoded: {error}",
                    self.transactions.file, place.start
                ))
            };
            let (before, after) = row.map_err(|error| undecodable(error.to_string()))?;
            self.transaction_rows += 1;
            if self.skip_rows > 0 {
                self.skip_rows -= 1;
                continue;
            }
            let row = ChangeRow {
                file: &self.transactions.file,
                position: place.start,
                row_index: place.first_row + index,
                gtid: &self.transactions.gtid_text,
                committed_at,
                schema: &schema,
                table: &table,
                operation: events::operation(rows),
            };
            let change = decode::change(&columns, row, before, after).map_err(undecodable)?;
            self.batch.push(change);
        }
        self.transactions.count_rows(count);
        Ok(())
    }
}

impl From<StoreError> for SessionEnd {
    fn from(error: StoreError) -> SessionEnd {
        match error {
            StoreError::Fenced => SessionEnd::Stopped,
            other => {
                SessionEnd::Disconnected(format!("the change index cannot be written: {other}"))
            }
        }
    }
}
