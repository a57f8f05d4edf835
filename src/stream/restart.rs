//! RestartStream (streaming.md §6): where the source can start the stream again, checked on the
//! source itself through the server's connection path, and how the move is recorded. A start the
//! source cannot serve (a purged or unknown file, a position past the file's end, inside an
//! event or inside a transaction) is refused, naming what to give instead.

use mysql_async::{Conn, Row, prelude::Queryable};
use uuid::Uuid;

use crate::{
    domain::{
        OnboardingStep,
        server::{Rejection, Server},
        stream::{BinlogPoint, RestartPlan, StreamStart},
    },
    onboarding::{
        Activity, AgentSettings, MysqlFailure, StepContext,
        connection::{self, mysql::Endpoint},
        coordinates, source_identity,
    },
    secrets::SecretBox,
    store::{Claim, Fence, Store, StreamPosition},
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

/// Asks the source where `start` is, and whether the stream can start there.
pub async fn resolve(
    server: &Server,
    store: &Store,
    secrets: &SecretBox,
    agent: &AgentSettings,
    start: &StreamStart,
) -> Result<RestartPoint, Rejection> {
    let context = StepContext {
        step: OnboardingStep::Streaming,
        server: server.clone(),
        // Nothing is written under this claim: the check only reads the source.
        claim: Claim {
            server_id: server.id,
            fence: Fence {
                owner: Uuid::nil(),
                epoch: 0,
            },
        },
        store: store.clone(),
        index: store.clone(),
        secrets: secrets.clone(),
        agent: agent.clone(),
        activity: Activity::default(),
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
    };
    let gtid_set = if mariadb {
        gtid_position(connection, address, &position).await?
    } else {
        None
    };
    Ok(RestartPoint {
        position,
        gtid_set,
        identity,
    })
}

/// The file is on the source, the position within it, at an event that starts a transaction
/// (or at the file's end).
async fn check_position(
    connection: &mut Conn,
    address: &Endpoint,
    position: &BinlogPoint,
) -> Result<(), Rejection> {
    let files: Vec<(String, u64)> = address
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
        .map_err(unreachable)?;
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
