//! Starts a replica: migrates the database, registers the embedded agent, and runs the gRPC
//! and HTTP servers, the LISTEN hub, the onboarding engine and the health loop; stops them in
//! order on shutdown.

mod stores;

use stores::Stores;

use std::{
    net::{IpAddr, SocketAddr, UdpSocket},
    sync::{
        Arc, OnceLock,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tokio::{net::TcpListener, sync::mpsc, task::JoinHandle};
use tokio_util::sync::CancellationToken;
use tonic_health::pb::health_server::{Health, HealthServer};

use crate::{
    agent::AgentSettings,
    auth::{Authenticator, TrustedProxies, admin::Admin},
    config::Config,
    domain::target::TargetPolicy,
    gateway::{self, Gateway},
    grpc::{self, ServersApi},
    housekeeping::{Housekeeping, HousekeepingSettings},
    http::OpsState,
    notify,
    onboarding::{Engine, EngineConfig, Step, default_steps},
    proto::servers_service_server::ServersServiceServer,
    secrets::{SecretBox, SecretsError},
    source::schema::SnapshotLimits,
    store::{IndexShards, Store, StoreError, index::archive::ArchiveSettings, listener},
    stream::{StreamSettings, Streams, StreamsConfig},
    tls,
    watch::Hubs,
    webhooks::Deliveries,
};

/// Why a replica could not start.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("database: {0}")]
    Store(#[from] StoreError),
    #[error(
        "cannot use the database at {url}: {source}. Check that PostgreSQL runs there and accepts this login, or pass --database-url (DATABASE_URL); with neither, the service starts a PostgreSQL of its own when PostgreSQL is installed (scripts/run installs it)"
    )]
    Database { url: String, source: StoreError },
    #[error("secrets: {0}")]
    Secrets(#[from] SecretsError),
    #[error(
        "secrets: this replica's secrets key (id {ours}) is not the deployment's: it opens none of the key checks the other replicas stored (key ids {stored}), so it could not read the MySQL passwords and SSH keys they sealed. Start every replica with the same --secrets-key (DBTRAIL_SECRETS_KEY); while rotating, give the old key in --secrets-old-keys"
    )]
    SecretsKeyMismatch { ours: String, stored: String },
    #[error("cannot listen on {address}: {source}")]
    Listen {
        address: SocketAddr,
        source: std::io::Error,
    },
    #[error("bootstrap: {0}")]
    Bootstrap(String),
    #[error("archive: {0}")]
    Archive(String),
    #[error("change index: {0}")]
    Index(String),
    #[error("TLS: {0}")]
    Tls(String),
    #[error("REST routes: {0}")]
    Rest(#[from] gateway::RouteError),
    #[error("gRPC reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error("webhooks: {0}")]
    Webhooks(String),
}

/// Refuses a secrets key other than the deployment's (the one the first replica recorded a check
/// value for), before this replica seals or opens anything.
async fn check_secrets_key(store: &Store, secrets: &SecretBox) -> Result<(), AppError> {
    let checked = store
        .check_secrets_key(secrets.key_check(), |stored| {
            secrets.opens_key_check(stored)
        })
        .await?;
    checked.map_err(|stored| AppError::SecretsKeyMismatch {
        ours: secrets.primary_key_id().to_owned(),
        stored: stored.join(", "),
    })
}

/// A running replica.
pub struct RunningApp {
    /// Where gRPC listens (the real port when 0 was asked for).
    pub grpc_addr: SocketAddr,
    /// Where HTTP listens.
    pub http_addr: SocketAddr,
    stopping: CancellationToken,
    listener_stop: CancellationToken,
    ready: Arc<AtomicBool>,
    health: tonic_health::server::HealthReporter,
    engine: Arc<Engine>,
    streams: Arc<Streams>,
    servers: Vec<JoinHandle<()>>,
    grace: Duration,
}

fn metrics_handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets(&[
                    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                    30.0,
                ])
                .unwrap_or_else(|_| PrometheusBuilder::new());
            let recorder = builder.build_recorder();
            let handle = recorder.handle();
            // Another recorder may already be installed (several replicas in one test process).
            let _ = metrics::set_global_recorder(recorder);
            handle
        })
        .clone()
}

