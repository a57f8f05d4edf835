//! The integration-test harness, shared by every module of the test binary (`crate::common`),
//! one file per concern, all re-exported here:
//!
//! - `database`: a fresh PostgreSQL database per test (copied from a template migrated once per
//!   migrations version, coordinated across nextest's processes with an advisory lock);
//! - `app`: the service started in process on port 0 (`TestApp`), the options it shares with the
//!   binary, gRPC clients (reflection too) and plain HTTP;
//! - `process`: the real binary as a child process (`ServiceProcess`, `run_cli`);
//! - `proxy`: a TCP proxy that can cut the service's path to PostgreSQL (`TcpProxy`);
//! - `onboarding`: servers to register, and waiting on and reading their onboarding;
//! - `assert`: polling helpers and assertions on `google.rpc` error details;
//! - `mariadb`, `sshd`: private MariaDB and OpenSSH servers.
//!
//! Every test is a plain `#[test]` whose body runs on [`block_on`]'s runtime.
//!
//! Nothing here skips: when PostgreSQL is missing the tests fail and say so.

mod app;
mod assert;
pub mod corpus;
mod database;
pub mod mariadb;
mod onboarding;
mod process;
mod proxy;
mod receiver;
pub mod sshd;
pub mod stream;
mod webhooks;

pub use app::*;
pub use assert::*;
pub use database::*;
pub use onboarding::*;
pub use process::*;
pub use proxy::*;
pub use receiver::*;
pub use webhooks::*;

use std::collections::BTreeMap;
use std::future::Future;
use std::net::{SocketAddr, TcpListener as StdTcpListener};
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use dbtrail_servers::auth::admin::Admin;
use dbtrail_servers::config::Config;
pub use dbtrail_servers::domain::target::{DENIED, PRIVATE_FOR_DIRECT};
use dbtrail_servers::proto::servers_service_client::ServersServiceClient;
use dbtrail_servers::proto::{
    self, ConnectionMethod, OnboardingStatus, OnboardingStep, StepProgress, StepStatus,
    WatchOnboardingRequest,
};
pub use dbtrail_servers::source::connection::UNREACHABLE;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::OnceCell;
use tokio_util::sync::CancellationToken;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_types::StatusExt;
use uuid::Uuid;

/// Runs a test's body to completion on a runtime of its own: multi-thread with two workers, so
/// the service a test starts in process and the test's own clients make progress side by side.
/// Every integration test is `#[test] fn name() { block_on(async { ... }) }`.
pub fn block_on<F: Future>(test: F) -> F::Output {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime for the test")
        .block_on(test)
}

/// The PostgreSQL server the tests use, as a URL to its maintenance database.
pub const DEFAULT_ADMIN_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";
/// The agent outbound IP the test replicas are configured with (TEST-NET-3, never routed).
pub const AGENT_OUTBOUND_IP: &str = "203.0.113.7";
/// The ErrorInfo domain of every error the service returns.
pub const ERROR_DOMAIN: &str = "servers.dbtrail";
/// The gRPC health service name of ServersService.
pub const SERVERS_SERVICE: &str = "dbtrail.servers.v1.ServersService";
/// Every permission a key can carry.
pub const ALL_PERMISSIONS: [&str; 7] = [
    "servers:read",
    "servers:write",
    "servers:delete",
    "changes:read",
    "audit:read",
    "webhooks:read",
    "webhooks:write",
];

/// A real, throwaway Ed25519 key made for these tests only; it opens nothing anywhere.
pub const TEST_PRIVATE_KEY: &str = "-----BEGIN OPENSSH PRIVATE KEY-----
b3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQAAAAAAAAABAAAAMwAAAAtzc2gtZW
QyNTUxOQAAACAe4CMZtml0ab/DDY/jPpVMxEU2ElQnokYpfNU2kuL0xwAAAJgLHBg4CxwY
OAAAAAtzc2gtZWQyNTUxOQAAACAe4CMZtml0ab/DDY/jPpVMxEU2ElQnokYpfNU2kuL0xw
AAAEC0Tf6C0H5DBwWXznTL23nhXnzVFBbxIlHa5nSr20PlwB7gIxm2aXRpv8MNj+M+lUzE
RTYSVCeiRil81TaS4vTHAAAAFGRidHJhaWwtdGVzdC1maXh0dXJlAQ==
-----END OPENSSH PRIVATE KEY-----
";
/// A distinctive line of the private key's body, to look for in stored bytes and output.
pub const TEST_PRIVATE_KEY_BODY_LINE: &str =
    "AAAEC0Tf6C0H5DBwWXznTL23nhXnzVFBbxIlHa5nSr20PlwB7gIxm2aXRpv8MNj+M+lUzE";
