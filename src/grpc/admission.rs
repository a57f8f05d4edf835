//! Admission control, behind authentication: per-tenant and per-key rate limits (token buckets),
//! a per-replica limit of calls in flight with a bounded queue (beyond it a call is shed at once),
//! caps on open watch streams per key and per replica, and a deadline on every unary call (the
//! caller's `grpc-timeout` or the default, whichever is shorter).

use std::{
    collections::HashMap,
    pin::Pin,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use http_body::{Body as HttpBody, Frame, SizeHint};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::Status;
use tower::Layer;
use uuid::Uuid;

use super::errors::Refusal;
use crate::{
    auth::{
        Principal,
        throttle::{Buckets, Rate},
    },
    call_layer::{CallFuture, Movable, Wrap, Wrapped, take_ready},
};

/// How much earlier than the caller's deadline a call is given up.
const DEADLINE_MARGIN: Duration = Duration::from_millis(1);

/// How many tenants and keys the rate limiter tracks at most.
const TRACKED: usize = 100_000;

/// The limits, from the configuration.
#[derive(Debug, Clone, Copy)]
pub struct AdmissionSettings {
    /// Calls running at once on this replica.
    pub max_in_flight: usize,
    /// Calls waiting for one of those slots; beyond, calls are shed.
    pub max_queued: usize,
    /// Per tenant; none is unlimited.
    pub tenant_rate: Option<Rate>,
    /// Per API key; none is unlimited.
    pub key_rate: Option<Rate>,
    /// Open watch streams (WatchOnboarding and WatchServers together) on this replica, and per
    /// key.
    pub max_watches: usize,
    pub max_watches_per_key: usize,
    /// The deadline of a unary call that names none (or a longer one).
    pub call_timeout: Duration,
}

/// The state every call of a replica shares.
struct Admission {
    settings: AdmissionSettings,
    slots: Arc<Semaphore>,
    queued: AtomicUsize,
    tenants: Option<Buckets<Uuid>>,
    keys: Option<Buckets<Uuid>>,
    watches: Mutex<Watches>,
}

#[derive(Default)]
struct Watches {
    open: usize,
    by_key: HashMap<Uuid, usize>,
}

/// An open watch, counted until its response body is dropped.
struct WatchGuard {
    admission: Arc<Admission>,
    key: Uuid,
}

impl Drop for WatchGuard {
    fn drop(&mut self) {
        let mut watches = self.admission.watches();
        watches.open -= 1;
        if let Some(count) = watches.by_key.get_mut(&self.key) {
            *count -= 1;
            if *count == 0 {
                watches.by_key.remove(&self.key);
            }
        }
    }
}

impl Admission {
    fn watches(&self) -> std::sync::MutexGuard<'_, Watches> {
        self.watches
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn check_rates(&self, principal: &Principal) -> Result<(), Refusal> {
        let limited = |scope, buckets: &Option<Buckets<Uuid>>, id: Uuid| match buckets {
            Some(buckets) => buckets
                .try_take(&id)
                .map_err(|retry_after| Refusal::RateLimited { scope, retry_after }),
            None => Ok(()),
        };
        limited("tenant", &self.tenants, principal.tenant_id.uuid())?;
        limited("API key", &self.keys, principal.key_id)
    }

    fn open_watch(self: &Arc<Self>, key: Uuid) -> Result<WatchGuard, Refusal> {
        let settings = self.settings;
        let mut watches = self.watches();
        if watches.open >= settings.max_watches {
            return Err(Refusal::TooManyWatches {
                scope: "replica",
                limit: settings.max_watches,
            });
        }
        let of_key = watches.by_key.entry(key).or_default();
        if *of_key >= settings.max_watches_per_key {
            return Err(Refusal::TooManyWatches {
                scope: "API key",
                limit: settings.max_watches_per_key,
            });
        }
        *of_key += 1;
        watches.open += 1;
        Ok(WatchGuard {
            admission: self.clone(),
            key,
        })
    }

    /// A slot to run in: at once, after waiting in the bounded queue, or none (shed).
    async fn slot(&self) -> Result<OwnedSemaphorePermit, Refusal> {
        if let Ok(permit) = self.slots.clone().try_acquire_owned() {
            return Ok(permit);
        }
        let _place = Queued::join(&self.queued, self.settings.max_queued)?;
        self.slots
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| Refusal::Overloaded)
    }
}

