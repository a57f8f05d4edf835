//! The examples, run against a live service: `examples/watch.rs` (the crate's generated client)
//! and `examples/python/client.py` (stubs generated from `proto/` by grpcio-tools, here and now).
//! Each registers an SSH-tunnel server, follows its watch, confirms the firewall when asked and
//! stops once onboarding has moved past it.

#[path = "../../examples/watch.rs"]
mod watch_example;

use std::path::Path;
use std::time::Duration;

use crate::common::*;
use dbtrail_servers::proto::{OnboardingStep, StepStatus};

/// Checks what an example printed and that the service holds what it did.
async fn assert_confirmed_through_the_firewall(app: &TestApp, printed: &str, name: &str) {
    assert!(
        printed.contains(&format!("registered {name} as ")),
        "{printed}"
    );
    assert!(
        printed.contains(&format!("allowing {AGENT_OUTBOUND_IP} on the jumphost")),
        "{printed}"
    );
    assert!(
        printed.contains("ONBOARDING_STEP_WAITING_FOR_AGENT"),
        "{printed}"
    );
    let id = printed
        .lines()
        .find_map(|line| line.strip_prefix(&format!("registered {name} as ")))
        .expect("the registered id")
        .trim()
        .to_owned();
    let status = onboarding_status(&mut app.client(), &id).await;
    assert_eq!(
        step_status(&status, OnboardingStep::AwaitingFirewall),
        StepStatus::Completed,
        "{status:#?}"
    );
}

fn write_key(dir: &Path) -> std::path::PathBuf {
    let path = dir.join("bastion.key");
    std::fs::write(&path, TEST_PRIVATE_KEY).expect("write the example's key");
    path
}

#[test]
fn the_rust_example_registers_watches_and_confirms() {
    block_on(async {
        let app = TestApp::start().await;
        let target = watch_example::Target {
            name: "rust-example".into(),
            mysql_host: "db.internal.example".into(),
            mysql_user: "bintrail".into(),
            mysql_password: "example-password".into(),
            jumphost: "bastion.example.com".into(),
            jumphost_user: "ec2-user".into(),
            private_key: TEST_PRIVATE_KEY.into(),
        };
        let mut printed = Vec::new();
        tokio::time::timeout(
            Duration::from_secs(30),
            watch_example::run(
                &format!("http://{}", app.grpc_addr),
                &app.tenant.key,
                target,
                Some(OnboardingStep::WaitingForAgent),
                &mut printed,
            ),
        )
        .await
        .expect("the example finishes within 30 s")
        .expect("the example succeeds");
        let printed = String::from_utf8(printed).expect("text");
        assert_confirmed_through_the_firewall(&app, &printed, "rust-example").await;
        app.shutdown().await;
    });
}

#[test]
fn the_python_example_registers_watches_and_confirms() {
    block_on(async {
        let app = TestApp::start().await;
        let dir = tempfile::tempdir().expect("a directory for the stubs");
        let generated = dir.path().join("gen");
        std::fs::create_dir(&generated).expect("the stubs' directory");
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let protoc = tokio::process::Command::new("python3")
            .current_dir(root)
            .args(["-m", "grpc_tools.protoc", "-I", "proto"])
            .arg(format!("--python_out={}", generated.display()))
            .arg(format!("--grpc_python_out={}", generated.display()))
            .args([
                "proto/dbtrail/servers/v1/servers.proto",
                "proto/google/api/annotations.proto",
                "proto/google/api/http.proto",
                "proto/google/api/field_behavior.proto",
                "proto/google/api/httpbody.proto",
            ])
            .output()
            .await
            .expect("python3 -m grpc_tools.protoc (scripts/test installs grpcio-tools)");
        assert!(
            protoc.status.success(),
            "grpc_tools.protoc: {}",
            String::from_utf8_lossy(&protoc.stderr)
        );
        let key_file = write_key(dir.path());
        let client = tokio::process::Command::new("python3")
            .current_dir(root)
            .arg("examples/python/client.py")
            .args([
                "python-example",
                "db.internal.example",
                "bastion.example.com",
            ])
            .args(["--stop-at", "ONBOARDING_STEP_WAITING_FOR_AGENT"])
            .env("PYTHONPATH", &generated)
            .env("DBTRAIL_GRPC", app.grpc_addr.to_string())
            .env("DBTRAIL_KEY", &app.tenant.key)
            .env("DBTRAIL_SSH_KEY_FILE", &key_file)
            .env("MYSQL_PASSWORD", "example-password")
            .kill_on_drop(true)
            .output();
        let output = tokio::time::timeout(Duration::from_secs(60), client)
            .await
            .expect("the Python example finishes within 60 s")
            .expect("run python3");
        let printed = String::from_utf8_lossy(&output.stdout).into_owned();
        assert!(
            output.status.success(),
            "{}\n{printed}{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
        assert_confirmed_through_the_firewall(&app, &printed, "python-example").await;
        app.shutdown().await;
    });
}
