//! Where event deliveries may go. A subscription names any URL its creator likes; without a policy the
//! service would POST signed bodies to the marketplace's internal network or a cloud metadata endpoint for
//! anyone holding an API key (server-side request forgery). So loopback, private, link-local, shared and
//! other non-public addresses are refused — when the subscription is made (for address literals and
//! `localhost`) and again when a delivery resolves the host — unless the host is on `WEBHOOK_ALLOWED_HOSTS`
//! (tests, the demo, a private network).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// The allow-list of hosts and addresses that may be targeted although not public.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TargetPolicy {
    allowed: Vec<String>,
}

/// Why a target is refused (shown to the API caller and in a delivery's error).
pub const NOT_PUBLIC: &str = "points at a loopback, private or link-local address; \
     such targets are allowed only through WEBHOOK_ALLOWED_HOSTS";

impl TargetPolicy {
    /// Hosts as configured: names (case-insensitive) or IP addresses, IPv6 with or without brackets.
    pub fn new<I: IntoIterator<Item = S>, S: AsRef<str>>(hosts: I) -> Self {
        Self {
            allowed: hosts
                .into_iter()
                .map(|h| normalise(h.as_ref()))
                .filter(|h| !h.is_empty())
                .collect(),
        }
    }

    /// Whether `host` (a URL's host) is on the allow-list.
    pub fn allows_host(&self, host: &str) -> bool {
        let host = normalise(host);
        self.allowed.contains(&host)
    }

    /// The check that needs no DNS: an address literal must be public, `localhost` is refused; names are
    /// checked again on each delivery, once resolved.
    pub fn check_host(&self, host: &str) -> Result<(), &'static str> {
        if self.allows_host(host) {
            return Ok(());
        }
        let h = normalise(host);
        if h == "localhost" || h.ends_with(".localhost") {
            return Err(NOT_PUBLIC);
        }
        match h.parse::<IpAddr>() {
            Ok(ip) if !is_public(ip) => Err(NOT_PUBLIC),
            _ => Ok(()),
        }
    }

    /// Whether a resolved address of `host` may be connected to.
    pub fn allows_address(&self, host: &str, ip: IpAddr) -> bool {
        is_public(ip) || self.allows_host(host) || self.allows_host(&ip.to_string())
    }
}

fn normalise(host: &str) -> String {
    host.trim()
        .trim_start_matches('[')
        .trim_end_matches(']')
        .trim_end_matches('.')
        .to_ascii_lowercase()
}

/// Whether an address is on the public internet: not loopback, private (RFC 1918, unique-local), shared
/// (RFC 6598), link-local (cloud metadata at 169.254.169.254), unspecified, broadcast, multicast,
/// documentation or reserved.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => is_public_v4(v4),
            None => is_public_v6(v6),
        },
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    !(ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_broadcast()
        || ip.is_multicast()
        || ip.is_documentation()
        || a == 0
        || (a == 100 && (64..128).contains(&b))
        || (a == 192 && b == 0 && c == 0)
        || (a == 198 && (b == 18 || b == 19))
        || a >= 240)
}

fn is_public_v6(ip: Ipv6Addr) -> bool {
    let first = ip.segments()[0];
    !(ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_multicast()
        || (first & 0xfe00) == 0xfc00
        || (first & 0xffc0) == 0xfe80
        || first == 0x2001 && ip.segments()[1] == 0x0db8
        || first == 0x0064 && ip.segments()[1] == 0xff9b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_addresses_are_refused_unless_allowed() {
        let none = TargetPolicy::default();
        for host in [
            "127.0.0.1",
            "10.0.0.1",
            "172.16.5.4",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "[::1]",
            "::ffff:127.0.0.1",
            "[fd00::1]",
            "fe80::1",
            "localhost",
            "api.localhost",
        ] {
            assert_eq!(none.check_host(host), Err(NOT_PUBLIC), "{host}");
        }
        for host in ["example.com", "93.184.216.34", "2606:4700::1111"] {
            assert_eq!(none.check_host(host), Ok(()), "{host}");
        }
        let tests = TargetPolicy::new(["127.0.0.1", "Receiver.Internal", "[::1]"]);
        assert_eq!(tests.check_host("127.0.0.1"), Ok(()));
        assert_eq!(tests.check_host("[::1]"), Ok(()));
        assert_eq!(tests.check_host("10.0.0.1"), Err(NOT_PUBLIC));
        assert!(tests.allows_address("receiver.internal", "10.1.2.3".parse().expect("an address")));
        assert!(!tests.allows_address("evil.example", "10.1.2.3".parse().expect("an address")));
        assert!(tests.allows_address("rebind.example", "127.0.0.1".parse().expect("an address")));
    }
}
