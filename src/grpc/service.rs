//! ServersService: each RPC takes the Principal the auth layer found, turns the request into
//! domain values, calls the store and converts the result. Errors take `?` through the one
//! table (`errors.rs`); the metrics layer (`metrics.rs`) counts and times every call.

use std::{collections::HashMap, net::IpAddr, sync::Arc};

use futures_util::StreamExt;
use tonic::{Request, Response, Status};

use super::{
    audit::{AuditedCall, audited},
    check::CheckLimits,
    codec::within_message_limit,
    convert::{
        onboarding_status_to_proto, populated_output_only, report_to_proto,
        server_input_from_proto, server_to_proto,
    },
    errors::ApiError,
    idempotency::idempotency_key,
    paging::PageTokens,
    server_pages::ServersQuery,
    update_mask::update_fields,
};
use crate::{
    agent::AgentSettings,
    auth::{Authenticator, Principal},
    domain::{
        Refused, ServerId, TenantId, Violations,
        audit::Actor,
        server::{Existing, NewSecrets, Rejection, Server, ServerInput, ServerSpec, StoredSecrets},
        target::{TargetPolicy, first_hop},
    },
    proto::{self, servers_service_server::ServersService},
    secrets::SecretBox,
    source::connection,
    store::{ChangeIndex, IdempotencyKey, IndexShards, Store, StoreError},
    telemetry,
    watch::{self, Hubs, WatchRequest},
};

/// The gRPC service over the store.
#[derive(Clone)]
pub struct ServersApi {
    store: Store,
    index: IndexShards,
    secrets: SecretBox,
    hubs: Hubs,
    authenticator: Arc<Authenticator>,
    tokens: PageTokens,
    /// This replica's agent: how RestartStream and CheckServer reach a source, and the target
    /// policy.
    agent: AgentSettings,
    /// CheckServer's rate per tenant and deadline.
    check_limits: Arc<CheckLimits>,
    /// Whether webhook URLs may be http:// (`--allow-http-webhooks`, development only).
    allow_http_webhooks: bool,
}

impl ServersApi {
    /// The service.
    pub fn new(
        store: Store,
        index: IndexShards,
        secrets: SecretBox,
        hubs: Hubs,
        authenticator: Arc<Authenticator>,
        tokens: PageTokens,
        agent: AgentSettings,
    ) -> ServersApi {
        ServersApi {
            store,
            index,
            secrets,
            hubs,
            authenticator,
            tokens,
            agent,
            check_limits: Arc::new(CheckLimits::default()),
            allow_http_webhooks: false,
        }
    }

    /// The service accepting http:// webhook URLs too (`--allow-http-webhooks`).
    pub fn with_http_webhooks(mut self, allow: bool) -> ServersApi {
        self.allow_http_webhooks = allow;
        self
    }

    /// The service with CheckServer's rate per tenant and deadline (the defaults otherwise).
    pub fn with_check_limits(mut self, check_limits: CheckLimits) -> ServersApi {
        self.check_limits = Arc::new(check_limits);
        self
    }

    pub(super) fn store(&self) -> &Store {
        &self.store
    }

    pub(super) fn hubs(&self) -> &Hubs {
        &self.hubs
    }

    pub(super) fn authenticator(&self) -> &Arc<Authenticator> {
        &self.authenticator
    }

    /// The change index's database that holds `server`'s events.
    pub(super) async fn index(&self, server: ServerId) -> Result<ChangeIndex, StoreError> {
        self.index.for_server(server).await
    }

    pub(super) fn tokens(&self) -> &PageTokens {
        &self.tokens
    }

    pub(super) fn secrets(&self) -> &SecretBox {
        &self.secrets
    }

    pub(super) fn agent(&self) -> &AgentSettings {
        &self.agent
    }

    pub(super) fn check_limits(&self) -> &CheckLimits {
        &self.check_limits
    }

    pub(super) fn allow_http_webhooks(&self) -> bool {
        self.allow_http_webhooks
    }
}

/// Who is calling: the auth layer always inserts it; without it the call is not authenticated.
pub(super) fn principal<T>(request: &Request<T>) -> Result<Principal, ApiError> {
    request
        .extensions()
        .get::<Principal>()
        .cloned()
        .ok_or(ApiError::Auth(crate::auth::AuthError::MissingCredentials))
}

/// The audited call of a request whose server id is `text`: the server it concerns, when the
/// text is one, for the record of a refusal.
pub(super) fn audited_for<T>(
    request: &Request<T>,
    text: &str,
) -> Result<Arc<AuditedCall>, ApiError> {
    let call = audited(request)?;
    if let Some(id) = ServerId::parse(text) {
        call.concerns(id);
    }
    Ok(call)
}

