//! Webhooks: a tenant's subscription to events of its servers (a URL, the event types, a signing
//! secret), its deliveries, and the rules of the contract a receiver relies on: which URLs are
//! accepted, how a body is signed, and how long a failing delivery waits before its next try.

use std::{fmt, net::IpAddr, time::Duration};

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use chrono::{DateTime, Utc};
use hmac::{KeyInit, Mac};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::{
    ConnectionMethod, ServerId, TenantId, Violations, server::Sealed, target::TargetPolicy,
};

/// Most webhooks one tenant may have.
pub const MAX_WEBHOOKS_PER_TENANT: usize = 20;
/// Longest webhook URL, in characters.
pub const MAX_URL_LENGTH: usize = 2048;
/// What a signing secret starts with, so that one pasted in the wrong place is recognised.
pub const SECRET_PREFIX: &str = "whsec_";
/// The longest retry delay, whatever the attempt.
pub const MAX_RETRY_DELAY: Duration = Duration::from_secs(3600);
/// The most characters of a receiver's answer or of a failure kept as a delivery's last error.
pub const MAX_ERROR_LENGTH: usize = 200;

/// The headers of a delivery (docs/api.md, "Webhooks").
pub mod headers {
    /// The delivery's id: the same on every attempt, the receiver's idempotency key.
    pub const DELIVERY_ID: &str = "dbtrail-webhook-id";
    /// The event type.
    pub const EVENT: &str = "dbtrail-event";
    /// Unix seconds when the attempt was signed.
    pub const TIMESTAMP: &str = "dbtrail-timestamp";
    /// `v1=` and the hex HMAC-SHA256 of `<timestamp>.<body>` under the signing secret.
    pub const SIGNATURE: &str = "dbtrail-signature";
}

wire_enum!(
    /// What happened to a server, as a webhook subscribes to it.
    EventType {
        ServerStatusChanged = "server_status_changed",
        StreamStateChanged = "stream_state_changed",
        OnboardingFailed = "onboarding_failed",
        LostPosition = "lost_position",
        Decommissioned = "decommissioned",
    }
);

wire_enum!(
    /// Where a delivery stands.
    DeliveryStatus { Pending = "pending", Delivered = "delivered", Dead = "dead" }
);

/// Declares an id newtype over a UUID, parsed from a client's text.
macro_rules! uuid_id {
    ($(#[$meta:meta])* $name:ident) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(Uuid);

        impl $name {
            /// The id a stored row carries.
            pub fn from_uuid(uuid: Uuid) -> $name {
                $name(uuid)
            }

            /// The UUID inside, for the store and the wire.
            pub fn uuid(self) -> Uuid {
                self.0
            }

            /// Parses a client-supplied id.
            pub fn parse(text: &str) -> Option<$name> {
                Uuid::try_parse(text).ok().map($name)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(formatter)
            }
        }
    };
}

uuid_id!(
    /// A webhook's id.
    WebhookId
);
uuid_id!(
    /// A delivery's id: one event to one webhook, kept across its attempts.
    DeliveryId
);

impl WebhookId {
    /// A new, time-ordered id.
    pub fn generate() -> WebhookId {
        WebhookId(Uuid::now_v7())
    }
}

/// A webhook's URL: https (http only where allowed), a host, no credentials, no fragment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookUrl(url::Url);

impl WebhookUrl {
    /// Parses a client's URL; `allow_http` is the deployment's `--allow-http-webhooks`.
    pub fn parse(text: &str, allow_http: bool) -> Result<WebhookUrl, String> {
        if text.is_empty() {
            return Err("is required: the https URL deliveries are POSTed to".to_owned());
        }
        let length = text.chars().count();
        if length > MAX_URL_LENGTH {
            return Err(format!("is {length} characters; at most {MAX_URL_LENGTH}"));
        }
        let url = url::Url::parse(text).map_err(|error| {
            format!("is not a URL ({error}); e.g. https://hooks.example.com/dbtrail")
        })?;
        match url.scheme() {
            "https" => {}
            "http" if allow_http => {}
            "http" => {
                return Err(
                    "is http://: deliveries are sent over https only (a development \
                     deployment may allow http with --allow-http-webhooks)"
                        .to_owned(),
                );
            }
            other => return Err(format!("has scheme {other:?}; use https")),
        }
        if url.host_str().is_none_or(str::is_empty) {
            return Err("has no host".to_owned());
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(
                "carries credentials (user:password@): authenticate deliveries by their \
                 signature instead"
                    .to_owned(),
            );
        }
        if url.fragment().is_some() {
            return Err("has a #fragment, which is never sent; remove it".to_owned());
        }
        Ok(WebhookUrl(url))
    }

    /// A stored URL, checked when it was accepted.
    pub fn stored(text: &str) -> Option<WebhookUrl> {
        url::Url::parse(text).ok().map(WebhookUrl)
    }

    /// The URL as the client wrote it (normalised).
    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }

    /// The parsed URL.
    pub fn url(&self) -> &url::Url {
        &self.0
    }

    /// The host: a DNS name, or an IP literal.
    pub fn host(&self) -> &str {
        self.0.host_str().unwrap_or_default()
    }

    /// The host as an address, when it is an IP literal.
    pub fn literal_address(&self) -> Option<IpAddr> {
        match self.0.host()? {
            url::Host::Ipv4(address) => Some(IpAddr::V4(address)),
            url::Host::Ipv6(address) => Some(IpAddr::V6(address)),
            url::Host::Domain(_) => None,
        }
    }

    /// Whether deliveries go over TLS.
    pub fn is_https(&self) -> bool {
        self.0.scheme() == "https"
    }

    /// The port, the scheme's when none is written.
    pub fn port(&self) -> u16 {
        self.0.port_or_known_default().unwrap_or(443)
    }
}

