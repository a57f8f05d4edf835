//! WatchServers: the list at a tenant-wide revision, then ADDED / MODIFIED / DELETED in revision
//! order for register, update, decommission and onboarding progress; a filter narrows both; a
//! resume from any kept revision misses nothing and repeats nothing while two replicas write at
//! once; a compacted revision is OUT_OF_RANGE with where to resume; bad input is named; one
//! tenant never sees another's servers.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::common::*;
use dbtrail_servers::proto::{
    self, DecommissionServerRequest, ServerEventType, WatchServersRequest, WatchServersResponse,
};
use tonic::{Code, Status};

/// Between two messages of a watch.
const NEXT: Duration = Duration::from_secs(15);

/// An open WatchServers stream.
struct FleetWatch {
    stream: tonic::Streaming<WatchServersResponse>,
}

impl FleetWatch {
    async fn open(client: &mut Client, request: WatchServersRequest) -> Result<FleetWatch, Status> {
        let stream = client.watch_servers(request).await?.into_inner();
        Ok(FleetWatch { stream })
    }

    /// A watch of everything, from the list.
    async fn all(client: &mut Client) -> FleetWatch {
        FleetWatch::open(client, WatchServersRequest::default())
            .await
            .expect("WatchServers")
    }

    async fn next(&mut self) -> Result<WatchServersResponse, Status> {
        match tokio::time::timeout(NEXT, self.stream.message()).await {
            Err(_) => panic!("no WatchServers message within {NEXT:?}"),
            Ok(Ok(Some(message))) => Ok(message),
            Ok(Ok(None)) => panic!("the WatchServers stream ended"),
            Ok(Err(status)) => Err(status),
        }
    }

    async fn message(&mut self) -> WatchServersResponse {
        self.next().await.expect("a WatchServers message")
    }

