//! PauseStream and ResumeStream against a private MariaDB, through gRPC and REST: a paused
//! server holds no dump thread and keeps its checkpoint; rows written meanwhile are captured
//! once after the resume; the pause outlives a SIGKILLed replica and an update; a binlog purged
//! meanwhile is `lost_position` on resume, never a silent skip.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::mariadb::*;
use crate::common::stream::*;
use crate::common::*;
use dbtrail_servers::proto::{
    self, PauseStreamRequest, ResumeStreamRequest, ServerStatus, StreamState,
};
use tonic::Code;

const SHOP_T: [&str; 2] = [
    "CREATE DATABASE shop",
    "CREATE TABLE shop.t (id INT PRIMARY KEY)",
];

/// The source's Binlog Dump threads.
async fn dump_threads(mariadb: &MariaDb) -> usize {
    mariadb
        .query::<(u64, String)>("SELECT ID, COMMAND FROM information_schema.PROCESSLIST")
        .await
        .into_iter()
        .filter(|(_, command)| command.starts_with("Binlog Dump"))
        .count()
}

/// Waits until the paused stream let go: its holder ended (the stream lease is released; a
/// session that was still connecting when the pause was written may read a little longer, until
/// it sees the pause or its lease lapses) and the source has no dump thread left.
async fn wait_let_go(db: &TestDatabase, mariadb: &MariaDb, id: &str) {
    let sql = db.connect().await;
    wait_until("the stream lease let go", Duration::from_secs(15), || {
        let sql = &sql;
        async move {
            sql.query_one(
                "SELECT stream_owner IS NULL FROM servers WHERE id = $1::text::uuid",
                &[&id],
            )
            .await
            .expect("the server row")
            .get::<_, bool>(0)
        }
    })
    .await;
    wait_until(
        "no dump thread on the source",
        Duration::from_secs(15),
        || async { dump_threads(mariadb).await == 0 },
    )
    .await;
}

async fn pause(client: &mut Client, id: &str) -> proto::Server {
    client
        .pause_stream(PauseStreamRequest {
            server_id: id.to_owned(),
        })
        .await
        .expect("PauseStream")
        .into_inner()
}

async fn resume(client: &mut Client, id: &str) -> proto::Server {
    client
        .resume_stream(ResumeStreamRequest {
            server_id: id.to_owned(),
        })
        .await
        .expect("ResumeStream")
        .into_inner()
}

fn assert_paused(server: &proto::Server) {
    assert_eq!(server.status, ServerStatus::Paused as i32, "{server:#?}");
    assert_eq!(
        stream_state(server),
        Some(StreamState::Stopped),
        "{server:#?}"
    );
}

/// Registers a server of `mariadb`, waits until its stream runs and its first row is captured.
async fn streaming(client: &mut Client, mariadb: &MariaDb, name: &str) -> String {
    let id = register(client, mariadb.server(name, USER, PASSWORD))
        .await
        .server_id;
    assert_active(&wait_settled(client, &id).await);
    wait_stream(client, &id, "the stream to run", running).await;
    mariadb.exec(&["INSERT INTO shop.t VALUES (1)"]).await;
    wait_until("the first row", CAPTURE, || {
        let mut client = client.clone();
        let id = id.clone();
        async move { all_events(&mut client, &id, "").await.len() == 1 }
    })
    .await;
    id
}

