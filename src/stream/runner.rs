//! One held stream, from its claim until it stops: connections one after another from the
//! checkpoint, backoff between them, and the honest state (streaming.md §3) on the server.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use tokio::{sync::Notify, time::Instant};
use tokio_util::sync::CancellationToken;

use super::{
    progress::ProgressBook,
    session::{self, SessionEnd},
};
use crate::{
    domain::stream::BinlogPoint,
    domain::{
        OnboardingStep, StreamState,
        change::RowChange,
        server::Server,
        stream::{DISCONNECTED_GRACE, StreamProgress},
    },
    onboarding::{AgentSettings, StepContext, Table, refresh_snapshot_table},
    secrets::SecretBox,
    store::{Claim, Scope, Store, StoreError, StreamCheckpoint, StreamPosition},
};

/// How long index writes may keep failing before the stream is `stalled`.
const STALL_AFTER: Duration = Duration::from_secs(30);
/// A stream that ran this long without trouble forgets its reconnects.
const CLEAN_RUN: Duration = Duration::from_secs(600);
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// How streams run.
#[derive(Debug, Clone, Copy)]
pub struct StreamSettings {
    /// The heartbeat period asked of the source.
    pub heartbeat: Duration,
    /// A checkpoint is written at least this often.
    pub checkpoint_interval: Duration,
}

/// What the supervisor and the lease renewal tell a running stream.
pub struct Control {
    changed: Notify,
    release: AtomicBool,
    lost: CancellationToken,
    /// Past this instant the lease may have expired: the connection must be closed.
    valid_until: Mutex<Instant>,
}

impl Control {
    /// A control for a lease just taken for `valid`.
    pub fn new(valid: Duration) -> Control {
        Control {
            changed: Notify::new(),
            release: AtomicBool::new(false),
            lost: CancellationToken::new(),
            valid_until: Mutex::new(Instant::now() + valid),
        }
    }

    fn deadline(&self) -> Instant {
        *self
            .valid_until
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// A renewal sent at `sent` succeeded: the lease holds until `sent + valid` at least.
    pub fn extend(&self, sent: Instant, valid: Duration) {
        let mut until = self
            .valid_until
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        *until = (*until).max(sent + valid);
    }

    /// The server changed: look at it again.
    pub fn notify(&self) {
        self.changed.notify_one();
    }

    /// Stop at the next checkpoint and let the lease go (rebalance, shutdown).
    pub fn release(&self) {
        self.release.store(true, Ordering::Release);
        self.changed.notify_one();
    }

    /// The lease was taken over.
    pub fn lose(&self) {
        self.lost.cancel();
    }

    /// Whether the lease is gone or may be.
    pub fn lost(&self) -> bool {
        self.lost.is_cancelled() || Instant::now() >= self.deadline()
    }

    /// Waits until something needs looking at.
    pub async fn wait(&self) {
        tokio::select! {
            () = self.changed.notified() => {}
            () = self.lost.cancelled() => {}
            () = tokio::time::sleep_until(self.deadline()) => {}
        }
    }
}

/// A stream's holder: its lease, its server, and what it reports.
pub struct Holder {
    pub claim: Claim,
    pub settings: StreamSettings,
    pub control: Arc<Control>,
    pub progress: StreamProgress,
    server: Server,
    store: Store,
    index: Store,
    secrets: SecretBox,
    agent: AgentSettings,
    state: StreamState,
    ran: bool,
    running_since: Option<Instant>,
    book: Arc<ProgressBook>,
}

/// What a holder is made of.
pub struct HolderParts {
    pub claim: Claim,
    pub settings: StreamSettings,
    pub control: Arc<Control>,
    pub server: Server,
    pub store: Store,
    pub index: Store,
    pub secrets: SecretBox,
    pub agent: AgentSettings,
    pub book: Arc<ProgressBook>,
}

impl Holder {
    /// A holder for a server just claimed.
    pub fn new(parts: HolderParts) -> Holder {
        let (state, mut progress) = match &parts.server.stream {
            Some(stream) => (stream.state, stream.progress.clone()),
            None => (StreamState::Starting, StreamProgress::default()),
        };
        progress.holder_agent_id = Some(parts.agent.id);
        Holder {
            claim: parts.claim,
            settings: parts.settings,
            control: parts.control,
            progress,
            server: parts.server,
            store: parts.store,
            index: parts.index,
            secrets: parts.secrets,
            agent: parts.agent,
            state,
            ran: false,
            running_since: None,
            book: parts.book,
        }
    }

