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
        reader
            .event(&bytes, wanted, found)
            .map_err(|message| reader.error_at(offset, message))?;
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
            Meaning::Commit | Meaning::Statement(_) => self.commit(place.end, found),
            Meaning::StatementDml(statement) => {
                found(Found::StatementDml {
                    at: BinlogPoint {
                        file: self.name.clone(),
                        position: place.start,
                    },
                    statement,
                });
                if !self.transactions.in_transaction {
                    self.commit(place.end, found);
                }
            }
            Meaning::Rows(rows) => {
                self.rows(event, &rows, place, wanted)?;
                if !self.transactions.in_transaction {
                    self.commit(place.end, found);
                }
            }
        }
        Ok(())
    }

    fn commit(&mut self, end: u64, found: &mut dyn FnMut(Found)) {
        self.transactions.commit(end);
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
        if wanted(&schema, &table) {
            let columns = decode::table_map_columns(table_map);
            let committed_at = DateTime::from_timestamp(i64::from(event.header().timestamp()), 0)
                .unwrap_or_default();
            for (index, row) in rows.rows(table_map).enumerate() {
                let (before, after) = row.map_err(|error| {
                    format!("a row of {schema}.{table} cannot be decoded: {error}")
                })?;
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
                count += 1;
            }
        } else {
            count = rows.rows(table_map).count();
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
