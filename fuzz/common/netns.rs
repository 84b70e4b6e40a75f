//! A private network namespace for the targets that run real servers: whatever they dial
//! (only loopback and addresses they add themselves) stays inside it.

use std::process::Command;

/// Moves the calling thread into a new network namespace with `lo` up and `addrs` (CIDR)
/// added to it. Sockets the thread opens afterwards live there; a current-thread tokio
/// runtime driven from this thread keeps all of the server's I/O inside. Needs root.
pub fn enter_private(addrs: &[&str]) {
    // SAFETY: unshare has no memory-safety preconditions; it only changes this thread's
    // namespace membership.
    let rc = unsafe { libc::unshare(libc::CLONE_NEWNET) };
    if rc != 0 {
        panic!(
            "unshare(CLONE_NEWNET) failed: {} (this target runs its server in a private \
             network namespace and needs root)",
            std::io::Error::last_os_error()
        );
    }
    ip(&["link", "set", "lo", "up"]);
    for addr in addrs {
        ip(&["addr", "add", addr, "dev", "lo"]);
    }
}

fn ip(args: &[&str]) {
    let status = Command::new("ip")
        .args(args)
        .status()
        .unwrap_or_else(|e| panic!("cannot run `ip` (install iproute2): {e}"));
    assert!(status.success(), "`ip {}` failed: {status}", args.join(" "));
}