/// Why the target policy refuses a webhook's host at `address`, if it does: a receiver is
/// judged as a direct server is (the service connects to it from its own network).
pub fn refused_address(policy: &TargetPolicy, address: IpAddr) -> Option<&'static str> {
    policy.refusal(address, ConnectionMethod::Direct)
}

/// The target policy's check of a webhook URL: its host literal, or what its name resolves to
/// now (`resolved`), as one violation of `field`.
pub fn check_target(
    policy: &TargetPolicy,
    url: &WebhookUrl,
    resolved: &[IpAddr],
    field: &str,
) -> Result<(), Violations> {
    let host = url.host();
    if let Some(address) = url.literal_address() {
        return match refused_address(policy, address) {
            Some(reason) => Err(Violations::one(field, format!("{host} is {reason}"))),
            None => Ok(()),
        };
    }
    let refused = resolved
        .iter()
        .find_map(|address| Some((address, refused_address(policy, *address)?)));
    match refused {
        Some((address, reason)) => Err(Violations::one(
            field,
            format!("{host} resolves to {address}, {reason}"),
        )),
        None => Ok(()),
    }
}

/// What a webhook is made of, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookSpec {
    pub url: WebhookUrl,
    /// The event types, each once, in declaration order.
    pub events: Vec<EventType>,
}

impl WebhookSpec {
    /// A webhook's URL and events, every problem reported at once under `prefix`. `events`
    /// holds `None` for a value that names no event type.
    pub fn new(
        url: &str,
        events: &[Option<EventType>],
        allow_http: bool,
        prefix: &str,
    ) -> Result<WebhookSpec, Violations> {
        let mut violations = Violations::default();
        let url = violations.check(format!("{prefix}url"), WebhookUrl::parse(url, allow_http));
        if events.is_empty() {
            violations.add(
                format!("{prefix}events"),
                format!(
                    "is required: at least one of {}",
                    EventType::ALL
                        .iter()
                        .map(|event| event.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            );
        }
        if events.len() > EventType::ALL.len() {
            violations.add(
                format!("{prefix}events"),
                format!(
                    "has {} entries; at most {}, one per event type",
                    events.len(),
                    EventType::ALL.len()
                ),
            );
        }
        for (index, event) in events.iter().enumerate() {
            if event.is_none() {
                violations.add(
                    format!("{prefix}events[{index}]"),
                    "is not an event type (server_status_changed, stream_state_changed, \
                     onboarding_failed, lost_position, decommissioned)",
                );
            }
        }
        violations.into_result()?;
        let events = EventType::ALL
            .iter()
            .copied()
            .filter(|kind| events.contains(&Some(*kind)))
            .collect();
        Ok(WebhookSpec {
            url: url.ok_or_else(Violations::default)?,
            events,
        })
    }
}

/// A new signing secret: 32 random bytes, base64url, behind [`SECRET_PREFIX`].
pub fn generate_secret() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    format!("{SECRET_PREFIX}{}", URL_SAFE_NO_PAD.encode(bytes))
}

/// A webhook as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Webhook {
    pub id: WebhookId,
    pub tenant_id: TenantId,
    pub spec: WebhookSpec,
    /// The signing secret, sealed.
    pub secret: Sealed,
    pub created_at: DateTime<Utc>,
}

