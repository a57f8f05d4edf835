//! RestartStream (streaming.md §6): where the source can start the stream again, checked on the
//! source itself through the server's connection path, and how the move is recorded. A start the
//! source cannot serve (a purged or unknown file, a position past the file's end, inside an
//! event or inside a transaction) is refused, naming what to give instead.

use async_trait::async_trait;
use mysql_async::{Conn, Row, prelude::Queryable};

use crate::{
    agent::AgentSettings,
    domain::{
        server::{Rejection, Server},
        stream::{BinlogPoint, GtidEnd, RestartPlan, StreamStart},
    },
    secrets::SecretBox,
    source::gtid::{Gtid, GtidSet},
    source::{
        connection::{self, ConnectContext, LeaseHolder, MysqlFailure, mysql::Endpoint},
        replication::{coordinates, source_identity},
    },
    store::{StoreError, StreamPosition},
};

/// Events a transaction does not begin with: a start there would read rows without their table
/// map, or half a transaction.
const INSIDE_TRANSACTION: &[&str] = &[
    "Table_map",
    "Write_rows",
    "Update_rows",
    "Delete_rows",
    "Write_rows_v1",
    "Update_rows_v1",
    "Delete_rows_v1",
    "Partial_update_rows",
    "Rows_query",
    "Annotate_rows",
    "Xid",
    "Intvar",
    "Rand",
    "User var",
];

/// Where a restarted stream starts, as the source confirmed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestartPoint {
    pub position: BinlogPoint,
    pub gtid_set: Option<String>,
    pub identity: String,
}

fn refused(reason: &'static str, message: String) -> Rejection {
    Rejection::RestartPointRefused(reason, message)
}

fn unreachable(failure: MysqlFailure) -> Rejection {
    let message = match failure {
        MysqlFailure::Transient(message) | MysqlFailure::Permanent(message) => message,
    };
    refused(
        "SOURCE_UNREACHABLE",
        format!("the source could not be asked where the stream can start: {message}"),
    )
}

/// The restart check holds no lease: it only reads the source, and records no host key (the
/// write is refused as fenced, the connection fails transiently, and onboarding records the key).
struct Unleased;

#[async_trait]
impl LeaseHolder for Unleased {
    async fn record_host_key(&self, _: &Server, _: &str) -> Result<(), StoreError> {
        Err(StoreError::Fenced)
    }
}

/// Asks the source where `start` is, and whether the stream can start there.
pub async fn resolve(
    server: &Server,
    secrets: &SecretBox,
    agent: &AgentSettings,
    start: &StreamStart,
) -> Result<RestartPoint, Rejection> {
    let context = ConnectContext {
        server,
        secrets,
        reach: agent.reach(),
        holder: &Unleased,
    };
    let address = connection::mysql::address(&context);
    let mut link = connection::connect(&context).await.map_err(unreachable)?;
    let point = ask(&mut link.connection, &address, start).await;
    link.close().await;
    point
}

async fn ask(
    connection: &mut Conn,
    address: &Endpoint,
    start: &StreamStart,
) -> Result<RestartPoint, Rejection> {
    let (flavour, _) = connection::mysql::version(connection, address)
        .await
        .map_err(unreachable)?;
    let mariadb = flavour == "MariaDB";
    let identity = source_identity(connection, address, mariadb)
        .await
        .map_err(unreachable)?;
    let position = match start {
        StreamStart::Current => {
            let current = coordinates(connection, address, &flavour)
                .await
                .map_err(unreachable)?
                .ok_or_else(|| {
                    refused(
                        "BINARY_LOG_OFF",
                        format!("{address} reports no binlog position: enable log_bin"),
                    )
                })?;
            BinlogPoint {
                file: current.file,
                position: current.position,
            }
        }
        StreamStart::Position(position) => {
            check_position(connection, address, position).await?;
            position.clone()
        }
        StreamStart::Gtids(ends) => after_gtids(connection, address, ends).await?,
    };
    let gtid_set = if mariadb {
        gtid_position(connection, address, &position).await?
    } else {
        mysql_gtids_at(connection, address, &position).await?
    };
    Ok(RestartPoint {
        position,
        gtid_set,
        identity,
    })
}

/// Events read from the source per SHOW BINLOG EVENTS page while a GTID is looked for.
const EVENTS_PAGE: u64 = 10_000;

/// One row of SHOW BINLOG EVENTS: where an event starts, its type and its description.
struct ListedEvent {
    position: u64,
    kind: String,
    info: String,
}

