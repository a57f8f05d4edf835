//! Onboarding through the public API and WatchOnboarding: the exact revisions of a registration,
//! the SSH-tunnel firewall step, replay, decommission and shutdown.

use std::time::Duration;

use crate::common::*;
use dbtrail_servers::proto::{
    self, ConfirmFirewallRequest, DecommissionServerRequest, OnboardingStatus, OnboardingStep,
    ServerStatus, StepStatus,
};
use tonic::Code;
use tonic_types::StatusExt;

const SETTLE: Duration = Duration::from_secs(15);
const NEXT: Duration = Duration::from_secs(10);

fn statuses(status: &OnboardingStatus) -> Vec<StepStatus> {
    STEPS
        .iter()
        .map(|which| step_status(status, *which))
        .collect()
}

#[track_caller]
fn assert_well_formed(messages: &[OnboardingStatus], server_id: &str) {
    for message in messages {
        assert_eq!(message.server_id, server_id);
        assert_six_steps_in_order(message);
        assert_outbound_ip_invariant(message);
    }
}

#[test]
fn registration_history_is_one_revision_per_transition() {
    block_on(async {
        let app = TestApp::start().await;
        let mut client = app.client();
        let (id, settled) = register_and_settle(&mut client, direct_server("history")).await;

        let (mut watch, history) = replay_since(&mut client, &id, 0, settled.revision).await;
        assert_eq!(
            history[0].revision, 1,
            "replay after revision 0 starts at revision 1"
        );
        assert_well_formed(&history, &id);
        use StepStatus::{Completed, InProgress, Pending};

        // 1: the registration.
        assert_eq!(statuses(&history[0]), vec![Pending; 6]);
        assert_eq!(
            history[0].current_step,
            Some(OnboardingStep::Provisioning as i32)
        );
        assert_eq!(history[0].server_status, ServerStatus::Pending as i32);
        // 2: the runner starts provisioning.
        assert_eq!(
            statuses(&history[1]),
            vec![InProgress, Pending, Pending, Pending, Pending, Pending]
        );
        assert_eq!(
            history[1].current_step,
            Some(OnboardingStep::Provisioning as i32)
        );
        // 3: provisioning completes and awaiting_firewall starts, in one revision.
        assert_eq!(
            statuses(&history[2]),
            vec![Completed, InProgress, Pending, Pending, Pending, Pending]
        );
        assert_eq!(
            history[2].current_step,
            Some(OnboardingStep::AwaitingFirewall as i32)
        );
        assert_eq!(
            history[2].agent_outbound_ip.as_deref(),
            Some(AGENT_OUTBOUND_IP),
            "agent_outbound_ip is set while current_step is awaiting_firewall, direct servers too"
        );
        // 4: awaiting_firewall auto-completes and waiting_for_agent starts, in one revision.
        assert_eq!(
            statuses(&history[3]),
            vec![Completed, Completed, InProgress, Pending, Pending, Pending]
        );
        assert_eq!(
            history[3].current_step,
            Some(OnboardingStep::WaitingForAgent as i32)
        );
        assert!(
            step(&history[3], OnboardingStep::AwaitingFirewall)
                .message
                .contains("auto-completed")
        );
        // Then it waits, saying why.
        let last = history.last().expect("a settled revision");
        assert!(is_waiting_for_agent(last), "{last:#?}");
        assert_eq!(last, &settled, "the replay ends with the current status");
        for message in &history {
            assert_eq!(message.server_status, ServerStatus::Pending as i32);
            assert_eq!(message.error, None);
        }

        // Attempts and timestamps of completed steps.
        let provisioning = step(last, OnboardingStep::Provisioning);
        assert!(provisioning.attempts >= 1);
        assert!(provisioning.started_at.is_some() && provisioning.completed_at.is_some());
        let waiting = step(last, OnboardingStep::WaitingForAgent);
        assert!(waiting.started_at.is_some() && waiting.completed_at.is_none());

        // The pending server keeps the stream open: nothing more arrives.
        assert!(matches!(
            watch.next(Duration::from_millis(500)).await,
            WatchEvent::TimedOut
        ));
        app.shutdown().await;
    });
}

