//! ServersService: each RPC authorises (the Principal from the auth layer), validates at the
//! edge, calls the store, and converts the result; errors go through the one table.

use std::{future::Future, sync::Arc, time::Instant};

use chrono::{DateTime, Datelike, Utc};
use futures_util::StreamExt;
use prost::Message;
use sha2::{Digest, Sha256};
use tonic::{Request, Response, Status};

use super::{
    convert::{
        onboarding_status_to_proto, populated_output_only, populated_paths,
        server_input_from_proto, server_to_proto,
    },
    errors::ApiError,
    paging::{PageSizes, PageTokens, not_issued, query_digest},
};
use crate::{
    auth::{Authenticator, Principal},
    domain::{
        ServerId, Violations, filter,
        server::{
            Existing, Server, ServerInput, StoredSecrets, UpdateField, is_output_only_path,
            restart_point,
        },
        target::TargetPolicy,
    },
    proto::{self, servers_service_server::ServersService},
    secrets::SecretBox,
    store::{IdempotencyKey, PageCursor, Scope, Store, StoreError},
    telemetry,
    watch::{self, WatchHub, WatchRequest},
};

const MAX_REQUEST_ID_LENGTH: usize = 128;

/// The gRPC service over the store.
#[derive(Clone)]
pub struct ServersApi {
    store: Store,
    index: Store,
    secrets: SecretBox,
    hub: Arc<WatchHub>,
    authenticator: Arc<Authenticator>,
    tokens: PageTokens,
    targets: Arc<TargetPolicy>,
}

impl ServersApi {
    /// The service.
    pub fn new(
        store: Store,
        index: Store,
        secrets: SecretBox,
        hub: Arc<WatchHub>,
        authenticator: Arc<Authenticator>,
        tokens: PageTokens,
        targets: Arc<TargetPolicy>,
    ) -> ServersApi {
        ServersApi {
            store,
            index,
            secrets,
            hub,
            authenticator,
            tokens,
            targets,
        }
    }
}

impl ServersApi {
    pub(super) fn store(&self) -> &Store {
        &self.store
    }

    /// The change index's database.
    pub(super) fn index(&self) -> &Store {
        &self.index
    }

    pub(super) fn tokens(&self) -> &PageTokens {
        &self.tokens
    }
}

/// Times a call and counts it by method and code.
async fn observed<T>(
    method: &'static str,
    call: impl Future<Output = Result<T, ApiError>>,
) -> Result<Response<T>, Status> {
    let started = Instant::now();
    let result = call.await.map_err(Status::from);
    let code = match &result {
        Ok(_) => tonic::Code::Ok,
        Err(status) => status.code(),
    };
    metrics::counter!("dbtrail_grpc_calls_total", "method" => method, "code" => format!("{code:?}"))
        .increment(1);
    metrics::histogram!("dbtrail_grpc_call_seconds", "method" => method)
        .record(started.elapsed().as_secs_f64());
    result.map(Response::new)
}

pub(super) fn principal<T>(request: &Request<T>) -> Result<Principal, ApiError> {
    // The auth layer always inserts it; without it the call is not authenticated.
    request
        .extensions()
        .get::<Principal>()
        .cloned()
        .ok_or(ApiError::Auth(crate::auth::AuthError::MissingCredentials))
}

pub(super) fn parse_server_id(text: &str, field: &str) -> Result<ServerId, ApiError> {
    ServerId::parse(text).ok_or_else(|| {
        let mut violations = Violations::default();
        violations.add(
            field,
            if text.is_empty() {
                "is required".to_owned()
            } else {
                format!("{text:?} is not a server id (a UUID)")
            },
        );
        ApiError::Invalid(violations)
    })
}