/// The GTID a GTID event names: MariaDB's `BEGIN GTID 0-1-5` or `GTID 0-1-5`, MySQL's
/// `SET @@SESSION.GTID_NEXT= 'uuid:n'`.
fn listed_gtid(event: &ListedEvent) -> Option<&str> {
    if event.kind != "Gtid" {
        return None;
    }
    if let Some((_, quoted)) = event.info.split_once("GTID_NEXT=") {
        return Some(quoted.trim().trim_matches('\''));
    }
    let (_, after) = event.info.split_once("GTID ")?;
    after.split_whitespace().next()
}

/// Where the stream starts for a GTID set: just after the last transaction of each of its
/// sources or domains, found in the binlog files the source still has (newest first), i.e. at
/// the next transaction's first event or at its file's end.
async fn after_gtids(
    connection: &mut Conn,
    address: &Endpoint,
    ends: &[GtidEnd],
) -> Result<BinlogPoint, Rejection> {
    let files = binary_logs(connection, address).await?;
    let mut found: Vec<BinlogPoint> = Vec::new();
    let mut missing: Vec<&str> = ends.iter().map(|end| end.0.as_str()).collect();
    for (file, size) in files.iter().rev() {
        let points = transaction_ends(connection, address, file, *size, &missing).await?;
        missing.retain(|gtid| !points.iter().any(|(found, _)| found == gtid));
        found.extend(points.into_iter().map(|(_, point)| point));
        if missing.is_empty() {
            break;
        }
    }
    if !missing.is_empty() {
        return Err(refused(
            "GTID_NOT_ON_SOURCE",
            format!(
                "the transaction {} is not in the binlog files {address} still has (purged, or \
                 never written there); SHOW BINARY LOGS lists them",
                missing.join(", ")
            ),
        ));
    }
    Ok(found.into_iter().max().unwrap_or(BinlogPoint {
        file: String::new(),
        position: 4,
    }))
}

/// In `file`, where the transactions of the GTIDs `wanted` end: the next GTID event's start, or
/// the file's end.
async fn transaction_ends(
    connection: &mut Conn,
    address: &Endpoint,
    file: &str,
    size: u64,
    wanted: &[&str],
) -> Result<Vec<(String, BinlogPoint)>, Rejection> {
    let mut ends = Vec::new();
    let mut open: Option<String> = None;
    let mut pages = EventPages::of(file);
    while let Some(page) = pages.next(connection, address).await? {
        for event in &page {
            let Some(gtid) = listed_gtid(event) else {
                continue;
            };
            let point = BinlogPoint {
                file: file.to_owned(),
                position: event.position,
            };
            ends.extend(open.take().map(|gtid| (gtid, point)));
            open = wanted.contains(&gtid).then(|| gtid.to_owned());
        }
    }
    ends.extend(open.map(|gtid| {
        (
            gtid,
            BinlogPoint {
                file: file.to_owned(),
                position: size,
            },
        )
    }));
    Ok(ends)
}

/// A binlog file's events, a page at a time (SHOW BINLOG EVENTS), from its first.
struct EventPages<'a> {
    file: &'a str,
    from: Option<u64>,
}