/// This host's primary address: the source address the routing table picks. Connecting a UDP
/// socket sends nothing.
fn primary_address() -> String {
    UdpSocket::bind("0.0.0.0:0")
        .and_then(|socket| {
            socket.connect("192.0.2.1:9")?;
            socket.local_addr()
        })
        .map(|address| address.ip())
        .unwrap_or(IpAddr::from([127, 0, 0, 1]))
        .to_string()
}

/// A listener on `address`, and the address it got (the real port when 0 was asked for).
async fn bind(address: SocketAddr) -> Result<(TcpListener, SocketAddr), AppError> {
    let listen_error = |source| AppError::Listen { address, source };
    let listener = TcpListener::bind(address).await.map_err(listen_error)?;
    let local = listener.local_addr().map_err(listen_error)?;
    Ok((listener, local))
}

/// Starts a replica with the steps this build can run.
pub async fn start(config: Config) -> Result<RunningApp, AppError> {
    start_with_steps(config, default_steps()).await
}

/// Starts a replica running the given onboarding steps: its databases, secrets and agent, the
/// background work (engine, streams, LISTEN hub, health), then the two listeners. It is the
/// start-up sequence, read top to bottom; each stage is a function of its own.
pub async fn start_with_steps(
    config: Config,
    steps: Vec<Arc<dyn Step>>,
) -> Result<RunningApp, AppError> {
    let metrics = metrics_handle();
    let archive = ArchiveSettings::from_config(&config).map_err(AppError::Archive)?;
    let stores = Stores::open(&config).await?;
    let secrets = open_secrets(&config, &stores.api).await?;
    bootstrap_first_key(&stores.api).await?;
    let (agent_id, outbound_ip) = register_agent(&config, &stores.api).await?;
    let stopping = CancellationToken::new();
    let listener_stop = CancellationToken::new();
    let authenticator = Authenticator::new(stores.api.clone());
    let hubs = Hubs::start(stores.watch.clone(), stopping.clone());
    let targets = Arc::new(target_policy(&config));
    let agent = agent_settings(&config, agent_id, &outbound_ip, targets);
    let notifications = listen(&config, listener_stop.clone());
    let background = start_background(&config, &stores, &secrets, &agent, steps, &stopping)?;
    spawn_dispatch(notifications, &hubs, &authenticator, &background);
    let (health, health_service, ready) = start_health(&stores.api, &stopping);
    tokio::spawn(housekeeping(&config, &stores, &secrets, &agent, archive).run(stopping.clone()));
    let api = servers_api(
        &stores.api,
        stores.index_reader,
        secrets,
        hubs,
        &authenticator,
        agent,
        check_limits(&config),
    )
    .await?
    .with_http_webhooks(config.allow_http_webhooks);
    let grpc_stack = grpc::GrpcStack::new(
        api,
        authenticator,
        admission_settings(&config),
        TrustedProxies::new(config.trusted_proxies.clone()),
        health_service,
    )?;
    let ops = OpsState {
        ready: ready.clone(),
        metrics,
        store: stores.api,
    };
    let listening = serve(&config, grpc_stack, ops, &stopping).await?;
    tracing::info!(grpc_addr = %listening.grpc_addr, http_addr = %listening.http_addr,
        tls = listening.tls, agent_outbound_ip = %outbound_ip, "serving");
    Ok(RunningApp {
        grpc_addr: listening.grpc_addr,
        http_addr: listening.http_addr,
        stopping,
        listener_stop,
        ready,
        health,
        engine: background.engine,
        streams: background.streams,
        servers: listening.servers,
        grace: config.shutdown_grace,
    })
}

/// A replica's background work, each woken by the database's notifications.
struct Background {
    engine: Arc<Engine>,
    streams: Arc<Streams>,
    deliveries: Arc<Deliveries>,
}

/// Hands the database's notifications to those they concern: the watch hubs, the
/// authenticator's key cache, the engine, the streams and the webhook deliveries.
fn spawn_dispatch(
    notifications: mpsc::Receiver<listener::Notification>,
    hubs: &Hubs,
    authenticator: &Arc<Authenticator>,
    background: &Background,
) {
    tokio::spawn(notify::dispatch(
        notifications,
        hubs.clone(),
        authenticator.clone(),
        background.engine.clone(),
        background.streams.clone(),
        background.deliveries.clone(),
    ));
}

