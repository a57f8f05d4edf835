//! The change index's schema (src/store/index/): its migrations apply cleanly over an index that
//! an older replica prepared with the statements it ran at start, keeping what it holds.

use crate::common::*;
use dbtrail_servers::config::DatabaseConfig;
use dbtrail_servers::store::index::PartitionWidth;
use std::time::Duration;

/// What replicas before the index's migrations ran at start, verbatim, and a day's partition.
const PREPARED_BY_AN_OLDER_REPLICA: &str = "
    CREATE TABLE IF NOT EXISTS stream_checkpoints (server_id uuid PRIMARY KEY, \
        epoch bigint NOT NULL DEFAULT 0, binlog_file text NOT NULL, \
        binlog_position bigint NOT NULL, skip_rows bigint NOT NULL DEFAULT 0, gtid_set text, \
        source_identity text, replication_server_id bigint NOT NULL, \
        next_sequence bigint NOT NULL DEFAULT 1, last_event_at timestamptz, \
        recorded_at timestamptz NOT NULL DEFAULT now());
    ALTER TABLE stream_checkpoints \
        ADD COLUMN IF NOT EXISTS statement_changes bigint NOT NULL DEFAULT 0, \
        ADD COLUMN IF NOT EXISTS statement_changes_since timestamptz, \
        ADD COLUMN IF NOT EXISTS last_statement_change text NOT NULL DEFAULT '', \
        ADD COLUMN IF NOT EXISTS replay_until_file text, \
        ADD COLUMN IF NOT EXISTS replay_until_position bigint;
    CREATE TABLE IF NOT EXISTS stream_gaps (id bigserial PRIMARY KEY, server_id uuid NOT NULL, \
        from_file text NOT NULL, from_position bigint NOT NULL, to_file text NOT NULL, \
        to_position bigint NOT NULL, reason text NOT NULL, \
        recorded_at timestamptz NOT NULL DEFAULT now());
    CREATE INDEX IF NOT EXISTS stream_gaps_server ON stream_gaps (server_id, id);
    CREATE TABLE IF NOT EXISTS change_events (server_id uuid NOT NULL, sequence bigint NOT NULL, \
        binlog_file text NOT NULL, binlog_position bigint NOT NULL, row_index integer NOT NULL, \
        gtid text NOT NULL DEFAULT '', committed_at timestamptz NOT NULL, \
        schema_name text NOT NULL, table_name text NOT NULL, \
        operation text NOT NULL CHECK (operation IN ('insert', 'update', 'delete')), \
        primary_key jsonb, row_before jsonb, row_after jsonb, \
        indexed_at timestamptz NOT NULL DEFAULT now(), \
        PRIMARY KEY (server_id, sequence, indexed_at)) PARTITION BY RANGE (indexed_at);
    CREATE INDEX IF NOT EXISTS change_events_by_table \
        ON change_events (server_id, schema_name, table_name, sequence);
";

fn index_config(url: &str) -> DatabaseConfig {
    DatabaseConfig {
        database_url: Some(url.to_owned()),
        pool_size: 1,
        pool_timeout: Duration::from_secs(5),
        statement_timeout: Duration::from_secs(5),
    }
}

#[test]
fn the_index_migrations_apply_over_an_index_an_older_replica_prepared() {
    block_on(async {
        let db = TestDatabase::create().await;
        let sql = db.connect().await;
        let today = chrono::Utc::now().date_naive();
        let partition = format!("change_events_{}", today.format("%Y%m%d"));
        sql.batch_execute(PREPARED_BY_AN_OLDER_REPLICA)
            .await
            .expect("the old shape");
        sql.batch_execute(&format!(
            "CREATE TABLE {partition} PARTITION OF change_events FOR VALUES FROM ('{today}') \
                 TO ('{}'); \
             INSERT INTO stream_checkpoints (server_id, binlog_file, binlog_position, \
                 replication_server_id, next_sequence) \
             VALUES ('00000000-0000-0000-0000-000000000001', 'mysql-bin.000002', 120, 7, 2); \
             INSERT INTO change_events (server_id, sequence, binlog_file, binlog_position, \
                 row_index, committed_at, schema_name, table_name, operation) \
             VALUES ('00000000-0000-0000-0000-000000000001', 1, 'mysql-bin.000002', 4, 0, \
                 now(), 's', 't', 'insert')",
            today + chrono::Days::new(1)
        ))
        .await
        .expect("a stream's checkpoint and event");

        let index = change_index(&db.url);
        index
            .prepare_change_index(PartitionWidth::default())
            .await
            .expect("prepare");
        let versions: Vec<i32> = sql
            .query(
                "SELECT version FROM change_index_migrations ORDER BY version",
                &[],
            )
            .await
            .expect("the applied migrations")
            .iter()
            .map(|row| row.get(0))
            .collect();
        assert_eq!(versions, vec![1, 2, 3]);
        assert_eq!(index.migrate().await.expect("again"), Vec::<i32>::new());

        let id = dbtrail_servers::domain::ServerId::from_uuid(uuid::Uuid::from_u128(1));
        let checkpoint = index
            .stream_checkpoint(id)
            .await
            .expect("read")
            .expect("kept");
        assert_eq!(checkpoint.position.binlog_position, 120);
        assert_eq!(checkpoint.events_indexed, 1);
        let partitions = index.change_partitions().await.expect("partitions");
        assert!(partitions.contains(&partition), "{partitions:?}");
        let ready: bool = sql
            .query_one(
                "SELECT max(ends_at) >= now() + interval '23 hours' FROM change_partitions",
                &[],
            )
            .await
            .expect("the partitions ahead")
            .get(0);
        assert!(ready, "a day of partitions is ready ahead: {partitions:?}");
    });
}