/// The request id of a mutation with a digest of the rest of the request (secrets left out).
fn idempotency_key<M: Message + Clone>(
    method: &'static str,
    request_id: &str,
    request: &M,
    strip: impl FnOnce(&mut M),
) -> Result<Option<IdempotencyKey>, ApiError> {
    if request_id.is_empty() {
        return Ok(None);
    }
    if request_id.len() > MAX_REQUEST_ID_LENGTH || request_id.chars().any(char::is_control) {
        let mut violations = Violations::default();
        violations.add(
            "request_id",
            format!("must be 1 to {MAX_REQUEST_ID_LENGTH} printable characters (a UUID is best)"),
        );
        return Err(ApiError::Invalid(violations));
    }
    let mut stripped = request.clone();
    strip(&mut stripped);
    Ok(Some(IdempotencyKey {
        request_id: request_id.to_owned(),
        method,
        request_hash: Sha256::digest(stripped.encode_to_vec()).to_vec(),
    }))
}

fn strip_server_secrets(server: Option<&mut proto::Server>) {
    if let Some(server) = server {
        server.mysql_password.clear();
        if let Some(tunnel) = server.ssh_tunnel.as_mut() {
            tunnel.private_key.clear();
        }
    }
}

fn check_etag(server: &Server, etag: &str) -> Result<(), StoreError> {
    if !etag.is_empty() && etag != server.etag() {
        return Err(StoreError::EtagMismatch);
    }
    Ok(())
}

/// Seals new secrets, bound to the server and the field so they cannot be swapped around.
fn seal(
    secrets: &SecretBox,
    server_id: ServerId,
    current: &StoredSecrets,
    new: &crate::domain::server::NewSecrets,
) -> StoredSecrets {
    StoredSecrets {
        mysql_password: match &new.mysql_password {
            Some(secret) => Some(secrets.seal(secret, &format!("{server_id}/mysql_password"))),
            None => current.mysql_password.clone(),
        },
        ssh_private_key: match &new.ssh_private_key {
            Some(secret) => Some(secrets.seal(secret, &format!("{server_id}/ssh_private_key"))),
            None => current.ssh_private_key.clone(),
        },
    }
}

/// Where a ListServers page starts, as its token carries it.
#[derive(serde::Serialize, serde::Deserialize)]
struct ServersCursor {
    created_at_micros: i64,
    id: uuid::Uuid,
}

const SERVER_PAGES: PageSizes = PageSizes {
    default: 50,
    max: 500,
};

fn servers_query(filter: &str, show_decommissioned: bool) -> String {
    query_digest(&[&show_decommissioned.to_string(), filter])
}

fn decode_servers_cursor(
    tokens: &PageTokens,
    token: &str,
    query: &str,
) -> Result<Option<PageCursor>, ApiError> {
    let Some(cursor) = tokens.decode::<ServersCursor>(
        token,
        query,
        "a different filter or show_decommissioned",
    )?
    else {
        return Ok(None);
    };
    // Only a time a server can have been created at: anything else (PostgreSQL would refuse a
    // year beyond its range) is a token this service did not issue.
    let created_at = DateTime::<Utc>::from_timestamp_micros(cursor.created_at_micros)
        .filter(|time| (2000..=9999).contains(&time.year()))
        .ok_or_else(not_issued)?;
    Ok(Some(PageCursor {
        created_at,
        id: cursor.id,
    }))
}

fn servers_page_token(tokens: &PageTokens, server: &Server, query: &str) -> String {
    let cursor = ServersCursor {
        created_at_micros: server.created_at.timestamp_micros(),
        id: server.id.0,
    };
    tokens.encode(cursor, query)
}

/// The fields an update touches: the mask's paths, or the populated fields without one.
fn update_fields(
    request: &proto::UpdateServerRequest,
    server: &proto::Server,
    violations: &mut Violations,
) -> Vec<UpdateField> {
    let paths: Vec<String> = match &request.update_mask {
        Some(mask) => mask.paths.clone(),
        None => {
            for path in populated_output_only(server) {
                violations.add(format!("server.{path}"), "is output only and cannot be set");
            }
            populated_paths(server)
                .into_iter()
                .map(str::to_owned)
                .collect()
        }
    };
    let mut fields = Vec::new();
    for (index, path) in paths.iter().enumerate() {
        if path == "*" {
            fields.extend_from_slice(UpdateField::ALL_TOP_LEVEL);
        } else if let Some(field) = UpdateField::from_path(path) {
            fields.push(field);
        } else if is_output_only_path(path) {
            violations.add(
                format!("update_mask.paths[{index}]"),
                format!("{path:?} is output only and cannot be updated"),
            );
        } else {
            violations.add(
                format!("update_mask.paths[{index}]"),
                format!("{path:?} is not a field of Server"),
            );
        }
    }
    if fields.is_empty() && violations.0.is_empty() {
        violations.add("update_mask", "names no field to update");
    }
    fields
}

