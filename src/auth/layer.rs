//! The tower layer in front of ServersService: authenticates every call, checks the method's
//! permission, and hands the Principal to the handlers through the request extensions.

use std::{net::IpAddr, sync::Arc};

use tonic::Status;
use tower::Layer;

use super::{AuthError, Authenticator};
use crate::{
    call_layer::{CallFuture, Movable, Wrap, Wrapped, take_ready},
    domain::Permission,
};

/// gRPC path prefix of the calls that need a key.
const SERVICE_PREFIX: &str = "/dbtrail.servers.v1.ServersService/";

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
        "GetWebhook" | "ListWebhooks" | "ListWebhookDeliveries" => Permission::WebhooksRead,
        "CreateWebhook" | "DeleteWebhook" | "RedeliverWebhook" => Permission::WebhooksWrite,
        _ => return None,
    })
}

/// The address a call came from, for calls that do not arrive on the gRPC listener's own
/// connections (the REST layer inserts it into the call's extensions).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientAddress(pub IpAddr);

/// Where a call came from: the REST layer's ClientAddress, or the gRPC connection's peer.
fn client_address(extensions: &http::Extensions) -> Option<IpAddr> {
    extensions
        .get::<ClientAddress>()
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
    authenticator: Arc<Authenticator>,
}

impl AuthLayer {
    /// A layer over this authenticator.
    pub fn new(authenticator: Arc<Authenticator>) -> AuthLayer {
        AuthLayer { authenticator }
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
        let authenticator = self.authenticator.clone();
        Box::pin(async move {
            let checked = match one_authorization(request.headers()) {
                Ok(header) => {
                    let client = client_address(request.extensions());
                    authenticator
                        .authenticate(header, client)
                        .await
                        .and_then(|principal| principal.require(permission).map(|()| principal))
                }
                Err(error) => Err(error),
            };
            match checked {
                Ok(principal) => {
                    request.extensions_mut().insert(principal);
                    inner.call(request).await
                }
                Err(error) => {
                    record_rejection(&method, &error);
                    Ok(Status::from(error).into_http())
                }
            }
        })
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
