//! ListServers: 1,000 servers paged by 100, each exactly once, newest first, keyset (not offset)
//! pagination; filters on status, connection_method, name, host and labels.

use std::collections::HashSet;
use std::time::Instant;

use crate::common::*;
use dbtrail_servers::proto::{
    self, ConnectionMethod, DecommissionServerRequest, ListServersRequest, ListServersResponse,
};
use futures_util::StreamExt;
use tonic::Code;

async fn list(
    client: &mut Client,
    page_size: i32,
    page_token: &str,
    filter: &str,
    show_decommissioned: bool,
) -> ListServersResponse {
    client
        .list_servers(ListServersRequest {
            page_size,
            page_token: page_token.to_owned(),
            filter: filter.to_owned(),
            show_decommissioned,
        })
        .await
        .unwrap_or_else(|status| panic!("ListServers filter={filter:?}: {status:?}"))
        .into_inner()
}

/// Every page of a listing, in order.
async fn pages(
    client: &mut Client,
    page_size: i32,
    filter: &str,
    show_decommissioned: bool,
) -> Vec<Vec<proto::Server>> {
    let mut pages = Vec::new();
    let mut token = String::new();
    loop {
        let page = list(client, page_size, &token, filter, show_decommissioned).await;
        pages.push(page.servers);
        if page.next_page_token.is_empty() {
            return pages;
        }
        assert!(pages.len() < 10_000, "pagination does not end");
        token = page.next_page_token;
    }
}

/// The names of every server a filter lists, in order.
async fn names(client: &mut Client, filter: &str, show_decommissioned: bool) -> Vec<String> {
    pages(client, 2, filter, show_decommissioned)
        .await
        .into_iter()
        .flatten()
        .map(|server| server.name)
        .collect()
}

fn created(server: &proto::Server) -> (i64, i32) {
    let at = server.created_at.as_ref().expect("created_at");
    (at.seconds, at.nanos)
}

#[test]
fn a_thousand_servers_page_by_a_hundred_each_once_newest_first() {
    block_on(async {
        let app = TestApp::start_with(ReplicaOptions {
            agent_capacity: 2000,
            // 1,000 onboardings at once keep the engine's runners busy: calls may queue for a
            // pooled connection longer than the other tests' 1 s.
            pool_timeout: "5s".to_owned(),
            // Few runners, so that onboarding the fleet does not crowd out the calls under test.
            extra_args: vec!["--max-runners".to_owned(), "4".to_owned()],
            ..Default::default()
        })
        .await;
        let started = Instant::now();
        let registered: Vec<String> = futures_util::stream::iter(0..1000)
            .map(|index| {
                let mut client = app.client();
                async move {
                    register(&mut client, direct_server(&format!("fleet-{index:04}")))
                        .await
                        .server_id
                }
            })
            .buffer_unordered(32)
            .collect()
            .await;
        eprintln!("registered 1,000 servers in {:?}", started.elapsed());
        let registered: HashSet<String> = registered.into_iter().collect();
        assert_eq!(registered.len(), 1000);

        let mut client = app.client();
        let first = list(&mut client, 100, "", "", false).await;
        assert_eq!(first.servers.len(), 100);
        assert!(!first.next_page_token.is_empty());

        // Servers registered mid-pagination are newer than the cursor: keyset pagination neither
        // shows them on later pages nor shifts the rest (offset pagination would repeat servers).
        let mut newcomers = HashSet::new();
        for index in 0..5 {
            newcomers.insert(
                register(&mut client, direct_server(&format!("newcomer-{index}")))
                    .await
                    .server_id,
            );
        }

        let mut listed: Vec<proto::Server> = first.servers;
        let mut token = first.next_page_token;
        let mut page_count = 1;
        while !token.is_empty() {
            let page = list(&mut client, 100, &token, "", false).await;
            page_count += 1;
            assert!(page_count <= 11, "more pages than 1,000 servers need");
            if !page.next_page_token.is_empty() {
                assert_eq!(page.servers.len(), 100, "a page before the last is full");
            }
            listed.extend(page.servers);
            token = page.next_page_token;
        }
        let ids: Vec<&str> = listed
            .iter()
            .map(|server| server.server_id.as_str())
            .collect();
        let unique: HashSet<&str> = ids.iter().copied().collect();
        assert_eq!(
            ids.len(),
            1000,
            "each of the 1,000 servers once (got {})",
            ids.len()
        );
        assert_eq!(unique.len(), 1000, "a server appeared twice");
        assert!(
            unique.iter().all(|id| registered.contains(*id)),
            "the listing has servers registered after it began"
        );
        for pair in listed.windows(2) {
            assert!(
                created(&pair[0]) >= created(&pair[1]),
                "not newest first: {} ({:?}) before {} ({:?})",
                pair[0].name,
                pair[0].created_at,
                pair[1].name,
                pair[1].created_at
            );
        }

        // Stable: the same listing again gives the same order, newcomers first.
        let again: Vec<String> = pages(&mut client, 100, "", false)
            .await
            .into_iter()
            .flatten()
            .map(|server| server.server_id)
            .collect();
        assert_eq!(again.len(), 1005);
        assert_eq!(
            again[..5].iter().cloned().collect::<HashSet<_>>(),
            newcomers
        );
        assert_eq!(
            again[5..].iter().map(String::as_str).collect::<Vec<_>>(),
            ids,
            "the order is not stable"
        );

        // page_size: 0 means 50; larger than 500 is capped at 500.
        assert_eq!(list(&mut client, 0, "", "", false).await.servers.len(), 50);
        assert_eq!(
            list(&mut client, 501, "", "", false).await.servers.len(),
            500
        );
        assert_eq!(
            list(&mut client, 5000, "", "", false).await.servers.len(),
            500
        );
        eprintln!("whole test took {:?}", started.elapsed());
        app.shutdown().await;
    });
}

