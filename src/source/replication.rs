//! Asking a customer's MySQL as a replica would: where its binlog is now, which server it is, why
//! it refuses a binlog dump, and ending a dump thread left behind. The streaming step and the
//! live streams ask the same way.

use std::time::Duration;

use mysql_async::{Conn, Row, prelude::Queryable};

use super::connection::{
    self, ConnectContext, MysqlFailure,
    mysql::{self, Endpoint},
};

/// Binlog coordinates as the server reports them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Coordinates {
    pub file: String,
    pub position: u64,
    pub gtid_set: Option<String>,
}

/// `SHOW MASTER STATUS`, or `SHOW BINARY LOG STATUS` on MySQL 8.4+, which removed the former.
pub async fn coordinates(
    connection: &mut Conn,
    address: &Endpoint,
    flavour: &str,
) -> Result<Option<Coordinates>, MysqlFailure> {
    let status = address.ask("SHOW MASTER STATUS", async {
        Ok(connection.query_first("SHOW MASTER STATUS").await)
    });
    let row: Option<Row> = match status.await? {
        Ok(row) => row,
        Err(mysql_async::Error::Server(error)) if error.code == 1064 => {
            address
                .ask(
                    "SHOW BINARY LOG STATUS",
                    connection.query_first("SHOW BINARY LOG STATUS"),
                )
                .await?
        }
        Err(error) => return Err(mysql::classify(&error, address)),
    };
    let Some(row) = row else {
        return Ok(None);
    };
    let file: Option<String> = row.get("File");
    let position: Option<u64> = row.get("Position");
    let (Some(file), Some(position)) = (file, position) else {
        return Ok(None);
    };
    let gtid_set = if flavour == "MariaDB" {
        // The GTID position of exactly these coordinates, not of whatever was written since.
        address
            .ask(
                "SELECT BINLOG_GTID_POS()",
                connection.exec_first::<Option<String>, _, _>(
                    "SELECT BINLOG_GTID_POS(?, ?)",
                    (file.as_str(), position),
                ),
            )
            .await?
            .flatten()
    } else {
        row.get::<String, _>("Executed_Gtid_Set")
    }
    .filter(|set| !set.trim().is_empty());
    Ok(Some(Coordinates {
        file,
        position,
        gtid_set,
    }))
}

/// The identity of the source: `@@server_uuid` on MySQL, `@@server_id` and the GTID domain on
/// MariaDB. A file/position checkpoint only continues on the same source.
pub async fn source_identity(
    connection: &mut Conn,
    address: &Endpoint,
    mariadb: bool,
) -> Result<String, MysqlFailure> {
    if mariadb {
        let row: Option<(u64, u64)> = address
            .ask(
                "the server id",
                connection.query_first("SELECT @@server_id, @@gtid_domain_id"),
            )
            .await?;
        let (server_id, domain) = row.unwrap_or_default();
        Ok(format!("server_id {server_id}, gtid domain {domain}"))
    } else {
        let uuid: Option<String> = address
            .ask(
                "the server uuid",
                connection.query_first("SELECT @@server_uuid"),
            )
            .await?;
        Ok(uuid.unwrap_or_default())
    }
}

/// Whether a replication error says that another replica uses the same server id.
pub fn is_replica_id_clash(message: &str) -> bool {
    message.contains("server_id") || message.contains("server_uuid")
}

/// Replication refusals the operator must fix, with what to do.
pub fn replication_refusal(
    error: &mysql_async::Error,
    account: &str,
    replica_id: u32,
) -> Option<String> {
    let mysql_async::Error::Server(server) = error else {
        return None;
    };
    match server.code {
        1227 | 1045 | 1142 => Some(format!(
            "the binlog cannot be read: {} — GRANT REPLICATION SLAVE ON *.* TO {account}",
            server.message
        )),
        1236 if is_replica_id_clash(&server.message) => Some(format!(
            "replica server id {replica_id} clashes with another replica: {}",
            server.message
        )),
        1236 => Some(format!("the binlog is unavailable: {}", server.message)),
        _ => None,
    }
}

/// Kills the binlog dump thread of a closed stream (best effort: a user may kill its own threads).
pub async fn end_dump_thread(context: &ConnectContext<'_>, connection_id: u64) {
    let ended = async {
        if let Ok(mut link) = connection::connect(context).await {
            let _ = link
                .connection
                .query_drop(format!("KILL CONNECTION {connection_id}"))
                .await;
            link.close().await;
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(5), ended).await;
}
