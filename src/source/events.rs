//! What each binlog event means to a reader of row changes, for MySQL (5.7 to 9.x, Aurora) and
//! MariaDB alike (streaming.md §6): where transactions begin and commit, their GTIDs, where a
//! reader may resume, which events carry rows, and which carry none. An event this module cannot
//! classify is an error naming its type and place, never a silent skip.
//!
//! MySQL 8's compressed transactions (TRANSACTION_PAYLOAD) hold a whole transaction's events,
//! each with position 0: their rows are placed at the payload's start, numbered across the
//! payload, and the transaction commits at the payload's end.

use mysql_common::{
    binlog::{
        consts::EventFlags,
        events::{
            Event, EventData, GtidEvent, QueryEvent, RotateEvent, RowsEventData, TableMapEvent,
        },
    },
    constants::ColumnType,
};

use super::gtid::{Gtid, GtidSet};
use crate::domain::{ChangeOperation, stream::BinlogPoint};

/// MariaDB's GTID event, which mysql_common does not parse.
const MARIADB_GTID_EVENT: u8 = 0xa2;
/// MySQL 8.0.26+'s heartbeat, which mysql_common does not know.
const HEARTBEAT_V2_EVENT: u8 = 0x29;
/// MySQL 8.0.20+'s compressed transaction, whose header [`check_payload_header`] reads first.
const TRANSACTION_PAYLOAD_EVENT: u8 = 0x28;
/// The table map, whose column metadata [`check_table_map`] checks.
const TABLE_MAP_EVENT: u8 = 0x13;

/// Events that carry no row and change no transaction state, by type code and name.
const WITHOUT_ROWS: &[(u8, &str)] = &[
    (0x03, "STOP"),
    (0x05, "INTVAR"),
    (0x09, "APPEND_BLOCK"),
    (0x0d, "RAND"),
    (0x0e, "USER_VAR"),
    (0x11, "BEGIN_LOAD_QUERY"),
    (0x13, "TABLE_MAP"),
    (0x1c, "IGNORABLE"),
    (0x1d, "ROWS_QUERY"),
    (0x23, "PREVIOUS_GTIDS"),
    (0x24, "TRANSACTION_CONTEXT"),
    (0x25, "VIEW_CHANGE"),
    // Aurora MySQL pads its binlog with these.
    (0x64, "AURORA_PADDING"),
    (0xa0, "MARIADB_ANNOTATE_ROWS"),
    (0xa1, "MARIADB_BINLOG_CHECKPOINT"),
    (0xa3, "MARIADB_GTID_LIST"),
    (0xa4, "MARIADB_START_ENCRYPTION"),
];

/// Events that carry rows in a form no reader here decodes, with the way out.
const REFUSED: &[(u8, &str)] = &[
    (
        0xa5,
        "MARIADB_QUERY_COMPRESSED: turn log_bin_compress off on the source",
    ),
    (
        0xa6,
        "MARIADB_WRITE_ROWS_COMPRESSED: turn log_bin_compress off on the source",
    ),
    (
        0xa7,
        "MARIADB_UPDATE_ROWS_COMPRESSED: turn log_bin_compress off on the source",
    ),
    (
        0xa8,
        "MARIADB_DELETE_ROWS_COMPRESSED: turn log_bin_compress off on the source",
    ),
    (
        0xa9,
        "MARIADB_WRITE_ROWS_COMPRESSED_V1: turn log_bin_compress off on the source",
    ),
    (
        0xaa,
        "MARIADB_UPDATE_ROWS_COMPRESSED_V1: turn log_bin_compress off on the source",
    ),
    (
        0xab,
        "MARIADB_DELETE_ROWS_COMPRESSED_V1: turn log_bin_compress off on the source",
    ),
    (
        0x1a,
        "INCIDENT: the source recorded that changes may be missing from its binlog \
         (e.g. LOST_EVENTS); check the source and restart the stream past it once accounted for",
    ),
];