#[test]
fn filters_select_on_status_connection_method_name_host_and_labels() {
    block_on(async {
        let app = TestApp::start().await;
        let mut client = app.client();

        let mut alpha = direct_server("alpha");
        alpha.host = "127.0.0.2".to_owned();
        alpha.labels = labels(&[("env", "prod"), ("team", "a")]);
        register(&mut client, alpha).await;

        let mut beta = direct_server("beta");
        beta.host = "localhost".to_owned();
        beta.connection_method = ConnectionMethod::Vpn as i32;
        beta.labels = labels(&[("env", "staging")]);
        register(&mut client, beta).await;

        let mut gamma = ssh_server("gamma");
        gamma.labels = labels(&[("env", "prod")]);
        register(&mut client, gamma).await;

        let delta = register(&mut client, direct_server("delta")).await;
        client
            .decommission_server(DecommissionServerRequest {
                server_id: delta.server_id.clone(),
                ..Default::default()
            })
            .await
            .expect("DecommissionServer");

        // Another tenant's servers never show.
        let other = app.other_tenant("tenant-b").await;
        let mut other_client = app.client_with_key(&other.key);
        let mut foreign = direct_server("alpha");
        foreign.labels = labels(&[("env", "prod")]);
        register(&mut other_client, foreign).await;

        let cases: &[(&str, bool, &[&str])] = &[
            ("", false, &["gamma", "beta", "alpha"]),
            ("", true, &["delta", "gamma", "beta", "alpha"]),
            ("connection_method = direct", false, &["alpha"]),
            ("connection_method = \"direct\"", true, &["delta", "alpha"]),
            ("connection_method = ssh_tunnel", false, &["gamma"]),
            (
                "connection_method = vpn OR connection_method = ssh_tunnel",
                false,
                &["gamma", "beta"],
            ),
            ("NOT connection_method = direct", false, &["gamma", "beta"]),
            ("status = pending", false, &["gamma", "beta", "alpha"]),
            ("status = decommissioned", true, &["delta"]),
            ("status = active", false, &[]),
            ("name = \"beta\"", false, &["beta"]),
            ("host = \"localhost\"", false, &["beta"]),
            ("host = \"127.0.0.2\"", false, &["alpha"]),
            ("labels.env = \"prod\"", false, &["gamma", "alpha"]),
            (
                "labels.env = \"prod\" AND connection_method = direct",
                false,
                &["alpha"],
            ),
            (
                "labels.env = \"prod\" AND NOT labels.team = \"a\"",
                false,
                &["gamma"],
            ),
            ("labels.team = \"a\"", false, &["alpha"]),
            ("labels.missing = \"x\"", false, &[]),
            (
                "(labels.env = \"staging\" OR name = \"alpha\") AND status = pending",
                false,
                &["beta", "alpha"],
            ),
        ];
        for (filter, show_decommissioned, expected) in cases {
            assert_eq!(
                names(&mut client, filter, *show_decommissioned).await,
                expected
                    .iter()
                    .map(|name| name.to_string())
                    .collect::<Vec<_>>(),
                "filter {filter:?} (show_decommissioned={show_decommissioned})"
            );
        }

        // A filter pages like any listing.
        let filtered = pages(&mut client, 1, "labels.env = \"prod\"", false).await;
        let filtered: Vec<Vec<String>> = filtered
            .into_iter()
            .filter(|page| !page.is_empty())
            .map(|page| page.into_iter().map(|server| server.name).collect())
            .collect();
        assert_eq!(
            filtered,
            vec![vec!["gamma".to_owned()], vec!["alpha".to_owned()]]
        );

        // An unknown field is INVALID_ARGUMENT.
        let status = expect_err(
            client
                .list_servers(ListServersRequest {
                    filter: "flavour = \"vanilla\"".to_owned(),
                    ..Default::default()
                })
                .await,
        );
        assert_error(&status, Code::InvalidArgument, "INVALID_ARGUMENT");
        assert_bad_request(&status, &["filter"]);
        app.shutdown().await;
    });
}

