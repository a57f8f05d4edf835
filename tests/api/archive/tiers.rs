//! Hot and cold read as one: the same pages, tokens, filtered lists and row histories before and
//! after archiving, to a local directory and to a real S3-compatible server (s3s-fs, from
//! crates.io); the files read with pyarrow hold the rows PostgreSQL held.

use std::{net::SocketAddr, path::PathBuf, process::Stdio, time::Duration};

use super::*;

/// Captures 56 changes, archives them, captures 56 more (hot), and checks every read across the
/// boundary, then archives the rest and checks again; returns the rows PostgreSQL held.
async fn archive_and_compare(
    replica: &ServiceProcess,
    db: &TestDatabase,
    key: &str,
    mariadb: &MariaDb,
) -> (String, Vec<StoredRow>) {
    let postgres = db.connect().await;
    let mut client = replica.client(key).await;
    let (id, hot) = captured(replica, key, mariadb).await;
    let mut held = hot_rows(&postgres, &id).await;
    assert_eq!(hot.pages.len(), 8, "56 events at 7 a page");
    assert_eq!(
        hot.history.versions.len(),
        3,
        "row 6: inserted, repriced, renamed"
    );

    wait_archived(&postgres, &id, 56, 0).await;
    let cold = reads(&mut client, &id, 6).await;
    assert_same(&cold, &hot, "the archived events read as the hot ones did");

    // New changes stay hot while the first ones are cold: pages run across the boundary.
    change_rows(mariadb, 101).await;
    wait_captured(&mut client, &id, 112).await;
    let both = reads(&mut client, &id, 6).await;
    assert_eq!(both.pages.len(), 16);
    assert_eq!(
        both.pages[..7],
        hot.pages[..7],
        "the cold pages and their tokens are unchanged"
    );
    assert_eq!(both.pages[7].events, hot.pages[7].events);
    assert!(
        !both.pages[7].next_page_token.is_empty(),
        "the last cold page leads to the hot ones"
    );
    assert_eq!(both.updates.len(), 22);
    assert_eq!(both.updates[..11], hot.updates[..]);
    held.extend(hot_rows(&postgres, &id).await);

    wait_archived(&postgres, &id, 112, 0).await;
    assert_same(
        &reads(&mut client, &id, 6).await,
        &both,
        "all cold reads as hot and cold did",
    );
    (id, held)
}

#[test]
fn events_archived_to_a_directory_read_as_they_did_hot_and_pyarrow_reads_the_files() {
    block_on(async {
        let mariadb = mariadb_with(&TABLE).await;
        let db = TestDatabase::create().await;
        let tenant = db.create_tenant("tenant-a", None).await;
        let archive = tempfile::tempdir().expect("an archive directory");
        let url = archive.path().to_str().expect("UTF-8 path").to_owned();
        let replica =
            ServiceProcess::serve("archive", &db.url, &archiving("agent-a", &url, &[])).await;

        let (id, held) = archive_and_compare(&replica, &db, &tenant.key, &mariadb).await;

        assert_eq!(
            pyarrow_rows(archive.path(), &id),
            held,
            "pyarrow reads the rows PostgreSQL held"
        );
        let postgres = db.connect().await;
        let files: i64 = postgres
            .query_one(
                "SELECT count(*) FROM change_archive_files WHERE server_id::text = $1",
                &[&id],
            )
            .await
            .expect("count the manifest")
            .get(0);
        let on_disk = walk(archive.path()).len() as i64;
        assert_eq!(
            on_disk, files,
            "every file on disk is in the manifest, and no other"
        );
    });
}

#[test]
fn events_archived_to_an_s3_compatible_server_read_as_they_did_hot() {
    block_on(async {
        let mariadb = mariadb_with(&TABLE).await;
        let db = TestDatabase::create().await;
        let tenant = db.create_tenant("tenant-a", None).await;
        let s3 = S3Server::start("dbtrail-archive").await;
        let options = archiving("agent-a", "s3://dbtrail-archive/events", &[]);
        let environment = s3.environment();
        let environment: Vec<(&str, &str)> = environment
            .iter()
            .map(|(name, value)| (*name, value.as_str()))
            .collect();
        let replica =
            ServiceProcess::serve_with_env("archive-s3", &db.url, &options, &environment).await;

        let (id, held) = archive_and_compare(&replica, &db, &tenant.key, &mariadb).await;

        // The server keeps the objects as files: the bucket's directory, under the prefix.
        let stored = s3.root.path().join("dbtrail-archive").join("events");
        assert_eq!(pyarrow_rows(&stored, &id), held);
    });
}

/// Every file under `root`.
fn walk(root: &std::path::Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(root).expect("read the directory") {
        let path = entry.expect("an entry").path();
        if path.is_dir() {
            files.extend(walk(&path));
        } else {
            files.push(path);
        }
    }
    files
}

/// s3s-fs (crates.io, installed by scripts/test): a real S3 API server over a directory.
struct S3Server {
    address: SocketAddr,
    root: tempfile::TempDir,
    _child: tokio::process::Child,
}

const ACCESS_KEY: &str = "dbtrail-test";
const SECRET_KEY: &str = "dbtrail-test-secret";

impl S3Server {
    async fn start(bucket: &str) -> S3Server {
        let binary = std::env::var("DBTRAIL_S3S_FS").expect(
            "DBTRAIL_S3S_FS names the s3s-fs binary: run the tests with scripts/test, which installs it",
        );
        let root = tempfile::tempdir().expect("the S3 server's directory");
        std::fs::create_dir(root.path().join(bucket)).expect("the bucket");
        let address: SocketAddr = ([127, 0, 0, 1], free_port()).into();
        let child = tokio::process::Command::new(&binary)
            .args(["--host", "127.0.0.1", "--port", &address.port().to_string()])
            .args(["--access-key", ACCESS_KEY, "--secret-key", SECRET_KEY])
            .arg(root.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|error| panic!("start {binary}: {error}"));
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while tokio::net::TcpStream::connect(address).await.is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "s3s-fs did not listen on {address}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        S3Server {
            address,
            root,
            _child: child,
        }
    }

    /// The AWS environment a client of this server needs.
    fn environment(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ENDPOINT", format!("http://{}", self.address)),
            ("AWS_ALLOW_HTTP", "true".to_owned()),
            ("AWS_ACCESS_KEY_ID", ACCESS_KEY.to_owned()),
            ("AWS_SECRET_ACCESS_KEY", SECRET_KEY.to_owned()),
            ("AWS_REGION", "us-east-1".to_owned()),
        ]
    }
}
