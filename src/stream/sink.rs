//! The write half of a connection's pipeline. A task of its own takes batches (rows and the
//! checkpoint after them) from a bounded channel and writes each, in order, in one transaction
//! fenced by the stream lease's epoch, retrying while the index fails. The read half hands
//! batches over, waiting while the channel is full (a slow index holds the reader back, and
//! memory stays bounded: at most `QUEUED` batches wait, one is written), and takes the reports
//! back into the stream's progress. A batch of `COPY_MIN_ROWS` or more is written with a binary
//! COPY on a connection the writer holds while bulk keeps coming (one of the process's few,
//! `COPY_CONNECTIONS`; released after `COPY_IDLE` without bulk), smaller ones through the pool.

use std::{sync::Arc, time::Duration};

use tokio::{sync::mpsc, task::JoinHandle, time::Instant};

use super::{control::Control, ending::SessionEnd, holder::Holder};
use crate::{
    domain::change::RowChange,
    store::{
        ChangeIndex, Claim, StoreError, StreamPosition,
        index::{COPY_MIN_ROWS, CopyConnection},
    },
};

/// Batches that may wait for the writer besides the one it writes.
pub(super) const QUEUED: usize = 2;
/// A COPY connection unused this long goes back to the process.
const COPY_IDLE: Duration = Duration::from_secs(5);
/// How long index writes may keep failing before the stream is `stalled`.
const STALL_AFTER: Duration = Duration::from_secs(30);

/// Rows and the checkpoint after them: one transaction.
pub(super) struct Batch {
    pub(super) events: Vec<RowChange>,
    pub(super) position: StreamPosition,
}

/// What the writer tells the reader.
pub(super) enum Report {
    /// A batch is stored: its checkpoint, the events stored in total, and its rows.
    Stored {
        position: StreamPosition,
        total: i64,
        written: usize,
    },
    /// Writes have failed for a while (the stream is `stalled`), with the last error.
    Failing(String),
}

/// The read half's end of the pipeline.
pub(super) struct Sink {
    /// Boxed, like the reports: a channel allocates room for 32 of its items at once, and a
    /// thousand idle streams would each hold that room for nothing.
    batches: Option<mpsc::Sender<Box<Batch>>>,
    /// At most one report a batch, and the reader takes them in whenever it hands a batch over,
    /// so no more than `QUEUED` + 2 wait here.
    reports: mpsc::UnboundedReceiver<Box<Report>>,
    handed: u64,
    stored: u64,
    /// The checkpoint of the last batch handed over.
    last_position: Option<StreamPosition>,
    task: Option<JoinHandle<()>>,
}

impl Sink {
    /// Starts the writer of a connection of `holder`'s stream.
    pub(super) fn start(holder: &Holder) -> Sink {
        let (batches, queue) = mpsc::channel(QUEUED);
        let (report, reports) = mpsc::unbounded_channel();
        let writer = Writer {
            index: holder.index.clone(),
            claim: holder.claim,
            control: holder.control.clone(),
            reports: report,
            copy: None,
        };
        Sink {
            batches: Some(batches),
            reports,
            handed: 0,
            stored: 0,
            last_position: None,
            task: Some(tokio::spawn(writer.run(queue))),
        }
    }

    /// Hands a batch to the writer, waiting while the queue is full (taking reports in).
    pub(super) async fn hand_over(
        &mut self,
        holder: &mut Holder,
        batch: Batch,
    ) -> Result<(), SessionEnd> {
        let Some(batches) = self.batches.as_ref() else {
            return Err(SessionEnd::Stopped);
        };
        let position = batch.position.clone();
        let send = batches.send(Box::new(batch));
        tokio::pin!(send);
        loop {
            tokio::select! {
                sent = &mut send => {
                    sent.map_err(|_| SessionEnd::Stopped)?;
                    self.handed += 1;
                    self.last_position = Some(position);
                    return Ok(());
                }
                Some(report) = self.reports.recv() => {
                    take_report(holder, *report, &mut self.stored).await;
                }
            }
        }
    }

    /// Whether every batch handed over is stored.
    pub(super) fn idle(&self) -> bool {
        self.stored == self.handed
    }

    /// Whether the index's checkpoint is `position` already: the last batch handed over
    /// ended there and is stored.
    pub(super) fn stored_at(&self, position: &StreamPosition) -> bool {
        self.idle() && self.last_position.as_ref() == Some(position)
    }

    /// The next report (pending forever once the writer ended).
    pub(super) async fn report(&mut self) -> Report {
        match self.reports.recv().await {
            Some(report) => *report,
            None => std::future::pending().await,
        }
    }

