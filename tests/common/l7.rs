//! HTTP helpers for the waypoint tests: one curl exchange parsed into status, headers and
//! body, and the echo app (tests/apps/echo_http.py) that answers with what it received.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;

use super::cluster::Cluster;
use super::testbed::{binary, unique, Netns, Process};

/// One HTTP exchange as curl saw it.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: BTreeMap<String, String>,
    pub body: String,
}

impl Reply {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {self:?}"))
    }

    pub fn served_by(&self) -> String {
        self.json()["served_by"].as_str().unwrap_or("?").to_owned()
    }

    /// A request header as the echo server received it.
    pub fn received(&self, name: &str) -> Option<String> {
        self.json()["headers"][name].as_str().map(str::to_owned)
    }
}

/// curl from `ns` with `args`; the reply's status line, headers and body.
pub fn curl(ns: &Netns, args: &[&str]) -> Result<Reply, String> {
    let out = ns
        .command("curl")
        .args(["-sS", "-i", "--max-time", "5"])
        .args(args)
        .output()
        .expect("curl");
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).trim().to_owned());
    }
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no header/body split: {text:?}"));
    let mut lines = head.lines();
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("status line {status_line:?}"));
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    Ok(Reply {
        status,
        headers,
        body: body.to_owned(),
    })
}

/// Starts tests/apps/echo_http.py in a pod on 8080, answering as `name`.
pub fn start_echo(c: &mut Cluster, pod: usize, name: &str) -> PathBuf {
    let app = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/apps/echo_http.py");
    let log = c.work.path().join(format!("echo-{name}.log"));
    let p = &mut c.pods[pod];
    let mut cmd = p.ns.command("python3");
    cmd.arg(&app).args(["0.0.0.0", "8080", name]);
    p.extra
        .push(Process::spawn(cmd, &log, &format!("echo {name}")));
    c.wait_for_port(pod, 8080, name);
    log
}

/// The pods every waypoint test has: `client` (node 1, shop), `echo-v1` and `echo-v2`
/// (node 2, shop, `app: echo` with their `version`) and the waypoint's pod (node 1, not
/// captured), in the Cluster's pod indices.
pub struct EchoPods {
    pub client: usize,
    pub v1: usize,
    pub v2: usize,
    pub waypoint: usize,
}

/// Adds the [`EchoPods`]; the waypoint pod is `<waypoint>-0`, running as `<waypoint>`.
pub fn add_echo_pods(c: &mut Cluster, waypoint: &str) -> EchoPods {
    let client = c
        .add_pod(0, "shop", "client", "client", &[])
        .expect("ADD client");
    let mut echo = |version: &str| {
        c.add_pod(
            1,
            "shop",
            &format!("echo-{version}"),
            "echo",
            &[("app", "echo"), ("version", version)],
        )
        .unwrap_or_else(|e| panic!("ADD echo-{version}: {e:?}"))
    };
    let (v1, v2) = (echo("v1"), echo("v2"));
    let waypoint = c
        .add_pod(
            0,
            "shop",
            &format!("{waypoint}-0"),
            waypoint,
            &[
                ("app.kubernetes.io/name", waypoint),
                ("weft.dev/dataplane-mode", "none"),
            ],
        )
        .expect("ADD waypoint");
    EchoPods {
        client,
        v1,
        v2,
        waypoint,
    }
}

/// Starts `weft waypoint` (namespace shop, named `name`) in `pod` with `args`, reading the
/// cluster's config file; returns once its config_dump shows routes. The index of its
/// process in the pod's `extra`.
pub fn start_waypoint(c: &mut Cluster, pod: usize, name: &str, args: &[&str]) -> usize {
    let log = c.work.path().join(format!("{}.log", unique("waypoint")));
    let p = &mut c.pods[pod];
    let mut cmd = p.ns.command(binary("weft"));
    cmd.args(["waypoint", "--namespace", "shop", "--name", name])
        .args(args)
        .arg("--config")
        .arg(&c.config_path)
        .arg("--ca-dir")
        .arg(&c.ca_dir)
        .env(
            "RUST_LOG",
            std::env::var("WAYPOINT_LOG").unwrap_or_else(|_| "info".into()),
        );
    p.extra.push(Process::spawn(cmd, &log, "weft waypoint"));
    let index = p.extra.len() - 1;
    let ns_name = p.ns.name.clone();
    p.extra[index].wait_until(
        "waypoint ready with its route",
        Duration::from_secs(20),
        || {
            let out = std::process::Command::new("ip")
                .args(["netns", "exec", &ns_name, "curl", "-s", "--max-time", "1"])
                .arg("http://127.0.0.1:15000/config_dump")
                .output();
            out.is_ok_and(|o| {
                serde_json::from_slice::<Value>(&o.stdout).is_ok_and(|dump| {
                    dump["route_status"]
                        .as_array()
                        .is_some_and(|routes| !routes.is_empty())
                })
            })
        },
    );
    index
}

/// GET `url` from inside `pod` (the waypoint's admin and metrics ports).
pub fn waypoint_get(c: &Cluster, pod: usize, url: &str) -> String {
    let out = c.pods[pod]
        .ns
        .command("curl")
        .args(["-s", "--max-time", "3", url])
        .output()
        .expect("curl");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `n` requests from `ns` with curl over one keep-alive connection (curl `args` apply to
/// each): the status of each, in order (0 where curl got no answer).
pub fn statuses(ns: &Netns, args: &[&str], url: &str, n: usize) -> Vec<u16> {
    let mut cmd = ns.command("curl");
    cmd.args(["-s", "--max-time", "60", "-w", "%{http_code}\\n"])
        .args(args);
    // Each URL gets its own -o: curl writes the bodies of URLs without one to stdout.
    for _ in 0..n {
        cmd.args(["-o", "/dev/null", url]);
    }
    let out = cmd.output().expect("curl");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.trim().parse().unwrap_or(0))
        .collect()
}

/// The dashboard served in `pod` (127.0.0.1:15020), as headless Chromium renders it after
/// its scripts ran.
pub fn dashboard_dom(c: &Cluster, pod: usize) -> String {
    let profile = c.work.path().join(unique("chromium-profile"));
    let out = c.pods[pod]
        .ns
        .command("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--virtual-time-budget=5000",
            "--dump-dom",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg("http://127.0.0.1:15020/")
        .output()
        .expect("chromium");
    String::from_utf8_lossy(&out.stdout).into_owned()
}
