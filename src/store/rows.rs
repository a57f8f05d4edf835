//! The servers row and its conversion to and from the domain's Server.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use serde::Deserialize;
use uuid::Uuid;

use super::{StoreError, jsonb::Json, packed_steps::StoredSteps, schema::servers};
use crate::domain::{
    ConnectionMethod, ServerId, ServerStatus, SslMode, StreamState, TenantId,
    fields::{
        Host, HostKeyFingerprint, Identifier, Labels, Port, QualifiedTable, ServerName, UserName,
        texts,
    },
    onboarding::Steps,
    server::{Sealed, Server, ServerSpec, SshTunnel, StoredSecrets, StreamOptions},
    stream::{StreamHealth, StreamProgress},
};

/// Every column of a server that the domain sees (the lease columns are the engine's). Read from
/// JSON too: a WatchServers history row (migration 000011's `server_snapshot`), where a secret's
/// ciphertext is only whether there is one.
#[derive(Debug, Clone, Queryable, Selectable, Insertable, AsChangeset, Deserialize)]
#[diesel(table_name = servers, check_for_backend(diesel::pg::Pg), treat_none_as_null = true)]
pub struct ServerRow {
    pub id: Uuid,
    pub tenant_id: Uuid,
    pub name: String,
    pub host: String,
    pub port: i32,
    pub mysql_user: String,
    #[serde(deserialize_with = "presence::deserialize")]
    pub mysql_password_sealed: Option<Vec<u8>>,
    pub mysql_password_key_id: Option<String>,
    pub connection_method: String,
    pub ssh_host: Option<String>,
    pub ssh_port: Option<i32>,
    pub ssh_user: Option<String>,
    #[serde(deserialize_with = "presence::deserialize")]
    pub ssh_private_key_sealed: Option<Vec<u8>>,
    pub ssh_private_key_key_id: Option<String>,
    pub ssh_host_key_fingerprint: Option<String>,
    pub stream_schemas: Vec<String>,
    pub stream_tables: Vec<String>,
    pub stream_exclude_tables: Vec<String>,
    pub ssl_mode: String,
    pub labels: Json<BTreeMap<String, String>>,
    pub status: String,
    /// Read from `steps_packed`, written to `steps` ([`StoredSteps`]).
    #[diesel(select_expression = servers::steps_packed)]
    #[diesel(select_expression_type = servers::steps_packed)]
    pub steps: StoredSteps,
    pub revision: i64,
    pub version: i64,
    pub agent_id: Option<Uuid>,
    pub agent_outbound_ip: Option<String>,
    pub runnable: bool,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub decommissioned_at: Option<DateTime<Utc>>,
    pub stream_state: Option<String>,
    pub stream_error: Option<String>,
    /// Written by the stream's holder only (`Store::record_streams_progress`), never by a change.
    pub stream_progress: Option<Json<StreamProgress>>,
    pub trace_parent: Option<String>,
    pub stream_paused: bool,
}

/// A secret's ciphertext as a history row keeps it: only whether there is one, so that the row
/// shows `has_mysql_password` and the like and never holds a secret, sealed or not. A server read
/// back from it carries an empty ciphertext: it is for showing, never for unsealing.
mod presence {
    use serde::{Deserialize, Deserializer};

    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<Vec<u8>>, D::Error> {
        Ok(bool::deserialize(deserializer)?.then(Vec::new))
    }
}

fn corrupt(what: &str, value: &str) -> StoreError {
    StoreError::Corrupt(format!("{what} {value:?}"))
}

fn sealed(ciphertext: Option<Vec<u8>>, key_id: Option<String>) -> Option<Sealed> {
    Some(Sealed {
        ciphertext: ciphertext?,
        key_id: key_id?,
    })
}

fn unsealed(secret: &Option<Sealed>) -> (Option<Vec<u8>>, Option<String>) {
    match secret {
        Some(sealed) => (Some(sealed.ciphertext.clone()), Some(sealed.key_id.clone())),
        None => (None, None),
    }
}

/// A stored text as its validated type; one that breaks the rule is corrupt data.
fn stored<T>(
    column: &str,
    text: &str,
    parse: impl Fn(&str) -> Result<T, String>,
) -> Result<T, StoreError> {
    parse(text).map_err(|_| corrupt(column, text))
}

fn stored_each<T>(
    column: &str,
    texts: &[String],
    parse: impl Fn(&str) -> Result<T, String>,
) -> Result<Vec<T>, StoreError> {
    texts
        .iter()
        .map(|text| stored(column, text, &parse))
        .collect()
}

