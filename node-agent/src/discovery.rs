//! Discovery: finding the network namespaces of pods that were already running on the node
//! before this daemon could hear about them through CNI (a fresh install, or pods created
//! while the daemon was down and weft's CNI plugin was not installed).
//!
//! Nothing here changes anything: it only reads procfs. [`scan`] walks `/proc`, and for
//! every process reads which network namespace it is in (`/proc/<pid>/ns/net`) and which
//! pod it belongs to (the pod UID kubelet puts in the pod's cgroup name, from
//! `/proc/<pid>/cgroup`). It returns one [`Sandbox`] per pod whose namespace is certain:
//! the node's own namespace is skipped (the daemon runs with host network, and so do
//! hostNetwork pods), and a namespace claimed by two pods, or a pod seen in two namespaces,
//! is left out rather than guessed.
//!
//! A sandbox found here is only a candidate. Before enrolling it the daemon checks that the
//! API says that pod (by UID) has IP X and that the namespace really holds X
//! ([`Sandbox::has_local_ip`], from the process's own view of its namespace in
//! `/proc/<pid>/net`, no `setns` needed), then opens [`Sandbox::netns_path`] once and checks
//! that the handle's inode is [`Sandbox::netns_inode`] (the pid may have been reused since).

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};

/// What stops a scan as a whole (a single process that vanishes or cannot be read is
/// skipped, never an error).
#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    #[error("cannot list processes in {path}: {source}")]
    ReadProc { path: PathBuf, source: io::Error },
}

/// A pod found running on the node, with the network namespace its processes are in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sandbox {
    /// The pod's UID (canonical UUID, lowercase), as the API reports `metadata.uid`.
    pub pod_uid: String,
    /// The namespace's inode (the number in `net:[...]`).
    pub netns_inode: u64,
    /// The lowest pid of the pod's processes in that namespace (stable across scans while
    /// it lives).
    pub pid: u32,
    /// `<proc>/<pid>/ns/net`: the namespace, for as long as `pid` lives.
    pub netns_path: PathBuf,
}

impl Sandbox {
    /// `<proc>/<pid>`, the process whose namespace this is.
    pub fn pid_dir(&self) -> &Path {
        // netns_path is always <proc>/<pid>/ns/net (made by scan).
        self.netns_path.ancestors().nth(2).unwrap_or(Path::new("/"))
    }

    /// Whether the namespace holds `ip` on one of its interfaces, and the process is still
    /// in the namespace the scan saw (its pid not reused meanwhile). False when the process
    /// is gone or its addresses cannot be read.
    pub fn has_local_ip(&self, ip: IpAddr) -> bool {
        let held = has_local_ip(self.pid_dir(), ip);
        held && netns_inode_of(&self.netns_path).ok() == Some(self.netns_inode)
    }
}

/// The inode of the calling thread's network namespace: the node's own when called by the
/// daemon outside [`crate::netns::Netns::run`]. Always the daemon's own procfs
/// (`/proc/thread-self`), never a host `/proc` mounted elsewhere, where `self` names a pid
/// of another pid namespace or nothing.
pub fn current_netns_inode() -> io::Result<u64> {
    netns_inode_of(Path::new("/proc/thread-self/ns/net"))
}

/// Lists the pods running under `proc_dir` (normally `/proc`) and their network namespaces,
/// sorted by pod UID, leaving out the namespace `own_netns` (the node's own) and every
/// ambiguous pod or namespace (a warning says which, once per scan).
pub fn scan(proc_dir: &Path, own_netns: u64) -> Result<Vec<Sandbox>, DiscoveryError> {
    let entries = std::fs::read_dir(proc_dir).map_err(|source| DiscoveryError::ReadProc {
        path: proc_dir.to_owned(),
        source,
    })?;
    // (uid, inode) -> lowest pid seen.
    let mut found: BTreeMap<(String, u64), u32> = BTreeMap::new();
    for entry in entries {
        let Ok(entry) = entry else { continue };
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let pid_dir = entry.path();
        let inode = match netns_inode_of(&pid_dir.join("ns").join("net")) {
            Ok(inode) => inode,
            Err(error) => {
                tracing::debug!(pid, %error, "skipping process: cannot read its network namespace");
                continue;
            }
        };
        if inode == own_netns {
            continue;
        }
        let cgroup = match std::fs::read_to_string(pid_dir.join("cgroup")) {
            Ok(text) => text,
            Err(error) => {
                tracing::debug!(pid, %error, "skipping process: cannot read its cgroup");
                continue;
            }
        };
        let Some(uid) = pod_uid_from_cgroup(&cgroup, pid) else {
            continue;
        };
        found
            .entry((uid, inode))
            .and_modify(|lowest| *lowest = (*lowest).min(pid))
            .or_insert(pid);
    }
    Ok(unambiguous(proc_dir, found))
}

