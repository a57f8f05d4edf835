//! The binary's commands (api.md §1): `tenants`, `keys` (the key alone on stdout; revocation bites
//! a running replica), `migrate`, the first-start bootstrap key, settings from the environment,
//! and `--help` listing the fixed flag and variable names.

use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;
use std::time::Duration;

use crate::common::*;
use dbtrail_servers::proto::{
    DecommissionServerRequest, ListServersRequest, RegisterServerRequest, ServerStatus,
};
use tonic::Code;

/// The first API key found in `text`.
fn find_key(text: &str) -> Option<String> {
    let start = text.find("dbt_")?;
    let key: String = text[start..]
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == '-')
        .collect();
    (key.len() > "dbt_".len() + 16).then_some(key)
}

/// The UUID on the first line of `text` that contains `needle`.
fn uuid_on_line_with(text: &str, needle: &str) -> Option<uuid::Uuid> {
    let line = text.lines().find(|line| line.contains(needle))?;
    line.split(|c: char| !(c.is_ascii_hexdigit() || c == '-'))
        .find_map(|word| uuid::Uuid::parse_str(word).ok())
}

#[test]
fn tenants_and_keys_are_managed_from_the_command_line() {
    block_on(async {
        let db = Arc::new(TestDatabase::create().await);
        let env = [("DATABASE_URL", db.url.as_str())];

        run_cli(&["tenants", "create", "acme", "--server-limit", "2"], &env)
            .await
            .assert_success();
        let duplicate = run_cli(&["tenants", "create", "acme"], &env).await;
        assert!(!duplicate.status.success(), "a duplicate tenant is refused");
        assert!(
            duplicate
                .stderr
                .contains("error: tenant \"acme\" already exists\n"),
            "the refusal names the tenant: {}",
            duplicate.stderr
        );
        let tenants = run_cli(&["tenants", "list"], &env).await;
        tenants.assert_success();
        assert!(
            tenants.stdout.contains("acme"),
            "tenants list shows acme: {}",
            tenants.stdout
        );

        let created = run_cli(
            &[
                "keys",
                "create",
                "--tenant",
                "acme",
                "--permissions",
                "servers:read,servers:write",
                "--name",
                "ci-key",
            ],
            &env,
        )
        .await;
        created.assert_success();
        let key = created.stdout.trim_end_matches('\n');
        assert!(
            key.starts_with("dbt_") && !key.contains(char::is_whitespace) && key.len() >= 4 + 22,
            "keys create prints the key alone on stdout, got {:?}",
            created.stdout
        );

        for bad in [
            vec![
                "keys",
                "create",
                "--tenant",
                "nobody",
                "--permissions",
                "servers:read",
            ],
            vec![
                "keys",
                "create",
                "--tenant",
                "acme",
                "--permissions",
                "servers:fly",
            ],
        ] {
            let output = run_cli(&bad, &env).await;
            assert!(!output.status.success(), "{bad:?} succeeded");
            assert!(
                output.stdout.trim().is_empty(),
                "{bad:?} printed a key: {}",
                output.stdout
            );
        }

        let keys = run_cli(&["keys", "list", "--tenant", "acme"], &env).await;
        keys.assert_success();
        assert!(
            keys.stdout.contains("ci-key"),
            "keys list shows the key's name: {}",
            keys.stdout
        );
        assert!(!keys.stdout.contains(key), "keys list never shows a secret");
        let key_id = uuid_on_line_with(&keys.stdout, "ci-key").expect("keys list shows the key id");

        // The key works against a running replica, within its permissions and its tenant's limit.
        let process = ServiceProcess::serve("cli-serve", &db.url, &ReplicaOptions::default()).await;
        let mut client = process.client(key).await;
        client
            .list_servers(ListServersRequest::default())
            .await
            .expect("ListServers with the new key");
        let first = register(&mut client, direct_server("one")).await;
        register(&mut client, direct_server("two")).await;
        let status = expect_err(
            client
                .register_server(RegisterServerRequest {
                    server: Some(direct_server("three")),
                    ..Default::default()
                })
                .await,
        );
        assert_error(&status, Code::ResourceExhausted, "SERVER_LIMIT_REACHED");
        assert!(
            status.message().contains("(2 of 2)"),
            "{:?}",
            status.message()
        );
        let status = expect_err(
            client
                .decommission_server(DecommissionServerRequest {
                    server_id: first.server_id.clone(),
                    ..Default::default()
                })
                .await,
        );
        assert_error(&status, Code::PermissionDenied, "MISSING_PERMISSION");
        assert!(
            status.message().contains("servers:delete"),
            "{:?}",
            status.message()
        );

        // Revoking it from the command line stops the running replica accepting it within a second.
        run_cli(&["keys", "revoke", &key_id.to_string()], &env)
            .await
            .assert_success();
        wait_until_refused(&client, Duration::from_millis(1500)).await;
        let status = expect_err(client.list_servers(ListServersRequest::default()).await);
        assert_error(&status, Code::Unauthenticated, "API_KEY_REVOKED");

        // A key that expires.
        let expiring = run_cli(
            &[
                "keys",
                "create",
                "--tenant",
                "acme",
                "--permissions",
                "servers:read",
                "--expires-in",
                "1s",
            ],
            &env,
        )
        .await;
        expiring.assert_success();
        let expiring_key = expiring.stdout.trim().to_owned();
        let mut expiring_client = process.client(&expiring_key).await;
        expiring_client
            .list_servers(ListServersRequest::default())
            .await
            .expect("a key before its expiry works");
        tokio::time::sleep(Duration::from_millis(1300)).await;
        let status = expect_err(
            expiring_client
                .list_servers(ListServersRequest::default())
                .await,
        );
        assert_error(&status, Code::Unauthenticated, "API_KEY_EXPIRED");
    });
}

