//! Stream leases in SQL (streaming.md §1): claims of the servers whose stream should run (their
//! renewal and release are the onboarding lease's, `Lease::Stream`), the holder's progress, and
//! what the spread across replicas is computed from.

use std::time::Duration;

use diesel::{
    prelude::*,
    sql_types::{Int8, Interval, Jsonb, Nullable, Text, Uuid as SqlUuid},
};
use diesel_async::RunQueryDsl;
use uuid::Uuid;

use super::{Claim, Fence, Store, StoreError, interval, jsonb::Json};
use crate::domain::{ServerId, StreamState, stream::StreamProgress};

/// Which servers want a stream: onboarded, not in error or decommissioned, and a stream state
/// that asks for a reader.
pub(super) const STREAMABLE: &str = "status IN ('active', 'disconnected') \
     AND stream_state IN ('starting', 'running', 'stalled', 'disconnected')";

/// The columns of `claims`, as arrays.
pub(super) fn fences(claims: &[Claim]) -> (Vec<Uuid>, Vec<Uuid>, Vec<i64>) {
    let ids = claims.iter().map(|claim| claim.server_id.uuid()).collect();
    let owners = claims.iter().map(|claim| claim.fence.owner).collect();
    let epochs = claims.iter().map(|claim| claim.fence.epoch).collect();
    (ids, owners, epochs)
}

#[derive(QueryableByName)]
struct ClaimedRow {
    #[diesel(sql_type = SqlUuid)]
    id: Uuid,
    #[diesel(sql_type = Int8)]
    stream_epoch: i64,
}

/// How the streams are spread: what the fair share of a replica is computed from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamSpread {
    /// Servers that want a stream.
    pub streams: i64,
    /// Agents whose replica beat within the liveness window (this one included).
    pub live_agents: i64,
}

/// Every stream's state, counted, and the age of the oldest checkpoint of a running stream:
/// what the stream metrics show (no per-server series).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StreamCensus {
    pub by_state: Vec<(StreamState, i64)>,
    pub oldest_checkpoint_seconds: f64,
}

impl StreamSpread {
    /// The most streams one replica should hold: ceil(N / R) + 1.
    pub fn fair_share(&self) -> i64 {
        let agents = self.live_agents.max(1);
        (self.streams + agents - 1) / agents + 1
    }
}

impl Store {
    /// Claims up to `limit` streams whose lease is free or expired (or one given server),
    /// bumping each one's epoch, and makes this replica's agent their assigned agent. SSH-tunnel
    /// servers are claimed only by agents with the outbound IP the customer allowed.
    pub async fn claim_streams(
        &self,
        owner: Uuid,
        agent_id: Uuid,
        outbound_ip: &str,
        ttl: Duration,
        limit: i64,
        only: Option<ServerId>,
    ) -> Result<Vec<Claim>, StoreError> {
        let mut connection = self.connection().await?;
        let rows: Vec<ClaimedRow> = diesel::sql_query(format!(
            "UPDATE servers SET stream_owner = $1, stream_expires_at = now() + $2::interval, \
                 stream_epoch = stream_epoch + 1, agent_id = $5, agent_outbound_ip = $6 \
             WHERE id IN (SELECT id FROM servers \
                 WHERE {STREAMABLE} \
                   AND (stream_owner IS NULL OR stream_expires_at < now()) \
                   AND (connection_method <> 'ssh_tunnel' OR agent_outbound_ip = $6) \
                   AND ($4::uuid IS NULL OR id = $4) \
                 ORDER BY stream_expires_at NULLS FIRST LIMIT $3 FOR UPDATE SKIP LOCKED) \
             RETURNING id, stream_epoch"
        ))
        .bind::<SqlUuid, _>(owner)
        .bind::<Interval, _>(interval(ttl))
        .bind::<Int8, _>(limit)
        .bind::<Nullable<SqlUuid>, _>(only.map(|id| id.uuid()))
        .bind::<SqlUuid, _>(agent_id)
        .bind::<Text, _>(outbound_ip)
        .load(&mut connection)
        .await?;
        Ok(rows
            .into_iter()
            .map(|row| Claim {
                server_id: ServerId::from_uuid(row.id),
                fence: Fence {
                    owner,
                    epoch: row.stream_epoch,
                },
            })
            .collect())
    }