/// One sandbox per pod and namespace claimed by nothing else.
fn unambiguous(proc_dir: &Path, found: BTreeMap<(String, u64), u32>) -> Vec<Sandbox> {
    let mut namespaces_of: BTreeMap<&str, BTreeSet<u64>> = BTreeMap::new();
    let mut pods_in: BTreeMap<u64, BTreeSet<&str>> = BTreeMap::new();
    for (uid, inode) in found.keys() {
        namespaces_of.entry(uid).or_default().insert(*inode);
        pods_in.entry(*inode).or_default().insert(uid);
    }
    let split_pods: Vec<&str> = namespaces_of
        .iter()
        .filter(|(_, inodes)| inodes.len() > 1)
        .map(|(uid, _)| *uid)
        .collect();
    let shared_namespaces: Vec<u64> = pods_in
        .iter()
        .filter(|(_, uids)| uids.len() > 1)
        .map(|(inode, _)| *inode)
        .collect();
    if !split_pods.is_empty() || !shared_namespaces.is_empty() {
        tracing::warn!(
            pods_in_several_netns = ?split_pods,
            netns_of_several_pods = ?shared_namespaces,
            "ambiguous pod network namespaces left out of discovery"
        );
    }
    // `found` is sorted by (uid, inode) and each kept uid has one inode: sorted by uid.
    found
        .iter()
        .filter(|((uid, inode), _)| {
            !split_pods.contains(&uid.as_str()) && !shared_namespaces.contains(inode)
        })
        .map(|((uid, inode), pid)| Sandbox {
            pod_uid: uid.clone(),
            netns_inode: *inode,
            pid: *pid,
            netns_path: proc_dir.join(pid.to_string()).join("ns").join("net"),
        })
        .collect()
}

/// The inode of the namespace link at `path` (`net:[4026531840]`).
fn netns_inode_of(path: &Path) -> io::Result<u64> {
    let target = std::fs::read_link(path)?;
    target
        .to_str()
        .and_then(|t| t.strip_prefix("net:["))
        .and_then(|t| t.strip_suffix(']'))
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("not a network namespace link: {}", target.display()),
            )
        })
}

/// The pod UID named by a `/proc/<pid>/cgroup` file, if every line that names a pod names
/// the same one (cgroup v1 `N:controllers:/path` lines and the v2 `0::/path` line).
fn pod_uid_from_cgroup(cgroup: &str, pid: u32) -> Option<String> {
    let mut uids = cgroup
        .lines()
        .filter_map(|line| line.splitn(3, ':').nth(2))
        .filter_map(pod_uid_from_path)
        .collect::<BTreeSet<_>>()
        .into_iter();
    let uid = uids.next()?;
    if uids.next().is_some() {
        tracing::debug!(pid, "skipping process: its cgroups name several pods");
        return None;
    }
    Some(uid)
}

/// The pod UID in one cgroup path, as kubelet names pod cgroups under its `kubepods`
/// cgroup: cgroupfs driver `.../kubepods[/besteffort|/burstable]/pod<uid>/...`, systemd
/// driver `.../kubepods[-besteffort|-burstable]-pod<uid with _ for ->.slice/...` (a
/// kubelet slice prefix like `kubelet-kubepods-...` as well). A `/../..` prefix (a path
/// outside the reader's cgroup namespace) changes nothing.
fn pod_uid_from_path(path: &str) -> Option<String> {
    let mut under_kubepods = false;
    for component in path.split('/') {
        if let Some(slice) = component.strip_suffix(".slice") {
            let mut parts = slice.split('-');
            if parts.any(|part| part == "kubepods") {
                under_kubepods = true;
                if let Some(uid) = slice
                    .rsplit_once('-')
                    .and_then(|(_, last)| last.strip_prefix("pod"))
                    .filter(|uid| !uid.contains('-'))
                    .map(|uid| uid.replace('_', "-"))
                    .filter(|uid| is_canonical_uuid(uid))
                {
                    return Some(uid);
                }
            }
        } else if component == "kubepods" {
            under_kubepods = true;
        } else if under_kubepods {
            if let Some(uid) = component
                .strip_prefix("pod")
                .filter(|uid| is_canonical_uuid(uid))
            {
                return Some(uid.to_owned());
            }
        }
    }
    None
}