#[test]
fn the_first_start_prints_a_bootstrap_key_once() {
    block_on(async {
        let db = Arc::new(TestDatabase::reserve());
        let options = ReplicaOptions::default();
        let mut first = ServiceProcess::serve("first-start", &db.url, &options).await;
        assert!(db.exists().await, "serve created the database");
        tokio::time::sleep(Duration::from_millis(300)).await;
        let printed = format!("{}\n{}", first.stdout(), first.stderr());
        let key =
            find_key(&printed).unwrap_or_else(|| panic!("no bootstrap key printed: {printed}"));

        // It carries all three permissions, for tenant `default`.
        let mut client = first.client(&key).await;
        let server = register(&mut client, direct_server("bootstrapped")).await;
        client
            .list_servers(ListServersRequest::default())
            .await
            .expect("ListServers with the bootstrap key");
        let retired = client
            .decommission_server(DecommissionServerRequest {
                server_id: server.server_id.clone(),
                ..Default::default()
            })
            .await
            .expect("DecommissionServer with the bootstrap key")
            .into_inner();
        assert_eq!(retired.status, ServerStatus::Decommissioned as i32);
        let tenants = run_cli(&["tenants", "list"], &[("DATABASE_URL", &db.url)]).await;
        tenants.assert_success();
        assert!(tenants.stdout.contains("default"), "{}", tenants.stdout);

        // A second start on the same database prints no key.
        first.kill().await;
        let second = ServiceProcess::serve("second-start", &db.url, &options).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let output = format!("{}\n{}", second.stdout(), second.stderr());
        assert!(
            !output.contains(&key),
            "the bootstrap key was printed again"
        );
        assert_eq!(
            find_key(&output),
            None,
            "a second start printed a key: {output}"
        );
        // And the first key still works.
        second
            .client(&key)
            .await
            .list_servers(ListServersRequest::default())
            .await
            .expect("the bootstrap key outlives a restart");
    });
}

#[test]
fn migrate_creates_and_migrates_a_missing_database() {
    block_on(async {
        let db = TestDatabase::reserve();
        assert!(!db.exists().await);
        let env = [("DATABASE_URL", db.url.as_str())];
        run_cli(&["migrate"], &env).await.assert_success();
        assert!(db.exists().await, "migrate created the database");
        let tables: Vec<String> = db
            .connect()
            .await
            .query(
                "SELECT table_name::text FROM information_schema.tables WHERE table_schema = \
                 'public'",
                &[],
            )
            .await
            .expect("list tables")
            .iter()
            .map(|row| row.get(0))
            .collect();
        for table in ["tenants", "api_keys", "servers", "onboarding_history"] {
            assert!(
                tables.iter().any(|name| name == table),
                "{table} missing: {tables:?}"
            );
        }
        // Idempotent.
        run_cli(&["migrate"], &env).await.assert_success();
        // And the commands work on it.
        run_cli(&["tenants", "create", "after-migrate"], &env)
            .await
            .assert_success();
    });
}

