//! A held stream: its lease, its server, its progress, and what it writes (the stream state,
//! snapshot refreshes; row batches with their checkpoint go through a connection's `sink`), all
//! under the stream's fence.

use std::{
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use tokio::time::Instant;

use super::{context::StreamContext, control::Control, progress::ProgressBook};
use crate::{
    agent::AgentSettings,
    domain::schema_change::Ddl,
    domain::{StreamState, server::Server, stream::StreamProgress},
    secrets::SecretBox,
    source::{schema::Table, snapshot::refresh_snapshot_table},
    store::{ChangeIndex, Claim, Scope, Store, StoreError, StreamPosition},
};

/// A stream that ran this long without trouble forgets its reconnects.
const CLEAN_RUN: Duration = Duration::from_secs(600);

/// How streams run.
#[derive(Debug, Clone, Copy)]
pub struct StreamSettings {
    /// The heartbeat period asked of the source.
    pub heartbeat: Duration,
    /// A checkpoint is written at least this often.
    pub checkpoint_interval: Duration,
}

/// A stream's holder: its lease, its server, and what it reports.
pub struct Holder {
    pub claim: Claim,
    pub settings: StreamSettings,
    pub control: Arc<Control>,
    pub progress: StreamProgress,
    pub(super) server: Arc<Server>,
    pub(super) store: Store,
    pub(super) index: ChangeIndex,
    pub(super) secrets: SecretBox,
    pub(super) agent: AgentSettings,
    pub(super) state: StreamState,
    pub(super) ran: bool,
    pub(super) running_since: Option<Instant>,
    pub(super) book: Arc<ProgressBook>,
}

/// What a holder is made of.
pub struct HolderParts {
    pub claim: Claim,
    pub settings: StreamSettings,
    pub control: Arc<Control>,
    pub server: Server,
    pub store: Store,
    pub index: ChangeIndex,
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
            server: Arc::new(parts.server),
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

    /// What the stream's next connection works with: the server as it is now, under the
    /// stream's lease.
    pub fn context(&self) -> StreamContext {
        StreamContext {
            server: self.server.clone(),
            claim: self.claim,
            store: self.store.clone(),
            secrets: self.secrets.clone(),
            agent: self.agent.clone(),
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
        match Box::pin(self.store.server_by_id(self.claim.server_id)).await {
            Ok(server) if !server.wants_stream() => true,
            Ok(server) => {
                self.server = Arc::new(server);
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

    /// A batch and its checkpoint were stored (by the connection's writer, `sink`): the
    /// progress moves on, and a stalled stream runs again.
    pub(super) async fn stored(&mut self, position: &StreamPosition, total: i64, written: usize) {
        self.checkpointed(position, total, written);
        if self.state == StreamState::Stalled {
            let _ = self.move_to(StreamState::Running, None).await;
        }
        self.record_progress(false).await;
    }

    /// The checkpoint is due but stands where the last one put it: it is current as of now.
    pub(super) async fn checkpoint_current(&mut self) {
        self.progress.last_checkpoint_at = Some(crate::domain::now());
        self.record_progress(false).await;
    }

    /// Index writes have kept failing for a while: the stream is `stalled`.
    pub(super) async fn failing(&mut self, message: String) {
        if self.state != StreamState::Stalled {
            let _ = self.move_to(StreamState::Stalled, Some(message)).await;
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

    /// Hands the progress to the next batch, sampled for the recent series; `force` waits
    /// until it is written (a fenced write marks the lease lost).
    pub async fn record_progress(&mut self, force: bool) {
        self.progress.sample(crate::domain::now());
        self.book
            .put(self.claim, self.progress.clone(), self.control.clone());
        if force {
            Box::pin(self.book.flush()).await;
        }
    }

    /// Stores the table `ddl` changed in the server's snapshot (the decoder already uses it),
    /// and the statement in the schema-change feed; a failure leaves the stored snapshot and
    /// the feed behind, not the stream.
    pub async fn snapshot_refreshed(&mut self, ddl: &Ddl, fresh: Option<Table>) {
        match Box::pin(refresh_snapshot_table(&self.store, self.claim, ddl, fresh)).await {
            Ok(()) => {}
            Err(StoreError::Fenced) => self.control.lose(),
            Err(error) => tracing::warn!(
                server_id = %self.claim.server_id, %error,
                "the snapshot could not be refreshed after a DDL statement"
            ),
        }
    }

    /// Records a new state: a revision of the server.
    pub(super) async fn move_to(
        &mut self,
        state: StreamState,
        error: Option<String>,
    ) -> Result<(), StoreError> {
        self.record_progress(true).await;
        let now = crate::domain::now();
        let (server, _) = Box::pin(self.store.modify_server(
            Scope::Stream(self.claim.fence),
            self.claim.server_id,
            |server| Ok::<_, StoreError>(server.stream_moved(state, error, now)),
        ))
        .await?;
        self.server = Arc::new(server);
        self.state = state;
        Ok(())
    }

    pub(super) async fn still_disconnected(&mut self) {
        let result = Box::pin(self.store.modify_server(
            Scope::Stream(self.claim.fence),
            self.claim.server_id,
            |server| {
                server.stream_still_disconnected();
                Ok::<_, StoreError>(())
            },
        ))
        .await;
        if let Ok((server, ())) = result {
            self.server = Arc::new(server);
        }
    }
}
