//! The benchmarks' MariaDB sources: the stream's account, and the `shop` database with one table.

use crate::mariadb::MariaDb;

pub const USER: &str = "bintrail";
pub const PASSWORD: &str = "bench-Pass_1";
/// The table the idle and onboarding benchmarks' servers snapshot.
pub const ORDERS: &str = "CREATE TABLE shop.orders (id BIGINT PRIMARY KEY, total DECIMAL(10,2))";

/// `mariadb` with the stream's account (replication and SELECT) and `shop` holding `table`
/// (its CREATE TABLE statement).
pub async fn prepared(mariadb: MariaDb, table: &str) -> MariaDb {
    mariadb
        .create_user(
            USER,
            PASSWORD,
            &["REPLICATION SLAVE", "REPLICATION CLIENT", "SELECT"],
        )
        .await;
    mariadb.exec(&["CREATE DATABASE shop", table]).await;
    mariadb
}