/// 8-4-4-4-12 lowercase hex digits.
fn is_canonical_uuid(s: &str) -> bool {
    s.len() == 36
        && s.bytes().enumerate().all(|(i, b)| match i {
            8 | 13 | 18 | 23 => b == b'-',
            _ => b.is_ascii_digit() || (b'a'..=b'f').contains(&b),
        })
}

/// Whether the network namespace of the process at `pid_dir` (`<proc>/<pid>`) holds `ip` on
/// one of its interfaces. False when the addresses cannot be read (the process is gone).
pub fn has_local_ip(pid_dir: &Path, ip: IpAddr) -> bool {
    match local_addresses(pid_dir) {
        Ok(addresses) => addresses.contains(&ip),
        Err(error) => {
            tracing::debug!(pid_dir = %pid_dir.display(), %error, "cannot read the addresses of a namespace");
            false
        }
    }
}

/// The addresses on the interfaces of the network namespace the process at `pid_dir` is in:
/// IPv4 from `net/fib_trie` (the `/32 host LOCAL` entries), IPv6 from `net/if_inet6` (absent
/// when IPv6 is disabled, which is no error).
pub fn local_addresses(pid_dir: &Path) -> io::Result<BTreeSet<IpAddr>> {
    let net = pid_dir.join("net");
    let mut addresses: BTreeSet<IpAddr> =
        parse_fib_trie(&std::fs::read_to_string(net.join("fib_trie"))?)
            .into_iter()
            .map(IpAddr::V4)
            .collect();
    match std::fs::read_to_string(net.join("if_inet6")) {
        Ok(text) => addresses.extend(parse_if_inet6(&text).into_iter().map(IpAddr::V6)),
        Err(error) if error.kind() == io::ErrorKind::NotFound => {}
        Err(error) => return Err(error),
    }
    Ok(addresses)
}

/// The local IPv4 addresses of a `fib_trie` dump: a leaf `|-- a.b.c.d` followed by one line
/// per prefix on it, of which `/32 host LOCAL` marks an address of this namespace.
fn parse_fib_trie(text: &str) -> BTreeSet<Ipv4Addr> {
    let mut addresses = BTreeSet::new();
    let mut leaf: Option<Ipv4Addr> = None;
    for line in text.lines() {
        let line = line.trim();
        if let Some(addr) = line.strip_prefix("|--") {
            leaf = addr.trim().parse().ok();
        } else if line.starts_with('/') {
            let words: Vec<&str> = line.split_whitespace().collect();
            if let (Some(addr), ["/32", .., "LOCAL"]) = (leaf, words.as_slice()) {
                addresses.insert(addr);
            }
        } else {
            // A `+--` node, a table name (`Main:`, `Local:`): no leaf in hand.
            leaf = None;
        }
    }
    addresses
}

