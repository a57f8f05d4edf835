//! Two replicas on one database: a watch on one replica sees changes made through the other, a
//! replica killed with SIGKILL while holding leases is taken over within the lease TTL plus one
//! sweep, and a revoked key stops working on every replica within a second.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::*;
use dbtrail_servers::proto::{
    ConfirmFirewallRequest, DecommissionServerRequest, ListServersRequest, OnboardingStep,
    ServerStatus, StepStatus,
};
use tonic::Code;

const SETTLE: Duration = Duration::from_secs(15);
const NEXT: Duration = Duration::from_secs(10);

#[test]
fn a_watcher_on_one_replica_sees_changes_made_through_the_other() {
    block_on(async {
        let replica_a = TestApp::start().await;
        let replica_b = replica_a.replica(ReplicaOptions::default()).await;
        let mut client_a = replica_a.client();
        let mut client_b = replica_b.client();

        let server = register(&mut client_b, ssh_server("shared")).await;
        let waiting = awaiting_firewall(&client_a, &server.server_id).await;

        let mut watch = open_watch(&mut client_a, &server.server_id, None, false)
            .await
            .expect("WatchOnboarding on replica A");
        assert_eq!(watch.message(NEXT).await.revision, waiting.revision);

        client_b
            .confirm_firewall(ConfirmFirewallRequest {
                server_id: server.server_id.clone(),
            })
            .await
            .expect("ConfirmFirewall through replica B");
        let confirmed = watch.message(NEXT).await;
        assert_eq!(confirmed.revision, waiting.revision + 1);
        assert_eq!(
            step_status(&confirmed, OnboardingStep::AwaitingFirewall),
            StepStatus::Completed
        );
        let mut messages = vec![confirmed];
        if !is_waiting_for_agent(&messages[0]) {
            messages.extend(watch.messages_until(NEXT, is_waiting_for_agent).await);
        }
        assert_consecutive_revisions(&messages);

        client_b
            .decommission_server(DecommissionServerRequest {
                server_id: server.server_id.clone(),
                ..Default::default()
            })
            .await
            .expect("DecommissionServer through replica B");
        let last = watch.message(NEXT).await;
        assert_eq!(
            last.revision,
            messages.last().expect("messages").revision + 1
        );
        assert_eq!(last.server_status, ServerStatus::Decommissioned as i32);
        assert!(matches!(watch.next(NEXT).await, WatchEvent::Ended));

        replica_b.shutdown().await;
        replica_a.shutdown().await;
    });
}

#[test]
fn a_replica_killed_while_holding_leases_is_taken_over_within_ttl_plus_sweep() {
    block_on(async {
        let lease_ttl = Duration::from_secs(2);
        let sweep_interval = Duration::from_millis(500);
        let margin = Duration::from_secs(2);
        let options = |name: &str, capacity: u32| ReplicaOptions {
            agent_name: name.to_owned(),
            agent_capacity: capacity,
            lease_ttl: humantime_string(lease_ttl),
            sweep_interval: humantime_string(sweep_interval),
            ..Default::default()
        };

        let db = Arc::new(TestDatabase::create().await);
        let tenant = db.create_tenant("tenant-a", None).await;

        // Replica A has no capacity: it claims the servers and keeps retrying provisioning.
        let mut replica_a =
            ServiceProcess::serve("replica-a", &db.url, &options("agent-a", 0)).await;
        let mut client_a = replica_a.client(&tenant.key).await;
        let servers = register_provisioning(
            &mut client_a,
            "leased",
            3,
            "replica A to claim and start provisioning",
        )
        .await;
        let sql = db.connect().await;
        let leased: i64 = sql
            .query_one(
                "SELECT count(*) FROM servers WHERE lease_owner IS NOT NULL AND lease_expires_at > \
                 now()",
                &[],
            )
            .await
            .expect("count leases")
            .get(0);
        assert_eq!(leased, 3, "replica A holds a live lease on each server");

        tokio::time::sleep(Duration::from_secs(1)).await;
        for server in &servers {
            let status = onboarding_status(&mut client_a, &server.server_id).await;
            assert_eq!(
                status.current_step,
                Some(OnboardingStep::Provisioning as i32),
                "without capacity, provisioning does not complete: {status:#?}"
            );
        }

        replica_a.kill().await;
        let killed_at = Instant::now();

        // Replica B has capacity; it must take the servers over once A's leases expire.
        let replica_b = ServiceProcess::serve("replica-b", &db.url, &options("agent-b", 10)).await;
        let ready_at = Instant::now();
        let client_b = replica_b.client(&tenant.key).await;
        let budget = lease_ttl + sweep_interval + margin;
        for server in &servers {
            let remaining = budget.saturating_sub(ready_at.elapsed());
            wait_for_onboarding(
                &client_b,
                &server.server_id,
                "replica B to take over and finish provisioning within TTL + sweep",
                remaining,
                |status| step_status(status, OnboardingStep::Provisioning) == StepStatus::Completed,
            )
            .await;
        }
        eprintln!(
            "taken over {:?} after the kill, {:?} after replica B was ready",
            killed_at.elapsed(),
            ready_at.elapsed()
        );
        // Past awaiting_firewall too (replica B runs the MySQL steps, which may then fail: these
        // servers' credentials are made up).
        for server in &servers {
            wait_for_onboarding(
                &client_b,
                &server.server_id,
                "awaiting_firewall to complete",
                SETTLE,
                is_past_firewall,
            )
            .await;
        }
        let agents = assigned_agents(&sql).await;
        assert_eq!(
            agents,
            vec!["agent-b"; 3],
            "the servers went to replica B's agent"
        );
    });
}

fn humantime_string(duration: Duration) -> String {
    format!("{}ms", duration.as_millis())
}

#[test]
fn a_revoked_key_stops_working_on_every_replica_within_a_second() {
    block_on(async {
        let replica_a = TestApp::start().await;
        let replica_b = replica_a.replica(ReplicaOptions::default()).await;
        let key = replica_a.key_with(&["servers:read"]).await;
        let mut client_a = replica_a.client_with_key(&key.secret);
        let mut client_b = replica_b.client_with_key(&key.secret);
        // Both replicas have seen (and may cache) the key.
        for client in [&mut client_a, &mut client_b] {
            client
                .list_servers(ListServersRequest::default())
                .await
                .expect("the key works before revocation");
        }

        replica_a.db.revoke_key(key.id).await;
        let revoked_at = Instant::now();
        let mut rejected = [None, None];
        while rejected.iter().any(Option::is_none) && revoked_at.elapsed() < Duration::from_secs(3)
        {
            for (index, client) in [&mut client_a, &mut client_b].into_iter().enumerate() {
                if rejected[index].is_none()
                    && let Err(status) = client.list_servers(ListServersRequest::default()).await
                {
                    assert_error(&status, Code::Unauthenticated, "API_KEY_REVOKED");
                    rejected[index] = Some(revoked_at.elapsed());
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // One second, plus a little for this loop's own polling.
        for (replica, elapsed) in ["A", "B"].iter().zip(rejected) {
            let elapsed = elapsed.unwrap_or_else(|| {
                panic!("replica {replica} still accepts the revoked key after 3 s")
            });
            assert!(
                elapsed <= Duration::from_millis(1100),
                "replica {replica} accepted the revoked key for {elapsed:?}"
            );
        }
        replica_b.shutdown().await;
        replica_a.shutdown().await;
    });
}
