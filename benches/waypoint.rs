//! The waypoint hop, measured against the paths without it in the same run, interleaved:
//! D (namespace not enrolled: client pod straight to the nginx pod), H (enrolled: the L4
//! path through both node daemons, to a Service VIP) and W (enrolled: a Service bound to a
//! waypoint, so node daemon -> waypoint pod -> node daemon -> nginx, with an HTTPRoute).
//!
//! Each run sends 1,000 req/s of 1 KB responses for a fixed time from 16 independent
//! HTTP/1.1 clients at 62.5 req/s each, started 1 ms apart (one h2load with `-c 16 --rps`
//! would start all 16 timers together and measure 16-request bursts), and reads p50/p90/p99
//! from their per-request logs. In W it also reads the waypoint's CPU (user + system, so
//! vCPU at 1,000 req/s) and its RSS afterwards; the node daemons' CPU is recorded for H and W.
//!
//! Needs root. Run with `bash benches/waypoint.sh` (release binaries); writes the
//! `## Waypoint (L7) hop` section of `benches/RESULTS.md` and `benches/RESULTS-waypoint.json`.
//! `--quick` shortens the runs (marked as such, not comparable); `--profile` prints a `perf`
//! CPU profile of the waypoint taken during the first W run.

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "support/nginx.rs"]
mod nginx;
#[path = "support/procfs.rs"]
mod procfs;
#[allow(dead_code)]
#[path = "support/mesh_report.rs"]
mod report;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use common::cluster::{Cluster, AMBIENT};
use common::testbed::{binary, unique, Process};
use report::{
    format_figure, h2load_log_micros, holds, median, min_max, percentile, replace_section, Bound,
};
use serde_json::{json, Value};

const WAYPOINT: &str = "bench-waypoint";
const SECTION: &str = "## Waypoint (L7) hop";
const CLIENTS: usize = 16;
const PER_CLIENT_RPS: &str = "62.5";

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    Direct,
    L4,
    Waypoint,
}

impl Mode {
    fn tag(self) -> &'static str {
        match self {
            Mode::Direct => "D",
            Mode::L4 => "H",
            Mode::Waypoint => "W",
        }
    }
}

fn services(s: u8) -> String {
    format!(
        r#"apiVersion: v1
kind: Service
metadata: {{name: server-l4, namespace: bench}}
spec:
  clusterIP: 10.{s}.100.20
  selector: {{app: server}}
  ports: [{{name: http, port: 8080}}]
---
apiVersion: v1
kind: Service
metadata: {{name: server-l7, namespace: bench, labels: {{weft.dev/use-waypoint: {WAYPOINT}}}}}
spec:
  clusterIP: 10.{s}.100.21
  selector: {{app: server}}
  ports: [{{name: http, port: 8080}}]
---
apiVersion: v1
kind: Service
metadata: {{name: {WAYPOINT}, namespace: bench}}
spec:
  clusterIP: 10.{s}.100.22
  selector: {{app.kubernetes.io/name: {WAYPOINT}}}
  ports: [{{name: mesh, port: 15008}}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: server, namespace: bench}}
spec:
  parentRefs: [{{group: "", kind: Service, name: server-l7, port: 8080}}]
  rules:
  - matches: [{{path: {{type: PathPrefix, value: /}}}}]
    backendRefs: [{{name: server-l7, port: 8080}}]
"#
    )
}

fn set_enrolled(c: &mut Cluster, enrolled: bool) {
    let labels: &[(&str, &str)] = if enrolled { &[AMBIENT] } else { &[] };
    c.namespace("bench", labels);
    c.write_config();
    c.settle();
}

