//! WatchOnboarding over HTTP: NDJSON lines and Server-Sent Events each see a full onboarding in
//! order, SSE resumes from Last-Event-ID without a gap or a duplicate, a failure mid-stream ends
//! with an `{"error": ...}` line, a client that leaves ends the server-side stream promptly, and
//! all of it works over HTTP/1.1 and h2c alike.
//!
//! Every server registered here points at 127.0.0.1 or localhost.

use std::time::Duration;

use crate::common::mariadb::{self, MariaDb};
use crate::common::*;
use crate::rest_common::*;
use futures_util::StreamExt;
use reqwest::Method;
use serde_json::{Value, json};

/// Between two lines or events of a stream.
const NEXT: Duration = Duration::from_secs(30);

/// The lines of a streamed response body, read as they arrive.
struct Lines {
    body: std::pin::Pin<
        Box<dyn futures_util::Stream<Item = reqwest::Result<prost::bytes::Bytes>> + Send>,
    >,
    buffer: Vec<u8>,
}

impl Lines {
    fn new(response: reqwest::Response) -> Lines {
        Lines {
            body: Box::pin(response.bytes_stream()),
            buffer: Vec::new(),
        }
    }

    /// The next line, `None` at the end of the body; panics after `NEXT` without one.
    async fn next(&mut self) -> Option<String> {
        loop {
            if let Some(end) = self.buffer.iter().position(|byte| *byte == b'\n') {
                let line: Vec<u8> = self.buffer.drain(..=end).collect();
                return Some(String::from_utf8_lossy(&line[..end]).into_owned());
            }
            match tokio::time::timeout(NEXT, self.body.next()).await {
                Err(_) => panic!("no line within {NEXT:?}; buffered: {:?}", self.buffer),
                Ok(None) => {
                    assert!(
                        self.buffer.is_empty(),
                        "a partial last line: {:?}",
                        self.buffer
                    );
                    return None;
                }
                Ok(Some(chunk)) => self
                    .buffer
                    .extend_from_slice(&chunk.expect("the stream's next chunk")),
            }
        }
    }

    /// The next NDJSON line as JSON.
    async fn json(&mut self) -> Option<Value> {
        let line = self.next().await?;
        Some(serde_json::from_str(&line).unwrap_or_else(|error| panic!("{line:?}: {error}")))
    }

    /// The next Server-Sent Event (comments skipped): its `event`, `id` and `data`.
    async fn event(&mut self) -> Option<Event> {
        let mut event = Event::default();
        let mut seen = false;
        loop {
            let line = self.next().await?;
            if line.is_empty() {
                if seen {
                    return Some(event);
                }
                continue;
            }
            if line.starts_with(':') {
                continue;
            }
            seen = true;
            let (field, value) = line.split_once(':').unwrap_or((&line, ""));
            let value = value.strip_prefix(' ').unwrap_or(value).to_owned();
            match field {
                "event" => event.event = Some(value),
                "id" => event.id = Some(value),
                "data" => event.data.push_str(&value),
                _ => {}
            }
        }
    }
}

#[derive(Debug, Default, Clone, PartialEq)]
struct Event {
    event: Option<String>,
    id: Option<String>,
    data: String,
}

impl Event {
    fn json(&self) -> Value {
        serde_json::from_str(&self.data).unwrap_or_else(|error| panic!("{self:?}: {error}"))
    }
}

/// Opens a watch; `accept` picks SSE.
async fn open(rest: &Rest, path: &str, accept: Option<&str>, last_event_id: Option<&str>) -> Lines {
    let mut request = rest.request(Method::GET, path);
    if let Some(accept) = accept {
        request = request.header("accept", accept);
    }
    if let Some(last_event_id) = last_event_id {
        request = request.header("last-event-id", last_event_id);
    }
    let response = request.send().await.expect("the watch request");
    assert_eq!(response.status(), 200, "{path}");
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|value| value.to_str().ok())
        .unwrap_or("")
        .to_owned();
    match accept {
        Some(_) => assert_eq!(content_type, "text/event-stream"),
        None => assert_eq!(content_type, "application/x-ndjson"),
    }
    Lines::new(response)
}

