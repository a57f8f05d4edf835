//! The streams' progress (position, counts, lag, heartbeat times: not revisions) waits here and
//! is written for all of this replica's streams in one statement a second, so a thousand
//! streams cost PostgreSQL one statement a second instead of a thousand, and no reader waits
//! on the database between two heartbeats.

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio_util::sync::CancellationToken;

use super::control::Control;
use crate::{
    domain::{ServerId, stream::StreamProgress},
    store::{Claim, Store},
};

/// How often the waiting progress is written.
pub const PROGRESS_INTERVAL: Duration = Duration::from_secs(1);

/// One stream's newest progress and what to tell it if its lease turns out lost.
struct Entry {
    claim: Claim,
    progress: StreamProgress,
    control: Arc<Control>,
}

/// The newest progress of each stream, not yet written.
pub struct ProgressBook {
    store: Store,
    pending: Mutex<HashMap<ServerId, Entry>>,
    /// One batch at a time, so a later progress is never overwritten by an earlier one.
    writer: tokio::sync::Mutex<()>,
}

impl ProgressBook {
    pub fn new(store: Store) -> ProgressBook {
        ProgressBook {
            store,
            pending: Mutex::new(HashMap::new()),
            writer: tokio::sync::Mutex::new(()),
        }
    }

    fn pending(&self) -> std::sync::MutexGuard<'_, HashMap<ServerId, Entry>> {
        self.pending
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Keeps `progress` as the stream's newest, for the next batch.
    pub fn put(&self, claim: Claim, progress: StreamProgress, control: Arc<Control>) {
        self.pending().insert(
            claim.server_id,
            Entry {
                claim,
                progress,
                control,
            },
        );
    }

    /// Writes everything waiting, this caller's entry included (a forced write joins the batch
    /// of whoever writes first). Streams whose lease was taken over are told so; after a failed
    /// write, the entries wait for the next batch unless a newer one came meanwhile.
    pub async fn flush(&self) {
        let _writer = self.writer.lock().await;
        let entries: Vec<Entry> = self.pending().drain().map(|(_, entry)| entry).collect();
        if entries.is_empty() {
            return;
        }
        let rows: Vec<(Claim, &StreamProgress)> = entries
            .iter()
            .map(|entry| (entry.claim, &entry.progress))
            .collect();
        match self.store.record_streams_progress(&rows).await {
            Ok(written) => {
                let written: HashSet<ServerId> = written.into_iter().collect();
                for entry in entries {
                    if !written.contains(&entry.claim.server_id) {
                        entry.control.lose();
                    }
                }
            }
            Err(error) => {
                tracing::warn!(%error, streams = entries.len(), "writing stream progress failed");
                let mut pending = self.pending();
                for entry in entries {
                    pending.entry(entry.claim.server_id).or_insert(entry);
                }
            }
        }
    }

    /// Writes a batch every [`PROGRESS_INTERVAL`] until `stop` (the last one is the caller's).
    pub async fn run(self: Arc<ProgressBook>, stop: CancellationToken) {
        let mut tick = tokio::time::interval(PROGRESS_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                _ = tick.tick() => self.flush().await,
            }
        }
    }
}
