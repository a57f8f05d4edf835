//! Databases: a fresh PostgreSQL database per test, copied from a migrated template.

use super::*;

// ------------------------------------------------------------------------------------------------
// Databases
// ------------------------------------------------------------------------------------------------

/// The advisory lock that serialises template creation across test processes ("dbtrail\0").
pub(super) const TEMPLATE_LOCK_KEY: i64 = 0x6462_7472_6169_6c00;
/// Test databases left behind by a killed run are dropped once they are this old.
pub(super) const STALE_TEST_DATABASE_AGE: Duration = Duration::from_secs(2 * 60 * 60);

/// The URL of the PostgreSQL maintenance database the harness administers test databases from.
pub fn admin_database_url() -> String {
    std::env::var("DBTRAIL_TEST_DATABASE_URL")
        .unwrap_or_else(|_| DEFAULT_ADMIN_DATABASE_URL.to_owned())
}

/// The URL of database `name` on the test PostgreSQL server.
pub fn database_url(name: &str) -> String {
    let admin = admin_database_url();
    let (server, query) = match admin.split_once('?') {
        Some((server, query)) => (server.to_owned(), format!("?{query}")),
        None => (admin.clone(), String::new()),
    };
    let prefix = server
        .rsplit_once('/')
        .map(|(prefix, _)| prefix.to_owned())
        .unwrap_or(server);
    format!("{prefix}/{name}{query}")
}

/// The same URL as `url` but with another host and port (to route through a `TcpProxy`).
pub fn with_host_port(url: &str, addr: SocketAddr) -> String {
    let (scheme, rest) = url.split_once("://").expect("a database URL has a scheme");
    let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
    let user_info = authority
        .rsplit_once('@')
        .map(|(user, _)| format!("{user}@"))
        .unwrap_or_default();
    format!("{scheme}://{user_info}{}:{}/{path}", addr.ip(), addr.port())
}

/// Connects to database `url` with tokio_postgres, driving the connection on the current runtime.
pub async fn pg_connect(url: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|error| {
            panic!(
                "cannot connect to PostgreSQL at {url}: {error}. The tests need a running \
                 PostgreSQL (scripts/test starts it)"
            )
        });
    tokio::spawn(async move {
        let _ = connection.await;
    });
    client
}

