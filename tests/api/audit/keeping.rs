//! Keeping: append-only in the database, retention by whole partitions, the command line's
//! records, the client address behind trusted proxies.

use std::time::Duration;

use chrono::Datelike;
use dbtrail_servers::{
    config::DatabaseConfig,
    domain::{
        TenantId,
        audit::{Actor, AuditEvent, Outcome},
    },
    store::Store,
};

use super::*;
use crate::rest_common::Rest;
use dbtrail_servers::proto;

#[test]
fn the_database_refuses_to_update_or_delete_a_record() {
    block_on(async {
        let app = TestApp::start().await;
        let mut client = app.client();
        register(&mut client, direct_server("kept")).await;
        let before = stored_records(&app.db).await;
        assert!(!before.is_empty());
        let sql = app.db.connect().await;
        let partition = format!("audit_events_{}", chrono::Utc::now().format("%Y%m"));
        for statement in [
            "UPDATE audit_events SET outcome = 'OK', changes = '[]'".to_owned(),
            "DELETE FROM audit_events".to_owned(),
            "TRUNCATE audit_events".to_owned(),
            format!("UPDATE {partition} SET key_name = 'someone else'"),
            format!("DELETE FROM {partition}"),
            format!("TRUNCATE {partition}"),
        ] {
            let error = sql
                .batch_execute(&statement)
                .await
                .expect_err(&format!("{statement} was allowed"));
            let message = error
                .as_db_error()
                .map(|error| error.message().to_owned())
                .unwrap_or_default();
            assert!(message.contains("append-only"), "{statement}: {error:?}");
        }
        assert_eq!(stored_records(&app.db).await, before);
        app.shutdown().await;
    });
}

#[test]
fn retention_drops_only_partitions_wholly_older_than_it() {
    block_on(async {
        let db = std::sync::Arc::new(TestDatabase::create().await);
        let tenant = db.create_tenant("tenant-a", None).await;
        let store = Store::connect(&DatabaseConfig {
            database_url: Some(db.url.clone()),
            pool_size: 2,
            pool_timeout: Duration::from_secs(5),
            statement_timeout: Duration::from_secs(10),
        })
        .expect("Store::connect");
        let now = chrono::Utc::now();
        let retention = chrono::Duration::days(60);
        let cutoff = now - retention;
        // Recorded as the store records: 100 days ago (its month ended before the cutoff), at
        // the first instant of the cutoff's month (older than the retention, but its month is
        // not wholly so), and 10 days ago.
        let cutoff_month = cutoff
            .date_naive()
            .with_day(1)
            .and_then(|day| day.and_hms_opt(0, 0, 0))
            .expect("a month's start")
            .and_utc();
        let times = [
            now - chrono::Duration::days(100),
            cutoff_month,
            now - chrono::Duration::days(10),
        ];
        for (index, time) in times.iter().enumerate() {
            store
                .prepare_audit_partitions(*time, *time)
                .await
                .expect("the month's partition");
            let actor = Actor {
                tenant_id: TenantId::from_uuid(tenant.id),
                key_id: None,
                key_name: "import".into(),
                request_id: format!("old-{index}"),
                method: "UpdateServer".into(),
                client_address: None,
            };
            let mut event = AuditEvent::new(actor, None, Vec::new(), Outcome::ok());
            event.time = *time;
            store
                .record_audit_event(&event)
                .await
                .expect("an old record");
        }
        let month =
            |time: chrono::DateTime<chrono::Utc>| format!("audit_events_{}", time.format("%Y%m"));
        let partitions = store.audit_partitions().await.expect("partitions");
        for time in times {
            assert!(partitions.contains(&month(time)), "{partitions:?}");
        }

        // The replica's housekeeping runs at its start.
        let app = TestApp::start_on(
            db.clone(),
            tenant.clone(),
            ReplicaOptions {
                extra_args: vec!["--audit-retention".into(), "60days".into()],
                ..ReplicaOptions::default()
            },
        )
        .await;
        let expired = month(times[0]);
        wait_until(
            "the expired partition to go",
            Duration::from_secs(10),
            || async {
                !store
                    .audit_partitions()
                    .await
                    .expect("partitions")
                    .contains(&expired)
            },
        )
        .await;
        let partitions = store.audit_partitions().await.expect("partitions");
        for kept in [month(times[1]), month(times[2]), month(now)] {
            assert!(
                partitions.contains(&kept),
                "{kept} was dropped: {partitions:?}"
            );
        }
        let kept = audit_events(&mut app.client(), "method = UpdateServer").await;
        let ids: Vec<&str> = kept.iter().map(|e| e.request_id.as_str()).collect();
        assert_eq!(ids, ["old-2", "old-1"], "{kept:#?}");
        app.shutdown().await;
    });
}

