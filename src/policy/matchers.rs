//! The value matchers of authorization rules, parsed once when the config is loaded so the
//! decision path only compares: [`StringMatch`] (principals and namespaces with Istio's
//! `*` wildcards) and [`IpBlock`] (a CIDR as network bits and a prefix length).

use std::fmt;
use std::net::IpAddr;

use serde::{Serialize, Serializer};

use super::PolicyError;

/// A principal or namespace pattern, as Istio writes them: an exact value, `prefix*`,
/// `*suffix`, or `*` alone (any value, but one must be present: for principals this means
/// "any authenticated peer").
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum StringMatch {
    /// A value without `*`: matches only itself.
    Exact(Box<str>),
    /// `value*`.
    Prefix(Box<str>),
    /// `*value`.
    Suffix(Box<str>),
    /// `*`.
    Presence,
}

impl StringMatch {
    /// Parses a pattern. A `*` is allowed alone, or once at the start or at the end.
    pub fn parse(raw: &str) -> Result<Self, PolicyError> {
        if raw.is_empty() {
            return Err(PolicyError::EmptyValue);
        }
        if raw == "*" {
            return Ok(StringMatch::Presence);
        }
        let bad = || PolicyError::Wildcard(raw.to_owned());
        if let Some(rest) = raw.strip_prefix('*') {
            if rest.contains('*') {
                return Err(bad());
            }
            return Ok(StringMatch::Suffix(rest.into()));
        }
        if let Some(rest) = raw.strip_suffix('*') {
            if rest.contains('*') {
                return Err(bad());
            }
            return Ok(StringMatch::Prefix(rest.into()));
        }
        if raw.contains('*') {
            return Err(bad());
        }
        Ok(StringMatch::Exact(raw.into()))
    }

    /// Parses a principal pattern. Istio writes principals without the `spiffe://` scheme
    /// (`cluster.local/ns/shop/sa/order`); a pattern written with it is accepted and the scheme
    /// dropped, so both spellings mean the same peer.
    pub fn parse_principal(raw: &str) -> Result<Self, PolicyError> {
        Self::parse(raw.strip_prefix("spiffe://").unwrap_or(raw))
    }

    /// Whether `value` matches. An empty value never matches.
    #[inline]
    pub fn matches(&self, value: &str) -> bool {
        match self {
            StringMatch::Exact(s) => value == &**s,
            StringMatch::Prefix(p) => value.starts_with(&**p) && !value.is_empty(),
            StringMatch::Suffix(s) => value.ends_with(&**s) && !value.is_empty(),
            StringMatch::Presence => !value.is_empty(),
        }
    }
}

/// Shows the pattern as written (without a `spiffe://` scheme).
impl fmt::Display for StringMatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StringMatch::Exact(s) => f.write_str(s),
            StringMatch::Prefix(p) => write!(f, "{p}*"),
            StringMatch::Suffix(s) => write!(f, "*{s}"),
            StringMatch::Presence => f.write_str("*"),
        }
    }
}

impl Serialize for StringMatch {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// An IPv4 or IPv6 CIDR (a single address is a /32 or /128), stored as its network bits so
/// a match is one mask and one compare. Host bits written after the prefix are ignored
/// (`10.1.2.3/8` is `10.0.0.0/8`), as Istio does.
///
/// Hand-rolled rather than taken from the `ipnet` crate: this is all the CIDR logic the mesh
/// needs, and it keeps the representation tuned for the match (a masked integer).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct IpBlock {
    /// The network address (host bits cleared).
    network: IpAddr,
    prefix: u8,
}

impl IpBlock {
    /// Parses `addr/prefix` or a bare address.
    pub fn parse(raw: &str) -> Result<Self, PolicyError> {
        let bad = || PolicyError::Cidr(raw.to_owned());
        let (addr, prefix) = match raw.split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (raw, None),
        };
        let addr: IpAddr = addr.parse().map_err(|_| bad())?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => {
                p.parse::<u8>().ok().filter(|p| *p <= max).ok_or_else(bad)?
            }
            Some(_) => return Err(bad()),
        };
        Ok(Self::new(addr, prefix))
    }

    /// The block of `addr/prefix`; a prefix beyond the address width is clamped to it.
    pub fn new(addr: IpAddr, prefix: u8) -> Self {
        let network = match addr {
            IpAddr::V4(a) => {
                let prefix = prefix.min(32);
                IpAddr::V4((u32::from(a) & mask32(prefix)).into())
            }
            IpAddr::V6(a) => {
                let prefix = prefix.min(128);
                IpAddr::V6((u128::from(a) & mask128(prefix)).into())
            }
        };
        let prefix = prefix.min(if addr.is_ipv4() { 32 } else { 128 });
        Self { network, prefix }
    }

    /// The network address, host bits cleared (`10.0.0.0` for `10.1.2.3/8`).
    pub fn network(&self) -> IpAddr {
        self.network
    }

    /// The prefix length in bits: 0-32 for IPv4, 0-128 for IPv6.
    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    /// Whether `ip` is inside the block. An IPv4-mapped IPv6 address (`::ffff:10.0.0.1`, as
    /// a dual-stack socket reports IPv4 peers) is treated as the IPv4 address.
    #[inline]
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.contains_canonical(ip.to_canonical())
    }

    /// [`IpBlock::contains`] for an address already converted with `to_canonical`.
    #[inline]
    pub(crate) fn contains_canonical(&self, ip: IpAddr) -> bool {
        match (self.network, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                u32::from(ip) & mask32(self.prefix) == u32::from(net)
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                u128::from(ip) & mask128(self.prefix) == u128::from(net)
            }
            _ => false,
        }
    }
}

