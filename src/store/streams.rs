//! Stream leases in SQL (streaming.md §1): claims of the servers whose stream should run (their
//! renewal and release are the onboarding lease's, `Lease::Stream`), the holder's progress, and
//! what the spread across replicas is computed from.

use std::time::Duration;

use diesel::{
    prelude::*,
    sql_types::{Int8, Jsonb, Nullable, Text, Uuid as SqlUuid},
};
use diesel_async::RunQueryDsl;
use uuid::Uuid;

use super::{Claim, Fence, Store, StoreError, interval, jsonb::Json};
use crate::domain::{ServerId, StreamState, stream::StreamProgress};

/// Which servers want a stream: onboarded, not in error or decommissioned, and a stream state
/// that asks for a reader.
pub(super) const STREAMABLE: &str = "status IN ('active', 'disconnected') \
     AND stream_state IN ('starting', 'running', 'stalled', 'disconnected')";

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
        .bind::<Text, _>(interval(ttl))
        .bind::<Int8, _>(limit)
        .bind::<Nullable<SqlUuid>, _>(only.map(|id| id.0))
        .bind::<SqlUuid, _>(agent_id)
        .bind::<Text, _>(outbound_ip)
        .load(&mut connection)
        .await?;
        Ok(rows
            .into_iter()
            .map(|row| Claim {
                server_id: ServerId(row.id),
                fence: Fence {
                    owner,
                    epoch: row.stream_epoch,
                },
            })
            .collect())
    }

    /// The holder's latest progress (not a revision), fenced by its lease.
    pub async fn record_stream_progress(
        &self,
        claim: Claim,
        progress: &StreamProgress,
    ) -> Result<(), StoreError> {
        let mut connection = self.connection().await?;
        let updated = diesel::sql_query(
            "UPDATE servers SET stream_progress = $4 \
             WHERE id = $1 AND stream_owner = $2 AND stream_epoch = $3",
        )
        .bind::<SqlUuid, _>(claim.server_id.0)
        .bind::<SqlUuid, _>(claim.fence.owner)
        .bind::<Int8, _>(claim.fence.epoch)
        .bind::<Jsonb, _>(Json(progress.clone()))
        .execute(&mut connection)
        .await?;
        if updated == 1 {
            Ok(())
        } else {
            Err(StoreError::Fenced)
        }
    }

    /// Marks this replica's agent alive, and reads how streams are spread: agents alive within
    /// `window`, and the servers that want a stream.
    pub async fn stream_spread(
        &self,
        agent_id: Uuid,
        window: Duration,
    ) -> Result<StreamSpread, StoreError> {
        #[derive(QueryableByName)]
        struct SpreadRow {
            #[diesel(sql_type = Int8)]
            streams: i64,
            #[diesel(sql_type = Int8)]
            live_agents: i64,
        }
        let mut connection = self.connection().await?;
        diesel::sql_query("UPDATE agents SET heartbeat_at = now() WHERE id = $1")
            .bind::<SqlUuid, _>(agent_id)
            .execute(&mut connection)
            .await?;
        let row: SpreadRow = diesel::sql_query(format!(
            "SELECT (SELECT count(*) FROM servers WHERE {STREAMABLE}) AS streams, \
                    (SELECT count(*) FROM agents WHERE heartbeat_at > now() - $1::interval) \
                        AS live_agents"
        ))
        .bind::<Text, _>(interval(window))
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
