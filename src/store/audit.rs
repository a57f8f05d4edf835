//! The audit log (`audit_events`, migration 000012): append-only, month partitions made ahead
//! and dropped whole past the retention, and ListAuditEvents' keyset pages.
//!
//! **Recording a change:** call [`record`] with the connection of the change's own transaction,
//! so the record commits with the change or not at all:
//!
//! ```ignore
//! connection.transaction(async move |connection| {
//!     // ... the change ...
//!     store::audit::record(connection, &AuditEvent::new(actor, server_id, changes, Outcome::ok())).await
//! })
//! ```
//!
//! The server calls do so through `servers::changes` (the change's fields from the server
//! before and after); a refused call is recorded on its own by [`Store::record_audit_event`].
//! Nothing here updates or deletes a record, and the database's trigger refuses it anyway: a
//! record leaves only with its whole partition, by [`Store::maintain_audit_log`].

use chrono::{DateTime, Datelike, Months, NaiveDate, Utc};
use diesel::{
    dsl::sql,
    pg::Pg,
    prelude::*,
    query_builder::{AstPass, QueryFragment, QueryId},
    sql_types::{self, Bool, Date, Text, Timestamptz},
};
use diesel_async::{AsyncConnection, RunQueryDsl};
use uuid::Uuid;

use super::{
    Connection, Store, StoreError,
    pages::{PageBound, collect_page},
    prepared::OncePrepared,
    schema::audit_events,
};
use crate::domain::{
    ServerId, TenantId,
    audit::{Actor, AuditCondition, AuditEvent, AuditFilter, FieldChange, Outcome, server_changes},
    comparisons::Comparison,
    server::Server,
};

/// Months of partitions kept ready ahead of the current one.
const MONTHS_AHEAD: u32 = 2;

/// `INSERT INTO audit_events ...` of one record: the same text on every call, so each pooled
/// connection prepares it once.
struct InsertEvent<'a> {
    event: &'a AuditEvent,
    tenant_id: Uuid,
    server_id: Option<Uuid>,
    /// The changes as JSON text, cast to jsonb by the statement (serialized once).
    changes: String,
    client_address: Option<String>,
}

impl QueryId for InsertEvent<'_> {
    type QueryId = InsertEvent<'static>;
    const HAS_STATIC_QUERY_ID: bool = true;
}

impl QueryFragment<Pg> for InsertEvent<'_> {
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, Pg>) -> QueryResult<()> {
        let event = self.event;
        let actor = &event.actor;
        out.push_sql(
            "INSERT INTO audit_events (time, id, tenant_id, key_id, key_name, request_id, method, \
             server_id, resource, changes, outcome, reason, client_address) VALUES (",
        );
        out.push_bind_param::<Timestamptz, _>(&event.time)?;
        out.push_sql(", ");
        out.push_bind_param::<sql_types::Uuid, _>(&event.id)?;
        out.push_sql(", ");
        out.push_bind_param::<sql_types::Uuid, _>(&self.tenant_id)?;
        out.push_sql(", ");
        out.push_bind_param::<sql_types::Nullable<sql_types::Uuid>, _>(&actor.key_id)?;
        out.push_sql(", ");
        out.push_bind_param::<Text, _>(&actor.key_name)?;
        out.push_sql(", ");
        out.push_bind_param::<Text, _>(&actor.request_id)?;
        out.push_sql(", ");
        out.push_bind_param::<Text, _>(&actor.method)?;
        out.push_sql(", ");
        out.push_bind_param::<sql_types::Nullable<sql_types::Uuid>, _>(&self.server_id)?;
        out.push_sql(", ");
        out.push_bind_param::<Text, _>(&event.resource)?;
        out.push_sql(", ");
        out.push_bind_param::<Text, _>(&self.changes)?;
        out.push_sql("::jsonb, ");
        out.push_bind_param::<Text, _>(&event.outcome.code)?;
        out.push_sql(", ");
        out.push_bind_param::<Text, _>(&event.outcome.reason)?;
        out.push_sql(", ");
        out.push_bind_param::<sql_types::Nullable<Text>, _>(&self.client_address)?;
        out.push_sql(")");
        Ok(())
    }
}