/// A stored port (0 is not one: every stored port was chosen or defaulted).
fn stored_port(column: &str, port: i32) -> Result<Port, StoreError> {
    let parsed = Port::parse(port, 0).ok().filter(|_| port != 0);
    parsed.ok_or_else(|| corrupt(column, &port.to_string()))
}

impl TryFrom<ServerRow> for Server {
    type Error = StoreError;

    fn try_from(mut row: ServerRow) -> Result<Server, StoreError> {
        let labels = Labels::from_stored(std::mem::take(&mut row.labels.0));
        let spec = stored_spec(&row, labels)?;
        Ok(Server {
            id: ServerId::from_uuid(row.id),
            tenant_id: TenantId::from_uuid(row.tenant_id),
            spec,
            secrets: StoredSecrets {
                mysql_password: sealed(row.mysql_password_sealed, row.mysql_password_key_id),
                ssh_private_key: sealed(row.ssh_private_key_sealed, row.ssh_private_key_key_id),
            },
            status: ServerStatus::parse(&row.status)
                .ok_or_else(|| corrupt("status", &row.status))?,
            steps: Steps::from_stored(row.steps.0),
            revision: row.revision,
            version: row.version,
            agent_id: row.agent_id,
            agent_outbound_ip: row.agent_outbound_ip,
            runnable: row.runnable,
            created_at: row.created_at,
            updated_at: row.updated_at,
            decommissioned_at: row.decommissioned_at,
            stream: match row.stream_state {
                Some(state) => Some(StreamHealth {
                    state: StreamState::parse(&state)
                        .ok_or_else(|| corrupt("stream_state", &state))?,
                    error: row.stream_error,
                    progress: row.stream_progress.map(|json| json.0).unwrap_or_default(),
                }),
                None => None,
            },
            trace_parent: row.trace_parent,
            paused: row.stream_paused,
        })
    }
}

/// A row's settings, each parsed by its type's rule (the labels taken out of it).
fn stored_spec(row: &ServerRow, labels: Labels) -> Result<ServerSpec, StoreError> {
    Ok(ServerSpec {
        name: stored("name", &row.name, ServerName::from_stored)?,
        host: stored("host", &row.host, Host::parse)?,
        port: stored_port("port", row.port)?,
        mysql_user: stored("mysql_user", &row.mysql_user, |text| {
            UserName::parse(text, "mysql_user", 80)
        })?,
        connection_method: ConnectionMethod::parse(&row.connection_method)
            .ok_or_else(|| corrupt("connection_method", &row.connection_method))?,
        ssh_tunnel: stored_tunnel(row)?,
        stream_options: StreamOptions {
            schemas: stored_each("stream_schemas", &row.stream_schemas, Identifier::parse)?,
            tables: stored_each("stream_tables", &row.stream_tables, QualifiedTable::parse)?,
            exclude_tables: stored_each(
                "stream_exclude_tables",
                &row.stream_exclude_tables,
                QualifiedTable::parse,
            )?,
            ssl_mode: SslMode::parse(&row.ssl_mode)
                .ok_or_else(|| corrupt("ssl_mode", &row.ssl_mode))?,
        },
        labels,
    })
}

/// A row's SSH tunnel, when it has one.
fn stored_tunnel(row: &ServerRow) -> Result<Option<SshTunnel>, StoreError> {
    let (Some(host), Some(port), Some(user)) = (&row.ssh_host, row.ssh_port, &row.ssh_user) else {
        return Ok(None);
    };
    let fingerprint = row.ssh_host_key_fingerprint.as_deref();
    Ok(Some(SshTunnel {
        host: stored("ssh_host", host, Host::parse)?,
        port: stored_port("ssh_port", port)?,
        user: stored("ssh_user", user, |text| UserName::parse(text, "user", 64))?,
        host_key_fingerprint: fingerprint
            .map(|text| stored("ssh_host_key_fingerprint", text, HostKeyFingerprint::parse))
            .transpose()?,
    }))
}

