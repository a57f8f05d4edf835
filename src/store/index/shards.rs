//! The index split: the change index may be several PostgreSQL databases (shards, one per
//! `--index-database-url`). Each knows its own id (`index_identity`). A server's events live in
//! one shard, chosen the first time the server needs the index (its stream's start, at
//! onboarding: the shard where its checkpoint already is, else the one with the fewest live
//! servers, so a new URL takes the new servers) and recorded on its row (`servers.index_shard`),
//! so every replica, a restart and a reordered URL list find them again.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use diesel::{prelude::*, sql_types};
use diesel_async::RunQueryDsl;
use uuid::Uuid;

use super::ChangeIndex;
use crate::{
    domain::{ServerId, ServerStatus},
    store::{Store, StoreError, schema::servers},
};

/// A server's shard, once known, is remembered up to this many servers (then forgotten and
/// looked up again): the memory a fleet can make a replica hold is bounded.
const REMEMBERED_SERVERS: usize = 100_000;

/// Every shard of the change index, and where each server's events are.
#[derive(Clone)]
pub struct IndexShards {
    shards: Arc<[Shard]>,
    /// The control plane's database, where each server's shard is recorded.
    control: Store,
    /// Servers whose shard is known: the position of that shard in `shards`.
    known: Arc<Mutex<HashMap<ServerId, usize>>>,
}

/// One database of the change index.
#[derive(Clone)]
struct Shard {
    id: Uuid,
    index: ChangeIndex,
}

/// The one id a statement returns.
#[derive(QueryableByName)]
struct Identity {
    #[diesel(sql_type = sql_types::Uuid)]
    id: Uuid,
}

impl IndexShards {
    /// The shards, each migrated already, and their ids read; two URLs of one database (the
    /// same id) are refused, as its servers' events would be counted twice.
    pub async fn open(indexes: Vec<ChangeIndex>, control: Store) -> Result<IndexShards, String> {
        let mut shards: Vec<Shard> = Vec::with_capacity(indexes.len());
        for index in indexes {
            let id = index.identity().await.map_err(|error| error.to_string())?;
            if shards.iter().any(|shard| shard.id == id) {
                return Err(format!(
                    "two --index-database-url values name the same index database (id {id}); \
                     list each database once"
                ));
            }
            shards.push(Shard { id, index });
        }
        if shards.is_empty() {
            return Err("no change index database is configured".into());
        }
        Ok(IndexShards {
            shards: shards.into(),
            control,
            known: Arc::default(),
        })
    }

    /// Every shard, for the jobs that look after each (partitions, archive).
    pub fn all(&self) -> impl Iterator<Item = &ChangeIndex> {
        self.shards.iter().map(|shard| &shard.index)
    }

    /// The shard that holds `server`'s events, chosen and recorded now if none is yet.
    /// Refused with `IndexShardMissing` when the recorded shard is not among this replica's.
    pub async fn for_server(&self, server: ServerId) -> Result<ChangeIndex, StoreError> {
        if let Some(position) = self.remembered(server) {
            return Ok(self.shards[position].index.clone());
        }
        let id = match self.recorded(server).await? {
            (Some(id), _) => id,
            (None, streamed) => self.choose(server, streamed).await?,
        };
        let position = self
            .shards
            .iter()
            .position(|shard| shard.id == id)
            .ok_or_else(|| {
                StoreError::IndexShardMissing(format!(
                    "the change index shard {id} that holds this server's events is not among \
                     this replica's --index-database-url"
                ))
            })?;
        self.remember(server, position);
        Ok(self.shards[position].index.clone())
    }

    fn remembered(&self, server: ServerId) -> Option<usize> {
        let known = self
            .known
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        known.get(&server).copied()
    }

    fn remember(&self, server: ServerId, position: usize) {
        let mut known = self
            .known
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if known.len() >= REMEMBERED_SERVERS {
            known.clear();
        }
        known.insert(server, position);
    }

    /// The shard recorded on the server's row, and whether the server has streamed;
    /// `NotFound` when there is no such server.
    async fn recorded(&self, server: ServerId) -> Result<(Option<Uuid>, bool), StoreError> {
        let mut connection = self.control.connection().await?;
        Ok(servers::table
            .find(server.uuid())
            .select((servers::index_shard, servers::stream_state.is_not_null()))
            .first(&mut connection)
            .await?)
    }

    /// Chooses the server's shard and records it; a choice another replica recorded first
    /// wins. The shard that already holds the server's checkpoint (its events from before
    /// shards were recorded) is kept; a server that `streamed` with none of this replica's
    /// holding it is refused (its events are elsewhere); a new one gets the shard with the
    /// fewest live servers.
    async fn choose(&self, server: ServerId, streamed: bool) -> Result<Uuid, StoreError> {
        let mut holding = None;
        for shard in self.shards.iter() {
            if shard.index.stream_checkpoint(server).await?.is_some() {
                holding = Some(shard.id);
                break;
            }
        }
        let chosen = match holding {
            Some(id) => id,
            None if streamed => {
                return Err(StoreError::IndexShardMissing(
                    "no database of this replica's --index-database-url holds this server's \
                     stream checkpoint: its events are in another"
                        .into(),
                ));
            }
            None => self.least_loaded().await?,
        };
        let mut connection = self.control.connection().await?;
        let set: Option<Uuid> = diesel::update(servers::table.find(server.uuid()))
            .filter(servers::index_shard.is_null())
            .set(servers::index_shard.eq(chosen))
            .returning(servers::index_shard)
            .get_result::<Option<Uuid>>(&mut connection)
            .await
            .optional()?
            .flatten();
        if set.is_some() {
            tracing::info!(server_id = %server, shard = %chosen, "chose the server's change index shard");
            return Ok(chosen);
        }
        drop(connection);
        self.recorded(server).await?.0.ok_or(StoreError::NotFound)
    }

    /// The shard with the fewest live servers (the first of them on a tie).
    async fn least_loaded(&self) -> Result<Uuid, StoreError> {
        let ids: Vec<Uuid> = self.shards.iter().map(|shard| shard.id).collect();
        if let [only] = ids.as_slice() {
            return Ok(*only);
        }
        let mut connection = self.control.connection().await?;
        let counts: Vec<(Option<Uuid>, i64)> = servers::table
            .filter(servers::index_shard.eq_any(&ids))
            .filter(servers::status.ne(ServerStatus::Decommissioned.as_str()))
            .group_by(servers::index_shard)
            .select((servers::index_shard, diesel::dsl::count_star()))
            .load(&mut connection)
            .await?;
        let load = |id: &Uuid| {
            counts
                .iter()
                .find(|(shard, _)| shard.as_ref() == Some(id))
                .map_or(0, |(_, count)| *count)
        };
        ids.iter()
            .min_by_key(|id| load(id))
            .copied()
            .ok_or_else(|| StoreError::Corrupt("the change index has no shard".into()))
    }
}

impl ChangeIndex {
    /// This database's id as a shard of the index.
    async fn identity(&self) -> Result<Uuid, StoreError> {
        let mut connection = self.connection().await?;
        let identity: Identity = diesel::sql_query("SELECT id FROM index_identity")
            .get_result(&mut connection)
            .await?;
        Ok(identity.id)
    }
}