pub(super) fn parse_server_id(text: &str, field: &str) -> Result<ServerId, ApiError> {
    ServerId::parse(text).ok_or_else(|| {
        let problem = if text.is_empty() {
            "is required".to_owned()
        } else {
            format!("{text:?} is not a server id (a UUID)")
        };
        ApiError::invalid(field, problem)
    })
}

fn check_etag(server: &Server, etag: &str) -> Result<(), Refused> {
    if !etag.is_empty() && etag != server.etag() {
        return Err(Refused::EtagMismatch);
    }
    Ok(())
}

/// A WatchOnboarding `since_revision` must be a revision the server has had.
pub(super) fn check_since_revision(since: i64, current: i64) -> Result<(), ApiError> {
    if since < 0 {
        return Err(ApiError::invalid(
            "since_revision",
            format!("{since} is negative"),
        ));
    }
    if since > current {
        return Err(ApiError::invalid(
            "since_revision",
            format!("{since} is ahead of the current revision {current}"),
        ));
    }
    Ok(())
}

/// The settings of a server to register, with every problem of the request at once.
pub(super) fn registration(
    input: Option<&proto::Server>,
    targets: &TargetPolicy,
) -> Result<(ServerSpec, NewSecrets), ApiError> {
    let input = input.ok_or_else(|| ApiError::invalid("server", "is required"))?;
    let mut violations = Violations::default();
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
    let validated = raw
        .validate("server.", Existing::default())
        .and_then(|(spec, secrets)| {
            targets.check_literals(&spec, "server.")?;
            Ok((spec, secrets))
        });
    Ok(violations.and(validated)?)
}

/// An UpdateServer request, checked before the server is read.
struct Update {
    id: ServerId,
    etag: String,
    input: ServerInput,
    fields: Vec<crate::domain::server::UpdateField>,
    idempotency: Option<IdempotencyKey>,
    /// What the host names the update sets resolve to now, for the target policy's check of
    /// the merged settings under the row lock (where no lookup may run).
    resolved: HashMap<String, Vec<IpAddr>>,
}

impl Update {
    fn parse(request: &proto::UpdateServerRequest) -> Result<Update, ApiError> {
        let server = request
            .server
            .as_ref()
            .ok_or_else(|| ApiError::invalid("server", "is required"))?;
        let id = parse_server_id(&server.server_id, "server.server_id")?;
        let idempotency = idempotency_key(request)?;
        let mut violations = Violations::default();
        let fields = update_fields(request, server, &mut violations);
        let input = server_input_from_proto(server, "server.", &mut violations);
        violations.into_result().map_err(ApiError::Invalid)?;
        Ok(Update {
            id,
            etag: server.etag.clone(),
            input,
            fields,
            idempotency,
            resolved: HashMap::new(),
        })
    }

    /// Resolves the host names the update sets (MySQL host, jumphost).
    async fn look_up_names(&mut self) {
        let jumphost = self.input.ssh_tunnel.as_ref().map(|tunnel| &tunnel.host);
        for host in std::iter::once(&self.input.host).chain(jumphost) {
            let addresses = connection::lookup(host).await;
            if !addresses.is_empty() {
                self.resolved.insert(host.clone(), addresses);
            }
        }
    }
}

impl ServersApi {
    /// PauseStream's or ResumeStream's `change` of the caller's server `server_id`.
    async fn change_stream<T>(
        &self,
        request: &Request<T>,
        server_id: &str,
        change: fn(&mut Server) -> Result<(), Rejection>,
    ) -> Result<Server, ApiError> {
        let call = audited_for(request, server_id)?;
        let id = parse_server_id(server_id, "server_id")?;
        let (server, ()) = self
            .store
            .change_server(call.actor(), id, |server| {
                change(server).map_err(ApiError::from)
            })
            .await?;
        Ok(server)
    }

    /// A tenant's change by `actor`, once per request id: a retry gets the server the first
    /// one produced.
    async fn modify_once<F>(
        &self,
        actor: &Actor,
        id: ServerId,
        idempotency: Option<&IdempotencyKey>,
        change: F,
    ) -> Result<Server, ApiError>
    where
        F: FnOnce(&mut Server) -> Result<(), ApiError> + Send,
    {
        match idempotency {
            Some(key) => self.store.modify_server_once(actor, id, key, change).await,
            None => {
                let (server, ()) = self.store.change_server(actor, id, change).await?;
                Ok(server)
            }
        }
    }