/// What one event means.
pub enum Meaning<'a> {
    /// The binlog's format description.
    Described,
    /// A new binlog file (or, artificial, the file the dump starts in).
    Rotate(RotateEvent<'a>),
    /// A transaction opens, with its GTID when it has one.
    Begin(Option<Gtid>),
    /// The open transaction commits.
    Commit,
    /// Row changes.
    Rows(RowsEventData<'a>),
    /// A DDL statement (or another statement that commits alone).
    Statement(QueryEvent<'a>),
    /// Statement-format DML: rows changed that the binlog does not carry as rows.
    StatementDml(String),
    /// The source had nothing to send.
    Heartbeat,
    /// A compressed transaction: its events follow, each at position 0.
    Payload,
    /// An event that carries no rows.
    NoRows,
}

/// What a statement does to a transaction.
fn statement_meaning(query: QueryEvent<'_>) -> Meaning<'_> {
    let text = query.query();
    let words: Vec<String> = strip_comments(&text)
        .split_whitespace()
        .take(2)
        .map(str::to_ascii_uppercase)
        .collect();
    let first = words.first().map_or("", String::as_str);
    let second = words.get(1).map_or("", String::as_str);
    match (first, second) {
        ("BEGIN", _) | ("XA", "START" | "BEGIN") | ("START", "TRANSACTION") => Meaning::Begin(None),
        ("COMMIT", _) | ("XA", "COMMIT" | "ROLLBACK") => Meaning::Commit,
        ("ROLLBACK", "TO") | ("SAVEPOINT", _) | ("XA", _) | ("RELEASE", _) => Meaning::NoRows,
        // A transaction that touched a non-transactional table and rolled back: what the binlog
        // holds of it up to here stays, and the group ends.
        ("ROLLBACK", _) => Meaning::Commit,
        ("INSERT" | "UPDATE" | "DELETE" | "REPLACE" | "LOAD", _) => {
            Meaning::StatementDml(text.into_owned())
        }
        _ => Meaning::Statement(query),
    }
}

/// The statement without the comments before its first word.
fn strip_comments(text: &str) -> &str {
    let mut rest = text.trim_start();
    while let Some(comment) = rest.strip_prefix("/*") {
        rest = comment
            .split_once("*/")
            .map_or("", |(_, after)| after)
            .trim_start();
    }
    rest
}

/// The GTID of MySQL's GTID event, tagged or not.
fn mysql_gtid(event: &GtidEvent) -> Gtid {
    Gtid::Mysql {
        uuid: uuid::Uuid::from_bytes(event.sid()).to_string(),
        tag: event.tag().map(ToString::to_string).unwrap_or_default(),
        number: event.gno(),
    }
}

/// MariaDB's GTID event: sequence (8 bytes), domain (4), flags; the server id is the header's.
fn mariadb_gtid(event: &Event) -> Result<Gtid, String> {
    let data = event.data();
    let (Some(sequence), Some(domain)) = (data.get(0..8), data.get(8..12)) else {
        return Err("a MariaDB GTID event is too short".into());
    };
    let mut sequence_bytes = [0; 8];
    sequence_bytes.copy_from_slice(sequence);
    let mut domain_bytes = [0; 4];
    domain_bytes.copy_from_slice(domain);
    Ok(Gtid::Mariadb {
        domain: u32::from_le_bytes(domain_bytes),
        server: event.header().server_id(),
        sequence: u64::from_le_bytes(sequence_bytes),
    })
}

/// What `event` means, or why it cannot be read (its type named).
pub fn classify(event: &Event) -> Result<Meaning<'_>, String> {
    let code = event.header().event_type_raw();
    match code {
        MARIADB_GTID_EVENT => return mariadb_gtid(event).map(|gtid| Meaning::Begin(Some(gtid))),
        HEARTBEAT_V2_EVENT => return Ok(Meaning::Heartbeat),
        _ => {}
    }
    if let Some((_, reason)) = REFUSED.iter().find(|(known, _)| *known == code) {
        return Err(format!("the binlog holds a {reason}"));
    }
    if code == TABLE_MAP_EVENT {
        let table_map = event
            .read_event::<TableMapEvent<'_>>()
            .map_err(|error| format!("a TABLE_MAP event cannot be read: {error}"))?;
        check_table_map(&table_map)?;
    }
    if WITHOUT_ROWS.iter().any(|(known, _)| *known == code) {
        return Ok(Meaning::NoRows);
    }
    if code == TRANSACTION_PAYLOAD_EVENT {
        check_payload_header(event.data())
            .map_err(|error| format!("a TRANSACTION_PAYLOAD event is malformed: {error}"))?;
    }
    let data = event
        .read_data()
        .map_err(|error| format!("a binlog event of type {code} cannot be read: {error}"))?;
    let meaning = match data {
        Some(EventData::FormatDescriptionEvent(_)) => Meaning::Described,
        Some(EventData::RotateEvent(rotate)) => Meaning::Rotate(rotate),
        Some(EventData::GtidEvent(gtid)) => Meaning::Begin(Some(mysql_gtid(&gtid))),
        // gtid_mode OFF: the transaction has no GTID.
        Some(EventData::AnonymousGtidEvent(_)) => Meaning::Begin(None),
        Some(EventData::QueryEvent(query)) => statement_meaning(query),
        // XA PREPARE ends the binlog's group of an XA transaction's events.
        Some(EventData::XidEvent(_) | EventData::XaPrepareLogEvent(_)) => Meaning::Commit,
        Some(EventData::RowsEvent(rows)) => {
            check_rows(&rows)
                .map_err(|error| format!("a rows event of type {code} is malformed: {error}"))?;
            Meaning::Rows(rows)
        }
        Some(EventData::HeartbeatEvent) => Meaning::Heartbeat,
        Some(EventData::TransactionPayloadEvent(_)) => Meaning::Payload,
        Some(EventData::ExecuteLoadQueryEvent(_)) => {
            Meaning::StatementDml("LOAD DATA (statement format)".into())
        }
        _ => {
            return Err(format!(
                "the binlog holds an event of type {code} that dbtrail cannot classify"
            ));
        }
    };
    Ok(meaning)
}

/// Reads a length-encoded integer off the front of `rest`, as mysql_common's reader does.
fn lenenc(rest: &mut &[u8]) -> Result<u64, String> {
    let (&first, tail) = rest.split_first().ok_or("it ends inside a field")?;
    let width = match first {
        0..=0xfa => {
            *rest = tail;
            return Ok(u64::from(first));
        }
        0xfc => 2,
        0xfd => 3,
        0xfe => 8,
        0xfb | 0xff => return Err(format!("0x{first:02x} starts no length-encoded integer")),
    };
    let bytes = tail.get(..width).ok_or("it ends inside a field")?;
    *rest = &tail[width..];
    Ok(bytes
        .iter()
        .rev()
        .fold(0, |value, &byte| (value << 8) | u64::from(byte)))
}

/// Checks the header fields (type, length, value) of a TRANSACTION_PAYLOAD event's body before
/// mysql_common reads them: its reader panics on a field type above 255, on a compression type
/// other than ZSTD (0) and NONE (255), and on an unknown field longer than the event.
fn check_payload_header(data: &[u8]) -> Result<(), String> {
    let mut rest = data;
    let (mut size, mut compression) = (None, None);
    while !rest.is_empty() {
        let field = lenenc(&mut rest)?;
        match field {
            // The end of the header: the compressed bytes follow.
            0 => {
                let size = size.ok_or("its header gives no payload size")?;
                compression.ok_or("its header gives no compression type")?;
                if size > rest.len() as u64 {
                    return Err(format!(
                        "its header gives a payload of {size} bytes, and {} follow",
                        rest.len()
                    ));
                }
                return Ok(());
            }
            1..=3 => {
                lenenc(&mut rest)?;
                let value = lenenc(&mut rest)?;
                match field {
                    1 => size = Some(value),
                    2 if value == 0 || value == 255 => compression = Some(value),
                    2 => return Err(format!("compression type {value} is neither ZSTD nor NONE")),
                    _ => {}
                }
            }
            4..=255 => {
                let length = lenenc(&mut rest)?;
                let length = usize::try_from(length).unwrap_or(usize::MAX);
                rest = rest
                    .get(length..)
                    .ok_or(format!("its header field {field} runs past the event"))?;
            }
            _ => return Err(format!("its header holds a field of type {field}")),
        }
    }
    Err("its header has no end".into())
}

/// Checks that every column of a table map has a type mysql_common knows and the metadata its
/// type needs: mysql_common's row decoder indexes a column's metadata without checking its length,
/// and panics on a table map that lacks it.
fn check_table_map(table_map: &TableMapEvent<'_>) -> Result<(), String> {
    let columns = usize::try_from(table_map.columns_count()).unwrap_or(usize::MAX);
    // The metadata of the last column is found by walking every column's type and metadata.
    if columns > 0 && table_map.get_column_metadata(columns - 1).is_none() {
        return Err(format!(
            "the TABLE_MAP of {}.{} is malformed: its {columns} columns' types and metadata do not \
             agree",
            table_map.database_name(),
            table_map.table_name()
        ));
    }
    // DECIMAL(precision, scale): mysql_common subtracts scale from precision unchecked.
    for column in 0..columns {
        if let Ok(Some(ColumnType::MYSQL_TYPE_NEWDECIMAL)) = table_map.get_raw_column_type(column)
            && let Some(&[precision, scale]) = table_map.get_column_metadata(column)
            && scale > precision
        {
            return Err(format!(
                "the TABLE_MAP of {}.{} is malformed: its column {} is a DECIMAL({precision}, \
                 {scale})",
                table_map.database_name(),
                table_map.table_name(),
                column + 1
            ));
        }
    }
    Ok(())
}

/// Checks that a rows event's rows can be counted: a row is at least one byte unless no image
/// has a column, and mysql_common's row iterator never ends on row bytes that are zero-width rows.
fn check_rows(rows: &RowsEventData<'_>) -> Result<(), String> {
    let before = rows
        .columns_before_image()
        .is_some_and(|columns| columns.any());
    let after = rows
        .columns_after_image()
        .is_some_and(|columns| columns.any());
    if !rows.rows_data().is_empty() && !before && !after {
        return Err(format!(
            "it holds {} bytes of rows, but its row images have none of its {} columns",
            rows.rows_data().len(),
            rows.num_columns()
        ));
    }
    Ok(())
}

/// What the rows of a rows event did.
pub fn operation(rows: &RowsEventData<'_>) -> ChangeOperation {
    match rows {
        RowsEventData::WriteRowsEventV1(_) | RowsEventData::WriteRowsEvent(_) => {
            ChangeOperation::Insert
        }
        RowsEventData::DeleteRowsEventV1(_) | RowsEventData::DeleteRowsEvent(_) => {
            ChangeOperation::Delete
        }
        _ => ChangeOperation::Update,
    }
}

/// A compressed transaction being read.
#[derive(Debug, Clone, Copy)]
struct Payload {
    start: u64,
    end: u64,
    /// Rows read from it so far: the next row's index.
    rows: usize,
    committed: bool,
}

/// Where one event sits: its start (where its rows are placed), its end, and the index of its
/// first row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Place {
    pub start: u64,
    pub end: u64,
    pub first_row: usize,
}

/// The transaction state of a reader between events: the binlog file, where a restart may
/// begin, the open transaction and its GTID, the GTID set so far, and the compressed
/// transaction being read.
#[derive(Debug, Clone)]
pub struct Transactions {
    /// The binlog file being read.
    pub file: String,
    /// The end of the last complete transaction (where a restart may begin).
    pub committed: BinlogPoint,
    pub in_transaction: bool,
    /// The current transaction's GTID, added to the set at its commit.
    gtid: Option<Gtid>,
    /// The same, as text for the rows.
    pub gtid_text: String,
    pub gtids: GtidSet,
    payload: Option<Payload>,
    /// Whether the format description arrived: before it, a rotate's footer is read as its name.
    described: bool,
    /// Whether events carry a CRC32 footer (`binlog_checksum` is not NONE).
    checksums: bool,
}

impl Transactions {
    /// The state of a reader that starts at `start`, after the GTID set `gtids`.
    pub fn new(start: BinlogPoint, gtids: GtidSet, checksums: bool) -> Transactions {
        Transactions {
            file: start.file.clone(),
            committed: start,
            in_transaction: false,
            gtid: None,
            gtid_text: String::new(),
            gtids,
            payload: None,
            described: false,
            checksums,
        }
    }

    /// Where `event` sits. The events of a compressed transaction carry position 0: they sit at
    /// the payload. An event after the payload that is not part of it ends it; a payload
    /// whose transaction did not commit inside it could not be read whole, and is an error.
    pub fn place(&mut self, event: &Event) -> Result<Place, String> {
        let header = event.header();
        let end = u64::from(header.log_pos());
        if let Some(payload) = self.payload {
            if end == 0 {
                return Ok(Place {
                    start: payload.start,
                    end: payload.end,
                    first_row: payload.rows,
                });
            }
            self.payload = None;
            if !payload.committed {
                return Err(format!(
                    "the compressed transaction (TRANSACTION_PAYLOAD) at {}:{} could not be read \
                     whole: its events end without a commit",
                    self.file, payload.start
                ));
            }
        }
        Ok(Place {
            start: end.saturating_sub(u64::from(header.event_size())),
            end,
            first_row: 0,
        })
    }

    /// A compressed transaction at `place` begins.
    pub fn enter_payload(&mut self, place: Place) {
        self.payload = Some(Payload {
            start: place.start,
            end: place.end,
            rows: 0,
            committed: false,
        });
    }

    /// `count` rows of a compressed transaction were read.
    pub fn count_rows(&mut self, count: usize) {
        if let Some(payload) = &mut self.payload {
            payload.rows += count;
        }
    }

    /// A transaction opens.
    pub fn begin(&mut self, gtid: Option<Gtid>) {
        self.in_transaction = true;
        self.gtid_text = gtid.as_ref().map(Gtid::to_string).unwrap_or_default();
        self.gtid = gtid;
    }

    /// The open transaction (or a statement alone) commits at `end`.
    pub fn commit(&mut self, end: u64) {
        if let Some(gtid) = self.gtid.take() {
            self.gtids.add(&gtid);
        }
        if let Some(payload) = &mut self.payload {
            payload.committed = true;
        }
        self.committed = BinlogPoint {
            file: self.file.clone(),
            position: end,
        };
        self.in_transaction = false;
        self.gtid_text.clear();
    }

    /// The format description arrived.
    pub fn described(&mut self) {
        self.described = true;
    }

    /// A rotate names the binlog file read from now on (and, unless the dump made it up for a
    /// file it already reads, the place to resume from).
    pub fn rotate(&mut self, rotate: &RotateEvent<'_>, event: &Event) {
        let artificial = is_artificial(event);
        let mut name = rotate.name_raw().to_vec();
        // The dump's first rotate comes before the format description, so the event
        // reader cannot know that its last four bytes are the checksum.
        if !self.described && self.checksums && name.len() > 4 {
            name.truncate(name.len() - 4);
        }
        self.file = String::from_utf8_lossy(&name).into_owned();
        if !artificial || self.committed.file != self.file {
            self.committed = BinlogPoint {
                file: self.file.clone(),
                position: rotate.position(),
            };
        }
    }

    /// An event that changes nothing, ending at `end`: between transactions, a place to resume
    /// from; never go back (the dump's opening events may carry earlier positions of the file).
    pub fn pass(&mut self, end: u64, event: &Event) {
        if !self.in_transaction
            && self.payload.is_none()
            && !is_artificial(event)
            && self.committed.file == self.file
            && end > self.committed.position
        {
            self.committed.position = end;
        }
    }
}

fn is_artificial(event: &Event) -> bool {
    event
        .header()
        .flags()
        .contains(EventFlags::LOG_EVENT_ARTIFICIAL_F)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The header of the MySQL 8.0.40 corpus file's payload: compression ZSTD, 20,188 bytes
    /// uncompressed, 792 bytes of payload, end mark.
    const HEADER: [u8; 14] = [2, 1, 0, 3, 3, 0xfc, 0xdc, 0x4e, 1, 3, 0xfc, 0x18, 0x03, 0];

    fn with_payload(header: &[u8], payload: usize) -> Vec<u8> {
        let mut data = header.to_vec();
        data.resize(header.len() + payload, 0);
        data
    }

    #[test]
    fn transaction_payload_headers_are_checked_before_mysql_common_reads_them() {
        assert_eq!(check_payload_header(&with_payload(&HEADER, 792)), Ok(()));
        // Each of these made mysql_common's TransactionPayloadEvent reader panic, or is cut.
        let cases: &[(&[u8], usize, &str)] = &[
            (
                &HEADER,
                791,
                "its header gives a payload of 792 bytes, and 791 follow",
            ),
            (
                &[2, 1, 0x18, 1, 1, 0, 0],
                0,
                "compression type 24 is neither ZSTD nor NONE",
            ),
            (
                &[0xfd, 1, 0, 3, 1, 1, 0, 2, 1, 0, 0],
                0,
                "its header holds a field of type 196609",
            ),
            (
                &[9, 0xfc, 0xff, 0x7f, 1, 1, 0, 2, 1, 0, 0],
                0,
                "its header field 9 runs past the event",
            ),
            (&[1, 1, 0, 0], 0, "its header gives no compression type"),
            (&[2, 1, 0, 0], 0, "its header gives no payload size"),
            (&[2, 1, 0, 1, 1, 0], 0, "its header has no end"),
            (&[2, 1, 0, 1, 0xfc, 1], 0, "it ends inside a field"),
            (&[0xfb], 0, "0xfb starts no length-encoded integer"),
        ];
        for (header, payload, error) in cases {
            assert_eq!(
                check_payload_header(&with_payload(header, *payload)),
                Err((*error).to_owned()),
                "{header:?}"
            );
        }
    }

    #[test]
    fn comments_before_a_statement_are_skipped() {
        assert_eq!(
            strip_comments("  /* app=shop */ /* x */INSERT INTO t VALUES (1)"),
            "INSERT INTO t VALUES (1)"
        );
        assert_eq!(strip_comments("/* unterminated"), "");
    }
}