    /// Takes in a report received by `report`.
    pub(super) async fn take(&mut self, holder: &mut Holder, report: Report) {
        take_report(holder, report, &mut self.stored).await;
    }

    /// Waits until every batch handed over is stored; a writer that ended first (the lease
    /// was lost) ends the connection.
    pub(super) async fn settle(&mut self, holder: &mut Holder) -> Result<(), SessionEnd> {
        while self.stored < self.handed {
            match self.reports.recv().await {
                Some(report) => take_report(holder, *report, &mut self.stored).await,
                None => return Err(SessionEnd::Stopped),
            }
        }
        Ok(())
    }

    /// Ends the pipeline at the end of a connection: the batches queued are still written
    /// (a write that fails is not retried: the next connection reads them again from the
    /// checkpoint), and their reports taken in.
    pub(super) async fn finish(mut self, holder: &mut Holder) {
        self.batches = None;
        while let Some(report) = self.reports.recv().await {
            take_report(holder, *report, &mut self.stored).await;
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

async fn take_report(holder: &mut Holder, report: Report, stored: &mut u64) {
    match report {
        Report::Stored {
            position,
            total,
            written,
        } => {
            *stored += 1;
            holder.stored(&position, total, written).await;
        }
        Report::Failing(message) => holder.failing(message).await,
    }
}

/// The write half: the task that owns the index writes of one connection.
struct Writer {
    index: ChangeIndex,
    claim: Claim,
    control: Arc<Control>,
    reports: mpsc::UnboundedSender<Box<Report>>,
    /// The COPY connection held while bulk keeps coming.
    copy: Option<CopyConnection>,
}

impl Writer {
    async fn run(mut self, mut queue: mpsc::Receiver<Box<Batch>>) {
        while let Some(batch) = self.next(&mut queue).await {
            let Some(total) = self.write(&batch, &queue).await else {
                return;
            };
            let report = Report::Stored {
                written: batch.events.len(),
                position: batch.position,
                total,
            };
            if self.reports.send(Box::new(report)).is_err() {
                return;
            }
        }
    }

    /// The next batch; a COPY connection waiting longer than `COPY_IDLE` for it is let go.
    async fn next(&mut self, queue: &mut mpsc::Receiver<Box<Batch>>) -> Option<Box<Batch>> {
        if self.copy.is_some() {
            match tokio::time::timeout(COPY_IDLE, queue.recv()).await {
                Ok(batch) => return batch,
                Err(_) => self.copy = None,
            }
        }
        queue.recv().await
    }

    /// Writes one batch once: with a COPY when it is bulk and a COPY connection is (or can be
    /// made) ours, else through the pool.
    async fn write_once(&mut self, batch: &Batch) -> Result<i64, StoreError> {
        let owner = (self.claim.server_id, self.claim.fence.epoch);
        if batch.events.len() >= COPY_MIN_ROWS {
            if self.copy.is_none() {
                self.copy = Box::pin(self.index.copy_connection()).await.unwrap_or_else(|error| {
                    tracing::warn!(server_id = %self.claim.server_id, %error, "no COPY connection; writing through the pool");
                    None
                });
            }
            if let Some(connection) = self.copy.as_mut() {
                let written = Box::pin(self.index.copy_change_batch(
                    connection,
                    owner,
                    &batch.events,
                    &batch.position,
                ))
                .await;
                if written.is_err() {
                    self.copy = None;
                }
                return written;
            }
        }
        // Boxed, like the COPY: the writer waits for batches far longer than it writes them.
        Box::pin(
            self.index
                .write_change_batch(owner.0, owner.1, &batch.events, &batch.position),
        )
        .await
    }

    /// Writes one batch, retrying while the index fails and the connection goes on; None when
    /// the lease is lost or the connection ended with the write failing.
    async fn write(&mut self, batch: &Batch, queue: &mpsc::Receiver<Box<Batch>>) -> Option<i64> {
        let failing_since = Instant::now();
        let mut said = false;
        loop {
            if self.control.lost() {
                return None;
            }
            match self.write_once(batch).await {
                Ok(total) => return Some(total),
                Err(StoreError::Fenced) => {
                    self.control.lose();
                    return None;
                }
                Err(error) => {
                    tracing::warn!(server_id = %self.claim.server_id, %error, "writing change events failed; retrying");
                    if queue.is_closed() {
                        return None;
                    }
                    if failing_since.elapsed() >= STALL_AFTER && !said {
                        said = true;
                        let message = format!("the change index cannot be written: {error}");
                        let _ = self.reports.send(Box::new(Report::Failing(message)));
                    }
                    tokio::select! {
                        () = self.control.ended() => {}
                        () = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                }
            }
        }
    }
}
