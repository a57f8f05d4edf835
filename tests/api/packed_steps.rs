//! A server's steps are read from `steps_packed`, the text array PostgreSQL derives from the
//! `steps` jsonb (migration 000014): every field of every step reads back as the JSON says,
//! escapes, nulls, warnings and timestamps included.

use crate::common::*;
use chrono::{DateTime, Utc};
use dbtrail_servers::proto::{OnboardingStep, StepStatus};

/// `time` as the protobuf Timestamp the API answers.
fn timestamp(time: &str) -> prost_types::Timestamp {
    let time: DateTime<Utc> = time.parse().expect("a timestamp");
    prost_types::Timestamp {
        seconds: time.timestamp(),
        nanos: time.timestamp_subsec_nanos() as i32,
    }
}

#[test]
fn steps_read_back_as_their_json_says() {
    block_on(async {
        let app = TestApp::start().await;
        let mut client = app.client();
        let server = register(&mut client, ssh_server("packed-steps")).await;
        awaiting_firewall(&client, &server.server_id).await;
        let message = "allow 192.0.2.1 \"quoted\", back\\slash, tab\t, é ✓";
        let steps = serde_json::json!([
            {"name": "provisioning", "status": "completed",
             "started_at": "2026-12-05T14:13:16.123456Z", "completed_at": "2026-12-05T14:13:17Z",
             "message": "done", "error": null, "attempts": 2,
             "warnings": ["sync_binlog is 0: SET GLOBAL sync_binlog = 1", "w,{2}"]},
            {"name": "awaiting_firewall", "status": "in_progress",
             "started_at": "2026-12-05T14:13:17.000001Z", "completed_at": null,
             "message": message, "error": "refused \"twice\"", "attempts": 1},
            {"name": "waiting_for_agent", "status": "pending", "started_at": null,
             "completed_at": null, "message": "", "error": null, "attempts": 0},
            {"name": "initializing", "status": "pending", "started_at": null,
             "completed_at": null, "message": "", "error": null, "attempts": 0, "warnings": []},
            {"name": "snapshotting", "status": "pending", "started_at": null,
             "completed_at": null, "message": "", "error": null, "attempts": 0},
            {"name": "streaming", "status": "pending", "started_at": null,
             "completed_at": null, "message": "", "error": null, "attempts": 0},
        ]);
        let sql = app.db.connect().await;
        sql.execute(
            "UPDATE servers SET steps = $1::text::jsonb WHERE id = $2::text::uuid",
            &[&steps.to_string(), &server.server_id],
        )
        .await
        .expect("write the steps");

        let status = onboarding_status(&mut client, &server.server_id).await;
        assert_six_steps_in_order(&status);
        let provisioning = step(&status, OnboardingStep::Provisioning);
        assert_eq!(provisioning.status, StepStatus::Completed as i32);
        assert_eq!(
            provisioning.started_at,
            Some(timestamp("2026-12-05T14:13:16.123456Z"))
        );
        assert_eq!(
            provisioning.completed_at,
            Some(timestamp("2026-12-05T14:13:17Z"))
        );
        assert_eq!(provisioning.message, "done");
        assert_eq!(provisioning.error, None);
        assert_eq!(provisioning.attempts, 2);
        assert_eq!(
            provisioning.warnings,
            ["sync_binlog is 0: SET GLOBAL sync_binlog = 1", "w,{2}"]
        );
        let firewall = step(&status, OnboardingStep::AwaitingFirewall);
        assert_eq!(firewall.status, StepStatus::InProgress as i32);
        assert_eq!(
            firewall.started_at,
            Some(timestamp("2026-12-05T14:13:17.000001Z"))
        );
        assert_eq!(firewall.completed_at, None);
        assert_eq!(firewall.message, message);
        assert_eq!(firewall.error.as_deref(), Some("refused \"twice\""));
        assert_eq!(firewall.attempts, 1);
        assert!(firewall.warnings.is_empty());
        for later in &status.steps[2..] {
            assert_eq!(later.status, StepStatus::Pending as i32, "{later:?}");
            assert_eq!(
                (later.started_at, later.message.as_str(), later.attempts),
                (None, "", 0)
            );
            assert!(
                later.error.is_none() && later.warnings.is_empty(),
                "{later:?}"
            );
        }
        let read = get_server(&mut client, &server.server_id).await;
        assert_eq!(
            read.onboarding_step,
            Some(OnboardingStep::AwaitingFirewall as i32)
        );
    });
}
