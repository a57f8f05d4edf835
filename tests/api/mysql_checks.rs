//! Initializing's checks of what users of managed MySQL meet, against private MariaDB instances
//! started with the settings in question: each warning is exact, names its fix, and reaches
//! GetOnboardingStatus, WatchOnboarding and the REST JSON; the step still completes and the
//! server goes active.
//!
//! Every server registered here points at 127.0.0.1 and a MariaDB this test started. RDS and
//! Aurora themselves cannot be had here: their branch is exercised by a real
//! `mysql.rds_configuration` table created in a real MariaDB, which the same SQL reads.

use crate::common::mariadb::*;
use crate::common::*;
use crate::rest_common::{Rest, onboarding_json};
use dbtrail_servers::proto::{OnboardingStatus, OnboardingStep};
use serde_json::json;

/// What initializing says of the prerequisites of every server here.
const PASSED: &str = "log_bin ON, binlog_format ROW, binlog_row_image FULL, replication grants \
                      present; index tables ready";

/// The sync_binlog warning, up to its fix.
const SYNC_BINLOG_0: &str = "sync_binlog is 0: the binlog is not flushed to disk at every \
                             commit, so a crash of the source's host can lose the binlog's \
                             tail, and changes committed there are never captured: ";

/// A private MariaDB started with `args`, with a table to snapshot and the replication user.
pub(crate) async fn mariadb_started_with(args: &[&str]) -> MariaDb {
    let mariadb = args
        .iter()
        .fold(MariaDb::options(), |options, arg| options.arg(arg))
        .start()
        .await;
    mariadb
        .exec(&[
            "CREATE DATABASE shop",
            "CREATE TABLE shop.items (id INT PRIMARY KEY)",
        ])
        .await;
    mariadb
        .create_user(USER, PASSWORD, &REPLICATION_GRANTS)
        .await;
    mariadb
}

/// Registers a server for `mariadb` and waits until it is active; returns its id and status.
async fn onboard_to_active(
    app: &TestApp,
    mariadb: &MariaDb,
    name: &str,
) -> (String, OnboardingStatus) {
    let mut client = app.client();
    let id = register(&mut client, mariadb.server(name, USER, PASSWORD))
        .await
        .server_id;
    let status = wait_settled(&client, &id).await;
    assert_active(&status);
    (id, status)
}

/// The initializing step's (message, warnings).
fn initializing(status: &OnboardingStatus) -> (String, Vec<String>) {
    let progress = step(status, OnboardingStep::Initializing);
    (progress.message.clone(), progress.warnings.clone())
}

#[test]
fn sync_binlog_0_completes_initializing_with_a_warning_that_reaches_grpc_rest_and_the_watch() {
    block_on(async {
        let mariadb = mariadb_started_with(&["--sync-binlog=0"]).await;
        let app = mysql_app().await;
        let (id, status) = onboard_to_active(&app, &mariadb, "unsynced").await;
        let warning = format!("{SYNC_BINLOG_0}SET GLOBAL sync_binlog = 1 and persist it in my.cnf");
        assert_eq!(
            initializing(&status),
            (
                format!(
                    "{PASSED}; binlog retention unlimited (no expiry set), sync_binlog 0, \
                     binlog_row_metadata NO_LOG"
                ),
                vec![warning.clone()]
            )
        );
        // The other steps warn of nothing.
        for progress in &status.steps {
            if progress.name != OnboardingStep::Initializing as i32 {
                assert_eq!(progress.warnings, Vec::<String>::new(), "{progress:#?}");
            }
        }

        // WatchOnboarding: from the revision that completed initializing on, the warning is there.
        let revisions = history(&app.client(), &id).await;
        let completed = revisions
            .iter()
            .position(|revision| {
                step_status(revision, OnboardingStep::Initializing)
                    == dbtrail_servers::proto::StepStatus::Completed
            })
            .expect("a revision completed initializing");
        for revision in &revisions[..completed] {
            assert_eq!(initializing(revision).1, Vec::<String>::new());
        }
        for revision in &revisions[completed..] {
            assert_eq!(initializing(revision).1, std::slice::from_ref(&warning));
        }

        // REST: the same warnings, and the same steps as gRPC gives.
        let rest = Rest::new(&app);
        let reply = rest.get(&format!("/servers/{id}/onboarding-status")).await;
        assert_eq!(reply.status, 200, "{}", reply.body);
        assert_eq!(reply.json["steps"][3]["name"], "initializing");
        assert_eq!(reply.json["steps"][3]["warnings"], json!([warning]));
        assert_eq!(reply.json["steps"][4]["warnings"], json!([]));
        let grpc = onboarding_json(&onboarding_status(&mut app.client(), &id).await);
        assert_eq!(reply.json["steps"], grpc["steps"]);
    });
}

