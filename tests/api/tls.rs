//! TLS: both listeners speak TLS with `--tls-cert` / `--tls-key` (ALPN h2 and http/1.1),
//! refuse plaintext, require client certificates with `--tls-client-ca`, serve a rotated
//! certificate without a restart (file change or SIGHUP); the service reaches PostgreSQL over TLS
//! as the URL's `sslmode` asks, checked against a private PostgreSQL cluster that accepts only TLS.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use crate::common::*;
use dbtrail_servers::{config::Config, proto::ListServersRequest};
use hyper_util::rt::TokioIo;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair,
};
use rustls::{
    ClientConfig, RootCertStore,
    pki_types::{CertificateDer, PrivateKeyDer, ServerName, pem::PemObject},
};
use tokio::net::TcpStream;
use tonic::transport::{Channel, Endpoint};

// ------------------------------------------------------------------------------------------------
// A test certificate authority
// ------------------------------------------------------------------------------------------------

/// A CA in a temporary directory, issuing certificates into it.
struct Pki {
    dir: tempfile::TempDir,
    ca: CertifiedIssuer<'static, KeyPair>,
    ca_path: PathBuf,
}

impl Pki {
    fn new(name: &str) -> Pki {
        let dir = tempfile::tempdir().expect("a directory for certificates");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().expect("a CA key"))
            .expect("a self-signed CA");
        let ca_path = dir.path().join(format!("{name}.pem"));
        std::fs::write(&ca_path, ca.pem()).expect("write the CA");
        Pki { dir, ca, ca_path }
    }

    /// A certificate for `names` signed by this CA: (certificate PEM, key PEM).
    fn issue(
        &self,
        common_name: &str,
        names: &[&str],
        usage: ExtendedKeyUsagePurpose,
    ) -> (String, String) {
        let names: Vec<String> = names.iter().map(|name| name.to_string()).collect();
        let mut params = CertificateParams::new(names).expect("leaf params");
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.extended_key_usages = vec![usage];
        let key = KeyPair::generate().expect("a leaf key");
        let certificate = params.signed_by(&key, &self.ca).expect("a signed leaf");
        (certificate.pem(), key.serialize_pem())
    }

    /// Issues a server certificate for localhost into `name.pem` / `name.key` (replacing them).
    fn server_files(&self, name: &str, common_name: &str) -> (PathBuf, PathBuf) {
        let (certificate, key) = self.issue(
            common_name,
            &["localhost", "127.0.0.1"],
            ExtendedKeyUsagePurpose::ServerAuth,
        );
        self.write(name, &certificate, &key)
    }

    fn write(&self, name: &str, certificate: &str, key: &str) -> (PathBuf, PathBuf) {
        let certificate_path = self.path(&format!("{name}.pem"));
        let key_path = self.path(&format!("{name}.key"));
        // Written beside and renamed into place, as certificate managers do.
        for (path, content) in [(&key_path, key), (&certificate_path, certificate)] {
            let partial = path.with_extension("partial");
            std::fs::write(&partial, content).expect("write a certificate file");
            std::fs::rename(&partial, path).expect("move a certificate file into place");
        }
        (certificate_path, key_path)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn roots(&self) -> RootCertStore {
        let mut roots = RootCertStore::empty();
        roots.add(self.ca.der().clone()).expect("the CA as a root");
        roots
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A client configuration trusting `pki`, offering `alpn`, with an optional client certificate.
fn client_tls(pki: &Pki, identity: Option<&(String, String)>, alpn: &[&[u8]]) -> Arc<ClientConfig> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_root_certificates(pki.roots());
    let mut config = match identity {
        None => builder.with_no_client_auth(),
        Some((certificate, key)) => builder
            .with_client_auth_cert(
                vec![
                    CertificateDer::from_pem_slice(certificate.as_bytes()).expect("a certificate"),
                ],
                PrivateKeyDer::from_pem_slice(key.as_bytes()).expect("a key"),
            )
            .expect("a client certificate"),
    };
    config.alpn_protocols = alpn.iter().map(|protocol| protocol.to_vec()).collect();
    Arc::new(config)
}

// ------------------------------------------------------------------------------------------------
// The service with TLS
// ------------------------------------------------------------------------------------------------

struct TlsApp {
    running: Option<dbtrail_servers::app::RunningApp>,
    grpc_addr: SocketAddr,
    http_addr: SocketAddr,
    tenant: Tenant,
    _data_dir: tempfile::TempDir,
    _db: TestDatabase,
}

impl TlsApp {
    async fn start(tls_args: &[&Path]) -> TlsApp {
        let [certificate, key, rest @ ..] = tls_args else {
            panic!("a certificate and a key")
        };
        let db = TestDatabase::create().await;
        let tenant = db.create_tenant("tenant-a", None).await;
        let data_dir = tempfile::tempdir().expect("a data directory");
        let mut extra_args = vec![
            "--tls-cert".to_owned(),
            certificate.display().to_string(),
            "--tls-key".to_owned(),
            key.display().to_string(),
        ];
        if let [client_ca] = rest {
            extra_args.push("--tls-client-ca".to_owned());
            extra_args.push(client_ca.display().to_string());
        }
        let options = ReplicaOptions {
            extra_args,
            ..Default::default()
        };
        let args = options.serve_args(&db.url, "127.0.0.1:0", "127.0.0.1:0", data_dir.path());
        let config = Config::parse_serve_args(args).expect("serve flags");
        let running = dbtrail_servers::app::start_with_steps(
            config,
            dbtrail_servers::onboarding::core_steps(),
        )
        .await
        .unwrap_or_else(|error| panic!("app::start: {error}"));
        TlsApp {
            grpc_addr: running.grpc_addr,
            http_addr: running.http_addr,
            running: Some(running),
            tenant,
            _data_dir: data_dir,
            _db: db,
        }
    }

    /// A gRPC channel over TLS with `tls`.
    async fn channel(&self, tls: Arc<ClientConfig>) -> Result<Channel, tonic::transport::Error> {
        tls_channel(self.grpc_addr, tls).await
    }

    fn client(&self, channel: Channel) -> Client {
        client_with_key(channel, &self.tenant.key)
    }

    fn https(&self, path: &str) -> String {
        format!("https://localhost:{}{path}", self.http_addr.port())
    }

    async fn shutdown(mut self) {
        if let Some(running) = self.running.take() {
            running.shutdown().await;
        }
    }
}

/// A tonic channel whose connections are TLS sessions made by rustls with `tls`.
async fn tls_channel(
    addr: SocketAddr,
    tls: Arc<ClientConfig>,
) -> Result<Channel, tonic::transport::Error> {
    let connector = tower::service_fn(move |_: http::Uri| {
        let tls = tls.clone();
        async move {
            let tcp = TcpStream::connect(addr).await?;
            let name = ServerName::try_from("localhost").expect("a server name");
            let session = tokio_rustls::TlsConnector::from(tls)
                .connect(name, tcp)
                .await?;
            Ok::<_, std::io::Error>(TokioIo::new(session))
        }
    });
    Endpoint::from_shared(format!("http://localhost:{}", addr.port()))
        .expect("an endpoint")
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(10))
        .connect_with_connector(connector)
        .await
}

