//! A real Prometheus for the tests: started in a namespace, scraping weft's metrics every
//! second, queried over its HTTP API with PromQL.

use std::path::Path;
use std::time::Duration;

use serde_json::Value;

use super::testbed::{Netns, Process};

/// Starts Prometheus in `ns` on 127.0.0.1:9090, keeping its files in `dir`, scraping
/// `targets` (`host:port`) every second; returns once it serves.
pub fn start(ns: &Netns, dir: &Path, targets: &[String]) -> Process {
    std::fs::create_dir_all(dir.join("data")).expect("prometheus dir");
    let list = targets
        .iter()
        .map(|t| format!("'{t}'"))
        .collect::<Vec<_>>()
        .join(", ");
    std::fs::write(
        dir.join("prometheus.yml"),
        format!(
            "global: {{scrape_interval: 1s, evaluation_interval: 1s}}\nscrape_configs:\n- job_name: weft\n  static_configs:\n  - targets: [{list}]\n"
        ),
    )
    .expect("prometheus.yml");
    let mut cmd = ns.command("prometheus");
    cmd.arg(format!(
        "--config.file={}",
        dir.join("prometheus.yml").display()
    ))
    .arg(format!(
        "--storage.tsdb.path={}",
        dir.join("data").display()
    ))
    .arg("--web.listen-address=127.0.0.1:9090");
    let mut prometheus = Process::spawn(cmd, &dir.join("prometheus.log"), "prometheus");
    prometheus.wait_for_log(
        "Server is ready to receive web requests",
        Duration::from_secs(30),
    );
    prometheus
}

/// The result vector of an instant `query` against the Prometheus in `ns` (empty when it
/// has no answer).
pub fn query(ns: &Netns, query: &str) -> Vec<Value> {
    let out = ns
        .command("curl")
        .args([
            "-sS",
            "--max-time",
            "5",
            "-G",
            "http://127.0.0.1:9090/api/v1/query",
            "--data-urlencode",
        ])
        .arg(format!("query={query}"))
        .output()
        .expect("curl");
    serde_json::from_slice::<Value>(&out.stdout)
        .ok()
        .and_then(|body| body["data"]["result"].as_array().cloned())
        .unwrap_or_default()
}

/// The first sample of `query`'s answer, if it has one.
pub fn promql(ns: &Netns, q: &str) -> Option<f64> {
    query(ns, q)
        .first()
        .and_then(|r| r["value"][1].as_str()?.parse().ok())
}
