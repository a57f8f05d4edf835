//! Binlog files read without their source (`dbtrail-servers binlog events FILE...`): the same
//! event meanings and row decoding as the live stream, column names from the table maps' full
//! metadata when the file has it (`binlog_row_metadata=FULL`), else `@1`, `@2`...
//!
//! Every byte is checked before mysql_common sees it: the magic number, each event's size against
//! what the file still holds, and each event's CRC32. A bad file is an error naming the offset,
//! never a panic and never a silent end.

use std::io::{self, Read};

use chrono::DateTime;
use mysql_common::binlog::{
    EventStreamReader,
    consts::BinlogVersion,
    events::{Event, RowsEventData, TableMapEvent, TransactionPayloadEvent},
};

use super::{
    decode::{self, ChangeRow},
    events::{self, Meaning, Place, Transactions},
    gtid::GtidSet,
};
use crate::domain::{change::RowChange, stream::BinlogPoint};

/// The four bytes every binlog file starts with.
const MAGIC: [u8; 4] = [0xfe, b'b', b'i', b'n'];
/// An event header's length.
const HEADER_LENGTH: usize = 19;
/// The largest event read (MySQL's max_allowed_packet ceiling).
const MAX_EVENT_SIZE: usize = 1 << 30;
/// The most bytes one compressed transaction may expand to.
const MAX_PAYLOAD_SIZE: u64 = 1 << 30;

/// What a file holds that a reader of changes wants.
#[derive(Debug, Clone, PartialEq)]
pub enum Found {
    /// A committed row change.
    Change(RowChange),
    /// A statement-format DML statement: rows changed that the binlog does not carry as rows.
    StatementDml { at: BinlogPoint, statement: String },
}

/// Why a file could not be read, and where.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}: at offset {offset}: {message}")]
pub struct FileError {
    pub file: String,
    pub offset: u64,
    pub message: String,
}

/// Which tables' changes are wanted.
pub type Wanted<'a> = &'a dyn Fn(&str, &str) -> bool;

/// Reads the binlog `input`, named `name`, calling `found` for each committed change of a wanted
/// table (in binlog order) and each statement-format DML statement.
pub fn read(
    name: &str,
    input: impl Read,
    wanted: Wanted<'_>,
    found: &mut dyn FnMut(Found),
) -> Result<(), FileError> {
    let mut reader = FileReader {
        name: name.to_owned(),
        input,
        offset: 0,
        events: EventStreamReader::new(BinlogVersion::Version4),
        transactions: Transactions::new(
            BinlogPoint {
                file: name.to_owned(),
                position: 4,
            },
            GtidSet::default(),
            false,
        ),
        pending: Vec::new(),
    };
    reader.magic()?;
    while let Some(bytes) = reader.next_event()? {
        let offset = reader.offset;
        reader.offset += bytes.len() as u64;
        // mysql_common panics on some malformed bytes that no check here foresaw: such an event
        // is refused like any other bad one.
        let taken = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            reader.event(&bytes, wanted, &mut *found)
        }))
        .unwrap_or_else(|_| Err("the event's bytes cannot be parsed".to_owned()));
        taken.map_err(|message| reader.error_at(offset, message))?;
    }
    Ok(())
}

struct FileReader<R> {
    name: String,
    input: R,
    offset: u64,
    events: EventStreamReader,
    transactions: Transactions,
    /// Changes of the open transaction, found at its commit.
    pending: Vec<RowChange>,
}

impl<R: Read> FileReader<R> {
    fn error_at(&self, offset: u64, message: impl Into<String>) -> FileError {
        FileError {
            file: self.name.clone(),
            offset,
            message: message.into(),
        }
    }

    fn magic(&mut self) -> Result<(), FileError> {
        let mut magic = [0; 4];
        match read_full(&mut self.input, &mut magic) {
            Ok(4) if magic == MAGIC => {
                self.offset = 4;
                Ok(())
            }
            Ok(_) => Err(self.error_at(
                0,
                "not a binlog file (it does not start with the binlog magic number)",
            )),
            Err(error) => Err(self.error_at(0, format!("cannot be read: {error}"))),
        }
    }

