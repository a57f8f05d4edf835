//! Where a call comes from: the peer of its connection, or, when that peer is a proxy the
//! deployment trusts (`--trusted-proxies`), the right-most address of `X-Forwarded-For` that is
//! not one of them. The unknown-key limit counts by it, and the audit log records it.

use std::net::{IpAddr, SocketAddr};

use crate::domain::target::IpRange;

/// The peer of the connection a call came on, for calls that do not arrive on the gRPC
/// listener's own connections (the REST layer inserts it into the call's extensions).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerAddress(pub IpAddr);

/// The client a call came from, as the auth layer resolved it (it inserts it into the call's
/// extensions for the layers and handlers after it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientAddress(pub IpAddr);

/// How many `X-Forwarded-For` entries are read, from the right: more proxies than this in a row
/// are not a deployment's.
const MAX_FORWARDED_HOPS: usize = 32;

/// The proxies whose `X-Forwarded-For` is believed.
#[derive(Debug, Clone, Default)]
pub struct TrustedProxies(Vec<IpRange>);

impl TrustedProxies {
    /// Proxies in these ranges.
    pub fn new(ranges: Vec<IpRange>) -> TrustedProxies {
        TrustedProxies(ranges)
    }

    fn trusts(&self, address: IpAddr) -> bool {
        self.0.iter().any(|range| range.contains(address))
    }

    /// The client of a call from `peer` with these headers: `peer` itself unless it is a trusted
    /// proxy; else, walking `X-Forwarded-For` from the right (the hop nearest this service),
    /// the first address that is not a trusted proxy. An entry that is not an address ends the
    /// walk at the last hop that was vouched for; a chain of trusted proxies only gives its
    /// left-most.
    pub fn client(&self, peer: IpAddr, headers: &http::HeaderMap) -> IpAddr {
        if self.0.is_empty() || !self.trusts(peer) {
            return peer;
        }
        let entries: Vec<&str> = headers
            .get_all("x-forwarded-for")
            .iter()
            .flat_map(|value| value.to_str().unwrap_or("?").split(','))
            .collect();
        let mut client = peer;
        for entry in entries.iter().rev().take(MAX_FORWARDED_HOPS) {
            let Some(address) = forwarded_address(entry) else {
                return client;
            };
            client = address;
            if !self.trusts(address) {
                return address;
            }
        }
        client
    }
}

/// One `X-Forwarded-For` entry: an address, with a port or in brackets as some proxies write it.
fn forwarded_address(entry: &str) -> Option<IpAddr> {
    let entry = entry.trim();
    entry
        .parse::<IpAddr>()
        .ok()
        .or_else(|| entry.parse::<SocketAddr>().ok().map(|socket| socket.ip()))
        .or_else(|| {
            entry
                .strip_prefix('[')
                .and_then(|rest| rest.strip_suffix(']'))
                .and_then(|inner| inner.parse().ok())
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(values: &[&str]) -> http::HeaderMap {
        let mut headers = http::HeaderMap::new();
        for value in values {
            headers.append("x-forwarded-for", value.parse().unwrap());
        }
        headers
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    fn proxies() -> TrustedProxies {
        TrustedProxies::new(vec![
            "10.0.0.0/8".parse().unwrap(),
            "fd00::/8".parse().unwrap(),
        ])
    }

    #[test]
    fn an_untrusted_peer_is_the_client_whatever_it_forwards() {
        let forwarded = headers(&["198.51.100.1"]);
        assert_eq!(
            proxies().client(ip("203.0.113.9"), &forwarded),
            ip("203.0.113.9")
        );
        assert_eq!(
            TrustedProxies::default().client(ip("10.0.0.1"), &forwarded),
            ip("10.0.0.1")
        );
    }

    #[test]
    fn behind_trusted_proxies_the_right_most_untrusted_address_is_the_client() {
        let proxies = proxies();
        // The client spoofed the first entry; the proxies appended the rest.
        let chain = headers(&["192.0.2.66, 198.51.100.7", "10.1.1.1"]);
        assert_eq!(proxies.client(ip("10.2.2.2"), &chain), ip("198.51.100.7"));
        assert_eq!(
            proxies.client(ip("10.2.2.2"), &headers(&["[2001:db8::5]:443, fd00::1"])),
            ip("2001:db8::5")
        );
        assert_eq!(
            proxies.client(ip("10.2.2.2"), &headers(&["198.51.100.7:5000"])),
            ip("198.51.100.7")
        );
        // Nothing forwarded: the proxy itself.
        assert_eq!(
            proxies.client(ip("10.2.2.2"), &headers(&[])),
            ip("10.2.2.2")
        );
        // Only trusted hops: the left-most.
        assert_eq!(
            proxies.client(ip("10.2.2.2"), &headers(&["10.9.9.9, 10.1.1.1"])),
            ip("10.9.9.9")
        );
        // Garbage stops the walk at the last hop vouched for.
        assert_eq!(
            proxies.client(
                ip("10.2.2.2"),
                &headers(&["198.51.100.7, unknown, 10.1.1.1"])
            ),
            ip("10.1.1.1")
        );
    }
}
