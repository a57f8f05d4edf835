//! `cargo bench --bench service -- callgrind`: instructions the service spends per call,
//! counted by callgrind (stable on a shared machine, unlike time), with the profile kept for
//! `callgrind_annotate`.

use std::time::Duration;

use dbtrail_servers::proto;

use crate::{
    client::{self, parked_server},
    replica::{Replica, database_url, fresh_database_name},
};

/// Calls counted per measurement.
const CALLS: u64 = 2000;

/// Sums the instruction totals of every callgrind dump written under `prefix`.
fn instructions(prefix: &str) -> u64 {
    let path = std::path::Path::new(prefix);
    let directory = path.parent().expect("a directory");
    let stem = path
        .file_name()
        .expect("a file name")
        .to_string_lossy()
        .to_string();
    let mut total = 0;
    for entry in std::fs::read_dir(directory).expect("the profile directory") {
        let entry = entry.expect("an entry");
        if !entry.file_name().to_string_lossy().starts_with(&stem) {
            continue;
        }
        let text = std::fs::read_to_string(entry.path()).expect("a callgrind file");
        total += text
            .lines()
            .find_map(|line| line.strip_prefix("totals:"))
            .and_then(|value| value.split_whitespace().next()?.parse::<u64>().ok())
            .unwrap_or(0);
    }
    total
}

/// Counts the instructions of `CALLS` GetServer calls, then of `CALLS` UpdateServer calls of
/// the labels, one in flight, after a warm-up of both.
pub async fn unary_calls() {
    let directory = tempfile::Builder::new()
        .prefix("dbtrail-callgrind-")
        .tempdir()
        .expect("a profile directory")
        .keep();
    let prefix = directory
        .join("get_server.out")
        .to_string_lossy()
        .to_string();
    let replica = Replica::start_under_callgrind(
        "bench-callgrind",
        &database_url(&fresh_database_name()),
        &prefix,
    )
    .await;
    let key = replica
        .bootstrap_key
        .clone()
        .expect("the first start prints its API key");
    let mut client = client::client(replica.channel().await, &key);
    let server = client::register(&mut client, parked_server("bench-callgrind")).await;
    client::wait_parked(&mut client, &server.server_id).await;
    let get = proto::GetServerRequest {
        server_id: server.server_id.clone(),
    };
    let update = |run: u64| proto::UpdateServerRequest {
        server: Some(proto::Server {
            server_id: server.server_id.clone(),
            labels: [("run".to_owned(), run.to_string())].into(),
            ..Default::default()
        }),
        update_mask: Some(prost_types::FieldMask {
            paths: vec!["labels".to_owned()],
        }),
        ..Default::default()
    };
    for run in 0..200 {
        client.get_server(get.clone()).await.expect("GetServer");
        client
            .update_server(update(run))
            .await
            .expect("UpdateServer");
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut previous = 0;
    for (name, dump) in [
        ("GetServer", "get_server"),
        ("UpdateServer", "update_server"),
    ] {
        replica.callgrind("--instr=on").await;
        for run in 0..CALLS {
            match dump {
                "get_server" => drop(client.get_server(get.clone()).await.expect("GetServer")),
                _ => drop(
                    client
                        .update_server(update(1000 + run))
                        .await
                        .expect("UpdateServer"),
                ),
            }
        }
        replica.callgrind("--instr=off").await;
        replica.callgrind("--dump").await;
        let total = instructions(&prefix);
        println!(
            "{name}: {} instructions per call in the service ({CALLS} calls, 1 in flight)",
            (total - previous) / CALLS
        );
        previous = total;
    }
    println!("profiles: callgrind_annotate {}/*", directory.display());
    replica.stop().await;
}
