//! The one lease supervisor that the onboarding engine and the stream supervisor share. Each
//! holds servers under fenced leases (`store::Lease`) of its kind: it claims them (each by its
//! own query), and hands each claim to `Leases`, which keeps them all renewed (a few hundred to
//! a statement) a third of the TTL apart, fences a lease that was taken over (or whose server no
//! longer wants it), expires one that could not be renewed in time, and lets go of one or of all
//! (shutdown).
//!
//! Each held lease has a window within which it is surely still held (from when a renewal was
//! asked, the TTL less a margin); past it, nothing may touch the customer's MySQL or the index.

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::{sync::Notify, time::Instant};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::{
    domain::ServerId,
    store::{Claim, Lease, Store},
};

/// The leases renewed by one statement (B15: one statement for 4,300 stream leases outlasted
/// its 5 s timeout on two busy cores).
const RENEWAL_BATCH: usize = 500;

/// Until when a lease is surely held: moved on by each renewal that succeeds, never back.
#[derive(Debug)]
struct LeaseWindow {
    until: Mutex<Instant>,
}

impl LeaseWindow {
    /// A window for a lease asked for at `asked`, held `valid` from then.
    fn new(asked: Instant, valid: Duration) -> LeaseWindow {
        LeaseWindow {
            until: Mutex::new(asked + valid),
        }
    }

    /// The instant past which the lease may have expired.
    fn until(&self) -> Instant {
        *self
            .until
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// A renewal asked at `asked` succeeded: the lease holds until `asked + valid` at least.
    fn extend(&self, asked: Instant, valid: Duration) {
        let mut until = self
            .until
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        *until = (*until).max(asked + valid);
    }

    /// Whether the lease may have expired by now.
    fn lapsed(&self) -> bool {
        Instant::now() >= self.until()
    }
}

/// One lease this replica holds, as its holder (a runner, a stream) sees it.
#[derive(Debug)]
pub struct HeldLease {
    pub claim: Claim,
    window: LeaseWindow,
    lost: CancellationToken,
}

impl HeldLease {
    /// Whether the lease is gone, or may be: nothing may be written or read under it.
    pub fn lost(&self) -> bool {
        self.lost.is_cancelled() || self.window.lapsed()
    }

    /// The lease was found taken over (a fenced write).
    pub fn lose(&self) {
        self.lost.cancel();
    }

    /// Cancelled once the lease is gone: taken over, expired, or (for the engine) at shutdown.
    pub fn lost_token(&self) -> &CancellationToken {
        &self.lost
    }

    /// Waits until the lease is gone or may be.
    pub async fn ended(&self) {
        loop {
            tokio::select! {
                () = self.lost.cancelled() => return,
                () = tokio::time::sleep_until(self.window.until()) => {
                    if self.window.lapsed() {
                        return;
                    }
                }
            }
        }
    }
}

/// How a kind of lease is held.
#[derive(Debug, Clone, Copy)]
pub struct LeaseTerms {
    pub kind: Lease,
    /// How long a claim or renewal makes a lease last, in the database.
    pub ttl: Duration,
    /// How long after a renewal was asked the holder treats the lease as surely held: the TTL
    /// less a margin for clocks, pauses and the renewal's own round trip.
    pub safe_for: Duration,
}

impl LeaseTerms {
    fn label(&self) -> &'static str {
        match self.kind {
            Lease::Onboarding => "onboarding",
            Lease::Stream => "stream",
        }
    }
}

/// The leases of one kind that this replica holds, renewed together by `run`.
pub struct Leases {
    store: Store,
    terms: LeaseTerms,
    owner: Uuid,
    held: Mutex<HashMap<ServerId, Arc<HeldLease>>>,
    /// Asks for a renewal now: someone else changed a held server, and whether its lease is
    /// still ours is found out at once, not at the next renewal.
    check: Notify,
    /// Every held lease's `lost` is a child of it (the engine's runners stop at shutdown).
    parent: CancellationToken,
}

impl Leases {
    /// The leases `owner` holds on `terms`; `parent` cancels them all as lost.
    pub fn new(
        store: Store,
        terms: LeaseTerms,
        owner: Uuid,
        parent: CancellationToken,
    ) -> Arc<Leases> {
        Arc::new(Leases {
            store,
            terms,
            owner,
            held: Mutex::new(HashMap::new()),
            check: Notify::new(),
            parent,
        })
    }

    /// This replica's lease owner id.
    pub fn owner(&self) -> Uuid {
        self.owner
    }

    fn held(&self) -> std::sync::MutexGuard<'_, HashMap<ServerId, Arc<HeldLease>>> {
        self.held
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Holds a fresh `claim`, asked for at `asked`. A lease of the same server held before is
    /// lost: the claim's new epoch fenced it.
    pub fn hold(&self, claim: Claim, asked: Instant) -> Arc<HeldLease> {
        let held = Arc::new(HeldLease {
            claim,
            window: LeaseWindow::new(asked, self.terms.safe_for),
            lost: self.parent.child_token(),
        });
        if let Some(old) = self.held().insert(claim.server_id, held.clone()) {
            tracing::warn!(server_id = %claim.server_id, "a server was claimed twice by one replica");
            old.lost.cancel();
        }
        held
    }