impl ServersApi {
    /// A tenant's change, once per request id: a retry gets the server the first one produced.
    async fn modify_once<F>(
        &self,
        tenant: crate::domain::TenantId,
        id: ServerId,
        idempotency: Option<&IdempotencyKey>,
        change: F,
    ) -> Result<Server, ApiError>
    where
        F: FnOnce(&mut Server) -> Result<(), ApiError> + Send,
    {
        let result = match idempotency {
            Some(key) => self.store.modify_server_once(tenant, id, key, change).await,
            None => {
                self.store
                    .modify_server(Scope::Tenant(tenant), id, change)
                    .await
            }
        };
        match (result, idempotency) {
            (Ok((server, ())), _) => Ok(server),
            (Err(ApiError::Store(StoreError::Replayed)), Some(key)) => self
                .store
                .find_replay(tenant, key)
                .await?
                .ok_or(ApiError::Store(StoreError::NotFound)),
            (Err(error), _) => Err(error),
        }
    }

    async fn list(
        &self,
        request: Request<proto::ListServersRequest>,
    ) -> Result<proto::ListServersResponse, ApiError> {
        let principal = principal(&request)?;
        let request = request.into_inner();
        let mut violations = Violations::default();
        let page_size = SERVER_PAGES.of(request.page_size, &mut violations);
        let parsed = match filter::parse(&request.filter) {
            Ok(parsed) => parsed,
            Err(error) => {
                violations.add("filter", error.message);
                None
            }
        };
        violations.into_result().map_err(ApiError::Invalid)?;
        let query = servers_query(&request.filter, request.show_decommissioned);
        let cursor = decode_servers_cursor(&self.tokens, &request.page_token, &query)?;
        let page = self
            .store
            .list_servers(
                principal.tenant_id,
                parsed.as_ref(),
                request.show_decommissioned,
                cursor,
                page_size,
            )
            .await?;
        let next_page_token = match (page.more, page.servers.last()) {
            (true, Some(last)) => servers_page_token(&self.tokens, last, &query),
            _ => String::new(),
        };
        Ok(proto::ListServersResponse {
            servers: page.servers.iter().map(server_to_proto).collect(),
            next_page_token,
        })
    }

    async fn get(
        &self,
        request: Request<proto::GetServerRequest>,
    ) -> Result<proto::Server, ApiError> {
        let principal = principal(&request)?;
        let id = parse_server_id(&request.get_ref().server_id, "server_id")?;
        let server = self.store.get_server(principal.tenant_id, id).await?;
        Ok(server_to_proto(&server))
    }

    async fn register(
        &self,
        request: Request<proto::RegisterServerRequest>,
    ) -> Result<proto::Server, ApiError> {
        let principal = principal(&request)?;
        let request = request.into_inner();
        let idempotency =
            idempotency_key("RegisterServer", &request.request_id, &request, |request| {
                request.request_id.clear();
                strip_server_secrets(request.server.as_mut());
            })?;
        if let Some(key) = &idempotency
            && let Some(server) = self.store.find_replay(principal.tenant_id, key).await?
        {
            return Ok(server_to_proto(&server));
        }
        let mut violations = Violations::default();
        let Some(input) = &request.server else {
            violations.add("server", "is required");
            return Err(ApiError::Invalid(violations));
        };
        if !input.server_id.is_empty() {
            violations.add(
                "server.server_id",
                "is assigned by the service; leave it empty",
            );
        }
        for path in populated_output_only(input) {
            violations.add(format!("server.{path}"), "is output only and cannot be set");
        }
        let raw = server_input_from_proto(input, "server.", &mut violations);
        let validated = raw.validate("server.", Existing::default(), &mut violations);
        if let Some((spec, _)) = &validated {
            self.targets
                .check_literals(spec, "server.", &mut violations);
        }
        violations.into_result().map_err(ApiError::Invalid)?;
        let Some((spec, new_secrets)) = validated else {
            return Err(ApiError::Invalid(Violations::default()));
        };
        let id = ServerId::generate();
        let sealed = seal(&self.secrets, id, &StoredSecrets::default(), &new_secrets);
        let mut server =
            Server::register(id, principal.tenant_id, spec, sealed, crate::domain::now());
        server.trace_parent = telemetry::current_traceparent();
        match self
            .store
            .register_server(server.clone(), idempotency, request.validate_only)
            .await
        {
            Ok(server) => Ok(server_to_proto(&server)),
            Err(StoreError::RolledBack) => Ok(server_to_proto(&server)),
            Err(error) => Err(error.into()),
        }
    }

