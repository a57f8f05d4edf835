//! The engine under chaos: two replicas on one database onboard 50 servers against private
//! MariaDB instances, a quarter of them through SSH jumphosts, while a seeded controller SIGKILLs
//! and restarts replicas 20 times and pauses one (SIGSTOP) past its lease TTL. At the end:
//!
//! - every server is active;
//! - no step ran on two replicas at once: every run of a step logs its runner, its epoch and when
//!   it was active (a killed replica's open runs end when it died), and the runs of a server never
//!   overlap;
//! - every watcher (one per server on each replica, resuming from its last revision whenever its
//!   replica dies) saw every revision once, in order;
//! - each server's index holds one schema, one current snapshot and one checkpoint.
//!
//! `DBTRAIL_CHAOS_SEED` replays a schedule (printed at the start); `DBTRAIL_CHAOS_EVENTS` (kills,
//! default 20) makes it a longer soak.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{
    Arc, Mutex,
    atomic::{AtomicBool, Ordering},
};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::common::mariadb::*;
use crate::common::sshd::*;
use crate::common::*;
use dbtrail_servers::proto::{
    self, ConfirmFirewallRequest, GetOnboardingStatusRequest, OnboardingStatus,
    RegisterServerRequest, ServerStatus, WatchOnboardingRequest,
};
use rand::{Rng, SeedableRng, rngs::StdRng};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tonic::transport::Endpoint;

const SERVERS: usize = 50;
/// Servers per MariaDB instance (each has a binlog stream of its own once active).
const SERVERS_PER_MARIADB: usize = 5;
/// Every fourth server goes through a jumphost of its own.
const SSH_EVERY: usize = 4;
const LEASE_TTL: Duration = Duration::from_secs(3);
const SWEEP: Duration = Duration::from_millis(500);
/// How long the paused replica stays stopped: past its lease TTL and its agent's liveness.
const PAUSE: Duration = Duration::from_secs(6);
const SETTLE: Duration = Duration::from_secs(90);
/// Added to every answer of MariaDB, so that a step lasts long enough (a few hundred ms) for a
/// kill to land in the middle of it.
const LINK_DELAY: Duration = Duration::from_millis(30);

