//! RevertChanges' cascade over both tiers: the children an ON DELETE CASCADE took are found
//! whether their latest images are archived or still in PostgreSQL, each row by its latest
//! change in either tier.

use super::*;

const TABLES: [&str; 3] = [
    "CREATE DATABASE shop",
    "CREATE TABLE shop.parent (id INT PRIMARY KEY, name VARCHAR(20)) ENGINE=InnoDB",
    "CREATE TABLE shop.child (id INT PRIMARY KEY, parent_id INT, note VARCHAR(20), \
         CONSTRAINT child_parent FOREIGN KEY (parent_id) REFERENCES shop.parent (id) \
         ON DELETE CASCADE) ENGINE=InnoDB",
];

#[test]
fn a_delete_whose_cascaded_children_are_archived_restores_them_from_the_archive() {
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
                "INSERT INTO shop.parent VALUES (1, 'one'), (2, 'two')",
                "INSERT INTO shop.child VALUES (10, 1, 'a'), (11, 1, 'b'), (12, 1, 'c')",
            ])
            .await;
        wait_captured(&mut client, &id, 5).await;
        wait_archived(&db.connect().await, &id, 5, 0).await;

        // Child 12 moves to parent 2 (its latest image is hot, and not parent 1's); child 11
        // changes its note (hot). Then the parent's delete takes 10 and 11.
        mariadb
            .exec(&[
                "UPDATE shop.child SET parent_id = 2 WHERE id = 12",
                "UPDATE shop.child SET note = 'B' WHERE id = 11",
                "DELETE FROM shop.parent WHERE id = 1",
            ])
            .await;
        wait_captured(&mut client, &id, 8).await;
        let filter = r#"table = "parent" AND type = "delete""#;
        let script = undo_script_of(&mut client, &id, filter).await;
        let inserts: Vec<&str> = script
            .lines()
            .filter(|line| line.starts_with("INSERT INTO `shop`.`child`"))
            .collect();
        assert_eq!(
            inserts,
            vec![
                "INSERT INTO `shop`.`child` (`id`, `parent_id`, `note`) VALUES (10, 1, 'a');",
                "INSERT INTO `shop`.`child` (`id`, `parent_id`, `note`) VALUES (11, 1, 'B');",
            ],
            "the archived child and the hot one, each by its latest image: {script}"
        );
        assert_eq!(
            script
                .matches("-- re-inserted: deleted by ON DELETE CASCADE with shop.parent id=1")
                .count(),
            2,
            "{script}"
        );
    });
}