    /// Writes the latest progress of many streams (not revisions) in one statement, each fenced
    /// by its lease, locking rows in id order; the servers written. One missing from the answer
    /// lost its lease.
    pub async fn record_streams_progress(
        &self,
        entries: &[(Claim, &StreamProgress)],
    ) -> Result<Vec<ServerId>, StoreError> {
        #[derive(QueryableByName)]
        struct Written {
            #[diesel(sql_type = SqlUuid)]
            id: Uuid,
        }
        #[derive(Debug, serde::Serialize)]
        struct Entry<'a> {
            id: Uuid,
            owner: Uuid,
            epoch: i64,
            progress: &'a StreamProgress,
        }
        let entries: Vec<Entry> = entries
            .iter()
            .map(|(claim, progress)| Entry {
                id: claim.server_id.uuid(),
                owner: claim.fence.owner,
                epoch: claim.fence.epoch,
                progress,
            })
            .collect();
        let mut connection = self.connection().await?;
        let rows: Vec<Written> = diesel::sql_query(
            "WITH held AS (SELECT * FROM jsonb_to_recordset($1) \
                 AS held(id uuid, owner uuid, epoch int8, progress jsonb)), \
             locked AS (SELECT servers.id, held.progress FROM servers JOIN held \
                 ON servers.id = held.id AND stream_owner = held.owner \
                 AND stream_epoch = held.epoch ORDER BY servers.id FOR UPDATE OF servers) \
             UPDATE servers SET stream_progress = locked.progress FROM locked \
             WHERE servers.id = locked.id RETURNING servers.id",
        )
        .bind::<Jsonb, _>(Json(entries))
        .load(&mut connection)
        .await?;
        Ok(rows
            .into_iter()
            .map(|row| ServerId::from_uuid(row.id))
            .collect())
    }

    /// Marks `agent_id` alive now.
    pub async fn beat(&self, agent_id: Uuid) -> Result<(), StoreError> {
        let mut connection = self.connection().await?;
        diesel::sql_query("UPDATE agents SET heartbeat_at = now() WHERE id = $1")
            .bind::<SqlUuid, _>(agent_id)
            .execute(&mut connection)
            .await?;
        Ok(())
    }

    /// How streams are spread: agents alive within `window`, and the servers that want a stream.
    pub async fn stream_spread(&self, window: Duration) -> Result<StreamSpread, StoreError> {
        #[derive(QueryableByName)]
        struct SpreadRow {
            #[diesel(sql_type = Int8)]
            streams: i64,
            #[diesel(sql_type = Int8)]
            live_agents: i64,
        }
        let mut connection = self.connection().await?;
        let row: SpreadRow = diesel::sql_query(format!(
            "SELECT (SELECT count(*) FROM servers WHERE {STREAMABLE}) AS streams, \
                    (SELECT count(*) FROM agents WHERE heartbeat_at > now() - $1::interval) \
                        AS live_agents"
        ))
        .bind::<Interval, _>(interval(window))
        .get_result(&mut connection)
        .await?;
        Ok(StreamSpread {
            streams: row.streams,
            live_agents: row.live_agents,
        })
    }
}

impl Store {
    /// Counts the streams by state and finds the oldest checkpoint among running ones.
    pub async fn stream_census(&self) -> Result<StreamCensus, StoreError> {
        #[derive(QueryableByName)]
        struct StateRow {
            #[diesel(sql_type = Text)]
            state: String,
            #[diesel(sql_type = Int8)]
            streams: i64,
            #[diesel(sql_type = diesel::sql_types::Double)]
            oldest: f64,
        }
        let mut connection = self.connection().await?;
        let rows: Vec<StateRow> = diesel::sql_query(
            "SELECT stream_state AS state, count(*) AS streams, \
                 COALESCE(max(EXTRACT(EPOCH FROM now() - \
                     (stream_progress->>'last_checkpoint_at')::timestamptz)), 0)::float8 AS oldest \
             FROM servers WHERE stream_state IS NOT NULL GROUP BY stream_state",
        )
        .load(&mut connection)
        .await?;
        let mut census = StreamCensus::default();
        for row in rows {
            let Some(state) = StreamState::parse(&row.state) else {
                continue;
            };
            if state == StreamState::Running {
                census.oldest_checkpoint_seconds = row.oldest;
            }
            census.by_state.push((state, row.streams));
        }
        Ok(census)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fair_share_is_ceil_plus_one() {
        let spread = |streams, live_agents| StreamSpread {
            streams,
            live_agents,
        };
        assert_eq!(spread(40, 2).fair_share(), 21);
        assert_eq!(spread(41, 2).fair_share(), 22);
        assert_eq!(spread(0, 3).fair_share(), 1);
        assert_eq!(spread(5, 0).fair_share(), 6);
    }
}

#[derive(QueryableByName)]
struct ReplicationId {
    #[diesel(sql_type = Int8)]
    replication_server_id: i64,
}

impl Store {
    /// The server's replication server id, allocated once from a sequence.
    pub async fn replication_server_id(&self, server_id: ServerId) -> Result<i64, StoreError> {
        let mut connection = self.connection().await?;
        let row: ReplicationId = diesel::sql_query(
            "UPDATE servers SET replication_server_id = \
                 COALESCE(replication_server_id, nextval('replication_server_ids')) \
             WHERE id = $1 RETURNING replication_server_id",
        )
        .bind::<SqlUuid, _>(server_id.uuid())
        .get_result(&mut connection)
        .await?;
        Ok(row.replication_server_id)
    }
}
