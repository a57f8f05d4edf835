//! Performance guards that need no timing: every accepted socket of both listeners has TCP_NODELAY,
//! ListServers' cursor is a condition of the listing index, not a filter over the rows the
//! index returns, and an idle stream keeps its checkpoint current without a write of the change
//! index every interval (B15).

use std::{
    net::SocketAddr,
    os::fd::RawFd,
    time::{Duration, SystemTime},
};

use crate::common::mariadb::*;
use crate::common::stream::*;
use crate::common::*;
use dbtrail_servers::{
    config::DatabaseConfig,
    domain::{TenantId, filter},
    store::{PageCursor, Store},
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The port of a socket address, for IPv4 and IPv6 alike.
fn port_of(address: &libc::sockaddr_storage) -> Option<u16> {
    match i32::from(address.ss_family) {
        libc::AF_INET => {
            let v4 = unsafe { &*(address as *const _ as *const libc::sockaddr_in) };
            Some(u16::from_be(v4.sin_port))
        }
        libc::AF_INET6 => {
            let v6 = unsafe { &*(address as *const _ as *const libc::sockaddr_in6) };
            Some(u16::from_be(v6.sin6_port))
        }
        _ => None,
    }
}

/// getsockname or getpeername of `fd`.
fn address(
    fd: RawFd,
    query: unsafe extern "C" fn(i32, *mut libc::sockaddr, *mut libc::socklen_t) -> i32,
) -> Option<libc::sockaddr_storage> {
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut length = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    let result = unsafe {
        query(
            fd,
            &mut storage as *mut _ as *mut libc::sockaddr,
            &mut length,
        )
    };
    (result == 0).then_some(storage)
}

/// TCP_NODELAY of each connection this process accepted on `port` (the service runs in the
/// test's process, so its sockets are among the process's descriptors).
fn accepted_nodelay(port: u16) -> Vec<bool> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc/self/fd").expect("/proc/self/fd") {
        let Ok(fd) = entry
            .expect("a descriptor")
            .file_name()
            .to_string_lossy()
            .parse::<RawFd>()
        else {
            continue;
        };
        let Some(local) = address(fd, libc::getsockname) else {
            continue;
        };
        // A listening socket has no peer; a client's socket has another local port.
        if port_of(&local) != Some(port) || address(fd, libc::getpeername).is_none() {
            continue;
        }
        let mut value: libc::c_int = 0;
        let mut length = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        let result = unsafe {
            libc::getsockopt(
                fd,
                libc::IPPROTO_TCP,
                libc::TCP_NODELAY,
                &mut value as *mut _ as *mut libc::c_void,
                &mut length,
            )
        };
        assert_eq!(result, 0, "getsockopt(TCP_NODELAY) on fd {fd}");
        found.push(value != 0);
    }
    found
}

/// An HTTP/1.1 keep-alive request whose connection stays open.
async fn keep_alive_request(address: SocketAddr) -> tokio::net::TcpStream {
    let mut stream = tokio::net::TcpStream::connect(address)
        .await
        .expect("connect to HTTP");
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nhost: localhost\r\n\r\n")
        .await
        .expect("send a request");
    let mut buffer = [0u8; 1024];
    let read = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buffer))
        .await
        .expect("an answer within 5 s")
        .expect("read the answer");
    assert!(
        String::from_utf8_lossy(&buffer[..read]).starts_with("HTTP/1.1 200"),
        "GET /healthz: {}",
        String::from_utf8_lossy(&buffer[..read])
    );
    stream
}

#[test]
fn accepted_sockets_of_both_listeners_have_tcp_nodelay() {
    block_on(async {
        let app = TestApp::start().await;
        let mut client = app.client();
        let server = register(&mut client, direct_server("nodelay")).await;
        get_server(&mut client, &server.server_id).await;
        let _http = keep_alive_request(app.http_addr).await;

        let grpc = accepted_nodelay(app.grpc_addr.port());
        let http = accepted_nodelay(app.http_addr.port());
        assert!(!grpc.is_empty(), "no accepted gRPC connection found");
        assert!(!http.is_empty(), "no accepted HTTP connection found");
        assert!(
            grpc.iter().all(|&on| on),
            "gRPC connections without TCP_NODELAY: {grpc:?}"
        );
        assert!(
            http.iter().all(|&on| on),
            "HTTP connections without TCP_NODELAY: {http:?}"
        );
    });
}

/// Copies a registered server `count` times, each a millisecond older, in one statement.
async fn seed_copies(db: &TestDatabase, template: &str, count: i64) {
    let client = db.connect().await;
    client
        .execute(
            "INSERT INTO servers (id, tenant_id, name, host, port, mysql_user, connection_method, \
                 ssl_mode, labels, status, steps, revision, created_at, updated_at) \
             SELECT gen_random_uuid(), tenant_id, name || '-' || i, host, port, mysql_user, \
                 connection_method, ssl_mode, labels, status, steps, revision, \
                 created_at - i * interval '1 millisecond', updated_at \
             FROM servers, generate_series(1, $2::bigint) AS i WHERE id = ($1::text)::uuid",
            &[&template, &count],
        )
        .await
        .expect("seed servers");
    client
        .batch_execute("ANALYZE servers")
        .await
        .expect("ANALYZE");
}

