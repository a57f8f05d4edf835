//! Connection hygiene on both listeners (issue 32 part 3): a connection that sends nothing, or
//! only part of a head or an HTTP/2 preface, is closed within `--header-read-timeout`; an idle
//! HTTP/2 connection is sent GOAWAY after `--idle-timeout` and an idle HTTP/1.1 one is closed;
//! past `--max-connections` and `--max-connections-per-address` new connections are closed at
//! once, and every such close is counted.

use crate::common::*;
use std::{
    net::{IpAddr, SocketAddr},
    time::{Duration, Instant},
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpSocket, TcpStream},
};

/// The HTTP/2 connection preface and an empty SETTINGS frame: all a client must send first.
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const EMPTY_SETTINGS: &[u8] = &[0, 0, 0, 4, 0, 0, 0, 0, 0];

/// Raises this process's open-file soft limit to its hard limit: the tests hold thousands of
/// sockets.
fn raise_descriptor_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit read and write the one struct they are given.
    assert_eq!(
        unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) },
        0
    );
    limit.rlim_cur = limit.rlim_max;
    // SAFETY: as above.
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) }, 0);
}

/// A connection to `to` from the loopback address `from`.
async fn connect_from(from: IpAddr, to: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().expect("a socket");
    socket
        .bind(SocketAddr::new(from, 0))
        .expect("bind a loopback address");
    socket.connect(to).await.expect("connect")
}

/// Whether the server closes `stream` within `within`: end of stream or a reset, after reading
/// and dropping whatever it sent first (its SETTINGS, a GOAWAY).
async fn closed_within(stream: &mut TcpStream, within: Duration) -> bool {
    let mut buffer = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buffer)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
        }
    }
}

/// When an idle HTTP/2 connection was sent GOAWAY and when it was closed.
#[derive(Debug, Default)]
struct IdleEnd {
    goaway: Option<Duration>,
    closed: Option<Duration>,
}

/// Plays an HTTP/2 client that opens no stream on `stream` (it acknowledges SETTINGS and
/// answers PINGs) until the server closes it or `within` passes.
async fn idle_h2_client(stream: &mut TcpStream, within: Duration) -> IdleEnd {
    let started = tokio::time::Instant::now();
    let mut end = IdleEnd::default();
    let mut bytes = Vec::new();
    let mut buffer = [0u8; 4096];
    loop {
        while bytes.len() >= 9 {
            let length = u32::from_be_bytes([0, bytes[0], bytes[1], bytes[2]]) as usize;
            if bytes.len() < 9 + length {
                break;
            }
            let (kind, flags) = (bytes[3], bytes[4]);
            let payload = bytes[9..9 + length].to_vec();
            bytes.drain(..9 + length);
            match (kind, flags & 1) {
                (7, _) => end.goaway = end.goaway.or(Some(started.elapsed())),
                (4, 0) => {
                    let _ = stream.write_all(&[0, 0, 0, 4, 1, 0, 0, 0, 0]).await;
                }
                (6, 0) => {
                    let _ = stream.write_all(&[0, 0, 8, 6, 1, 0, 0, 0, 0]).await;
                    let _ = stream.write_all(&payload).await;
                }
                _ => {}
            }
        }
        match tokio::time::timeout_at(started + within, stream.read(&mut buffer)).await {
            Ok(Ok(read)) if read > 0 => bytes.extend_from_slice(&buffer[..read]),
            Ok(_) => {
                end.closed = Some(started.elapsed());
                return end;
            }
            Err(_) => return end,
        }
    }
}

