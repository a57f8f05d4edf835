//! Where the agent may connect on a tenant's behalf: never to the replica itself, its own
//! networks, link-local or cloud instance metadata; to private ranges only for servers reached
//! over a VPN or an SSH tunnel. The rule every MySQL host and jumphost address passes, at
//! RegisterServer and UpdateServer for IP literals and after resolution for DNS names.

use std::{
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    str::FromStr,
};

use super::{ConnectionMethod, Violations, server::ServerSpec};

/// An address range in CIDR notation (`10.0.0.0/8`, `fd00:ec2::254/128`, or one address).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpRange {
    network: IpAddr,
    prefix: u8,
}

impl IpRange {
    const fn v4(a: u8, b: u8, c: u8, d: u8, prefix: u8) -> IpRange {
        IpRange {
            network: IpAddr::V4(Ipv4Addr::new(a, b, c, d)),
            prefix,
        }
    }

    const fn v6(segments: [u16; 8], prefix: u8) -> IpRange {
        let [a, b, c, d, e, f, g, h] = segments;
        IpRange {
            network: IpAddr::V6(Ipv6Addr::new(a, b, c, d, e, f, g, h)),
            prefix,
        }
    }

    /// The range of an interface: its address under its netmask's prefix.
    pub fn of_interface(address: IpAddr, prefix: u8) -> IpRange {
        IpRange {
            network: address,
            prefix,
        }
    }

    /// The address the range was written with (for an interface's range, the interface's).
    pub fn address(&self) -> IpAddr {
        self.network
    }

    /// The prefix length: how many leading bits an address shares with the range.
    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    /// Whether `address` lies in the range (both of one family).
    pub fn contains(&self, address: IpAddr) -> bool {
        match (self.network, address) {
            (IpAddr::V4(network), IpAddr::V4(address)) => same_prefix(
                u32::from(network).into(),
                u32::from(address).into(),
                self.prefix,
                32,
            ),
            (IpAddr::V6(network), IpAddr::V6(address)) => {
                same_prefix(u128::from(network), u128::from(address), self.prefix, 128)
            }
            _ => false,
        }
    }
}

fn same_prefix(network: u128, address: u128, prefix: u8, bits: u8) -> bool {
    let host_bits = u32::from(bits - prefix.min(bits));
    network.checked_shr(host_bits).unwrap_or(0) == address.checked_shr(host_bits).unwrap_or(0)
}

impl FromStr for IpRange {
    type Err = String;

    fn from_str(text: &str) -> Result<IpRange, String> {
        let (address, prefix) = match text.split_once('/') {
            Some((address, prefix)) => (address, Some(prefix)),
            None => (text, None),
        };
        let network: IpAddr = address
            .trim()
            .parse()
            .map_err(|_| format!("{text:?} is not an address range like 10.0.0.0/8"))?;
        let bits = if network.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(prefix) => prefix
                .trim()
                .parse::<u8>()
                .ok()
                .filter(|prefix| *prefix <= bits)
                .ok_or_else(|| format!("{text:?} has a prefix length outside 0..={bits}"))?,
            None => bits,
        };
        Ok(IpRange { network, prefix })
    }
}

impl fmt::Display for IpRange {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "{}/{}", self.network, self.prefix)
    }
}

/// Never a target: this host, unspecified, link-local (where instance metadata lives), multicast
/// and broadcast, and the metadata addresses of the major clouds outside link-local.
pub const ALWAYS_DENIED: &[IpRange] = &[
    IpRange::v4(0, 0, 0, 0, 8),
    IpRange::v4(127, 0, 0, 0, 8),
    IpRange::v4(169, 254, 0, 0, 16),
    IpRange::v4(224, 0, 0, 0, 4),
    IpRange::v4(240, 0, 0, 0, 4),
    // Alibaba Cloud's metadata service.
    IpRange::v4(100, 100, 100, 200, 32),
    // Unspecified, loopback and the deprecated IPv4-compatible addresses (::a.b.c.d).
    IpRange::v6([0, 0, 0, 0, 0, 0, 0, 0], 96),
    IpRange::v6([0xfe80, 0, 0, 0, 0, 0, 0, 0], 10),
    IpRange::v6([0xff00, 0, 0, 0, 0, 0, 0, 0], 8),
    // AWS's IPv6 instance metadata (IMDS) and Google Cloud's.
    IpRange::v6([0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254], 128),
    IpRange::v6([0xfd20, 0xce, 0, 0, 0, 0, 0, 0x254], 128),
];

/// Private ranges: targets for `vpn` and `ssh_tunnel` servers, not for `direct` ones.
pub const PRIVATE: &[IpRange] = &[
    IpRange::v4(10, 0, 0, 0, 8),
    IpRange::v4(172, 16, 0, 0, 12),
    IpRange::v4(192, 168, 0, 0, 16),
    // Carrier-grade NAT, where cloud providers put internal services too.
    IpRange::v4(100, 64, 0, 0, 10),
    // Unique local IPv6.
    IpRange::v6([0xfc00, 0, 0, 0, 0, 0, 0, 0], 7),
];