    /// The next event's bytes, whole; None at the file's clean end.
    fn next_event(&mut self) -> Result<Option<Vec<u8>>, FileError> {
        let mut header = [0; HEADER_LENGTH];
        let got = read_full(&mut self.input, &mut header)
            .map_err(|error| self.error_at(self.offset, format!("cannot be read: {error}")))?;
        if got == 0 {
            return Ok(None);
        }
        if got < HEADER_LENGTH {
            return Err(self.error_at(self.offset, "the file is truncated inside an event header"));
        }
        let size = event_size(&header).map_err(|message| self.error_at(self.offset, message))?;
        let mut bytes = header.to_vec();
        bytes.resize(size, 0);
        let got = read_full(&mut self.input, &mut bytes[HEADER_LENGTH..])
            .map_err(|error| self.error_at(self.offset, format!("cannot be read: {error}")))?;
        if got < size - HEADER_LENGTH {
            return Err(self.error_at(
                self.offset,
                format!(
                    "the file is truncated inside an event of {size} bytes ({} present)",
                    HEADER_LENGTH + got
                ),
            ));
        }
        Ok(Some(bytes))
    }

    /// Takes in one event of the file.
    fn event(
        &mut self,
        bytes: &[u8],
        wanted: Wanted<'_>,
        found: &mut dyn FnMut(Found),
    ) -> Result<(), String> {
        let event = self
            .events
            .read(bytes)
            .map_err(|error| format!("unreadable event: {error}"))?
            .ok_or("an empty event")?;
        check_sum(&event)?;
        let place = self.transactions.place(&event)?;
        if let Ok(Meaning::Payload) = events::classify(&event) {
            self.transactions.enter_payload(place);
            return self.payload(&event, wanted, found);
        }
        self.take(&event, place, wanted, found)
    }

    /// The events inside a compressed transaction.
    fn payload(
        &mut self,
        event: &Event,
        wanted: Wanted<'_>,
        found: &mut dyn FnMut(Found),
    ) -> Result<(), String> {
        let payload = event
            .read_event::<TransactionPayloadEvent<'_>>()
            .map_err(|error| format!("unreadable TRANSACTION_PAYLOAD: {error}"))?;
        let mut inner = Vec::new();
        payload
            .decompressed()
            .and_then(|reader| reader.take(MAX_PAYLOAD_SIZE + 1).read_to_end(&mut inner))
            .map_err(|error| format!("the TRANSACTION_PAYLOAD cannot be decompressed: {error}"))?;
        if inner.len() as u64 > MAX_PAYLOAD_SIZE {
            return Err("the TRANSACTION_PAYLOAD expands to more than 1 GiB".into());
        }
        let mut rest = inner.as_slice();
        while !rest.is_empty() {
            let size = rest
                .get(..HEADER_LENGTH)
                .ok_or("the TRANSACTION_PAYLOAD ends inside an event header".to_owned())
                .and_then(event_size)?;
            let bytes = rest
                .get(..size)
                .ok_or("the TRANSACTION_PAYLOAD ends inside an event")?;
            rest = &rest[size..];
            let inner_event = self
                .events
                .read_decompressed(bytes)
                .map_err(|error| format!("unreadable event in a TRANSACTION_PAYLOAD: {error}"))?
                .ok_or("an empty event in a TRANSACTION_PAYLOAD")?;
            let place = self.transactions.place(&inner_event)?;
            self.take(&inner_event, place, wanted, found)?;
        }
        Ok(())
    }

    /// What one event does to the transaction and the changes found.
    fn take(
        &mut self,
        event: &Event,
        place: Place,
        wanted: Wanted<'_>,
        found: &mut dyn FnMut(Found),
    ) -> Result<(), String> {
        match events::classify(event)? {
            Meaning::Described => self.transactions.described(),
            Meaning::Rotate(_) | Meaning::Heartbeat | Meaning::NoRows | Meaning::Payload => {
                self.transactions.pass(place.end, event)
            }
            Meaning::Begin(gtid) => {
                if gtid.is_some() || !self.transactions.in_transaction {
                    self.transactions.begin(gtid);
                }
            }
            Meaning::Commit | Meaning::Statement(_) => self.commit(place.end, event, found),
            Meaning::StatementDml(statement) => {
                found(Found::StatementDml {
                    at: BinlogPoint {
                        file: self.name.clone(),
                        position: place.start,
                    },
                    statement,
                });
                if !self.transactions.in_transaction {
                    self.commit(place.end, event, found);
                }
            }
            Meaning::Rows(rows) => {
                self.rows(event, &rows, place, wanted)?;
                if !self.transactions.in_transaction {
                    self.commit(place.end, event, found);
                }
            }
        }
        Ok(())
    }

    /// The open transaction commits with `event`, which ends at `end`: its changes are found.
    fn commit(&mut self, end: u64, event: &Event, found: &mut dyn FnMut(Found)) {
        self.transactions.commit(end);
        decode::stamp_commit(
            &mut self.pending,
            decode::event_time(event.header().timestamp()),
        );
        for change in self.pending.drain(..) {
            found(Found::Change(change));
        }
    }

