//! One held stream, from its claim until it stops: connections one after another from the
//! checkpoint, backoff between them, and the honest state (streaming.md §3) on the server.

use std::time::Duration;

use tokio::time::Instant;

use super::{ending::SessionEnd, holder::Holder, session};
use crate::{
    domain::{StreamState, stream::DISCONNECTED_GRACE},
    store::{StoreError, StreamCheckpoint},
};

const MAX_BACKOFF: Duration = Duration::from_secs(60);

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
    let taken = holder
        .index
        .take_stream_checkpoint(holder.claim.server_id, holder.claim.fence.epoch);
    match Box::pin(taken).await {
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