#[test]
fn a_paused_stream_holds_no_connection_and_resumes_what_was_written_meanwhile_once() {
    block_on(async {
        let mariadb = mariadb_with(&SHOP_T).await;
        let app = mysql_app().await;
        let mut client = app.client();
        let id = streaming(&mut client, &mariadb, "paused").await;
        let before = get_server(&mut client, &id).await;
        let revision = onboarding_status(&mut client, &id).await.revision;

        let paused = pause(&mut client, &id).await;
        assert_paused(&paused);
        let status = onboarding_status(&mut client, &id).await;
        assert_eq!(status.server_status, ServerStatus::Paused as i32);
        assert_eq!(status.revision, revision + 1, "the pause is a revision");
        // Again: nothing changes, no revision.
        assert_paused(&pause(&mut client, &id).await);
        assert_eq!(
            onboarding_status(&mut client, &id).await.revision,
            revision + 1
        );
        wait_let_go(&app.db, &mariadb, &id).await;

        // Written while paused: not captured, not lost.
        mariadb
            .exec(&[
                "INSERT INTO shop.t VALUES (2)",
                "INSERT INTO shop.t VALUES (3)",
            ])
            .await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(all_events(&mut client, &id, "").await.len(), 1);
        assert_eq!(
            dump_threads(&mariadb).await,
            0,
            "a paused server holds no connection"
        );
        // An update of a paused server does not resume it.
        let mut renamed = get_server(&mut client, &id).await;
        renamed.labels.insert("env".into(), "test".into());
        let updated = client
            .update_server(proto::UpdateServerRequest {
                server: Some(renamed),
                update_mask: Some(prost_types::FieldMask {
                    paths: vec!["labels".into()],
                }),
                ..Default::default()
            })
            .await
            .expect("UpdateServer")
            .into_inner();
        assert_paused(&updated);
        // RestartStream asks for a resume first.
        let refused = expect_err(
            client
                .restart_stream(proto::RestartStreamRequest {
                    current_position: true,
                    ..restart_at(&id, "", 0)
                })
                .await,
        );
        assert_error(&refused, Code::FailedPrecondition, "STREAM_PAUSED");

        let resumed = resume(&mut client, &id).await;
        assert_eq!(resumed.status, ServerStatus::Active as i32);
        wait_stream(&mut client, &id, "the resumed stream to run", running).await;
        mariadb.exec(&["INSERT INTO shop.t VALUES (4)"]).await;
        let started = Instant::now();
        let events = loop {
            let events = all_events(&mut client, &id, "").await;
            if events.len() >= 4 || started.elapsed() > CAPTURE {
                break events;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        let ids: Vec<String> = events.iter().map(|event| event.event_id.clone()).collect();
        assert_eq!(events.len(), 4, "each row once: {ids:?}");
        let mut unique = ids.clone();
        unique.dedup();
        assert_eq!(unique, ids);
        assert_eq!(dump_threads(&mariadb).await, 1);
        assert_eq!(
            get_server(&mut client, &id)
                .await
                .stream
                .map(|s| s.binlog_file),
            before.stream.map(|s| s.binlog_file),
            "the same binlog file, from the checkpoint"
        );

        // REST: the same calls; a decommission of a paused server works.
        let http = reqwest::Client::new();
        let url = |verb: &str| format!("http://{}/servers/{id}:{verb}", app.http_addr);
        let response = http
            .post(url("pause-stream"))
            .bearer_auth(&app.tenant.key)
            .json(&serde_json::json!({}))
            .send()
            .await
            .expect("POST :pause-stream");
        assert_eq!(response.status(), reqwest::StatusCode::OK);
        let body: serde_json::Value = response.json().await.expect("JSON");
        assert_eq!(body["status"], "paused", "{body}");
        let response = http
            .post(format!(
                "http://{}/servers/not-a-uuid:resume-stream",
                app.http_addr
            ))
            .bearer_auth(&app.tenant.key)
            .json(&serde_json::json!({}))
            .send()
            .await
            .expect("POST :resume-stream");
        assert_eq!(response.status(), reqwest::StatusCode::BAD_REQUEST);
        let decommissioned = client
            .decommission_server(proto::DecommissionServerRequest {
                server_id: id.clone(),
                ..Default::default()
            })
            .await
            .expect("DecommissionServer")
            .into_inner();
        assert_eq!(decommissioned.status, ServerStatus::Decommissioned as i32);
        let refused = expect_err(
            client
                .resume_stream(ResumeStreamRequest {
                    server_id: id.clone(),
                })
                .await,
        );
        assert_error(&refused, Code::FailedPrecondition, "SERVER_DECOMMISSIONED");
        app.shutdown().await;
    });
}

#[test]
fn a_pause_outlives_a_sigkilled_replica() {
    block_on(async {
        let mariadb = mariadb_with(&SHOP_T).await;
        let db = Arc::new(TestDatabase::create().await);
        let tenant = db.create_tenant("tenant-a", None).await;
        let options = mysql_replica_options();
        let mut first = ServiceProcess::serve("paused-a", &db.url, &options).await;
        let mut client = first.client(&tenant.key).await;
        let id = streaming(&mut client, &mariadb, "outlives").await;
        assert_paused(&pause(&mut client, &id).await);
        wait_let_go(&db, &mariadb, &id).await;
        first.kill().await;

        let second = ServiceProcess::serve("paused-b", &db.url, &options).await;
        let mut client = second.client(&tenant.key).await;
        mariadb.exec(&["INSERT INTO shop.t VALUES (2)"]).await;
        // Longer than a sweep and a lease: nothing takes the paused stream.
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert_paused(&get_server(&mut client, &id).await);
        assert_eq!(dump_threads(&mariadb).await, 0);
        assert_eq!(all_events(&mut client, &id, "").await.len(), 1);

        resume(&mut client, &id).await;
        wait_stream(&mut client, &id, "the resumed stream to run", running).await;
        wait_until("the row written while paused", CAPTURE, || {
            let mut client = client.clone();
            let id = id.clone();
            async move { all_events(&mut client, &id, "").await.len() == 2 }
        })
        .await;
    });
}

#[test]
fn a_binlog_purged_while_paused_is_a_lost_position_on_resume() {
    block_on(async {
        let mariadb = mariadb_with(&SHOP_T).await;
        let app = mysql_app().await;
        let mut client = app.client();
        let id = streaming(&mut client, &mariadb, "purged").await;
        let checkpoint_file = get_server(&mut client, &id)
            .await
            .stream
            .expect("a stream")
            .binlog_file;
        assert_paused(&pause(&mut client, &id).await);
        wait_let_go(&app.db, &mariadb, &id).await;
        mariadb
            .exec(&["INSERT INTO shop.t VALUES (2)", "FLUSH BINARY LOGS"])
            .await;
        let current = mariadb.master_status().await.expect("binlog on").file;
        // MariaDB keeps a file until InnoDB's binlog checkpoint has moved past it, and PURGE
        // skips it silently meanwhile: purge until the checkpoint's file is gone.
        wait_until(
            "the checkpoint's binlog purged",
            Duration::from_secs(15),
            || async {
                mariadb
                    .exec(&[&format!("PURGE BINARY LOGS TO '{current}'")])
                    .await;
                let files: Vec<(String, u64)> = mariadb.query("SHOW BINARY LOGS").await;
                !files.iter().any(|(file, _)| *file == checkpoint_file)
            },
        )
        .await;

        resume(&mut client, &id).await;
        let server = wait_stream(&mut client, &id, "the lost position", |server| {
            stream_state(server) == Some(StreamState::LostPosition)
        })
        .await;
        assert_eq!(server.status, ServerStatus::Error as i32);
        let error = server.error.unwrap_or_default();
        assert!(error.contains(&checkpoint_file), "{error}");
        assert_eq!(all_events(&mut client, &id, "").await.len(), 1);
        app.shutdown().await;
    });
}