pub(super) fn quote_identifier(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// A hash of everything under `migrations/`, so that the template follows the migrations.
pub(super) fn migrations_hash() -> String {
    fn collect(dir: &Path, files: &mut Vec<PathBuf>) {
        let entries = std::fs::read_dir(dir)
            .unwrap_or_else(|error| panic!("cannot read {}: {error}", dir.display()));
        for entry in entries {
            let path = entry.expect("a directory entry").path();
            if path.is_dir() {
                collect(&path, files);
            } else {
                files.push(path);
            }
        }
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations");
    let mut files = Vec::new();
    collect(&root, &mut files);
    files.sort();
    let mut hasher = Sha256::new();
    for file in files {
        let relative = file.strip_prefix(&root).expect("a file under migrations/");
        hasher.update(relative.to_string_lossy().as_bytes());
        hasher.update([0]);
        hasher.update(std::fs::read(&file).expect("a readable migration file"));
        hasher.update([0]);
    }
    hex::encode(&hasher.finalize()[..8])
}

pub(super) fn is_object_in_use(error: &tokio_postgres::Error) -> bool {
    error.code() == Some(&tokio_postgres::error::SqlState::OBJECT_IN_USE)
}

/// Runs `sql`, retrying while PostgreSQL says a database is still in use (a connection that
/// closed a moment ago may not have left yet).
pub(super) async fn execute_retrying_in_use(client: &tokio_postgres::Client, sql: &str) {
    let mut attempt = 0;
    loop {
        match client.batch_execute(sql).await {
            Ok(()) => return,
            Err(error) if is_object_in_use(&error) && attempt < 100 => {
                attempt += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(error) => panic!("{sql}: {error:?}"),
        }
    }
}

pub(super) static TEMPLATE: OnceCell<String> = OnceCell::const_new();

/// The name of the migrated template database for the current migrations, created when missing.
pub(super) async fn template_database() -> String {
    TEMPLATE
        .get_or_init(|| async {
            let template = format!("dbtrail_template_{}", migrations_hash());
            let client = pg_connect(&admin_database_url()).await;
            client
                .execute("SELECT pg_advisory_lock($1)", &[&TEMPLATE_LOCK_KEY])
                .await
                .expect("pg_advisory_lock");
            drop_stale_test_databases(&client).await;
            let exists = client
                .query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&template])
                .await
                .expect("look up the template database")
                .is_some();
            if !exists {
                // Built under another name and renamed when complete, so a run killed halfway
                // never leaves a half-migrated template behind.
                let building = format!("{template}_building");
                client
                    .batch_execute(&format!(
                        "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                        quote_identifier(&building)
                    ))
                    .await
                    .expect("drop a half-built template");
                dbtrail_servers::store::create_database_and_migrate(&database_url(&building))
                    .await
                    .unwrap_or_else(|error| {
                        panic!("create_database_and_migrate({building}): {error:?}")
                    });
                execute_retrying_in_use(
                    &client,
                    &format!(
                        "ALTER DATABASE {} RENAME TO {}",
                        quote_identifier(&building),
                        quote_identifier(&template)
                    ),
                )
                .await;
            }
            client
                .execute("SELECT pg_advisory_unlock($1)", &[&TEMPLATE_LOCK_KEY])
                .await
                .expect("pg_advisory_unlock");
            template
        })
        .await
        .clone()
}

/// Drops the test databases that runs killed before their guards ran left behind.
pub(super) async fn drop_stale_test_databases(client: &tokio_postgres::Client) {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("a clock after 1970")
        .as_secs();
    let rows = client
        .query(
            "SELECT datname FROM pg_database WHERE datname LIKE 'test\\_%\\_%'",
            &[],
        )
        .await
        .expect("list test databases");
    for row in rows {
        let name: String = row.get(0);
        let created = name
            .split('_')
            .nth(1)
            .and_then(|seconds| seconds.parse::<u64>().ok());
        if let Some(created) = created
            && now.saturating_sub(created) > STALE_TEST_DATABASE_AGE.as_secs()
        {
            let _ = client
                .batch_execute(&format!(
                    "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                    quote_identifier(&name)
                ))
                .await;
        }
    }
}

/// A database of this test's own; dropped (connections and all) when the guard drops, on
/// failure too. Set `DBTRAIL_TEST_KEEP_DATABASES=1` to keep them for a post-mortem.
pub struct TestDatabase {
    pub name: String,
    pub url: String,
}

impl TestDatabase {
    fn unique_name() -> String {
        let seconds = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("a clock after 1970")
            .as_secs();
        format!("test_{seconds}_{}", Uuid::new_v4().simple())
    }

    /// A fresh, migrated database copied from the template.
    pub async fn create() -> TestDatabase {
        let template = template_database().await;
        let name = Self::unique_name();
        let client = pg_connect(&admin_database_url()).await;
        execute_retrying_in_use(
            &client,
            &format!(
                "CREATE DATABASE {} TEMPLATE {}",
                quote_identifier(&name),
                quote_identifier(&template)
            ),
        )
        .await;
        let url = database_url(&name);
        TestDatabase { name, url }
    }

    /// A name (and URL) for a database that does not exist yet, dropped like any other at the
    /// end: for tests of the service creating its own database.
    pub fn reserve() -> TestDatabase {
        let name = Self::unique_name();
        let url = database_url(&name);
        TestDatabase { name, url }
    }

    /// Whether the database exists.
    pub async fn exists(&self) -> bool {
        pg_connect(&admin_database_url())
            .await
            .query_opt(
                "SELECT 1 FROM pg_database WHERE datname = $1",
                &[&self.name],
            )
            .await
            .expect("look up a database")
            .is_some()
    }

    /// A direct connection to this database, for assertions on what is stored.
    pub async fn connect(&self) -> tokio_postgres::Client {
        pg_connect(&self.url).await
    }

    /// The library's admin API on this database.
    pub async fn admin(&self) -> Admin {
        Admin::connect(&self.url)
            .await
            .unwrap_or_else(|error| panic!("Admin::connect({}): {error:?}", self.url))
    }

    /// Creates a tenant with a key carrying every permission.
    pub async fn create_tenant(&self, name: &str, server_limit: Option<i32>) -> Tenant {
        let admin = self.admin().await;
        let id = admin
            .create_tenant(name, server_limit)
            .await
            .unwrap_or_else(|error| panic!("create_tenant({name}): {error:?}"));
        let key = admin
            .create_key(name, &ALL_PERMISSIONS, Some("test"), None)
            .await
            .unwrap_or_else(|error| panic!("create_key({name}): {error:?}"));
        Tenant {
            name: name.to_owned(),
            id,
            key: key.secret,
        }
    }

    /// Creates a key of `tenant` with `permissions` and an optional lifetime.
    pub async fn create_key(
        &self,
        tenant: &str,
        permissions: &[&str],
        expires_in: Option<Duration>,
    ) -> dbtrail_servers::auth::admin::CreatedKey {
        self.admin()
            .await
            .create_key(tenant, permissions, Some("test"), expires_in)
            .await
            .unwrap_or_else(|error| panic!("create_key({tenant}, {permissions:?}): {error:?}"))
    }

    /// Revokes a key.
    pub async fn revoke_key(&self, key_id: Uuid) {
        self.admin()
            .await
            .revoke_key(key_id)
            .await
            .unwrap_or_else(|error| panic!("revoke_key({key_id}): {error:?}"));
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        if std::env::var_os("DBTRAIL_TEST_KEEP_DATABASES").is_some() {
            eprintln!("keeping test database {}", self.name);
            return;
        }
        let name = self.name.clone();
        // A fresh runtime on a fresh thread: Drop may run inside the test's runtime, or while it
        // unwinds from a panic.
        let outcome = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|error| error.to_string())?;
            runtime.block_on(async move {
                let (client, connection) =
                    tokio_postgres::connect(&admin_database_url(), tokio_postgres::NoTls)
                        .await
                        .map_err(|error| error.to_string())?;
                tokio::spawn(connection);
                client
                    .batch_execute(&format!(
                        "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                        quote_identifier(&name)
                    ))
                    .await
                    .map_err(|error| error.to_string())
            })
        })
        .join();
        match outcome {
            Ok(Ok(())) => {}
            Ok(Err(error)) => eprintln!("could not drop test database {}: {error}", self.name),
            Err(_) => eprintln!(
                "could not drop test database {}: thread panicked",
                self.name
            ),
        }
    }
}

/// A tenant and a key of it with every permission.
#[derive(Clone, Debug)]
pub struct Tenant {
    pub name: String,
    pub id: Uuid,
    pub key: String,
}

/// The name of each server's assigned agent, by server name (`sql`: a connection to the test
/// database).
pub async fn assigned_agents(sql: &tokio_postgres::Client) -> Vec<String> {
    sql.query(
        "SELECT a.name FROM servers s JOIN agents a ON a.id = s.agent_id ORDER BY s.name",
        &[],
    )
    .await
    .expect("read agents")
    .iter()
    .map(|row| row.get(0))
    .collect()
}

/// A change-index client of its own on `url` (one connection), for tests that read the index
/// directly (EXPLAIN of its queries, its migrations).
pub fn change_index(url: &str) -> dbtrail_servers::store::ChangeIndex {
    dbtrail_servers::store::ChangeIndex::connect(&dbtrail_servers::config::DatabaseConfig {
        database_url: Some(url.to_owned()),
        pool_size: 1,
        pool_timeout: std::time::Duration::from_secs(5),
        statement_timeout: std::time::Duration::from_secs(5),
    })
    .expect("the change index")
}