#[test]
fn replicas_killed_and_paused_at_random_never_run_a_step_twice_at_once() {
    block_on(async {
        let seed = std::env::var("DBTRAIL_CHAOS_SEED")
            .ok()
            .and_then(|seed| seed.parse().ok())
            .unwrap_or_else(rand::random::<u64>);
        let events = std::env::var("DBTRAIL_CHAOS_EVENTS")
            .ok()
            .and_then(|events| events.parse().ok())
            .unwrap_or(20);
        eprintln!("chaos: DBTRAIL_CHAOS_SEED={seed} DBTRAIL_CHAOS_EVENTS={events}");
        let mut rng = StdRng::seed_from_u64(seed);
        let started = Instant::now();

        let db = Arc::new(TestDatabase::create().await);
        let tenant = db.create_tenant("chaos", None).await;
        let targets = Targets::start(&mut rng).await;
        eprintln!(
            "chaos: {} targets ready in {:?}",
            SERVERS,
            started.elapsed()
        );

        let cluster = Arc::new(Cluster::start(&db.url, &tenant.key).await);
        let done = Arc::new(AtomicBool::new(false));
        let registered: Arc<Mutex<Vec<Registered>>> = Arc::default();
        let mut background = tokio::task::JoinSet::new();
        background.spawn(register_over_time(
            cluster.clone(),
            targets.servers.clone(),
            registered.clone(),
            StdRng::seed_from_u64(seed ^ 0x5eed),
            done.clone(),
        ));
        background.spawn(confirm_firewalls(
            cluster.clone(),
            registered.clone(),
            done.clone(),
        ));

        // `events` kills, and one pause among them.
        let pause_at = rng.random_range(0..=events);
        for event in 0..=events {
            tokio::time::sleep(Duration::from_millis(rng.random_range(500..2500))).await;
            let victim = rng.random_range(0..2);
            if event == pause_at {
                cluster.pause(victim, PAUSE).await;
            } else {
                let down_for = Duration::from_millis(rng.random_range(0..2000));
                cluster.kill_and_restart(victim, down_for).await;
            }
        }
        eprintln!(
            "chaos: {events} kills and a pause done at {:?}",
            started.elapsed()
        );

        // Every server registered and active.
        wait_until("all servers registered", SETTLE, || async {
            registered.lock().expect("registered").len() == SERVERS
        })
        .await;
        let servers: Vec<Registered> = registered.lock().expect("registered").clone();
        for server in &servers {
            let status = cluster.settled(&server.id).await;
            assert_eq!(
                status.server_status,
                ServerStatus::Active as i32,
                "seed {seed}: {} did not end active: {status:#?}",
                server.id
            );
        }
        eprintln!("chaos: all active at {:?}", started.elapsed());

        // Each watcher saw every revision up to the last one, once and in order.
        let sql = db.connect().await;
        for server in &servers {
            let last: i64 = sql
                .query_one(
                    "SELECT revision FROM servers WHERE id::text = $1",
                    &[&server.id],
                )
                .await
                .expect("read the revision")
                .get(0);
            for watcher in &server.watchers {
                wait_until(
                    "the watcher to reach the last revision",
                    Duration::from_secs(20),
                    || async { watcher.seen.lock().expect("seen").last() >= Some(&last) },
                )
                .await;
                let seen = watcher.seen.lock().expect("seen").clone();
                let expected: Vec<i64> = (1..=*seen.last().expect("a revision")).collect();
                assert_eq!(
                    seen, expected,
                    "seed {seed}: the watcher of {} on replica {} saw revisions out of order, \
                     twice or with a gap",
                    server.id, watcher.replica
                );
            }
        }
        done.store(true, Ordering::Release);

        // One schema, one current snapshot and one checkpoint per server, and no other schema.
        let mut expected: Vec<String> = servers
            .iter()
            .map(|server| index_schema(&server.id))
            .collect();
        expected.sort();
        for server in &servers {
            let index = index_state(&db, &server.id).await;
            index.current_snapshot();
            assert_eq!(index.checkpoints.len(), 1, "seed {seed}: {index:#?}");
            assert_eq!(
                index.all_index_schemas, expected,
                "seed {seed}: one schema per server"
            );
        }

        // No two runs of a server's steps by different runners overlapped.
        let runs = cluster.step_runs();
        assert_no_overlap(&runs, seed);
        let mut per_step: BTreeMap<&str, usize> = BTreeMap::new();
        for run in &runs {
            *per_step.entry(&run.step).or_default() += 1;
        }
        // The check above had runs to compare: every step's, nearly every server's (a SIGKILL may
        // take the last few milliseconds of a replica's log lines with it).
        assert_eq!(
            per_step.len(),
            6,
            "seed {seed}: runs of every step: {per_step:?}"
        );
        assert!(
            per_step.values().all(|&runs| runs >= SERVERS * 9 / 10),
            "seed {seed}: every server's steps are on record: {per_step:?}"
        );
        let runners: std::collections::BTreeSet<&str> =
            runs.iter().map(|run| run.runner.as_str()).collect();
        eprintln!(
            "chaos: step runs {per_step:?} by {} runners checked, done at {:?}",
            runners.len(),
            started.elapsed()
        );
        background.abort_all();
        cluster.stop().await;
    });
}

// ------------------------------------------------------------------------------------------------
// The servers to onboard: MariaDB instances, and a jumphost for every fourth server
// ------------------------------------------------------------------------------------------------

struct Targets {
    servers: Vec<proto::Server>,
    _links: Vec<SlowLink>,
    _mariadbs: Vec<MariaDb>,
    _jumphosts: Vec<Sshd>,
}