    async fn update(
        &self,
        request: Request<proto::UpdateServerRequest>,
    ) -> Result<proto::Server, ApiError> {
        let principal = principal(&request)?;
        let request = request.into_inner();
        let mut violations = Violations::default();
        let Some(server_message) = &request.server else {
            violations.add("server", "is required");
            return Err(ApiError::Invalid(violations));
        };
        let id = parse_server_id(&server_message.server_id, "server.server_id")?;
        let idempotency =
            idempotency_key("UpdateServer", &request.request_id, &request, |request| {
                request.request_id.clear();
                strip_server_secrets(request.server.as_mut());
            })?;
        let fields = update_fields(&request, server_message, &mut violations);
        let input = server_input_from_proto(server_message, "server.", &mut violations);
        violations.into_result().map_err(ApiError::Invalid)?;
        let secrets = self.secrets.clone();
        let targets = self.targets.clone();
        let server = self
            .modify_once(principal.tenant_id, id, idempotency.as_ref(), |server| {
                check_etag(server, &server_message.etag)?;
                if server.status == crate::domain::ServerStatus::Decommissioned {
                    return Err(ApiError::from(
                        crate::domain::server::Rejection::Decommissioned,
                    ));
                }
                let merged = ServerInput::merge_update(&server.spec, &input, &fields);
                let existing = Existing {
                    has_ssh_private_key: server.secrets.ssh_private_key.is_some(),
                };
                let mut violations = Violations::default();
                let validated = merged.validate("server.", existing, &mut violations);
                if let Some((spec, _)) = &validated {
                    targets.check_literals(spec, "server.", &mut violations);
                }
                violations.into_result().map_err(ApiError::Invalid)?;
                let Some((mut spec, new_secrets)) = validated else {
                    return Err(ApiError::Invalid(Violations::default()));
                };
                forget_fingerprint_of_moved_jumphost(&server.spec, &mut spec);
                let restart = restart_point(&server.spec, &spec, &new_secrets);
                let sealed = seal(&secrets, server.id, &server.secrets, &new_secrets);
                server.update(spec, sealed, restart)?;
                if restart.is_some() {
                    server.trace_parent = telemetry::current_traceparent();
                }
                Ok(())
            })
            .await?;
        Ok(server_to_proto(&server))
    }

    async fn decommission(
        &self,
        request: Request<proto::DecommissionServerRequest>,
    ) -> Result<proto::Server, ApiError> {
        let principal = principal(&request)?;
        let request = request.into_inner();
        let id = parse_server_id(&request.server_id, "server_id")?;
        let idempotency = idempotency_key(
            "DecommissionServer",
            &request.request_id,
            &request,
            |request| {
                request.request_id.clear();
            },
        )?;
        let server = self
            .modify_once(principal.tenant_id, id, idempotency.as_ref(), |server| {
                if server.status != crate::domain::ServerStatus::Decommissioned {
                    check_etag(server, &request.etag)?;
                }
                server.decommission(crate::domain::now());
                Ok(())
            })
            .await?;
        Ok(server_to_proto(&server))
    }