/// The one reason every refused target gives, whatever range it fell in (the range is logged),
/// with the way out for development against a database on the service's own host. Short enough
/// that, after the longest IP literal, it fits a field violation (200 characters).
pub const DENIED: &str = "an address the agent does not connect to (own networks, link-local, cloud metadata; private ones for direct); in development: --allow-loopback-targets";

/// Why a direct server's private address is refused, with the two ways to reach it. Fits a
/// field violation after the longest IP literal, as [`DENIED`] does.
pub const PRIVATE_FOR_DIRECT: &str = "a private address, which a direct server cannot use: set connection_method to vpn or ssh_tunnel, or start with --allow-private-direct-targets";

/// How a jumphost is judged: the agent connects to it directly, from the service's network, so
/// it must be where a direct server could be (a tunnel's private ranges lie beyond it).
pub const JUMPHOST: ConnectionMethod = ConnectionMethod::Direct;

/// The ranges the agent refuses, as configured.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TargetPolicy {
    /// Refused for every server (the defaults, the replica's own networks, configured ones).
    pub denied: Vec<IpRange>,
    /// Refused for direct servers only.
    pub private: Vec<IpRange>,
}

impl TargetPolicy {
    /// The default policy, plus the replica's own networks and `extra` denied ranges.
    pub fn new(own_networks: Vec<IpRange>, extra: Vec<IpRange>, private_for_direct: bool) -> Self {
        let mut denied = ALWAYS_DENIED.to_vec();
        denied.extend(own_networks);
        denied.extend(extra);
        TargetPolicy {
            denied,
            private: if private_for_direct {
                Vec::new()
            } else {
                PRIVATE.to_vec()
            },
        }
    }

    /// No ranges refused at all: local development and tests against 127.0.0.1.
    pub fn allow_all() -> TargetPolicy {
        TargetPolicy::default()
    }

    /// Why `address` is refused for a server of `method` ([`DENIED`] or [`PRIVATE_FOR_DIRECT`]),
    /// if it is.
    pub fn refusal(&self, address: IpAddr, method: ConnectionMethod) -> Option<&'static str> {
        let range = self.refuses(address, method)?;
        Some(if self.denied.contains(&range) {
            DENIED
        } else {
            PRIVATE_FOR_DIRECT
        })
    }

    /// The range that refuses `address` for a server of `method`, if one does.
    pub fn refuses(&self, address: IpAddr, method: ConnectionMethod) -> Option<IpRange> {
        let address = canonical(address);
        let private = match method {
            ConnectionMethod::Direct => self.private.as_slice(),
            ConnectionMethod::Vpn | ConnectionMethod::SshTunnel => &[],
        };
        self.denied
            .iter()
            .chain(private)
            .find(|range| range.contains(address))
            .copied()
    }
}

/// The host the agent connects to first for a server, and how that host is judged: the
/// jumphost of a tunnelled server (its MySQL host is the jumphost's to reach), the MySQL host of
/// any other. With the field that names it.
pub fn first_hop(spec: &ServerSpec) -> (&'static str, &str, ConnectionMethod) {
    match (&spec.ssh_tunnel, spec.connection_method) {
        (Some(tunnel), ConnectionMethod::SshTunnel) => {
            ("ssh_tunnel.host", tunnel.host.as_str(), JUMPHOST)
        }
        _ => ("host", spec.host.as_str(), spec.connection_method),
    }
}

impl TargetPolicy {
    /// A violation under `prefix` when the server's first hop ([`first_hop`]) is an IP literal
    /// the policy refuses.
    pub fn check_literals(&self, spec: &ServerSpec, prefix: &str) -> Result<(), Violations> {
        let (field, host, method) = first_hop(spec);
        let refusal = host
            .parse::<IpAddr>()
            .ok()
            .and_then(|address| self.refusal(address, method));
        match refusal {
            Some(reason) => Err(Violations::one(
                format!("{prefix}{field}"),
                format!("{host} is {reason}"),
            )),
            None => Ok(()),
        }
    }

    /// A violation under `prefix` when the server's first hop is a name that resolved
    /// (`addresses`) to an address the policy refuses, naming the address.
    pub fn check_resolved(
        &self,
        spec: &ServerSpec,
        addresses: &[IpAddr],
        prefix: &str,
    ) -> Result<(), Violations> {
        let (field, host, method) = first_hop(spec);
        let refused = addresses
            .iter()
            .find_map(|address| Some((address, self.refusal(*address, method)?)));
        match refused {
            Some((address, reason)) => Err(Violations::one(
                format!("{prefix}{field}"),
                format!("{host} resolves to {address}, {reason}"),
            )),
            None => Ok(()),
        }
    }
}

