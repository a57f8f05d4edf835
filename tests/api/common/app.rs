//! The service in process (`TestApp`), the options it shares with the binary, and plain HTTP.

use super::*;

// ------------------------------------------------------------------------------------------------
// Configuration shared by the in-process app and the binary
// ------------------------------------------------------------------------------------------------

/// How a replica under test is configured. The defaults keep the engine's timers short.
#[derive(Clone, Debug)]
pub struct ReplicaOptions {
    pub agent_name: String,
    pub agent_capacity: u32,
    pub agent_outbound_ip: String,
    pub lease_ttl: String,
    pub sweep_interval: String,
    pub statement_timeout: String,
    pub pool_timeout: String,
    pub secrets_key: String,
    /// The database URL the service is given, when not the test database's own (a proxy's).
    pub database_url: Option<String>,
    pub extra_args: Vec<String>,
    /// Run every onboarding step. Off by default: the core steps (provisioning and
    /// awaiting_firewall) never open a connection, so tests of the API and the engine reach no
    /// host, and servers wait at waiting_for_agent.
    pub mysql_steps: bool,
    /// Let the agent connect to loopback targets (every fixture listens on 127.0.0.1).
    pub allow_loopback_targets: bool,
}

impl Default for ReplicaOptions {
    fn default() -> Self {
        ReplicaOptions {
            agent_name: format!("agent-{}", &Uuid::new_v4().simple().to_string()[..8]),
            agent_capacity: 100,
            agent_outbound_ip: AGENT_OUTBOUND_IP.to_owned(),
            lease_ttl: "2s".to_owned(),
            sweep_interval: "500ms".to_owned(),
            statement_timeout: "2s".to_owned(),
            pool_timeout: "1s".to_owned(),
            secrets_key: TEST_SECRETS_KEY.clone(),
            database_url: None,
            extra_args: Vec::new(),
            mysql_steps: false,
            allow_loopback_targets: true,
        }
    }
}

impl ReplicaOptions {
    /// The `serve` flags for these options.
    pub fn serve_args(
        &self,
        database_url: &str,
        grpc_addr: &str,
        http_addr: &str,
        data_dir: &Path,
    ) -> Vec<String> {
        let mut args: Vec<String> = [
            "--database-url",
            self.database_url.as_deref().unwrap_or(database_url),
            "--grpc-addr",
            grpc_addr,
            "--http-addr",
            http_addr,
            "--secrets-key",
            &self.secrets_key,
            "--data-dir",
            &data_dir.to_string_lossy(),
            "--agent-outbound-ip",
            &self.agent_outbound_ip,
            "--agent-name",
            &self.agent_name,
            "--agent-capacity",
            &self.agent_capacity.to_string(),
            "--lease-ttl",
            &self.lease_ttl,
            "--sweep-interval",
            &self.sweep_interval,
            "--statement-timeout",
            &self.statement_timeout,
            "--pool-timeout",
            &self.pool_timeout,
        ]
        .iter()
        .map(|arg| arg.to_string())
        .collect();
        if self.allow_loopback_targets {
            args.push("--allow-loopback-targets".to_owned());
        }
        args.extend(self.extra_args.iter().cloned());
        args
    }
}

/// A base64 secrets key of 32 random bytes.
pub fn random_secrets_key() -> String {
    base64::engine::general_purpose::STANDARD.encode(rand::random::<[u8; 32]>())
}

// ------------------------------------------------------------------------------------------------
// The service in process
// ------------------------------------------------------------------------------------------------

/// The service started in this process on port 0, on a database of its own (or shared with other
/// replicas), with a tenant and a key with every permission.
pub struct TestApp {
    pub grpc_addr: SocketAddr,
    pub http_addr: SocketAddr,
    pub tenant: Tenant,
    channel: Channel,
    running: Option<dbtrail_servers::app::RunningApp>,
    _data_dir: tempfile::TempDir,
    /// Declared last so that it drops after the service.
    pub db: Arc<TestDatabase>,
}

impl TestApp {
    /// A replica with default options on a fresh database, with tenant `tenant-a`.
    pub async fn start() -> TestApp {
        Self::start_with(ReplicaOptions::default()).await
    }

    /// A replica with `options` on a fresh database, with tenant `tenant-a`.
    pub async fn start_with(options: ReplicaOptions) -> TestApp {
        Self::start_with_limit(options, None).await
    }

