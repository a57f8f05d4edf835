//! The reading state of one connection between events: transactions, GTIDs and the resume point,
//! the decoded rows of tracked tables waiting to be written, and what a DDL statement refreshes.

use chrono::{DateTime, Utc};
use mysql_async::{
    BinlogStream,
    binlog::events::{Event, QueryEvent, RowsEventData, TableMapEvent},
};

use super::{context::StreamContext, ending::SessionEnd, holder::Holder};
use crate::{
    domain::{
        change::RowChange,
        schema_change::{Ddl, StatementText},
        stream::BinlogPoint,
    },
    source::{
        connection::{self, mysql},
        decode::{self, ChangeRow},
        events::{self, Meaning, Place, Transactions},
        gtid::GtidSet,
        tables::{Tables, ddl_tables},
    },
    store::{StatementChanges, StreamPosition},
};

/// The reading state between events.
pub(super) struct Reader {
    pub(super) address: mysql::Endpoint,
    pub(super) mariadb: bool,
    pub(super) tables: Tables,
    /// Transactions, GTIDs and the resume point.
    pub(super) transactions: Transactions,
    /// Events of complete transactions not yet written.
    pub(super) committed_rows: usize,
    /// Rows of the first transaction that an earlier connection stored already.
    pub(super) skip_rows: i64,
    /// Rows of the current transaction seen (stored or skipped) so far.
    pub(super) transaction_rows: i64,
    pub(super) batch: Vec<RowChange>,
    pub(super) last_event_at: Option<DateTime<Utc>>,
    /// Statement-format DML of the open transaction, and of complete ones not yet written.
    pub(super) open_statements: StatementChanges,
    pub(super) committed_statements: StatementChanges,
    /// After a restart that reads part of the binlog again: rows before this place are stored.
    pub(super) replay_until: Option<BinlogPoint>,
}

impl Reader {
    /// A reader that continues from `position`, before any event.
    pub(super) fn new(
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

    pub(super) fn position(
        &self,
        at: BinlogPoint,
        skip_rows: i64,
        identity: &str,
    ) -> StreamPosition {
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
    pub(super) fn commit(&mut self, end: u64, timestamp: u32) {
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
    pub(super) async fn handle(
        &mut self,
        holder: &mut Holder,
        stream: &BinlogStream,
        event: &Event,
        context: &StreamContext,
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
                self.statement(holder, &query, (place, header.timestamp()), context)
                    .await?;
            }
            Meaning::StatementDml(_) => {
                self.statement_dml(place);
                if !self.transactions.in_transaction {
                    self.commit(place.end, header.timestamp());
                }
            }
            Meaning::Heartbeat => {
                // The source had nothing to send: the reader is caught up. The heartbeat's time
                // alone waits for the next progress written (the checkpoint's, at the latest):
                // a thousand idle streams do not rewrite a thousand rows a second for it.
                if holder.progress.lag_millis != 0 {
                    holder.progress.lag_millis = 0;
                    holder.record_progress(false).await;
                }
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
    pub(super) fn statement_dml(&mut self, place: Place) {
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

    /// A statement that commits alone (DDL), at `place`.
    pub(super) async fn statement(
        &mut self,
        holder: &mut Holder,
        query: &QueryEvent<'_>,
        (place, timestamp): (Place, u32),
        context: &StreamContext,
    ) -> Result<(), SessionEnd> {
        // The columns of the tables it touches from here on, read before the checkpoint can
        // pass it (a replay finds them stored).
        let at = BinlogPoint {
            file: self.transactions.file.clone(),
            position: place.end,
        };
        let statement = query.query();
        let default_schema = query.schema().into_owned();
        let tables = ddl_tables(statement.trim(), &default_schema);
        let text = StatementText::capped(statement.trim());
        for (schema, table) in tables {
            if !self.tables.has_version_at(&schema, &table, &at) {
                let ddl = Ddl {
                    binlog_file: at.file.clone(),
                    binlog_position: i64::try_from(place.start).unwrap_or(i64::MAX),
                    ends_at: i64::try_from(place.end).unwrap_or(i64::MAX),
                    gtid: self.transactions.gtid_text.clone(),
                    committed_at: decode::event_time(timestamp),
                    schema,
                    table,
                    statement: text.clone(),
                };
                // Boxed, as every rare path of a stream's task: the task is as large as its
                // largest state, and a thousand idle streams would each hold this one's room.
                Box::pin(self.refresh(holder, &ddl, &at, context)).await?;
            }
        }
        self.commit(place.end, timestamp);
        Ok(())
    }

    /// Reads a table's columns again after `ddl` touched it.
    pub(super) async fn refresh(
        &mut self,
        holder: &mut Holder,
        ddl: &Ddl,
        at: &BinlogPoint,
        context: &StreamContext,
    ) -> Result<(), SessionEnd> {
        let mut link = connection::connect(&context.source()).await?;
        let reloaded = self
            .tables
            .reload(
                &mut link.connection,
                &self.address,
                (&context.server.spec.stream_options, context.agent.snapshot),
                self.mariadb,
                (&ddl.schema, &ddl.table),
                at,
            )
            .await;
        link.close().await;
        holder.snapshot_refreshed(ddl, reloaded?).await;
        Ok(())
    }

    /// Buffers the row changes of a rows event of a tracked table, past the rows an earlier
    /// connection stored already.
    pub(super) fn rows(
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
            return self.count_only(rows, table_map, (&schema, &table), place);
        };
        let committed_at = self.event_time(holder, timestamp);
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

    /// Counts the rows of a rows event without decoding them: its table is not tracked, or its
    /// rows were stored by an earlier connection.
    fn count_only(
        &mut self,
        rows: &RowsEventData<'_>,
        table_map: &TableMapEvent<'_>,
        (schema, table): (&str, &str),
        place: Place,
    ) -> Result<(), SessionEnd> {
        let count = decode::row_count(rows, table_map).map_err(|error| {
            SessionEnd::Failed(format!(
                "{error} ({schema}.{table} at {}:{})",
                self.transactions.file, place.start
            ))
        })?;
        self.transactions.count_rows(count);
        Ok(())
    }

    /// The commit time of an event's transaction, noted as the last event's and as the
    /// stream's lag.
    fn event_time(&mut self, holder: &mut Holder, timestamp: u32) -> DateTime<Utc> {
        let committed_at = DateTime::from_timestamp(i64::from(timestamp), 0).unwrap_or_default();
        self.last_event_at = Some(committed_at);
        holder.progress.lag_millis = (Utc::now() - committed_at).num_milliseconds().max(0);
        committed_at
    }
}