#[track_caller]
fn revisions(statuses: &[Value]) -> Vec<i64> {
    statuses
        .iter()
        .map(|status| status["revision"].as_i64().expect("a revision"))
        .collect()
}

/// Asserts a watch saw onboarding from its start to active, in order, with no gap.
#[track_caller]
fn assert_full_onboarding(statuses: &[Value]) {
    let revisions = revisions(statuses);
    let first = revisions[0];
    assert_eq!(
        revisions,
        (first..first + revisions.len() as i64).collect::<Vec<_>>(),
        "revisions with a gap or a duplicate"
    );
    let last = statuses.last().expect("messages");
    assert_eq!(last["server_status"], "active", "{last:#}");
    assert_eq!(last["current_step"], Value::Null);
    // Steps complete in order: the number of completed steps never goes down, and each step
    // that completes is the next one.
    let mut completed = 0;
    for status in statuses {
        let now = status["steps"]
            .as_array()
            .unwrap()
            .iter()
            .take_while(|step| step["status"] == "completed")
            .count();
        assert!(now >= completed, "steps went backwards: {status:#}");
        completed = now;
        assert_eq!(keys(status), ONBOARDING_KEYS);
        assert_no_secret(&status.to_string());
    }
    assert_eq!(completed, 6);
}

fn active_server(mysql: &MariaDb, name: &str) -> Value {
    let mut server = direct_server_json(name);
    server["port"] = json!(mysql.port);
    server["mysql_user"] = json!(mariadb::USER);
    server["mysql_password"] = json!(mariadb::PASSWORD);
    server
}

#[test]
fn ndjson_and_sse_see_a_full_onboarding_and_sse_resumes_without_gap() {
    block_on(async {
        let mysql = mariadb::mariadb_with(&[
            "CREATE DATABASE shop",
            "CREATE TABLE shop.orders (id BIGINT PRIMARY KEY) ENGINE=InnoDB",
        ])
        .await;
        let app = mariadb::mysql_app().await;
        let rest = Rest::new(&app);

        // NDJSON: one {"result": ...} per revision, from the first status to active, then the end.
        let id = rest.register(&active_server(&mysql, "ndjson")).await["server_id"]
            .as_str()
            .unwrap()
            .to_owned();
        let mut lines = open(
            &rest,
            &format!("/servers/{id}/onboarding-status/watch"),
            None,
            None,
        )
        .await;
        let mut statuses = Vec::new();
        while let Some(line) = lines.json().await {
            assert_eq!(keys(&line), ["result"], "{line}");
            statuses.push(line["result"].clone());
        }
        assert_full_onboarding(&statuses);
        let current = rest
            .get(&format!("/servers/{id}/onboarding-status"))
            .await
            .json;
        assert_eq!(statuses.last(), Some(&current));

        // SSE: the same, each event's id its revision.
        let id = rest.register(&active_server(&mysql, "sse")).await["server_id"]
            .as_str()
            .unwrap()
            .to_owned();
        let path = format!("/servers/{id}/onboarding-status/watch");
        let mut stream = open(&rest, &path, Some("text/event-stream"), None).await;
        let mut events = Vec::new();
        while let Some(event) = stream.event().await {
            assert_eq!(event.event, None, "{event:?}");
            events.push(event);
        }
        let statuses: Vec<Value> = events.iter().map(Event::json).collect();
        assert_full_onboarding(&statuses);
        for (event, status) in events.iter().zip(&statuses) {
            assert_eq!(event.id, Some(status["revision"].to_string()));
        }

        // A reconnecting EventSource sends the last id it saw: the stream goes on right after it.
        for cut in [0, events.len() / 2, events.len() - 2] {
            let last_seen = events[cut].id.clone().unwrap();
            let mut resumed = open(&rest, &path, Some("text/event-stream"), Some(&last_seen)).await;
            let mut rest_of_events = Vec::new();
            while let Some(event) = resumed.event().await {
                rest_of_events.push(event);
            }
            assert_eq!(
                rest_of_events,
                events[cut + 1..],
                "resumed after {last_seen}"
            );
        }
        // Last-Event-ID takes precedence over the URL's since_revision (EventSource keeps its URL).
        let first = events[0].id.clone().unwrap();
        let mut resumed = open(
            &rest,
            &format!("{path}?since_revision=0"),
            Some("text/event-stream"),
            Some(&first),
        )
        .await;
        let resumed_first = resumed.event().await.expect("an event");
        assert_eq!(resumed_first, events[1]);

        // A Last-Event-ID that is no revision is a 400 like any bad field.
        let reply = rest
            .exchange(
                rest.request(Method::GET, &path)
                    .header("accept", "text/event-stream")
                    .header("last-event-id", "yesterday"),
            )
            .await;
        assert_status(&reply, 400, 3, "INVALID_ARGUMENT");
        assert_eq!(violation_fields(&reply.json), ["Last-Event-ID"]);
        app.shutdown().await;
    });
}