/// The leaf certificate the listener at `addr` serves now.
async fn served_certificate(addr: SocketAddr, tls: Arc<ClientConfig>) -> CertificateDer<'static> {
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let name = ServerName::try_from("localhost").expect("a server name");
    let session = tokio_rustls::TlsConnector::from(tls)
        .connect(name, tcp)
        .await
        .expect("a TLS handshake");
    session
        .get_ref()
        .1
        .peer_certificates()
        .expect("a server certificate")[0]
        .clone()
}

fn certificate_of(path: &Path) -> CertificateDer<'static> {
    CertificateDer::from_pem_file(path).expect("a PEM certificate")
}

/// How many servers ListServers shows, or why the call failed.
async fn list_servers(client: &mut Client) -> Result<usize, String> {
    client
        .list_servers(ListServersRequest::default())
        .await
        .map(|response| response.into_inner().servers.len())
        .map_err(|status| status.to_string())
}

fn https_client(pki: &Pki, identity: Option<&(String, String)>) -> reqwest::Client {
    let mut builder = reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(
            reqwest::Certificate::from_pem(pki.ca.pem().as_bytes()).expect("the CA for reqwest"),
        )
        .timeout(Duration::from_secs(10));
    if let Some((certificate, key)) = identity {
        builder = builder.identity(
            reqwest::Identity::from_pem(format!("{certificate}\n{key}").as_bytes())
                .expect("a client identity"),
        );
    }
    builder.build().expect("an HTTPS client")
}

