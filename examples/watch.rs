//! Calling dbtrail-servers from Rust with the crate's generated client: register an SSH-tunnel
//! server, follow its onboarding with WatchOnboarding, confirm the firewall when the service asks
//! for it, and print every revision until the server is active or in error.
//!
//! ```sh
//! DBTRAIL_KEY=dbt_... DBTRAIL_SSH_KEY_FILE=~/.ssh/bastion \
//!   cargo run --example watch -- orders-db db.internal.example bastion.example.com
//! ```
//!
//! `DBTRAIL_GRPC` is the service's address (default `http://localhost:50051`), the MySQL user and
//! password come from `MYSQL_USER` / `MYSQL_PASSWORD` (default `bintrail` / empty).

use std::{error::Error, io::Write};

use dbtrail_servers::proto::{
    ConfirmFirewallRequest, ConnectionMethod, OnboardingStatus, OnboardingStep,
    RegisterServerRequest, Server, ServerStatus, SshTunnel, WatchOnboardingRequest,
    servers_service_client::ServersServiceClient,
};
use tonic::{Request, metadata::MetadataValue, transport::Endpoint};

/// Errors of the example, printable and sendable.
pub type ExampleError = Box<dyn Error + Send + Sync>;

/// What to register.
pub struct Target {
    pub name: String,
    pub mysql_host: String,
    pub mysql_user: String,
    pub mysql_password: String,
    pub jumphost: String,
    pub jumphost_user: String,
    pub private_key: String,
}

/// Registers `target` at `endpoint` with API key `key`, confirms its firewall when asked, and
/// writes one line per revision to `out` until the server is active or in error, or its
/// onboarding reaches `stop_at`. Returns the server's id.
pub async fn run(
    endpoint: &str,
    key: &str,
    target: Target,
    stop_at: Option<OnboardingStep>,
    out: &mut (dyn Write + Send),
) -> Result<String, ExampleError> {
    let channel = Endpoint::from_shared(endpoint.to_owned())?
        .connect()
        .await?;
    let bearer: MetadataValue<_> = format!("Bearer {key}").parse()?;
    let mut client =
        ServersServiceClient::with_interceptor(channel, move |mut request: Request<()>| {
            request
                .metadata_mut()
                .insert("authorization", bearer.clone());
            Ok(request)
        });

    let server = client
        .register_server(RegisterServerRequest {
            server: Some(Server {
                name: target.name,
                host: target.mysql_host,
                port: 3306,
                mysql_user: target.mysql_user,
                mysql_password: target.mysql_password,
                connection_method: ConnectionMethod::SshTunnel as i32,
                ssh_tunnel: Some(SshTunnel {
                    host: target.jumphost,
                    user: target.jumphost_user,
                    private_key: target.private_key,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await?
        .into_inner();
    writeln!(out, "registered {} as {}", server.name, server.server_id)?;

    let mut watch = client
        .watch_onboarding(WatchOnboardingRequest {
            server_id: server.server_id.clone(),
            follow: true,
            ..Default::default()
        })
        .await?
        .into_inner();
    let mut confirmed = false;
    while let Some(status) = watch.message().await? {
        writeln!(out, "{}", describe(&status))?;
        let step = status
            .current_step
            .and_then(|step| OnboardingStep::try_from(step).ok());
        // The service names the IP to allow exactly while it waits for the firewall.
        if let (Some(ip), false) = (&status.agent_outbound_ip, confirmed) {
            writeln!(
                out,
                "allowing {ip} on the jumphost is up to you; confirming the firewall"
            )?;
            client
                .confirm_firewall(ConfirmFirewallRequest {
                    server_id: server.server_id.clone(),
                })
                .await?;
            confirmed = true;
        }
        let settled = [ServerStatus::Active as i32, ServerStatus::Error as i32]
            .contains(&status.server_status);
        if settled || (stop_at.is_some() && step == stop_at) {
            return Ok(server.server_id);
        }
    }
    Err("the watch ended before onboarding settled".into())
}

/// One line: the revision, the server's status, the current step and its message.
fn describe(status: &OnboardingStatus) -> String {
    let server_status = ServerStatus::try_from(status.server_status)
        .map(|status| status.as_str_name())
        .unwrap_or("?");
    let current = status
        .steps
        .iter()
        .find(|step| Some(step.name) == status.current_step);
    let (step, message) = current.map_or(("none", ""), |step| {
        let name = OnboardingStep::try_from(step.name).map_or("?", |name| name.as_str_name());
        (name, step.message.as_str())
    });
    format!(
        "revision {}: {server_status}, step {step}: {message}",
        status.revision
    )
}

// tests/examples.rs includes this file and runs `run`; `main` is the example's command line.
#[cfg_attr(test, allow(dead_code))]
#[tokio::main]
async fn main() -> Result<(), ExampleError> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [name, mysql_host, jumphost] = args.as_slice() else {
        return Err("usage: watch NAME MYSQL_HOST JUMPHOST (see the example's first lines)".into());
    };
    let env =
        |name: &str, default: &str| std::env::var(name).unwrap_or_else(|_| default.to_owned());
    let key = std::env::var("DBTRAIL_KEY").map_err(|_| "set DBTRAIL_KEY to an API key")?;
    let key_file = std::env::var("DBTRAIL_SSH_KEY_FILE")
        .map_err(|_| "set DBTRAIL_SSH_KEY_FILE to the jumphost's private key file")?;
    let target = Target {
        name: name.clone(),
        mysql_host: mysql_host.clone(),
        mysql_user: env("MYSQL_USER", "bintrail"),
        mysql_password: env("MYSQL_PASSWORD", ""),
        jumphost: jumphost.clone(),
        jumphost_user: env("SSH_USER", "ec2-user"),
        private_key: std::fs::read_to_string(&key_file)
            .map_err(|error| format!("{key_file}: {error}"))?,
    };
    let endpoint = env("DBTRAIL_GRPC", "http://localhost:50051");
    run(&endpoint, &key, target, None, &mut std::io::stdout()).await?;
    Ok(())
}