#[test]
fn serve_takes_every_setting_from_the_environment() {
    block_on(async {
        let db = Arc::new(TestDatabase::create().await);
        let tenant = db.create_tenant("tenant-a", None).await;
        let data_dir = tempfile::tempdir().expect("a data directory");
        let grpc = format!("127.0.0.1:{}", free_port());
        let http = format!("127.0.0.1:{}", free_port());
        let secrets_key = random_secrets_key();
        let data_dir_path = data_dir.path().to_string_lossy().into_owned();
        let env = [
            ("DATABASE_URL", db.url.as_str()),
            ("DBTRAIL_GRPC_ADDR", grpc.as_str()),
            ("DBTRAIL_HTTP_ADDR", http.as_str()),
            ("DBTRAIL_SECRETS_KEY", secrets_key.as_str()),
            ("DBTRAIL_AGENT_OUTBOUND_IP", "198.51.100.23"),
            ("DBTRAIL_DATA_DIR", data_dir_path.as_str()),
        ];
        let mut process = ServiceProcess::spawn(
            "env-serve",
            &["serve".to_owned()],
            &env,
            grpc.parse().expect("an address"),
            http.parse().expect("an address"),
        );
        process.wait_serving(Duration::from_secs(60)).await;
        let mut client = process.client(&tenant.key).await;
        // The target policy holds (no --allow-loopback-targets): a jumphost at a public address.
        let mut input = ssh_server("env-configured");
        input.ssh_tunnel.as_mut().expect("a tunnel").host = "203.0.113.10".to_owned();
        let server = register(&mut client, input).await;
        let status = wait_for_onboarding(
            &client,
            &server.server_id,
            "awaiting_firewall",
            Duration::from_secs(15),
            is_awaiting_firewall,
        )
        .await;
        assert_eq!(status.agent_outbound_ip.as_deref(), Some("198.51.100.23"));
        assert_eq!(http_get(process.http_addr, "/healthz").await.0, 200);
        // A secrets key was given, so none was generated; the archive's default directory is
        // all the data directory holds.
        assert!(data_dir.path().join("archive").is_dir());
        let files: Vec<_> = std::fs::read_dir(data_dir.path())
            .map(|entries| entries.flatten().collect())
            .unwrap_or_default();
        let files: Vec<_> = files
            .iter()
            .filter(|entry| entry.file_name() != "archive")
            .collect();
        assert!(
            files.is_empty(),
            "a key file was generated although one was configured: {files:?}"
        );
    });
}

#[test]
fn serve_without_a_secrets_key_generates_one_in_a_private_file() {
    block_on(async {
        let db = Arc::new(TestDatabase::create().await);
        let tenant = db.create_tenant("tenant-a", None).await;
        let data_dir = tempfile::tempdir().expect("a data directory");
        let grpc: std::net::SocketAddr = ([127, 0, 0, 1], free_port()).into();
        let http: std::net::SocketAddr = ([127, 0, 0, 1], free_port()).into();
        let args: Vec<String> = [
            "serve",
            "--database-url",
            &db.url,
            "--grpc-addr",
            &grpc.to_string(),
            "--http-addr",
            &http.to_string(),
            "--data-dir",
            &data_dir.path().to_string_lossy(),
            "--agent-outbound-ip",
            AGENT_OUTBOUND_IP,
            // Its server is at 127.0.0.1, as on a developer's machine.
            "--allow-loopback-targets",
        ]
        .iter()
        .map(|arg| arg.to_string())
        .collect();
        let mut process = ServiceProcess::spawn("keyless", &args, &[], grpc, http);
        process.wait_serving(Duration::from_secs(60)).await;
        let files: Vec<std::fs::DirEntry> = std::fs::read_dir(data_dir.path())
            .expect("the data directory")
            .flatten()
            .filter(|entry| entry.path().is_file())
            .collect();
        assert_eq!(files.len(), 1, "one generated key file: {files:?}");
        let mode = files[0].metadata().expect("metadata").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "the key file is private");
        let mut client = process.client(&tenant.key).await;
        register(&mut client, direct_server("sealed-with-generated-key")).await;
        let output = format!("{}{}", process.stdout(), process.stderr()).to_lowercase();
        assert!(
            output.contains("warn"),
            "a generated key comes with a warning"
        );
    });
}