/// The `dbtrail_watch_streams_open` gauge.
async fn open_streams(app: &TestApp) -> f64 {
    let (_, metrics) = http_get(app.http_addr, "/metrics").await;
    metrics
        .lines()
        .find_map(|line| line.strip_prefix("dbtrail_watch_streams_open "))
        .and_then(|value| value.trim().parse().ok())
        .unwrap_or(0.0)
}

async fn wait_open_streams(app: &TestApp, expected: f64, what: &str) {
    wait_until(what, Duration::from_secs(3), || async {
        open_streams(app).await == expected
    })
    .await;
}

#[test]
fn a_firewall_wait_streams_over_http1_and_h2c_and_departed_clients_end_their_streams() {
    block_on(async {
        let app = TestApp::start().await;
        let http1 = Rest::new(&app);
        let h2c = Rest {
            http: reqwest::Client::builder()
                .http2_prior_knowledge()
                .build()
                .expect("an h2c client"),
            ..http1.clone()
        };
        let id = http1.register(&ssh_server_json("tunnelled")).await["server_id"]
            .as_str()
            .unwrap()
            .to_owned();
        let path = format!("/servers/{id}/onboarding-status/watch");

        // Over h2c: the plain calls work and say they used HTTP/2.
        let response = h2c
            .request(Method::GET, &format!("/servers/{id}"))
            .send()
            .await
            .expect("an h2c request");
        assert_eq!(response.version(), reqwest::Version::HTTP_2);
        assert_eq!(response.status(), 200);

        // An NDJSON watch over h2c follows the firewall wait, the confirmation and the
        // decommissioning, in order, and ends after the final status.
        let mut lines = open(&h2c, &path, None, None).await;
        let mut statuses: Vec<Value> = Vec::new();
        let mut confirmed = false;
        let mut decommissioned = false;
        while let Some(line) = lines.json().await {
            let status = line["result"].clone();
            assert!(status.is_object(), "{line}");
            if status["current_step"] == "awaiting_firewall" && !confirmed {
                assert_eq!(status["agent_outbound_ip"], AGENT_OUTBOUND_IP);
                let reply = h2c
                    .post(&format!("/servers/{id}/confirm-firewall"), &json!({}))
                    .await;
                assert_eq!(reply.json, json!({"status": "confirmed"}));
                confirmed = true;
            }
            if status["steps"][1]["status"] == "completed" && !decommissioned {
                assert_eq!(status["agent_outbound_ip"], Value::Null);
                assert_eq!(h2c.delete(&format!("/servers/{id}")).await.status, 200);
                decommissioned = true;
            }
            statuses.push(status);
        }
        assert!(confirmed && decommissioned, "{statuses:#?}");
        let found = revisions(&statuses);
        let first = found[0];
        assert_eq!(
            found,
            (first..first + found.len() as i64).collect::<Vec<_>>()
        );
        let last = statuses.last().unwrap();
        assert_eq!(last["server_status"], "decommissioned");
        assert_eq!(last["current_step"], Value::Null);

        // Clients that go away, over either protocol and either format, end their server-side
        // streams at once (follow keeps them open otherwise).
        let other = http1.register(&direct_server_json("followed")).await["server_id"]
            .as_str()
            .unwrap()
            .to_owned();
        let followed = format!("/servers/{other}/onboarding-status/watch?follow=true");
        wait_open_streams(&app, 0.0, "no stream open").await;
        for (client, accept) in [
            (&http1, None),
            (&h2c, None),
            (&http1, Some("text/event-stream")),
            (&h2c, Some("text/event-stream")),
        ] {
            let mut stream = open(client, &followed, accept, None).await;
            let first = match accept {
                Some(_) => stream.event().await.map(|event| event.json()),
                None => stream.json().await.map(|line| line["result"].clone()),
            };
            assert_eq!(
                first.expect("the current status")["server_id"],
                other.as_str()
            );
            wait_open_streams(&app, 1.0, "the stream to be open").await;
            drop(stream);
            wait_open_streams(&app, 0.0, "the departed client's stream to end").await;
        }
        app.shutdown().await;
    });
}