/// The plan's lines that apply conditions: "Index Cond: ..." and "Filter: ...".
fn conditions(plan: &str) -> (Vec<String>, Vec<String>) {
    let lines: Vec<String> = plan.lines().map(|line| line.trim().to_owned()).collect();
    let pick = |prefix: &str| {
        lines
            .iter()
            .filter(|line| line.starts_with(prefix))
            .cloned()
            .collect::<Vec<_>>()
    };
    (pick("Index Cond:"), pick("Filter:"))
}

#[test]
fn list_servers_cursor_is_an_index_condition() {
    block_on(async {
        let app = TestApp::start().await;
        let mut client = app.client();
        let template = register(&mut client, direct_server("listed")).await;
        seed_copies(&app.db, &template.server_id, 20_000).await;
        let store = Store::connect(&DatabaseConfig {
            database_url: Some(app.db.url.clone()),
            pool_size: 1,
            pool_timeout: Duration::from_secs(5),
            statement_timeout: Duration::from_secs(5),
        })
        .expect("a store");
        let tenant = TenantId::from_uuid(app.tenant.id);
        let middle = app
            .db
            .connect()
            .await
            .query_one(
                "SELECT (extract(epoch FROM created_at) * 1000000)::bigint, id::text FROM servers \
                 ORDER BY created_at DESC, id DESC OFFSET 10000 LIMIT 1",
                &[],
            )
            .await
            .expect("a server in the middle");
        let cursor = PageCursor {
            created_at: chrono::DateTime::from_timestamp_micros(middle.get(0))
                .expect("a timestamp"),
            id: middle.get::<_, String>(1).parse().expect("a UUID"),
        };
        // A filter most servers pass, so the plan walks the index as for a plain listing.
        let status_filter = filter::parse("status = pending AND NOT labels:team")
            .expect("a valid filter")
            .expect("a filter");

        for (what, filter, cursor) in [
            ("first page", None, None),
            ("later page", None, Some(cursor)),
            (
                "later page with a filter",
                Some(&status_filter),
                Some(cursor),
            ),
        ] {
            let plan = store
                .explain_list_servers(tenant, filter, false, cursor, 100)
                .await
                .unwrap_or_else(|error| panic!("EXPLAIN of the {what}: {error}"));
            assert!(
                plan.contains("Index Scan using servers_listing"),
                "the {what} does not scan the listing index:\n{plan}"
            );
            let (index_conditions, filters) = conditions(&plan);
            assert!(
                index_conditions
                    .iter()
                    .any(|line| line.contains("tenant_id =")),
                "the {what} does not find the tenant through the index:\n{plan}"
            );
            if cursor.is_some() {
                assert!(
                    index_conditions
                        .iter()
                        .any(|line| line.contains("ROW(created_at, id) < ROW(")),
                    "the {what}'s cursor is not an index condition:\n{plan}"
                );
            }
            assert!(
                filters
                    .iter()
                    .all(|line| !line.contains("created_at") && !line.contains("(id <")),
                "the {what} filters rows by the cursor after the index scan:\n{plan}"
            );
        }
    });
}

/// When the change index last recorded the stream's checkpoint, and when the stream's progress
/// last said that checkpoint was current.
async fn checkpoint_times(
    sql: &tokio_postgres::Client,
    server_id: &str,
) -> (SystemTime, SystemTime) {
    let row = sql
        .query_one(
            "SELECT checkpoint.recorded_at, \
                 (servers.stream_progress->>'last_checkpoint_at')::timestamptz \
             FROM stream_checkpoints checkpoint JOIN servers ON servers.id = checkpoint.server_id \
             WHERE servers.id::text = $1",
            &[&server_id],
        )
        .await
        .expect("the stream's checkpoint and progress");
    (row.get(0), row.get(1))
}

#[test]
fn an_idle_stream_keeps_its_checkpoint_current_without_writing_the_index() {
    block_on(async {
        let mariadb = mariadb_with(&[
            "CREATE DATABASE shop",
            "CREATE TABLE shop.t (id INT PRIMARY KEY)",
        ])
        .await;
        let mut options = mysql_replica_options();
        options
            .extra_args
            .extend(["--stream-checkpoint-interval".into(), "300ms".into()]);
        let app = TestApp::start_with(options).await;
        let mut client = app.client();
        let id = register(&mut client, mariadb.server("idle", USER, PASSWORD))
            .await
            .server_id;
        wait_stream(&mut client, &id, "the stream to run", running).await;
        let sql = app.db.connect().await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        let (recorded, current) = checkpoint_times(&sql, &id).await;

        // Ten checkpoint intervals with nothing but heartbeats from the source.
        tokio::time::sleep(Duration::from_secs(3)).await;
        let (recorded_idle, current_idle) = checkpoint_times(&sql, &id).await;
        assert_eq!(
            recorded_idle, recorded,
            "an idle stream's checkpoint is not written to the change index again"
        );
        assert!(
            current_idle > current,
            "the stream's progress says its checkpoint is current: {current_idle:?} after {current:?}"
        );

        // A row after the idle stretch is captured, and its checkpoint written with it.
        mariadb.exec(&["INSERT INTO shop.t VALUES (1)"]).await;
        wait_until(
            "the row and its checkpoint",
            Duration::from_secs(10),
            || {
                let sql = &sql;
                let id = id.clone();
                async move {
                    let count: i64 = sql
                        .query_one(
                            "SELECT count(*) FROM change_events WHERE server_id::text = $1",
                            &[&id],
                        )
                        .await
                        .expect("count the captured rows")
                        .get(0);
                    count == 1 && checkpoint_times(sql, &id).await.0 > recorded_idle
                }
            },
        )
        .await;
    });
}
