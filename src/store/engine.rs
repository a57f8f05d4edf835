//! The onboarding engine's coordination in SQL: agents, leases with an epoch fence (expiry on
//! the database clock; the onboarding and the stream lease share renewal and release), claims of
//! runnable servers, and agent slots.

use std::time::Duration;

use diesel::{
    prelude::*,
    sql_types::{Array, Int4, Int8, Interval, Text, Uuid as SqlUuid},
};
use diesel_async::{AsyncConnection, RunQueryDsl};
use uuid::Uuid;

use super::{
    RUNNABLE_CHANNEL, Scope, Store, StoreError, interval,
    prepared::notify,
    schema::servers,
    servers::{Changing, modify_locked},
};
use crate::domain::{ServerId, TenantId, server::Server};

/// A runner's right to write: its owner id and the epoch of its claim.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fence {
    pub owner: Uuid,
    pub epoch: i64,
}

/// The two leases of a server, of one shape with columns of their own: the onboarding
/// runner's, and the live stream's (streaming.md §1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lease {
    Onboarding,
    Stream,
}

impl Lease {
    /// The owner, expiry and epoch columns.
    pub(super) fn columns(self) -> (&'static str, &'static str, &'static str) {
        match self {
            Lease::Onboarding => ("lease_owner", "lease_expires_at", "lease_epoch"),
            Lease::Stream => ("stream_owner", "stream_expires_at", "stream_epoch"),
        }
    }

    /// What must still hold of the server for a renewal to succeed.
    fn still_wanted(self) -> &'static str {
        match self {
            Lease::Onboarding => "true",
            Lease::Stream => super::streams::STREAMABLE,
        }
    }
}

/// A server claimed by this replica.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Claim {
    pub server_id: ServerId,
    pub fence: Fence,
}

/// Which servers a replica's engine may claim: those assigned to its agent (or to none yet, for
/// provisioning), and those of an agent silent for `dead_after`, which it adopts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Affinity {
    pub agent_id: Uuid,
    pub dead_after: Duration,
    /// How long an agent may be silent before its active SSH tunnels move to another IP.
    pub replaced_after: Duration,
}

/// The claim condition of the engine: unheld, and runnable on this agent; or orphaned by a dead
/// agent (pending, any step); or an SSH tunnel whose stream needs an agent with its outbound IP
/// when none has been alive for `replaced` (active or disconnected); the last two while this
/// agent has a free slot. `agent`, `window` and `replaced` are the placeholders of this agent's
/// id, of the silence after which an agent is dead, and of the one after which its active SSH
/// tunnels move.
fn claimable(agent: &str, window: &str, replaced: &str) -> String {
    format!(
        "(lease_owner IS NULL OR lease_expires_at < now()) AND ( \
             (runnable AND (agent_id IS NULL OR agent_id = {agent})) \
             OR (( \
                     (status = 'pending' AND agent_id IN (SELECT id FROM agents \
                         WHERE id <> {agent} AND heartbeat_at < now() - {window}::interval)) \
                     OR (status IN ('active', 'disconnected') \
                         AND connection_method = 'ssh_tunnel' \
                         AND agent_id IN (SELECT id FROM agents \
                             WHERE id <> {agent} AND heartbeat_at < now() - {replaced}::interval) \
                         AND NOT EXISTS (SELECT 1 FROM agents AS peer \
                             WHERE peer.outbound_ip = servers.agent_outbound_ip \
                             AND peer.heartbeat_at >= now() - {window}::interval))) \
                 AND EXISTS (SELECT 1 FROM agents WHERE id = {agent} AND capacity > assigned)))"
    )
}

/// Lets go of `claim`'s lease, fenced by its owner and epoch; whether it was still held.
async fn release(
    connection: &mut super::Connection,
    lease: Lease,
    claim: Claim,
) -> Result<bool, StoreError> {
    let (owner, expires, epoch) = lease.columns();
    let released = diesel::sql_query(format!(
        "UPDATE servers SET {owner} = NULL, {expires} = NULL \
         WHERE id = $1 AND {owner} = $2 AND {epoch} = $3"
    ))
    .bind::<SqlUuid, _>(claim.server_id.uuid())
    .bind::<SqlUuid, _>(claim.fence.owner)
    .bind::<Int8, _>(claim.fence.epoch)
    .execute(connection)
    .await?;
    Ok(released == 1)
}

#[derive(QueryableByName)]
struct ClaimedRow {
    #[diesel(sql_type = SqlUuid)]
    id: Uuid,
    #[diesel(sql_type = Int8)]
    lease_epoch: i64,
}