#[test]
fn help_lists_the_commands_flags_and_variables() {
    block_on(async {
        let help = run_cli(&["--help"], &[]).await;
        help.assert_success();
        for command in ["serve", "migrate", "tenants", "keys"] {
            assert!(
                help.stdout.contains(command),
                "--help lists {command}: {}",
                help.stdout
            );
        }
        let serve = run_cli(&["serve", "--help"], &[]).await;
        serve.assert_success();
        for name in [
            "--database-url",
            "DATABASE_URL",
            "--grpc-addr",
            "DBTRAIL_GRPC_ADDR",
            "--http-addr",
            "DBTRAIL_HTTP_ADDR",
            "--secrets-key",
            "DBTRAIL_SECRETS_KEY",
            "--agent-outbound-ip",
            "DBTRAIL_AGENT_OUTBOUND_IP",
            "0.0.0.0:50051",
            "0.0.0.0:8080",
        ] {
            assert!(
                serve.stdout.contains(name),
                "serve --help lists {name}: {}",
                serve.stdout
            );
        }
        let keys = run_cli(&["keys", "create", "--help"], &[]).await;
        keys.assert_success();
        for name in ["--tenant", "--permissions", "--name", "--expires-in"] {
            assert!(
                keys.stdout.contains(name),
                "keys create --help lists {name}"
            );
        }
    });
}

/// `--database-url local` (what an unset URL falls back to when nothing answers at the default
/// address): the service runs a private PostgreSQL under its data directory, the command line
/// finds it there, SIGTERM stops it, and a restart serves the same data.
#[test]
fn the_service_runs_a_private_postgres_under_its_data_directory() {
    block_on(async {
        use std::os::unix::fs::PermissionsExt;
        let data = tempfile::tempdir().expect("a data directory");
        // As root, PostgreSQL runs as the postgres user, who must reach the directory.
        std::fs::set_permissions(data.path(), std::fs::Permissions::from_mode(0o755))
            .expect("chmod the data directory");
        let data_dir = data.path().to_string_lossy().into_owned();
        let options = ReplicaOptions {
            database_url: Some("local".into()),
            ..Default::default()
        };
        let start = |label: &str| {
            let grpc_addr: std::net::SocketAddr = ([127, 0, 0, 1], free_port()).into();
            let http_addr: std::net::SocketAddr = ([127, 0, 0, 1], free_port()).into();
            let mut args = vec!["serve".to_owned()];
            args.extend(options.serve_args(
                "unused",
                &grpc_addr.to_string(),
                &http_addr.to_string(),
                data.path(),
            ));
            ServiceProcess::spawn(label, &args, &[], grpc_addr, http_addr)
        };

        let mut first = start("private-postgres");
        first.wait_serving(Duration::from_secs(90)).await;
        assert!(
            first.stderr().contains("started a private PostgreSQL"),
            "it says so: {}",
            first.stderr()
        );
        let printed = format!("{}\n{}", first.stdout(), first.stderr());
        let key =
            find_key(&printed).unwrap_or_else(|| panic!("no bootstrap key printed: {printed}"));
        let mut client = first.client(&key).await;
        register(&mut client, direct_server("kept")).await;
        let created = run_cli(
            &[
                "keys",
                "create",
                "--tenant",
                "default",
                "--permissions",
                "servers:read",
                "--database-url",
                "local",
                "--data-dir",
                &data_dir,
            ],
            &[],
        )
        .await;
        created.assert_success();
        let reader = created.stdout.trim().to_owned();

        first.signal(libc::SIGTERM);
        assert!(first.wait_exit(Duration::from_secs(20)).await.success());
        let pid_file = data.path().join("postgres/data/postmaster.pid");
        wait_until(
            "the private PostgreSQL to stop",
            Duration::from_secs(15),
            || async { !pid_file.exists() },
        )
        .await;

        let mut second = start("private-postgres-again");
        second.wait_serving(Duration::from_secs(90)).await;
        let listed = second
            .client(&reader)
            .await
            .list_servers(ListServersRequest::default())
            .await
            .expect("ListServers with the key made from the command line")
            .into_inner();
        assert_eq!(listed.servers.len(), 1, "the data outlives a restart");
        second.signal(libc::SIGTERM);
        assert!(second.wait_exit(Duration::from_secs(20)).await.success());
    });
}

