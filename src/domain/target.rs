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

/// The one reason every refused target gives, whatever range it fell in (the range is logged).
pub const DENIED: &str = "an address the agent does not connect to (this service's own hosts and networks, link-local, cloud metadata, or a private range for a direct connection)";

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

impl TargetPolicy {
    /// A violation under `prefix` when the address the agent would connect to is an IP literal
    /// the policy refuses: the jumphost of a tunnelled server (its MySQL host is the jumphost's
    /// to reach), the MySQL host of any other.
    pub fn check_literals(&self, spec: &ServerSpec, prefix: &str) -> Result<(), Violations> {
        let (field, host, method) = match (&spec.ssh_tunnel, spec.connection_method) {
            (Some(tunnel), ConnectionMethod::SshTunnel) => {
                ("ssh_tunnel.host", &tunnel.host, JUMPHOST)
            }
            _ => ("host", &spec.host, spec.connection_method),
        };
        if let Ok(address) = host.parse::<IpAddr>()
            && self.refuses(address, method).is_some()
        {
            return Err(Violations::one(
                format!("{prefix}{field}"),
                format!("{host} is {DENIED}"),
            ));
        }
        Ok(())
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