impl From<&Server> for ServerRow {
    fn from(server: &Server) -> ServerRow {
        let spec = &server.spec;
        let stream = server.stream.as_ref();
        let tunnel = spec.ssh_tunnel.as_ref();
        let (mysql_password_sealed, mysql_password_key_id) =
            unsealed(&server.secrets.mysql_password);
        let (ssh_private_key_sealed, ssh_private_key_key_id) =
            unsealed(&server.secrets.ssh_private_key);
        ServerRow {
            id: server.id.uuid(),
            tenant_id: server.tenant_id.uuid(),
            name: spec.name.to_string(),
            host: spec.host.to_string(),
            port: i32::from(spec.port),
            mysql_user: spec.mysql_user.to_string(),
            mysql_password_sealed,
            mysql_password_key_id,
            connection_method: spec.connection_method.as_str().to_owned(),
            ssh_host: tunnel.map(|tunnel| tunnel.host.to_string()),
            ssh_port: tunnel.map(|tunnel| i32::from(tunnel.port)),
            ssh_user: tunnel.map(|tunnel| tunnel.user.to_string()),
            ssh_private_key_sealed,
            ssh_private_key_key_id,
            ssh_host_key_fingerprint: tunnel
                .and_then(|tunnel| tunnel.host_key_fingerprint.as_ref())
                .map(ToString::to_string),
            stream_schemas: texts(&spec.stream_options.schemas),
            stream_tables: texts(&spec.stream_options.tables),
            stream_exclude_tables: texts(&spec.stream_options.exclude_tables),
            ssl_mode: spec.stream_options.ssl_mode.as_str().to_owned(),
            labels: Json(spec.labels.as_map().clone()),
            status: server.status.as_str().to_owned(),
            steps: StoredSteps(server.steps.all().to_vec()),
            revision: server.revision,
            version: server.version,
            agent_id: server.agent_id,
            agent_outbound_ip: server.agent_outbound_ip.clone(),
            runnable: server.runnable,
            created_at: server.created_at,
            updated_at: server.updated_at,
            decommissioned_at: server.decommissioned_at,
            stream_state: stream.map(|stream| stream.state.as_str().to_owned()),
            stream_error: stream.and_then(|stream| stream.error.clone()),
            stream_progress: stream.map(|stream| Json(stream.progress.clone())),
            trace_parent: server.trace_parent.clone(),
            stream_paused: server.paused,
        }
    }
}

/// Declares `ServerChanges` over the listed columns of `servers`: the struct, `between`, and
/// the SET list of its UPDATE.
macro_rules! server_changes {
    ($($field:ident: $type:ty),* $(,)?) => {
        /// The columns that differ between two versions of a server, so an UPDATE writes only
        /// those (PostgreSQL parses no unchanged jsonb or array, and the statement stays small).
        #[derive(Debug, Default)]
        pub struct ServerChanges {
            $(pub $field: Option<$type>,)*
        }

        impl ServerChanges {
            /// What `after` changes of `before` (a server's id, tenant and creation never change).
            pub fn between(before: &ServerRow, after: ServerRow) -> ServerChanges {
                ServerChanges {
                    $($field: (before.$field != after.$field).then_some(after.$field),)*
                }
            }

            /// Which columns change, one bit each: the UPDATE's text depends on nothing else.
            pub fn shape(&self) -> u64 {
                let mut shape = 0;
                let mut bit = 1;
                $(
                    if self.$field.is_some() {
                        shape |= bit;
                    }
                    bit <<= 1;
                )*
                shape
            }

            /// `"column" = $n, ...` for every changed column.
            pub fn walk_set<'b>(
                &'b self,
                out: &mut diesel::query_builder::AstPass<'_, 'b, diesel::pg::Pg>,
            ) -> QueryResult<()> {
                let mut separator = "";
                $(
                    if let Some(value) = &self.$field {
                        out.push_sql(std::mem::replace(&mut separator, ", "));
                        out.push_identifier(stringify!($field))?;
                        out.push_sql(" = ");
                        out.push_bind_param::<diesel::dsl::SqlTypeOf<servers::$field>, _>(value)?;
                    }
                )*
                Ok(())
            }
        }
    };
}

server_changes!(
    name: String,
    host: String,
    port: i32,
    mysql_user: String,
    mysql_password_sealed: Option<Vec<u8>>,
    mysql_password_key_id: Option<String>,
    connection_method: String,
    ssh_host: Option<String>,
    ssh_port: Option<i32>,
    ssh_user: Option<String>,
    ssh_private_key_sealed: Option<Vec<u8>>,
    ssh_private_key_key_id: Option<String>,
    ssh_host_key_fingerprint: Option<String>,
    stream_schemas: Vec<String>,
    stream_tables: Vec<String>,
    stream_exclude_tables: Vec<String>,
    ssl_mode: String,
    labels: Json<BTreeMap<String, String>>,
    status: String,
    steps: StoredSteps,
    revision: i64,
    version: i64,
    agent_id: Option<Uuid>,
    agent_outbound_ip: Option<String>,
    runnable: bool,
    updated_at: DateTime<Utc>,
    decommissioned_at: Option<DateTime<Utc>>,
    stream_state: Option<String>,
    stream_error: Option<String>,
    trace_parent: Option<String>,
    stream_paused: bool,
);
