//! One running server's runner as the engine knows it: its work is polled only while its lease
//! (kept renewed by the engine's `lease::Leases`) is surely held.

use std::{
    sync::{
        Arc,
        atomic::{AtomicI64, Ordering},
    },
    task::Poll,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use tokio_util::sync::CancellationToken;

use crate::{domain::TenantId, lease::HeldLease};

/// What the engine knows of one running server's runner.
pub(super) struct Runner {
    /// Whose server it runs (for the per-tenant share of runner slots).
    pub(super) tenant: TenantId,
    /// The latest revision this runner wrote; a NOTIFY of a later one came from someone else.
    pub(super) written: AtomicI64,
    /// Its lease, kept renewed by the engine's `Leases`; once it may have lapsed, the step is
    /// not polled again.
    pub(super) lease: Arc<HeldLease>,
    /// When it was claimed: the youngest runner of a tenant yields first.
    pub(super) claimed: Instant,
    /// Asks the runner to give its server back (its tenant holds more than its share while
    /// another tenant, below its share, waits).
    pub(super) yielded: CancellationToken,
}

impl Runner {
    pub(super) fn new(tenant: TenantId, claimed: Instant, lease: Arc<HeldLease>) -> Runner {
        Runner {
            tenant,
            written: AtomicI64::default(),
            lease,
            claimed,
            yielded: CancellationToken::new(),
        }
    }

    pub(super) fn wrote(&self, revision: i64) {
        self.written.fetch_max(revision, Ordering::AcqRel);
    }

    /// Runs `work` while the lease is surely held. Once it may have lapsed, `work` is never
    /// polled again, so it sends no query and reads no reply, even when the process was paused
    /// past that instant and its timers have not fired yet: None. `active` records when `work`
    /// was first and last polled.
    pub(super) async fn within_lease<F: Future>(
        &self,
        work: F,
        active: &mut ActiveSpan,
    ) -> Option<F::Output> {
        let mut work = std::pin::pin!(work);
        std::future::poll_fn(|context| {
            if self.lease.lost() {
                return Poll::Ready(None);
            }
            let polled = work.as_mut().poll(context);
            active.polled();
            polled.map(Some)
        })
        .await
    }
}

/// How a run of a step ended.
pub(super) enum Run<T> {
    Ended(T),
    /// Stopped for another tenant's sake.
    Yielded,
    /// Stopped because the lease was lost or may have lapsed.
    CutOff,
}

/// When a run of a step was first and last polled, by the wall clock: outside that span it did
/// nothing. Logged with the runner and its epoch, so runs on different replicas can be compared.
#[derive(Debug, Default)]
pub(super) struct ActiveSpan {
    pub(super) first: Option<SystemTime>,
    pub(super) last: Option<SystemTime>,
}

impl ActiveSpan {
    pub(super) fn polled(&mut self) {
        let now = SystemTime::now();
        self.first.get_or_insert(now);
        self.last = Some(now);
    }

    pub(super) fn micros(at: Option<SystemTime>) -> i64 {
        at.and_then(|at| at.duration_since(UNIX_EPOCH).ok())
            .map_or(0, |since| {
                i64::try_from(since.as_micros()).unwrap_or(i64::MAX)
            })
    }
}

/// How long after a renewal was asked for the lease is surely still held: the TTL less a margin.
pub(super) fn lease_safe_for(ttl: Duration) -> Duration {
    ttl.saturating_sub(ttl / 4)
}