/// A place in the queue, given back when the wait ends however it ends (a slot, the deadline, or
/// the caller going away).
struct Queued<'a>(&'a AtomicUsize);

impl<'a> Queued<'a> {
    fn join(queued: &'a AtomicUsize, max: usize) -> Result<Queued<'a>, Refusal> {
        let place = Queued(queued);
        if queued.fetch_add(1, Ordering::AcqRel) >= max {
            return Err(Refusal::Overloaded);
        }
        Ok(place)
    }
}

impl Drop for Queued<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The `grpc-timeout` header: an integer of at most 8 digits and a unit (H M S m u n).
fn grpc_timeout(headers: &http::HeaderMap) -> Option<Duration> {
    parse_grpc_timeout(headers.get("grpc-timeout")?.to_str().ok()?)
}

/// A `grpc-timeout` value: an integer of at most 8 digits and a unit (H M S m u n).
pub(super) fn parse_grpc_timeout(value: &str) -> Option<Duration> {
    let (digits, unit) = value.split_at(value.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 {
        return None;
    }
    let amount: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(amount * 3600),
        "M" => Duration::from_secs(amount * 60),
        "S" => Duration::from_secs(amount),
        "m" => Duration::from_millis(amount),
        "u" => Duration::from_micros(amount),
        "n" => Duration::from_nanos(amount),
        _ => return None,
    })
}

/// Every reason `dbtrail_calls_refused_total` counts; each series exists from the start, so a
/// rate over it is 0 rather than absent before the first refusal.
const REFUSAL_REASONS: [&str; 4] = [
    "rate_limited",
    "overloaded",
    "too_many_watches",
    "deadline_exceeded",
];

fn refused(refusal: Refusal) -> http::Response<tonic::body::Body> {
    let reason = match &refusal {
        Refusal::RateLimited { .. } | Refusal::ChecksRateLimited { .. } => REFUSAL_REASONS[0],
        Refusal::Overloaded => REFUSAL_REASONS[1],
        Refusal::TooManyWatches { .. } => REFUSAL_REASONS[2],
        Refusal::DeadlineExceeded { .. } => REFUSAL_REASONS[3],
    };
    metrics::counter!("dbtrail_calls_refused_total", "reason" => reason).increment(1);
    Status::from(refusal).into_http()
}

/// The layer in front of ServersService's handlers.
#[derive(Clone)]
pub struct AdmissionLayer {
    admission: Arc<Admission>,
}

impl AdmissionLayer {
    /// A layer with these limits, shared by every service it wraps.
    pub fn new(settings: AdmissionSettings) -> AdmissionLayer {
        for reason in REFUSAL_REASONS {
            metrics::counter!("dbtrail_calls_refused_total", "reason" => reason).increment(0);
        }
        let buckets = |rate: Option<Rate>| rate.map(|rate| Buckets::new(rate, TRACKED));
        AdmissionLayer {
            admission: Arc::new(Admission {
                settings,
                slots: Arc::new(Semaphore::new(settings.max_in_flight)),
                queued: AtomicUsize::new(0),
                tenants: buckets(settings.tenant_rate),
                keys: buckets(settings.key_rate),
                watches: Mutex::new(Watches::default()),
            }),
        }
    }
}

impl<S> Layer<S> for AdmissionLayer {
    type Service = Wrapped<S, AdmissionLayer>;

    fn layer(&self, inner: S) -> Wrapped<S, AdmissionLayer> {
        Wrapped::new(inner, self.clone())
    }
}

