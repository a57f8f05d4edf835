//! CheckServer, and the checks of RegisterServer with validate_only: the preflight
//! (`onboarding::preflight`) against a RegisterServer body or a registered server's stored
//! settings, within the call's deadline, rate-limited per tenant because it connects out.
//! Nothing is written. The auth layer has already required `servers:write`.

use std::time::Duration;

use tonic::{Request, metadata::MetadataMap};
use uuid::Uuid;

use super::{
    admission::parse_grpc_timeout,
    errors::{ApiError, Refusal},
    service::{ServersApi, parse_server_id, principal, registration},
};
use crate::{
    auth::{
        Principal,
        throttle::{Buckets, Rate},
    },
    domain::{Refused, check::Report, server::Server},
    onboarding::preflight::Preflight,
    proto::{self, check_server_request::Target},
};

/// How many tenants the checks' rate limiter tracks at most.
const TRACKED: usize = 100_000;

/// What part of the call's deadline the checks may use: the rest is for answering in time.
const DEADLINE_SHARE: f64 = 0.9;

/// The checks' limits: a rate per tenant, and the longest a run may take.
pub struct CheckLimits {
    rate: Option<Buckets<Uuid>>,
    timeout: Duration,
}

/// The defaults of `--check-rate-limit` and `--check-timeout`.
impl Default for CheckLimits {
    fn default() -> CheckLimits {
        CheckLimits::new(Some(60), Duration::from_secs(15))
    }
}

impl CheckLimits {
    /// `per_minute` runs per tenant (none: unlimited), with bursts of ten seconds' worth (at
    /// least one); each run ends within `timeout`.
    pub fn new(per_minute: Option<u32>, timeout: Duration) -> CheckLimits {
        let rate = per_minute.map(|per_minute| {
            let rate = Rate {
                burst: (f64::from(per_minute) / 6.0).ceil().max(1.0),
                per_second: f64::from(per_minute) / 60.0,
            };
            Buckets::new(rate, TRACKED)
        });
        CheckLimits { rate, timeout }
    }

    /// Takes one of the tenant's runs, or says when the next one is free (counted where
    /// admission control counts its own rate refusals).
    fn admit(&self, principal: &Principal) -> Result<(), Refusal> {
        let Some(buckets) = &self.rate else {
            return Ok(());
        };
        buckets
            .try_take(&principal.tenant_id.uuid())
            .map_err(|retry_after| {
                metrics::counter!("dbtrail_calls_refused_total", "reason" => "rate_limited")
                    .increment(1);
                Refusal::ChecksRateLimited { retry_after }
            })
    }

    /// The run's budget: the timeout, or less of a shorter deadline the caller set.
    fn budget(&self, metadata: &MetadataMap) -> Duration {
        let asked = metadata
            .get("grpc-timeout")
            .and_then(|value| value.to_str().ok())
            .and_then(parse_grpc_timeout)
            .map_or(self.timeout, |deadline| deadline.mul_f64(DEADLINE_SHARE));
        asked.min(self.timeout)
    }
}

impl ServersApi {
    /// CheckServer: the checks of a RegisterServer body or of the caller's registered server.
    pub(super) async fn check_server(
        &self,
        request: Request<proto::CheckServerRequest>,
    ) -> Result<Report, ApiError> {
        let budget = self.check_limits().budget(request.metadata());
        let principal = principal(&request)?;
        let server = match &request.get_ref().target {
            Some(Target::Server(input)) => {
                let (spec, secrets) = registration(Some(&**input), &self.agent().targets)?;
                self.check_resolved_target(&spec).await?;
                self.new_server(principal.tenant_id, spec, &secrets)
            }
            Some(Target::ServerId(id)) => {
                let id = parse_server_id(id, "server_id")?;
                let server = self.store().get_server(principal.tenant_id, id).await?;
                server.ensure_live()?;
                self.agent()
                    .targets
                    .check_literals(&server.spec, "server.")?;
                self.check_resolved_target(&server.spec).await?;
                server
            }
            None => {
                return Err(ApiError::invalid(
                    "server",
                    "is required: set server (a RegisterServer body) or server_id",
                ));
            }
        };
        self.preflight(&principal, server, budget).await
    }

    /// RegisterServer's validate_only: the same checks; any failure is FAILED_PRECONDITION
    /// listing each failed check.
    pub(super) async fn dry_run(
        &self,
        principal: &Principal,
        server: Server,
        metadata: &MetadataMap,
    ) -> Result<(), ApiError> {
        let budget = self.check_limits().budget(metadata);
        let report = self.preflight(principal, server, budget).await?;
        if report.ok() {
            return Ok(());
        }
        Err(Refused::ChecksFailed(report.failures().cloned().collect()).into())
    }

    /// One run of the checks against `server`, seen from this replica's agent, once the tenant's
    /// rate allows it.
    async fn preflight(
        &self,
        principal: &Principal,
        mut server: Server,
        budget: Duration,
    ) -> Result<Report, ApiError> {
        self.check_limits().admit(principal)?;
        // The connections leave from this replica's agent, whatever agent the server has.
        server.agent_outbound_ip = Some(self.agent().outbound_ip.clone());
        let preflight = Preflight {
            server: &server,
            secrets: self.secrets(),
            agent: self.agent(),
            budget,
        };
        Ok(preflight.run().await)
    }
}