#[test]
fn short_binlog_retention_is_a_warning_naming_the_variable_to_raise() {
    block_on(async {
        let mariadb =
            mariadb_started_with(&["--sync-binlog=1", "--binlog-expire-logs-seconds=3600"]).await;
        let app = mysql_app().await;
        let (_, status) = onboard_to_active(&app, &mariadb, "short-retention").await;
        assert_eq!(
            initializing(&status),
            (
                format!(
                    "{PASSED}; binlog retention 1 hour (binlog_expire_logs_seconds 3600), \
                     sync_binlog 1, binlog_row_metadata NO_LOG"
                ),
                vec![
                    "binlog retention is 1 hour (binlog_expire_logs_seconds = 3600): a stream \
                     that is down longer than that loses its position and needs a new snapshot; \
                     keep at least 24 hours: SET GLOBAL binlog_expire_logs_seconds = 259200 and \
                     persist it in my.cnf"
                        .to_owned()
                ]
            )
        );
    });
}

#[test]
fn a_read_only_source_is_reported_with_what_its_binlog_holds() {
    block_on(async {
        // root keeps writing (READ_ONLY ADMIN); the replication user never writes.
        let mariadb = mariadb_started_with(&["--sync-binlog=1", "--read-only"]).await;
        assert_eq!(mariadb.global("read_only").await, "ON");
        let app = mysql_app().await;
        let (_, status) = onboard_to_active(&app, &mariadb, "read-only").await;
        assert_eq!(
            initializing(&status).1,
            [
                "the source is read-only (read_only ON): dbtrail captures what this server's own \
                 binlog records; log_slave_updates is OFF, so writes replicated to it are not in \
                 its binlog and are never captured: set it in my.cnf and restart the server \
                 (log_slave_updates = ON), or register the primary instead"
            ]
        );
    });
}

#[test]
fn rds_binlog_retention_is_read_from_mysql_rds_configuration() {
    block_on(async {
        // RDS itself cannot be had here. Its table, as RDS has it (binlog retention hours NULL by
        // default), in a real MariaDB: the query and its answer are real.
        let mariadb = mariadb_started_with(&["--sync-binlog=0"]).await;
        mariadb
            .exec(&[
                "CREATE TABLE mysql.rds_configuration (name VARCHAR(100) NOT NULL PRIMARY KEY, \
                 value VARCHAR(100), description VARCHAR(300) NOT NULL)",
                "INSERT INTO mysql.rds_configuration VALUES ('binlog retention hours', NULL, \
                 'binlog retention hours specifies the duration in hours before binary logs are \
                 automatically deleted.'), ('source delay', '0', 'source delay specifies how \
                 many seconds the replica should delay replication')",
            ])
            .await;
        let app = mysql_app().await;
        let (_, unset) = onboard_to_active(&app, &mariadb, "rds-null").await;
        let sync_binlog =
            format!("{SYNC_BINLOG_0}set sync_binlog to 1 in the RDS DB parameter group");
        assert_eq!(
            initializing(&unset),
            (
                format!(
                    "{PASSED}; binlog retention hours NULL (RDS), sync_binlog 0, \
                     binlog_row_metadata NO_LOG"
                ),
                vec![
                    "binlog retention hours is NULL on this RDS server (mysql.rds_configuration), \
                     so RDS removes binlogs as soon as it can: a stream that is down for minutes \
                     can lose its position and need a new snapshot; keep at least 24 hours: CALL \
                     mysql.rds_set_configuration('binlog retention hours', 72)"
                        .to_owned(),
                    sync_binlog.clone(),
                ]
            )
        );

        // What mysql.rds_set_configuration('binlog retention hours', 72) stores.
        mariadb
            .exec(&["UPDATE mysql.rds_configuration SET value = '72' \
                 WHERE name = 'binlog retention hours'"])
            .await;
        let (_, set) = onboard_to_active(&app, &mariadb, "rds-72").await;
        assert_eq!(
            initializing(&set),
            (
                format!(
                    "{PASSED}; binlog retention hours 72 (RDS), sync_binlog 0, \
                     binlog_row_metadata NO_LOG"
                ),
                vec![sync_binlog]
            )
        );
    });
}

#[test]
fn a_real_servers_greeting_names_it_before_any_login() {
    block_on(async {
        // How a refused login finds out whether the server is a MySQL 8 that defaults to
        // caching_sha2_password: MariaDB before 11.0 announces itself behind a 5.5.5- prefix.
        let mariadb = MariaDb::start().await;
        let target = std::net::SocketAddr::from(([127, 0, 0, 1], mariadb.port));
        let announced = dbtrail_servers::source::connection::mysql::announced_version(
            target,
            std::time::Duration::from_secs(5),
        )
        .await;
        assert_eq!(announced, Some(format!("5.5.5-{}", mariadb.version)));
        let nothing = free_port();
        let closed = std::net::SocketAddr::from(([127, 0, 0, 1], nothing));
        let none = dbtrail_servers::source::connection::mysql::announced_version(
            closed,
            std::time::Duration::from_secs(5),
        )
        .await;
        assert_eq!(none, None);
    });
}