/// `GET path` with the tenant's key: the status and the HTTP version spoken.
async fn https_get(
    client: &reqwest::Client,
    app: &TlsApp,
    path: &str,
) -> reqwest::Result<(u16, http::Version)> {
    let response = client
        .get(app.https(path))
        .bearer_auth(&app.tenant.key)
        .send()
        .await?;
    Ok((response.status().as_u16(), response.version()))
}

/// The value of `series` on /metrics (0 when absent).
async fn metric(client: &reqwest::Client, app: &TlsApp, series: &str) -> f64 {
    let text = client
        .get(app.https("/metrics"))
        .send()
        .await
        .expect("GET /metrics")
        .text()
        .await
        .expect("the metrics text");
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0.0)
}

// ------------------------------------------------------------------------------------------------
// The listeners
// ------------------------------------------------------------------------------------------------

#[test]
fn both_listeners_speak_tls_with_alpn_and_refuse_plaintext_and_strangers() {
    block_on(async {
        let pki = Pki::new("test-ca");
        let (certificate, key) = pki.server_files("server", "dbtrail-servers");
        let app = TlsApp::start(&[&certificate, &key]).await;

        // gRPC: reflection without a key, a call with one, over TLS with the CA.
        let channel = app
            .channel(client_tls(&pki, None, &[b"h2"]))
            .await
            .expect("a TLS channel");
        let services = reflected_services(channel.clone(), ReflectionVersion::V1).await;
        assert!(services.contains(SERVERS_SERVICE), "{services:?}");
        assert_eq!(list_servers(&mut app.client(channel)).await, Ok(0));

        // REST: h2 by ALPN by default, HTTP/1.1 when the client offers only that.
        let https = https_client(&pki, None);
        assert_eq!(
            https_get(&https, &app, "/servers")
                .await
                .expect("GET over TLS"),
            (200, http::Version::HTTP_2)
        );
        let http1 = reqwest::Client::builder()
            .use_rustls_tls()
            .tls_built_in_root_certs(false)
            .add_root_certificate(
                reqwest::Certificate::from_pem(pki.ca.pem().as_bytes()).expect("CA"),
            )
            .http1_only()
            .build()
            .expect("an HTTP/1.1 client");
        assert_eq!(
            https_get(&http1, &app, "/healthz")
                .await
                .expect("HTTP/1.1 over TLS"),
            (200, http::Version::HTTP_11)
        );

        // Plaintext is refused on both listeners.
        let plain_grpc = health(app.grpc_addr, "").await;
        assert!(
            plain_grpc.is_err(),
            "plaintext gRPC was answered: {plain_grpc:?}"
        );
        let plain_http = reqwest::Client::new()
            .get(format!("http://{}/healthz", app.http_addr))
            .timeout(Duration::from_secs(10))
            .send()
            .await;
        assert!(
            plain_http.is_err(),
            "plaintext HTTP was answered: {plain_http:?}"
        );

        // A client that does not trust the CA refuses the service's certificate.
        let stranger = Pki::new("other-ca");
        let refused = app.channel(client_tls(&stranger, None, &[b"h2"])).await;
        assert!(
            refused.is_err(),
            "a certificate of an unknown CA was accepted"
        );

        app.shutdown().await;
    });
}

#[test]
fn with_a_client_ca_only_clients_with_its_certificates_are_served() {
    block_on(async {
        let pki = Pki::new("test-ca");
        let (certificate, key) = pki.server_files("server", "dbtrail-servers");
        let app = TlsApp::start(&[&certificate, &key, &pki.ca_path]).await;
        let identity = pki.issue("caller", &["caller"], ExtendedKeyUsagePurpose::ClientAuth);

        // With a certificate of the CA: served on both listeners.
        let channel = app
            .channel(client_tls(&pki, Some(&identity), &[b"h2"]))
            .await
            .expect("an mTLS channel");
        assert_eq!(list_servers(&mut app.client(channel)).await, Ok(0));
        let https = https_client(&pki, Some(&identity));
        assert_eq!(
            https_get(&https, &app, "/servers")
                .await
                .expect("GET with a client certificate")
                .0,
            200
        );

        // Without one, or with another CA's: refused at the handshake, on both listeners.
        let stranger = Pki::new("other-ca");
        let foreign = stranger.issue(
            "intruder",
            &["intruder"],
            ExtendedKeyUsagePurpose::ClientAuth,
        );
        for identity in [None, Some(&foreign)] {
            let grpc = match app.channel(client_tls(&pki, identity, &[b"h2"])).await {
                Ok(channel) => list_servers(&mut app.client(channel)).await,
                Err(error) => Err(error.to_string()),
            };
            assert!(
                grpc.is_err(),
                "gRPC served a client without a valid certificate: {grpc:?}"
            );
            let rest = https_get(&https_client(&pki, identity), &app, "/servers").await;
            assert!(
                rest.is_err(),
                "REST served a client without a valid certificate: {rest:?}"
            );
        }

        app.shutdown().await;
    });
}

