//! The one read RevertChanges keeps to the hot tier: the children an ON DELETE CASCADE took are
//! looked up among the changes still in PostgreSQL. When their latest images may be archived,
//! the call is refused with CHANGES_ARCHIVED and the newest archived commit time, never written
//! without them.

use tonic::Code;

use super::*;

const TABLES: [&str; 3] = [
    "CREATE DATABASE shop",
    "CREATE TABLE shop.parent (id INT PRIMARY KEY, name VARCHAR(20)) ENGINE=InnoDB",
    "CREATE TABLE shop.child (id INT PRIMARY KEY, parent_id INT, note VARCHAR(20), \
         CONSTRAINT child_parent FOREIGN KEY (parent_id) REFERENCES shop.parent (id) \
         ON DELETE CASCADE) ENGINE=InnoDB",
];

#[test]
fn a_delete_whose_cascaded_children_are_archived_is_refused_with_the_archived_time() {
    block_on(async {
        let mariadb = mariadb_with(&TABLES).await;
        let db = TestDatabase::create().await;
        let key = db.create_tenant("tenant-a", None).await.key;
        let archive = tempfile::tempdir().expect("an archive directory");
        let url = archive.path().to_str().expect("UTF-8 path");
        let replica =
            ServiceProcess::serve("cascade", &db.url, &archiving("agent-a", url, &[])).await;
        let mut client = replica.client(&key).await;
        let id = register(&mut client, mariadb.server("cascade", USER, PASSWORD))
            .await
            .server_id;
        wait_stream(&mut client, &id, "the stream to run", running).await;
        mariadb
            .exec(&[
                "INSERT INTO shop.parent VALUES (1, 'one')",
                "INSERT INTO shop.child VALUES (10, 1, 'a'), (11, 1, 'b')",
            ])
            .await;
        wait_captured(&mut client, &id, 3).await;
        wait_archived(&db.connect().await, &id, 3, 0).await;

        // The parent's delete is hot; its children's images are archived.
        mariadb
            .exec(&["DELETE FROM shop.parent WHERE id = 1"])
            .await;
        wait_captured(&mut client, &id, 4).await;
        let request = proto::RevertChangesRequest {
            server_id: id.clone(),
            filter: r#"table = "parent" AND type = "delete""#.to_owned(),
            ..Default::default()
        };
        let status = expect_err(client.revert_changes(request).await);
        assert_error(&status, Code::FailedPrecondition, "CHANGES_ARCHIVED");
        assert!(
            status.message().contains("committed_at >"),
            "the message says how to select around the archive: {}",
            status.message()
        );
    });
}
