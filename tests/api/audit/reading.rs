//! Reading: a tenant sees only its own records; REST with a filter and pages.

use super::*;
use crate::rest_common::Rest;
use dbtrail_servers::proto;
use tonic::Code;

#[test]
fn another_tenants_records_are_invisible() {
    block_on(async {
        let app = TestApp::start().await;
        let mut owner = app.client();
        let server = register(&mut owner, direct_server("mine")).await;
        update_server(
            &mut owner,
            proto::Server {
                server_id: server.server_id.clone(),
                labels: labels(&[("team", "a")]),
                ..Default::default()
            },
            &["labels"],
        )
        .await;
        let stranger = app.other_tenant("tenant-b").await;
        let mut theirs = app.client_with_key(&stranger.key);
        // B sees its own records only: its creation (the command line's) and its call.
        let own = register(&mut theirs, direct_server("theirs")).await;
        let seen = audit_events(&mut theirs, "").await;
        let methods: Vec<&str> = seen.iter().map(|e| e.method.as_str()).collect();
        assert_eq!(
            methods,
            ["RegisterServer", "CreateApiKey", "CreateTenant"],
            "{seen:#?}"
        );
        assert_eq!(seen[0].server_id, own.server_id);
        assert!(seen.iter().all(|e| e.server_id != server.server_id));
        let filtered =
            audit_events(&mut theirs, &format!("server_id = {}", server.server_id)).await;
        assert!(filtered.is_empty(), "{filtered:#?}");

        // B's attempt at A's server is B's record (NOT_FOUND, as for any unknown id), not A's.
        let status = expect_err(
            theirs
                .decommission_server(with_request_id(
                    proto::DecommissionServerRequest {
                        server_id: server.server_id.clone(),
                        ..Default::default()
                    },
                    "probe-a",
                ))
                .await,
        );
        assert_error(&status, Code::NotFound, "SERVER_NOT_FOUND");
        let probe = audit_events(&mut theirs, "outcome = NOT_FOUND").await;
        assert_eq!(the_event(&probe, "probe-a").key_id, {
            let key = &audit_events(&mut theirs, "method = RegisterServer").await[0];
            key.key_id.clone()
        });
        let owners = audit_events(&mut owner, "").await;
        assert!(
            owners.iter().all(|e| e.request_id != "probe-a"),
            "{owners:#?}"
        );

        // A's page token is no token of B's.
        let page = owner
            .list_audit_events(ListAuditEventsRequest {
                page_size: 1,
                ..Default::default()
            })
            .await
            .expect("a page")
            .into_inner();
        assert!(!page.next_page_token.is_empty());
        let status = expect_err(
            theirs
                .list_audit_events(ListAuditEventsRequest {
                    page_size: 1,
                    page_token: page.next_page_token,
                    ..Default::default()
                })
                .await,
        );
        assert_bad_request(&status, &["page_token"]);
        let mine = audit_events(
            &mut owner,
            "method != CreateTenant AND method != CreateApiKey",
        )
        .await;
        let methods: Vec<&str> = mine.iter().map(|e| e.method.as_str()).collect();
        assert_eq!(methods, ["UpdateServer", "RegisterServer"]);
        app.shutdown().await;
    });
}

#[test]
fn rest_lists_audit_events_with_a_filter_and_pages() {
    block_on(async {
        let app = TestApp::start().await;
        let mut client = app.client();
        let server = register(&mut client, direct_server("paged")).await;
        for value in ["1", "2", "3"] {
            update_server(
                &mut client,
                proto::Server {
                    server_id: server.server_id.clone(),
                    labels: labels(&[("n", value)]),
                    ..Default::default()
                },
                &["labels"],
            )
            .await;
        }
        let rest = Rest::new(&app);
        let filter = url_encode("method = UpdateServer AND time >= \"2020-01-01T00:00:00Z\"");
        let mut seen = Vec::new();
        let mut path = format!("/audit-events?page_size=2&filter={filter}");
        loop {
            let reply = rest.get(&path).await;
            assert_eq!(reply.status, 200, "{}", reply.body);
            let events = reply.json["audit_events"]
                .as_array()
                .expect("a list")
                .clone();
            assert!(events.len() <= 2);
            seen.extend(events);
            match reply.json["next_page_token"].as_str() {
                Some("") | None => break,
                Some(token) => {
                    path = format!(
                        "/audit-events?page_size=2&filter={filter}&page_token={}",
                        url_encode(token)
                    )
                }
            }
        }
        assert_eq!(seen.len(), 3, "{seen:#?}");
        let values: Vec<&Value> = seen
            .iter()
            .map(|event| &event["changes"][0]["new_value"])
            .collect();
        assert_eq!(
            values,
            [&json!("3"), &json!("2"), &json!("1")],
            "newest first"
        );
        let event = &seen[0];
        for key in [
            "event_id",
            "time",
            "key_id",
            "key_name",
            "request_id",
            "method",
            "server_id",
            "changes",
            "outcome",
            "reason",
            "client_address",
            "resource",
        ] {
            assert!(event.get(key).is_some(), "{key} is missing: {event}");
        }
        assert_eq!(event["changes"][0]["field"], "labels.n");
        assert_eq!(event["changes"][0]["old_value"], "2");
        assert_eq!(event["outcome"], "OK");
        assert!(
            event["time"].as_str().expect("a time").ends_with('Z'),
            "{event}"
        );

        // A bad filter names where and what.
        let reply = rest
            .get(&format!(
                "/audit-events?filter={}",
                url_encode("method > UpdateServer")
            ))
            .await;
        assert_eq!(reply.status, 400, "{}", reply.body);
        assert!(
            reply.body.contains("method compares with = or != only")
                && reply.body.contains("character 10"),
            "{}",
            reply.body
        );
        let reply = rest
            .get(&format!(
                "/audit-events?filter={}",
                url_encode("colour = red")
            ))
            .await;
        assert_eq!(reply.status, 400);
        assert!(
            reply
                .body
                .contains("unknown field \\\"colour\\\" at character 1"),
            "{}",
            reply.body
        );

        // audit:read is needed.
        let writer = app.key_with(&["servers:read", "servers:write"]).await;
        let reply = rest.with_key(&writer.secret).get("/audit-events").await;
        assert_eq!(reply.status, 403, "{}", reply.body);
        app.shutdown().await;
    });
}
