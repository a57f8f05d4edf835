//! Server rows: registration (limit, name uniqueness, idempotency), reads, keyset listing with
//! filters, and the locked read-modify-write that records each onboarding revision with its
//! history row and NOTIFY, and a tenant's change with its audit record, in one transaction.
//!
//! This file owns the public types callers pass in (who changes a server, request ids, page
//! cursors and pages) and the two helpers every part shares: loading a server and recording a
//! revision. `registration` registers servers; `idempotency` records request ids and replays
//! their first results; `listing` reads and lists; `changes` is the locked read-modify-write;
//! `history` keeps and compacts the onboarding history; `fleet` the tenant-wide revision and
//! history of WatchServers.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use uuid::Uuid;

use super::{
    Connection, Fence, ONBOARDING_CHANNEL, StoreError, by_id::ServerById, prepared::notify,
    rows::ServerRow, schema::onboarding_history,
};
use crate::domain::{TenantId, server::Server};

mod changes;
mod fleet;
mod history;
mod idempotency;
mod listing;
mod registration;

pub(super) use changes::{Changing, modify_locked};

/// Who is changing a server: an API call of a tenant, the onboarding runner holding its lease,
/// or the replica holding its stream lease.
#[derive(Debug, Clone, Copy)]
pub enum Scope {
    Tenant(TenantId),
    Runner(Fence),
    Stream(Fence),
}

/// A client's request id, with a digest of the request it came with.
#[derive(Debug, Clone)]
pub struct IdempotencyKey {
    pub request_id: String,
    pub method: &'static str,
    pub request_hash: Vec<u8>,
}

/// Where a page of ListServers starts: after this (created_at, id).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageCursor {
    pub created_at: DateTime<Utc>,
    pub id: Uuid,
}

/// One page of servers and whether more follow.
#[derive(Debug)]
pub struct ListPage {
    pub servers: Vec<Server>,
    pub more: bool,
}

/// Records a revision: its history row and its NOTIFY, inside the caller's transaction.
async fn record_revision(connection: &mut Connection, server: &Server) -> Result<(), StoreError> {
    let status = server.onboarding_status();
    let json = serde_json::to_value(&status)
        .map_err(|error| StoreError::Corrupt(format!("onboarding status: {error}")))?;
    diesel::insert_into(onboarding_history::table)
        .values((
            onboarding_history::server_id.eq(server.id.uuid()),
            onboarding_history::revision.eq(server.revision),
            onboarding_history::status.eq(json),
        ))
        .execute(connection)
        .await?;
    notify(
        connection,
        ONBOARDING_CHANNEL,
        format!("{}:{}", server.id, server.revision),
    )
    .await
}

async fn load_server(connection: &mut Connection, id: Uuid) -> Result<Server, StoreError> {
    ServerById(id)
        .get_result::<ServerRow>(connection)
        .await
        .optional()?
        .ok_or(StoreError::NotFound)?
        .try_into()
}
