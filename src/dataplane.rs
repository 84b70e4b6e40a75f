//! The numbers the dataplane is made of, defined once: weft's ports, the packet and
//! connection marks, the reply routing table and the node-probe source addresses
//! (DESIGN §2). The nft rules and routing rules of `weft-node` are generated from these,
//! and its sockets are marked with them, so a rule and the socket it lets through cannot
//! disagree.

use std::net::{Ipv4Addr, Ipv6Addr};

/// Inbound HBONE (mTLS HTTP/2 CONNECT), in each pod and on hosts.
pub const HBONE_PORT: u16 = 15008;
/// Outbound capture in each pod: the app's TCP is redirected here.
pub const OUTBOUND_CAPTURE_PORT: u16 = 15001;
/// Inbound plaintext capture in each pod: TCP from outside the mesh is redirected here.
pub const INBOUND_PLAINTEXT_PORT: u16 = 15006;
/// DNS capture in each pod (reserved; not served yet).
pub const DNS_CAPTURE_PORT: u16 = 15053;
/// The daemon's admin API (loopback only).
pub const ADMIN_PORT: u16 = 15000;
/// The daemon's Prometheus metrics and dashboard.
pub const METRICS_PORT: u16 = 15020;
/// The daemon's readiness probe.
pub const READINESS_PORT: u16 = 15021;

/// Mark on every socket the proxy opens in a pod; the pod's capture rules let it through.
pub const PROXY_MARK: u32 = 0x539;
/// Connection mark of connections the proxy delivered transparently, restored onto their
/// reply packets so they route back to the proxy's socket.
pub const DELIVERED_CONNMARK: u32 = 0x111;
/// The bits of the packet and connection marks weft owns; the rest belong to others.
pub const MARK_MASK: u32 = 0xfff;
/// Routing table that sends marked replies to the local (transparent) socket.
pub const REPLY_ROUTE_TABLE: u32 = 100;
/// Priority of the `ip rule` that selects [`REPLY_ROUTE_TABLE`].
pub const REPLY_ROUTE_RULE_PRIORITY: u32 = 32764;

/// Source address node-originated TCP to an enrolled pod (kubelet probes) is rewritten to,
/// IPv4; enrolled pods let it reach the app uncaptured.
pub const PROBE_ADDR_V4: Ipv4Addr = Ipv4Addr::new(169, 254, 7, 127);
/// The IPv6 probe source (the same address Istio ambient uses, so operators know it).
pub const PROBE_ADDR_V6: Ipv6Addr = Ipv6Addr::new(
    0xfd16, 0x9254, 0x7127, 0x1337, 0xffff, 0xffff, 0xffff, 0xffff,
);

/// Every port weft itself listens on, in a pod or on the node: never a valid target for
/// a proxied connection.
pub const OWN_PORTS: [u16; 7] = [
    OUTBOUND_CAPTURE_PORT,
    INBOUND_PLAINTEXT_PORT,
    HBONE_PORT,
    DNS_CAPTURE_PORT,
    ADMIN_PORT,
    METRICS_PORT,
    READINESS_PORT,
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_fit_the_mask_and_differ() {
        assert_eq!(PROXY_MARK & MARK_MASK, PROXY_MARK);
        assert_eq!(DELIVERED_CONNMARK & MARK_MASK, DELIVERED_CONNMARK);
        assert_ne!(PROXY_MARK, DELIVERED_CONNMARK);
    }

    #[test]
    fn probe_addresses_are_not_routable_pod_addresses() {
        assert!(PROBE_ADDR_V4.is_link_local());
        // fc00::/7: unique local, never a pod's global address.
        assert_eq!(PROBE_ADDR_V6.segments()[0] & 0xfe00, 0xfc00);
    }
}
