//! Which PostgreSQL to use when none is configured: the one at the default address when it lets
//! `postgres` in, else a private cluster this process starts from the installed PostgreSQL binaries
//! (initdb once under the data directory, a Unix socket only, stopped with the process). A fresh
//! machine with PostgreSQL installed but not running serves at once.

use std::{
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

use tokio::process::{Child, Command};

/// The URL used when none is configured and its login works.
pub use crate::config::DEFAULT_DATABASE_URL as DEFAULT_URL;
/// The database URL that asks for the private cluster whether or not another answers.
pub const LOCAL: &str = "local";
/// Where a PostgreSQL is looked for first.
pub const DEFAULT_ADDRESS: &str = "127.0.0.1:5432";
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// Unix socket paths are limited to 108 bytes; PostgreSQL's own file name takes 15.
const MAX_SOCKET_DIR: usize = 90;

/// Why no database could be set up.
#[derive(Debug, thiserror::Error)]
pub enum LocalError {
    #[error(
        "no database URL is configured, no PostgreSQL at {DEFAULT_ADDRESS} lets postgres in, and PostgreSQL is not installed here (no initdb under /usr/lib/postgresql/*/bin): install it (apt-get install postgresql; scripts/run does) or pass --database-url (DATABASE_URL)"
    )]
    NotInstalled,
    #[error("the private PostgreSQL in {dir} cannot be set up: {problem}")]
    Setup { dir: String, problem: String },
}

/// A private PostgreSQL this process started; [`LocalPostgres::stop`] stops it.
pub struct LocalPostgres {
    child: Option<Child>,
    /// Where it keeps its data and socket.
    pub dir: PathBuf,
}

impl LocalPostgres {
    /// Stops the cluster when this process started it (fast shutdown), waiting for its exit.
    pub async fn stop(mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if let Some(pid) = child.id().and_then(|pid| i32::try_from(pid).ok()) {
            // SAFETY: signalling our own child process; SIGINT is PostgreSQL's fast shutdown.
            unsafe { libc::kill(pid, libc::SIGINT) };
        }
        if tokio::time::timeout(Duration::from_secs(10), child.wait())
            .await
            .is_err()
        {
            let _ = child.kill().await;
        }
    }
}

/// The database URL to use: `configured` when set (`local`: the private cluster); else the
/// default address's when it answers; else the private cluster under `data_dir`, started now (or
/// already running from an earlier start), returned so that the caller stops it.
pub async fn resolve(
    configured: Option<&str>,
    data_dir: &Path,
) -> Result<(String, Option<LocalPostgres>), LocalError> {
    match configured {
        Some(LOCAL) => {
            let local = start(data_dir).await?;
            return Ok((socket_url(&local.dir), Some(local)));
        }
        Some(url) => return Ok((url.to_owned(), None)),
        None => {}
    }
    match default_login().await {
        Ok(()) => return Ok((DEFAULT_URL.to_owned(), None)),
        Err(why) => tracing::info!(%why, "no usable PostgreSQL at {DEFAULT_ADDRESS}"),
    }
    let local = start(data_dir).await?;
    Ok((socket_url(&local.dir), Some(local)))
}

/// Whether the default URL's login works (a fresh Debian cluster answers, but asks for a
/// password over TCP: that is no database to use either).
async fn default_login() -> Result<(), String> {
    let mut config = tokio_postgres::Config::new();
    config
        .host("127.0.0.1")
        .port(5432)
        .user("postgres")
        .dbname("postgres")
        .connect_timeout(Duration::from_secs(1));
    let (client, connection) = config
        .connect(tokio_postgres::NoTls)
        .await
        .map_err(|error| error.to_string())?;
    drop(client);
    let _ = connection.await;
    Ok(())
}

/// The URL of the private cluster in `dir`, over its socket.
fn socket_url(dir: &Path) -> String {
    let dir = dir.to_string_lossy();
    let socket = percent_encoding::utf8_percent_encode(&dir, percent_encoding::NON_ALPHANUMERIC);
    format!("postgres:///dbtrail?user=postgres&host={socket}")
}

/// Starts the private cluster in `data_dir/postgres`, creating it the first time.
async fn start(data_dir: &Path) -> Result<LocalPostgres, LocalError> {
    let bin = installed_bin_dir().ok_or(LocalError::NotInstalled)?;
    let dir =
        std::path::absolute(data_dir.join("postgres")).map_err(|error| LocalError::Setup {
            dir: data_dir.display().to_string(),
            problem: error.to_string(),
        })?;
    let setup = |problem: String| LocalError::Setup {
        dir: dir.display().to_string(),
        problem,
    };
    if dir.as_os_str().len() > MAX_SOCKET_DIR {
        return Err(setup(format!(
            "its socket path would be longer than {MAX_SOCKET_DIR} bytes: use a shorter --data-dir"
        )));
    }
    if accepts(&dir).await {
        tracing::info!(dir = %dir.display(), "using the private PostgreSQL already running");
        return Ok(LocalPostgres { child: None, dir });
    }
    let owner = cluster_owner();
    init_cluster(&bin, &dir, owner).await.map_err(setup)?;
    let child = run_postgres(&bin, &dir, owner).await.map_err(setup)?;
    tracing::warn!(
        dir = %dir.display(),
        "started a private PostgreSQL under the data directory (no database URL is configured and no PostgreSQL at {DEFAULT_ADDRESS} lets postgres in); it stops with the service; pass --database-url to use your own"
    );
    Ok(LocalPostgres {
        child: Some(child),
        dir,
    })
}

