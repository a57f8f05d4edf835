//! What the archive keeps, through the index's own API on a test database: a partition is never
//! dropped before its files are in the manifest; a partition past the archive's retention has
//! its files deleted; one within it stays readable from its files.

use std::time::Duration;

use dbtrail_servers::{
    domain::{ServerId, change::ChangeFilter},
    store::{
        PageBound,
        index::archive::{Archive, ArchiveLocation, ArchiveSettings},
    },
};

use super::*;

const DAY: Duration = Duration::from_secs(24 * 3600);

/// A day partition `days` ago holding one event of `server` with sequence `sequence`.
async fn old_partition(
    postgres: &tokio_postgres::Client,
    days: u64,
    server: &ServerId,
    sequence: i64,
) -> String {
    let day = chrono::Utc::now().date_naive() - chrono::Days::new(days);
    let name = format!("change_events_{}", day.format("%Y%m%d"));
    postgres
        .batch_execute(&format!(
            "CREATE TABLE {name} PARTITION OF change_events FOR VALUES FROM ('{day}') TO ('{}'); \
             INSERT INTO change_events (server_id, sequence, binlog_file, binlog_position, \
                 row_index, committed_at, schema_name, table_name, operation, primary_key, \
                 row_after, indexed_at) \
             VALUES ('{}', {sequence}, 'mysql-bin.000001', 4, 0, '{day} 11:00:00+00', 's', 't', \
                 'insert', '{{\"id\": {sequence}}}', '{{\"id\": {sequence}, \"note\": \"ü\"}}', \
                 '{day} 12:00:00+00')",
            day + chrono::Days::new(1),
            server.uuid(),
        ))
        .await
        .expect("an old partition with an event");
    name
}

/// The manifest names one file of `server`, under `directory`, whose event reads back.
async fn assert_only_the_kept_file(
    postgres: &tokio_postgres::Client,
    index: &dbtrail_servers::store::ChangeIndex,
    server: ServerId,
    directory: &std::path::Path,
) {
    let files: Vec<String> = postgres
        .query("SELECT path FROM change_archive_files", &[])
        .await
        .expect("the manifest")
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
    assert!(
        files[0].starts_with(&format!("server_id={}/date=", server.uuid())),
        "{files:?}"
    );
    assert!(directory.join(&files[0]).is_file());
    let bound = PageBound {
        rows: 10,
        bytes: 1 << 20,
        size: |_| 1,
    };
    let page = index
        .list_change_events(server, &ChangeFilter::default(), 0, &bound)
        .await
        .expect("the events");
    let sequences: Vec<i64> = page.events.iter().map(|event| event.sequence).collect();
    assert_eq!(
        sequences,
        vec![2],
        "the kept event reads from its file; the expired one is gone"
    );
    assert_eq!(
        page.events[0].change.after,
        Some(serde_json::json!({"id": 2, "note": "ü"}))
    );
}

#[test]
fn old_partitions_leave_postgresql_through_the_archive_and_its_retention() {
    block_on(async {
        let db = TestDatabase::create().await;
        let postgres = db.connect().await;
        change_index(&db.url)
            .migrate()
            .await
            .expect("the index's tables");
        let server = ServerId::generate();
        let expired = old_partition(&postgres, 20, &server, 1).await;
        let kept = old_partition(&postgres, 10, &server, 2).await;
        let directory = tempfile::tempdir().expect("an archive directory");
        let location = ArchiveLocation::Directory(directory.path().to_owned());
        let index =
            change_index(&db.url).with_archive(Archive::open(location).expect("the archive"));
        // Maintenance registers the partitions and makes the ones ahead; it drops none.
        index
            .maintain_change_index(Default::default())
            .await
            .expect("maintenance");
        let partitions = index.change_partitions().await.expect("partitions");
        assert!(
            partitions.contains(&expired) && partitions.contains(&kept),
            "{partitions:?}"
        );

        let settings = ArchiveSettings {
            hot_retention: 7 * DAY,
            archive_retention: 14 * DAY,
            holder: "test".into(),
            failpoint: None,
        };
        let run = index
            .archive_due(&settings)
            .await
            .expect("the archive's run");
        assert_eq!(
            run.partitions,
            vec![expired.clone(), kept.clone()],
            "both archived and dropped"
        );
        assert_eq!(run.rows, 2);
        assert_eq!(
            run.expired_files, 1,
            "the expired partition's file is deleted"
        );
        let partitions = index.change_partitions().await.expect("partitions");
        assert!(
            !partitions.contains(&expired) && !partitions.contains(&kept),
            "{partitions:?}"
        );
        assert_only_the_kept_file(&postgres, &index, server, directory.path()).await;
    });
}