/// The gRPC health service, its reporter and the /readyz flag, kept up to date with the
/// database's reachability by a loop of their own until `stopping`.
fn start_health(
    store: &Store,
    stopping: &CancellationToken,
) -> (
    tonic_health::server::HealthReporter,
    HealthServer<impl Health>,
    Arc<AtomicBool>,
) {
    let (health, health_service) = tonic_health::server::health_reporter();
    let ready = Arc::new(AtomicBool::new(false));
    tokio::spawn(health_loop(
        store.clone(),
        health.clone(),
        ready.clone(),
        stopping.clone(),
    ));
    (health, health_service, ready)
}

/// The Servers API over the client pool, its page tokens signed with the deployment's key.
async fn servers_api(
    store: &Store,
    index_reader: IndexShards,
    secrets: SecretBox,
    hubs: Hubs,
    authenticator: &Arc<Authenticator>,
    agent: AgentSettings,
    check_limits: grpc::CheckLimits,
) -> Result<ServersApi, AppError> {
    let page_tokens = grpc::PageTokens::new(&store.deployment_key(PAGE_TOKEN_KEY).await?);
    Ok(ServersApi::new(
        store.clone(),
        index_reader,
        secrets,
        hubs,
        authenticator.clone(),
        page_tokens,
        agent,
    )
    .with_check_limits(check_limits))
}

/// CheckServer's rate per tenant and deadline (never past the calls' own).
fn check_limits(config: &Config) -> grpc::CheckLimits {
    let per_minute = (config.check_rate_limit > 0).then_some(config.check_rate_limit);
    grpc::CheckLimits::new(per_minute, config.check_timeout.min(config.call_timeout))
}

/// The secrets key, from the configuration or the data directory (generated there on first
/// start), checked against the deployment's.
async fn open_secrets(config: &Config, store: &Store) -> Result<SecretBox, AppError> {
    let (secrets, generated) = SecretBox::from_config_or_file(
        config.secrets_key.as_deref(),
        &config.secrets_old_keys,
        &config.data_dir,
    )?;
    if generated {
        tracing::warn!(
            path = %config.data_dir.join("secrets.key").display(),
            "no --secrets-key given: generated one; keep this file, or secrets stored with it become unreadable; give every replica of a deployment the same --secrets-key"
        );
    }
    check_secrets_key(store, &secrets).await?;
    Ok(secrets)
}

/// On a new deployment, creates the default tenant and prints its first API key, once.
async fn bootstrap_first_key(store: &Store) -> Result<(), AppError> {
    let created = Admin::new(store.clone())
        .bootstrap()
        .await
        .map_err(|error| AppError::Bootstrap(error.to_string()))?;
    if let Some(key) = created {
        println!(
            "Created tenant \"default\" and its first API key (all permissions; shown once):\n{}",
            key.secret
        );
    }
    Ok(())
}

/// Registers this replica's embedded agent (or finds it again after a restart): its id, and the
/// outbound IP customers allow, configured or this host's primary address.
async fn register_agent(config: &Config, store: &Store) -> Result<(uuid::Uuid, String), AppError> {
    let outbound_ip = config
        .agent_outbound_ip
        .clone()
        .unwrap_or_else(primary_address);
    let agent_id = store
        .upsert_agent(&config.agent_name(), &outbound_ip, config.agent_capacity)
        .await?;
    Ok((agent_id, outbound_ip))
}

/// What the embedded agent is and how it reaches customers' MySQL.
fn agent_settings(
    config: &Config,
    id: uuid::Uuid,
    outbound_ip: &str,
    targets: Arc<TargetPolicy>,
) -> AgentSettings {
    AgentSettings {
        id,
        outbound_ip: outbound_ip.to_owned(),
        source_address: config.agent_source_address,
        // Agents beat on every stream sweep; three missed beats and the agent is dead.
        dead_after: config.sweep_interval * 3,
        replaced_after: config.agent_replaced_after.max(config.sweep_interval * 3),
        connect_timeout: config.mysql_connect_timeout,
        query_timeout: config.mysql_query_timeout,
        snapshot: SnapshotLimits {
            max_tables: config.snapshot_max_tables,
            max_columns: config.snapshot_max_columns,
        },
        connect_attempts: config.mysql_connect_attempts,
        targets,
    }
}

/// The periodic jobs, with what they keep and for how long.
fn housekeeping(
    config: &Config,
    stores: &Stores,
    secrets: &SecretBox,
    agent: &AgentSettings,
    archive: ArchiveSettings,
) -> Housekeeping {
    // Twice the time after which a dead agent's servers move: by then they have.
    let settings =
        HousekeepingSettings::of(config, archive, agent.replaced_after * 2, secrets.key_ids());
    Housekeeping::new(stores.api.clone(), stores.index.clone(), settings)
}

