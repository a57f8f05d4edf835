//! B8: onboarding against a private MariaDB with the binary log on, one server and a thousand.

use std::time::{Duration, Instant};

use dbtrail_servers::proto::{self, ServerStatus};

use crate::{
    client::{self, Client},
    load::{histogram, ms},
    mariadb::MariaDb,
    replica::Replica,
    report::Row,
    source::{ORDERS, PASSWORD, USER, prepared},
};

/// Registers `server` and waits until it is active; how long that took.
async fn register_until_active(mut client: Client, server: proto::Server) -> Duration {
    let started = Instant::now();
    let name = server.name.clone();
    let registered = client::register(&mut client, server).await;
    let mut stream = client
        .watch_onboarding(proto::WatchOnboardingRequest {
            server_id: registered.server_id.clone(),
            ..Default::default()
        })
        .await
        .expect("WatchOnboarding")
        .into_inner();
    while let Some(status) = stream.message().await.expect("a watch message") {
        match ServerStatus::try_from(status.server_status) {
            Ok(ServerStatus::Active) => return started.elapsed(),
            Ok(ServerStatus::Error) => panic!("{name} failed onboarding: {:?}", status.error),
            _ => {}
        }
    }
    panic!("the watch of {name} ended before it was active");
}

/// B8 on replica `replica`.
pub async fn onboarding(replica: &Replica, key: &str, rows: &mut Vec<Row>) {
    let mariadb = MariaDb::options()
        .arg("--max-connections=2000")
        .start()
        .await;
    let mariadb = prepared(mariadb, ORDERS).await;
    let channel = replica.channel().await;

    let mut one = histogram();
    for index in 0..20 {
        let server = mariadb.server(&format!("bench-mariadb-{index}"), USER, PASSWORD);
        let took = register_until_active(client::client(channel.clone(), key), server).await;
        one.saturating_record(took.as_micros() as u64);
    }
    let p50 = one.value_at_quantile(0.5);
    rows.push(Row {
        id: "B8",
        measurement: "register → active against a local MariaDB, one at a time, p50 / p99"
            .to_owned(),
        value: format!("{} / {}", ms(p50), ms(one.value_at_quantile(0.99))),
        baseline: "—".to_owned(),
        ratio: "—".to_owned(),
        target: "≤ 100 ms".to_owned(),
        met: p50 <= 100_000,
        detail: None,
    });

    const BULK: usize = 1000;
    let mut channels = Vec::new();
    for _ in 0..4 {
        channels.push(replica.channel().await);
    }
    let started = Instant::now();
    let tasks: Vec<_> = (0..BULK)
        .map(|index| {
            let client = client::client(channels[index % channels.len()].clone(), key);
            let server = mariadb.server(&format!("bench-bulk-{index}"), USER, PASSWORD);
            tokio::spawn(register_until_active(client, server))
        })
        .collect();
    for task in tasks {
        task.await.expect("an onboarding task panicked");
    }
    let all = started.elapsed();
    rows.push(Row {
        id: "B8",
        measurement: format!("{BULK} servers registered at once → all active"),
        value: format!("{:.2} s", all.as_secs_f64()),
        baseline: "—".to_owned(),
        ratio: "—".to_owned(),
        target: "≤ 30 s".to_owned(),
        met: all <= Duration::from_secs(30),
        detail: None,
    });
}