    /// The target policy's check of the address a server's first hop (its host, or its
    /// jumphost) resolves to now, when it is a name.
    pub(super) async fn check_resolved_target(&self, spec: &ServerSpec) -> Result<(), ApiError> {
        let addresses = connection::lookup(first_hop(spec).1).await;
        self.agent
            .targets
            .check_resolved(spec, &addresses, "server.")
            .map_err(ApiError::Invalid)
    }

    /// A server to register: a new id, its secrets sealed to it, the call's trace to continue.
    pub(super) fn new_server(
        &self,
        tenant: TenantId,
        spec: ServerSpec,
        new_secrets: &NewSecrets,
    ) -> Server {
        let id = ServerId::generate();
        let sealed = self
            .secrets
            .seal_server_secrets(id, &StoredSecrets::default(), new_secrets);
        let mut server = Server::register(id, tenant, spec, sealed, crate::domain::now());
        stamp_trace(&mut server);
        server
    }

    /// A watch resumes after `since`: a revision the server has had, whose successors are all
    /// still in its history.
    async fn check_resumable(
        &self,
        id: ServerId,
        since: i64,
        current: i64,
    ) -> Result<(), ApiError> {
        check_since_revision(since, current)?;
        if since < current {
            self.store.check_history_kept(id, since).await?;
        }
        Ok(())
    }

    /// The update applied to the locked server: the masked fields merged over its settings,
    /// validated as a whole, new secrets sealed.
    fn apply_update(&self, server: &mut Server, update: &Update) -> Result<(), ApiError> {
        check_etag(server, &update.etag)?;
        server.ensure_live()?;
        let merged = ServerInput::merge_update(&server.spec, &update.input, &update.fields);
        let existing = Existing {
            has_ssh_private_key: server.secrets.ssh_private_key.is_some(),
        };
        let unmasked =
            ServerInput::check_unmasked(&server.spec, &update.input, &update.fields, existing);
        let (spec, new_secrets) = unmasked
            .err()
            .unwrap_or_default()
            .and(merged.validate("server.", existing))?;
        self.agent.targets.check_literals(&spec, "server.")?;
        if let Some(addresses) = update.resolved.get(first_hop(&spec).1) {
            self.agent
                .targets
                .check_resolved(&spec, addresses, "server.")?;
        }
        let sealed = self
            .secrets
            .seal_server_secrets(server.id, &server.secrets, &new_secrets);
        if server.update(spec, &new_secrets, sealed)?.is_some() {
            stamp_trace(server);
        }
        Ok(())
    }
}

/// Stamps the call's trace on a server whose onboarding the call starts or restarts, for the
/// onboarding steps' spans to continue (none while traces are off): the one place that writes
/// `trace_parent`.
fn stamp_trace(server: &mut Server) {
    server.trace_parent = telemetry::current_traceparent();
}

/// A unary call's answer, within the message limit (an over-limit one is RESPONSE_TOO_LARGE).
fn reply<M: prost::Message>(message: M) -> Result<Response<M>, Status> {
    within_message_limit(message).map(Response::new)
}

/// The stream type of WatchOnboarding.
pub type WatchResponseStream = std::pin::Pin<
    Box<dyn futures_util::Stream<Item = Result<proto::OnboardingStatus, Status>> + Send>,
>;

#[tonic::async_trait]
impl ServersService for ServersApi {
    type WatchOnboardingStream = WatchResponseStream;
    type WatchServersStream = super::fleet_watch::FleetResponseStream;
    type RevertChangesStream = super::revert::RevertStream;

    async fn list_servers(
        &self,
        request: Request<proto::ListServersRequest>,
    ) -> Result<Response<proto::ListServersResponse>, Status> {
        let principal = principal(&request)?;
        let query = ServersQuery::parse(request.get_ref(), principal.tenant_id, &self.tokens)?;
        let page = self
            .store
            .list_servers(
                principal.tenant_id,
                query.filter.as_ref(),
                query.show_decommissioned,
                query.cursor,
                &query.bound(),
            )
            .await?;
        let next_page_token = query.next_page_token(&self.tokens, page.more, page.servers.last());
        reply(proto::ListServersResponse {
            servers: page.servers.iter().map(server_to_proto).collect(),
            next_page_token,
        })
    }

    async fn watch_servers(
        &self,
        request: Request<proto::WatchServersRequest>,
    ) -> Result<Response<Self::WatchServersStream>, Status> {
        let principal = principal(&request)?;
        let stream = self.fleet_watch(principal, request.get_ref()).await?;
        Ok(Response::new(stream))
    }