/// A server's agent assignment and lease, as read under its row lock.
type AssignmentRow = (Option<Uuid>, Option<String>, Option<Uuid>, i64);

#[derive(QueryableByName)]
struct AgentRow {
    #[diesel(sql_type = SqlUuid)]
    id: Uuid,
    #[diesel(sql_type = Text)]
    outbound_ip: String,
}

impl Store {
    /// Registers (or refreshes) this replica's embedded agent; returns its id.
    pub async fn upsert_agent(
        &self,
        name: &str,
        outbound_ip: &str,
        capacity: i32,
    ) -> Result<Uuid, StoreError> {
        let mut connection = self.connection().await?;
        let row: AgentRow = diesel::sql_query(
            "INSERT INTO agents (id, name, outbound_ip, capacity) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (name) DO UPDATE SET outbound_ip = EXCLUDED.outbound_ip, \
                 capacity = EXCLUDED.capacity, heartbeat_at = now() \
             RETURNING id, outbound_ip",
        )
        .bind::<SqlUuid, _>(Uuid::now_v7())
        .bind::<Text, _>(name)
        .bind::<Text, _>(outbound_ip)
        .bind::<Int4, _>(capacity)
        .get_result(&mut connection)
        .await?;
        Ok(row.id)
    }

    /// Forgets agents silent for longer than `dead_for` that no server names any more (their
    /// servers moved to live agents); returns their names.
    pub async fn prune_dead_agents(&self, dead_for: Duration) -> Result<Vec<String>, StoreError> {
        #[derive(QueryableByName)]
        struct Pruned {
            #[diesel(sql_type = Text)]
            name: String,
        }
        let mut connection = self.connection().await?;
        let pruned: Vec<Pruned> = diesel::sql_query(
            "DELETE FROM agents WHERE heartbeat_at < now() - $1::interval \
             AND NOT EXISTS (SELECT 1 FROM servers WHERE servers.agent_id = agents.id) \
             RETURNING name",
        )
        .bind::<Interval, _>(interval(dead_for))
        .load(&mut connection)
        .await?;
        Ok(pruned.into_iter().map(|agent| agent.name).collect())
    }

    /// Servers this replica's engine may claim (see [`claimable`]), with their tenants: at most
    /// `per_tenant` of each tenant and `limit` in all, the tenants in turn (each one's oldest
    /// lease first, then each one's second, ...).
    pub async fn runnable_servers(
        &self,
        affinity: Affinity,
        only: Option<ServerId>,
        per_tenant: i64,
        limit: i64,
    ) -> Result<Vec<(ServerId, TenantId)>, StoreError> {
        #[derive(QueryableByName)]
        struct Candidate {
            #[diesel(sql_type = SqlUuid)]
            id: Uuid,
            #[diesel(sql_type = SqlUuid)]
            tenant_id: Uuid,
        }
        let mut connection = self.connection().await?;
        let rows: Vec<Candidate> = diesel::sql_query(format!(
            "SELECT id, tenant_id FROM ( \
                 SELECT id, tenant_id, lease_expires_at, row_number() OVER ( \
                     PARTITION BY tenant_id ORDER BY lease_expires_at NULLS FIRST) AS nth \
                 FROM servers \
                 WHERE {} AND ($1::uuid IS NULL OR id = $1)) candidates \
             WHERE nth <= $2 ORDER BY nth, lease_expires_at NULLS FIRST LIMIT $3",
            claimable("$4", "$5", "$6")
        ))
        .bind::<diesel::sql_types::Nullable<SqlUuid>, _>(only.map(|id| id.uuid()))
        .bind::<Int8, _>(per_tenant)
        .bind::<Int8, _>(limit)
        .bind::<SqlUuid, _>(affinity.agent_id)
        .bind::<Interval, _>(interval(affinity.dead_after))
        .bind::<Interval, _>(interval(affinity.replaced_after))
        .load(&mut connection)
        .await?;
        Ok(rows
            .into_iter()
            .map(|row| {
                (
                    ServerId::from_uuid(row.id),
                    TenantId::from_uuid(row.tenant_id),
                )
            })
            .collect())
    }