#[test]
fn a_rotated_certificate_is_served_without_a_restart_and_open_connections_stay() {
    block_on(async {
        let pki = Pki::new("test-ca");
        let (certificate, key) = pki.server_files("server", "first");
        let app = TlsApp::start(&[&certificate, &key]).await;
        let first = certificate_of(&certificate);
        let grpc_tls = client_tls(&pki, None, &[b"h2"]);
        assert_eq!(
            served_certificate(app.grpc_addr, grpc_tls.clone()).await,
            first
        );
        let open = app.channel(grpc_tls.clone()).await.expect("a TLS channel");
        let mut open_client = app.client(open);
        assert_eq!(list_servers(&mut open_client).await, Ok(0));

        // New files in place: both listeners serve the new certificate within a few seconds.
        pki.server_files("server", "second");
        let second = certificate_of(&certificate);
        assert_ne!(first, second);
        for addr in [app.grpc_addr, app.http_addr] {
            let tls = grpc_tls.clone();
            let expected = second.clone();
            wait_until(
                "the rotated certificate to be served",
                Duration::from_secs(15),
                || {
                    let tls = tls.clone();
                    let expected = expected.clone();
                    async move { served_certificate(addr, tls).await == expected }
                },
            )
            .await;
        }
        // The connection opened before the rotation was not dropped.
        assert_eq!(list_servers(&mut open_client).await, Ok(0));

        // A broken file is not served: the working certificate stays, and the failure is counted.
        let https = https_client(&pki, None);
        let failed = "dbtrail_tls_reloads_total{result=\"failed\"}";
        pki.write("server", "not a certificate", "not a key");
        wait_until(
            "the failed reload to be counted",
            Duration::from_secs(15),
            || {
                let https = https.clone();
                let app = &app;
                async move { metric(&https, app, failed).await >= 1.0 }
            },
        )
        .await;
        assert_eq!(
            served_certificate(app.grpc_addr, grpc_tls.clone()).await,
            second
        );

        // SIGHUP reloads at once, whether or not a file changed.
        let third = pki.issue("third", &["localhost"], ExtendedKeyUsagePurpose::ServerAuth);
        pki.write("server", &third.0, &third.1);
        let ok = "dbtrail_tls_reloads_total{result=\"ok\"}";
        wait_until(
            "the repaired files to be reloaded",
            Duration::from_secs(15),
            || {
                let https = https.clone();
                let app = &app;
                async move { metric(&https, app, ok).await >= 2.0 }
            },
        )
        .await;
        let before = metric(&https, &app, ok).await;
        // SAFETY: raising a signal this process handles (the service installed its SIGHUP handler
        // before app::start returned).
        assert_eq!(unsafe { libc::raise(libc::SIGHUP) }, 0);
        wait_until(
            "SIGHUP to reload the certificate",
            Duration::from_secs(10),
            || {
                let https = https.clone();
                let app = &app;
                async move { metric(&https, app, ok).await > before }
            },
        )
        .await;
        assert_eq!(list_servers(&mut open_client).await, Ok(0));

        app.shutdown().await;
    });
}

// ------------------------------------------------------------------------------------------------
// PostgreSQL over TLS
// ------------------------------------------------------------------------------------------------

/// A private PostgreSQL cluster that accepts only TLS over TCP (trust auth), with a certificate
/// of `pki` for `localhost`. Stopped on drop.
struct TlsPostgres {
    port: u16,
    child: std::process::Child,
    _dir: tempfile::TempDir,
}