#[test]
fn a_watch_opened_at_registration_receives_every_revision_in_order() {
    block_on(async {
        let app = TestApp::start().await;
        let mut client = app.client();
        let server = register(&mut client, ssh_server("watched")).await;
        let mut watch = open_watch(&mut client, &server.server_id, None, false)
            .await
            .expect("WatchOnboarding");

        // The first message is the current status, then one per revision up to the firewall wait.
        let first = watch.message(NEXT).await;
        let mut live = vec![first];
        if !is_awaiting_firewall(&live[0]) {
            live.extend(watch.messages_until(NEXT, is_awaiting_firewall).await);
        }
        client
            .confirm_firewall(ConfirmFirewallRequest {
                server_id: server.server_id.clone(),
            })
            .await
            .expect("ConfirmFirewall");
        live.extend(watch.messages_until(NEXT, is_waiting_for_agent).await);
        assert_consecutive_revisions(&live);
        assert_well_formed(&live, &server.server_id);

        // The same revisions replayed from the history are identical.
        let last_revision = live.last().expect("messages").revision;
        let (_, history) = replay_since(&mut client, &server.server_id, 0, last_revision).await;
        let replayed: Vec<&OnboardingStatus> = history
            .iter()
            .filter(|message| message.revision >= live[0].revision)
            .collect();
        assert_eq!(replayed.len(), live.len());
        for (live, replayed) in live.iter().zip(replayed) {
            assert_eq!(live, replayed, "a live message differs from its replay");
        }
        app.shutdown().await;
    });
}

#[test]
fn a_watch_since_revision_one_replays_the_history_then_follows() {
    block_on(async {
        let app = TestApp::start().await;
        let mut client = app.client();
        let (id, settled) = register_and_settle(&mut client, direct_server("replayed")).await;

        let (mut watch, replayed) = replay_since(&mut client, &id, 1, settled.revision).await;
        assert_eq!(
            replayed[0].revision, 2,
            "revisions after 1, starting with 2"
        );
        assert_eq!(replayed.len() as i64, settled.revision - 1);
        assert_well_formed(&replayed, &id);

        // Then the live change: a decommission, the final message, and the end of the stream.
        client
            .decommission_server(DecommissionServerRequest {
                server_id: id.clone(),
                ..Default::default()
            })
            .await
            .expect("DecommissionServer");
        let last = watch.message(NEXT).await;
        assert_eq!(last.revision, settled.revision + 1);
        assert_eq!(last.server_status, ServerStatus::Decommissioned as i32);
        assert!(matches!(watch.next(NEXT).await, WatchEvent::Ended));
        app.shutdown().await;
    });
}

