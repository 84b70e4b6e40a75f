//! An upgrade under load, end to end on the netns testbed: a client pod on node 1 opens
//! new connections at 200/s to an echo server pod on node 2, through the mesh; node 2's
//! daemon (HBONE inbound) and then node 1's (the outbound capture and the HBONE client) are
//! replaced by another binary the way the DaemonSet's rolling update does it: the new
//! process starts beside the old one, and the old one gets SIGTERM once the new one is
//! ready. Not one connection may be refused, reset or time out.

mod common;

use std::time::{Duration, Instant};

use common::cluster::{conn_load_result, pods_e2e_ready, Cluster};
use common::testbed::*;

const RATE: u32 = 200;
const SECONDS: u32 = 14;

/// Node `i`'s daemon replaced by `binary`: started beside, the old one stopped once the new
/// one is ready. Returns the old one's log.
fn upgrade(c: &mut Cluster, i: usize, binary: &std::path::Path) -> String {
    let new = c.start_daemon_beside(i, binary);
    let mut old = c.nodes[i].daemon.replace(new).expect("old daemon");
    let status = old.signal_and_wait(nix::sys::signal::Signal::SIGTERM, Duration::from_secs(30));
    assert!(status.success(), "old daemon exit: {status}");
    old.log_text()
}

#[test]
fn an_upgrade_under_a_steady_stream_of_new_connections_refuses_none() {
    if !pods_e2e_ready(&["ip", "nft", "nsenter", "curl", "python3"]) {
        return;
    }
    let mut c = Cluster::running(2, false);
    let server = c
        .add_pod(1, "shop", "server", "server", &[])
        .expect("ADD server");
    c.start_echo(server, 7000);
    let client = c
        .add_pod(0, "shop", "client", "client", &[])
        .expect("ADD client");
    // "Another binary": the same build under another path, as a new image would be.
    let v2 = c.work.path().join("weft-node-v2");
    std::fs::copy(binary("weft-node"), &v2).unwrap();

    let load = c.start_conn_load(client, &c.pods[server].ip.clone(), 7000, RATE, SECONDS);
    let begun = Instant::now();

    // Server side first, then the client's node, while the load runs.
    std::thread::sleep(Duration::from_secs(1));
    let old_server_log = upgrade(&mut c, 1, &v2);
    assert!(
        old_server_log.contains("a newer weft-node took over"),
        "{old_server_log}"
    );
    let old_client_log = upgrade(&mut c, 0, &v2);
    assert!(
        old_client_log.contains("a newer weft-node took over"),
        "{old_client_log}"
    );
    assert!(
        begun.elapsed() < Duration::from_secs(u64::from(SECONDS) - 1),
        "the upgrades took longer than the load ran; make SECONDS longer"
    );

    let result = conn_load_result(&load, Duration::from_secs(u64::from(SECONDS) + 30));
    eprintln!("upgrade under load: {}", result.line);
    assert_eq!(
        result.failures(),
        (0, 0, 0, 0),
        "connections failed across the upgrade: {}",
        result.log
    );
    assert!(
        result.count("ok") >= u64::from(RATE * SECONDS) * 9 / 10,
        "the load fell behind its rate: {}",
        result.line
    );
    c.settle();
    let echo = c.pods[client]
        .ns
        .command("python3")
        .args([
            "-c",
            &format!(
                "import socket; s=socket.create_connection(('{}', 7000), timeout=3); s.sendall(b'x\\n'); print(s.recv(10))",
                c.pods[server].ip
            ),
        ])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&echo.stdout).contains("x"),
        "{echo:?}"
    );
}