/// A server's index tables as the template made them before snapshots recorded where in the
/// binlog they hold from, and before the template's version was recorded.
const TABLES_OF_AN_OLDER_TEMPLATE: &str = "
    CREATE SCHEMA IF NOT EXISTS {schema};
    CREATE TABLE IF NOT EXISTS {schema}.schema_snapshots (id bigserial PRIMARY KEY, \
        taken_at timestamptz NOT NULL DEFAULT now(), is_current boolean NOT NULL, \
        schema_count integer NOT NULL, table_count integer NOT NULL, snapshot jsonb NOT NULL);
    CREATE UNIQUE INDEX IF NOT EXISTS schema_snapshots_one_current \
        ON {schema}.schema_snapshots (is_current) WHERE is_current;
    INSERT INTO {schema}.schema_snapshots (is_current, schema_count, table_count, snapshot) \
        VALUES (true, 1, 2, '{\"shop\": {}}');
";

#[test]
fn a_servers_index_tables_from_an_older_template_are_brought_to_the_current_one() {
    block_on(async {
        use dbtrail_servers::domain::ServerId;
        use dbtrail_servers::store::{Affinity, Lease, Store, index_schema_name, template_version};

        // A server held in provisioning (no capacity), whose onboarding lease the test takes.
        let app = TestApp::start_with(ReplicaOptions {
            agent_capacity: 0,
            ..Default::default()
        })
        .await;
        let mut client = app.client();
        let server = register(&mut client, direct_server("older-template")).await;
        wait_provisioning(&client, &server.server_id, "provisioning in progress").await;
        let db = app.db.clone();
        app.shutdown().await;
        let store = Store::connect(&index_config(&db.url)).expect("Store::connect");
        let id = ServerId::from_uuid(uuid::Uuid::parse_str(&server.server_id).expect("a UUID"));
        let affinity = Affinity {
            agent_id: uuid::Uuid::new_v4(),
            dead_after: Duration::from_secs(15),
            replaced_after: Duration::from_secs(300),
        };
        let claims = store
            .claim_runnable(
                uuid::Uuid::new_v4(),
                Duration::from_secs(60),
                affinity,
                &[id],
            )
            .await
            .expect("claim");
        let claim = claims[0];

        let schema = index_schema_name(id);
        let sql = db.connect().await;
        sql.batch_execute(&TABLES_OF_AN_OLDER_TEMPLATE.replace("{schema}", &schema))
            .await
            .expect("the older template's tables");
        let columns = || async {
            let rows = sql
                .query(
                    "SELECT column_name::text FROM information_schema.columns \
                     WHERE table_schema = $1 AND table_name = 'schema_snapshots' ORDER BY 1",
                    &[&schema],
                )
                .await
                .expect("columns");
            rows.iter().map(|row| row.get(0)).collect::<Vec<String>>()
        };
        assert!(!columns().await.contains(&"since_file".to_owned()));

        let had = store
            .prepare_index_tables(Lease::Onboarding, claim)
            .await
            .expect("upgrade");
        assert_eq!(had, 0, "an unrecorded version is the oldest");
        let now = columns().await;
        assert!(now.contains(&"since_file".to_owned()), "{now:?}");
        assert!(now.contains(&"since_position".to_owned()), "{now:?}");
        let history = store.snapshot_history(id).await.expect("history");
        assert_eq!(history.len(), 1, "the stored snapshot is kept");
        assert_eq!(history[0].since, None);
        let again = store
            .prepare_index_tables(Lease::Onboarding, claim)
            .await
            .expect("again");
        assert_eq!(again, template_version(), "current tables are left alone");

        // A schema with the current shape but no recorded version (as replicas before versions
        // made it) upgrades cleanly too.
        sql.batch_execute(&format!("COMMENT ON SCHEMA {schema} IS NULL"))
            .await
            .expect("forget the version");
        let had = store
            .prepare_index_tables(Lease::Onboarding, claim)
            .await
            .expect("upgrade of the unrecorded current shape");
        assert_eq!(had, 0);
        assert_eq!(
            store
                .prepare_index_tables(Lease::Onboarding, claim)
                .await
                .expect("current"),
            template_version()
        );
    });
}