/// An address as its `Display` writes it; an IPv4 one digit by digit (`core::fmt` took about
/// 1.3k instructions of each audited call for it).
fn address_text(address: std::net::IpAddr) -> String {
    let std::net::IpAddr::V4(v4) = address else {
        return address.to_string();
    };
    let mut text = String::with_capacity(15);
    for (index, octet) in v4.octets().into_iter().enumerate() {
        if index > 0 {
            text.push('.');
        }
        if octet >= 100 {
            text.push(char::from(b'0' + octet / 100));
        }
        if octet >= 10 {
            text.push(char::from(b'0' + octet / 10 % 10));
        }
        text.push(char::from(b'0' + octet % 10));
    }
    text
}

/// Appends `event` to the audit log inside the caller's transaction: the one way a record is
/// written. A month without its partition (none is made this far ahead) fails the transaction.
pub async fn record(connection: &mut Connection, event: &AuditEvent) -> Result<(), StoreError> {
    let changes = serde_json::to_string(&event.changes)
        .map_err(|error| StoreError::Corrupt(format!("audit changes: {error}")))?;
    InsertEvent {
        event,
        tenant_id: event.actor.tenant_id.uuid(),
        server_id: event.server_id.map(ServerId::uuid),
        changes,
        client_address: event.actor.client_address.map(address_text),
    }
    .execute(connection)
    .await?;
    metrics::counter!("dbtrail_audit_events_total").increment(1);
    Ok(())
}

/// A stored record as it is read.
#[derive(Queryable, Selectable)]
#[diesel(table_name = audit_events, check_for_backend(diesel::pg::Pg))]
struct EventRow {
    time: DateTime<Utc>,
    id: Uuid,
    tenant_id: Uuid,
    key_id: Option<Uuid>,
    key_name: String,
    request_id: String,
    method: String,
    server_id: Option<Uuid>,
    resource: String,
    changes: serde_json::Value,
    outcome: String,
    reason: String,
    client_address: Option<String>,
}

impl TryFrom<EventRow> for AuditEvent {
    type Error = StoreError;

    fn try_from(row: EventRow) -> Result<AuditEvent, StoreError> {
        let changes: Vec<FieldChange> = serde_json::from_value(row.changes)
            .map_err(|error| StoreError::Corrupt(format!("audit event {}: {error}", row.id)))?;
        Ok(AuditEvent {
            id: row.id,
            time: row.time,
            actor: Actor {
                tenant_id: TenantId::from_uuid(row.tenant_id),
                key_id: row.key_id,
                key_name: row.key_name,
                request_id: row.request_id,
                method: row.method,
                client_address: row.client_address.and_then(|text| text.parse().ok()),
            },
            server_id: row.server_id.map(ServerId::from_uuid),
            resource: row.resource,
            changes,
            outcome: Outcome {
                code: row.outcome,
                reason: row.reason,
            },
        })
    }
}

/// Where a page of ListAuditEvents starts: after this (time, id), newest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuditCursor {
    pub time: DateTime<Utc>,
    pub id: Uuid,
}

type BoxedCondition = Box<dyn BoxableExpression<audit_events::table, Pg, SqlType = Bool>>;

/// One comparison of the filter in SQL. `!=` of a key or server is IS DISTINCT FROM, so that a
/// record without one (the command line's, a refused call's) is not equal to any.
fn condition(condition: &AuditCondition) -> BoxedCondition {
    match condition.clone() {
        AuditCondition::Time(comparison, time) => {
            let column = audit_events::time;
            match comparison {
                Comparison::Equals => Box::new(column.eq(time)),
                Comparison::NotEquals => Box::new(column.ne(time)),
                Comparison::Less => Box::new(column.lt(time)),
                Comparison::LessOrEqual => Box::new(column.le(time)),
                Comparison::Greater => Box::new(column.gt(time)),
                Comparison::GreaterOrEqual => Box::new(column.ge(time)),
            }
        }
        AuditCondition::Method {
            equals: true,
            value,
        } => Box::new(audit_events::method.eq(value)),
        AuditCondition::Method { value, .. } => Box::new(audit_events::method.ne(value)),
        AuditCondition::Outcome {
            equals: true,
            value,
        } => Box::new(audit_events::outcome.eq(value)),
        AuditCondition::Outcome { value, .. } => Box::new(audit_events::outcome.ne(value)),
        AuditCondition::KeyId {
            equals: true,
            value,
        } => Box::new(audit_events::key_id.eq(value).assume_not_null()),
        AuditCondition::KeyId { value, .. } => {
            Box::new(audit_events::key_id.is_distinct_from(value))
        }
        AuditCondition::ServerId {
            equals: true,
            value,
        } => Box::new(audit_events::server_id.eq(value).assume_not_null()),
        AuditCondition::ServerId { value, .. } => {
            Box::new(audit_events::server_id.is_distinct_from(value))
        }
    }
}