impl<'a> EventPages<'a> {
    fn of(file: &'a str) -> EventPages<'a> {
        EventPages {
            file,
            from: Some(4),
        }
    }

    /// The next page; None after the last.
    async fn next(
        &mut self,
        connection: &mut Conn,
        address: &Endpoint,
    ) -> Result<Option<Vec<ListedEvent>>, Rejection> {
        let Some(from) = self.from else {
            return Ok(None);
        };
        let page = events_page(connection, address, self.file, from).await?;
        self.from = match page.last() {
            // The next page starts where the last event read ends.
            Some(last) if page.len() as u64 == EVENTS_PAGE => {
                let next = event_end(connection, address, self.file, last.position).await?;
                (next > last.position).then_some(next)
            }
            _ => None,
        };
        Ok(Some(page))
    }
}

/// MySQL's GTID set at `point`: the file's PREVIOUS_GTIDS and the GTIDs of its transactions
/// before the point. None when the file has no GTIDs (gtid_mode OFF).
async fn mysql_gtids_at(
    connection: &mut Conn,
    address: &Endpoint,
    point: &BinlogPoint,
) -> Result<Option<String>, Rejection> {
    let mut set = None;
    let mut pages = EventPages::of(&point.file);
    while let Some(page) = pages.next(connection, address).await? {
        if absorb_gtids(&mut set, &page, point.position) {
            break;
        }
    }
    Ok(set.and_then(|set: GtidSet| set.render()))
}

/// Adds to `set` what the events before `until` say of GTIDs; true once an event at or past
/// `until` was met.
fn absorb_gtids(set: &mut Option<GtidSet>, events: &[ListedEvent], until: u64) -> bool {
    for event in events {
        if event.position >= until {
            return true;
        }
        if event.kind == "Previous_gtids" {
            *set = Some(GtidSet::parse(&event.info.replace('\n', "")));
        } else if let Some(gtid) = listed_gtid(event).and_then(mysql_gtid) {
            set.get_or_insert_with(GtidSet::default).add(&gtid);
        }
    }
    false
}

/// `uuid:n` or `uuid:tag:n`.
fn mysql_gtid(text: &str) -> Option<Gtid> {
    let mut parts = text.split(':');
    let uuid = uuid::Uuid::parse_str(parts.next()?).ok()?.to_string();
    let (tag, number) = match (parts.next()?, parts.next()) {
        (number, None) => (String::new(), number),
        (tag, Some(number)) => (tag.to_owned(), number),
    };
    Some(Gtid::Mysql {
        uuid,
        tag,
        number: number.parse().ok()?,
    })
}

async fn events_page(
    connection: &mut Conn,
    address: &Endpoint,
    file: &str,
    from: u64,
) -> Result<Vec<ListedEvent>, Rejection> {
    let statement = format!(
        "SHOW BINLOG EVENTS IN '{}' FROM {from} LIMIT {EVENTS_PAGE}",
        file.replace('\'', "''")
    );
    address
        .ask(
            "SHOW BINLOG EVENTS",
            connection.query_map(statement, |row: Row| ListedEvent {
                position: row.get("Pos").unwrap_or_default(),
                kind: row.get("Event_type").unwrap_or_default(),
                info: row.get("Info").unwrap_or_default(),
            }),
        )
        .await
        .map_err(unreachable)
}

/// Where the event at `position` ends (the next one starts).
async fn event_end(
    connection: &mut Conn,
    address: &Endpoint,
    file: &str,
    position: u64,
) -> Result<u64, Rejection> {
    let statement = format!(
        "SHOW BINLOG EVENTS IN '{}' FROM {position} LIMIT 1",
        file.replace('\'', "''")
    );
    let end: Option<u64> = address
        .ask(
            "SHOW BINLOG EVENTS",
            connection.query_first::<Row, _>(statement),
        )
        .await
        .map_err(unreachable)?
        .and_then(|row| row.get("End_log_pos"));
    Ok(end.unwrap_or(position))
}

/// The binlog files the source has, with their sizes (SHOW BINARY LOGS).
async fn binary_logs(
    connection: &mut Conn,
    address: &Endpoint,
) -> Result<Vec<(String, u64)>, Rejection> {
    address
        .ask(
            "SHOW BINARY LOGS",
            connection.query_map("SHOW BINARY LOGS", |row: Row| {
                (
                    row.get::<String, _>(0).unwrap_or_default(),
                    row.get::<u64, _>(1).unwrap_or_default(),
                )
            }),
        )
        .await
        .map_err(unreachable)
}

/// The file is on the source, the position within it, at an event that starts a transaction
/// (or at the file's end).
async fn check_position(
    connection: &mut Conn,
    address: &Endpoint,
    position: &BinlogPoint,
) -> Result<(), Rejection> {
    let files = binary_logs(connection, address).await?;
    let Some((_, size)) = files.iter().find(|(name, _)| *name == position.file) else {
        let kept = match (files.first(), files.last()) {
            (Some((first, _)), Some((last, _))) => format!("it has {first} to {last}"),
            _ => "it has none".to_owned(),
        };
        return Err(refused(
            "BINLOG_FILE_NOT_ON_SOURCE",
            format!(
                "the binlog file {} is not on {address} (purged, or it never existed); {kept} \
                 (SHOW BINARY LOGS)",
                position.file
            ),
        ));
    };
    if position.position > *size {
        return Err(refused(
            "POSITION_PAST_END",
            format!(
                "position {} is past the end of {} ({size} bytes on {address})",
                position.position, position.file
            ),
        ));
    }
    if position.position == *size {
        return Ok(());
    }
    event_at(connection, address, position).await
}

/// The event at the position: one must start there, and not inside a transaction.
async fn event_at(
    connection: &mut Conn,
    address: &Endpoint,
    position: &BinlogPoint,
) -> Result<(), Rejection> {
    let inside_event = || {
        refused(
            "POSITION_INSIDE_EVENT",
            format!(
                "position {} of {} is inside an event, not at one's start; SHOW BINLOG EVENTS IN \
                 '{}' lists where events start",
                position.position, position.file, position.file
            ),
        )
    };
    let statement = format!(
        "SHOW BINLOG EVENTS IN '{}' FROM {} LIMIT 1",
        position.file.replace('\'', "''"),
        position.position
    );
    let event: Option<Row> = match connection.query_first(statement).await {
        Ok(row) => row,
        // "Wrong offset or I/O error": no event starts there.
        Err(mysql_async::Error::Server(error)) if error.code == 1220 => return Err(inside_event()),
        Err(error) => return Err(unreachable(connection::mysql::classify(&error, address))),
    };
    let Some(event) = event else {
        return Err(inside_event());
    };
    let at: Option<u64> = event.get("Pos");
    let kind: String = event.get("Event_type").unwrap_or_default();
    if at != Some(position.position) {
        return Err(inside_event());
    }
    if INSIDE_TRANSACTION.contains(&kind.as_str()) {
        return Err(refused(
            "POSITION_INSIDE_TRANSACTION",
            format!(
                "position {} of {} is a {kind} event inside a transaction; start at the \
                 transaction's first event (its GTID or BEGIN) or after its commit",
                position.position, position.file
            ),
        ));
    }
    Ok(())
}

/// MariaDB's GTID position at exactly these coordinates.
async fn gtid_position(
    connection: &mut Conn,
    address: &Endpoint,
    position: &BinlogPoint,
) -> Result<Option<String>, Rejection> {
    let set: Option<Option<String>> = address
        .ask(
            "SELECT BINLOG_GTID_POS()",
            connection.exec_first(
                "SELECT BINLOG_GTID_POS(?, ?)",
                (position.file.as_str(), position.position),
            ),
        )
        .await
        .map_err(unreachable)?;
    Ok(set.flatten().filter(|set| !set.trim().is_empty()))
}

/// The checkpoint a restart writes: the confirmed point, and the old checkpoint as the place
/// before which rows are stored already (when the restart reads them again).
pub fn new_position(point: &RestartPoint, plan: &RestartPlan) -> StreamPosition {
    StreamPosition {
        binlog_file: point.position.file.clone(),
        binlog_position: i64::try_from(point.position.position).unwrap_or(i64::MAX),
        skip_rows: 0,
        gtid_set: point.gtid_set.clone(),
        source_identity: Some(point.identity.clone()),
        last_event_at: None,
        statement_changes: Default::default(),
        replay_until: plan.replay_until.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(position: u64, kind: &str, info: &str) -> ListedEvent {
        ListedEvent {
            position,
            kind: kind.into(),
            info: info.into(),
        }
    }

    #[test]
    fn mysql_gtid_sets_at_a_point_add_the_file_s_transactions_before_it() {
        let uuid = "3e11fa47-71ca-11e1-9e33-c80aa9429562";
        let events = [
            event(4, "Format_desc", "Server ver: 8.0.40, Binlog ver: 4"),
            event(126, "Previous_gtids", &format!("{uuid}:1-\n100")),
            event(
                197,
                "Gtid",
                &format!("SET @@SESSION.GTID_NEXT= '{uuid}:101'"),
            ),
            event(274, "Query", "BEGIN"),
            event(
                500,
                "Gtid",
                &format!("SET @@SESSION.GTID_NEXT= '{uuid}:audit:7'"),
            ),
            event(
                900,
                "Gtid",
                &format!("SET @@SESSION.GTID_NEXT= '{uuid}:102'"),
            ),
        ];
        let mut set = None;
        assert!(absorb_gtids(&mut set, &events, 900));
        assert_eq!(
            set.and_then(|set| set.render()).as_deref(),
            Some(format!("{uuid}:1-101:audit:7").as_str())
        );
        let mut none = None;
        let anonymous = [
            event(4, "Format_desc", ""),
            event(126, "Anonymous_Gtid", ""),
        ];
        assert!(!absorb_gtids(&mut none, &anonymous, 900));
        assert_eq!(none, None);
    }

    #[test]
    fn gtid_events_name_their_gtid_in_both_flavours() {
        assert_eq!(
            listed_gtid(&event(4, "Gtid", "BEGIN GTID 0-1-5")),
            Some("0-1-5")
        );
        assert_eq!(
            listed_gtid(&event(4, "Gtid", "GTID 0-1-6 cid=9")),
            Some("0-1-6")
        );
        assert_eq!(listed_gtid(&event(4, "Query", "BEGIN")), None);
    }
}