/// The IPv6 addresses of an `if_inet6` table: one line per address, 32 hex digits first.
fn parse_if_inet6(text: &str) -> BTreeSet<Ipv6Addr> {
    text.lines()
        .filter_map(|line| line.split_whitespace().next())
        .filter(|hex| hex.len() == 32)
        .filter_map(|hex| u128::from_str_radix(hex, 16).ok())
        .map(Ipv6Addr::from)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;
    use std::process::{Child, Command};
    use std::sync::atomic::{AtomicU32, Ordering};

    const UID_A: &str = "1b4e28ba-2fa1-11d2-883f-0016d3cca427";
    const UID_B: &str = "6f0c1a5e-9d3b-4c2a-8e7f-0a1b2c3d4e5f";
    const UID_C: &str = "00000000-0000-4000-8000-00000000000c";
    const OWN: u64 = 4026531840;

    /// A fake procfs in a temp dir, removed on drop.
    struct FakeProc {
        root: PathBuf,
    }

    impl FakeProc {
        fn new() -> FakeProc {
            static NEXT: AtomicU32 = AtomicU32::new(0);
            let root = std::env::temp_dir().join(format!(
                "weft-discovery-{}-{}",
                std::process::id(),
                NEXT.fetch_add(1, Ordering::Relaxed)
            ));
            std::fs::create_dir_all(&root).expect("temp dir");
            FakeProc { root }
        }

        /// A process in netns `inode` (no link when None) with this cgroup file (none when None).
        fn process(&self, pid: u32, inode: Option<u64>, cgroup: Option<&str>) -> PathBuf {
            let dir = self.root.join(pid.to_string());
            std::fs::create_dir_all(dir.join("ns")).expect("pid dir");
            if let Some(inode) = inode {
                symlink(format!("net:[{inode}]"), dir.join("ns/net")).expect("ns link");
            }
            if let Some(cgroup) = cgroup {
                std::fs::write(dir.join("cgroup"), cgroup).expect("cgroup file");
            }
            dir
        }
    }

    impl Drop for FakeProc {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.root);
        }
    }

    fn v1_cgroupfs(uid: &str, qos: &str) -> String {
        format!(
            "12:pids:/kubepods/{qos}/pod{uid}/0123abcd\n\
             11:memory:/kubepods/{qos}/pod{uid}/0123abcd\n\
             1:name=systemd:/kubepods/{qos}/pod{uid}/0123abcd\n\
             0::/\n"
        )
    }

    fn v2_systemd(uid: &str) -> String {
        format!(
            "0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{}.slice/cri-containerd-0123abcd.scope\n",
            uid.replace('-', "_")
        )
    }

    fn uids(found: &[Sandbox]) -> Vec<&str> {
        found.iter().map(|s| s.pod_uid.as_str()).collect()
    }

    #[test]
    fn cgroup_paths_of_both_drivers_name_the_pod() {
        let underscored = UID_A.replace('-', "_");
        for path in [
            format!("/kubepods/besteffort/pod{UID_A}/abc"),
            format!("/kubepods/burstable/pod{UID_A}"),
            format!("/kubepods/pod{UID_A}/abc"),
            format!("/../../kubepods/besteffort/pod{UID_A}/abc"),
            format!("/kubelet/kubepods/besteffort/pod{UID_A}/abc"),
            format!("/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{underscored}.slice/cri-containerd-abc.scope"),
            format!("/kubepods.slice/kubepods-pod{underscored}.slice/crio-abc.scope"),
            format!("/../../kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{underscored}.slice"),
            format!("/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice/kubelet-kubepods-besteffort-pod{underscored}.slice/x.scope"),
        ] {
            assert_eq!(pod_uid_from_path(&path).as_deref(), Some(UID_A), "{path}");
        }
    }

    #[test]
    fn other_cgroup_paths_are_not_pods() {
        let upper = UID_A.to_uppercase();
        for path in [
            "/".to_string(),
            "/user.slice/user-1000.slice/session-2.scope".to_string(),
            "/system.slice/containerd.service".to_string(),
            "/kubepods/besteffort".to_string(),
            "/kubepods.slice/kubepods-besteffort.slice".to_string(),
            // Not under kubepods.
            format!("/docker/pod{UID_A}"),
            format!("/user.slice/user-pod{}.slice", UID_A.replace('-', "_")),
            // Not a canonical UUID: upper case, short, wrong layout, dashes in a slice name.
            format!("/kubepods/besteffort/pod{upper}"),
            format!("/kubepods/besteffort/pod{}", &UID_A[..35]),
            "/kubepods/besteffort/pod1b4e28ba2fa1-11d2-883f-0016d3cca4270".to_string(),
            format!("/kubepods.slice/kubepods-besteffort-pod{UID_A}.slice"),
            format!("/kubepods/besteffort/pod{}", UID_A.replace('-', "_")),
        ] {
            assert_eq!(pod_uid_from_path(&path), None, "{path}");
        }
    }

    #[test]
    fn a_process_whose_cgroups_name_two_pods_is_no_pod() {
        let both = format!("2:pids:/kubepods/pod{UID_A}/x\n1:cpu:/kubepods/pod{UID_B}/x\n");
        assert_eq!(pod_uid_from_cgroup(&both, 1), None);
        let same = format!("2:pids:/kubepods/pod{UID_A}/x\n0::/kubepods/pod{UID_A}/y\n");
        assert_eq!(pod_uid_from_cgroup(&same, 1).as_deref(), Some(UID_A));
    }

    #[test]
    fn scan_finds_pods_skips_the_node_and_unreadable_processes() {
        let proc = FakeProc::new();
        // Pod A (cgroupfs, v1): pause 300, app 200 and 250 in the same netns.
        proc.process(300, Some(111), Some(&v1_cgroupfs(UID_A, "besteffort")));
        proc.process(200, Some(111), Some(&v1_cgroupfs(UID_A, "besteffort")));
        proc.process(250, Some(111), Some(&v1_cgroupfs(UID_A, "besteffort")));
        // Pod B (systemd, v2).
        proc.process(40, Some(222), Some(&v2_systemd(UID_B)));
        // A hostNetwork pod and the daemon itself: the node's namespace.
        proc.process(50, Some(OWN), Some(&v1_cgroupfs(UID_C, "burstable")));
        proc.process(
            1,
            Some(OWN),
            Some("1:name=systemd:/init.scope\n0::/init.scope\n"),
        );
        // Not a pod, in a namespace of its own.
        proc.process(
            60,
            Some(333),
            Some("0::/user.slice/user-1000.slice/session-1.scope\n"),
        );
        // Vanished: no ns link; a dangling dir with no cgroup; a bad link.
        proc.process(70, None, Some(&v1_cgroupfs(UID_C, "besteffort")));
        proc.process(71, Some(444), None);
        let bad = proc.process(72, None, Some(&v1_cgroupfs(UID_C, "besteffort")));
        symlink("mnt:[5]", bad.join("ns/net")).expect("link");
        // Not processes.
        std::fs::create_dir_all(proc.root.join("self/ns")).expect("dir");
        std::fs::write(proc.root.join("uptime"), "1 1\n").expect("file");

        let found = scan(&proc.root, OWN).expect("scan");
        assert_eq!(
            found,
            vec![
                Sandbox {
                    pod_uid: UID_A.into(),
                    netns_inode: 111,
                    pid: 200,
                    netns_path: proc.root.join("200/ns/net"),
                },
                Sandbox {
                    pod_uid: UID_B.into(),
                    netns_inode: 222,
                    pid: 40,
                    netns_path: proc.root.join("40/ns/net"),
                },
            ]
        );
        assert_eq!(found[0].pid_dir(), proc.root.join("200"));
    }

    #[test]
    fn ambiguous_pods_and_namespaces_are_left_out() {
        let proc = FakeProc::new();
        // One netns claimed by pods A and B.
        proc.process(10, Some(111), Some(&v1_cgroupfs(UID_A, "besteffort")));
        proc.process(11, Some(111), Some(&v2_systemd(UID_B)));
        // Pod C in two namespaces.
        proc.process(20, Some(222), Some(&v1_cgroupfs(UID_C, "burstable")));
        proc.process(21, Some(333), Some(&v1_cgroupfs(UID_C, "burstable")));
        // An unambiguous pod next to them.
        let uid_d = "d0d0d0d0-0000-4000-8000-000000000000";
        proc.process(30, Some(444), Some(&v2_systemd(uid_d)));
        assert_eq!(uids(&scan(&proc.root, OWN).expect("scan")), vec![uid_d]);
    }

    #[test]
    fn a_pod_sharing_a_netns_with_an_ambiguous_pod_is_left_out_too() {
        // A in 111 and 222, B in 222: A is split, and 222 is shared, so B goes as well.
        let proc = FakeProc::new();
        proc.process(10, Some(111), Some(&v1_cgroupfs(UID_A, "besteffort")));
        proc.process(11, Some(222), Some(&v1_cgroupfs(UID_A, "besteffort")));
        proc.process(12, Some(222), Some(&v1_cgroupfs(UID_B, "besteffort")));
        assert!(scan(&proc.root, OWN).expect("scan").is_empty());
    }

    #[test]
    fn an_unreadable_proc_dir_is_an_error() {
        let proc = FakeProc::new();
        assert!(matches!(
            scan(&proc.root.join("missing"), OWN),
            Err(DiscoveryError::ReadProc { .. })
        ));
    }

    const FIB_TRIE: &str = "\
Main:
  +-- 0.0.0.0/0 3 0 5
     |-- 0.0.0.0
        /0 universe UNICAST
     +-- 10.244.0.0/16 2 0 2
        +-- 10.244.1.0/24 2 0 2
           |-- 10.244.1.0
              /24 link UNICAST
           |-- 10.244.1.7
              /32 host LOCAL
        |-- 10.244.1.255
           /32 link BROADCAST
     +-- 127.0.0.0/8 2 0 2
        +-- 127.0.0.0/31 1 0 0
           |-- 127.0.0.0
              /8 host LOCAL
           |-- 127.0.0.1
              /32 host LOCAL
        |-- 127.255.255.255
           /32 link BROADCAST
     |-- 169.254.1.1
        /32 link UNICAST
     |-- 192.168.9.9
        /32 link UNICAST
        /32 host LOCAL