    /// Renews every held lease now.
    pub fn check_now(&self) {
        self.check.notify_one();
    }

    /// Stops renewing `claim` and lets it go (a no-op in the database when it was taken over).
    pub async fn let_go(&self, claim: Claim) {
        self.forget(claim);
        let _ = self.store.release_lease(self.terms.kind, claim).await;
    }

    /// Stops renewing `claim` (not one claimed since for the same server).
    fn forget(&self, claim: Claim) {
        let mut held = self.held();
        if held
            .get(&claim.server_id)
            .is_some_and(|held| held.claim == claim)
        {
            held.remove(&claim.server_id);
        }
    }

    /// Renews the held leases a third of the TTL apart, and at once when asked (`check_now`);
    /// expires a lease whose window closed; until `stop`.
    pub async fn run(self: Arc<Leases>, stop: CancellationToken) {
        let mut next = Instant::now() + self.terms.ttl / 3;
        loop {
            let closes = self.first_to_close();
            tokio::select! {
                () = stop.cancelled() => return,
                () = self.check.notified() => {}
                () = tokio::time::sleep_until(next) => {}
                () = tokio::time::sleep_until(closes) => {
                    self.expire_lapsed();
                    continue;
                }
            }
            self.renew_all().await;
            next = Instant::now() + self.terms.ttl / 3;
        }
    }

    /// When the first held lease's window closes (far off when none is held).
    fn first_to_close(&self) -> Instant {
        let far = Instant::now() + self.terms.ttl;
        self.held()
            .values()
            .filter(|held| !held.lost.is_cancelled())
            .map(|held| held.window.until())
            .min()
            .map_or(far, |until| until.min(far))
    }

    /// One renewal of every held lease, [`RENEWAL_BATCH`] to a statement, one statement after
    /// another (one statement for thousands of leases outlasts its timeout on a busy database,
    /// and then none is renewed). A lease missing from an answer was taken over (or its server
    /// no longer wants it) and is lost. A renewal answered after a window closed does not
    /// reopen it: its holder may already have stopped, and another replica may hold the server
    /// by now.
    async fn renew_all(&self) {
        let held: Vec<Arc<HeldLease>> = self.held().values().cloned().collect();
        for batch in held.chunks(RENEWAL_BATCH) {
            self.renew(batch).await;
        }
        self.expire_lapsed();
    }

    /// One renewal statement for `held`.
    async fn renew(&self, held: &[Arc<HeldLease>]) {
        let claims: Vec<Claim> = held.iter().map(|held| held.claim).collect();
        let asked = Instant::now();
        let renewal = self
            .store
            .renew_leases(self.terms.kind, &claims, self.terms.ttl);
        match tokio::time::timeout(self.terms.ttl / 3, renewal).await {
            Ok(Ok(renewed)) => {
                let renewed: HashSet<ServerId> = renewed.into_iter().collect();
                for held in held {
                    if !renewed.contains(&held.claim.server_id) {
                        held.lost.cancel();
                    } else if !held.window.lapsed() {
                        held.window.extend(asked, self.terms.safe_for);
                    }
                }
            }
            Ok(Err(error)) => {
                tracing::warn!(%error, leases = held.len(), "{} lease renewal failed", self.terms.label());
            }
            Err(_) => {
                tracing::warn!(
                    leases = held.len(),
                    "{} lease renewal timed out",
                    self.terms.label()
                );
            }
        }
    }

    /// A lease that could not be renewed in time is lost: its holder stops before it may
    /// expire, so that two holders never touch the customer's MySQL at once.
    fn expire_lapsed(&self) {
        for held in self.held().values() {
            if held.window.lapsed() && !held.lost.is_cancelled() {
                tracing::warn!(
                    server_id = %held.claim.server_id,
                    "the {} lease could not be renewed in time; its holder stops before it may expire",
                    self.terms.label()
                );
                held.lost.cancel();
            }
        }
    }

    /// Lets go of every lease of this kind that this replica holds, within `grace` (shutdown);
    /// a lease not let go expires on its own.
    pub async fn release_all(&self, grace: Duration) {
        let kind = self.terms.label();
        let released = self.store.release_all_leases(self.terms.kind, self.owner);
        match tokio::time::timeout(grace, released).await {
            Ok(Ok(0)) => {}
            Ok(Ok(released)) => tracing::info!(released, "released {kind} leases"),
            Ok(Err(error)) => {
                tracing::warn!(%error, "could not release {kind} leases; they will expire")
            }
            Err(_) => tracing::warn!("releasing {kind} leases timed out; they will expire"),
        }
        self.held().clear();
    }
}
