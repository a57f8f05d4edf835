//! Fencing: a stale runner's fenced write changes nothing.
//!
//! `a_paused_replica_changes_nothing_after_its_leases_are_taken_over` checks it end to end: a
//! replica frozen with SIGSTOP while its runners hold leases is taken over, then thawed; its
//! runners' late writes must not land.
//!
//! `a_stale_runners_fenced_write_changes_nothing` checks it at the store: a claim whose lease was
//! taken over by a later claim writes, renews and assigns nothing.

use std::sync::Arc;
use std::time::Duration;

use crate::common::*;
use dbtrail_servers::proto::{OnboardingStep, StepStatus};

const SETTLE: Duration = Duration::from_secs(15);

#[test]
fn a_paused_replica_changes_nothing_after_its_leases_are_taken_over() {
    block_on(async {
        let db = Arc::new(TestDatabase::create().await);
        let tenant = db.create_tenant("tenant-a", None).await;
        let sql = db.connect().await;

        // Replica A (no capacity) claims the servers and keeps retrying provisioning.
        let replica_a_options = ReplicaOptions {
            agent_name: "agent-a".to_owned(),
            agent_capacity: 0,
            ..Default::default()
        };
        let replica_a = ServiceProcess::serve("replica-a", &db.url, &replica_a_options).await;
        let mut client_a = replica_a.client(&tenant.key).await;
        let servers = register_provisioning(
            &mut client_a,
            "fenced",
            2,
            "replica A to start provisioning",
        )
        .await;

        // Freeze A outside of any transaction, so that it holds no row lock while frozen.
        let mut attempts = 0;
        loop {
            replica_a.signal(libc::SIGSTOP);
            tokio::time::sleep(Duration::from_millis(100)).await;
            let in_transaction: i64 = sql
                .query_one(
                    "SELECT count(*) FROM pg_stat_activity
                 WHERE datname = current_database() AND pid <> pg_backend_pid()
                   AND state LIKE 'idle in transaction%'",
                    &[],
                )
                .await
                .expect("read pg_stat_activity")
                .get(0);
            if in_transaction == 0 {
                break;
            }
            attempts += 1;
            assert!(
                attempts < 50,
                "replica A is always frozen inside a transaction"
            );
            replica_a.signal(libc::SIGCONT);
            tokio::time::sleep(Duration::from_millis(30)).await;
        }

        // Replica B takes over once A's leases expire and moves the servers past provisioning.
        let replica_b = TestApp::start_on(
            db.clone(),
            tenant.clone(),
            ReplicaOptions {
                agent_name: "agent-b".to_owned(),
                agent_capacity: 10,
                ..Default::default()
            },
        )
        .await;
        let mut client_b = replica_b.client();
        let mut taken_over = Vec::new();
        for server in &servers {
            taken_over.push(
                wait_for_onboarding(
                    &client_b,
                    &server.server_id,
                    "replica B to take over",
                    SETTLE,
                    is_waiting_for_agent,
                )
                .await,
            );
        }

        // Thaw A: whatever its runners were about to write is fenced off.
        replica_a.signal(libc::SIGCONT);
        tokio::time::sleep(Duration::from_secs(3)).await;

        for (server, before) in servers.iter().zip(&taken_over) {
            let after = onboarding_status(&mut client_b, &server.server_id).await;
            assert!(
                is_waiting_for_agent(&after),
                "the thawed replica changed {after:#?}"
            );
            assert_eq!(
                step(&after, OnboardingStep::Provisioning),
                step(before, OnboardingStep::Provisioning),
                "the thawed replica rewrote provisioning"
            );
            // No revision after the takeover went back to provisioning.
            let (_, history) =
                replay_since(&mut client_b, &server.server_id, 0, after.revision).await;
            let completed_at = history
                .iter()
                .position(|message| {
                    step_status(message, OnboardingStep::Provisioning) == StepStatus::Completed
                })
                .expect("provisioning completed at some revision");
            for message in &history[completed_at..] {
                assert_eq!(
                    step_status(message, OnboardingStep::Provisioning),
                    StepStatus::Completed,
                    "a stale write reopened provisioning at revision {}",
                    message.revision
                );
            }
        }
        let agents = assigned_agents(&sql).await;
        assert_eq!(agents, vec!["agent-b"; 2]);
        replica_b.shutdown().await;
    });
}

