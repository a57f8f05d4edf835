//! What the supervisor tells a running stream: look again, let go; and its lease, which the
//! supervisor's `lease::Leases` keeps renewed (lost when taken over or not renewed in time).

use std::sync::{
    Arc,
    atomic::{AtomicBool, Ordering},
};

use tokio::sync::Notify;

use crate::lease::HeldLease;

/// What the supervisor tells a running stream, and its lease.
pub struct Control {
    changed: Notify,
    pub(super) release: AtomicBool,
    /// Once it may have lapsed, the connection must be closed.
    lease: Arc<HeldLease>,
}

impl Control {
    /// A control for a lease just taken.
    pub fn new(lease: Arc<HeldLease>) -> Control {
        Control {
            changed: Notify::new(),
            release: AtomicBool::new(false),
            lease,
        }
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

    /// The lease was taken over (a fenced write found out).
    pub fn lose(&self) {
        self.lease.lose();
    }

    /// Whether the lease is gone or may be.
    pub fn lost(&self) -> bool {
        self.lease.lost()
    }

    /// Waits until the lease is gone or may be.
    pub async fn ended(&self) {
        self.lease.ended().await;
    }

    /// Waits until something needs looking at.
    pub async fn wait(&self) {
        tokio::select! {
            () = self.changed.notified() => {}
            () = self.lease.ended() => {}
        }
    }
}