impl<S, B> Wrap<S, B> for AdmissionLayer
where
    S: Movable<B>,
    B: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;

    fn wrap(
        &self,
        inner: &mut S,
        request: http::Request<B>,
    ) -> CallFuture<Self::Response, S::Error> {
        // Only authenticated ServersService calls carry a principal; health and reflection pass.
        let Some(principal) = request.extensions().get::<Principal>().cloned() else {
            return Box::pin(inner.call(request));
        };
        let mut inner = take_ready(inner);
        let admission = self.admission.clone();
        Box::pin(async move {
            if let Err(refusal) = admission.check_rates(&principal) {
                return Ok(refused(refusal));
            }
            if is_watch(request.uri().path()) {
                let guard = match admission.open_watch(principal.key_id) {
                    Ok(guard) => guard,
                    Err(refusal) => return Ok(refused(refusal)),
                };
                let response = inner.call(request).await?;
                return Ok(response.map(|body| {
                    tonic::body::Body::new(Guarded {
                        body,
                        _guard: guard,
                    })
                }));
            }
            // A caller's deadline is answered a millisecond early, so the caller hears
            // DEADLINE_EXCEEDED from here rather than the transport's own CANCELLED.
            let deadline =
                grpc_timeout(request.headers()).map_or(admission.settings.call_timeout, |asked| {
                    asked
                        .saturating_sub(DEADLINE_MARGIN)
                        .min(admission.settings.call_timeout)
                });
            // A deadline under the timer's millisecond resolution has as good as passed: not
            // worth a query (and the timer would notice it only at its next tick, after a fast
            // call may have run anyway).
            if deadline < DEADLINE_MARGIN {
                return Ok(refused(Refusal::DeadlineExceeded { deadline }));
            }
            let admitted = async {
                let _slot = match admission.slot().await {
                    Ok(slot) => slot,
                    Err(refusal) => return Ok(refused(refusal)),
                };
                inner.call(request).await
            };
            match tokio::time::timeout(deadline, admitted).await {
                Ok(response) => response,
                Err(_) => Ok(refused(Refusal::DeadlineExceeded { deadline })),
            }
        })
    }
}

/// Whether a call opens a watch stream, which holds a place among the watches instead of a
/// call slot.
fn is_watch(path: &str) -> bool {
    path.ends_with("/WatchOnboarding") || path.ends_with("/WatchServers")
}

/// A response body that holds its watch's place until it is dropped.
struct Guarded {
    body: tonic::body::Body,
    /// Never read: dropped with the body, it gives the watch's place back.
    _guard: WatchGuard,
}

impl HttpBody for Guarded {
    type Data = <tonic::body::Body as HttpBody>::Data;
    type Error = <tonic::body::Body as HttpBody>::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        context: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.get_mut().body).poll_frame(context)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_place_in_the_queue_is_given_back_however_the_wait_ends() {
        let queued = AtomicUsize::new(0);
        {
            let _first = Queued::join(&queued, 1).expect("room for one");
            assert!(Queued::join(&queued, 1).is_err(), "no room for two");
            assert_eq!(queued.load(Ordering::Acquire), 1);
        }
        assert_eq!(queued.load(Ordering::Acquire), 0);
    }

    #[test]
    fn grpc_timeouts_parse_and_nonsense_is_ignored() {
        let headers = |value: &str| {
            let mut headers = http::HeaderMap::new();
            headers.insert("grpc-timeout", value.parse().unwrap());
            headers
        };
        assert_eq!(
            grpc_timeout(&headers("250m")),
            Some(Duration::from_millis(250))
        );
        assert_eq!(grpc_timeout(&headers("2S")), Some(Duration::from_secs(2)));
        assert_eq!(
            grpc_timeout(&headers("1H")),
            Some(Duration::from_secs(3600))
        );
        assert_eq!(grpc_timeout(&headers("123456789S")), None);
        assert_eq!(grpc_timeout(&headers("10x")), None);
        assert_eq!(grpc_timeout(&headers("S")), None);
        assert_eq!(grpc_timeout(&http::HeaderMap::new()), None);
    }
}