/// The month partition a name stands for (`audit_events_YYYYMM`), by its first day.
fn partition_month(name: &str) -> Option<NaiveDate> {
    let digits = name.strip_prefix("audit_events_")?;
    if digits.len() != 6 || !digits.bytes().all(|byte| byte.is_ascii_digit()) {
        return None;
    }
    NaiveDate::from_ymd_opt(digits[..4].parse().ok()?, digits[4..].parse().ok()?, 1)
}

/// The first day of the month of `time`.
fn month_of(time: DateTime<Utc>) -> NaiveDate {
    time.date_naive()
        .with_day(1)
        .unwrap_or_else(|| time.date_naive())
}

/// The partitions of audit_events, oldest first.
async fn partitions(connection: &mut Connection) -> Result<Vec<String>, StoreError> {
    Ok(diesel::dsl::sql::<Text>(
        "SELECT c.relname::text FROM pg_inherits i \
         JOIN pg_class c ON c.oid = i.inhrelid JOIN pg_class p ON p.oid = i.inhparent \
         WHERE p.relname = 'audit_events' AND c.relnamespace = p.relnamespace ORDER BY 1",
    )
    .load(connection)
    .await?)
}

/// Makes the partitions of the months from `first` through `last`, under the lock that
/// serialises every replica's partition work.
async fn create_partitions(
    connection: &mut Connection,
    first: NaiveDate,
    last: NaiveDate,
) -> Result<(), StoreError> {
    diesel::sql_query("SELECT pg_advisory_xact_lock(hashtext('dbtrail_audit_events'))")
        .execute(connection)
        .await?;
    let mut month = first;
    while month <= last {
        diesel::sql_query("SELECT audit_events_partition($1)")
            .bind::<Date, _>(month)
            .execute(connection)
            .await?;
        month = month + Months::new(1);
    }
    Ok(())
}

/// Records a tenant's successful call that changed (or left as it was) `after`: the fields
/// that moved since `before` (none for a registration), then `more` (what the call changed
/// beside the server row, e.g. a stream's checkpoint).
pub(super) async fn record_server_change(
    connection: &mut Connection,
    actor: &Actor,
    before: Option<&Server>,
    after: &Server,
    more: Vec<FieldChange>,
) -> Result<(), StoreError> {
    let mut changes = server_changes(before, after);
    changes.extend(more);
    let event = AuditEvent::new(actor.clone(), Some(after.id), changes, Outcome::ok());
    record(connection, &event).await
}

impl Store {
    /// Appends a record outside any change: see [`record`].
    pub async fn record_audit_event(&self, event: &AuditEvent) -> Result<(), StoreError> {
        let mut connection = self.connection().await?;
        record(&mut connection, event).await
    }

    /// Appends a refused call's record. The refusal is the call's answer whatever happens here:
    /// a record that cannot be written is logged with its call and counted
    /// (`dbtrail_audit_write_failures_total`).
    pub async fn record_refusal(&self, event: &AuditEvent) {
        if let Err(error) = self.record_audit_event(event).await {
            metrics::counter!("dbtrail_audit_write_failures_total").increment(1);
            tracing::warn!(%error, method = %event.actor.method, outcome = %event.outcome.code,
                "the audit record of a refused call could not be written");
        }
    }

