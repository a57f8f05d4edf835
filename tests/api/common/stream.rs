//! What the stream tests share: every change event a server holds, waiting on its stream, its
//! state, and RestartStream requests.

use std::time::{Duration, Instant};

use dbtrail_servers::proto::{self, ListChangeEventsRequest, ServerStatus, StreamState};

use super::{Client, get_server};

/// How long a change may take to be captured.
pub const CAPTURE: Duration = Duration::from_secs(30);

/// Every change event of the server that `filter` selects, oldest first.
pub async fn all_events(
    client: &mut Client,
    server_id: &str,
    filter: &str,
) -> Vec<proto::ChangeEvent> {
    let mut events = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = client
            .list_change_events(ListChangeEventsRequest {
                server_id: server_id.to_owned(),
                page_size: 1000,
                page_token: page_token.clone(),
                filter: filter.to_owned(),
            })
            .await
            .expect("ListChangeEvents")
            .into_inner();
        events.extend(page.events);
        if page.next_page_token.is_empty() {
            return events;
        }
        page_token = page.next_page_token;
    }
}

/// The server once `condition` holds (within [`CAPTURE`]).
pub async fn wait_stream(
    client: &mut Client,
    server_id: &str,
    what: &str,
    condition: impl Fn(&proto::Server) -> bool,
) -> proto::Server {
    let started = Instant::now();
    loop {
        let server = get_server(client, server_id).await;
        if condition(&server) {
            return server;
        }
        assert!(
            started.elapsed() < CAPTURE,
            "timed out waiting for {what}: {server:#?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The state of the server's stream, once it has one.
pub fn stream_state(server: &proto::Server) -> Option<StreamState> {
    server
        .stream
        .as_ref()
        .and_then(|stream| StreamState::try_from(stream.state).ok())
}

/// Active, with its stream running.
pub fn running(server: &proto::Server) -> bool {
    server.status == ServerStatus::Active as i32
        && stream_state(server) == Some(StreamState::Running)
}

/// RestartStream from a binlog file and position.
pub fn restart_at(server_id: &str, file: &str, position: i64) -> proto::RestartStreamRequest {
    proto::RestartStreamRequest {
        server_id: server_id.to_owned(),
        binlog_file: file.to_owned(),
        binlog_position: position,
        ..Default::default()
    }
}