Local:
  +-- 0.0.0.0/0 3 0 5
     |-- 10.244.1.7
        /32 host LOCAL
";

    const IF_INET6: &str = "\
00000000000000000000000000000001 01 80 10 80       lo
fd00001000000000000000000000a0b7 02 40 00 80     eth0
fe80000000000000a8c1abfffe1e2f3d 02 40 20 80     eth0
";

    #[test]
    fn fib_trie_lists_the_local_ipv4_addresses() {
        let expected: BTreeSet<Ipv4Addr> = ["10.244.1.7", "127.0.0.1", "192.168.9.9"]
            .iter()
            .map(|a| a.parse().expect("ip"))
            .collect();
        assert_eq!(parse_fib_trie(FIB_TRIE), expected);
    }

    #[test]
    fn if_inet6_lists_the_ipv6_addresses() {
        let expected: BTreeSet<Ipv6Addr> = ["::1", "fd00:10::a0b7", "fe80::a8c1:abff:fe1e:2f3d"]
            .iter()
            .map(|a| a.parse().expect("ip"))
            .collect();
        assert_eq!(parse_if_inet6(IF_INET6), expected);
    }

    #[test]
    fn a_sandbox_holds_its_addresses_while_its_process_stays_in_the_namespace() {
        let proc = FakeProc::new();
        let dir = proc.process(9, Some(111), Some(&v1_cgroupfs(UID_A, "guaranteed")));
        std::fs::create_dir_all(dir.join("net")).expect("net dir");
        std::fs::write(dir.join("net/fib_trie"), FIB_TRIE).expect("fib_trie");
        let found = scan(&proc.root, OWN).expect("scan");
        assert_eq!(uids(&found), vec![UID_A]);
        let sandbox = &found[0];
        let pod_ip: IpAddr = "10.244.1.7".parse().expect("ip");
        // No if_inet6 (IPv6 disabled): IPv4 still read.
        assert!(sandbox.has_local_ip(pod_ip));
        assert!(!sandbox.has_local_ip("10.244.1.8".parse().expect("ip")));
        assert!(!sandbox.has_local_ip("fd00:10::a0b7".parse().expect("ip")));
        std::fs::write(dir.join("net/if_inet6"), IF_INET6).expect("if_inet6");
        assert!(sandbox.has_local_ip("fd00:10::a0b7".parse().expect("ip")));
        // The pid now names a process in another namespace: no longer this sandbox.
        std::fs::remove_file(dir.join("ns/net")).expect("rm");
        symlink("net:[999]", dir.join("ns/net")).expect("link");
        assert!(has_local_ip(&dir, pod_ip));
        assert!(!sandbox.has_local_ip(pod_ip));
        // Gone altogether.
        std::fs::remove_dir_all(&dir).expect("rm");
        assert!(!has_local_ip(&dir, pod_ip));
    }

    #[test]
    fn the_real_namespace_of_this_thread_is_found() {
        let inode = current_netns_inode().expect("own netns");
        let via_self = netns_inode_of(Path::new("/proc/self/ns/net")).expect("self");
        assert_eq!(inode, via_self);
        local_addresses(Path::new("/proc/self")).expect("addresses of our own namespace");
    }

    /// A process in a new netns, in a kubelet-like pod cgroup of the v1 pids hierarchy (or
    /// cgroup2): moved back, killed and its cgroup dirs removed on drop, pass or fail.
    struct RealPod {
        child: Child,
        hierarchy: PathBuf,
        /// Created dirs, top first.
        dirs: Vec<PathBuf>,
    }

    impl Drop for RealPod {
        fn drop(&mut self) {
            let _ = std::fs::write(
                self.hierarchy.join("cgroup.procs"),
                self.child.id().to_string(),
            );
            let _ = self.child.kill();
            let _ = self.child.wait();
            for dir in self.dirs.iter().rev() {
                // A reaped process may take a moment to leave the cgroup.
                for _ in 0..50 {
                    if std::fs::remove_dir(dir).is_ok() || !dir.exists() {
                        break;
                    }
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
            }
        }
    }

    fn cgroup_hierarchy() -> Option<PathBuf> {
        let root = Path::new("/sys/fs/cgroup");
        [root.join("pids"), root.join("unified"), root.to_owned()]
            .into_iter()
            .find(|h| h.join("cgroup.procs").is_file())
    }

    fn e2e_ready() -> bool {
        let required = std::env::var("WEFT_E2E").is_ok_and(|v| v == "1");
        // The effective uid: the second field of `Uid:` in /proc/self/status.
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        let euid = status
            .lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .and_then(|l| l.split_whitespace().nth(1));
        if euid == Some("0") {
            return true;
        }
        assert!(!required, "WEFT_E2E=1 but this test needs root");
        eprintln!("skipping: not root (set WEFT_E2E=1 to make this a failure)");
        false
    }

    #[test]
    fn scan_finds_a_real_pod_namespace() {
        if !e2e_ready() {
            return;
        }
        let own = current_netns_inode().expect("own netns");
        let hierarchy = cgroup_hierarchy().expect("a cgroup hierarchy under /sys/fs/cgroup");
        let me = std::process::id();
        let uid = format!("{me:08x}-0000-4000-8000-{:012x}", u64::from(me) << 8 | 0xd1);
        let child = Command::new("unshare")
            .args(["-n", "sleep", "30"])
            .spawn()
            .expect("unshare -n sleep 30");
        let top = hierarchy.join(format!("weft-test-{me}"));
        let pod_dir = top.join(format!("kubepods/besteffort/pod{uid}"));
        let pod = RealPod {
            child,
            dirs: vec![
                top.clone(),
                top.join("kubepods"),
                top.join("kubepods/besteffort"),
                pod_dir.clone(),
            ],
            hierarchy,
        };
        let pid = pod.child.id();
        let link = PathBuf::from(format!("/proc/{pid}/ns/net"));
        // unshare execs sleep once the namespace is made.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let inode = loop {
            match netns_inode_of(&link) {
                Ok(inode) if inode != own => break inode,
                _ if std::time::Instant::now() > deadline => panic!("child never left our netns"),
                _ => std::thread::sleep(std::time::Duration::from_millis(10)),
            }
        };
        std::fs::create_dir_all(&pod_dir).expect("pod cgroup");
        std::fs::write(pod_dir.join("cgroup.procs"), pid.to_string()).expect("move to pod cgroup");

        let found = scan(Path::new("/proc"), own).expect("scan /proc");
        let ours: Vec<&Sandbox> = found.iter().filter(|s| s.pod_uid == uid).collect();
        assert_eq!(
            ours,
            vec![&Sandbox {
                pod_uid: uid.clone(),
                netns_inode: inode,
                pid,
                netns_path: link,
            }],
            "found: {found:?}"
        );
        // A fresh netns has only a loopback that is down: no addresses yet.
        assert!(!ours[0].has_local_ip(IpAddr::V4(Ipv4Addr::LOCALHOST)));
        assert!(!found.iter().any(|s| s.netns_inode == own));
        drop(pod);
    }
}