#[test]
fn ssh_tunnel_waits_for_the_firewall_until_confirmed() {
    block_on(async {
        let app = TestApp::start().await;
        let mut client = app.client();
        let (id, waiting) = register_and_settle(&mut client, ssh_server("behind-bastion")).await;
        assert_eq!(
            waiting.agent_outbound_ip.as_deref(),
            Some(AGENT_OUTBOUND_IP)
        );
        assert_eq!(
            step_status(&waiting, OnboardingStep::Provisioning),
            StepStatus::Completed
        );
        assert_eq!(waiting.server_status, ServerStatus::Pending as i32);
        assert_eq!(
            get_server(&mut client, &id).await.onboarding_step,
            Some(OnboardingStep::AwaitingFirewall as i32)
        );

        // It stays there.
        tokio::time::sleep(Duration::from_millis(700)).await;
        let still = onboarding_status(&mut client, &id).await;
        assert_eq!(
            still.revision, waiting.revision,
            "nothing moves before ConfirmFirewall"
        );

        let mut watch = open_watch(&mut client, &id, None, false)
            .await
            .expect("WatchOnboarding");
        assert_eq!(
            watch.message(NEXT).await,
            waiting,
            "the watch starts with the current status"
        );

        let confirmed = client
            .confirm_firewall(ConfirmFirewallRequest {
                server_id: id.clone(),
            })
            .await
            .expect("ConfirmFirewall")
            .into_inner();
        assert_eq!(confirmed.status, "confirmed");

        let next = watch.message(NEXT).await;
        assert_eq!(next.revision, waiting.revision + 1);
        assert_eq!(
            step_status(&next, OnboardingStep::AwaitingFirewall),
            StepStatus::Completed
        );
        assert_eq!(
            next.agent_outbound_ip, None,
            "no IP once past awaiting_firewall"
        );
        let mut rest = vec![next];
        if !is_waiting_for_agent(&rest[0]) {
            rest.extend(watch.messages_until(NEXT, is_waiting_for_agent).await);
        }
        assert_consecutive_revisions(&rest);
        assert_well_formed(&rest, &id);

        // A second confirmation is refused, and says why.
        let status = expect_err(
            client
                .confirm_firewall(ConfirmFirewallRequest {
                    server_id: id.clone(),
                })
                .await,
        );
        assert_error(&status, Code::FailedPrecondition, "NOT_AWAITING_FIREWALL");
        let failure = status
            .get_details_precondition_failure()
            .expect("a PreconditionFailure detail");
        assert!(
            !failure.violations.is_empty(),
            "the PreconditionFailure names a violation"
        );
        app.shutdown().await;
    });
}

#[test]
fn confirm_firewall_of_a_direct_server_is_refused() {
    block_on(async {
        let app = TestApp::start().await;
        let mut client = app.client();
        let server = register(&mut client, direct_server("plain")).await;
        let status = expect_err(
            client
                .confirm_firewall(ConfirmFirewallRequest {
                    server_id: server.server_id.clone(),
                })
                .await,
        );
        assert_error(&status, Code::FailedPrecondition, "NOT_SSH_TUNNEL");
        let failure = status
            .get_details_precondition_failure()
            .expect("a PreconditionFailure detail");
        assert!(!failure.violations.is_empty());
        app.shutdown().await;
    });
}

#[test]
fn a_watch_of_an_unknown_or_foreign_server_is_not_found() {
    block_on(async {
        let app = TestApp::start().await;
        let mut client = app.client();
        let status = watch_error(&mut client, &uuid::Uuid::new_v4().to_string()).await;
        assert_error(&status, Code::NotFound, "SERVER_NOT_FOUND");

        let other = app.other_tenant("tenant-b").await;
        let mut other_client = app.client_with_key(&other.key);
        let foreign = register(&mut other_client, direct_server("theirs")).await;
        let status = watch_error(&mut client, &foreign.server_id).await;
        assert_error(&status, Code::NotFound, "SERVER_NOT_FOUND");
        // With since_revision as well.
        let status = match open_watch(&mut client, &foreign.server_id, Some(0), false).await {
            Err(status) => status,
            Ok(mut watch) => match watch.next(NEXT).await {
                WatchEvent::Error(status) => status,
                other => panic!("a foreign watch with since_revision gave {other:?}"),
            },
        };
        assert_error(&status, Code::NotFound, "SERVER_NOT_FOUND");
        app.shutdown().await;
    });
}