/// Starts the onboarding engine and the live streams (the engine hands each server it activates
/// to the streams), and the webhook deliveries, until `stopping`.
fn start_background(
    config: &Config,
    stores: &Stores,
    secrets: &SecretBox,
    agent: &AgentSettings,
    steps: Vec<Arc<dyn Step>>,
    stopping: &CancellationToken,
) -> Result<Background, AppError> {
    let (activated, activations) = mpsc::channel(1024);
    let streams = Streams::new(
        stores.engine.clone(),
        stores.index.clone(),
        secrets.clone(),
        StreamsConfig {
            lease_ttl: config.lease_ttl,
            sweep_interval: config.sweep_interval,
            max_streams: config.max_streams,
            settings: StreamSettings {
                heartbeat: config.stream_heartbeat,
                checkpoint_interval: config.stream_checkpoint_interval,
            },
            agent: agent.clone(),
        },
        activations,
    );
    let engine = Engine::new(
        stores.engine.clone(),
        stores.index.clone(),
        secrets.clone(),
        EngineConfig {
            lease_ttl: config.lease_ttl,
            sweep_interval: config.sweep_interval,
            max_runners: config.max_runners,
            max_runners_per_tenant: config
                .max_runners_per_tenant
                .unwrap_or((config.max_runners / 4).max(1)),
            step_timeout: config.step_timeout,
            agent: agent.clone(),
        },
        steps,
        activated,
    );
    tokio::spawn(engine.clone().run());
    tokio::spawn(streams.clone().run());
    let (store, targets) = (stores.webhooks.clone(), agent.targets.clone());
    let deliveries = Deliveries::start(store, secrets.clone(), targets, config, stopping.clone())
        .map_err(AppError::Webhooks)?;
    Ok(Background {
        engine,
        streams,
        deliveries,
    })
}

/// The database's notifications, from a LISTEN connection of its own until `stop`.
fn listen(config: &Config, stop: CancellationToken) -> mpsc::Receiver<listener::Notification> {
    let (sender, notifications) = mpsc::channel(1024);
    tokio::spawn(listener::listen(
        config.database.url().to_owned(),
        sender,
        stop,
    ));
    notifications
}

/// The two listeners, serving.
struct Listening {
    grpc_addr: SocketAddr,
    http_addr: SocketAddr,
    tls: bool,
    servers: Vec<JoinHandle<()>>,
}

/// What the REST gateway is told of ServersService. The OpenAPI document states the domain's
/// request rules, from the table the validators' constants build (domain::rules).
fn rest_api() -> gateway::Api {
    gateway::Api {
        descriptor_set: crate::proto::FILE_DESCRIPTOR_SET,
        title: "dbtrail-servers",
        version: env!("CARGO_PKG_VERSION"),
        bearer: "An API key (dbt_...), from `dbtrail-servers keys create`.",
        constraints: crate::domain::rules::json_schemas(),
    }
}

/// Binds both listeners (the real ports when 0 was asked for), loads TLS when configured, and
/// serves gRPC and HTTP until `stopping`.
async fn serve(
    config: &Config,
    grpc_stack: grpc::GrpcStack,
    ops: OpsState,
    stopping: &CancellationToken,
) -> Result<Listening, AppError> {
    let gateway = Gateway::new(&grpc_stack, &rest_api())?;
    let (grpc_listener, grpc_addr) = bind(config.grpc_addr).await?;
    let (http_listener, http_addr) = bind(config.http_addr).await?;
    let tls = config
        .tls_files()
        .map(tls::ServerTls::load)
        .transpose()
        .map_err(AppError::Tls)?;
    if let Some(tls) = &tls {
        tokio::spawn(tls.clone().watch(stopping.clone()));
    }
    let settings = crate::http::ListenerSettings {
        header_read_timeout: config.header_read_timeout,
        idle_timeout: config.idle_timeout,
        max_connections: config.max_connections,
        max_connections_per_address: config.max_connections_per_address,
    };
    let grpc_server = tokio::spawn(grpc::serve(
        grpc_stack,
        grpc_listener,
        tls.clone(),
        settings,
        stopping.clone(),
    ));
    let http = crate::http::http_router(ops, gateway, &config.cors_allowed_origins);
    let http_server = tokio::spawn(crate::http::serve(
        http_listener,
        tls::Listener::Http,
        tls.clone(),
        http,
        settings,
        stopping.clone(),
    ));
    Ok(Listening {
        grpc_addr,
        http_addr,
        tls: tls.is_some(),
        servers: vec![grpc_server, http_server],
    })
}

