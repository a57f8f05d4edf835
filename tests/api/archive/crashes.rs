//! The archive under crashes and concurrency: a replica SIGKILLed after its files are uploaded
//! and before the manifest, or after the manifest and before the drop, leaves every event
//! readable once, and the next replica finishes the work; two replicas archive each partition
//! once.

use super::*;

/// The line a replica logs when it stops at its archive failpoint.
const STOPPED: &str = "the archive stops at its failpoint";

/// Waits until `replica` stops at its failpoint; the server's events then, hot and archived.
async fn wait_stopped(
    replica: &ServiceProcess,
    postgres: &tokio_postgres::Client,
    id: &str,
) -> (i64, i64) {
    let deadline = Instant::now() + ARCHIVED_WITHIN;
    while !(replica.stdout() + &replica.stderr()).contains(STOPPED) {
        assert!(
            Instant::now() < deadline,
            "the archive did not reach its failpoint"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tiers(postgres, id).await
}

/// Kills `replica` at its failpoint and starts another on the same agent and archive, which
/// finishes the archive; the reads are still `hot`'s and the directory holds the manifest's
/// files only.
async fn resume_after_kill(
    mut replica: ServiceProcess,
    db: &TestDatabase,
    key: &str,
    (id, hot): (&str, &Reads),
    archive: &std::path::Path,
) {
    replica.kill().await;
    let url = archive.to_str().expect("UTF-8 path");
    let again =
        ServiceProcess::serve("archive-again", &db.url, &archiving("agent-a", url, &[])).await;
    let postgres = db.connect().await;
    wait_archived(&postgres, id, 56, 0).await;
    let mut client = again.client(key).await;
    assert_same(
        &reads(&mut client, id, 6).await,
        hot,
        "nothing lost, nothing doubled",
    );
    let files: i64 = postgres
        .query_one("SELECT count(*) FROM change_archive_files", &[])
        .await
        .expect("count the manifest")
        .get(0);
    assert_eq!(
        files_under(archive),
        files,
        "the files on disk are the manifest's"
    );
}

fn files_under(root: &std::path::Path) -> i64 {
    let mut count = 0;
    for entry in std::fs::read_dir(root).expect("read the directory") {
        let path = entry.expect("an entry").path();
        count += if path.is_dir() { files_under(&path) } else { 1 };
    }
    count
}

async fn stopping_at(
    failpoint: &str,
    db: &TestDatabase,
    archive: &std::path::Path,
) -> ServiceProcess {
    let url = archive.to_str().expect("UTF-8 path");
    let options = archiving("agent-a", url, &[]);
    ServiceProcess::serve_with_env(
        "archive-a",
        &db.url,
        &options,
        &[("DBTRAIL_ARCHIVE_FAILPOINT", failpoint)],
    )
    .await
}

/// A replica stopped at its archive failpoint after capturing 56 changes, and what its reads
/// gave before (all hot), checked to give the same at the failpoint.
struct Stopped {
    _mariadb: MariaDb,
    db: TestDatabase,
    key: String,
    archive: tempfile::TempDir,
    replica: ServiceProcess,
    id: String,
    hot: Reads,
    /// The server's events at the failpoint, hot and archived.
    tiers: (i64, i64),
}

async fn stopped_at(failpoint: &str) -> Stopped {
    let mariadb = mariadb_with(&TABLE).await;
    let db = TestDatabase::create().await;
    let key = db.create_tenant("tenant-a", None).await.key;
    let archive = tempfile::tempdir().expect("an archive directory");
    let replica = stopping_at(failpoint, &db, archive.path()).await;
    let (id, hot) = captured(&replica, &key, &mariadb).await;
    let tiers = wait_stopped(&replica, &db.connect().await, &id).await;
    let mut client = replica.client(&key).await;
    assert_same(&reads(&mut client, &id, 6).await, &hot, "at the failpoint");
    Stopped {
        _mariadb: mariadb,
        db,
        key,
        archive,
        replica,
        id,
        hot,
        tiers,
    }
}

impl Stopped {
    async fn kill_and_resume(self) {
        let archive = self.archive.path().to_owned();
        let (id, hot) = (self.id.as_str(), &self.hot);
        resume_after_kill(self.replica, &self.db, &self.key, (id, hot), &archive).await;
    }
}

#[test]
fn a_replica_killed_after_the_upload_and_before_the_manifest_loses_and_doubles_nothing() {
    block_on(async {
        // The files are written and verified, the manifest does not name them: reads took the
        // hot rows only.
        let stopped = stopped_at("after-upload").await;
        assert_eq!(stopped.tiers, (56, 0));
        assert!(
            files_under(stopped.archive.path()) > 0,
            "the files were uploaded"
        );
        stopped.kill_and_resume().await;
    });
}

#[test]
fn a_replica_killed_after_the_manifest_and_before_the_drop_loses_and_doubles_nothing() {
    block_on(async {
        // The events of the partition it stopped at (all 56, or the first minute's when the
        // changes crossed a minute) are both hot and archived: reads took each once.
        let stopped = stopped_at("after-manifest").await;
        let (hot, archived) = stopped.tiers;
        assert_eq!(hot, 56);
        assert!(archived > 0, "the manifest names the files");
        stopped.kill_and_resume().await;
    });
}

#[test]
fn two_replicas_archive_each_partition_once() {
    block_on(async {
        let mariadb = mariadb_with(&TABLE).await;
        let db = TestDatabase::create().await;
        let tenant = db.create_tenant("tenant-a", None).await;
        let archive = tempfile::tempdir().expect("an archive directory");
        let url = archive.path().to_str().expect("UTF-8 path");
        let first =
            ServiceProcess::serve("archive-a", &db.url, &archiving("agent-a", url, &[])).await;
        let _second =
            ServiceProcess::serve("archive-b", &db.url, &archiving("agent-b", url, &[])).await;
        let (id, hot) = captured(&first, &tenant.key, &mariadb).await;
        let postgres = db.connect().await;
        wait_archived(&postgres, &id, 56, 0).await;

        let mut client = first.client(&tenant.key).await;
        assert_same(&reads(&mut client, &id, 6).await, &hot, "at the failpoint");
        let claims: Vec<(String, i64)> = postgres
            .query(
                "SELECT name, lease_epoch FROM change_partitions WHERE dropped_at IS NOT NULL",
                &[],
            )
            .await
            .expect("the dropped partitions")
            .iter()
            .map(|row| (row.get(0), row.get(1)))
            .collect();
        assert!(!claims.is_empty(), "partitions were archived: {claims:?}");
        assert!(
            claims.iter().all(|(_, epoch)| *epoch == 1),
            "each partition was claimed once: {claims:?}"
        );
        let files: i64 = postgres
            .query_one("SELECT count(*) FROM change_archive_files", &[])
            .await
            .expect("count the manifest")
            .get(0);
        assert_eq!(files_under(archive.path()), files);
    });
}