    /// A replica with `options` on a fresh database, with tenant `tenant-a` limited to
    /// `server_limit` servers.
    pub async fn start_with_limit(options: ReplicaOptions, server_limit: Option<i32>) -> TestApp {
        let db = Arc::new(TestDatabase::create().await);
        let tenant = db.create_tenant("tenant-a", server_limit).await;
        Self::start_on(db, tenant, options).await
    }

    /// Another replica on this one's database, with another agent, for the same tenant.
    pub async fn replica(&self, options: ReplicaOptions) -> TestApp {
        Self::start_on(self.db.clone(), self.tenant.clone(), options).await
    }

    /// A replica on `db` whose default client authenticates as `tenant`.
    pub async fn start_on(
        db: Arc<TestDatabase>,
        tenant: Tenant,
        options: ReplicaOptions,
    ) -> TestApp {
        let data_dir = tempfile::tempdir().expect("a temporary data directory");
        let args = options.serve_args(&db.url, "127.0.0.1:0", "127.0.0.1:0", data_dir.path());
        let config = Config::parse_serve_args(args.clone())
            .unwrap_or_else(|error| panic!("Config::parse_serve_args({args:?}): {error}"));
        let steps = if options.mysql_steps {
            dbtrail_servers::onboarding::default_steps()
        } else {
            dbtrail_servers::onboarding::core_steps()
        };
        let running = dbtrail_servers::app::start_with_steps(config, steps)
            .await
            .unwrap_or_else(|error| panic!("app::start: {error:?}"));
        let grpc_addr = running.grpc_addr;
        let http_addr = running.http_addr;
        let channel = channel(grpc_addr).await;
        TestApp {
            grpc_addr,
            http_addr,
            tenant,
            channel,
            running: Some(running),
            _data_dir: data_dir,
            db,
        }
    }

    /// A client authenticating with the tenant's key (every permission).
    pub fn client(&self) -> Client {
        client_with_key(self.channel.clone(), &self.tenant.key)
    }

    /// A client authenticating with `key`.
    pub fn client_with_key(&self, key: &str) -> Client {
        client_with_key(self.channel.clone(), key)
    }

    /// A client sending `authorization` verbatim, or no authorization header.
    pub fn client_with_authorization(&self, authorization: Option<&str>) -> Client {
        client_with_authorization(self.channel.clone(), authorization)
    }

    /// Another tenant on the same database, with a key carrying every permission.
    pub async fn other_tenant(&self, name: &str) -> Tenant {
        self.db.create_tenant(name, None).await
    }

    /// A key of this app's tenant with exactly `permissions`.
    pub async fn key_with(&self, permissions: &[&str]) -> dbtrail_servers::auth::admin::CreatedKey {
        self.db
            .create_key(&self.tenant.name, permissions, None)
            .await
    }

    /// Stops the service and waits until it has stopped.
    pub async fn shutdown(mut self) {
        if let Some(running) = self.running.take() {
            tokio::time::timeout(Duration::from_secs(15), running.shutdown())
                .await
                .expect("RunningApp::shutdown finishes within 15 s");
        }
    }
}

// ------------------------------------------------------------------------------------------------
// HTTP
// ------------------------------------------------------------------------------------------------

/// A plain HTTP/1.1 GET: the status code and the raw body (possibly chunked).
pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let exchange = async {
        let mut stream = TcpStream::connect(addr).await?;
        stream
            .write_all(
                format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n")
                    .as_bytes(),
            )
            .await?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await?;
        Ok::<_, std::io::Error>(response)
    };
    let response = tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .unwrap_or_else(|_| panic!("GET {path} on {addr} took over 10 s"))
        .unwrap_or_else(|error| panic!("GET {path} on {addr}: {error}"));
    let text = String::from_utf8_lossy(&response).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("GET {path}: not an HTTP response: {text:?}"));
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default();
    (status, body)
}

// ------------------------------------------------------------------------------------------------
// gRPC clients
// ------------------------------------------------------------------------------------------------

/// Adds an `authorization` header, or none, to every call.
#[derive(Clone)]
pub struct Authorization(Option<MetadataValue<Ascii>>);

impl Interceptor for Authorization {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, Status> {
        if let Some(value) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        Ok(request)
    }
}

/// A ServersService client that sends a fixed authorization header.
pub type Client = ServersServiceClient<InterceptedService<Channel, Authorization>>;