async fn http_get_retrying(http: SocketAddr, path: &str) -> String {
    use tokio::io::AsyncReadExt as _;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        // A connection closed at once (the caps were just full) answers nothing: try again.
        if let Ok(mut stream) = TcpStream::connect(http).await {
            let request = format!("GET {path} HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n");
            let mut response = Vec::new();
            if stream.write_all(request.as_bytes()).await.is_ok()
                && stream.read_to_end(&mut response).await.is_ok()
                && !response.is_empty()
            {
                return String::from_utf8_lossy(&response).into_owned();
            }
        }
        assert!(
            Instant::now() < deadline,
            "GET {path} on {http} answered nothing for 5 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The value of the metric line that starts with `series` in `/metrics`, or 0.
async fn metric(http: SocketAddr, series: &str) -> f64 {
    let body = http_get_retrying(http, "/metrics").await;
    body.lines()
        .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0.0)
}

/// The open descriptors of process `pid`.
fn descriptors(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("/proc/PID/fd")
        .count()
}

async fn serve_with(db: &TestDatabase, label: &str, args: &[&str]) -> ServiceProcess {
    let options = ReplicaOptions {
        extra_args: args.iter().map(|arg| (*arg).to_owned()).collect(),
        ..ReplicaOptions::default()
    };
    ServiceProcess::serve(label, &db.url, &options).await
}

/// 2,000 silent connections on each listener, and partial HTTP/2 prefaces and HTTP/1.1 heads,
/// are all closed within the 2 s header timeout plus a margin; a connection that sent the whole
/// preface and SETTINGS stays; the descriptors come back and the closes are counted.
#[test]
fn silent_and_partial_connections_are_closed_within_the_header_timeout() {
    block_on(async {
        raise_descriptor_limit();
        let db = TestDatabase::create().await;
        let process = serve_with(
            &db,
            "silent",
            &[
                "--header-read-timeout",
                "2s",
                "--max-connections-per-address",
                "10000",
            ],
        )
        .await;
        let before = descriptors(process.pid());
        let started = Instant::now();
        let mut held = Vec::new();
        for addr in [process.grpc_addr, process.http_addr] {
            // From 127.0.0.9: 4,000 ephemeral ports taken on 127.0.0.1 could collide with the
            // ports other tests pick for their listeners.
            for _ in 0..2_000 {
                held.push((
                    Instant::now(),
                    connect_from([127, 0, 0, 9].into(), addr).await,
                ));
            }
            for _ in 0..50 {
                let at = Instant::now();
                let mut partial = TcpStream::connect(addr).await.expect("connect");
                partial.write_all(&PREFACE[..16]).await.unwrap();
                held.push((at, partial));
                let at = Instant::now();
                let mut settings_cut = TcpStream::connect(addr).await.expect("connect");
                settings_cut.write_all(PREFACE).await.unwrap();
                settings_cut.write_all(&[0, 0, 6, 4, 0]).await.unwrap();
                held.push((at, settings_cut));
            }
        }
        for _ in 0..50 {
            let at = Instant::now();
            let mut trickle = TcpStream::connect(process.http_addr).await.unwrap();
            trickle
                .write_all(b"GET /healthz HTTP/1.1\r\nHost: a\r\n")
                .await
                .unwrap();
            held.push((at, trickle));
        }
        let mut good = TcpStream::connect(process.grpc_addr).await.unwrap();
        good.write_all(PREFACE).await.unwrap();
        good.write_all(EMPTY_SETTINGS).await.unwrap();
        let opened = started.elapsed();
        // That the server took them (not the kernel's backlog) is proved below by its count of
        // header-timeout closes: a descriptor count here would race the first closes.

        // Each closed within the timeout of its own opening, plus a margin for 4,350 sockets on
        // a small machine (opening them all can take seconds on a busy one).
        let margin = Duration::from_secs(4);
        let checks = held.iter_mut().map(|(at, stream)| {
            let within = (Duration::from_secs(2) + margin).saturating_sub(at.elapsed());
            closed_within(stream, within)
        });
        let closed = futures_util::future::join_all(checks).await;
        let open = closed.iter().filter(|closed| !**closed).count();
        assert_eq!(
            open,
            0,
            "{open} of {} connections still open 6 s after their opening ({:?} after the first; opening them took {opened:?})",
            closed.len(),
            started.elapsed()
        );
        assert!(
            !closed_within(&mut good, Duration::from_millis(500)).await,
            "a connection that sent its preface and SETTINGS was closed"
        );
        drop(held);
        wait_until(
            "the descriptors are given back",
            Duration::from_secs(5),
            || async { descriptors(process.pid()) < before + 20 },
        )
        .await;
        for listener in ["grpc", "http"] {
            let series = format!(
                "dbtrail_connections_closed_total{{listener=\"{listener}\",reason=\"header_timeout\"}}"
            );
            let count = metric(process.http_addr, &series).await;
            assert!(count >= 2_100.0, "{series} is {count}");
        }
        // The service still answers.
        assert_eq!(http_get(process.http_addr, "/healthz").await.0, 200);
        health(process.grpc_addr, "").await.expect("gRPC health");
    });
}

/// How soon a refused connection must be closed: at once, on a loaded machine.
const REFUSED_WITHIN: Duration = Duration::from_secs(5);

/// Past the per-address cap, and past the listener's cap, a new connection is closed at once
/// on both listeners and counted; a closed connection gives its place back.
#[test]
fn past_the_connection_caps_new_connections_are_refused_at_once() {
    block_on(async {
        let db = TestDatabase::create().await;
        let process = serve_with(
            &db,
            "caps",
            &[
                "--max-connections",
                "30",
                "--max-connections-per-address",
                "10",
                // Admitted connections stay far longer than a refused one takes to be closed,
                // however loaded the machine.
                "--header-read-timeout",
                "60s",
            ],
        )
        .await;
        for (listener, addr) in [("grpc", process.grpc_addr), ("http", process.http_addr)] {
            // The start's readiness probes close their connections on their own time; counting
            // from here would be off by them. (The metrics request itself is open while it is
            // answered, on the HTTP listener.)
            let own = if listener == "http" { 1.0 } else { 0.0 };
            let series = format!("dbtrail_connections_open{{listener=\"{listener}\"}}");
            wait_until(
                "the readiness probes' connections are closed",
                Duration::from_secs(10),
                || async { metric(process.http_addr, &series).await <= own },
            )
            .await;
            let mut held = Vec::new();
            // Addresses of this test's own, beside the probes' 127.0.0.1.
            for from in 11..=13u8 {
                let from = IpAddr::from([127, 0, 0, from]);
                for _ in 0..10 {
                    held.push(connect_from(from, addr).await);
                }
                // The eleventh from one address.
                let mut refused = connect_from(from, addr).await;
                assert!(
                    closed_within(&mut refused, REFUSED_WITHIN).await,
                    "the 11th connection from {from} to {addr} was not refused"
                );
                // The ten before it were accepted before it was, so a refused one among them
                // would already read as closed.
                let first = held.len() - 10;
                for (index, stream) in held[first..].iter_mut().enumerate() {
                    assert!(
                        !closed_within(stream, Duration::from_millis(10)).await,
                        "connection {} from {from} to {addr} was refused",
                        index + 1
                    );
                }
            }
            // Thirty open: a fourth address is past the listener's cap.
            let mut refused = connect_from([127, 0, 0, 14].into(), addr).await;
            assert!(
                closed_within(&mut refused, REFUSED_WITHIN).await,
                "the 31st connection to {addr} was not refused"
            );
            // The admitted ones are still served.
            for stream in held.iter_mut().take(3) {
                assert!(!closed_within(stream, Duration::from_millis(200)).await);
            }
            // Closing one gives its place back.
            drop(held.pop());
            let deadline = Instant::now() + Duration::from_secs(5);
            let _admitted = loop {
                let mut stream = connect_from([127, 0, 0, 15].into(), addr).await;
                if !closed_within(&mut stream, Duration::from_millis(300)).await {
                    break stream;
                }
                assert!(
                    Instant::now() < deadline,
                    "no place was given back on {addr}"
                );
            };
        }
        for (listener, reason, at_least) in [
            // The third address's 11th meets the listener's cap first.
            ("grpc", "max_connections_per_address", 2.0),
            ("grpc", "max_connections", 2.0),
            ("http", "max_connections_per_address", 2.0),
            ("http", "max_connections", 2.0),
        ] {
            let series = format!(
                "dbtrail_connections_refused_total{{listener=\"{listener}\",reason=\"{reason}\"}}"
            );
            let count = metric(process.http_addr, &series).await;
            assert!(count >= at_least, "{series} is {count}");
        }
    });
}

/// A connection we close gives its place back before the client reads our end: at a cap of one
/// connection per address, a client that reads a `Connection: close` answer to its end and
/// connects again at once is admitted, every time.
#[test]
fn a_connection_we_close_gives_its_place_back_before_the_client_sees_the_end() {
    block_on(async {
        let db = TestDatabase::create().await;
        let process = serve_with(&db, "reconnect", &["--max-connections-per-address", "1"]).await;
        let from = IpAddr::from([127, 0, 0, 21]);
        for attempt in 1..=300 {
            let mut stream = connect_from(from, process.http_addr).await;
            stream
                .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                .await
                .expect("send a request");
            let mut answer = Vec::new();
            let _ = stream.read_to_end(&mut answer).await;
            assert!(
                answer.starts_with(b"HTTP/1.1 200"),
                "attempt {attempt} was refused: {:?}",
                String::from_utf8_lossy(&answer)
            );
        }
    });
}

/// An HTTP/2 connection with no open stream is sent GOAWAY after the idle timeout, not before;
/// an HTTP/1.1 keep-alive connection is closed; a watch's open stream keeps its connection.
#[test]
fn idle_connections_are_ended_after_the_idle_timeout() {
    block_on(async {
        let db = TestDatabase::create().await;
        let process = serve_with(&db, "idle", &["--idle-timeout", "2s"]).await;

        // HTTP/2, on both listeners.
        for addr in [process.grpc_addr, process.http_addr] {
            let mut stream = TcpStream::connect(addr).await.unwrap();
            stream.write_all(PREFACE).await.unwrap();
            stream.write_all(EMPTY_SETTINGS).await.unwrap();
            let end = idle_h2_client(&mut stream, Duration::from_secs(8)).await;
            let goaway = end
                .goaway
                .unwrap_or_else(|| panic!("no GOAWAY on {addr}: {end:?}"));
            assert!(
                goaway >= Duration::from_millis(1_500) && goaway < Duration::from_secs(5),
                "GOAWAY on {addr} came after {goaway:?}"
            );
            // A client that answers the server's PING sees the connection closed soon after.
            let closed = end
                .closed
                .unwrap_or_else(|| panic!("not closed on {addr}: {end:?}"));
            assert!(closed < goaway + Duration::from_secs(2), "{end:?}");
        }

        // HTTP/1.1 keep-alive: one answered request, then silence.
        let mut stream = TcpStream::connect(process.http_addr).await.unwrap();
        stream
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: a\r\n\r\n")
            .await
            .unwrap();
        let mut buffer = [0u8; 1024];
        let read = stream.read(&mut buffer).await.unwrap();
        assert!(String::from_utf8_lossy(&buffer[..read]).starts_with("HTTP/1.1 200"));
        let started = Instant::now();
        assert!(closed_within(&mut stream, Duration::from_secs(6)).await);
        assert!(started.elapsed() >= Duration::from_millis(1_500));

        // A watch's open stream keeps its connection past the idle timeout: no gRPC connection
        // is ended as idle while it is open (the raw connection above was the only one before).
        let idle_grpc = "dbtrail_connections_closed_total{listener=\"grpc\",reason=\"idle\"}";
        let ended_before = metric(process.http_addr, idle_grpc).await;
        let mut client = process
            .client(&db.create_tenant("idle", None).await.key)
            .await;
        let server = register(&mut client, direct_server("idle-watch")).await;
        let mut watch = open_watch(&mut client, &server.server_id, None, true)
            .await
            .expect("watch");
        watch.message(Duration::from_secs(5)).await;
        tokio::time::sleep(Duration::from_secs(4)).await;
        assert_eq!(
            metric(process.http_addr, idle_grpc).await,
            ended_before,
            "a connection with an open watch was ended as idle"
        );
        drop(watch);
        drop(client);

        for listener in ["grpc", "http"] {
            let series = format!(
                "dbtrail_connections_closed_total{{listener=\"{listener}\",reason=\"idle\"}}"
            );
            assert!(metric(process.http_addr, &series).await >= 1.0, "{series}");
        }
    });
}