    /// Claims those of `ids` that are still claimable by this agent: a lease for `owner` with a
    /// new epoch. Servers another replica claimed meanwhile are skipped.
    pub async fn claim_runnable(
        &self,
        owner: Uuid,
        ttl: Duration,
        affinity: Affinity,
        ids: &[ServerId],
    ) -> Result<Vec<Claim>, StoreError> {
        let ids: Vec<Uuid> = ids.iter().map(|id| id.uuid()).collect();
        let mut connection = self.connection().await?;
        let rows: Vec<ClaimedRow> = diesel::sql_query(format!(
            "UPDATE servers SET lease_owner = $1, lease_expires_at = now() + $2::interval, \
                 lease_epoch = lease_epoch + 1 \
             WHERE id IN (SELECT id FROM servers WHERE id = ANY($3) AND {} \
                 FOR UPDATE SKIP LOCKED) \
             RETURNING id, lease_epoch",
            claimable("$4", "$5", "$6")
        ))
        .bind::<SqlUuid, _>(owner)
        .bind::<Interval, _>(interval(ttl))
        .bind::<Array<SqlUuid>, _>(ids)
        .bind::<SqlUuid, _>(affinity.agent_id)
        .bind::<Interval, _>(interval(affinity.dead_after))
        .bind::<Interval, _>(interval(affinity.replaced_after))
        .load(&mut connection)
        .await?;
        Ok(rows
            .into_iter()
            .map(|row| Claim {
                server_id: ServerId::from_uuid(row.id),
                fence: Fence {
                    owner,
                    epoch: row.lease_epoch,
                },
            })
            .collect())
    }

    /// Renews the `lease` of every one of `claims` in one statement (locking their rows in id
    /// order, as every batch does, so that batches never deadlock); the servers whose lease was
    /// renewed. A claim missing from the answer was taken over, or its server no longer wants
    /// the lease.
    pub async fn renew_leases(
        &self,
        lease: Lease,
        claims: &[Claim],
        ttl: Duration,
    ) -> Result<Vec<ServerId>, StoreError> {
        #[derive(QueryableByName)]
        struct Renewed {
            #[diesel(sql_type = SqlUuid)]
            id: Uuid,
        }
        let (owner, expires, epoch) = lease.columns();
        let (ids, owners, epochs) = super::streams::fences(claims);
        let mut connection = self.connection().await?;
        let rows: Vec<Renewed> = diesel::sql_query(format!(
            "WITH held AS (SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::int8[]) \
                 AS held(id, owner, epoch)), \
             locked AS (SELECT servers.id FROM servers JOIN held ON servers.id = held.id \
                 AND {owner} = held.owner AND {epoch} = held.epoch \
                 WHERE {} ORDER BY servers.id FOR UPDATE OF servers) \
             UPDATE servers SET {expires} = now() + $4::interval FROM locked \
             WHERE servers.id = locked.id RETURNING servers.id",
            lease.still_wanted()
        ))
        .bind::<Array<SqlUuid>, _>(ids)
        .bind::<Array<SqlUuid>, _>(owners)
        .bind::<Array<Int8>, _>(epochs)
        .bind::<Interval, _>(interval(ttl))
        .load(&mut connection)
        .await?;
        Ok(rows
            .into_iter()
            .map(|row| ServerId::from_uuid(row.id))
            .collect())
    }

    /// Lets go of a lease (no-op when it was taken over already).
    pub async fn release_lease(&self, lease: Lease, claim: Claim) -> Result<(), StoreError> {
        let mut connection = self.connection().await?;
        release(&mut connection, lease, claim).await?;
        Ok(())
    }

    /// Lets go of an onboarding lease so that the server's own agent runs it, and wakes the
    /// replicas (its agent's claims it at once, not at its next sweep).
    pub async fn hand_over(&self, claim: Claim) -> Result<(), StoreError> {
        let mut connection = self.connection().await?;
        connection
            .transaction(async move |connection| -> Result<_, StoreError> {
                if release(connection, Lease::Onboarding, claim).await? {
                    notify(connection, RUNNABLE_CHANNEL, claim.server_id.to_string()).await?;
                }
                Ok(())
            })
            .await
    }

    /// Whether `agent_id` beat within `dead_after`.
    pub async fn agent_is_live(
        &self,
        agent_id: Uuid,
        dead_after: Duration,
    ) -> Result<bool, StoreError> {
        let mut connection = self.connection().await?;
        #[derive(QueryableByName)]
        struct Live {
            #[diesel(sql_type = diesel::sql_types::Bool)]
            live: bool,
        }
        let row: Live = diesel::sql_query(
            "SELECT EXISTS (SELECT 1 FROM agents \
                 WHERE id = $1 AND heartbeat_at >= now() - $2::interval) AS live",
        )
        .bind::<SqlUuid, _>(agent_id)
        .bind::<Interval, _>(interval(dead_after))
        .get_result(&mut connection)
        .await?;
        Ok(row.live)
    }