    /// Decodes the rows of a rows event with the columns its table map gives.
    fn rows(
        &mut self,
        event: &Event,
        rows: &RowsEventData<'_>,
        place: Place,
        wanted: Wanted<'_>,
    ) -> Result<(), String> {
        let table_map: &TableMapEvent<'static> = self
            .events
            .get_tme(rows.table_id())
            .ok_or("a rows event came without its table map")?;
        let schema = table_map.database_name().into_owned();
        let table = table_map.table_name().into_owned();
        let mut count = 0;
        let wanted = wanted(&schema, &table);
        let columns = decode::table_map_columns(table_map);
        let committed_at =
            DateTime::from_timestamp(i64::from(event.header().timestamp()), 0).unwrap_or_default();
        // Every row is decoded, wanted or not: a row that cannot be is an error either way, and
        // mysql_common's row iterator can yield errors without end on bytes it cannot read.
        for (index, row) in rows.rows(table_map).enumerate() {
            let (before, after) = row
                .map_err(|error| format!("a row of {schema}.{table} cannot be decoded: {error}"))?;
            count += 1;
            if wanted {
                let at = ChangeRow {
                    file: &self.name,
                    position: place.start,
                    row_index: place.first_row + index,
                    gtid: &self.transactions.gtid_text,
                    committed_at,
                    schema: &schema,
                    table: &table,
                    operation: events::operation(rows),
                };
                let change = decode::change(&columns, at, before, after)
                    .map_err(|error| format!("a row of {schema}.{table}: {error}"))?;
                self.pending.push(change);
            }
        }
        self.transactions.count_rows(count);
        Ok(())
    }
}