/// A channel to a gRPC address.
pub async fn channel(addr: SocketAddr) -> Channel {
    Endpoint::from_shared(format!("http://{addr}"))
        .expect("a valid endpoint")
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .unwrap_or_else(|error| panic!("connect to gRPC at {addr}: {error:?}"))
}

/// A client on `channel` sending `authorization` verbatim (or no header at all).
pub fn client_with_authorization(channel: Channel, authorization: Option<&str>) -> Client {
    let value = authorization.map(|value| {
        value
            .parse::<MetadataValue<Ascii>>()
            .expect("an ASCII authorization header")
    });
    ServersServiceClient::with_interceptor(channel, Authorization(value))
}

/// A client on `channel` authenticating with API key `key`.
pub fn client_with_key(channel: Channel, key: &str) -> Client {
    client_with_authorization(channel, Some(&format!("Bearer {key}")))
}

/// The gRPC health status of `service` ("" for the whole server).
pub async fn health(addr: SocketAddr, service: &str) -> Result<ServingStatus, Status> {
    let channel = Endpoint::from_shared(format!("http://{addr}"))
        .expect("a valid endpoint")
        .connect_timeout(Duration::from_secs(1))
        .timeout(Duration::from_secs(2))
        .connect()
        .await
        .map_err(|error| Status::unavailable(error.to_string()))?;
    let response = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: service.to_owned(),
        })
        .await?;
    Ok(response.into_inner().status())
}

// ------------------------------------------------------------------------------------------------
// gRPC reflection
// ------------------------------------------------------------------------------------------------

pub use tonic_reflection::pb::v1::server_reflection_request::MessageRequest as ReflectionRequest;
pub use tonic_reflection::pb::v1::server_reflection_response::MessageResponse as ReflectionResponse;

/// The version of the gRPC reflection protocol a client speaks.
#[derive(Clone, Copy, Debug)]
pub enum ReflectionVersion {
    V1,
    V1Alpha,
}

/// Asks the reflection service on `channel` one question in `version`'s protocol and returns its
/// one answer. v1alpha's messages are v1's under another package name, so they are carried over
/// through their wire form: the answer reads as v1's either way.
pub async fn reflect(
    channel: Channel,
    version: ReflectionVersion,
    request: ReflectionRequest,
) -> ReflectionResponse {
    use tonic_reflection::pb::{v1, v1alpha};
    let request = v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(request),
    };
    let response: v1::ServerReflectionResponse = match version {
        ReflectionVersion::V1 => {
            let mut client = v1::server_reflection_client::ServerReflectionClient::new(channel);
            one_message(
                client
                    .server_reflection_info(tokio_stream::once(request))
                    .await,
                version,
            )
            .await
        }
        ReflectionVersion::V1Alpha => {
            let mut client =
                v1alpha::server_reflection_client::ServerReflectionClient::new(channel);
            let request: v1alpha::ServerReflectionRequest = transcode(&request);
            let response = one_message(
                client
                    .server_reflection_info(tokio_stream::once(request))
                    .await,
                version,
            )
            .await;
            transcode(&response)
        }
    };
    response
        .message_response
        .unwrap_or_else(|| panic!("a reflection {version:?} response without an answer"))
}

/// The services the reflection service on `channel` lists, asked in `version`'s protocol.
pub async fn reflected_services(
    channel: Channel,
    version: ReflectionVersion,
) -> std::collections::BTreeSet<String> {
    match reflect(
        channel,
        version,
        ReflectionRequest::ListServices(String::new()),
    )
    .await
    {
        ReflectionResponse::ListServicesResponse(list) => list
            .service
            .into_iter()
            .map(|service| service.name)
            .collect(),
        other => panic!("unexpected reflection {version:?} response {other:?}"),
    }
}

/// The one message of a reflection call's response stream.
async fn one_message<T>(
    response: Result<tonic::Response<tonic::Streaming<T>>, Status>,
    version: ReflectionVersion,
) -> T {
    response
        .unwrap_or_else(|status| panic!("reflection {version:?}: {status:?}"))
        .into_inner()
        .message()
        .await
        .unwrap_or_else(|status| panic!("a reflection {version:?} response: {status:?}"))
        .unwrap_or_else(|| panic!("one reflection {version:?} message"))
}

/// `message` decoded as the message type `T` with the same fields.
fn transcode<T: prost::Message + Default>(message: &impl prost::Message) -> T {
    T::decode(message.encode_to_vec().as_slice()).expect("the same fields under another package")
}