/// The directory of the installed PostgreSQL server binaries (the newest major version).
fn postgres_bin_dir() -> PathBuf {
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL server binaries under /usr/lib/postgresql (scripts/test installs them)")
        .filter_map(|entry| Some(entry.ok()?.path().join("bin")))
        .filter(|bin| bin.join("initdb").exists())
        .collect();
    versions.sort_by_key(|bin| {
        bin.parent()
            .and_then(|version| version.file_name()?.to_str()?.parse::<u32>().ok())
            .unwrap_or(0)
    });
    versions.pop().expect("an installed initdb")
}

/// Runs PostgreSQL's programs as the `postgres` user when the tests run as root (initdb and
/// postgres refuse root).
fn as_postgres_user(command: &mut std::process::Command, owned: &[&Path]) {
    use std::os::unix::process::CommandExt;
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return;
    }
    let name = std::ffi::CString::new("postgres").expect("a user name");
    // SAFETY: getpwnam with a NUL-terminated name; the record is read at once.
    let user = unsafe { libc::getpwnam(name.as_ptr()) };
    assert!(
        !user.is_null(),
        "the tests run as root and there is no postgres user"
    );
    // SAFETY: checked non-null above.
    let (uid, gid) = unsafe { ((*user).pw_uid, (*user).pw_gid) };
    for path in owned {
        std::os::unix::fs::chown(path, Some(uid), Some(gid)).expect("chown to postgres");
    }
    command.uid(uid).gid(gid);
}

impl TlsPostgres {
    async fn start(pki: &Pki) -> TlsPostgres {
        let bin = postgres_bin_dir();
        let dir = tempfile::tempdir().expect("a directory for the cluster");
        let data = dir.path().join("data");
        let (certificate, key) = pki.issue(
            "postgres",
            &["localhost"],
            ExtendedKeyUsagePurpose::ServerAuth,
        );
        let certificate_path = dir.path().join("server.crt");
        let key_path = dir.path().join("server.key");
        std::fs::write(&certificate_path, certificate).expect("write the certificate");
        std::fs::write(&key_path, key).expect("write the key");
        std::fs::set_permissions(
            &key_path,
            std::os::unix::fs::PermissionsExt::from_mode(0o600),
        )
        .expect("chmod the key");
        let owned = [dir.path(), &certificate_path, &key_path];

        let mut initdb = std::process::Command::new(bin.join("initdb"));
        initdb
            .args(["-U", "postgres", "-A", "trust", "--no-sync", "-D"])
            .arg(&data)
            .stdout(std::process::Stdio::null());
        as_postgres_user(&mut initdb, &owned);
        let status = initdb.status().expect("run initdb");
        assert!(status.success(), "initdb failed: {status}");
        std::fs::write(
            data.join("pg_hba.conf"),
            "local all all trust\nhostssl all all 127.0.0.1/32 trust\nhostssl all all ::1/128 \
             trust\n",
        )
        .expect("write pg_hba.conf");

        let port = free_port();
        let mut postgres = std::process::Command::new(bin.join("postgres"));
        postgres
            .arg("-D")
            .arg(&data)
            .args(["-p", &port.to_string(), "-k"])
            .arg(dir.path())
            .args([
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                "ssl=on",
                "-c",
                "fsync=off",
            ])
            .arg("-c")
            .arg(format!("ssl_cert_file={}", certificate_path.display()))
            .arg("-c")
            .arg(format!("ssl_key_file={}", key_path.display()))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        as_postgres_user(&mut postgres, &[]);
        let child = postgres.spawn().expect("start postgres");
        let cluster = TlsPostgres {
            port,
            child,
            _dir: dir,
        };
        let socket = cluster.socket_url("postgres");
        wait_until(
            "the private PostgreSQL to accept connections",
            Duration::from_secs(30),
            || {
                let socket = socket.clone();
                async move {
                    tokio_postgres::connect(&socket, tokio_postgres::NoTls)
                        .await
                        .is_ok()
                }
            },
        )
        .await;
        cluster
    }

    /// Over the Unix socket (no TLS), for looking at the cluster from outside the service.
    fn socket_url(&self, database: &str) -> String {
        format!(
            "host={} port={} user=postgres dbname={database}",
            self._dir.path().display(),
            self.port
        )
    }

    fn tcp_url(&self, host: &str, database: &str, query: &str) -> String {
        format!(
            "postgres://postgres@{host}:{}/{database}?{query}",
            self.port
        )
    }
}

impl Drop for TlsPostgres {
    fn drop(&mut self) {
        // SAFETY: signalling our own child; SIGINT is PostgreSQL's fast shutdown.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        let _ = self.child.wait();
    }
}