#[test]
fn a_stream_that_fails_midway_ends_with_an_error_line_or_event() {
    block_on(async {
        let app = TestApp::start().await;
        let rest = Rest::new(&app);
        let id = rest.register(&direct_server_json("revoked")).await["server_id"]
            .as_str()
            .unwrap()
            .to_owned();
        let path = format!("/servers/{id}/onboarding-status/watch?follow=true");

        // NDJSON: results, then one {"error": Status} line, then the end.
        let key = app.key_with(&["servers:read"]).await;
        let watcher = rest.with_key(&key.secret);
        let mut lines = open(&watcher, &path, None, None).await;
        let first = lines.json().await.expect("the current status");
        assert_eq!(first["result"]["server_id"], id.as_str());
        app.db.revoke_key(key.id).await;
        let mut last = first;
        while let Some(line) = lines.json().await {
            last = line;
        }
        assert_eq!(keys(&last), ["error"], "{last}");
        let error = &last["error"];
        assert_eq!(error["code"], 16, "{error}");
        assert_eq!(detail(error, "ErrorInfo")["reason"], "API_KEY_REVOKED");

        // SSE: an `error` event carrying the Status.
        let key = app.key_with(&["servers:read"]).await;
        let watcher = rest.with_key(&key.secret);
        let mut events = open(&watcher, &path, Some("text/event-stream"), None).await;
        let first = events.event().await.expect("the current status");
        assert_eq!(first.event, None);
        app.db.revoke_key(key.id).await;
        let mut last = first;
        while let Some(event) = events.event().await {
            last = event;
        }
        assert_eq!(last.event.as_deref(), Some("error"), "{last:?}");
        assert_eq!(last.id, None);
        assert_eq!(
            detail(&last.json(), "ErrorInfo")["reason"],
            "API_KEY_REVOKED"
        );

        // A watch refused before its first message is a plain error response.
        let reply = rest
            .get(&format!(
                "/servers/{}/onboarding-status/watch",
                uuid::Uuid::new_v4()
            ))
            .await;
        assert_status(&reply, 404, 5, "SERVER_NOT_FOUND");
        let reply = rest.get(&format!("{path}&since_revision=999")).await;
        assert_status(&reply, 400, 3, "INVALID_ARGUMENT");
        assert_eq!(violation_fields(&reply.json), ["since_revision"]);
        app.shutdown().await;
    });
}