    async fn get_server(
        &self,
        request: Request<proto::GetServerRequest>,
    ) -> Result<Response<proto::Server>, Status> {
        let principal = principal(&request)?;
        let id = parse_server_id(&request.get_ref().server_id, "server_id")?;
        let server = self.store.get_server(principal.tenant_id, id).await?;
        reply(server_to_proto(&server))
    }

    async fn register_server(
        &self,
        request: Request<proto::RegisterServerRequest>,
    ) -> Result<Response<proto::Server>, Status> {
        let principal = principal(&request)?;
        let call = audited(&request)?;
        let (metadata, _, request) = request.into_parts();
        let idempotency = idempotency_key(&request)?;
        if let Some(key) = &idempotency
            && let Some(server) = self.store.find_replay(principal.tenant_id, key).await?
        {
            return reply(server_to_proto(&server));
        }
        let (spec, new_secrets) = registration(request.server.as_ref(), &self.agent.targets)?;
        self.check_resolved_target(&spec).await?;
        let server = self.new_server(principal.tenant_id, spec, &new_secrets);
        let server = if request.validate_only {
            self.store.check_registration(&server).await?;
            self.dry_run(&principal, server.clone(), &metadata).await?;
            server
        } else {
            self.store
                .register_server(call.actor(), server, idempotency)
                .await?
        };
        reply(server_to_proto(&server))
    }

    async fn update_server(
        &self,
        request: Request<proto::UpdateServerRequest>,
    ) -> Result<Response<proto::Server>, Status> {
        let server_id = request
            .get_ref()
            .server
            .as_ref()
            .map(|server| &server.server_id);
        let call = audited_for(&request, server_id.map_or("", String::as_str))?;
        let mut update = Update::parse(request.get_ref())?;
        update.look_up_names().await;
        let key = update.idempotency.as_ref();
        // Boxed: the locked change's future is about 4.7 KB, and tonic moves the handler's
        // future twice before polling it (memcpy was a tenth of an UpdateServer's instructions).
        let server = Box::pin(self.modify_once(call.actor(), update.id, key, |server| {
            self.apply_update(server, &update)
        }))
        .await?;
        reply(server_to_proto(&server))
    }

    async fn decommission_server(
        &self,
        request: Request<proto::DecommissionServerRequest>,
    ) -> Result<Response<proto::Server>, Status> {
        let call = audited_for(&request, &request.get_ref().server_id)?;
        let request = request.get_ref();
        let id = parse_server_id(&request.server_id, "server_id")?;
        let idempotency = idempotency_key(request)?;
        let server = self
            .modify_once(call.actor(), id, idempotency.as_ref(), |server| {
                if server.status != crate::domain::ServerStatus::Decommissioned {
                    check_etag(server, &request.etag)?;
                }
                server.decommission(crate::domain::now());
                Ok(())
            })
            .await?;
        reply(server_to_proto(&server))
    }

    async fn get_onboarding_status(
        &self,
        request: Request<proto::GetOnboardingStatusRequest>,
    ) -> Result<Response<proto::OnboardingStatus>, Status> {
        let principal = principal(&request)?;
        let id = parse_server_id(&request.get_ref().server_id, "server_id")?;
        let server = self.store.get_server(principal.tenant_id, id).await?;
        reply(onboarding_status_to_proto(&server.onboarding_status()))
    }

    async fn confirm_firewall(
        &self,
        request: Request<proto::ConfirmFirewallRequest>,
    ) -> Result<Response<proto::ConfirmFirewallResponse>, Status> {
        let call = audited_for(&request, &request.get_ref().server_id)?;
        let id = parse_server_id(&request.get_ref().server_id, "server_id")?;
        self.store
            .change_server(call.actor(), id, |server| {
                server.confirm_firewall(crate::domain::now())?;
                stamp_trace(server);
                Ok::<_, ApiError>(())
            })
            .await?;
        reply(proto::ConfirmFirewallResponse {
            status: "confirmed".into(),
        })
    }

