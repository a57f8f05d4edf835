//! The tower layer in front of ServersService: resolves where each call comes from,
//! authenticates it, checks the method's permission, and hands the Principal and the client's
//! address to the handlers through the request extensions. A call refused for a missing
//! permission is recorded in the audit log (the key is known); an unauthenticated one is only
//! counted (`dbtrail_grpc_calls_total{code="Unauthenticated"}`), so a flood of bad keys cannot
//! fill the log.

use std::{net::IpAddr, sync::Arc};

use tonic::Status;
use tower::Layer;

use super::{
    AuthError, Authenticator, Principal,
    client::{ClientAddress, PeerAddress, TrustedProxies},
};
use crate::{
    call_layer::{CallFuture, Movable, Wrap, Wrapped, take_ready},
    domain::{
        Permission,
        audit::{AuditEvent, OUTCOMES, Outcome},
    },
    store::Store,
};

/// gRPC path prefix of the calls that need a key (ServersService's).
pub const SERVICE_PREFIX: &str = "/dbtrail.servers.v1.ServersService/";

/// The permission each RPC needs.
pub fn required_permission(method: &str) -> Option<Permission> {
    Some(match method {
        "ListServers"
        | "GetServer"
        | "GetOnboardingStatus"
        | "WatchOnboarding"
        | "WatchServers" => Permission::Read,
        "RegisterServer" | "UpdateServer" | "ConfirmFirewall" | "RetryOnboarding"
        | "RestartStream" | "PauseStream" | "ResumeStream" | "CheckServer" => Permission::Write,
        "DecommissionServer" => Permission::Delete,
        "ListChangeEvents" | "ListSchemaChanges" | "RevertChanges" | "GetRowHistory" => {
            Permission::ChangesRead
        }
        "ListAuditEvents" => Permission::AuditRead,
        "GetWebhook" | "ListWebhooks" | "ListWebhookDeliveries" => Permission::WebhooksRead,
        "CreateWebhook" | "DeleteWebhook" | "RedeliverWebhook" => Permission::WebhooksWrite,
        _ => return None,
    })
}

/// The peer of a call's connection: the REST layer's PeerAddress, or the gRPC connection's.
fn peer_address(extensions: &http::Extensions) -> Option<IpAddr> {
    extensions
        .get::<PeerAddress>()
        .map(|address| address.0)
        .or_else(|| {
            extensions
                .get::<tonic::transport::server::TcpConnectInfo>()
                .and_then(|info| info.remote_addr())
                .map(|address| address.ip())
        })
}

/// Authenticates ServersService calls; other services (health, reflection) pass untouched.
#[derive(Clone)]
pub struct AuthLayer {
    shared: Arc<Shared>,
}

/// What every call of the layer uses, shared (one clone per call).
struct Shared {
    authenticator: Arc<Authenticator>,
    trusted_proxies: TrustedProxies,
    /// Where a refused call's audit record goes.
    audit: Store,
}

impl AuthLayer {
    /// A layer over this authenticator, believing `X-Forwarded-For` from `trusted_proxies`,
    /// recording permission refusals in `audit`'s log.
    pub fn new(
        authenticator: Arc<Authenticator>,
        trusted_proxies: TrustedProxies,
        audit: Store,
    ) -> AuthLayer {
        AuthLayer {
            shared: Arc::new(Shared {
                authenticator,
                trusted_proxies,
                audit,
            }),
        }
    }
}

impl<S> Layer<S> for AuthLayer {
    type Service = Wrapped<S, AuthLayer>;

    fn layer(&self, inner: S) -> Wrapped<S, AuthLayer> {
        Wrapped::new(inner, self.clone())
    }
}

impl<S, B> Wrap<S, B> for AuthLayer
where
    S: Movable<B>,
    B: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;

    fn wrap(
        &self,
        inner: &mut S,
        mut request: http::Request<B>,
    ) -> CallFuture<Self::Response, S::Error> {
        let Some(method) = request.uri().path().strip_prefix(SERVICE_PREFIX) else {
            return Box::pin(inner.call(request));
        };
        // Fail closed: a method without a permission in the table never reaches a handler, and a
        // made-up name does not become a metric series.
        let Some(permission) = required_permission(method) else {
            let error = AuthError::UnknownMethod;
            record_rejection("unknown", &error);
            let refused = Status::from(error).into_http();
            return Box::pin(async move { Ok(refused) });
        };
        let method = method.to_owned();
        let mut inner = take_ready(inner);
        let layer = self.shared.clone();
        Box::pin(async move {
            let client = peer_address(request.extensions())
                .map(|peer| layer.trusted_proxies.client(peer, request.headers()));
            if let Some(client) = client {
                request.extensions_mut().insert(ClientAddress(client));
            }
            let authenticated = match one_authorization(request.headers()) {
                Ok(header) => layer.authenticator.authenticate(header, client).await,
                Err(error) => Err(error),
            };
            let principal = match authenticated {
                Ok(principal) => principal,
                Err(error) => {
                    record_rejection(&method, &error);
                    return Ok(Status::from(error).into_http());
                }
            };
            if let Err(error) = principal.require(permission) {
                record_rejection(&method, &error);
                let status = Status::from(error);
                layer
                    .record_denial(&principal, &method, request.headers(), client, &status)
                    .await;
                return Ok(status.into_http());
            }
            request.extensions_mut().insert(principal);
            inner.call(request).await
        })
    }
}

impl Shared {
    /// Records a call refused for a missing permission: who tried which method (the request is
    /// not read, so no server is named).
    async fn record_denial(
        &self,
        principal: &Principal,
        method: &str,
        headers: &http::HeaderMap,
        client: Option<IpAddr>,
        status: &Status,
    ) {
        let request_id = crate::grpc::client_request_id(headers).unwrap_or_default();
        let outcome = Outcome {
            code: OUTCOMES[status.code() as usize].to_owned(),
            reason: "MISSING_PERMISSION".to_owned(),
        };
        let actor = principal.actor(method, request_id, client);
        let event = AuditEvent::new(actor, None, Vec::new(), outcome);
        self.audit.record_refusal(&event).await;
    }
}

/// The one authorization header of a call (none when absent); two or more are refused rather than
/// one picked, so that a proxy that adds its own cannot decide who the caller is.
fn one_authorization(headers: &http::HeaderMap) -> Result<Option<&str>, AuthError> {
    let mut values = headers.get_all(http::header::AUTHORIZATION).iter();
    match (values.next(), values.next()) {
        (None, _) => Ok(None),
        (Some(value), None) => Ok(Some(value.to_str().unwrap_or(""))),
        (Some(_), Some(_)) => Err(AuthError::DuplicateCredentials),
    }
}

fn record_rejection(method: &str, error: &AuthError) {
    let code = Status::from(error.clone()).code();
    tracing::info!(method, %error, "call rejected");
    metrics::counter!(
        "dbtrail_grpc_calls_total",
        "method" => method.to_owned(),
        "code" => format!("{code:?}")
    )
    .increment(1);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_rpc_of_the_service_needs_a_permission_and_nothing_else_passes() {
        let pool = prost_reflect::DescriptorPool::decode(crate::proto::FILE_DESCRIPTOR_SET)
            .expect("the embedded descriptors");
        let service = pool
            .get_service_by_name("dbtrail.servers.v1.ServersService")
            .expect("the service");
        for method in service.methods() {
            assert!(
                required_permission(method.name()).is_some(),
                "{} has no permission: it would be refused",
                method.name()
            );
        }
        assert_eq!(required_permission("Nope1"), None);
    }
}