impl Targets {
    async fn start(rng: &mut StdRng) -> Targets {
        let mariadbs = futures_util::future::join_all(
            (0..SERVERS.div_ceil(SERVERS_PER_MARIADB)).map(|_| onboardable_mariadb()),
        )
        .await;
        let mut links = Vec::new();
        for mariadb in &mariadbs {
            links.push(SlowLink::start(mariadb.port, LINK_DELAY).await);
        }
        let mut jumphosts = Vec::new();
        let mut servers = Vec::new();
        for index in 0..SERVERS {
            let link = &links[index % links.len()];
            let name = format!("chaos-{index}");
            let mut server = proto::Server {
                port: i32::from(link.port),
                ..mariadbs[0].server(&name, USER, PASSWORD)
            };
            if index % SSH_EVERY == 0 {
                let sshd = Sshd::start().await;
                server = proto::Server {
                    ssh_tunnel: Some(sshd.tunnel()),
                    ..ssh_server(&name)
                };
                server.host = "127.0.0.1".to_owned();
                server.port = i32::from(link.port);
                server.mysql_user = USER.to_owned();
                server.mysql_password = PASSWORD.to_owned();
                jumphosts.push(sshd);
            }
            servers.push(server);
        }
        // The order they are registered in.
        for index in (1..servers.len()).rev() {
            servers.swap(index, rng.random_range(0..=index));
        }
        Targets {
            servers,
            _links: links,
            _mariadbs: mariadbs,
            _jumphosts: jumphosts,
        }
    }
}

/// Forwards to a MariaDB port with `delay` before every chunk of its answers.
struct SlowLink {
    port: u16,
    task: tokio::task::JoinHandle<()>,
}

impl SlowLink {
    async fn start(upstream: u16, delay: Duration) -> SlowLink {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the link");
        let port = listener.local_addr().expect("the link's address").port();
        let task = tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let Ok(outbound) = TcpStream::connect(("127.0.0.1", upstream)).await else {
                        return;
                    };
                    let (mut from_client, mut to_client) = inbound.into_split();
                    let (mut from_server, mut to_server) = outbound.into_split();
                    let answers = async {
                        let mut buffer = vec![0; 64 * 1024];
                        while let Ok(read @ 1..) = from_server.read(&mut buffer).await {
                            tokio::time::sleep(delay).await;
                            if to_client.write_all(&buffer[..read]).await.is_err() {
                                return;
                            }
                        }
                    };
                    // Either side closing closes both.
                    tokio::select! {
                        _ = tokio::io::copy(&mut from_client, &mut to_server) => {}
                        () = answers => {}
                    }
                });
            }
        });
        SlowLink { port, task }
    }
}