/// How long the engine and the hub wait for a pooled connection.
const ENGINE_POOL_TIMEOUT: Duration = Duration::from_secs(10);

/// The deployment key that signs page tokens (`deployment_keys.purpose`).
const PAGE_TOKEN_KEY: &str = "page_tokens";

/// The limits of admission control, from the configuration (a rate of 0 is unlimited).
fn admission_settings(config: &Config) -> grpc::AdmissionSettings {
    let rate = |per_second: u32| {
        (per_second > 0).then(|| crate::auth::throttle::Rate {
            burst: 2.0 * f64::from(per_second),
            per_second: f64::from(per_second),
        })
    };
    grpc::AdmissionSettings {
        max_in_flight: config.max_calls_in_flight,
        max_queued: config.max_queued_calls,
        tenant_rate: rate(config.tenant_rate_limit),
        key_rate: rate(config.key_rate_limit),
        max_watches: config.max_watches,
        max_watches_per_key: config.max_watches_per_key,
        call_timeout: config.call_timeout,
    }
}

/// The addresses the agent refuses: none with --allow-loopback-targets, else the fixed list, this
/// host's own networks and the configured ranges.
fn target_policy(config: &Config) -> TargetPolicy {
    if config.allow_loopback_targets {
        return TargetPolicy::allow_all();
    }
    TargetPolicy::new(
        crate::source::connection::interfaces::own_networks(),
        config.deny_target_ranges.clone(),
        config.allow_private_direct_targets,
    )
}

/// The health of the whole replica ("") and of ServersService, which move together.
async fn set_health(
    health: &tonic_health::server::HealthReporter,
    status: tonic_health::ServingStatus,
) {
    health.set_service_status("", status).await;
    let service = <ServersServiceServer<ServersApi> as tonic::server::NamedService>::NAME;
    health.set_service_status(service, status).await;
}

/// Follows database reachability in gRPC health and /readyz.
async fn health_loop(
    store: Store,
    health: tonic_health::server::HealthReporter,
    ready: Arc<AtomicBool>,
    stopping: CancellationToken,
) {
    let mut serving = None;
    loop {
        let ping = tokio::time::timeout(Duration::from_secs(2), store.ping()).await;
        let reachable = match ping {
            Ok(Ok(notify_queue_usage)) => {
                metrics::gauge!("dbtrail_notify_queue_usage").set(notify_queue_usage);
                true
            }
            _ => false,
        };
        if stopping.is_cancelled() {
            return;
        }
        if serving != Some(reachable) {
            serving = Some(reachable);
            ready.store(reachable, Ordering::Release);
            let status = if reachable {
                tonic_health::ServingStatus::Serving
            } else {
                tracing::warn!("database unreachable: health is NOT_SERVING");
                tonic_health::ServingStatus::NotServing
            };
            set_health(&health, status).await;
        }
        tokio::select! {
            () = stopping.cancelled() => return,
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

impl RunningApp {
    /// Drains: health NOT_SERVING, watch streams end UNAVAILABLE, leases are released, the
    /// servers finish in-flight calls, all within the grace period.
    pub async fn shutdown(self) {
        tracing::info!("shutting down");
        self.ready.store(false, Ordering::Release);
        set_health(&self.health, tonic_health::ServingStatus::NotServing).await;
        let deadline = tokio::time::Instant::now() + self.grace;
        self.stopping.cancel();
        // The servers drain while the engine lets go of its leases; both share one deadline.
        let aborts: Vec<_> = self.servers.iter().map(JoinHandle::abort_handle).collect();
        let servers = futures_util::future::join_all(self.servers);
        let engine = self.engine.stop(self.grace / 2);
        let streams = self.streams.stop(self.grace / 2);
        let drained = tokio::time::timeout_at(
            deadline,
            futures_util::future::join3(servers, engine, streams),
        );
        if drained.await.is_err() {
            tracing::warn!("calls still open after the grace period; stopping anyway");
            aborts.iter().for_each(tokio::task::AbortHandle::abort);
        }
        self.listener_stop.cancel();
    }
}