#[test]
fn forged_and_truncated_page_tokens_are_invalid_argument_and_replicas_share_theirs() {
    block_on(async {
        use base64::Engine;
        let app = TestApp::start().await;
        let mut client = app.client();
        for index in 0..3 {
            register(&mut client, direct_server(&format!("crafted-{index}"))).await;
        }
        let list = |page_token: String| ListServersRequest {
            page_size: 1,
            page_token,
            ..Default::default()
        };
        let first = client
            .list_servers(list(String::new()))
            .await
            .expect("ListServers")
            .into_inner();
        // The service's own token, its time pushed out of every range PostgreSQL accepts, its
        // signature kept: a forgery.
        let engine = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let bytes = engine.decode(&first.next_page_token).expect("base64");
        let (json, tag) = bytes.split_at(bytes.len() - 32);
        let mut token: serde_json::Value = serde_json::from_slice(json).expect("a JSON cursor");
        token["created_at_micros"] = serde_json::json!(-8_200_000_000_000_000_000i64);
        let forged =
            engine.encode([serde_json::to_vec(&token).expect("JSON"), tag.to_vec()].concat());
        let truncated = first.next_page_token[..first.next_page_token.len() - 5].to_owned();
        let unsigned = engine.encode(json);
        for bad in [forged, truncated, unsigned] {
            let status = expect_err(client.list_servers(list(bad.clone())).await);
            assert_eq!(status.code(), Code::InvalidArgument, "{bad}: {status:?}");
            assert_bad_request(&status, &["page_token"]);
            assert!(
                status.message().contains("not a token this service issued"),
                "{status:?}"
            );
        }
        // Another replica of the deployment continues the listing from this one's token.
        let other = app.replica(ReplicaOptions::default()).await;
        let second = other
            .client()
            .list_servers(list(first.next_page_token.clone()))
            .await
            .expect("ListServers on another replica with the first replica's token")
            .into_inner();
        assert_eq!(second.servers.len(), 1);
        assert_ne!(second.servers[0].server_id, first.servers[0].server_id);
        other.shutdown().await;
        app.shutdown().await;
    });
}
