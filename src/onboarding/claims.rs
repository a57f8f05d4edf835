//! Which servers this replica claims: the runnable ones of its agent and of dead agents, taken
//! tenant by tenant within each tenant's share of the runner slots, and a runner asked to yield
//! when another tenant waits.

use std::{collections::HashMap, sync::Arc, time::Instant};

use super::{Engine, runner::Runner};
use crate::{
    domain::{ServerId, TenantId},
    store::{Claim, Lease, StoreError},
};

impl Engine {
    pub(super) async fn claim(self: &Arc<Engine>, only: Option<ServerId>) {
        let free = self.config.max_runners.saturating_sub(self.running().len());
        if free == 0 && only.is_none() {
            self.rebalance().await;
        }
        if free == 0 || only.is_some_and(|id| self.running().contains_key(&id)) {
            return;
        }
        let tenants = match self.pick_runnable(only, free).await {
            Ok(picked) => picked,
            Err(error) => {
                tracing::warn!(%error, "finding runnable servers failed");
                return;
            }
        };
        let ids: Vec<ServerId> = tenants.keys().copied().collect();
        if ids.is_empty() {
            return;
        }
        // The leases expire TTL after the database ran the claim, which is after this.
        let asked = Instant::now();
        let claims = match self
            .store
            .claim_runnable(
                self.leases.owner(),
                self.config.lease_ttl,
                self.affinity(),
                &ids,
            )
            .await
        {
            Ok(claims) => claims,
            Err(error) => {
                tracing::warn!(%error, "claiming runnable servers failed");
                return;
            }
        };
        if self.shutdown.is_cancelled() {
            // A claim that raced the shutdown: give it back at once rather than let it expire.
            for claim in claims {
                let _ = self.store.release_lease(Lease::Onboarding, claim).await;
            }
            return;
        }
        for claim in claims {
            self.start_runner(claim, tenants[&claim.server_id], asked)
                .await;
        }
    }

    /// Runs a fresh claim in a runner of its own, unless the server's old runner is still
    /// finishing: then the claim is given back. `asked` is when the claim was asked for.
    pub(super) async fn start_runner(
        self: &Arc<Engine>,
        claim: Claim,
        tenant: TenantId,
        asked: Instant,
    ) {
        let runner = match self.running().entry(claim.server_id) {
            std::collections::hash_map::Entry::Occupied(_) => None,
            std::collections::hash_map::Entry::Vacant(entry) => {
                let lease = self.leases.hold(claim, asked.into());
                Some(
                    entry
                        .insert(Arc::new(Runner::new(tenant, asked, lease)))
                        .clone(),
                )
            }
        };
        let Some(runner) = runner else {
            // Its old runner is still finishing (fenced): give this claim back so that the
            // runner's re-check can take the server at once.
            let _ = self.store.release_lease(Lease::Onboarding, claim).await;
            return;
        };
        let engine = self.clone();
        self.runners.spawn(async move {
            engine.drive(claim, &runner).await;
            engine.running().remove(&claim.server_id);
            // The freed slot takes the next runnable server now, not at the next sweep
            // (wake-ups that came while every slot was busy were skipped), and a wake-up of
            // this server that came while its runner was finishing is honoured too.
            let _ = engine.waker.try_send(None);
        });
    }

    /// Up to `free` runnable servers to claim, taking the tenants in turn, with their tenants. A
    /// tenant within its share of this replica's runner slots may take any free slot; one beyond
    /// it only while a share's worth of slots stays free for the others. So one tenant alone uses
    /// most of the replica, and another tenant's server never waits for it; as the first
    /// tenant's runners end, the slots go to the others until it is back within its share.
    pub(super) async fn pick_runnable(
        &self,
        only: Option<ServerId>,
        free: usize,
    ) -> Result<HashMap<ServerId, TenantId>, StoreError> {
        let share = self.config.max_runners_per_tenant;
        let mut held: HashMap<TenantId, usize> = HashMap::new();
        for runner in self.running().values() {
            *held.entry(runner.tenant).or_default() += 1;
        }
        let candidates = self
            .store
            .runnable_servers(
                self.affinity(),
                only,
                free as i64,
                4 * self.config.max_runners as i64,
            )
            .await?;
        let mut picked = HashMap::new();
        for (server, tenant) in candidates {
            let left = free - picked.len();
            if left == 0 {
                break;
            }
            let holds = held.entry(tenant).or_default();
            if *holds < share || left > share {
                *holds += 1;
                picked.insert(server, tenant);
            }
        }
        Ok(picked)
    }

    /// Every slot is taken: for each server waiting of a tenant below its share, the youngest
    /// runner of the tenant furthest above its share yields (gives its server back between two
    /// polls of its step, which runs again later, idempotent as after a crash), so the freed
    /// slot goes to the waiting tenant. Tenants within their share never yield, so two tenants
    /// never take slots back and forth.
    pub(super) async fn rebalance(&self) {
        let share = self.config.max_runners_per_tenant;
        let mut held: HashMap<TenantId, Vec<Arc<Runner>>> = HashMap::new();
        for runner in self.running().values() {
            if !runner.yielded.is_cancelled() {
                held.entry(runner.tenant).or_default().push(runner.clone());
            }
        }
        if held.values().all(|runners| runners.len() <= share) {
            return;
        }
        let waiting = match self
            .store
            .runnable_servers(
                self.affinity(),
                None,
                share as i64,
                4 * self.config.max_runners as i64,
            )
            .await
        {
            Ok(waiting) => waiting,
            Err(error) => {
                tracing::warn!(%error, "finding waiting servers failed");
                return;
            }
        };
        let mut starved: HashMap<TenantId, usize> = HashMap::new();
        for (_, tenant) in waiting {
            let holds =
                held.get(&tenant).map_or(0, Vec::len) + starved.get(&tenant).copied().unwrap_or(0);
            if holds < share {
                *starved.entry(tenant).or_default() += 1;
            }
        }
        for _ in 0..starved.values().sum::<usize>() {
            let Some(runners) = held
                .values_mut()
                .filter(|runners| runners.len() > share)
                .max_by_key(|runners| runners.len())
            else {
                return;
            };
            runners.sort_by_key(|runner| runner.claimed);
            if let Some(youngest) = runners.pop() {
                youngest.yielded.cancel();
            }
        }
    }
}