    async fn onboarding_status(
        &self,
        request: Request<proto::GetOnboardingStatusRequest>,
    ) -> Result<proto::OnboardingStatus, ApiError> {
        let principal = principal(&request)?;
        let id = parse_server_id(&request.get_ref().server_id, "server_id")?;
        let server = self.store.get_server(principal.tenant_id, id).await?;
        Ok(onboarding_status_to_proto(&server.onboarding_status()))
    }

    async fn confirm_firewall(
        &self,
        request: Request<proto::ConfirmFirewallRequest>,
    ) -> Result<proto::ConfirmFirewallResponse, ApiError> {
        let principal = principal(&request)?;
        let id = parse_server_id(&request.get_ref().server_id, "server_id")?;
        self.store
            .modify_server(Scope::Tenant(principal.tenant_id), id, |server| {
                server.confirm_firewall(crate::domain::now())?;
                server.trace_parent = telemetry::current_traceparent();
                Ok::<_, ApiError>(())
            })
            .await?;
        Ok(proto::ConfirmFirewallResponse {
            status: "confirmed".into(),
        })
    }

    async fn retry(
        &self,
        request: Request<proto::RetryOnboardingRequest>,
    ) -> Result<proto::OnboardingStatus, ApiError> {
        let principal = principal(&request)?;
        let id = parse_server_id(&request.get_ref().server_id, "server_id")?;
        let (server, ()) = self
            .store
            .modify_server(Scope::Tenant(principal.tenant_id), id, |server| {
                server.retry()?;
                server.trace_parent = telemetry::current_traceparent();
                Ok::<_, ApiError>(())
            })
            .await?;
        Ok(onboarding_status_to_proto(&server.onboarding_status()))
    }

    async fn watch(
        &self,
        request: Request<proto::WatchOnboardingRequest>,
    ) -> Result<WatchResponseStream, ApiError> {
        let principal = principal(&request)?;
        let request = request.into_inner();
        let id = parse_server_id(&request.server_id, "server_id")?;
        let opened = self.hub.open(principal.tenant_id, id).await?;
        if let Some(since) = request.since_revision {
            let current = opened.1.revision;
            if since < 0 {
                return Err(ApiError::Invalid({
                    let mut violations = Violations::default();
                    violations.add("since_revision", format!("{since} is negative"));
                    violations
                }));
            }
            if since > current {
                return Err(ApiError::Invalid({
                    let mut violations = Violations::default();
                    violations.add(
                        "since_revision",
                        format!("{since} is ahead of the current revision {current}"),
                    );
                    violations
                }));
            }
            if since < current {
                self.store.check_history_kept(id, since).await?;
            }
        }
        let stream = watch::watch(
            self.hub.clone(),
            self.authenticator.clone(),
            principal,
            opened,
            WatchRequest {
                since_revision: request.since_revision,
                follow: request.follow,
            },
        );
        Ok(Box::pin(stream.map(|item| {
            item.map(|status| onboarding_status_to_proto(&status))
                .map_err(Status::from)
        })))
    }
}

/// A recorded host key belongs to the jumphost it was seen on: moving the jumphost forgets it,
/// unless the request pinned a new one.
fn forget_fingerprint_of_moved_jumphost(
    old: &crate::domain::server::ServerSpec,
    new: &mut crate::domain::server::ServerSpec,
) {
    if let (Some(old_tunnel), Some(new_tunnel)) = (&old.ssh_tunnel, new.ssh_tunnel.as_mut())
        && (old_tunnel.host != new_tunnel.host || old_tunnel.port != new_tunnel.port)
        && new_tunnel.host_key_fingerprint == old_tunnel.host_key_fingerprint
    {
        new_tunnel.host_key_fingerprint = None;
    }
}

/// The stream type of WatchOnboarding.
pub type WatchResponseStream = std::pin::Pin<
    Box<dyn futures_util::Stream<Item = Result<proto::OnboardingStatus, Status>> + Send>,
>;

#[tonic::async_trait]
impl ServersService for ServersApi {
    type WatchOnboardingStream = WatchResponseStream;

    async fn list_servers(
        &self,
        request: Request<proto::ListServersRequest>,
    ) -> Result<Response<proto::ListServersResponse>, Status> {
        observed("ListServers", self.list(request)).await
    }