/// 16 paced clients for `seconds` against `url`; (p50, p90, p99) ms and the request count.
fn latency(c: &Cluster, url: &str, seconds: u32, work: &Path) -> ([f64; 3], usize) {
    let logs: Vec<_> = (0..CLIENTS)
        .map(|i| work.join(format!("{}.log", unique(&format!("h2load-{i}-")))))
        .collect();
    let mut clients = Vec::new();
    for log in &logs {
        let mut cmd = c.pods[0].ns.command("h2load");
        cmd.args(["--h1", "-c", "1", "--rps", PER_CLIENT_RPS, "-D"])
            .arg(seconds.to_string())
            .args(["--warm-up-time", "2"])
            .arg(format!("--log-file={}", log.display()))
            .arg(url);
        clients.push(
            cmd.stdout(std::process::Stdio::piped())
                .spawn()
                .expect("h2load"),
        );
        // Staggered starts, so the 16 clients' request timers do not fire together.
        std::thread::sleep(Duration::from_millis(1));
    }
    for client in clients {
        let out = client.wait_with_output().expect("h2load");
        let text = String::from_utf8_lossy(&out.stdout);
        report::parse_h2load_counts(&text)
            .and_then(|counts| counts.check_all_succeeded(None))
            .unwrap_or_else(|e| panic!("latency run against {url}: {e:#}\n{text}"));
    }
    let mut micros: Vec<f64> = logs
        .iter()
        .flat_map(|log| h2load_log_micros(&std::fs::read_to_string(log).unwrap_or_default()))
        .collect();
    assert!(
        micros.len() as u32 >= seconds * 900,
        "too few requests logged against {url} ({})",
        micros.len()
    );
    micros.sort_by(|a, b| a.total_cmp(b));
    let ms = |p| percentile(&micros, p) / 1000.0;
    ([ms(0.5), ms(0.9), ms(0.99)], micros.len())
}

fn start_waypoint(c: &mut Cluster, pod: usize) -> u32 {
    let log = c.work.path().join("waypoint.log");
    let p = &mut c.pods[pod];
    let mut cmd = p.ns.command(binary("weft"));
    cmd.args(["waypoint", "--namespace", "bench", "--name", WAYPOINT])
        .arg("--config")
        .arg(&c.config_path)
        .arg("--ca-dir")
        .arg(&c.ca_dir)
        .env("RUST_LOG", "info");
    p.extra.push(Process::spawn(cmd, &log, "weft waypoint"));
    let ns = p.ns.name.clone();
    let process = p.extra.last_mut().expect("just pushed");
    process.wait_until("waypoint ready", Duration::from_secs(20), || {
        std::process::Command::new("ip")
            .args(["netns", "exec", &ns, "curl", "-sf", "--max-time", "1"])
            .arg("http://127.0.0.1:15021/healthz/ready")
            .output()
            .is_ok_and(|o| o.status.success())
    });
    process.child.id()
}