#[test]
fn a_decommission_ends_a_watch_with_a_final_message() {
    block_on(async {
        let app = TestApp::start().await;
        let mut client = app.client();
        let (id, waiting) = register_and_settle(&mut client, ssh_server("short-lived")).await;
        let mut watch = open_watch(&mut client, &id, None, false)
            .await
            .expect("WatchOnboarding");
        let mut following = open_watch(&mut client, &id, None, true)
            .await
            .expect("WatchOnboarding follow");
        assert_eq!(watch.message(NEXT).await.revision, waiting.revision);
        assert_eq!(following.message(NEXT).await.revision, waiting.revision);

        client
            .decommission_server(DecommissionServerRequest {
                server_id: id.clone(),
                ..Default::default()
            })
            .await
            .expect("DecommissionServer");

        let last = watch.message(NEXT).await;
        assert_eq!(last.revision, waiting.revision + 1);
        assert_eq!(last.server_status, ServerStatus::Decommissioned as i32);
        assert_eq!(last.current_step, None);
        assert_eq!(last.agent_outbound_ip, None);
        assert!(
            matches!(watch.next(NEXT).await, WatchEvent::Ended),
            "the watch ends after the decommissioned message"
        );

        // follow keeps the stream open past the final status.
        let last = following.message(NEXT).await;
        assert_eq!(last.server_status, ServerStatus::Decommissioned as i32);
        assert!(matches!(
            following.next(Duration::from_millis(700)).await,
            WatchEvent::TimedOut
        ));

        // A new watch of the decommissioned server sends its status once and ends.
        let mut late = open_watch(&mut client, &id, None, false)
            .await
            .expect("WatchOnboarding of a decommissioned server");
        assert_eq!(
            late.message(NEXT).await.server_status,
            ServerStatus::Decommissioned as i32
        );
        assert!(matches!(late.next(NEXT).await, WatchEvent::Ended));
        app.shutdown().await;
    });
}

#[test]
fn shutdown_ends_open_watches_with_unavailable() {
    block_on(async {
        let app = TestApp::start().await;
        let mut client = app.client();
        let server = register(&mut client, ssh_server("until-shutdown")).await;
        let mut watch = open_watch(&mut client, &server.server_id, None, false)
            .await
            .expect("WatchOnboarding");
        watch.message(NEXT).await;
        let shutdown = tokio::spawn(app.shutdown());
        loop {
            match watch.next(Duration::from_secs(12)).await {
                WatchEvent::Message(_) => continue,
                WatchEvent::Error(status) => {
                    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
                    break;
                }
                other => panic!("expected the watch to end with UNAVAILABLE, got {other:?}"),
            }
        }
        shutdown.await.expect("shutdown task");
    });
}

#[test]
fn provisioning_waits_for_capacity_and_decommission_frees_the_slot() {
    block_on(async {
        let app = TestApp::start_with(ReplicaOptions {
            agent_capacity: 1,
            ..Default::default()
        })
        .await;
        let mut client = app.client();
        let (first_id, _) = register_and_settle(&mut client, direct_server("first")).await;

        let second = register(&mut client, direct_server("second")).await;
        let blocked =
            wait_provisioning(&client, &second.server_id, "provisioning in progress").await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        let still = onboarding_status(&mut client, &second.server_id).await;
        assert_eq!(
            step_status(&still, OnboardingStep::Provisioning),
            StepStatus::InProgress,
            "no capacity: provisioning stays in progress: {still:#?}"
        );
        assert!(
            !step(&still, OnboardingStep::Provisioning)
                .message
                .is_empty(),
            "provisioning says why it waits: {still:#?}"
        );
        assert_eq!(still.server_status, ServerStatus::Pending as i32);
        assert_eq!(
            still.current_step,
            Some(OnboardingStep::Provisioning as i32)
        );
        assert!(blocked.revision <= still.revision);

        client
            .decommission_server(DecommissionServerRequest {
                server_id: first_id.clone(),
                ..Default::default()
            })
            .await
            .expect("DecommissionServer");
        wait_for_onboarding(
            &client,
            &second.server_id,
            "waiting_for_agent once the slot is free",
            SETTLE,
            is_waiting_for_agent,
        )
        .await;
        app.shutdown().await;
    });
}

