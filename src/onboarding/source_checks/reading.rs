//! Reading what the checks need from the server: the global variables, `binlog retention hours`
//! from RDS's configuration table, and the server it replicates from, each tolerant of servers
//! that lack them or users that may not see them.

use mysql_async::{Conn, Row, Value, prelude::Queryable};

use super::{RdsConfiguration, Source, Variables};
use crate::source::connection::{
    MysqlFailure,
    mysql::{self, Endpoint},
};

/// The global variables read, by their lower-case names.
const VARIABLES: &[&str] = &[
    "sync_binlog",
    "binlog_expire_logs_seconds",
    "expire_logs_days",
    "binlog_expire_logs_auto_purge",
    "binlog_row_value_options",
    "binlog_transaction_compression",
    "binlog_row_metadata",
    "gtid_mode",
    "read_only",
    "super_read_only",
    "log_slave_updates",
    "log_replica_updates",
    "aurora_version",
    "basedir",
];

/// MySQL's ER_PARSE_ERROR: the server does not know the statement (SHOW REPLICA STATUS before
/// MySQL 8.0.22 and MariaDB 10.5).
const PARSE_ERROR: u16 = 1064;

/// Errors that mean `mysql.rds_configuration` is not there: ER_BAD_DB_ERROR, ER_NO_SUCH_TABLE.
const NO_SUCH_TABLE: &[u16] = &[1049, 1146];

/// Errors that mean the user may not read something: ER_DBACCESS_DENIED_ERROR,
/// ER_TABLEACCESS_DENIED_ERROR, ER_SPECIFIC_ACCESS_DENIED_ERROR.
const DENIED: &[u16] = &[1044, 1142, 1227];

/// Reads what the checks need: the variables, RDS's configuration table, and the replication
/// source.
pub async fn read(connection: &mut Conn, address: &Endpoint) -> Result<Source, MysqlFailure> {
    Ok(Source {
        variables: variables(connection, address).await?,
        rds: rds_configuration(connection, address).await?,
        replicates_from: replicates_from(connection, address).await?,
    })
}

/// The variables of [`VARIABLES`] the server has.
async fn variables(connection: &mut Conn, address: &Endpoint) -> Result<Variables, MysqlFailure> {
    let names = VARIABLES
        .iter()
        .map(|name| format!("'{name}'"))
        .collect::<Vec<_>>()
        .join(", ");
    let rows: Vec<Row> = address
        .ask(
            "SHOW GLOBAL VARIABLES",
            connection.query(format!(
                "SHOW GLOBAL VARIABLES WHERE Variable_name IN ({names})"
            )),
        )
        .await?;
    let pairs: Vec<(String, String)> = rows
        .into_iter()
        .filter_map(|row| {
            // Row::unwrap hands the values over; it cannot fail.
            let mut values = row.unwrap();
            let value = text(values.pop()?);
            let name = text(values.pop()?);
            Some((name, value))
        })
        .collect();
    Ok(Variables::from_pairs(
        pairs
            .iter()
            .map(|(name, value)| (name.as_str(), value.as_str())),
    ))
}

/// A value as text, whatever the server sent it as (NULL is empty).
fn text(value: Value) -> String {
    match value {
        Value::NULL => String::new(),
        Value::Bytes(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
        Value::Int(number) => number.to_string(),
        Value::UInt(number) => number.to_string(),
        Value::Float(number) => number.to_string(),
        Value::Double(number) => number.to_string(),
        other => other.as_sql(true).trim_matches('\'').to_owned(),
    }
}

/// `binlog retention hours` from `mysql.rds_configuration`, where RDS and Aurora keep it.
async fn rds_configuration(
    connection: &mut Conn,
    address: &Endpoint,
) -> Result<RdsConfiguration, MysqlFailure> {
    let asked = address
        .ask("mysql.rds_configuration", async {
            Ok(connection
                .query::<Row, _>(
                    "SELECT value FROM mysql.rds_configuration \
                     WHERE name = 'binlog retention hours'",
                )
                .await)
        })
        .await?;
    match asked {
        Ok(rows) => Ok(RdsConfiguration::RetentionHours(
            rows.into_iter()
                .next()
                .and_then(|row| row.unwrap().into_iter().next()) // the values, never a panic
                .filter(|value| *value != Value::NULL)
                .map(text),
        )),
        Err(mysql_async::Error::Server(error)) if NO_SUCH_TABLE.contains(&error.code) => {
            Ok(RdsConfiguration::Absent)
        }
        Err(mysql_async::Error::Server(error)) if DENIED.contains(&error.code) => {
            Ok(RdsConfiguration::Unreadable)
        }
        Err(error) => Err(mysql::classify(&error, address)),
    }
}

/// The source's own source, from `SHOW REPLICA STATUS` (or `SHOW SLAVE STATUS` on servers that
/// do not know the former); None when it is no replica or the user may not see it.
async fn replicates_from(
    connection: &mut Conn,
    address: &Endpoint,
) -> Result<Option<String>, MysqlFailure> {
    let mut rows = Vec::new();
    for statement in ["SHOW REPLICA STATUS", "SHOW SLAVE STATUS"] {
        let asked = address
            .ask(statement, async {
                Ok(connection.query::<Row, _>(statement).await)
            })
            .await?;
        match asked {
            Ok(found) => {
                rows = found;
                break;
            }
            Err(mysql_async::Error::Server(error)) if error.code == PARSE_ERROR => continue,
            Err(mysql_async::Error::Server(error)) if DENIED.contains(&error.code) => {
                return Ok(None);
            }
            Err(error) => return Err(mysql::classify(&error, address)),
        }
    }
    Ok(rows.first().and_then(source_of))
}

/// `host:port` of a replica status row (MySQL 8.0.22+ names the columns Source_*, older MySQL
/// and MariaDB Master_*).
fn source_of(row: &Row) -> Option<String> {
    let column = |names: [&str; 2]| {
        names
            .into_iter()
            .find_map(|name| row.get::<Value, _>(name))
            .map(text)
            .filter(|value| !value.is_empty())
    };
    let host = column(["Source_Host", "Master_Host"])?;
    let port = column(["Source_Port", "Master_Port"]).unwrap_or_else(|| "3306".to_owned());
    Some(if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    })
}