    /// The list message(s): the servers and the revision of the last one.
    async fn list(&mut self) -> (Vec<proto::Server>, i64) {
        let mut servers = Vec::new();
        loop {
            let message = self.message().await;
            assert_eq!(message.r#type(), ServerEventType::List, "{message:?}");
            servers.extend(message.servers);
            if !message.more {
                return (servers, message.revision);
            }
            assert_eq!(message.revision, 0, "only the last page has the revision");
        }
    }

    /// Events until `done` holds for one (included).
    async fn events_until(
        &mut self,
        done: impl Fn(&WatchServersResponse) -> bool,
    ) -> Vec<WatchServersResponse> {
        let mut events = Vec::new();
        loop {
            let event = self.message().await;
            let last = done(&event);
            events.push(event);
            if last {
                return events;
            }
        }
    }
}

fn describe(events: &[WatchServersResponse]) -> String {
    events
        .iter()
        .map(|event| {
            let server = event.server.clone().unwrap_or_default();
            format!(
                "{} {:?} {} {:?}",
                event.revision,
                event.r#type(),
                server.name,
                server.onboarding_step
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[track_caller]
fn assert_consecutive(events: &[WatchServersResponse], after: i64) {
    let revisions: Vec<i64> = events.iter().map(|event| event.revision).collect();
    let expected: Vec<i64> = (after + 1..after + 1 + events.len() as i64).collect();
    assert_eq!(revisions, expected, "\n{}", describe(events));
}

fn is(event: &WatchServersResponse, kind: ServerEventType, name: &str) -> bool {
    event.r#type() == kind
        && event
            .server
            .as_ref()
            .is_some_and(|server| server.name == name)
}

async fn decommission(client: &mut Client, server_id: &str) {
    client
        .decommission_server(DecommissionServerRequest {
            server_id: server_id.to_owned(),
            ..Default::default()
        })
        .await
        .expect("DecommissionServer");
}

async fn relabel(client: &mut Client, server_id: &str, pairs: &[(&str, &str)]) {
    let server = proto::Server {
        server_id: server_id.to_owned(),
        labels: labels(pairs),
        ..Default::default()
    };
    update_server(client, server, &["labels"]).await;
}

/// The revisions the database recorded for the tenant, in order.
async fn recorded_revisions(app: &TestApp) -> Vec<i64> {
    let sql = pg_connect(&app.db.url).await;
    sql.query(
        "SELECT revision FROM server_history WHERE tenant_id::text = $1 ORDER BY revision",
        &[&app.tenant.id.to_string()],
    )
    .await
    .expect("server_history")
    .iter()
    .map(|row| row.get(0))
    .collect()
}

#[test]
fn a_watch_lists_the_fleet_then_sees_register_update_onboarding_and_decommission_in_order() {
    block_on(async {
        let app = TestApp::start().await;
        let mut client = app.client();
        let (first, _) = register_and_settle(&mut client, ssh_server("first")).await;

        let mut watch = FleetWatch::all(&mut client).await;
        let (listed, listed_at) = watch.list().await;
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].server_id, first);
        assert!(
            listed_at >= 3,
            "registration and onboarding made revisions: {listed_at}"
        );

        let second = register(&mut client, ssh_server("second")).await.server_id;
        let mut events = watch
            .events_until(|event| {
                event.server.as_ref().is_some_and(|server| {
                    server.server_id == second
                        && server.onboarding_step
                            == Some(proto::OnboardingStep::AwaitingFirewall as i32)
                })
            })
            .await;
        assert!(
            is(&events[0], ServerEventType::Added, "second"),
            "{}",
            describe(&events)
        );
        assert!(
            events[1..]
                .iter()
                .all(|event| is(event, ServerEventType::Modified, "second")),
            "onboarding progress is MODIFIED: {}",
            describe(&events)
        );
        relabel(&mut client, &second, &[("team", "payments")]).await;
        events.extend(
            watch
                .events_until(|event| {
                    event.server.as_ref().unwrap().labels.get("team") == Some(&"payments".into())
                })
                .await,
        );
        assert!(
            events[1..]
                .iter()
                .all(|event| is(event, ServerEventType::Modified, "second")),
            "{}",
            describe(&events)
        );
        // A pause (of a pending server: it takes effect when onboarding completes) is a change.
        let paused = client
            .pause_stream(proto::PauseStreamRequest {
                server_id: second.clone(),
            })
            .await
            .expect("PauseStream")
            .into_inner();
        events.extend(
            watch
                .events_until(|event| event.server.as_ref().unwrap().etag == paused.etag)
                .await,
        );
        decommission(&mut client, &second).await;
        events.extend(
            watch
                .events_until(|event| event.r#type() != ServerEventType::Modified)
                .await,
        );
        let gone = events.last().unwrap();
        assert!(
            is(gone, ServerEventType::Deleted, "second"),
            "{}",
            describe(&events)
        );
        assert!(
            events[1..events.len() - 1].iter().all(|event| is(
                event,
                ServerEventType::Modified,
                "second"
            )),
            "{}",
            describe(&events)
        );
        assert_eq!(
            gone.server.as_ref().unwrap().status,
            proto::ServerStatus::Decommissioned as i32
        );
        // Nothing was skipped: every revision after the list's, each once, as recorded.
        assert_consecutive(&events, listed_at);
        let recorded = recorded_revisions(&app).await;
        assert_eq!(
            recorded,
            (1..=listed_at + events.len() as i64).collect::<Vec<_>>()
        );

        // A new watch lists only the live server; with show_decommissioned, both.
        let (live, _) = FleetWatch::all(&mut client).await.list().await;
        assert_eq!(
            live.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(),
            ["first"]
        );
        let request = WatchServersRequest {
            show_decommissioned: true,
            ..Default::default()
        };
        let (all, _) = FleetWatch::open(&mut client, request)
            .await
            .unwrap()
            .list()
            .await;
        assert_eq!(
            all.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(),
            ["second", "first"],
            "newest first"
        );
        app.shutdown().await;
    });
}

#[test]
fn a_filter_narrows_the_list_and_the_events() {
    block_on(async {
        let app = TestApp::start().await;
        let mut client = app.client();
        let mut prod = ssh_server("prod-1");
        prod.labels = labels(&[("env", "prod")]);
        let prod = register(&mut client, prod).await.server_id;
        let mut dev = ssh_server("dev-1");
        dev.labels = labels(&[("env", "dev")]);
        let dev = register(&mut client, dev).await.server_id;

        let request = WatchServersRequest {
            filter: "labels.env = \"prod\" AND name = \"*-1\"".to_owned(),
            ..Default::default()
        };
        let mut watch = FleetWatch::open(&mut client, request).await.expect("watch");
        let (listed, _) = watch.list().await;
        assert_eq!(
            listed
                .iter()
                .map(|s| s.server_id.as_str())
                .collect::<Vec<_>>(),
            [prod.as_str()]
        );
        // dev comes into the filter (ADDED), prod leaves it (DELETED); the dev server's own
        // onboarding before that was never sent.
        relabel(&mut client, &dev, &[("env", "prod")]).await;
        relabel(&mut client, &prod, &[("env", "staging")]).await;
        let events = watch
            .events_until(|event| event.r#type() == ServerEventType::Deleted)
            .await;
        let seen: Vec<(ServerEventType, String)> = events
            .iter()
            .filter(|event| event.r#type() != ServerEventType::Modified)
            .map(|event| (event.r#type(), event.server.clone().unwrap().name))
            .collect();
        assert_eq!(
            seen,
            [
                (ServerEventType::Added, "dev-1".to_owned()),
                (ServerEventType::Deleted, "prod-1".to_owned())
            ],
            "{}",
            describe(&events)
        );
        assert!(
            events.iter().all(|event| {
                let server = event.server.as_ref().unwrap();
                event.r#type() == ServerEventType::Deleted || server.labels["env"] == "prod"
            }),
            "only servers in the filter: {}",
            describe(&events)
        );
        app.shutdown().await;
    });
}

/// Two replicas write at once while a watcher on the first is cut off and resumes on the
/// second: the events it saw before and after are every recorded revision, each once, and the
/// last event of each server is the server as GetServer has it.
#[test]
fn a_resumed_watch_misses_nothing_while_two_replicas_write() {
    block_on(async {
        let one = TestApp::start().await;
        let two = one.replica(ReplicaOptions::default()).await;
        let (mut on_one, mut on_two) = (one.client(), two.client());
        let mut ids = Vec::new();
        for index in 0..4 {
            let client = if index % 2 == 0 {
                &mut on_one
            } else {
                &mut on_two
            };
            ids.push(
                register(client, direct_server(&format!("fleet-{index}")))
                    .await
                    .server_id,
            );
        }
        let mut watch = FleetWatch::all(&mut on_one).await;
        let (_, listed_at) = watch.list().await;

        let write = |mut client: Client, ids: Vec<String>, tag: &'static str| async move {
            for round in 0..10 {
                for id in &ids {
                    let value = format!("{tag}-{round}");
                    relabel(&mut client, id, &[("round", value.as_str())]).await;
                }
            }
        };
        let writers = tokio::spawn(futures_util::future::join(
            write(on_one.clone(), ids.clone(), "one"),
            write(on_two.clone(), ids.clone(), "two"),
        ));
        // A few events, then the watcher goes away mid-write.
        let mut events = Vec::new();
        for _ in 0..15 {
            events.push(watch.message().await);
        }
        drop(watch);
        let resume_after = events.last().unwrap().revision;
        writers.await.expect("writers");

        let request = WatchServersRequest {
            since_revision: Some(resume_after),
            ..Default::default()
        };
        let mut resumed = FleetWatch::open(&mut on_two, request)
            .await
            .expect("resume");
        let last = *recorded_revisions(&one).await.last().unwrap();
        events.extend(resumed.events_until(|event| event.revision == last).await);
        assert_consecutive(&events, listed_at);

        let mut latest: BTreeMap<String, proto::Server> = BTreeMap::new();
        for event in events {
            let server = event.server.unwrap();
            latest.insert(server.server_id.clone(), server);
        }
        for id in &ids {
            let current = get_server(&mut on_one, id).await;
            let seen = &latest[id];
            assert_eq!(seen.labels, current.labels, "{id}");
            assert_eq!(seen.etag, current.etag, "{id}");
        }
        two.shutdown().await;
        one.shutdown().await;
    });
}

#[test]
fn a_compacted_revision_is_out_of_range_with_where_to_resume() {
    block_on(async {
        let app = TestApp::start_with(ReplicaOptions {
            extra_args: vec!["--history-retention".to_owned(), "1s".to_owned()],
            ..ReplicaOptions::default()
        })
        .await;
        let mut client = app.client();
        let id = register(&mut client, direct_server("compacted"))
            .await
            .server_id;
        relabel(&mut client, &id, &[("a", "1")]).await;
        let from_zero = WatchServersRequest {
            since_revision: Some(0),
            ..Default::default()
        };
        let status = wait_for("the fleet history to be compacted", NEXT, || {
            let mut client = client.clone();
            let request = from_zero.clone();
            async move { FleetWatch::open(&mut client, request).await.err() }
        })
        .await;
        assert_error(&status, Code::OutOfRange, "REVISION_COMPACTED");
        let resume = resume_from(&status).expect("where to resume");
        assert!(
            status
                .message()
                .contains(&format!("since_revision={resume}"))
        );
        // From there, the next change comes.
        let request = WatchServersRequest {
            since_revision: Some(resume),
            ..Default::default()
        };
        let mut watch = FleetWatch::open(&mut client, request)
            .await
            .expect("resume");
        relabel(&mut client, &id, &[("a", "2")]).await;
        let events = watch
            .events_until(|event| {
                event.server.as_ref().unwrap().labels.get("a") == Some(&"2".into())
            })
            .await;
        assert_consecutive(&events, resume);
        app.shutdown().await;
    });
}

#[test]
fn bad_requests_are_named_and_tenants_see_only_their_own() {
    block_on(async {
        let app = TestApp::start().await;
        let mut client = app.client();
        let mine = register(&mut client, direct_server("mine")).await.server_id;

        let bad_filter = WatchServersRequest {
            filter: "colour = red".to_owned(),
            ..Default::default()
        };
        let status = expect_err(FleetWatch::open(&mut client, bad_filter).await.map(|_| ()));
        assert_bad_request(&status, &["filter"]);
        for since in [-1, 1_000] {
            let request = WatchServersRequest {
                since_revision: Some(since),
                ..Default::default()
            };
            let status = expect_err(FleetWatch::open(&mut client, request).await.map(|_| ()));
            assert_bad_request(&status, &["since_revision"]);
        }

        let stranger = app.other_tenant("tenant-b").await;
        let mut theirs = app.client_with_key(&stranger.key);
        let mut watch = FleetWatch::all(&mut theirs).await;
        let (listed, revision) = watch.list().await;
        assert!(listed.is_empty());
        assert_eq!(revision, 0, "the other tenant has its own revisions");
        relabel(&mut client, &mine, &[("secret", "yes")]).await;
        let own = register(&mut theirs, direct_server("theirs")).await;
        let event = watch.message().await;
        assert!(is(&event, ServerEventType::Added, "theirs"), "{event:?}");
        assert_eq!(event.revision, 1);
        assert_eq!(event.server.unwrap().server_id, own.server_id);
        app.shutdown().await;
    });
}
