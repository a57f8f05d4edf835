//! The index split (docs/archive.md "Growing the index"): with several `--index-database-url`,
//! each server's events live in one database, chosen at onboarding and recorded on its row; a
//! database added later takes the new servers; the order of the URLs does not matter; a server
//! from before shards were recorded is found where its checkpoint is; a replica without a
//! server's database says so instead of answering empty; one database given twice is refused.

use super::*;
use tonic::Code;

/// A replica of the deployment on `db` whose change index is `shards`, in that order.
async fn replica(db: &TestDatabase, shards: &[&TestDatabase]) -> ServiceProcess {
    let urls: Vec<&str> = shards.iter().map(|shard| shard.url.as_str()).collect();
    let mut options = ReplicaOptions {
        agent_name: "agent-a".into(),
        ..mysql_replica_options()
    };
    options
        .extra_args
        .extend(["--index-database-url".to_owned(), urls.join(",")]);
    ServiceProcess::serve("shards", &db.url, &options).await
}

/// Stops `replica` as an operator does (SIGTERM): its streams let go of their leases.
async fn stop(mut replica: ServiceProcess) {
    replica.signal(libc::SIGTERM);
    let status = replica.wait_exit(Duration::from_secs(60)).await;
    assert!(status.success(), "the replica stopped cleanly: {status}");
}

/// How many events of each server a shard database holds.
async fn events_by_server(shard: &TestDatabase) -> Vec<(String, i64)> {
    let rows = shard
        .connect()
        .await
        .query(
            "SELECT server_id::text, count(*) FROM change_events GROUP BY 1 ORDER BY 1",
            &[],
        )
        .await
        .expect("count the shard's events");
    rows.iter().map(|row| (row.get(0), row.get(1))).collect()
}

/// The shard database's own id.
async fn shard_id(shard: &TestDatabase) -> String {
    let sql = "SELECT id::text FROM index_identity";
    let row = shard.connect().await.query_one(sql, &[]).await;
    row.expect("the shard's id").get(0)
}

/// The shard recorded on the server's row, if any.
async fn recorded_shard(db: &TestDatabase, server_id: &str) -> Option<String> {
    let sql = "SELECT index_shard::text FROM servers WHERE id::text = $1";
    let row = db.connect().await.query_one(sql, &[&server_id]).await;
    row.expect("the server's row").get(0)
}

/// ListChangeEvents of `server_id` is refused: its index database is not this replica's.
async fn assert_index_missing(client: &mut Client, server_id: &str) {
    let refused = client
        .list_change_events(proto::ListChangeEventsRequest {
            server_id: server_id.to_owned(),
            ..Default::default()
        })
        .await;
    assert_error(
        &expect_err(refused),
        Code::Unavailable,
        "INDEX_SHARD_UNAVAILABLE",
    );
}

/// Registers `name` on `mariadb` and waits until its stream runs.
async fn streaming(client: &mut Client, mariadb: &MariaDb, name: &str) -> String {
    let id = register(client, mariadb.server(name, USER, PASSWORD))
        .await
        .server_id;
    wait_stream(client, &id, "the stream to run", running).await;
    id
}

#[test]
fn servers_spread_over_index_databases_and_a_new_one_takes_the_new_servers() {
    block_on(async {
        let mariadb = mariadb_with(&TABLE).await;
        let db = TestDatabase::create().await;
        let key = db.create_tenant("tenant-a", None).await.key;
        let (a, b) = (TestDatabase::reserve(), TestDatabase::reserve());

        let first = replica(&db, &[&a]).await;
        let mut client = first.client(&key).await;
        let one = streaming(&mut client, &mariadb, "one").await;
        change_rows(&mariadb, 1).await;
        wait_captured(&mut client, &one, 56).await;
        stop(first).await;

        // A second database: the next server's events go there, the first's stay in theirs.
        let second = replica(&db, &[&a, &b]).await;
        let mut client = second.client(&key).await;
        let two = streaming(&mut client, &mariadb, "two").await;
        change_rows(&mariadb, 101).await;
        wait_captured(&mut client, &one, 112).await;
        wait_captured(&mut client, &two, 56).await;
        assert_eq!(events_by_server(&a).await, vec![(one.clone(), 112)]);
        assert_eq!(events_by_server(&b).await, vec![(two.clone(), 56)]);
        assert_eq!(recorded_shard(&db, &one).await, Some(shard_id(&a).await));
        assert_eq!(recorded_shard(&db, &two).await, Some(shard_id(&b).await));
        let listed_one = all_events(&mut client, &one, "").await;
        let listed_two = all_events(&mut client, &two, "").await;
        stop(second).await;

        // The URLs in another order, and the first server as a deployment from before shards
        // were recorded left it: each server's events are found where they are.
        let sql = db.connect().await;
        let forget = "UPDATE servers SET index_shard = NULL WHERE id::text = $1";
        sql.execute(forget, &[&one])
            .await
            .expect("forget the shard");
        let reordered = replica(&db, &[&b, &a]).await;
        let mut client = reordered.client(&key).await;
        assert_eq!(all_events(&mut client, &one, "").await, listed_one);
        assert_eq!(all_events(&mut client, &two, "").await, listed_two);
        assert_eq!(recorded_shard(&db, &one).await, Some(shard_id(&a).await));
        stop(reordered).await;

        // Without the first database, its server's reads and stream say so; never empty.
        let partial = replica(&db, &[&b]).await;
        let mut client = partial.client(&key).await;
        assert_index_missing(&mut client, &one).await;
        assert_eq!(all_events(&mut client, &two, "").await, listed_two);
        let missing = shard_id(&a).await;
        let stalled = |server: &proto::Server| {
            let stream = server.stream.as_ref();
            stream_state(server) == Some(proto::StreamState::Stalled)
                && stream
                    .and_then(|stream| stream.error.as_deref())
                    .is_some_and(|error| {
                        error.contains(&missing) && error.contains("--index-database-url")
                    })
        };
        wait_stream(
            &mut client,
            &one,
            "the stream to say its index is missing",
            stalled,
        )
        .await;

        // Nor is a server from before shards were recorded given a database without its events.
        sql.execute(forget, &[&one])
            .await
            .expect("forget the shard");
        assert_index_missing(&mut client, &one).await;
        assert_eq!(recorded_shard(&db, &one).await, None, "no shard was chosen");
    });
}

#[test]
fn one_index_database_given_twice_is_refused_at_start() {
    block_on(async {
        let db = TestDatabase::create().await;
        let index = TestDatabase::reserve();
        let other_spelling = format!("{}?application_name=again", index.url);
        let options = ReplicaOptions {
            extra_args: vec![
                "--index-database-url".into(),
                format!("{},{other_spelling}", index.url),
            ],
            ..Default::default()
        };
        let data_dir = tempfile::tempdir().expect("a data directory");
        let mut args = vec!["serve".to_owned()];
        args.extend(options.serve_args(
            &db.url,
            &format!("127.0.0.1:{}", free_port()),
            &format!("127.0.0.1:{}", free_port()),
            data_dir.path(),
        ));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let refused = run_cli(&args, &[]).await;
        assert!(!refused.status.success(), "the replica started");
        assert!(
            refused.stderr.contains("name the same index database (id ")
                && refused.stderr.contains("list each database once"),
            "the refusal names the problem and the fix: {}",
            refused.stderr
        );
        assert!(!refused.stderr.contains("postgres://"), "no URL is printed");
    });
}
