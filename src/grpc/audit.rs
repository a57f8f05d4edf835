//! The audit log's side of a call, as a tower layer inside authentication and admission: each
//! call of a method that changes something ([`AUDITED`]) gets its [`AuditedCall`] (who, and
//! later which server), which the handler's transaction records with the change when the call
//! succeeds; when it is refused (bad input, a failed precondition, a server not found), this
//! layer records the refusal. So every such call is recorded exactly once. (A missing
//! permission is recorded by the auth layer, whatever the method; an unauthenticated call only
//! counted; a call shed by admission control not at all.)

use std::sync::{Arc, OnceLock};

use tonic::{Code, Request, Status};
use tonic_types::StatusExt;
use tower::Service;

use super::{client_request_id, errors::ApiError};
use crate::{
    auth::{ClientAddress, Principal, SERVICE_PREFIX},
    call_layer::{CallFuture, Wrap, Wrapped},
    domain::{
        ServerId,
        audit::{Actor, AuditEvent, OUTCOMES, Outcome},
    },
    store::{Store, StoreError},
};

/// The methods that change something: each call is in the audit log once.
pub const AUDITED: [&str; 11] = [
    "RegisterServer",
    "UpdateServer",
    "DecommissionServer",
    "ConfirmFirewall",
    "RetryOnboarding",
    "RestartStream",
    "PauseStream",
    "ResumeStream",
    "CreateWebhook",
    "DeleteWebhook",
    "RedeliverWebhook",
];

/// One audited call, in its request's extensions: its caller, for the handler's transaction to
/// record, and the server it concerns once the handler has read it, for a refusal's record.
#[derive(Debug)]
pub struct AuditedCall {
    actor: Actor,
    server: OnceLock<ServerId>,
}

impl AuditedCall {
    /// Who makes the call.
    pub fn actor(&self) -> &Actor {
        &self.actor
    }

    /// The call concerns this server (the first one named is kept).
    pub fn concerns(&self, server: ServerId) {
        let _ = self.server.set(server);
    }
}

/// The audited call of a request (the layer inserts it before any handler runs).
pub(super) fn audited<T>(request: &Request<T>) -> Result<Arc<AuditedCall>, ApiError> {
    request
        .extensions()
        .get::<Arc<AuditedCall>>()
        .cloned()
        .ok_or_else(|| {
            // Fail closed: a change must not go unrecorded because the stack was built without
            // the layer.
            ApiError::Store(StoreError::Corrupt(
                "the call has no audit context: the audit layer is missing".into(),
            ))
        })
}

/// How the REST layer answers a request it could not translate into its RPC (a body that is
/// not JSON, an unknown field): it runs the probe of the stack's layers with this, and a
/// caller they admit is refused so; this layer records it like any refusal.
#[derive(Debug, Clone)]
pub struct Untranslated {
    pub code: Code,
    pub reason: String,
}

/// Records the refused calls of the audited methods (see the module's doc).
#[derive(Clone)]
pub struct AuditLayer {
    store: Arc<Store>,
}

impl AuditLayer {
    /// Records into `store`'s audit log.
    pub fn new(store: Store) -> AuditLayer {
        AuditLayer {
            store: Arc::new(store),
        }
    }
}

impl<S> tower::Layer<S> for AuditLayer {
    type Service = Wrapped<S, AuditLayer>;

    fn layer(&self, inner: S) -> Wrapped<S, AuditLayer> {
        Wrapped::new(inner, self.clone())
    }
}

/// The outcome of a response: none when it is OK (a result, or an opened stream).
fn refusal<B>(response: &http::Response<B>) -> Option<Outcome> {
    let code = response.headers().get("grpc-status")?;
    if code.as_bytes() == b"0" {
        return None;
    }
    let status = Status::from_header_map(response.headers())?;
    Some(outcome_of(&status))
}

/// A refusal's outcome: the code's name and the ErrorInfo reason.
fn outcome_of(status: &Status) -> Outcome {
    Outcome {
        code: OUTCOMES
            .get(status.code() as usize)
            .copied()
            .unwrap_or("UNKNOWN")
            .to_owned(),
        reason: status
            .get_details_error_info()
            .map(|info| info.reason)
            .unwrap_or_default(),
    }
}

impl<S, B, R> Wrap<S, B> for AuditLayer
where
    S: Service<http::Request<B>, Response = http::Response<R>>,
    S::Future: Send + 'static,
    R: Send + 'static,
{
    type Response = S::Response;

    fn wrap(
        &self,
        inner: &mut S,
        mut request: http::Request<B>,
    ) -> CallFuture<S::Response, S::Error> {
        let method = request
            .uri()
            .path()
            .strip_prefix(SERVICE_PREFIX)
            .and_then(|name| AUDITED.iter().find(|audited| **audited == name));
        let principal = request.extensions().get::<Principal>();
        let (Some(method), Some(principal)) = (method, principal) else {
            return Box::pin(inner.call(request));
        };
        let client = request
            .extensions()
            .get::<ClientAddress>()
            .map(|address| address.0);
        let request_id = client_request_id(request.headers()).unwrap_or_default();
        let call = Arc::new(AuditedCall {
            actor: principal.actor(method, request_id, client),
            server: OnceLock::new(),
        });
        let untranslated = request.extensions().get::<Untranslated>().cloned();
        request.extensions_mut().insert(call.clone());
        let store = self.store.clone();
        let answer = inner.call(request);
        Box::pin(async move {
            let response = answer.await?;
            let outcome = refusal(&response).or_else(|| {
                untranslated.map(|untranslated| Outcome {
                    code: OUTCOMES[untranslated.code as usize].to_owned(),
                    reason: untranslated.reason,
                })
            });
            if let Some(outcome) = outcome {
                let server = call.server.get().copied();
                let event = AuditEvent::new(call.actor.clone(), server, Vec::new(), outcome);
                store.record_refusal(&event).await;
            }
            Ok(response)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_audited_method_is_a_method_of_the_service() {
        let pool = prost_reflect::DescriptorPool::decode(crate::proto::FILE_DESCRIPTOR_SET)
            .expect("the embedded descriptors");
        let service = pool
            .get_service_by_name("dbtrail.servers.v1.ServersService")
            .expect("the service");
        for method in AUDITED {
            assert!(
                service
                    .methods()
                    .any(|described| described.name() == method),
                "{method}"
            );
        }
    }

    #[test]
    fn a_refusal_is_its_code_name_and_reason() {
        let status = crate::grpc::errors::invalid_argument(&crate::domain::Violations::one(
            "server.port",
            "is 0",
        ));
        let response = status.into_http::<tonic::body::Body>();
        assert_eq!(
            refusal(&response),
            Some(Outcome {
                code: "INVALID_ARGUMENT".into(),
                reason: "INVALID_ARGUMENT".into()
            })
        );
        assert_eq!(refusal(&http::Response::new(())), None);
    }
}