    /// Lets go of every lease of this kind that this replica holds, so others take over at
    /// once (shutdown).
    pub async fn release_all_leases(
        &self,
        lease: Lease,
        holder: Uuid,
    ) -> Result<usize, StoreError> {
        let (owner, expires, _) = lease.columns();
        let mut connection = self.connection().await?;
        Ok(diesel::sql_query(format!(
            "UPDATE servers SET {owner} = NULL, {expires} = NULL WHERE {owner} = $1"
        ))
        .bind::<SqlUuid, _>(holder)
        .execute(&mut connection)
        .await?)
    }

    /// Adopts a claimed server of a dead agent for `agent_id`: `change` moves it to that agent
    /// if the agent still has a free slot, checked on the agent's locked row (the server's row
    /// locked first, as everywhere), so two claims of orphans, on this replica or another, never
    /// take more slots than the agent has. None, and nothing written, when no slot is free.
    pub async fn adopt_orphan<T, F>(
        &self,
        claim: Claim,
        agent_id: Uuid,
        change: F,
    ) -> Result<Option<(Server, T)>, StoreError>
    where
        F: FnOnce(&mut Server) -> T + Send,
        T: Send,
    {
        #[derive(QueryableByName)]
        struct Slot {
            #[diesel(sql_type = diesel::sql_types::Bool)]
            free: bool,
        }
        let scope = Scope::Runner(claim.fence);
        let mut connection = self.connection().await?;
        connection
            .transaction(async move |connection| -> Result<_, StoreError> {
                servers::table
                    .find(claim.server_id.uuid())
                    .select(servers::id)
                    .for_update()
                    .first::<Uuid>(connection)
                    .await
                    .optional()?
                    .ok_or(StoreError::NotFound)?;
                let slot: Option<Slot> = diesel::sql_query(
                    "SELECT capacity > assigned AS free FROM agents WHERE id = $1 FOR UPDATE",
                )
                .bind::<SqlUuid, _>(agent_id)
                .get_result(connection)
                .await
                .optional()?;
                if !slot.is_some_and(|slot| slot.free) {
                    return Ok(None);
                }
                let adopted = modify_locked(connection, scope, claim.server_id, |server| {
                    Ok::<_, StoreError>(change(server))
                })
                .await
                .map_err(Changing::into_error)?;
                Ok(Some(adopted))
            })
            .await
    }

    /// Takes an agent slot for a server (idempotent: keeps one already taken). Returns the
    /// agent's outbound IP, or None when no agent has free capacity.
    pub async fn assign_agent(
        &self,
        claim: Claim,
        dead_after: Duration,
    ) -> Result<Option<String>, StoreError> {
        let window = interval(dead_after);
        let mut connection = self.connection().await?;
        connection
            .transaction(async move |connection| -> Result<_, StoreError> {
                let current: Option<AssignmentRow> = servers::table
                    .find(claim.server_id.uuid())
                    .select((
                        servers::agent_id,
                        servers::agent_outbound_ip,
                        servers::lease_owner,
                        servers::lease_epoch,
                    ))
                    .for_update()
                    .first(connection)
                    .await
                    .optional()?;
                let (agent_id, outbound_ip, owner, epoch) = current.ok_or(StoreError::NotFound)?;
                if owner != Some(claim.fence.owner) || epoch != claim.fence.epoch {
                    return Err(StoreError::Fenced);
                }
                if agent_id.is_some() {
                    return Ok(outbound_ip);
                }
                // The least loaded agent with a free slot, locked: its `assigned` count
                // (kept by a trigger on servers.agent_id) is re-checked on the locked row.
                let agent: Option<AgentRow> = diesel::sql_query(
                    "SELECT id, outbound_ip FROM agents WHERE capacity > assigned \
                         AND heartbeat_at >= now() - $1::interval \
                         ORDER BY assigned::float8 / GREATEST(capacity, 1), heartbeat_at DESC \
                         LIMIT 1 FOR UPDATE",
                )
                .bind::<Interval, _>(window)
                .get_result(connection)
                .await
                .optional()?;
                let Some(agent) = agent else {
                    return Ok(None);
                };
                diesel::update(servers::table.find(claim.server_id.uuid()))
                    .set((
                        servers::agent_id.eq(agent.id),
                        servers::agent_outbound_ip.eq(&agent.outbound_ip),
                    ))
                    .execute(connection)
                    .await?;
                Ok(Some(agent.outbound_ip))
            })
            .await
    }
}