#[inline]
fn mask32(prefix: u8) -> u32 {
    u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0)
}

#[inline]
fn mask128(prefix: u8) -> u128 {
    u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0)
}

impl fmt::Display for IpBlock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

impl Serialize for IpBlock {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// Parses a port written as a string (`"8080"`, Istio's spelling) or a number.
pub fn parse_port(raw: &str) -> Result<u16, PolicyError> {
    raw.trim()
        .parse::<u16>()
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| PolicyError::Port(format!("{raw:?}")))
}

/// Checks a port written as a number.
pub fn port_from_int(raw: i64) -> Result<u16, PolicyError> {
    u16::try_from(raw)
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| PolicyError::Port(raw.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn string_match_wildcards() {
        let exact = StringMatch::parse("cluster.local/ns/shop/sa/order").unwrap();
        assert!(exact.matches("cluster.local/ns/shop/sa/order"));
        assert!(!exact.matches("cluster.local/ns/shop/sa/order2"));
        let prefix = StringMatch::parse("cluster.local/ns/shop/*").unwrap();
        assert!(prefix.matches("cluster.local/ns/shop/sa/x"));
        assert!(!prefix.matches("cluster.local/ns/other/sa/x"));
        let suffix = StringMatch::parse("*/sa/order").unwrap();
        assert!(suffix.matches("td/ns/a/sa/order"));
        assert!(!suffix.matches("td/ns/a/sa/orders"));
        let any = StringMatch::parse("*").unwrap();
        assert!(any.matches("x"));
        assert!(!any.matches(""));
        assert_eq!(
            StringMatch::parse_principal("spiffe://td/ns/a/sa/b").unwrap(),
            StringMatch::Exact("td/ns/a/sa/b".into())
        );
        for bad in ["a*b", "*a*", "**", "a**"] {
            assert!(
                matches!(StringMatch::parse(bad), Err(PolicyError::Wildcard(_))),
                "{bad}"
            );
        }
        assert!(matches!(
            StringMatch::parse(""),
            Err(PolicyError::EmptyValue)
        ));
        for s in ["a", "a*", "*a", "*"] {
            assert_eq!(StringMatch::parse(s).unwrap().to_string(), s);
        }
    }

    #[test]
    fn ip_blocks() {
        let b = IpBlock::parse("10.1.2.3/8").unwrap();
        assert_eq!(b.to_string(), "10.0.0.0/8");
        assert!(b.contains(ip("10.200.0.1")));
        assert!(b.contains(ip("::ffff:10.0.0.1")));
        assert!(!b.contains(ip("11.0.0.1")));
        assert!(!b.contains(ip("fd00::1")));
        let single = IpBlock::parse("192.168.1.1").unwrap();
        assert_eq!(single.prefix(), 32);
        assert!(single.contains(ip("192.168.1.1")));
        assert!(!single.contains(ip("192.168.1.2")));
        let all = IpBlock::parse("0.0.0.0/0").unwrap();
        assert!(all.contains(ip("1.2.3.4")));
        let v6 = IpBlock::parse("fd00:1::/32").unwrap();
        assert!(v6.contains(ip("fd00:1::5")));
        assert!(!v6.contains(ip("fd00:2::5")));
        assert!(!v6.contains(ip("10.0.0.1")));
        assert!(IpBlock::parse("::/0").unwrap().contains(ip("::1")));
        assert_eq!(IpBlock::parse("fd00::1").unwrap().prefix(), 128);
        for bad in [
            "10.0.0.0/33",
            "fd00::/129",
            "10.0.0/8",
            "10.0.0.0/",
            "10.0.0.0/+8",
            "10.0.0.0/8/8",
            "x",
            "",
        ] {
            assert!(
                matches!(IpBlock::parse(bad), Err(PolicyError::Cidr(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn ports() {
        assert_eq!(parse_port("8080").unwrap(), 8080);
        assert_eq!(port_from_int(65535).unwrap(), 65535);
        for bad in ["0", "70000", "-1", "http", ""] {
            assert!(parse_port(bad).is_err(), "{bad}");
        }
        assert_eq!(
            parse_port("70000").unwrap_err().to_string(),
            "\"70000\" is not a port (1-65535)"
        );
        assert_eq!(
            port_from_int(0).unwrap_err().to_string(),
            "0 is not a port (1-65535)"
        );
    }
}