/// The context a webhook's secret is sealed under, so sealed secrets cannot be swapped around.
pub fn secret_context(id: WebhookId) -> String {
    format!("webhook/{id}/signing_secret")
}

/// One event to one webhook, with where its sending stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    pub id: DeliveryId,
    pub webhook_id: WebhookId,
    pub event_id: Uuid,
    pub event_type: EventType,
    pub server_id: ServerId,
    pub status: DeliveryStatus,
    /// Attempts begun, a replica's that died before it finished included.
    pub attempts: i32,
    pub last_response_code: Option<i32>,
    pub last_error: Option<String>,
    /// When the next attempt is due, while pending.
    pub next_attempt_at: Option<DateTime<Utc>>,
    pub last_attempt_at: Option<DateTime<Utc>>,
    pub delivered_at: Option<DateTime<Utc>>,
    /// When the event happened.
    pub created_at: DateTime<Utc>,
}

/// The `dbtrail-signature` value of a body sent at `timestamp` (unix seconds): `v1=` and the hex
/// HMAC-SHA256 of `<timestamp>.<body>` keyed with the secret's text.
pub fn signature(secret: &str, timestamp: i64, body: &[u8]) -> String {
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes())
        .unwrap_or_else(|_| unreachable!("HMAC takes a key of any length"));
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("v1={}", hex::encode(mac.finalize().into_bytes()))
}

/// How long a delivery waits after its `attempts`-th failed attempt: "full jitter", a uniform
/// share (`unit` in 0..1) of `base` doubled per attempt, capped at `cap`.
pub fn retry_delay(attempts: i32, base: Duration, cap: Duration, unit: f64) -> Duration {
    let doublings = u32::try_from(attempts.saturating_sub(1))
        .unwrap_or(0)
        .min(30);
    let ceiling = base.saturating_mul(1 << doublings).min(cap);
    ceiling.mul_f64(unit.clamp(0.0, 1.0))
}