/// A database that cannot be reached is named (password hidden) with what to do about it.
#[test]
fn an_unreachable_database_is_named_with_what_to_do() {
    block_on(async {
        let data = tempfile::tempdir().expect("a data directory");
        let port = free_port();
        let url = format!("postgres://dbtrail:hunter2@127.0.0.1:{port}/dbtrail");
        let grpc = format!("127.0.0.1:{}", free_port());
        let http = format!("127.0.0.1:{}", free_port());
        let output = run_cli(
            &[
                "serve",
                "--database-url",
                &url,
                "--data-dir",
                &data.path().to_string_lossy(),
                "--grpc-addr",
                &grpc,
                "--http-addr",
                &http,
            ],
            &[],
        )
        .await;
        assert!(!output.status.success(), "serve exited {}", output.status);
        let said = &output.stderr;
        assert!(
            said.contains(&format!(
                "cannot use the database at postgres://dbtrail:***@127.0.0.1:{port}/dbtrail"
            )),
            "{said}"
        );
        assert!(said.contains("--database-url (DATABASE_URL)"), "{said}");
        assert!(!said.contains("hunter2"), "the password leaked: {said}");
    });
}

/// The soft and hard open-file limits of a process, from /proc.
fn open_file_limits(pid: u32) -> (u64, u64) {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).expect("read /proc limits");
    let line = limits
        .lines()
        .find(|line| line.starts_with("Max open files"))
        .expect("a Max open files line");
    let numbers: Vec<u64> = line
        .split_whitespace()
        .filter_map(|word| word.parse().ok())
        .collect();
    (numbers[0], numbers[1])
}

#[test]
fn serve_raises_its_open_file_limit_to_the_hard_limit_and_says_so() {
    block_on(async {
        // nextest runs each test in a process of its own: the lower soft limit is this test's,
        // and the service inherits it.
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit and setrlimit read and write the one struct they are given.
        assert_eq!(
            unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) },
            0
        );
        assert!(
            limit.rlim_max > 512,
            "the hard limit is too low to test: {}",
            limit.rlim_max
        );
        limit.rlim_cur = 512;
        assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) }, 0);

        let db = TestDatabase::create().await;
        let process = ServiceProcess::serve("fd-limit", &db.url, &ReplicaOptions::default()).await;
        assert_eq!(
            open_file_limits(process.pid()),
            (limit.rlim_max, limit.rlim_max),
            "the service's soft limit is its hard limit"
        );
        assert!(
            process
                .stderr()
                .contains("raised the open-file limit to its hard limit"),
            "{}",
            process.stderr()
        );
    });
}

/// `serve` says where its console is, and text logs written to a pipe (a file, a collector)
/// carry no colour codes.
#[test]
fn serve_prints_its_console_url_and_pipes_plain_text_logs() {
    block_on(async {
        let db = TestDatabase::create().await;
        let options = ReplicaOptions {
            extra_args: vec!["--log-format".into(), "text".into()],
            ..ReplicaOptions::default()
        };
        let process = ServiceProcess::serve("console-url", &db.url, &options).await;
        let expected = format!("Console: http://{}/console", process.http_addr);
        wait_until(
            "the console URL on stdout",
            Duration::from_secs(10),
            || async { process.stdout().contains(&expected) },
        )
        .await;
        let (status, _) = http_get(process.http_addr, "/console").await;
        assert_eq!(status, 200, "the printed URL serves the console");
        let logs = process.stderr();
        assert!(logs.contains("serving"), "text logs: {logs}");
        assert!(
            !logs.contains('\u{1b}'),
            "no escape codes in piped logs: {logs:?}"
        );
    });
}

/// `keys create` and `tenants create` against a database that does not exist (a typo in the URL)
/// name the problem and the fix, and create nothing: no database appears.
#[test]
fn admin_commands_never_create_a_mistyped_database() {
    block_on(async {
        let name = format!(
            "dbtrail_typo_{}",
            &uuid::Uuid::new_v4().simple().to_string()[..12]
        );
        let url = database_url(&name);
        let env = [("DATABASE_URL", url.as_str())];
        for args in [
            &[
                "keys",
                "create",
                "--tenant",
                "default",
                "--permissions",
                "servers:read",
            ][..],
            &["tenants", "create", "acme"][..],
        ] {
            let output = run_cli(args, &env).await;
            assert!(!output.status.success(), "{args:?} succeeded: {output:?}");
            assert!(
                output
                    .stderr
                    .contains(&format!("database \"{name}\" does not exist"))
                    && output.stderr.contains("dbtrail-servers migrate"),
                "{args:?}: {}",
                output.stderr
            );
        }
        let admin = pg_connect(&admin_database_url()).await;
        let found = admin
            .query_one(
                "SELECT count(*) FROM pg_database WHERE datname = $1",
                &[&name],
            )
            .await
            .expect("pg_database")
            .get::<_, i64>(0);
        assert_eq!(found, 0, "no database was created");
    });
}
