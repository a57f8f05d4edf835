//! A webhook receiver the tests start: a real HTTP server on 127.0.0.1 that records every request
//! (headers, body, when) and answers from a script (a status, or hanging until dropped), 200 once
//! the script is used up; and the receiver's side of the contract: checking a signature.

use std::collections::VecDeque;

use axum::{body::Bytes, extract::State, http::HeaderMap, http::StatusCode};
use hmac::{KeyInit, Mac};

use super::*;

/// How the receiver answers one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// This status, at once.
    Status(u16),
    /// Never: the request hangs until the sender gives up (or the receiver is dropped).
    Hang,
}

/// One request the receiver got.
#[derive(Debug, Clone)]
pub struct Received {
    pub path: String,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub at: Instant,
    /// What it was answered (`Hang` for one that never was).
    pub answer: Answer,
}

impl Received {
    /// A header's value ("" when absent).
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|value| value.to_str().ok())
            .unwrap_or("")
    }

    /// The body as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("a delivery's body is JSON")
    }

    /// The delivery id header: the receiver's idempotency key.
    pub fn delivery_id(&self) -> &str {
        self.header("dbtrail-webhook-id")
    }
}

#[derive(Default)]
struct Script {
    received: Vec<Received>,
    answers: VecDeque<Answer>,
}

/// The receiver; it stops when dropped.
pub struct Receiver {
    pub addr: SocketAddr,
    script: Arc<Mutex<Script>>,
    task: tokio::task::JoinHandle<()>,
}

async fn receive(
    State(script): State<Arc<Mutex<Script>>>,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let answer = {
        let mut script = script.lock().expect("receiver lock");
        let answer = script.answers.pop_front().unwrap_or(Answer::Status(200));
        script.received.push(Received {
            path: uri.path().to_owned(),
            headers,
            body,
            at: Instant::now(),
            answer,
        });
        answer
    };
    match answer {
        Answer::Status(code) => StatusCode::from_u16(code).expect("a status code"),
        Answer::Hang => std::future::pending().await,
    }
}

impl Receiver {
    /// A receiver on a free port of 127.0.0.1, answering 200 until told otherwise.
    pub async fn start() -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the receiver");
        let addr = listener.local_addr().expect("the receiver's address");
        let script = Arc::new(Mutex::new(Script::default()));
        let router = axum::Router::new()
            .fallback(axum::routing::any(receive))
            .with_state(script.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
        Receiver { addr, script, task }
    }

    /// The http URL of `path` on the receiver.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// The next requests are answered so, in order (then 200 again).
    pub fn answer(&self, answers: &[Answer]) {
        self.script
            .lock()
            .expect("receiver lock")
            .answers
            .extend(answers.iter().copied());
    }

    /// Forgets the answers still scripted: 200 from now on.
    pub fn answer_ok(&self) {
        self.script.lock().expect("receiver lock").answers.clear();
    }

    /// Every request so far, oldest first.
    pub fn received(&self) -> Vec<Received> {
        self.script.lock().expect("receiver lock").received.clone()
    }

    /// The requests to `path`, once there are at least `count`; panics after `timeout`.
    pub async fn wait_for(&self, path: &str, count: usize, timeout: Duration) -> Vec<Received> {
        let what = format!("{count} requests to {path} (got {:?})", self.paths());
        wait_for(&what, timeout, || async {
            let got: Vec<Received> = self
                .received()
                .into_iter()
                .filter(|request| request.path == path)
                .collect();
            (got.len() >= count).then_some(got)
        })
        .await
    }

    fn paths(&self) -> Vec<String> {
        self.received()
            .into_iter()
            .map(|request| request.path)
            .collect()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Checks a delivery as a receiver must: the signature is `v1=` and the hex HMAC-SHA256 of
/// `<dbtrail-timestamp>.<body>` under `secret`, and the timestamp is within five minutes.
#[track_caller]
pub fn assert_signed(request: &Received, secret: &str) {
    let timestamp = request.header("dbtrail-timestamp");
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).expect("a key");
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(&request.body);
    let expected = format!("v1={}", hex::encode(mac.finalize().into_bytes()));
    assert_eq!(
        request.header("dbtrail-signature"),
        expected,
        "the signature of {:?}",
        String::from_utf8_lossy(&request.body)
    );
    let sent: i64 = timestamp.parse().expect("a unix timestamp");
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_secs() as i64;
    assert!(
        (now - sent).abs() < 300,
        "timestamp {sent} is not now ({now})"
    );
    assert_eq!(request.header("content-type"), "application/json");
}