/// `text` cut to [`MAX_ERROR_LENGTH`] characters, control characters replaced, for a delivery's
/// last error: a receiver's answer is shown to the tenant and must stay short.
pub fn short_error(text: &str) -> String {
    let mut short: String = text
        .chars()
        .map(|character| {
            if character.is_control() {
                ' '
            } else {
                character
            }
        })
        .take(MAX_ERROR_LENGTH)
        .collect();
    if text.chars().count() > MAX_ERROR_LENGTH {
        short.pop();
        short.push('…');
    }
    short
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_must_be_https_with_a_host_and_no_credentials() {
        assert!(WebhookUrl::parse("https://hooks.example.com/dbtrail?x=1", false).is_ok());
        let refused = |text: &str, allow_http| WebhookUrl::parse(text, allow_http).unwrap_err();
        assert!(refused("http://hooks.example.com/", false).contains("--allow-http-webhooks"));
        assert!(WebhookUrl::parse("http://127.0.0.1:9000/", true).is_ok());
        assert!(refused("ftp://example.com/", true).contains("scheme"));
        assert!(refused("https://user:pw@example.com/", false).contains("credentials"));
        assert!(refused("https://example.com/#x", false).contains("fragment"));
        assert!(refused("not a url", false).contains("not a URL"));
        assert!(refused("", false).contains("required"));
        let long = format!("https://example.com/{}", "a".repeat(MAX_URL_LENGTH));
        assert!(refused(&long, false).contains("at most"));
        let url = WebhookUrl::parse("https://[::1]:8443/x", false).unwrap();
        assert_eq!(url.literal_address(), Some("::1".parse().unwrap()));
        assert_eq!(url.port(), 8443);
    }

    #[test]
    fn metadata_and_loopback_receivers_are_refused_named_or_literal() {
        let policy = TargetPolicy::new(Vec::new(), Vec::new(), false);
        let metadata = WebhookUrl::parse("https://169.254.169.254/latest", false).unwrap();
        let error = check_target(&policy, &metadata, &[], "webhook.url").unwrap_err();
        assert_eq!(error.0[0].field, "webhook.url");
        assert!(error.0[0].description.starts_with("169.254.169.254 is "));
        let named = WebhookUrl::parse("https://hooks.internal/", false).unwrap();
        let loopback = ["127.0.0.1".parse().unwrap()];
        let error = check_target(&policy, &named, &loopback, "webhook.url").unwrap_err();
        assert!(error.0[0].description.contains("resolves to 127.0.0.1"));
        let public = ["8.8.8.8".parse().unwrap()];
        assert!(check_target(&policy, &named, &public, "webhook.url").is_ok());
        assert!(check_target(&TargetPolicy::allow_all(), &metadata, &[], "u").is_ok());
    }

    #[test]
    fn events_are_required_known_and_kept_once() {
        let spec = WebhookSpec::new(
            "https://example.com/",
            &[
                Some(EventType::LostPosition),
                Some(EventType::ServerStatusChanged),
                Some(EventType::LostPosition),
            ],
            false,
            "webhook.",
        )
        .unwrap();
        assert_eq!(
            spec.events,
            [EventType::ServerStatusChanged, EventType::LostPosition]
        );
        let error = WebhookSpec::new("http://x/", &[None], false, "webhook.").unwrap_err();
        let fields: Vec<&str> = error
            .0
            .iter()
            .map(|violation| violation.field.as_str())
            .collect();
        assert_eq!(fields, ["webhook.url", "webhook.events[0]"]);
        let error = WebhookSpec::new("https://x/", &[], false, "webhook.").unwrap_err();
        assert_eq!(error.0[0].field, "webhook.events");
    }

    #[test]
    fn the_signature_is_hmac_sha256_of_timestamp_dot_body() {
        // The HMAC itself is RFC 4231's (its test case 2).
        let signed = signature("Jefe", 0, b"");
        assert!(signed.starts_with("v1=") && signed.len() == 3 + 64);
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(b"Jefe").unwrap();
        mac.update(b"what do ya want for nothing?");
        assert_eq!(
            hex::encode(mac.finalize().into_bytes()),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(b"whsec_k").unwrap();
        mac.update(b"1700000000.{\"a\":1}");
        let expected = format!("v1={}", hex::encode(mac.finalize().into_bytes()));
        assert_eq!(signature("whsec_k", 1700000000, br#"{"a":1}"#), expected);
        assert_ne!(signature("whsec_k", 1700000001, br#"{"a":1}"#), expected);
        assert_ne!(signature("whsec_l", 1700000000, br#"{"a":1}"#), expected);
        assert!(generate_secret().starts_with(SECRET_PREFIX));
        assert_eq!(generate_secret().len(), SECRET_PREFIX.len() + 43);
    }

    #[test]
    fn retry_delays_double_with_full_jitter_up_to_the_cap() {
        let base = Duration::from_secs(10);
        assert_eq!(retry_delay(1, base, MAX_RETRY_DELAY, 1.0), base);
        assert_eq!(retry_delay(3, base, MAX_RETRY_DELAY, 1.0), base * 4);
        assert_eq!(retry_delay(3, base, MAX_RETRY_DELAY, 0.5), base * 2);
        assert_eq!(retry_delay(3, base, MAX_RETRY_DELAY, 0.0), Duration::ZERO);
        assert_eq!(retry_delay(40, base, MAX_RETRY_DELAY, 1.0), MAX_RETRY_DELAY);
        assert_eq!(retry_delay(0, base, MAX_RETRY_DELAY, 1.0), base);
    }

    #[test]
    fn errors_are_short_and_on_one_line() {
        assert_eq!(short_error("HTTP 500:\nboom"), "HTTP 500: boom");
        let long = short_error(&"x".repeat(500));
        assert_eq!(long.chars().count(), MAX_ERROR_LENGTH);
        assert!(long.ends_with('…'));
    }
}