    /// What the connection path needs (the same one onboarding uses).
    pub fn step_context(&self) -> StepContext {
        StepContext {
            step: OnboardingStep::Streaming,
            server: self.server.clone(),
            claim: self.claim,
            store: self.store.clone(),
            index: self.index.clone(),
            secrets: self.secrets.clone(),
            agent: self.agent.clone(),
            activity: Default::default(),
        }
    }

    /// Whether the lease is gone (nothing may be written).
    pub fn lease_lost(&self) -> bool {
        self.control.lost()
    }

    /// Whether the stream must stop now: the lease is gone, it is to be released, or the server
    /// no longer wants it. A change of connection settings or stream options re-runs onboarding,
    /// so it is one of the last; the stream resumes from its checkpoint after it.
    pub async fn must_stop(&mut self) -> bool {
        if self.control.lost() || self.control.release.load(Ordering::Acquire) {
            return true;
        }
        match self.store.server_by_id(self.claim.server_id).await {
            Ok(server) if !server.wants_stream() => true,
            Ok(server) => {
                self.server = server;
                false
            }
            Err(_) => false,
        }
    }

    /// The first checkpoint of a connection was written.
    pub async fn running(&mut self) {
        self.ran = true;
        self.running_since = Some(Instant::now());
        self.progress.disconnected_since = None;
        let _ = self.move_to(StreamState::Running, None).await;
    }