    /// A page of the tenant's records matching `filter`, newest first, after `cursor`, within
    /// `bound`; and whether more follow.
    pub async fn list_audit_events(
        &self,
        tenant: TenantId,
        filter: &AuditFilter,
        cursor: Option<AuditCursor>,
        bound: &PageBound<AuditEvent>,
    ) -> Result<(Vec<AuditEvent>, bool), StoreError> {
        let mut query = audit_events::table
            .filter(audit_events::tenant_id.eq(tenant.uuid()))
            .select(EventRow::as_select())
            .order((audit_events::time.desc(), audit_events::id.desc()))
            .limit(bound.rows as i64 + 1)
            .into_boxed();
        for each in &filter.conditions {
            // The filter is the client's choice: its statement is not kept prepared.
            query = query.filter(OncePrepared(condition(each)));
        }
        if let Some(cursor) = cursor {
            query = query.filter(
                sql::<Bool>("(audit_events.time, audit_events.id) < (")
                    .bind::<Timestamptz, _>(cursor.time)
                    .sql(", ")
                    .bind::<sql_types::Uuid, _>(cursor.id)
                    .sql(")"),
            );
        }
        let mut connection = self.connection().await?;
        let rows = query.load_stream::<EventRow>(&mut connection).await?;
        collect_page(rows, bound, AuditEvent::try_from).await
    }

    /// Makes the partitions of this month and [`MONTHS_AHEAD`] after it: what a writer needs
    /// ready (at a replica's start, and before each of the command line's changes).
    pub async fn prepare_audit_log(&self) -> Result<(), StoreError> {
        let now = Utc::now();
        let ahead = now
            .checked_add_months(Months::new(MONTHS_AHEAD))
            .unwrap_or(now);
        self.prepare_audit_partitions(now, ahead).await
    }

    /// Makes the month partitions from the month of `from` through the month of `to` (an old
    /// month's, to import or test with).
    pub async fn prepare_audit_partitions(
        &self,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let mut connection = self.connection().await?;
        connection
            .transaction(async move |connection| {
                create_partitions(connection, month_of(from), month_of(to)).await
            })
            .await
    }

    /// The housekeeping job: makes the partitions from last month to [`MONTHS_AHEAD`] ahead,
    /// and drops each partition whose month ended `retention` ago or earlier (a whole month at a
    /// time: a record is kept at least `retention`). Returns the dropped partitions' names.
    pub async fn maintain_audit_log(
        &self,
        retention: std::time::Duration,
    ) -> Result<Vec<String>, StoreError> {
        let now = Utc::now();
        let this_month = month_of(now);
        let cutoff = now - retention;
        let mut connection = self.connection().await?;
        connection
            .transaction(async move |connection| -> Result<_, StoreError> {
                let first = this_month - Months::new(1);
                create_partitions(connection, first, this_month + Months::new(MONTHS_AHEAD))
                    .await?;
                let mut dropped = Vec::new();
                for name in partitions(connection).await? {
                    let ended = partition_month(&name)
                        .map(|month| month + Months::new(1))
                        .and_then(|end| end.and_hms_opt(0, 0, 0))
                        .is_some_and(|end| end.and_utc() <= cutoff);
                    if ended {
                        // The name came from the catalogue and matched audit_events_YYYYMM.
                        diesel::sql_query(format!("DROP TABLE IF EXISTS {name}"))
                            .execute(connection)
                            .await?;
                        dropped.push(name);
                    }
                }
                Ok(dropped)
            })
            .await
    }

    /// The month partitions of the audit log, oldest first (for tests and operators).
    pub async fn audit_partitions(&self) -> Result<Vec<String>, StoreError> {
        let mut connection = self.connection().await?;
        partitions(&mut connection).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partition_names_are_months() {
        assert_eq!(
            partition_month("audit_events_202612"),
            NaiveDate::from_ymd_opt(2026, 12, 1)
        );
        assert_eq!(partition_month("audit_events_202613"), None);
        assert_eq!(partition_month("audit_events_default"), None);
        assert_eq!(partition_month("audit_events_2026120"), None);
        let time = DateTime::parse_from_rfc3339("2026-02-28T23:59:59Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(month_of(time), NaiveDate::from_ymd_opt(2026, 2, 1).unwrap());
    }

    #[test]
    fn addresses_are_written_as_display_writes_them() {
        for text in [
            "0.0.0.0",
            "127.0.0.1",
            "10.20.100.255",
            "9.99.199.250",
            "::1",
            "fe80::2",
        ] {
            let address: std::net::IpAddr = text.parse().unwrap();
            assert_eq!(address_text(address), address.to_string());
        }
    }
}
