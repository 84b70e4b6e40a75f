//! The nftables and policy-routing rules of DESIGN §2: inside each enrolled pod (capture
//! to the outbound and inbound-plaintext ports, marks, the reply route table) and on the
//! node (SNAT of node-originated TCP to enrolled pods, IPv4 and IPv6, so kubelet probes
//! reach the app uncaptured). Every port, mark, table and probe address in them comes from
//! [`weft::dataplane`].
//!
//! The probe addresses are trusted by every enrolled pod, so they must be unforgeable by
//! pods: the node drops every packet with such a source that it did not originate itself —
//! frames entering its bridges from a pod port (`bridge` prerouting, before any forwarding;
//! VLAN-tagged frames from pods are dropped outright) and packets it would route (`inet`
//! forward). Its own SNAT-ed probes leave through the output path and are untouched.
//!
//! Every apply is one `nft -f` transaction that replaces weft's table whole, so rules are
//! applied atomically and re-applying is harmless. Commands run inside the pod's namespace
//! with `nsenter --net=<path>`.

use std::io::Write;
use std::net::IpAddr;
use std::path::Path;
use std::process::{Command, Stdio};

use weft::dataplane::{
    DELIVERED_CONNMARK, HBONE_PORT, INBOUND_PLAINTEXT_PORT, MARK_MASK, OUTBOUND_CAPTURE_PORT,
    PROBE_ADDR_V4, PROBE_ADDR_V6, PROXY_MARK, REPLY_ROUTE_RULE_PRIORITY, REPLY_ROUTE_TABLE,
};

const POD_TABLE: &str = "weft";
const NODE_TABLE: &str = "weft-node";
const NODE_BRIDGE_TABLE: &str = "weft-node-bridge";

/// The `ip rule` selector of transparently delivered replies, e.g. `0x111/0xfff`.
fn connmark_selector() -> String {
    format!("{DELIVERED_CONNMARK:#x}/{MARK_MASK:#x}")
}

/// A rule command that failed.
#[derive(Debug, thiserror::Error)]
#[error("{what} failed in {netns}: {detail}")]
pub struct RulesError {
    pub what: String,
    pub netns: String,
    pub detail: String,
}

/// The pod's ruleset, as one nft transaction (create, flush by delete, define).
pub fn pod_ruleset() -> String {
    let (mark, mask, connmark) = (
        format!("{PROXY_MARK:#x}"),
        format!("{MARK_MASK:#x}"),
        format!("{DELIVERED_CONNMARK:#x}"),
    );
    format!(
        r#"table inet {POD_TABLE}
delete table inet {POD_TABLE}
table inet {POD_TABLE} {{
  chain mangle_prerouting {{
    type filter hook prerouting priority mangle; policy accept;
    meta mark & {mask} == {mark} ct mark set {connmark}
  }}
  chain mangle_output {{
    type route hook output priority mangle; policy accept;
    ct mark & {mask} == {connmark} meta mark set ct mark
  }}
  chain nat_prerouting {{
    type nat hook prerouting priority dstnat; policy accept;
    meta l4proto tcp ip saddr {PROBE_ADDR_V4} accept
    meta l4proto tcp ip6 saddr {PROBE_ADDR_V6} accept
    meta l4proto tcp ip daddr != 127.0.0.0/8 tcp dport != {HBONE_PORT} meta mark & {mask} != {mark} redirect to :{INBOUND_PLAINTEXT_PORT}
    meta l4proto tcp ip6 daddr != ::1 tcp dport != {HBONE_PORT} meta mark & {mask} != {mark} redirect to :{INBOUND_PLAINTEXT_PORT}
  }}
  chain nat_output {{
    type nat hook output priority -100; policy accept;
    ip daddr {PROBE_ADDR_V4} accept
    ip6 daddr {PROBE_ADDR_V6} accept
    meta mark & {mask} == {connmark} accept
    oifname "lo" ip daddr != 127.0.0.0/8 accept
    oifname "lo" ip6 daddr != ::1 accept
    meta l4proto tcp ip daddr != 127.0.0.0/8 meta mark & {mask} != {mark} redirect to :{OUTBOUND_CAPTURE_PORT}
    meta l4proto tcp ip6 daddr != ::1 meta mark & {mask} != {mark} redirect to :{OUTBOUND_CAPTURE_PORT}
  }}
}}
"#
    )
}