impl Drop for SlowLink {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[derive(Clone)]
struct Registered {
    id: String,
    ssh: bool,
    watchers: Vec<Arc<Watcher>>,
}

/// Registers the servers one by one at random moments while the chaos goes on, each with a
/// request id (a retry after a replica died mid-call registers nothing twice), and starts a
/// watcher of each on both replicas.
async fn register_over_time(
    cluster: Arc<Cluster>,
    servers: Vec<proto::Server>,
    registered: Arc<Mutex<Vec<Registered>>>,
    mut rng: StdRng,
    done: Arc<AtomicBool>,
) {
    for server in servers {
        tokio::time::sleep(Duration::from_millis(rng.random_range(0..1600))).await;
        let request = RegisterServerRequest {
            server: Some(server.clone()),
            request_id: uuid::Uuid::new_v4().to_string(),
            validate_only: false,
        };
        let id = cluster
            .call("RegisterServer", |mut client| {
                let request = request.clone();
                async move { client.register_server(request).await }
            })
            .await
            .server_id;
        let watchers: Vec<Arc<Watcher>> = (0..2)
            .map(|replica| {
                let watcher = Arc::new(Watcher {
                    replica,
                    seen: Mutex::default(),
                });
                tokio::spawn(watch(
                    cluster.clone(),
                    id.clone(),
                    watcher.clone(),
                    done.clone(),
                ));
                watcher
            })
            .collect();
        registered.lock().expect("registered").push(Registered {
            id,
            ssh: server.ssh_tunnel.is_some(),
            watchers,
        });
    }
}

/// Confirms the firewall of every jumphost server that waits for it, again when its agent died
/// and it shows another IP.
async fn confirm_firewalls(
    cluster: Arc<Cluster>,
    registered: Arc<Mutex<Vec<Registered>>>,
    done: Arc<AtomicBool>,
) {
    while !done.load(Ordering::Acquire) {
        let servers: Vec<String> = registered
            .lock()
            .expect("registered")
            .iter()
            .filter(|server| server.ssh)
            .map(|server| server.id.clone())
            .collect();
        for id in servers {
            let Some(mut client) = cluster.any_client() else {
                break;
            };
            let request = GetOnboardingStatusRequest {
                server_id: id.clone(),
            };
            let Ok(status) = client.get_onboarding_status(request).await else {
                continue;
            };
            if is_awaiting_firewall(&status.into_inner()) {
                let _ = client
                    .confirm_firewall(ConfirmFirewallRequest { server_id: id })
                    .await;
            }
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

// ------------------------------------------------------------------------------------------------
// Watchers: one per server on each replica, resuming after every death of their replica
// ------------------------------------------------------------------------------------------------

struct Watcher {
    replica: usize,
    /// Every revision received, in the order received, across reconnects.
    seen: Mutex<Vec<i64>>,
}

/// Follows `server_id` on one replica from its first revision; whenever the stream breaks (the
/// replica died), opens it again on the replica's next incarnation from the last revision seen.
async fn watch(
    cluster: Arc<Cluster>,
    server_id: String,
    watcher: Arc<Watcher>,
    done: Arc<AtomicBool>,
) {
    while !done.load(Ordering::Acquire) {
        let Some(mut client) = cluster.watch_client(watcher.replica) else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let since = watcher
            .seen
            .lock()
            .expect("seen")
            .last()
            .copied()
            .unwrap_or(0);
        let request = WatchOnboardingRequest {
            server_id: server_id.clone(),
            since_revision: Some(since),
            follow: true,
        };
        let Ok(response) = client.watch_onboarding(request).await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let mut stream = response.into_inner();
        while let Ok(Some(message)) = stream.message().await {
            watcher.seen.lock().expect("seen").push(message.revision);
        }
    }
}

// ------------------------------------------------------------------------------------------------
// The two replicas, killed, restarted and paused
// ------------------------------------------------------------------------------------------------

/// One replica: its options (agent name, IP and source address stay across restarts), its
/// current process, and the logs of the processes before it with the instant each was killed.
struct Replica {
    label: String,
    options: ReplicaOptions,
    process: tokio::sync::Mutex<ServiceProcess>,
    /// Where clients reach it now; None while it is down.
    addr: Mutex<Option<SocketAddr>>,
    /// The logs of killed incarnations, with when they died.
    dead: Mutex<Vec<(String, SystemTime)>>,
}

impl Replica {
    async fn start(index: usize, ip: &str, database_url: &str) -> Replica {
        let options = agent_options(ip);
        let label = format!("replica-{index}");
        let process = ServiceProcess::serve(&label, database_url, &options).await;
        Replica {
            label,
            options,
            addr: Mutex::new(Some(process.grpc_addr)),
            process: tokio::sync::Mutex::new(process),
            dead: Mutex::default(),
        }
    }
}

struct Cluster {
    database_url: String,
    key: String,
    replicas: [Replica; 2],
}

impl Cluster {
    async fn start(database_url: &str, key: &str) -> Cluster {
        Cluster {
            database_url: database_url.to_owned(),
            key: key.to_owned(),
            replicas: [
                Replica::start(0, "127.0.0.2", database_url).await,
                Replica::start(1, "127.0.0.3", database_url).await,
            ],
        }
    }

    /// A client of replica `index` for unary calls, while it is up; a paused replica's calls
    /// time out.
    fn client(&self, index: usize) -> Option<Client> {
        self.client_with(index, |endpoint| endpoint.timeout(Duration::from_secs(10)))
    }

    /// A client of replica `index` for a watch (no time limit), while it is up.
    fn watch_client(&self, index: usize) -> Option<Client> {
        self.client_with(index, |endpoint| endpoint)
    }

    fn client_with(
        &self,
        index: usize,
        configure: impl Fn(Endpoint) -> Endpoint,
    ) -> Option<Client> {
        let addr = (*self.replicas[index].addr.lock().expect("addr"))?;
        let endpoint = Endpoint::from_shared(format!("http://{addr}"))
            .expect("an endpoint")
            .connect_timeout(Duration::from_secs(2));
        Some(client_with_key(
            configure(endpoint).connect_lazy(),
            &self.key,
        ))
    }

    /// A client of a replica that is up.
    fn any_client(&self) -> Option<Client> {
        let first = rand::random_range(0..2);
        self.client(first).or_else(|| self.client(1 - first))
    }

    /// Makes a call through whichever replica is up, again until one answers.
    async fn call<T, F, Fut>(&self, what: &str, mut call: F) -> T
    where
        F: FnMut(Client) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let deadline = Instant::now() + SETTLE;
        loop {
            if let Some(client) = self.any_client() {
                match call(client).await {
                    Ok(response) => return response.into_inner(),
                    Err(status) if Instant::now() > deadline => {
                        panic!("{what} kept failing: {status:?}")
                    }
                    Err(_) => {}
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// SIGKILL, down for `down_for`, then a new process with the same agent.
    async fn kill_and_restart(&self, index: usize, down_for: Duration) {
        let replica = &self.replicas[index];
        let mut process = replica.process.lock().await;
        *replica.addr.lock().expect("addr") = None;
        process.kill().await;
        let died = SystemTime::now();
        replica
            .dead
            .lock()
            .expect("dead")
            .push((process.stderr(), died));
        eprintln!("chaos: killed {}, down for {down_for:?}", replica.label);
        tokio::time::sleep(down_for).await;
        *process =
            ServiceProcess::serve(&replica.label, &self.database_url, &replica.options).await;
        *replica.addr.lock().expect("addr") = Some(process.grpc_addr);
    }

    /// SIGSTOP for `pause`, then SIGCONT: its leases lapse and its agent looks dead meanwhile.
    async fn pause(&self, index: usize, pause: Duration) {
        let replica = &self.replicas[index];
        let process = replica.process.lock().await;
        eprintln!("chaos: pausing {} for {pause:?}", replica.label);
        process.signal(libc::SIGSTOP);
        tokio::time::sleep(pause).await;
        process.signal(libc::SIGCONT);
    }

    /// Polls until `server_id` settles (active or error) through whichever replica is up.
    async fn settled(&self, server_id: &str) -> OnboardingStatus {
        let deadline = Instant::now() + SETTLE;
        loop {
            let status = self
                .call("GetOnboardingStatus", |mut client| {
                    let server_id = server_id.to_owned();
                    async move {
                        client
                            .get_onboarding_status(GetOnboardingStatusRequest { server_id })
                            .await
                    }
                })
                .await;
            let settled = status.server_status == ServerStatus::Active as i32
                || status.server_status == ServerStatus::Error as i32;
            if settled || Instant::now() > deadline {
                return status;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Every step run on record: the killed incarnations' (open runs end when they died) and the
    /// living ones'.
    fn step_runs(&self) -> Vec<StepRun> {
        let mut runs = Vec::new();
        for replica in &self.replicas {
            for (log, died) in replica.dead.lock().expect("dead").iter() {
                runs.extend(step_runs(log, micros(*died)));
            }
            let living = replica.process.try_lock().expect("no event runs now");
            runs.extend(step_runs(&living.stderr(), micros(SystemTime::now())));
        }
        runs
    }

    async fn stop(&self) {
        for replica in &self.replicas {
            replica.process.lock().await.kill().await;
        }
    }
}

/// A replica with every onboarding step whose agent has `ip`, connecting from it; with the
/// suite's short lease and sweep, and a budget of transient faults that a few deaths of the
/// runner in the middle of a step do not exhaust.
fn agent_options(ip: &str) -> ReplicaOptions {
    let mut options = mysql_replica_options();
    options.agent_name = format!("chaos-{ip}");
    options.agent_outbound_ip = ip.to_owned();
    options.lease_ttl = humantime::format_duration(LEASE_TTL).to_string();
    options.sweep_interval = humantime::format_duration(SWEEP).to_string();
    options.extra_args = vec![
        "--agent-source-address".to_owned(),
        ip.to_owned(),
        "--mysql-connect-attempts".to_owned(),
        "10".to_owned(),
        "--mysql-connect-timeout".to_owned(),
        "2s".to_owned(),
    ];
    options
}

fn micros(at: SystemTime) -> i64 {
    i64::try_from(
        at.duration_since(UNIX_EPOCH)
            .expect("after 1970")
            .as_micros(),
    )
    .expect("fits")
}

// ------------------------------------------------------------------------------------------------
// Step runs, from the replicas' logs
// ------------------------------------------------------------------------------------------------

/// One run of a step: from the line logged as it begins to the last instant it was polled (or
/// the death of its process, when it never ended).
#[derive(Debug, Clone)]
struct StepRun {
    server_id: String,
    step: String,
    runner: String,
    epoch: i64,
    from_us: i64,
    until_us: i64,
}

/// The runs in one process's JSON log; a run that did not end ends at `died_us`.
fn step_runs(log: &str, died_us: i64) -> Vec<StepRun> {
    let mut open: HashMap<(String, String, i64), StepRun> = HashMap::new();
    let mut runs = Vec::new();
    for line in log.lines() {
        let Ok(entry) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let fields = &entry["fields"];
        if fields["message"] != "step run" {
            continue;
        }
        let text = |name: &str| fields[name].as_str().expect("a text field").to_owned();
        let number = |name: &str| fields[name].as_i64().expect("a number field");
        let key = (text("server_id"), text("step"), number("epoch"));
        if fields["phase"] == "begins" {
            open.insert(
                key.clone(),
                StepRun {
                    server_id: key.0,
                    step: key.1,
                    runner: text("runner"),
                    epoch: key.2,
                    from_us: number("at_us"),
                    until_us: died_us,
                },
            );
        } else if let Some(mut run) = open.remove(&key) {
            let until = number("active_until_us");
            run.until_us = if until == 0 { run.from_us } else { until };
            runs.push(run);
        }
    }
    runs.extend(open.into_values());
    runs
}

/// Fails when two runs of one server's steps by different runners (or epochs) overlap in time.
fn assert_no_overlap(runs: &[StepRun], seed: u64) {
    let mut by_server: BTreeMap<&str, Vec<&StepRun>> = BTreeMap::new();
    for run in runs {
        by_server.entry(&run.server_id).or_default().push(run);
    }
    for (server, mut runs) in by_server {
        runs.sort_by_key(|run| (run.from_us, run.until_us));
        for pair in runs.windows(2) {
            let (first, second) = (pair[0], pair[1]);
            let same_runner = first.runner == second.runner && first.epoch == second.epoch;
            assert!(
                same_runner || first.until_us <= second.from_us,
                "seed {seed}: two runs of {server}'s steps overlapped:\n{first:?}\n{second:?}"
            );
        }
    }
}

#[test]
#[should_panic(expected = "overlapped")]
fn the_validator_catches_two_runners_at_once() {
    let run = |runner: &str, epoch, from_us, until_us| StepRun {
        server_id: "s".to_owned(),
        step: "initializing".to_owned(),
        runner: runner.to_owned(),
        epoch,
        from_us,
        until_us,
    };
    assert_no_overlap(&[run("a", 1, 0, 10), run("a", 1, 10, 20)], 0);
    assert_no_overlap(&[run("b", 2, 15, 30), run("a", 1, 0, 20)], 0);
}