fn main() {
    assert!(
        nix::unistd::Uid::effective().is_root(),
        "the waypoint benchmark needs root (network namespaces): bash benches/waypoint.sh"
    );
    let args: Vec<String> = std::env::args().collect();
    let quick = args.iter().any(|a| a == "--quick");
    let profile = args.iter().any(|a| a == "--profile");
    let runs: usize = args
        .iter()
        .position(|a| a == "--runs")
        .and_then(|i| args.get(i + 1)?.parse().ok())
        .unwrap_or(if quick { 1 } else { 3 });
    let seconds: u32 = if quick { 5 } else { 20 };
    std::env::set_var("WEFT_TEST_DAEMON_LOG", "info");
    let ticks = procfs::clock_ticks_per_second();
    let mut c = Cluster::new(2);
    c.namespace("bench", &[AMBIENT]);
    c.write_config();
    c.start_daemon(0);
    c.start_daemon(1);
    c.add_pod(0, "bench", "client", "client", &[])
        .expect("client pod");
    let server = c
        .add_pod(1, "bench", "server", "server", &[("app", "server")])
        .expect("server pod");
    let wp = c
        .add_pod(
            1,
            "bench",
            "bench-waypoint-0",
            WAYPOINT,
            &[
                ("app.kubernetes.io/name", WAYPOINT),
                ("weft.dev/dataplane-mode", "none"),
            ],
        )
        .expect("waypoint pod");
    c.extra_yaml = services(c.subnet);
    c.write_config();
    c.settle();
    let work = c.work.path().to_owned();
    nginx::start(&mut c, server, &work);
    let waypoint_pid = start_waypoint(&mut c, wp);
    let server_ip = c.pods[server].ip.clone();
    let s = c.subnet;
    let target = |mode: Mode| match mode {
        Mode::Direct => format!("http://{server_ip}:8080/1k"),
        Mode::L4 => format!("http://10.{s}.100.20:8080/1k"),
        Mode::Waypoint => format!("http://10.{s}.100.21:8080/1k"),
    };
    let mut samples: BTreeMap<(&str, &str), Vec<f64>> = BTreeMap::new();
    let mut add = |case: &'static str, mode: Mode, value: f64| {
        println!("    {case:<34} {}: {value:.3}", mode.tag());
        samples.entry((case, mode.tag())).or_default().push(value);
    };
    for run in 0..runs {
        for mode in [Mode::Direct, Mode::L4, Mode::Waypoint] {
            println!("== run {} of {runs}, {mode:?}", run + 1);
            set_enrolled(&mut c, mode != Mode::Direct);
            let daemons0: f64 = (0..2)
                .map(|i| procfs::cpu_seconds(c.daemon_pid(i), ticks, "node daemon"))
                .sum();
            let waypoint0 = procfs::cpu_seconds(waypoint_pid, ticks, "waypoint");
            let started = Instant::now();
            // --profile: a CPU profile of the waypoint during the first W run (perf, call
            // graphs), printed, not written to the results.
            let profiler = (profile && mode == Mode::Waypoint && run == 0).then(|| {
                std::process::Command::new("perf")
                    .args(["record", "-F", "999", "-g", "-o"])
                    .arg(work.join("waypoint.perf"))
                    .args(["-p", &waypoint_pid.to_string(), "--", "sleep", "8"])
                    .stdout(std::process::Stdio::null())
                    .stderr(std::process::Stdio::null())
                    .spawn()
                    .expect("perf")
            });
            let ([p50, p90, p99], requests) = latency(&c, &target(mode), seconds, &work);
            if let Some(mut perf) = profiler {
                let _ = perf.wait();
                let report = std::process::Command::new("perf")
                    .args([
                        "report",
                        "--stdio",
                        "--no-children",
                        "--sort",
                        "dso,symbol",
                        "-i",
                    ])
                    .arg(work.join("waypoint.perf"))
                    .output()
                    .expect("perf report");
                let text = String::from_utf8_lossy(&report.stdout);
                println!("== waypoint profile (top symbols, self time)");
                for line in text
                    .lines()
                    .filter(|l| l.trim_start().starts_with(|c: char| c.is_ascii_digit()))
                    .take(40)
                {
                    println!("{line}");
                }
            }
            let wall = started.elapsed().as_secs_f64();
            let daemons1: f64 = (0..2)
                .map(|i| procfs::cpu_seconds(c.daemon_pid(i), ticks, "node daemon"))
                .sum();
            let waypoint1 = procfs::cpu_seconds(waypoint_pid, ticks, "waypoint");
            let rate = requests as f64 / seconds as f64;
            add("p50_ms", mode, p50);
            add("p90_ms", mode, p90);
            add("p99_ms", mode, p99);
            // vCPU per 1,000 req/s: CPU seconds over the run's wall time, scaled to the rate.
            let per_thousand = |cpu: f64| cpu / wall * 1000.0 / rate;
            if mode != Mode::Direct {
                add(
                    "node_daemons_vcpu_per_1000_rps",
                    mode,
                    per_thousand(daemons1 - daemons0),
                );
            }
            if mode == Mode::Waypoint {
                add(
                    "waypoint_vcpu_per_1000_rps",
                    mode,
                    per_thousand(waypoint1 - waypoint0),
                );
                add(
                    "waypoint_rss_mib",
                    mode,
                    procfs::rss_kib(waypoint_pid) / 1024.0,
                );
            }
        }
    }
    let get = |case: &str, tag: &str| samples.get(&(case, tag)).cloned().unwrap_or_default();
    let med = |case: &str, tag: &str| median(&get(case, tag));
    let added = |p: &str, over: &str| med(p, "W") - med(p, over);
    let targets = [
        (
            "p50 added over L4 <= 0.3 ms",
            added("p50_ms", "H"),
            Bound::AtMost(0.3),
        ),
        (
            "waypoint <= 0.1 vCPU per 1,000 req/s",
            med("waypoint_vcpu_per_1000_rps", "W"),
            Bound::AtMost(0.1),
        ),
        (
            "waypoint RSS <= 20 MiB",
            med("waypoint_rss_mib", "W"),
            Bound::AtMost(20.0),
        ),
    ];
    let date = String::from_utf8_lossy(
        &std::process::Command::new("date")
            .args(["-u", "+%Y-%m-%d %H:%M UTC"])
            .output()
            .map(|o| o.stdout)
            .unwrap_or_default(),
    )
    .trim()
    .to_owned();
    let command = if quick {
        "bash benches/waypoint.sh --quick".to_owned()
    } else {
        "bash benches/waypoint.sh".to_owned()
    };
    let cell = |case: &str, tag: &str| {
        let v = get(case, tag);
        if v.is_empty() {
            return "—".to_owned();
        }
        let (lo, hi) = min_max(&v);
        format!(
            "{} ({}–{})",
            format_figure(median(&v)),
            format_figure(lo),
            format_figure(hi)
        )
    };
    let mut md = format!(
        "{SECTION}\n\n{date}, `{command}` ({runs} runs per mode, interleaved D/H/W{}). 1,000 req/s of 1 KB responses from {CLIENTS} HTTP/1.1 clients at {PER_CLIENT_RPS} req/s each, started 1 ms apart, {seconds} s per run. D = namespace not enrolled, straight to the nginx pod; H = enrolled, a Service VIP through both node daemons (L4); W = enrolled, a Service bound to a waypoint with one HTTPRoute (client's node -> waypoint pod -> server's node). Policy checks, metrics and access logs on everywhere. Raw samples: `benches/RESULTS-waypoint.json`.\n\n| figure | D | H | W |\n|---|---|---|---|\n",
        if quick { ", QUICK smoke run: not comparable" } else { "" }
    );
    for (case, title) in [
        ("p50_ms", "latency p50, ms"),
        ("p90_ms", "latency p90, ms"),
        ("p99_ms", "latency p99, ms"),
        (
            "node_daemons_vcpu_per_1000_rps",
            "node daemons, vCPU per 1,000 req/s",
        ),
        (
            "waypoint_vcpu_per_1000_rps",
            "waypoint, vCPU per 1,000 req/s",
        ),
        ("waypoint_rss_mib", "waypoint RSS after the run, MiB"),
    ] {
        md.push_str(&format!(
            "| {title} | {} | {} | {} |\n",
            cell(case, "D"),
            cell(case, "H"),
            cell(case, "W")
        ));
    }
    md.push_str(&format!(
        "\nAdded by the waypoint hop (W − H medians): p50 {} ms, p90 {} ms, p99 {} ms; over direct (W − D): p50 {} ms, p99 {} ms.\n\n| target | value | holds |\n|---|---|---|\n",
        format_figure(added("p50_ms", "H")),
        format_figure(added("p90_ms", "H")),
        format_figure(added("p99_ms", "H")),
        format_figure(added("p50_ms", "D")),
        format_figure(added("p99_ms", "D")),
    ));
    let mut json_targets = Vec::new();
    for (name, value, bound) in targets {
        let ok = holds(value, bound);
        md.push_str(&format!(
            "| {name} | {} | {} |\n",
            format_figure(value),
            if ok { "yes" } else { "**no**" }
        ));
        println!(
            "  {name:<45} {:>10}  {}",
            format_figure(value),
            if ok { "holds" } else { "MISSED" }
        );
        json_targets.push(json!({"target": name, "value": value, "holds": ok}));
    }
    md.push('\n');
    let samples_json: serde_json::Map<String, Value> = samples
        .iter()
        .map(|((case, tag), v)| (format!("{case}/{tag}"), json!(v)))
        .collect();
    let out_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches");
    let report_json = json!({
        "date": date, "command": command, "quick": quick, "runs_per_mode": runs,
        "seconds_per_run": seconds, "samples": samples_json, "targets": json_targets,
    });
    std::fs::write(
        out_dir.join("RESULTS-waypoint.json"),
        serde_json::to_string_pretty(&report_json).expect("JSON") + "\n",
    )
    .expect("writing RESULTS-waypoint.json");
    let md_path = out_dir.join("RESULTS.md");
    let old = std::fs::read_to_string(&md_path).unwrap_or_default();
    std::fs::write(&md_path, replace_section(&old, SECTION, &md)).expect("writing RESULTS.md");
    println!("== wrote the `{SECTION}` section of benches/RESULTS.md");
}