/// WatchServers over HTTP: NDJSON lines and SSE give the list, then ADDED, MODIFIED and DELETED
/// with the tenant's revisions; SSE ids are revisions, and an EventSource reconnecting with
/// Last-Event-ID gets exactly what came after it (no list, no gap, no duplicate); the filter is a
/// query parameter, and a bad one is a 400 naming it.
#[test]
fn ndjson_and_sse_watch_the_fleet_and_sse_resumes_from_last_event_id() {
    block_on(async {
        let app = TestApp::start().await;
        let rest = Rest::new(&app);
        let first = rest.register(&direct_server_json("rest-first")).await;
        let first_id = first["server_id"].as_str().unwrap().to_owned();

        let mut lines = open(&rest, "/servers:watch", None, None).await;
        let list = lines.json().await.expect("the list")["result"].clone();
        assert_eq!(list["type"], "list", "{list}");
        assert_eq!(list["servers"][0]["server_id"], first_id.as_str());
        let listed_at = list["revision"].as_i64().expect("the list's revision");

        let mut events = open(&rest, "/servers:watch", Some("text/event-stream"), None).await;
        let listed = events.event().await.expect("the list event");
        assert_eq!(listed.json()["type"], "list");
        assert_eq!(
            listed.id.as_deref(),
            Some(listed.json()["revision"].to_string().as_str()),
            "an SSE id is the revision"
        );

        let second = rest.register(&direct_server_json("rest-second")).await;
        let second_id = second["server_id"].as_str().unwrap().to_owned();
        // The first server's onboarding may still be moving: events until the ADDED one, each
        // the next revision.
        let mut last = listed_at;
        let added = loop {
            let event = lines.json().await.expect("an event")["result"].clone();
            assert_eq!(event["revision"].as_i64(), Some(last + 1), "{event}");
            last += 1;
            if event["type"] == "added" {
                break event;
            }
            assert_eq!(event["type"], "modified", "{event}");
        };
        assert_eq!(added["server"]["server_id"], second_id.as_str());
        let sse_added = loop {
            let event = events.event().await.expect("an SSE event");
            if event.json()["type"] == "added" {
                break event;
            }
        };
        assert_eq!(sse_added.id.as_deref(), Some(last.to_string().as_str()));
        drop(events);

        // Meanwhile (the EventSource is away): a change and a decommission.
        let reply = rest
            .patch(
                &format!("/servers/{first_id}?update_mask=labels"),
                &json!({"labels": {"tier": "gold"}}),
            )
            .await;
        assert_eq!(reply.status, 200, "{:?}", reply.body);
        let reply = rest.delete(&format!("/servers/{second_id}")).await;
        assert_eq!(reply.status, 200, "{:?}", reply.body);

        let resumed_from = sse_added.id.clone().expect("an id");
        let mut resumed = open(
            &rest,
            "/servers:watch",
            Some("text/event-stream"),
            Some(&resumed_from),
        )
        .await;
        let mut kinds = Vec::new();
        let mut last = resumed_from.parse::<i64>().unwrap();
        while !kinds.iter().any(|(kind, _)| kind == "deleted") {
            let event = resumed.event().await.expect("an event after Last-Event-ID");
            let body = event.json();
            let id: i64 = event.id.as_deref().expect("an id").parse().unwrap();
            assert_eq!(id, last + 1, "no gap, no duplicate: {body}");
            assert_eq!(body["revision"].as_i64(), Some(id));
            last = id;
            kinds.push((
                body["type"].as_str().unwrap().to_owned(),
                body["server"]["name"].as_str().unwrap().to_owned(),
            ));
        }
        assert_eq!(
            kinds.first().map(|(kind, _)| kind.as_str()),
            Some("modified")
        );
        assert!(
            kinds.contains(&("modified".to_owned(), "rest-first".to_owned())),
            "{kinds:?}"
        );
        assert_eq!(
            kinds.last(),
            Some(&("deleted".to_owned(), "rest-second".to_owned()))
        );

        // A filter narrows the list; a bad one is named.
        let mut gold = open(
            &rest,
            "/servers:watch?filter=labels.tier%3D%22gold%22",
            None,
            None,
        )
        .await;
        let list = gold.json().await.expect("the filtered list")["result"].clone();
        let names: Vec<&str> = list["servers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|server| server["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["rest-first"]);
        let reply = rest.get("/servers:watch?filter=colour%3Dred").await;
        assert_eq!(reply.status, 400, "{:?}", reply.body);
        assert!(
            reply.body.to_string().contains("filter"),
            "{:?}",
            reply.body
        );
        app.shutdown().await;
    });
}