fn in_netns(netns: &Path, program: &str) -> Command {
    let mut cmd = Command::new("nsenter");
    cmd.arg(format!("--net={}", netns.display())).arg(program);
    cmd
}

fn run(
    netns: &Path,
    what: &str,
    mut cmd: Command,
    stdin: Option<&str>,
) -> Result<String, RulesError> {
    let fail = |detail: String| RulesError {
        what: what.to_owned(),
        netns: netns.display().to_string(),
        detail,
    };
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .map_err(|e| fail(format!("cannot run {cmd:?}: {e}")))?;
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(text.as_bytes())
            .map_err(|e| fail(format!("writing to {what}: {e}")))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| fail(format!("waiting for {what}: {e}")))?;
    if !out.status.success() {
        return Err(fail(String::from_utf8_lossy(&out.stderr).trim().to_owned()));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Applies the pod's nft table and route rules (idempotent).
pub fn apply_pod_rules(netns: &Path, ips: &[IpAddr]) -> Result<(), RulesError> {
    let mut nft = in_netns(netns, "nft");
    nft.args(["-f", "-"]);
    run(netns, "nft (pod rules)", nft, Some(&pod_ruleset()))?;
    let has_v6 = ips.iter().any(IpAddr::is_ipv6);
    for (family, local_all) in [("-4", "0.0.0.0/0"), ("-6", "::/0")] {
        let result = ensure_route_rule(netns, family, local_all);
        match result {
            Err(error) if family == "-6" && !has_v6 => {
                tracing::debug!(%error, "IPv6 routing rule not applied (pod has no IPv6 address)");
            }
            other => other?,
        }
    }
    Ok(())
}

fn ensure_route_rule(netns: &Path, family: &str, local_all: &str) -> Result<(), RulesError> {
    let (selector, table) = (connmark_selector(), REPLY_ROUTE_TABLE.to_string());
    let mut show = in_netns(netns, "ip");
    show.args([family, "rule", "show", "table", &table]);
    let existing = run(netns, "ip rule show", show, None)?;
    if !existing.contains(&format!("fwmark {selector}")) {
        let mut add = in_netns(netns, "ip");
        add.args([family, "rule", "add", "fwmark", &selector, "pref"])
            .arg(REPLY_ROUTE_RULE_PRIORITY.to_string())
            .args(["lookup", &table]);
        run(netns, "ip rule add", add, None)?;
    }
    let mut route = in_netns(netns, "ip");
    route.args([
        family, "route", "replace", "local", local_all, "dev", "lo", "table", &table,
    ]);
    run(netns, "ip route replace", route, None)?;
    Ok(())
}

/// Removes everything `apply_pod_rules` added; missing pieces are not an error.
pub fn remove_pod_rules(netns: &Path) -> Result<(), RulesError> {
    let mut nft = in_netns(netns, "nft");
    nft.args(["-f", "-"]);
    run(
        netns,
        "nft (remove pod rules)",
        nft,
        Some(&format!(
            "table inet {POD_TABLE}\ndelete table inet {POD_TABLE}\n"
        )),
    )?;
    let (selector, table) = (connmark_selector(), REPLY_ROUTE_TABLE.to_string());
    for family in ["-4", "-6"] {
        let mut del = in_netns(netns, "ip");
        del.args([family, "rule", "del", "fwmark", &selector, "lookup", &table]);
        let _ = run(netns, "ip rule del", del, None);
        let mut flush = in_netns(netns, "ip");
        flush.args([family, "route", "flush", "table", &table]);
        let _ = run(netns, "ip route flush", flush, None);
    }
    Ok(())
}

/// Whether the pod's capture table is in place.
pub fn pod_rules_present(netns: &Path) -> bool {
    let mut list = in_netns(netns, "nft");
    list.args(["list", "table", "inet", POD_TABLE]);
    let capture = format!("redirect to :{OUTBOUND_CAPTURE_PORT}");
    run(netns, "nft list", list, None).is_ok_and(|text| text.contains(&capture))
}

/// The node's SNAT table for probes to the given enrolled pod IPs (replaced whole).
pub fn node_ruleset(enrolled: &[IpAddr]) -> String {
    let list = |v4: bool| {
        enrolled
            .iter()
            .filter(|ip| ip.is_ipv4() == v4)
            .map(IpAddr::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    };
    let (v4, v6) = (list(true), list(false));
    let elements = |items: &str| {
        if items.is_empty() {
            String::new()
        } else {
            format!(" elements = {{ {items} }};")
        }
    };
    format!(
        r#"table inet {NODE_TABLE}
delete table inet {NODE_TABLE}
table inet {NODE_TABLE} {{
  set enrolled4 {{ type ipv4_addr;{} }}
  set enrolled6 {{ type ipv6_addr;{} }}
  chain postrouting {{
    type nat hook postrouting priority srcnat; policy accept;
    ip daddr @enrolled4 meta l4proto tcp fib saddr type local snat ip to {PROBE_ADDR_V4}
    ip6 daddr @enrolled6 meta l4proto tcp fib saddr type local snat ip6 to {PROBE_ADDR_V6}
  }}
  chain forward {{
    type filter hook forward priority filter - 10; policy accept;
    ip saddr {PROBE_ADDR_V4} counter drop comment "spoofed probe source"
    ip6 saddr {PROBE_ADDR_V6} counter drop comment "spoofed probe source"
  }}
}}
table bridge {NODE_BRIDGE_TABLE}
delete table bridge {NODE_BRIDGE_TABLE}
table bridge {NODE_BRIDGE_TABLE} {{
  chain prerouting {{
    type filter hook prerouting priority -300; policy accept;
    ether type ip ip saddr {PROBE_ADDR_V4} counter drop comment "spoofed probe source"
    ether type ip6 ip6 saddr {PROBE_ADDR_V6} counter drop comment "spoofed probe source"
    ether type {{ 8021q, 8021ad }} counter drop comment "VLAN-tagged frames could carry a spoofed probe source"
  }}
}}
"#,
        elements(&v4),
        elements(&v6)
    )
}

/// Applies the node-side table in the daemon's own namespace.
pub fn apply_node_rules(enrolled: &[IpAddr]) -> Result<(), RulesError> {
    let here = Path::new("/proc/self/ns/net");
    let mut nft = Command::new("nft");
    nft.args(["-f", "-"]);
    run(here, "nft (node rules)", nft, Some(&node_ruleset(enrolled)))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_ruleset_matches_the_design() {
        let rules = pod_ruleset();
        assert!(
            rules.contains("type route hook output"),
            "output mangle must be a route chain"
        );
        // The values DESIGN §2 names, as the constants produce them.
        assert!(rules.contains("redirect to :15001"), "{rules}");
        assert!(rules.contains("redirect to :15006"), "{rules}");
        assert!(rules.contains("tcp dport != 15008"), "{rules}");
        assert!(rules.contains("ip saddr 169.254.7.127 accept"), "{rules}");
        assert!(
            rules.contains("meta mark & 0xfff == 0x539 ct mark set 0x111"),
            "{rules}"
        );
        assert!(
            rules.contains("ct mark & 0xfff == 0x111 meta mark set ct mark"),
            "{rules}"
        );
    }

    #[test]
    fn pod_ruleset_is_generated_from_the_dataplane_constants() {
        let rules = pod_ruleset();
        for needle in [
            format!("redirect to :{OUTBOUND_CAPTURE_PORT}"),
            format!("redirect to :{INBOUND_PLAINTEXT_PORT}"),
            format!("tcp dport != {HBONE_PORT}"),
            format!("!= {PROXY_MARK:#x} redirect"),
            format!("== {PROXY_MARK:#x} ct mark set {DELIVERED_CONNMARK:#x}"),
            format!("& {MARK_MASK:#x} == {DELIVERED_CONNMARK:#x} accept"),
            format!("ip saddr {PROBE_ADDR_V4} accept"),
            format!("ip6 saddr {PROBE_ADDR_V6} accept"),
            format!("ip daddr {PROBE_ADDR_V4} accept"),
            format!("ip6 daddr {PROBE_ADDR_V6} accept"),
        ] {
            assert!(rules.contains(&needle), "missing {needle:?} in\n{rules}");
        }
        assert_eq!(connmark_selector(), "0x111/0xfff");
    }

    #[test]
    fn node_ruleset_lists_enrolled_ips() {
        let rules = node_ruleset(&["10.1.0.5".parse().unwrap(), "10.1.0.6".parse().unwrap()]);
        assert!(
            rules.contains("elements = { 10.1.0.5, 10.1.0.6 }"),
            "{rules}"
        );
        let empty = node_ruleset(&[]);
        assert!(!empty.contains("elements"), "{empty}");
        // Pods cannot forge the probe source, even with no pod enrolled yet.
        assert!(empty.contains("table bridge weft-node-bridge"), "{empty}");
        assert!(
            empty.contains("ip saddr 169.254.7.127 counter drop"),
            "{empty}"
        );
        assert!(
            empty.contains(&format!("ip6 saddr {PROBE_ADDR_V6} counter drop")),
            "{empty}"
        );
        assert!(
            empty.contains(&format!(
                "ether type ip6 ip6 saddr {PROBE_ADDR_V6} counter drop"
            )),
            "{empty}"
        );
    }

    #[test]
    fn ipv6_probes_to_enrolled_pods_are_snated_to_the_v6_probe_address() {
        let rules = node_ruleset(&["10.1.0.5".parse().unwrap(), "fd00:10:1::5".parse().unwrap()]);
        let set = rules
            .lines()
            .find(|l| l.contains("set enrolled6"))
            .expect("enrolled6 set");
        assert!(set.contains("elements = { fd00:10:1::5 }"), "{rules}");
        assert!(
            rules.contains(&format!(
                "ip6 daddr @enrolled6 meta l4proto tcp fib saddr type local snat ip6 to {PROBE_ADDR_V6}"
            )),
            "{rules}"
        );
        assert!(
            rules.contains(&format!(
                "ip daddr @enrolled4 meta l4proto tcp fib saddr type local snat ip to {PROBE_ADDR_V4}"
            )),
            "{rules}"
        );
    }

    /// The generated rulesets are valid nft: loaded by the real `nft` in a throwaway network
    /// namespace, and the kernel holds the IPv6 SNAT. Needs root, `unshare` and `nft`
    /// (skipped without them unless WEFT_E2E=1).
    #[test]
    fn rulesets_load_into_the_kernel() {
        let tools_present = ["unshare", "nft"].iter().all(|tool| {
            std::env::var_os("PATH").is_some_and(|paths| {
                std::env::split_paths(&paths).any(|dir| dir.join(tool).is_file())
            })
        });
        // Effective uid: the second field of /proc/self/status's `Uid:` line.
        let root = std::fs::read_to_string("/proc/self/status").is_ok_and(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|ids| ids.split_whitespace().nth(1).map(|euid| euid == "0"))
                .unwrap_or(false)
        });
        if !(root && tools_present) {
            assert!(
                std::env::var("WEFT_E2E").map_or(true, |v| v != "1"),
                "WEFT_E2E=1 but root, unshare or nft is missing"
            );
            eprintln!("skipping: needs root, unshare and nft");
            return;
        }
        let ruleset = format!(
            "{}{}",
            node_ruleset(&["10.1.0.5".parse().unwrap(), "fd00:10:1::5".parse().unwrap()]),
            pod_ruleset()
        );
        let mut nft = Command::new("unshare");
        nft.args(["--net", "sh", "-c", "nft -f - && nft list ruleset"]);
        let listing = run(Path::new("(new netns)"), "nft", nft, Some(&ruleset))
            .unwrap_or_else(|e| panic!("{e}\n{ruleset}"));
        assert!(
            listing.contains(&format!("snat ip6 to {PROBE_ADDR_V6}")),
            "{listing}"
        );
        assert!(listing.contains("fd00:10:1::5"), "{listing}");
        assert!(
            listing.contains(&format!("redirect to :{OUTBOUND_CAPTURE_PORT}")),
            "{listing}"
        );
    }
}
