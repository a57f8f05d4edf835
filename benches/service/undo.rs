//! B13: the undo SQL of 1,000,000 captured changes (RevertChanges, strict, streamed): its rate
//! and the replica's peak memory above where it started, beside ListChangeEvents' read rate over
//! the same events, in one run.

use std::time::Instant;

use dbtrail_servers::proto;

use crate::{client, report::Row, stream};

/// Captured inserts to undo.
const EVENTS: u64 = 1_000_000;
/// The events both calls read: a table named with its schema, which the index
/// (server_id, schema_name, table_name, sequence) serves in order. A table named alone is not
/// served in order by any index yet: each page then reads every event of the table (noted in
/// docs/performance.md).
const SELECTION: &str = "schema = \"shop\" AND table = \"events\"";
/// How often, in messages, the replica's RSS is sampled while the script streams.
const SAMPLE_EVERY: usize = 50;

/// B13 on a database of its own.
pub async fn undo(database_url: &str, rows: &mut Vec<Row>) {
    let (mariadb, replica, key, server_id) = stream::onboarded(database_url, "bench-undo").await;
    stream::write_and_index(&mariadb, database_url, &server_id, (1, EVENTS, EVENTS)).await;
    let mut api = client::client(replica.channel().await, &key);

    let started = Instant::now();
    let read = list_all(&mut api, &server_id, SELECTION).await;
    let list_rate = read as f64 / started.elapsed().as_secs_f64();
    assert_eq!(read as u64, EVENTS, "ListChangeEvents read every event");

    let before = replica.rss_bytes();
    let mut peak = before;
    let started = Instant::now();
    let request = proto::RevertChangesRequest {
        server_id: server_id.clone(),
        filter: SELECTION.to_owned(),
        ..Default::default()
    };
    let mut script = api
        .revert_changes(request)
        .await
        .expect("RevertChanges")
        .into_inner();
    let (mut bytes, mut messages, mut tail) = (0usize, 0usize, Vec::new());
    while let Some(body) = script.message().await.expect("the script's next part") {
        bytes += body.data.len();
        messages += 1;
        tail = body.data;
        if messages % SAMPLE_EVERY == 0 {
            peak = peak.max(replica.rss_bytes());
        }
    }
    let undo_rate = EVENTS as f64 / started.elapsed().as_secs_f64();
    peak = peak.max(replica.rss_bytes());
    assert!(
        String::from_utf8_lossy(&tail).contains("COMMIT;"),
        "the script ends with its COMMIT"
    );
    let above = peak.saturating_sub(before) as f64 / (1024.0 * 1024.0);
    rows.push(Row {
        id: "B13",
        measurement: format!(
            "RevertChanges: the undo SQL of {EVENTS} captured inserts (strict), streamed: events/s; the replica's peak RSS above its start"
        ),
        value: format!(
            "{undo_rate:.0} events/s; +{above:.1} MB (script {:.0} MB)",
            bytes as f64 / (1024.0 * 1024.0)
        ),
        baseline: format!(
            "{list_rate:.0} events/s (ListChangeEvents over the same events, pages of 1,000)"
        ),
        ratio: format!("{:.2}", undo_rate / list_rate),
        target: "≥ 0.5 of the read rate; ≤ 64 MB above the start".to_owned(),
        met: undo_rate >= 0.5 * list_rate && above <= 64.0,
        detail: None,
    });
    replica.stop().await;
}

/// Pages through every event of the server that `filter` selects; how many there were.
pub async fn list_all(api: &mut client::Client, server_id: &str, filter: &str) -> usize {
    let (mut token, mut read) = (String::new(), 0);
    loop {
        let page = api
            .list_change_events(proto::ListChangeEventsRequest {
                server_id: server_id.to_owned(),
                page_size: 1000,
                page_token: token,
                filter: filter.to_owned(),
            })
            .await
            .expect("ListChangeEvents")
            .into_inner();
        read += page.events.len();
        token = page.next_page_token;
        if token.is_empty() {
            return read;
        }
    }
}