/// The IPv4 address an IPv6 one stands for (mapped `::ffff:a.b.c.d`, NAT64 `64:ff9b::a.b.c.d`,
/// 6to4 `2002:aabb:ccdd::`),
/// so a denied IPv4 address cannot be reached by spelling it in IPv6.
fn canonical(address: IpAddr) -> IpAddr {
    let IpAddr::V6(v6) = address else {
        return address;
    };
    if let Some(v4) = v6.to_ipv4_mapped() {
        return IpAddr::V4(v4);
    }
    let segments = v6.segments();
    if segments[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        let bits = u128::from(v6) as u32;
        return IpAddr::V4(Ipv4Addr::from(bits));
    }
    // 6to4: 2002:aabb:ccdd::/48 carries a.b.c.d.
    if segments[0] == 0x2002 {
        let bits = (u128::from(v6) >> 80) as u32;
        return IpAddr::V4(Ipv4Addr::from(bits));
    }
    address
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_refusal_fits_a_field_violation_after_the_longest_address() {
        let longest = "ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255";
        let reason = format!("{longest} is {DENIED}");
        assert!(
            reason.chars().count() <= 200,
            "{} characters",
            reason.chars().count()
        );
        assert!(DENIED.ends_with("--allow-loopback-targets"));
        let private = format!("{longest} is {PRIVATE_FOR_DIRECT}");
        assert!(private.chars().count() <= 200, "{private}");
    }

    #[test]
    fn a_name_is_refused_naming_the_address_it_resolved_to() {
        let policy = policy();
        let spec = |host: &str, method| {
            let input = crate::domain::server::ServerInput {
                name: "named".into(),
                host: host.into(),
                port: 3306,
                mysql_user: "bintrail".into(),
                connection_method: Some(method),
                ..Default::default()
            };
            input.validate("", Default::default()).unwrap().0
        };
        let loopback = ["127.0.0.1".parse().unwrap()];
        let error = policy
            .check_resolved(
                &spec("localhost", ConnectionMethod::Vpn),
                &loopback,
                "server.",
            )
            .unwrap_err();
        assert_eq!(error.0[0].field, "server.host");
        assert_eq!(
            error.0[0].description,
            format!("localhost resolves to 127.0.0.1, {DENIED}")
        );
        let private = ["10.9.8.7".parse().unwrap()];
        let error = policy
            .check_resolved(&spec("db.internal", ConnectionMethod::Direct), &private, "")
            .unwrap_err();
        assert!(error.0[0].description.ends_with(PRIVATE_FOR_DIRECT));
        assert!(
            policy
                .check_resolved(&spec("db.internal", ConnectionMethod::Vpn), &private, "")
                .is_ok()
        );
    }

    fn policy() -> TargetPolicy {
        TargetPolicy::new(
            vec![IpRange::of_interface("10.1.2.3".parse().unwrap(), 24)],
            vec!["203.0.113.0/24".parse().unwrap()],
            false,
        )
    }

    #[test]
    fn metadata_loopback_own_networks_and_disguises_are_refused() {
        for denied in [
            "169.254.169.254",
            "fd00:ec2::254",
            "100.100.100.200",
            "::ffff:127.0.0.1",
            "64:ff9b::7f00:1",
            "2002:7f00:1::",
            "::127.0.0.1",
            "127.0.0.1",
            "::1",
            "0.0.0.0",
            "fe80::1",
            "10.1.2.200",
            "203.0.113.9",
        ] {
            let address: IpAddr = denied.parse().unwrap();
            for method in [
                ConnectionMethod::Direct,
                ConnectionMethod::Vpn,
                ConnectionMethod::SshTunnel,
            ] {
                assert!(
                    policy().refuses(address, method).is_some(),
                    "{denied} for {method:?}"
                );
            }
        }
    }

    #[test]
    fn private_ranges_are_for_vpn_and_tunnels_unless_allowed() {
        let address: IpAddr = "192.168.7.7".parse().unwrap();
        assert!(
            policy()
                .refuses(address, ConnectionMethod::Direct)
                .is_some()
        );
        assert_eq!(policy().refuses(address, ConnectionMethod::Vpn), None);
        assert_eq!(policy().refuses(address, ConnectionMethod::SshTunnel), None);
        let open = TargetPolicy::new(Vec::new(), Vec::new(), true);
        assert_eq!(open.refuses(address, ConnectionMethod::Direct), None);
        let public: IpAddr = "8.8.8.8".parse().unwrap();
        assert_eq!(policy().refuses(public, ConnectionMethod::Direct), None);
        assert_eq!(
            TargetPolicy::allow_all()
                .refuses("127.0.0.1".parse().unwrap(), ConnectionMethod::Direct),
            None
        );
    }

    #[test]
    fn ranges_parse_and_refuse_nonsense() {
        assert_eq!(
            "10.0.0.0/8".parse::<IpRange>().unwrap().to_string(),
            "10.0.0.0/8"
        );
        assert_eq!(
            "2001:db8::1".parse::<IpRange>().unwrap().to_string(),
            "2001:db8::1/128"
        );
        assert!("10.0.0.0/33".parse::<IpRange>().is_err());
        assert!("ten/8".parse::<IpRange>().is_err());
        assert!(
            "0.0.0.0/0"
                .parse::<IpRange>()
                .unwrap()
                .contains("8.8.8.8".parse().unwrap())
        );
    }
}