    async fn watch_onboarding(
        &self,
        request: Request<proto::WatchOnboardingRequest>,
    ) -> Result<Response<Self::WatchOnboardingStream>, Status> {
        let principal = principal(&request)?;
        let request = request.into_inner();
        let id = parse_server_id(&request.server_id, "server_id")?;
        let opened = self.hubs.onboarding.open(principal.tenant_id, id).await?;
        if let Some(since) = request.since_revision {
            self.check_resumable(id, since, opened.1.revision).await?;
        }
        let watch_request = WatchRequest {
            since_revision: request.since_revision,
            follow: request.follow,
        };
        let stream = watch::watch(
            self.hubs.onboarding.clone(),
            self.authenticator.clone(),
            principal,
            opened,
            watch_request,
        );
        let stream = stream.map(|item| {
            item.map_err(Status::from)
                .and_then(|status| within_message_limit(onboarding_status_to_proto(&status)))
        });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn retry_onboarding(
        &self,
        request: Request<proto::RetryOnboardingRequest>,
    ) -> Result<Response<proto::OnboardingStatus>, Status> {
        let call = audited_for(&request, &request.get_ref().server_id)?;
        let id = parse_server_id(&request.get_ref().server_id, "server_id")?;
        let (server, ()) = self
            .store
            .change_server(call.actor(), id, |server| {
                server.retry()?;
                stamp_trace(server);
                Ok::<_, ApiError>(())
            })
            .await?;
        reply(onboarding_status_to_proto(&server.onboarding_status()))
    }

    async fn pause_stream(
        &self,
        request: Request<proto::PauseStreamRequest>,
    ) -> Result<Response<proto::Server>, Status> {
        let server = self
            .change_stream(&request, &request.get_ref().server_id, Server::pause_stream)
            .await?;
        reply(server_to_proto(&server))
    }

    async fn resume_stream(
        &self,
        request: Request<proto::ResumeStreamRequest>,
    ) -> Result<Response<proto::Server>, Status> {
        let server = self
            .change_stream(
                &request,
                &request.get_ref().server_id,
                Server::resume_stream,
            )
            .await?;
        reply(server_to_proto(&server))
    }

    async fn restart_stream(
        &self,
        request: Request<proto::RestartStreamRequest>,
    ) -> Result<Response<proto::Server>, Status> {
        let server = self.restart(request).await?;
        reply(server_to_proto(&server))
    }

    async fn list_change_events(
        &self,
        request: Request<proto::ListChangeEventsRequest>,
    ) -> Result<Response<proto::ListChangeEventsResponse>, Status> {
        reply(self.change_events(request).await?)
    }

    async fn list_schema_changes(
        &self,
        request: Request<proto::ListSchemaChangesRequest>,
    ) -> Result<Response<proto::ListSchemaChangesResponse>, Status> {
        reply(self.schema_changes(request).await?)
    }

    async fn revert_changes(
        &self,
        request: Request<proto::RevertChangesRequest>,
    ) -> Result<Response<Self::RevertChangesStream>, Status> {
        Ok(self.revert_changes(request).await?)
    }

    async fn get_row_history(
        &self,
        request: Request<proto::GetRowHistoryRequest>,
    ) -> Result<Response<proto::GetRowHistoryResponse>, Status> {
        reply(self.row_history(request).await?)
    }

    async fn list_audit_events(
        &self,
        request: Request<proto::ListAuditEventsRequest>,
    ) -> Result<Response<proto::ListAuditEventsResponse>, Status> {
        reply(self.audit_events(request).await?)
    }

    async fn check_server(
        &self,
        request: Request<proto::CheckServerRequest>,
    ) -> Result<Response<proto::CheckServerResponse>, Status> {
        let report = ServersApi::check_server(self, request).await?;
        reply(report_to_proto(&report))
    }

    async fn create_webhook(
        &self,
        request: Request<proto::CreateWebhookRequest>,
    ) -> Result<Response<proto::Webhook>, Status> {
        reply(ServersApi::create_webhook(self, request).await?)
    }

    async fn get_webhook(
        &self,
        request: Request<proto::GetWebhookRequest>,
    ) -> Result<Response<proto::Webhook>, Status> {
        reply(ServersApi::get_webhook(self, request).await?)
    }

    async fn list_webhooks(
        &self,
        request: Request<proto::ListWebhooksRequest>,
    ) -> Result<Response<proto::ListWebhooksResponse>, Status> {
        reply(ServersApi::list_webhooks(self, request).await?)
    }

    async fn delete_webhook(
        &self,
        request: Request<proto::DeleteWebhookRequest>,
    ) -> Result<Response<()>, Status> {
        ServersApi::delete_webhook(self, request).await?;
        Ok(Response::new(()))
    }

    async fn list_webhook_deliveries(
        &self,
        request: Request<proto::ListWebhookDeliveriesRequest>,
    ) -> Result<Response<proto::ListWebhookDeliveriesResponse>, Status> {
        reply(ServersApi::list_webhook_deliveries(self, request).await?)
    }

    async fn redeliver_webhook(
        &self,
        request: Request<proto::RedeliverWebhookRequest>,
    ) -> Result<Response<proto::WebhookDelivery>, Status> {
        reply(ServersApi::redeliver_webhook(self, request).await?)
    }
}
