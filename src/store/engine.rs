//! The onboarding engine's coordination in SQL: agents, leases with an epoch fence (expiry on
//! the database clock; the onboarding and the stream lease share renewal and release), claims of
//! runnable servers, and agent slots.

use std::time::Duration;

use diesel::{
    prelude::*,
    sql_types::{Int4, Int8, Interval, Text, Uuid as SqlUuid},
};
use diesel_async::{AsyncConnection, RunQueryDsl};
use uuid::Uuid;

use super::{RUNNABLE_CHANNEL, Store, StoreError, interval, prepared::notify, schema::servers};
use crate::domain::{ServerId, TenantId};

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
    .bind::<SqlUuid, _>(claim.server_id.0)
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
        .bind::<diesel::sql_types::Nullable<SqlUuid>, _>(only.map(|id| id.0))
        .bind::<Int8, _>(per_tenant)
        .bind::<Int8, _>(limit)
        .bind::<SqlUuid, _>(affinity.agent_id)
        .bind::<Interval, _>(interval(affinity.dead_after))
        .bind::<Interval, _>(interval(affinity.replaced_after))
        .load(&mut connection)
        .await?;
        Ok(rows
            .into_iter()
            .map(|row| (ServerId(row.id), TenantId(row.tenant_id)))
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
        let ids: Vec<Uuid> = ids.iter().map(|id| id.0).collect();
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
        .bind::<diesel::sql_types::Array<SqlUuid>, _>(ids)
        .bind::<SqlUuid, _>(affinity.agent_id)
        .bind::<Interval, _>(interval(affinity.dead_after))
        .bind::<Interval, _>(interval(affinity.replaced_after))
        .load(&mut connection)
        .await?;
        Ok(rows
            .into_iter()
            .map(|row| Claim {
                server_id: ServerId(row.id),
                fence: Fence {
                    owner,
                    epoch: row.lease_epoch,
                },
            })
            .collect())
    }

    /// Extends a lease; Fenced when it was taken over (or, for a stream lease, when the server
    /// no longer wants its stream: decommissioned, re-onboarding, in error).
    pub async fn renew_lease(
        &self,
        lease: Lease,
        claim: Claim,
        ttl: Duration,
    ) -> Result<(), StoreError> {
        let (owner, expires, epoch) = lease.columns();
        let mut connection = self.connection().await?;
        let updated = diesel::sql_query(format!(
            "UPDATE servers SET {expires} = now() + $3::interval \
             WHERE id = $1 AND {owner} = $2 AND {epoch} = $4 AND {}",
            lease.still_wanted()
        ))
        .bind::<SqlUuid, _>(claim.server_id.0)
        .bind::<SqlUuid, _>(claim.fence.owner)
        .bind::<Interval, _>(interval(ttl))
        .bind::<Int8, _>(claim.fence.epoch)
        .execute(&mut connection)
        .await?;
        if updated == 1 {
            Ok(())
        } else {
            Err(StoreError::Fenced)
        }
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
                    .find(claim.server_id.0)
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
                diesel::update(servers::table.find(claim.server_id.0))
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
