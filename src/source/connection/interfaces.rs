//! The networks of this host's own interfaces, which a tenant must not point the agent at.

use std::net::IpAddr;

use crate::domain::target::IpRange;

/// Every interface address of this host with its netmask, as ranges (none if the host will not
/// say; the fixed deny-list still holds).
pub fn own_networks() -> Vec<IpRange> {
    let mut networks = Vec::new();
    let mut list: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `list` with a linked list that freeifaddrs releases below; every
    // pointer read is checked for null and read only while the list is alive.
    unsafe {
        if libc::getifaddrs(&mut list) != 0 {
            tracing::warn!(error = %std::io::Error::last_os_error(), "cannot list this host's interfaces");
            return networks;
        }
        let mut entry = list;
        while !entry.is_null() {
            let interface = &*entry;
            if let (Some(address), Some(mask)) = (
                socket_ip(interface.ifa_addr),
                socket_ip(interface.ifa_netmask),
            ) {
                networks.push(IpRange::of_interface(address, prefix_of(mask)));
            }
            entry = interface.ifa_next;
        }
        libc::freeifaddrs(list);
    }
    networks
}

/// The IP address in a sockaddr of family AF_INET or AF_INET6.
///
/// # Safety
/// `address` is null or points to a sockaddr as large as its family says.
unsafe fn socket_ip(address: *const libc::sockaddr) -> Option<IpAddr> {
    if address.is_null() {
        return None;
    }
    // SAFETY: the caller's promise; the family says which struct it is.
    unsafe {
        match i32::from((*address).sa_family) {
            libc::AF_INET => {
                let v4 = &*(address as *const libc::sockaddr_in);
                Some(IpAddr::from(u32::from_be(v4.sin_addr.s_addr).to_be_bytes()))
            }
            libc::AF_INET6 => {
                let v6 = &*(address as *const libc::sockaddr_in6);
                Some(IpAddr::from(v6.sin6_addr.s6_addr))
            }
            _ => None,
        }
    }
}

fn prefix_of(mask: IpAddr) -> u8 {
    let ones = match mask {
        IpAddr::V4(v4) => u32::from(v4).leading_ones(),
        IpAddr::V6(v6) => u128::from(v6).leading_ones(),
    };
    ones as u8
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_loopback_network_is_among_this_hosts_own() {
        let networks = own_networks();
        assert!(
            networks
                .iter()
                .any(|range| range.contains("127.0.0.1".parse().unwrap())),
            "{networks:?}"
        );
    }
}