#[test]
fn the_service_reaches_postgres_over_tls_as_sslmode_asks() {
    block_on(async {
        let pki = Pki::new("postgres-ca");
        let cluster = TlsPostgres::start(&pki).await;
        let root = format!("sslrootcert={}", pki.ca_path.display());
        let verify_full = cluster.tcp_url(
            "localhost",
            "dbtrail",
            &format!("sslmode=verify-full&{root}"),
        );

        // Without TLS the cluster refuses; with a CA that did not sign its certificate, or a host
        // the certificate does not name under verify-full, the service refuses.
        let plaintext = dbtrail_servers::store::create_database_and_migrate(&cluster.tcp_url(
            "127.0.0.1",
            "dbtrail",
            "sslmode=disable",
        ))
        .await
        .expect_err("plaintext is refused by the cluster");
        assert!(
            plaintext.to_string().contains("no encryption"),
            "{plaintext}"
        );
        let stranger = Pki::new("other-ca");
        let foreign_root = format!(
            "sslmode=verify-full&sslrootcert={}",
            stranger.ca_path.display()
        );
        let unknown = dbtrail_servers::store::create_database_and_migrate(&cluster.tcp_url(
            "localhost",
            "dbtrail",
            &foreign_root,
        ))
        .await
        .expect_err("a certificate of an unknown CA is refused");
        assert!(unknown.to_string().contains("certificate"), "{unknown}");
        let wrong_host = dbtrail_servers::store::create_database_and_migrate(&cluster.tcp_url(
            "127.0.0.1",
            "dbtrail",
            &format!("sslmode=verify-full&{root}"),
        ))
        .await
        .expect_err("verify-full refuses a certificate that does not name the host");
        assert!(
            wrong_host.to_string().contains("certificate"),
            "{wrong_host}"
        );

        // verify-full to the name in the certificate: the service migrates, starts and serves.
        dbtrail_servers::store::create_database_and_migrate(&verify_full)
            .await
            .expect("migrate over TLS");
        let admin = dbtrail_servers::auth::admin::Admin::connect(&verify_full)
            .await
            .expect("admin over TLS");
        admin
            .create_tenant("tenant-a", None)
            .await
            .expect("a tenant");
        let key = admin
            .create_key("tenant-a", &ALL_PERMISSIONS, Some("test"), None)
            .await
            .expect("a key");
        let data_dir = tempfile::tempdir().expect("a data directory");
        let options = ReplicaOptions::default();
        let args = options.serve_args(&verify_full, "127.0.0.1:0", "127.0.0.1:0", data_dir.path());
        let running = dbtrail_servers::app::start_with_steps(
            Config::parse_serve_args(args).expect("serve flags"),
            dbtrail_servers::onboarding::core_steps(),
        )
        .await
        .unwrap_or_else(|error| panic!("app::start over TLS: {error}"));
        let mut client = client_with_key(channel(running.grpc_addr).await, &key.secret);
        let server = register(&mut client, direct_server("over-tls")).await;
        assert_eq!(
            get_server(&mut client, &server.server_id).await.name,
            "over-tls"
        );

        // Every connection the service holds to its database is TLS; verify-ca accepts the
        // address the certificate does not name.
        let outside =
            tokio_postgres::connect(&cluster.socket_url("postgres"), tokio_postgres::NoTls)
                .await
                .map(|(client, connection)| {
                    tokio::spawn(connection);
                    client
                })
                .expect("the cluster over its socket");
        let row = outside
            .query_one(
                "SELECT count(*) FILTER (WHERE s.ssl), count(*) FILTER (WHERE NOT s.ssl) FROM \
                 pg_stat_ssl s JOIN pg_stat_activity a USING (pid) WHERE a.datname = 'dbtrail'",
                &[],
            )
            .await
            .expect("pg_stat_ssl");
        let (tls, plain): (i64, i64) = (row.get(0), row.get(1));
        assert!(
            tls >= 1 && plain == 0,
            "{tls} TLS and {plain} plaintext connections"
        );
        dbtrail_servers::store::create_database_and_migrate(&cluster.tcp_url(
            "127.0.0.1",
            "dbtrail",
            &format!("sslmode=verify-ca&{root}"),
        ))
        .await
        .expect("verify-ca checks the chain, not the name");
        running.shutdown().await;
    });
}