/// The store-level fence: a runner whose lease was taken over (a higher epoch) writes nothing,
/// renews nothing and takes no agent slot; the runner holding the current epoch still can.
#[test]
fn a_stale_runners_fenced_write_changes_nothing() {
    block_on(async {
        use dbtrail_servers::config::DatabaseConfig;
        use dbtrail_servers::domain::{OnboardingStep as Step, ServerId};
        use dbtrail_servers::store::{Affinity, Lease, Scope, Store, StoreError};

        // A server stuck in provisioning (no capacity), so that it stays runnable; the replica
        // stops (releasing its lease) and the test plays the runners itself.
        let app = TestApp::start_with(ReplicaOptions {
            agent_capacity: 0,
            ..Default::default()
        })
        .await;
        let mut client = app.client();
        let server = register(&mut client, direct_server("fenced")).await;
        wait_provisioning(&client, &server.server_id, "provisioning in progress").await;
        let db = app.db.clone();
        app.shutdown().await;

        let store = Store::connect(&DatabaseConfig {
            database_url: Some(db.url.clone()),
            pool_size: 2,
            pool_timeout: Duration::from_secs(5),
            statement_timeout: Duration::from_secs(5),
        })
        .expect("Store::connect");
        let id = ServerId::from_uuid(uuid::Uuid::parse_str(&server.server_id).expect("a UUID"));

        // Runner 1 claims with a short lease, which expires; runner 2 takes over. (The server has
        // no agent yet: any agent's engine may claim it.)
        let affinity = Affinity {
            agent_id: uuid::Uuid::new_v4(),
            dead_after: Duration::from_secs(15),
            replaced_after: Duration::from_secs(300),
        };
        let stale_owner = uuid::Uuid::new_v4();
        let stale = store
            .claim_runnable(stale_owner, Duration::from_millis(300), affinity, &[id])
            .await
            .expect("claim 1");
        assert_eq!(stale.len(), 1, "the runnable server is claimed");
        let stale = stale[0];
        tokio::time::sleep(Duration::from_millis(600)).await;
        let current = store
            .claim_runnable(
                uuid::Uuid::new_v4(),
                Duration::from_secs(60),
                affinity,
                &[id],
            )
            .await
            .expect("claim 2");
        assert_eq!(current.len(), 1, "the expired lease is claimed again");
        let current = current[0];
        assert!(
            current.fence.epoch > stale.fence.epoch,
            "each claim grows the epoch"
        );

        let sql = db.connect().await;
        let id_text = id.uuid().to_string();
        let snapshot = || async {
            let row: String = sql
                .query_one(
                    "SELECT t::text FROM servers t WHERE id::text = $1",
                    &[&id_text],
                )
                .await
                .expect("read the server row")
                .get(0);
            let history: i64 = sql
                .query_one(
                    "SELECT count(*) FROM onboarding_history WHERE server_id::text = $1",
                    &[&id_text],
                )
                .await
                .expect("count history")
                .get(0);
            (row, history)
        };
        let before = snapshot().await;

        // The stale runner's writes are refused and change nothing.
        let write = store
            .modify_server(Scope::Runner(stale.fence), id, |server| {
                server.steps.fail(
                    Step::Provisioning,
                    "written by a stale runner",
                    chrono::Utc::now(),
                );
                Ok::<_, StoreError>(())
            })
            .await;
        assert!(
            matches!(write, Err(StoreError::Fenced)),
            "a stale runner's write must be fenced, got {:?}",
            write.map(|(server, _)| server.revision)
        );
        assert_eq!(
            store
                .renew_leases(Lease::Onboarding, &[stale], Duration::from_secs(60))
                .await
                .expect("a renewal"),
            Vec::new(),
            "a stale runner's lease must not be renewed"
        );
        assert!(matches!(
            store.assign_agent(stale, affinity.dead_after).await,
            Err(StoreError::Fenced)
        ));
        store
            .release_lease(Lease::Onboarding, stale)
            .await
            .expect("releasing a lost lease is a no-op");
        assert_eq!(
            snapshot().await,
            before,
            "a stale runner changed the server"
        );
        // The current runner's write goes through: the fence, not the write, refused the other.
        let (written, ()) = store
            .modify_server(Scope::Runner(current.fence), id, |server| {
                server.steps.fail(
                    Step::Provisioning,
                    "written by the current runner",
                    chrono::Utc::now(),
                );
                Ok::<_, StoreError>(())
            })
            .await
            .expect("the current runner writes");
        let (_, history_before) = before;
        let (_, history_after) = snapshot().await;
        assert_eq!(
            history_after,
            history_before + 1,
            "one revision, with its history row"
        );
        assert_eq!(written.revision, history_after);
    });
}