    /// Writes a batch and its checkpoint, retrying while the index fails (and saying `stalled`
    /// after a while); a lost lease ends the connection.
    pub async fn write(
        &mut self,
        events: Vec<RowChange>,
        position: StreamPosition,
    ) -> Result<(), SessionEnd> {
        let failing_since = Instant::now();
        loop {
            if self.control.lost() {
                return Err(SessionEnd::Stopped);
            }
            match self
                .index
                .write_change_batch(
                    self.claim.server_id,
                    self.claim.fence.epoch,
                    &events,
                    &position,
                )
                .await
            {
                Ok(total) => {
                    self.checkpointed(&position, total, events.len());
                    if self.state == StreamState::Stalled {
                        let _ = self.move_to(StreamState::Running, None).await;
                    }
                    self.record_progress(false).await;
                    return Ok(());
                }
                Err(StoreError::Fenced) => {
                    self.control.lose();
                    return Err(SessionEnd::Stopped);
                }
                Err(error) => {
                    tracing::warn!(server_id = %self.claim.server_id, %error, "writing change events failed; retrying");
                    if failing_since.elapsed() >= STALL_AFTER && self.state != StreamState::Stalled
                    {
                        let message = format!("the change index cannot be written: {error}");
                        let _ = self.move_to(StreamState::Stalled, Some(message)).await;
                    }
                    tokio::select! {
                        () = self.control.lost.cancelled() => {}
                        () = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                }
            }
        }
    }

    fn checkpointed(&mut self, checkpoint: &StreamPosition, total: i64, written: usize) {
        let progress = &mut self.progress;
        progress.binlog_file = checkpoint.binlog_file.clone();
        progress.binlog_position = checkpoint.binlog_position;
        progress.gtid_set = checkpoint.gtid_set.clone().unwrap_or_default();
        progress.last_checkpoint_at = Some(crate::domain::now());
        progress.last_event_at = checkpoint.last_event_at.or(progress.last_event_at);
        progress.events_indexed = total;
        progress
            .statement_changes
            .add(checkpoint.statement_changes.clone());
        metrics::counter!("dbtrail_stream_events_indexed_total").increment(written as u64);
        metrics::histogram!("dbtrail_stream_lag_seconds")
            .record(progress.lag_millis as f64 / 1000.0);
        if self
            .running_since
            .is_some_and(|since| since.elapsed() >= CLEAN_RUN)
        {
            progress.reconnects = 0;
        }
    }

    /// Hands the progress to the next batch; `force` waits until it is written (a fenced write
    /// marks the lease lost).
    pub async fn record_progress(&mut self, force: bool) {
        self.book
            .put(self.claim, self.progress.clone(), self.control.clone());
        if force {
            self.book.flush().await;
        }
    }

    /// Stores the table a DDL statement changed in the server's snapshot (the decoder already
    /// uses it); a failure leaves the stored snapshot behind, not the stream.
    pub async fn snapshot_refreshed(
        &mut self,
        table: (&str, &str),
        fresh: Option<Table>,
        at: &BinlogPoint,
    ) {
        let since = (
            at.file.clone(),
            i64::try_from(at.position).unwrap_or(i64::MAX),
        );
        match refresh_snapshot_table(&self.store, self.claim, table, fresh, since).await {
            Ok(()) => {}
            Err(StoreError::Fenced) => self.control.lose(),
            Err(error) => tracing::warn!(
                server_id = %self.claim.server_id, %error,
                "the snapshot could not be refreshed after a DDL statement"
            ),
        }
    }

    /// Records a new state: a revision of the server.
    async fn move_to(
        &mut self,
        state: StreamState,
        error: Option<String>,
    ) -> Result<(), StoreError> {
        self.record_progress(true).await;
        let now = crate::domain::now();
        let (server, _) = self
            .store
            .modify_server(
                Scope::Stream(self.claim.fence),
                self.claim.server_id,
                |server| Ok::<_, StoreError>(server.stream_moved(state, error, now)),
            )
            .await?;
        self.server = server;
        self.state = state;
        Ok(())
    }

    async fn still_disconnected(&mut self) {
        let result = self
            .store
            .modify_server(
                Scope::Stream(self.claim.fence),
                self.claim.server_id,
                |server| {
                    server.stream_still_disconnected();
                    Ok::<_, StoreError>(())
                },
            )
            .await;
        if let Ok((server, ())) = result {
            self.server = server;
        }
    }
}

/// Runs a claimed stream until it stops, loses its lease, or meets a permanent fault.
pub async fn run_stream(holder: &mut Holder) {
    let mut backoff = Duration::from_secs(1);
    if holder.state != StreamState::Starting && holder.state != StreamState::Disconnected {
        let _ = holder.move_to(StreamState::Starting, None).await;
    }
    while !holder.control.lost() {
        // Each connection starts from the server as it is now: one whose settings changed (or that
        // left active) while the previous connection ended or the backoff ran is not connected to.
        if holder.must_stop().await {
            return;
        }
        let checkpoint = match take_checkpoint(holder).await {
            Start::From(checkpoint) => checkpoint,
            Start::Later => {
                if !pause(holder, backoff).await {
                    return;
                }
                continue;
            }
            Start::Never => return,
        };
        holder.progress.binlog_file = checkpoint.position.binlog_file.clone();
        holder.progress.binlog_position = checkpoint.position.binlog_position;
        holder.progress.events_indexed = checkpoint.events_indexed;
        holder.progress.statement_changes = checkpoint.position.statement_changes.clone();
        holder.ran = false;
        let end = read_guarded(holder, checkpoint).await;
        if holder.ran {
            backoff = Duration::from_secs(1);
        }
        if !reconnects_after(holder, end, backoff).await {
            return;
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// One connection, with a panic of the binlog driver on bytes it cannot parse (mysql_common
/// panics on some malformed events) turned into a failed stream that says so, instead of a
/// stream task that ends while its lease is still renewed.
async fn read_guarded(holder: &mut Holder, checkpoint: StreamCheckpoint) -> SessionEnd {
    use futures_util::FutureExt;
    let at = format!(
        "{}:{}",
        checkpoint.position.binlog_file, checkpoint.position.binlog_position
    );
    match std::panic::AssertUnwindSafe(session::run(holder, checkpoint))
        .catch_unwind()
        .await
    {
        Ok(end) => end,
        Err(panic) => {
            let what = panic
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| panic.downcast_ref::<&str>().copied())
                .unwrap_or("no message");
            SessionEnd::Failed(format!(
                "the binlog reader stopped on bytes it cannot parse ({what}), reading on from \
                 {at}; the stream stopped there so that nothing is skipped silently"
            ))
        }
    }
}

/// Whether a connection can start, and from where.
enum Start {
    /// From the stream's checkpoint.
    From(StreamCheckpoint),
    /// The checkpoint could not be read now: after a backoff.
    Later,
    /// The stream has no checkpoint (it failed) or its lease is lost.
    Never,
}

/// Takes the stream's checkpoint under this holder's epoch; a stream without one fails.
async fn take_checkpoint(holder: &mut Holder) -> Start {
    match holder
        .index
        .take_stream_checkpoint(holder.claim.server_id, holder.claim.fence.epoch)
        .await
    {
        Ok(Some(checkpoint)) => Start::From(checkpoint),
        Ok(None) => {
            let message = "the stream has no checkpoint to start from; RetryOnboarding records one"
                .to_owned();
            let _ = holder.move_to(StreamState::Failed, Some(message)).await;
            Start::Never
        }
        Err(StoreError::Fenced) => Start::Never,
        Err(error) => {
            tracing::warn!(server_id = %holder.claim.server_id, %error, "reading the stream checkpoint failed");
            Start::Later
        }
    }
}

/// Records how a connection ended. True when another connection follows: it was disconnected,
/// and the backoff has been waited out.
async fn reconnects_after(holder: &mut Holder, end: SessionEnd, backoff: Duration) -> bool {
    match end {
        SessionEnd::Stopped => {
            holder.record_progress(true).await;
            false
        }
        SessionEnd::Disconnected(message) => {
            tracing::info!(server_id = %holder.claim.server_id, %message, "binlog stream disconnected");
            holder.progress.reconnects += 1;
            metrics::counter!("dbtrail_stream_reconnects_total").increment(1);
            holder
                .progress
                .disconnected_since
                .get_or_insert_with(crate::domain::now);
            if holder.state != StreamState::Disconnected {
                let _ = holder
                    .move_to(StreamState::Disconnected, Some(message))
                    .await;
            } else {
                holder.record_progress(true).await;
            }
            pause(holder, backoff).await
        }
        SessionEnd::LostPosition(message) => {
            let _ = holder
                .move_to(StreamState::LostPosition, Some(message))
                .await;
            false
        }
        SessionEnd::Failed(message) => {
            let _ = holder.move_to(StreamState::Failed, Some(message)).await;
            false
        }
    }
}

/// Waits out a backoff, marking the server disconnected once the grace period has passed.
/// False when the stream must stop instead.
async fn pause(holder: &mut Holder, backoff: Duration) -> bool {
    let until = Instant::now() + backoff;
    loop {
        let grace_left = holder.progress.disconnected_since.map(|since| {
            let passed = crate::domain::now() - since;
            (DISCONNECTED_GRACE - passed).to_std().unwrap_or_default()
        });
        if grace_left == Some(Duration::ZERO)
            && holder.server.status == crate::domain::ServerStatus::Active
        {
            holder.still_disconnected().await;
        }
        let wake = match grace_left {
            Some(left) if left > Duration::ZERO => until.min(Instant::now() + left),
            _ => until,
        };
        tokio::select! {
            () = holder.control.wait() => {
                if holder.must_stop().await {
                    return false;
                }
            }
            () = tokio::time::sleep_until(wake) => {
                if Instant::now() >= until {
                    return true;
                }
            }
        }
    }
}