#[test]
fn the_command_lines_key_and_tenant_changes_are_recorded() {
    block_on(async {
        let db = std::sync::Arc::new(TestDatabase::create().await);
        let env = [("DATABASE_URL", db.url.as_str())];
        run_cli(&["tenants", "create", "acme"], &env)
            .await
            .assert_success();
        let created = run_cli(
            &[
                "keys",
                "create",
                "--tenant",
                "acme",
                "--permissions",
                "servers:read,audit:read",
                "--name",
                "ci-key",
            ],
            &env,
        )
        .await;
        created.assert_success();
        let secret = created.stdout.trim().to_owned();
        let key_id = created
            .stderr
            .split_whitespace()
            .find_map(|word| uuid::Uuid::parse_str(word).ok())
            .expect("the new key's id");
        run_cli(&["keys", "revoke", &key_id.to_string()], &env)
            .await
            .assert_success();

        let tenant = db.admin().await;
        let reader = tenant
            .create_key("acme", &["audit:read"], Some("auditor"), None)
            .await
            .expect("a key to read with");
        let app = TestApp::start_on(
            db.clone(),
            Tenant {
                name: "acme".into(),
                id: uuid::Uuid::nil(),
                key: reader.secret.clone(),
            },
            ReplicaOptions::default(),
        )
        .await;
        let events = audit_events(&mut app.client(), "").await;
        let methods: Vec<&str> = events.iter().map(|e| e.method.as_str()).collect();
        assert_eq!(
            methods,
            [
                "CreateApiKey",
                "RevokeApiKey",
                "CreateApiKey",
                "CreateTenant"
            ],
            "{events:#?}"
        );
        let (created_by_cli, revoked) = (&events[2], &events[1]);
        for event in [created_by_cli, revoked, &events[3]] {
            assert!(event.key_id.is_empty(), "no key made the call: {event:#?}");
            assert!(
                event.key_name.starts_with("cli:"),
                "the command line and its OS user: {event:#?}"
            );
            assert!(event.client_address.is_empty());
            assert_eq!(event.outcome, "OK");
        }
        assert_eq!(created_by_cli.resource, format!("apiKeys/{key_id}"));
        assert_eq!(
            change(created_by_cli, "name"),
            (Value::Null, json!("ci-key"), String::new())
        );
        assert_eq!(
            change(created_by_cli, "permissions"),
            (
                Value::Null,
                json!(["servers:read", "audit:read"]),
                String::new()
            )
        );
        assert_eq!(revoked.resource, format!("apiKeys/{key_id}"));
        let (old, new, _) = change(revoked, "revoked_at");
        assert_eq!(old, Value::Null);
        assert!(
            new.as_str().is_some_and(|time| time.starts_with("20")),
            "{new}"
        );
        assert!(events[3].resource.starts_with("tenants/"));

        let stored = stored_records(&db).await;
        let body = &secret[4..];
        assert!(
            !stored.iter().any(|(_, text)| text.contains(body)),
            "the key is in the audit log"
        );
        app.shutdown().await;
    });
}

#[test]
fn trusted_proxies_decide_the_recorded_client_address() {
    block_on(async {
        // Behind a proxy on loopback: the right-most address it did not add is the client's.
        let app = TestApp::start_with(ReplicaOptions {
            extra_args: vec!["--trusted-proxies".into(), "127.0.0.0/8,10.0.0.0/8".into()],
            ..ReplicaOptions::default()
        })
        .await;
        let rest = Rest::new(&app);
        let reply = rest
            .exchange(
                rest.request(reqwest::Method::POST, "/servers")
                    .header("x-forwarded-for", "192.0.2.66, 198.51.100.7, 10.1.2.3")
                    .header("x-request-id", "via-proxy")
                    .json(&json!({
                        "name": "proxied", "host": "127.0.0.1", "mysql_user": "u",
                        "connection_method": "direct"
                    })),
            )
            .await;
        assert_eq!(reply.status, 201, "{}", reply.body);
        let mut grpc = with_request_id(
            proto::RegisterServerRequest {
                server: Some(direct_server("proxied-grpc")),
                ..Default::default()
            },
            "via-proxy-grpc",
        );
        grpc.metadata_mut()
            .insert("x-forwarded-for", "203.0.113.50".parse().expect("ASCII"));
        app.client()
            .register_server(grpc)
            .await
            .expect("RegisterServer");
        let events = audit_events(&mut app.client(), "").await;
        assert_eq!(
            the_event(&events, "via-proxy").client_address,
            "198.51.100.7"
        );
        assert_eq!(
            the_event(&events, "via-proxy-grpc").client_address,
            "203.0.113.50"
        );
        app.shutdown().await;

        // Without the flag the header is the client's own word: the peer is recorded.
        let app = TestApp::start().await;
        let rest = Rest::new(&app);
        let reply = rest
            .exchange(
                rest.request(reqwest::Method::POST, "/servers")
                    .header("x-forwarded-for", "198.51.100.7")
                    .header("x-request-id", "spoofed")
                    .json(&json!({
                        "name": "direct", "host": "127.0.0.1", "mysql_user": "u",
                        "connection_method": "direct"
                    })),
            )
            .await;
        assert_eq!(reply.status, 201, "{}", reply.body);
        let events = audit_events(&mut app.client(), "").await;
        assert_eq!(the_event(&events, "spoofed").client_address, "127.0.0.1");
        app.shutdown().await;

        // The flag is checked: a range of everything, or no range, does not start.
        for bad in ["0.0.0.0/0", "10.0.0.0/40", "proxy.internal"] {
            let output = run_cli(&["serve", "--trusted-proxies", bad], &[]).await;
            assert!(!output.status.success(), "--trusted-proxies {bad} started");
            assert!(
                output.stderr.contains("--trusted-proxies") && output.stderr.contains(bad),
                "{bad}: {}",
                output.stderr
            );
        }
    });
}