    async fn get_server(
        &self,
        request: Request<proto::GetServerRequest>,
    ) -> Result<Response<proto::Server>, Status> {
        observed("GetServer", self.get(request)).await
    }

    async fn register_server(
        &self,
        request: Request<proto::RegisterServerRequest>,
    ) -> Result<Response<proto::Server>, Status> {
        observed("RegisterServer", self.register(request)).await
    }

    async fn update_server(
        &self,
        request: Request<proto::UpdateServerRequest>,
    ) -> Result<Response<proto::Server>, Status> {
        observed("UpdateServer", self.update(request)).await
    }

    async fn decommission_server(
        &self,
        request: Request<proto::DecommissionServerRequest>,
    ) -> Result<Response<proto::Server>, Status> {
        observed("DecommissionServer", self.decommission(request)).await
    }

    async fn get_onboarding_status(
        &self,
        request: Request<proto::GetOnboardingStatusRequest>,
    ) -> Result<Response<proto::OnboardingStatus>, Status> {
        observed("GetOnboardingStatus", self.onboarding_status(request)).await
    }

    async fn confirm_firewall(
        &self,
        request: Request<proto::ConfirmFirewallRequest>,
    ) -> Result<Response<proto::ConfirmFirewallResponse>, Status> {
        observed("ConfirmFirewall", self.confirm_firewall(request)).await
    }

    async fn watch_onboarding(
        &self,
        request: Request<proto::WatchOnboardingRequest>,
    ) -> Result<Response<Self::WatchOnboardingStream>, Status> {
        observed("WatchOnboarding", self.watch(request)).await
    }

    async fn retry_onboarding(
        &self,
        request: Request<proto::RetryOnboardingRequest>,
    ) -> Result<Response<proto::OnboardingStatus>, Status> {
        observed("RetryOnboarding", self.retry(request)).await
    }

    async fn list_change_events(
        &self,
        request: Request<proto::ListChangeEventsRequest>,
    ) -> Result<Response<proto::ListChangeEventsResponse>, Status> {
        observed("ListChangeEvents", self.change_events(request)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_tokens_round_trip_and_are_bound_to_their_query() {
        let tokens = PageTokens::new(&[1; 32]);
        let query = servers_query("status = active", false);
        let token = tokens.encode(
            ServersCursor {
                created_at_micros: 1_700_000_000_123_456,
                id: uuid::Uuid::nil(),
            },
            &query,
        );
        let cursor = decode_servers_cursor(&tokens, &token, &query)
            .unwrap()
            .unwrap();
        assert_eq!(cursor.created_at.timestamp_micros(), 1_700_000_000_123_456);
        assert!(decode_servers_cursor(&tokens, &token, &servers_query("", false)).is_err());
        assert!(decode_servers_cursor(&tokens, "garbage!", &query).is_err());
        assert_eq!(decode_servers_cursor(&tokens, "", &query).unwrap(), None);
        // Even a token under the right key is checked field by field.
        let impossible = tokens.encode(
            ServersCursor {
                created_at_micros: -8_200_000_000_000_000_000,
                id: uuid::Uuid::nil(),
            },
            &query,
        );
        assert!(
            decode_servers_cursor(&tokens, &impossible, &query).is_err(),
            "an impossible time is INVALID_ARGUMENT, not a database error"
        );
    }

    #[test]
    fn update_mask_paths_are_checked() {
        let server = proto::Server::default();
        let request = proto::UpdateServerRequest {
            server: Some(server.clone()),
            update_mask: Some(prost_types::FieldMask {
                paths: vec![
                    "name".into(),
                    "status".into(),
                    "colour".into(),
                    "ssh_tunnel.host".into(),
                ],
            }),
            request_id: String::new(),
        };
        let mut violations = Violations::default();
        let fields = update_fields(&request, &server, &mut violations);
        assert_eq!(fields, [UpdateField::Name, UpdateField::SshTunnelHost]);
        let bad: Vec<_> = violations.0.iter().map(|v| v.field.as_str()).collect();
        assert_eq!(bad, ["update_mask.paths[1]", "update_mask.paths[2]"]);
    }
}