/// An event's size from its header, checked: at least a header, at most [`MAX_EVENT_SIZE`].
fn event_size(header: &[u8]) -> Result<usize, String> {
    let size = header
        .get(9..13)
        .map(|bytes| u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
        .ok_or("an event header is cut short")?;
    let size = usize::try_from(size).unwrap_or(usize::MAX);
    if !(HEADER_LENGTH + 1..=MAX_EVENT_SIZE).contains(&size) {
        return Err(format!(
            "an event header gives a size of {size} bytes, which no binlog event has"
        ));
    }
    Ok(size)
}

/// The event's CRC32, when it carries one, against its bytes.
fn check_sum(event: &Event) -> Result<(), String> {
    let Some(stored) = event.checksum() else {
        return Ok(());
    };
    let Ok(Some(algorithm)) = event.footer().get_checksum_alg() else {
        return Ok(());
    };
    let computed = event.calc_checksum(algorithm);
    if u32::from_le_bytes(stored) == computed {
        Ok(())
    } else {
        Err(format!(
            "bad checksum (the event's CRC32 is {:08x}, its bytes give {computed:08x})",
            u32::from_le_bytes(stored)
        ))
    }
}

/// Reads until `buffer` is full or the input ends; how many bytes came.
fn read_full(input: &mut impl Read, buffer: &mut [u8]) -> io::Result<usize> {
    let mut got = 0;
    while got < buffer.len() {
        match input.read(&mut buffer[got..]) {
            Ok(0) => break,
            Ok(read) => got += read,
            Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
            Err(error) => return Err(error),
        }
    }
    Ok(got)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A binlog file of `events` (type code, body), without a format description (mysql_common's
    /// defaults: v4 post-header lengths, no checksums).
    fn binlog(events: &[(u8, Vec<u8>)]) -> Vec<u8> {
        let mut file = MAGIC.to_vec();
        for (code, body) in events {
            let size = (HEADER_LENGTH + body.len()) as u32;
            let end = file.len() as u32 + size;
            file.extend_from_slice(&1_734_117_024_u32.to_le_bytes()); // timestamp
            file.push(*code);
            file.extend_from_slice(&1_u32.to_le_bytes()); // server id
            file.extend_from_slice(&size.to_le_bytes());
            file.extend_from_slice(&end.to_le_bytes());
            file.extend_from_slice(&0_u16.to_le_bytes()); // flags
            file.extend_from_slice(body);
        }
        file
    }

    /// TABLE_MAP of table 1, `d`.`t`, one INT column.
    fn table_map() -> (u8, Vec<u8>) {
        let mut body = vec![1, 0, 0, 0, 0, 0, 0, 0]; // table id, flags
        body.extend_from_slice(&[1, b'd', 0, 1, b't', 0]);
        body.extend_from_slice(&[1, 0x03, 0, 0]); // 1 column: INT, no metadata, not nullable
        (0x13, body)
    }

    /// WRITE_ROWS (v2) of table 1 with the columns-present bitmap `present` and `rows` bytes.
    fn write_rows(present: u8, rows: &[u8]) -> (u8, Vec<u8>) {
        let mut body = vec![1, 0, 0, 0, 0, 0, 1, 0]; // table id, STMT_END_F
        body.extend_from_slice(&[2, 0, 1, present]); // no extra data, 1 column, bitmap
        body.extend_from_slice(rows);
        (0x1e, body)
    }

    fn read_all(bytes: &[u8]) -> Result<Vec<Found>, FileError> {
        let mut found = Vec::new();
        read("t.000001", bytes, &|_, _| true, &mut |one| found.push(one))?;
        Ok(found)
    }

    #[test]
    fn a_row_image_without_columns_is_an_error_not_endless_rows() {
        // The well-formed event first: one row (null bitmap 0, INT 7).
        let found = read_all(&binlog(&[table_map(), write_rows(0x01, &[0, 7, 0, 0, 0])]))
            .expect("a well-formed rows event");
        assert_eq!(found.len(), 1);
        // No column present, so every row would be zero bytes wide: mysql_common's row iterator
        // never ends on such an event, and the reader used to collect rows until memory ran out.
        let error = read_all(&binlog(&[table_map(), write_rows(0x00, &[0, 7, 0, 0, 0])]))
            .expect_err("rows without columns");
        assert_eq!(
            error.to_string(),
            "t.000001: at offset 41: a rows event of type 30 is malformed: it holds 5 bytes of \
             rows, but its row images have none of its 1 columns"
        );
    }

    #[test]
    fn a_table_map_without_the_metadata_its_types_need_is_an_error_not_a_panic() {
        // One BLOB column (0xfc) and no metadata: BLOB needs one byte (its length's width), and
        // mysql_common's row decoder indexed the missing byte and panicked. Whether the table is
        // wanted or not, the table map is refused where it stands.
        let mut body = vec![1, 0, 0, 0, 0, 0, 0, 0];
        body.extend_from_slice(&[1, b'd', 0, 1, b't', 0, 1, 0xfc, 0, 0]);
        let file = binlog(&[(0x13, body), write_rows(0x01, &[0, 1, b'x'])]);
        for wanted in [true, false] {
            let error = read("t.000001", file.as_slice(), &|_, _| wanted, &mut |_| {})
                .expect_err("a BLOB column without metadata");
            assert_eq!(
                error.to_string(),
                "t.000001: at offset 4: the TABLE_MAP of d.t is malformed: its 1 columns' types \
                 and metadata do not agree"
            );
        }
    }

    #[test]
    fn a_decimal_with_more_scale_than_precision_is_an_error_not_a_panic() {
        // DECIMAL(10, 250): mysql_common computed 10 - 250 and panicked.
        let mut body = vec![1, 0, 0, 0, 0, 0, 0, 0];
        body.extend_from_slice(&[1, b'd', 0, 1, b't', 0, 1, 0xf6, 2, 10, 250, 0]);
        let file = binlog(&[(0x13, body), write_rows(0x01, &[0, 0x80, 0, 0, 0, 1])]);
        let error = read_all(&file).expect_err("DECIMAL(10, 250)");
        assert_eq!(
            error.to_string(),
            "t.000001: at offset 4: the TABLE_MAP of d.t is malformed: its column 1 is a \
             DECIMAL(10, 250)"
        );
    }

    #[test]
    fn rows_of_unwanted_tables_are_decoded_too_and_a_bad_one_is_an_error() {
        // One INT column, but the row holds 2 of its 4 bytes.
        let file = binlog(&[table_map(), write_rows(0x01, &[0, 7, 0])]);
        for wanted in [true, false] {
            let error = read("t.000001", file.as_slice(), &|_, _| wanted, &mut |_| {})
                .expect_err("a cut row");
            assert!(
                error
                    .to_string()
                    .starts_with("t.000001: at offset 41: a row of d.t cannot be decoded: "),
                "{error}"
            );
        }
    }

    #[test]
    fn a_malformed_transaction_payload_is_an_error_not_a_panic() {
        // Compression type 7 (mysql_common unwraps it into its enum and panics), payload size 0.
        let error = read_all(&binlog(&[(0x28, vec![2, 1, 7, 1, 1, 0, 0])]))
            .expect_err("an unknown compression type");
        assert_eq!(
            error.to_string(),
            "t.000001: at offset 4: a TRANSACTION_PAYLOAD event is malformed: compression type 7 \
             is neither ZSTD nor NONE"
        );
    }
}