/// Creates the cluster's data directory with initdb, unless it exists.
async fn init_cluster(bin: &Path, dir: &Path, owner: Option<(u32, u32)>) -> Result<(), String> {
    let data = dir.join("data");
    if data.join("PG_VERSION").exists() {
        return Ok(());
    }
    std::fs::create_dir_all(&data).map_err(|error| error.to_string())?;
    own(&[dir, &data], owner)?;
    let mut initdb = Command::new(bin.join("initdb"));
    initdb
        .args(["-U", "postgres", "-A", "trust", "-E", "UTF8", "-D"])
        .arg(&data)
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    as_owner(&mut initdb, owner);
    let output = initdb
        .output()
        .await
        .map_err(|error| format!("initdb cannot run: {error}"))?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        return Err(format!("initdb failed: {}", stderr.trim()));
    }
    Ok(())
}

/// Runs postgres on the cluster, listening on its socket only, until it accepts a login.
async fn run_postgres(bin: &Path, dir: &Path, owner: Option<(u32, u32)>) -> Result<Child, String> {
    let log_path = dir.join("postgres.log");
    let log = std::fs::File::create(&log_path).map_err(|error| error.to_string())?;
    own(&[&log_path], owner)?;
    let mut postgres = Command::new(bin.join("postgres"));
    postgres
        .arg("-D")
        .arg(dir.join("data"))
        .arg("-k")
        .arg(dir)
        .args(["-c", "listen_addresses="])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log);
    as_owner(&mut postgres, owner);
    let mut child = postgres
        .spawn()
        .map_err(|error| format!("postgres cannot start: {error}"))?;
    let deadline = tokio::time::Instant::now() + START_TIMEOUT;
    while !accepts(dir).await {
        if let Ok(Some(status)) = child.try_wait() {
            let log = std::fs::read_to_string(&log_path).unwrap_or_default();
            let last = log.lines().rev().take(3).collect::<Vec<_>>().join(" / ");
            return Err(format!("postgres exited ({status}): {last}"));
        }
        if tokio::time::Instant::now() > deadline {
            let _ = child.kill().await;
            return Err(format!(
                "postgres did not accept connections within {START_TIMEOUT:?}"
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(child)
}

/// Whether the cluster with its socket in `dir` accepts a login.
async fn accepts(dir: &Path) -> bool {
    let mut config = tokio_postgres::Config::new();
    config
        .host_path(dir)
        .user("postgres")
        .dbname("postgres")
        .connect_timeout(Duration::from_secs(1));
    match config.connect(tokio_postgres::NoTls).await {
        Ok((client, connection)) => {
            drop(client);
            let _ = connection.await;
            true
        }
        Err(_) => false,
    }
}

/// The newest PostgreSQL server binaries installed (Debian's layout), or those on PATH.
fn installed_bin_dir() -> Option<PathBuf> {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let version = entry.file_name().to_str()?.parse().ok()?;
            let bin = entry.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .collect();
    versions.sort();
    if let Some((_, bin)) = versions.pop() {
        return Some(bin);
    }
    std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .find(|dir| dir.join("initdb").exists() && dir.join("postgres").exists())
    })
}

/// The user the cluster runs as: PostgreSQL refuses root, so as root it is `postgres`.
fn cluster_owner() -> Option<(u32, u32)> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return None;
    }
    let name = std::ffi::CString::new("postgres").ok()?;
    // SAFETY: a NUL-terminated name; the record is read at once, before any other getpw call.
    let user = unsafe { libc::getpwnam(name.as_ptr()) };
    if user.is_null() {
        return None;
    }
    // SAFETY: checked non-null above.
    Some(unsafe { ((*user).pw_uid, (*user).pw_gid) })
}

fn own(paths: &[&Path], owner: Option<(u32, u32)>) -> Result<(), String> {
    let Some((uid, gid)) = owner else {
        return Ok(());
    };
    for path in paths {
        std::os::unix::fs::chown(path, Some(uid), Some(gid))
            .map_err(|error| format!("cannot give {} to postgres: {error}", path.display()))?;
    }
    Ok(())
}

fn as_owner(command: &mut Command, owner: Option<(u32, u32)>) {
    if let Some((uid, gid)) = owner {
        command.uid(uid).gid(gid);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_socket_url_names_the_directory() {
        assert_eq!(
            socket_url(Path::new("/srv/dbtrail data/postgres")),
            "postgres:///dbtrail?user=postgres&host=%2Fsrv%2Fdbtrail%20data%2Fpostgres"
        );
    }
}