#[test]
fn server_and_status_agree_on_the_current_step() {
    block_on(async {
        let app = TestApp::start().await;
        let mut client = app.client();
        let (id, status) = register_and_settle(&mut client, ssh_server("agreeing")).await;
        let fetched: proto::Server = get_server(&mut client, &id).await;
        assert_eq!(fetched.onboarding_step, status.current_step);
        assert_eq!(fetched.status, status.server_status);
        app.shutdown().await;
    });
}

/// History retention: revisions older than --history-retention are forgotten (the newest stays);
/// a watch from before them is OUT_OF_RANGE / REVISION_COMPACTED with where to resume, and a watch
/// from there works.
#[test]
fn a_watch_from_a_compacted_revision_is_out_of_range_with_where_to_resume() {
    block_on(async {
        let app = TestApp::start_with(ReplicaOptions {
            extra_args: vec!["--history-retention".to_owned(), "1s".to_owned()],
            ..ReplicaOptions::default()
        })
        .await;
        let mut client = app.client();
        let server = register(&mut client, ssh_server("compacted")).await;
        let id = server.server_id.clone();
        let current = wait_for_onboarding(
            &client,
            &id,
            "awaiting_firewall",
            Duration::from_secs(15),
            is_awaiting_firewall,
        )
        .await
        .revision;
        assert!(current >= 3, "a few revisions to compact: {current}");
        // Revisions go as they age past the retention; the newest always stays. Once all but the
        // newest are old, a watch from 0 is told to resume from current - 1.
        wait_until(
            "the history to be compacted to its newest revision",
            Duration::from_secs(15),
            || {
                let mut client = client.clone();
                let id = id.clone();
                async move {
                    match open_watch(&mut client, &id, Some(0), false).await {
                        Err(status) => resume_from(&status) == Some(current - 1),
                        Ok(_) => false,
                    }
                }
            },
        )
        .await;
        let Err(status) = open_watch(&mut client, &id, Some(0), false).await else {
            panic!("a watch from revision 0 was opened after compaction");
        };
        assert_error(&status, Code::OutOfRange, "REVISION_COMPACTED");
        assert_eq!(resume_from(&status), Some(current - 1));
        assert!(
            status
                .message()
                .contains(&format!("since_revision={}", current - 1))
        );
        let mut resumed = open_watch(&mut client, &id, Some(current - 1), true)
            .await
            .expect("a watch from where it said to resume");
        match resumed.next(Duration::from_secs(10)).await {
            WatchEvent::Message(first) => assert_eq!(first.revision, current),
            other => panic!("expected revision {current}, got {other:?}"),
        }
        app.shutdown().await;
    });
}

/// Provisioning with no free agent slot says so once: its retries write no revision (a watcher
/// is not sent the same message every 30 s forever), and it completes once an agent has room.
#[test]
fn provisioning_without_capacity_says_so_once_and_completes_when_an_agent_has_room() {
    block_on(async {
        let app = TestApp::start_with(ReplicaOptions {
            agent_capacity: 0,
            ..Default::default()
        })
        .await;
        let mut client = app.client();
        let id = register(&mut client, direct_server("no-room"))
            .await
            .server_id;
        let waiting = wait_for_onboarding(
            &client,
            &id,
            "provisioning to wait for a slot",
            Duration::from_secs(10),
            |status| {
                step(status, OnboardingStep::Provisioning).message
                    == "no agent has free capacity; waiting for a slot"
            },
        )
        .await;
        // Retries at 0.5, 1 and 2 s would each have written a revision.
        tokio::time::sleep(Duration::from_secs(4)).await;
        let later = onboarding_status(&mut client, &id).await;
        assert_eq!(later.revision, waiting.revision, "{later:#?}");
        assert_eq!(
            later.current_step,
            Some(OnboardingStep::Provisioning as i32)
        );

        let roomy = app.replica(ReplicaOptions::default()).await;
        wait_for_onboarding(
            &client,
            &id,
            "provisioning to complete on the agent with room",
            Duration::from_secs(30),
            is_waiting_for_agent,
        )
        .await;
        roomy.shutdown().await;
        app.shutdown().await;
    });
}
