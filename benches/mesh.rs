//! The end-to-end benchmark suite on the netns testbed, always against a no-mesh baseline
//! measured in the same run: 2 nodes, a client pod on node-1 and a server pod on node-2, in
//! one namespace that is toggled between D (not enrolled: direct) and H (enrolled: HBONE
//! mTLS through both daemons), interleaved D/H/D/H.
//!
//! Cases: iperf3 bulk throughput (1 and 4 streams) with daemon CPU seconds per Gbit;
//! HTTP/1.1 latency at a fixed 1000 req/s over 16 connections (h2load, nginx, 1 KB
//! responses; p50/p90/p99 from h2load's per-request log); connection rate (h2load with
//! `Connection: close`, a fixed count); daemon memory at rest, with up to 10,000 idle tunneled
//! connections (each checked open on both daemons when RSS is sampled), and 60 s after they
//! close.
//!
//! Needs root. Run with `bash benches/mesh.sh` (builds release binaries first); writes
//! `benches/RESULTS.json` and `benches/RESULTS.md`, whose reproducibility section compares
//! with the previous `RESULTS.json`. `--quick` shortens every case for a smoke run (the
//! results are then marked as quick and not comparable). Parsing, statistics and verdicts
//! live in `support/mesh_report.rs`, unit-tested by `cargo test --test mesh_report`.

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "support/nginx.rs"]
mod nginx;
#[path = "support/procfs.rs"]
mod procfs;
#[path = "support/mesh_report.rs"]
mod report;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use common::cluster::{Cluster, AMBIENT};
use common::testbed::Process;
use report::{
    format_figure, h2load_log_micros, holds, json_f64, kib_per_connection, median, memory_returned,
    min_max, parse_h2load_counts, parse_h2load_rate, parse_iperf, parse_proc_stat, per_run_ratios,
    percentile, prometheus_sum, reproducibility_section, worst_highest, Bound, IperfRun,
};
use serde_json::{json, Value};

struct Settings {
    quick: bool,
    runs: usize,
    iperf_seconds: u32,
    latency_seconds: u32,
    conn_count: u32,
    idle_connections: u32,
    memory_settle_seconds: u64,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    Direct,
    Hbone,
}

impl Mode {
    fn tag(self) -> &'static str {
        match self {
            Mode::Direct => "D",
            Mode::Hbone => "H",
        }
    }
}

/// Samples per case and mode.
#[derive(Default)]
struct Results {
    samples: BTreeMap<(String, &'static str), Vec<f64>>,
    loadavg: Vec<Value>,
}

impl Results {
    fn add(&mut self, case: &str, mode: Mode, value: f64) {
        println!("    {case:<28} {}: {value:.3}", mode.tag());
        self.samples
            .entry((case.to_owned(), mode.tag()))
            .or_default()
            .push(value);
    }
}

fn stats(values: &[f64]) -> Value {
    let (min, max) = min_max(values);
    json!({"median": median(values), "min": min, "max": max, "samples": values})
}

fn loadavg() -> (f64, String) {
    let text = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let one = text
        .split_whitespace()
        .next()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    (one, text.trim().to_owned())
}

/// Share of CPU time spent busy over a short window (all cores).
fn cpu_busy(window: Duration) -> f64 {
    let read = || -> (u64, u64) {
        let text = std::fs::read_to_string("/proc/stat").unwrap_or_default();
        let fields: Vec<u64> = text
            .lines()
            .next()
            .unwrap_or("")
            .split_whitespace()
            .skip(1)
            .filter_map(|v| v.parse().ok())
            .collect();
        let idle = fields.get(3).copied().unwrap_or(0) + fields.get(4).copied().unwrap_or(0);
        (fields.iter().sum(), idle)
    };
    let (t0, i0) = read();
    std::thread::sleep(window);
    let (t1, i1) = read();
    let total = (t1 - t0).max(1) as f64;
    1.0 - (i1 - i0) as f64 / total
}

/// Waits until the machine is quiet before a run; records the load average.
fn wait_quiet(results: &mut Results, label: &str) {
    for attempt in 0..20 {
        let busy = cpu_busy(Duration::from_millis(700));
        if busy < 0.25 {
            let (one, text) = loadavg();
            results
                .loadavg
                .push(json!({"run": label, "loadavg": text, "cpu_busy_before": busy}));
            if one > 2.5 {
                println!("    note: loadavg {one:.2} before {label} (1-min average lags our previous run)");
            }
            return;
        }
        println!(
            "    machine busy ({:.0}% CPU) before {label}; waiting (attempt {})",
            busy * 100.0,
            attempt + 1
        );
        std::thread::sleep(Duration::from_secs(3));
    }
    println!("    machine stayed busy; running {label} anyway (recorded)");
    let (_, text) = loadavg();
    results
        .loadavg
        .push(json!({"run": label, "loadavg": text, "busy": true}));
}

/// User plus kernel CPU seconds both daemons have used so far (all their threads).
fn daemon_cpu_seconds(c: &Cluster, ticks_per_second: f64) -> f64 {
    (0..c.nodes.len())
        .map(|i| {
            let what = format!("{} daemon", c.nodes[i].name);
            procfs::cpu_seconds(c.daemon_pid(i), ticks_per_second, &what)
        })
        .sum()
}

/// The daemon's resident set (VmRSS); NaN if it cannot be read (never a target that holds).
fn daemon_rss_kib(c: &Cluster, node: usize) -> f64 {
    procfs::rss_kib(c.daemon_pid(node))
}

/// What the daemon of one node has open, read twice over: its own `weft_open_connections`
/// gauge (all directions) and, from the kernel, the sockets in its fd table.
#[derive(Clone, Copy, Debug)]
struct OpenConnections {
    gauge: f64,
    sockets: u64,
}

fn open_connections(c: &Cluster, node: usize) -> OpenConnections {
    let exposition = c.node_get(node, "http://127.0.0.1:15020/metrics");
    let gauge = prometheus_sum(&exposition, "weft_open_connections")
        .unwrap_or_else(|e| panic!("{} daemon metrics: {e:#}", c.nodes[node].name));
    let pid = c.daemon_pid(node);
    let fd_dir = format!("/proc/{pid}/fd");
    let sockets = std::fs::read_dir(&fd_dir)
        .unwrap_or_else(|e| panic!("{} daemon: reading {fd_dir}: {e}", c.nodes[node].name))
        .filter_map(|entry| std::fs::read_link(entry.ok()?.path()).ok())
        .filter(|target| target.to_string_lossy().starts_with("socket:"))
        .count() as u64;
    OpenConnections { gauge, sockets }
}

fn set_mode(c: &mut Cluster, mode: Mode) {
    let labels: &[(&str, &str)] = if mode == Mode::Hbone { &[AMBIENT] } else { &[] };
    c.namespace("bench", labels);
    c.write_config();
    c.settle();
    let captured = c.pods[0]
        .ns
        .command("nft")
        .args(["list", "table", "inet", "weft"])
        .output()
        .is_ok_and(|o| o.status.success());
    assert_eq!(
        captured,
        mode == Mode::Hbone,
        "client pod capture rules do not match mode {mode:?}"
    );
}

fn iperf(c: &Cluster, server_ip: &str, streams: u32, seconds: u32) -> IperfRun {
    let out = c.pods[0]
        .ns
        .command("iperf3")
        .args([
            "-c",
            server_ip,
            "-J",
            "-t",
            &seconds.to_string(),
            "-P",
            &streams.to_string(),
            "-O",
            "1",
        ])
        .output()
        .expect("iperf3");
    let report: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "iperf3 output: {e}: {}",
            String::from_utf8_lossy(&out.stdout)
        )
    });
    parse_iperf(&report).unwrap_or_else(|e| panic!("{e:#}"))
}

/// h2load at 1000 req/s over 16 connections; returns (p50, p90, p99) in ms.
fn latency(c: &Cluster, server_ip: &str, seconds: u32, log: &Path) -> (f64, f64, f64) {
    let _ = std::fs::remove_file(log);
    let out = c.pods[0]
        .ns
        .command("h2load")
        .args([
            "--h1",
            "-c",
            "16",
            "--rps",
            "62.5",
            "-D",
            &seconds.to_string(),
            "--warm-up-time",
            "2",
        ])
        .arg(format!("--log-file={}", log.display()))
        .arg(format!("http://{server_ip}:8080/1k"))
        .output()
        .expect("h2load");
    let text = String::from_utf8_lossy(&out.stdout);
    parse_h2load_counts(&text)
        .and_then(|counts| counts.check_all_succeeded(None))
        .unwrap_or_else(|e| panic!("latency run: {e:#}\n{text}"));
    let mut micros = h2load_log_micros(&std::fs::read_to_string(log).unwrap_or_default());
    assert!(
        micros.len() as u32 >= seconds * 900,
        "too few requests logged ({})",
        micros.len()
    );
    micros.sort_by(|a, b| a.total_cmp(b));
    (
        percentile(&micros, 0.5) / 1000.0,
        percentile(&micros, 0.9) / 1000.0,
        percentile(&micros, 0.99) / 1000.0,
    )
}

/// New TCP connection per request, a fixed count, as fast as possible; connections/s.
fn connection_rate(c: &Cluster, server_ip: &str, count: u32) -> f64 {
    let out = c.pods[0]
        .ns
        .command("h2load")
        .args([
            "--h1",
            "-n",
            &count.to_string(),
            "-c",
            "16",
            "-H",
            "Connection: close",
        ])
        .arg(format!("http://{server_ip}:8080/1k"))
        .output()
        .expect("h2load");
    let text = String::from_utf8_lossy(&out.stdout);
    parse_h2load_counts(&text)
        .and_then(|counts| counts.check_all_succeeded(Some(count.into())))
        .and_then(|()| parse_h2load_rate(&text))
        .unwrap_or_else(|e| panic!("connection-rate run: {e:#}\n{text}"))
}

fn start_servers(c: &mut Cluster, work: &Path) {
    nginx::start(c, 1, work);
    let server = &mut c.pods[1];
    let mut iperf = server.ns.command("iperf3");
    iperf.args(["-s", "-p", "5201"]);
    server.extra.push(Process::spawn(
        iperf,
        &work.join("iperf3.out"),
        "iperf3 server",
    ));
    c.start_tcp_app(1, "hold_server.py", 9100);
    c.wait_for_port(1, 5201, "iperf3");
}

/// Daemon RSS with the 2 enrolled pods and no traffic yet.
fn rss_at_rest(c: &mut Cluster) -> [f64; 2] {
    set_mode(c, Mode::Hbone);
    std::thread::sleep(Duration::from_secs(3));
    let rest = [daemon_rss_kib(c, 0), daemon_rss_kib(c, 1)];
    println!(
        "  memory at rest: node-1 {:.0} KiB, node-2 {:.0} KiB",
        rest[0], rest[1]
    );
    rest
}

/// Why both daemons do not (yet) hold `count` more connections than at `baseline`, by their
/// gauge and by their sockets; None when they do.
fn missing_connections(c: &Cluster, baseline: &[OpenConnections; 2], count: u64) -> Option<String> {
    let mut missing = Vec::new();
    for (i, base) in baseline.iter().enumerate() {
        let now = open_connections(c, i);
        let gauge = now.gauge - base.gauge;
        let sockets = now.sockets.saturating_sub(base.sockets);
        if !(gauge >= count as f64 && sockets >= count) {
            missing.push(format!(
                "{} daemon: {gauge} more by weft_open_connections, {sockets} more sockets",
                c.nodes[i].name
            ));
        }
    }
    (!missing.is_empty()).then(|| format!("not all {count} open: {}", missing.join("; ")))
}

fn memory(c: &mut Cluster, settings: &Settings, work: &Path, at_rest: [f64; 2]) -> Value {
    set_mode(c, Mode::Hbone);
    // Part of the measurement, not a condition: RSS is sampled after 3 s without traffic.
    std::thread::sleep(Duration::from_secs(3));
    // Per-connection cost is measured from just before the idle connections open (and, as a
    // second figure, from the at-rest baseline taken before any traffic).
    let rest = [daemon_rss_kib(c, 0), daemon_rss_kib(c, 1)];
    println!(
        "  before the idle connections: node-1 {:.0} KiB, node-2 {:.0} KiB",
        rest[0], rest[1]
    );
    let count = u64::from(settings.idle_connections);
    let baseline = [open_connections(c, 0), open_connections(c, 1)];
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/apps/hold_client.py");
    let server_ip = c.pods[1].ip.clone();
    let mut cmd = c.pods[0].ns.command("python3");
    cmd.arg(&script)
        .args([&server_ip, "9100", &settings.idle_connections.to_string()]);
    let mut holder = Process::spawn(cmd, &work.join("hold-client.log"), "hold client");
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let log = holder.log_text();
        if log.contains("open ") {
            break;
        }
        assert!(
            !log.contains("failed"),
            "idle connections could not be opened: {log}"
        );
        assert!(
            Instant::now() < deadline,
            "idle connections not open in time: {log}"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    // The client's connect returns once node-1's daemon accepted it; the tunnel and node-2's
    // upstream connection may still be on their way. Wait until both daemons hold them all.
    let deadline = Instant::now() + Duration::from_secs(60);
    while let Some(missing) = missing_connections(c, &baseline, count) {
        assert!(
            Instant::now() < deadline,
            "idle tunneled connections: {missing} (60 s after the client opened them)"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    // Part of the measurement: the connections have been idle 3 s when RSS is sampled.
    std::thread::sleep(Duration::from_secs(3));
    if let Some(missing) = missing_connections(c, &baseline, count) {
        panic!("idle tunneled connections before sampling RSS: {missing}");
    }
    let loaded = [daemon_rss_kib(c, 0), daemon_rss_kib(c, 1)];
    let held = [open_connections(c, 0), open_connections(c, 1)];
    if let Some(missing) = missing_connections(c, &baseline, count) {
        panic!("idle tunneled connections after sampling RSS: {missing}");
    }
    let per_conn: Vec<f64> = (0..2)
        .map(|i| kib_per_connection(loaded[i], rest[i], count))
        .collect();
    let per_conn_at_rest: Vec<f64> = (0..2)
        .map(|i| kib_per_connection(loaded[i], at_rest[i], count))
        .collect();
    println!(
        "  with {count} idle tunneled connections (open on both daemons): node-1 {:.0} KiB ({:.2} KiB/conn, {:.2} vs at rest), node-2 {:.0} KiB ({:.2} KiB/conn, {:.2} vs at rest)",
        loaded[0], per_conn[0], per_conn_at_rest[0], loaded[1], per_conn[1], per_conn_at_rest[1]
    );
    let _ = holder.child.kill();
    let _ = holder.child.wait();
    drop(holder);
    // Closed through both daemons (the gauges are back where they were), then the wait.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let now = [open_connections(c, 0), open_connections(c, 1)];
        if (0..2).all(|i| now[i].gauge <= baseline[i].gauge) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "idle connections still open 60 s after the client was killed: {now:?} (before: {baseline:?})"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    // Part of the measurement: RSS this long after the connections closed.
    std::thread::sleep(Duration::from_secs(settings.memory_settle_seconds));
    let after = [daemon_rss_kib(c, 0), daemon_rss_kib(c, 1)];
    println!(
        "  {} s after they closed: node-1 {:.0} KiB, node-2 {:.0} KiB",
        settings.memory_settle_seconds, after[0], after[1]
    );
    let open_json =
        |o: &[OpenConnections; 2], i: usize| json!({"gauge": o[i].gauge, "sockets": o[i].sockets});
    json!({
        "rss_at_rest_kib": {"node-1": at_rest[0], "node-2": at_rest[1]},
        "rss_before_idle_connections_kib": {"node-1": rest[0], "node-2": rest[1]},
        "idle_connections": settings.idle_connections,
        "open_before_idle_connections": {"node-1": open_json(&baseline, 0), "node-2": open_json(&baseline, 1)},
        "open_when_rss_sampled": {"node-1": open_json(&held, 0), "node-2": open_json(&held, 1)},
        "rss_with_idle_connections_kib": {"node-1": loaded[0], "node-2": loaded[1]},
        "kib_per_idle_connection": {"node-1": per_conn[0], "node-2": per_conn[1]},
        "kib_per_idle_connection_vs_at_rest": {"node-1": per_conn_at_rest[0], "node-2": per_conn_at_rest[1]},
        "rss_after_close_kib": {"node-1": after[0], "node-2": after[1]},
        "seconds_after_close": settings.memory_settle_seconds,
    })
}

/// How many idle tunneled connections the memory case holds: 10,000, or fewer when the
/// open-files limit the daemons inherit cannot admit that many (a daemon admits
/// (limit - fd reserve) / 2 connections; 500 are left for everything else). The count used
/// is written to the results.
fn idle_connections_that_fit() -> u32 {
    const FD_RESERVE: u64 = 512;
    let hard = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .map(|(_, hard)| hard)
        .unwrap_or(20_000);
    let admitted = hard.saturating_sub(FD_RESERVE) / 2;
    u32::try_from(admitted.saturating_sub(500).min(10_000)).unwrap_or(10_000)
}

/// The heading of the section benches/kube_scale.rs owns in RESULTS.md.
/// Sections of RESULTS.md other scripts write (benches/kube_scale.sh, benches/waypoint.sh):
/// kept as they are when this one rewrites the file.
const OTHER_SECTIONS: [&str; 2] = ["## Kubernetes source at scale", "## Waypoint (L7) hop"];

fn main() {
    if !nix::unistd::Uid::effective().is_root() {
        eprintln!(
            "mesh benchmark: needs root (network namespaces); run as root: bash benches/mesh.sh"
        );
        std::process::exit(1);
    }
    let args: Vec<String> = std::env::args().collect();
    let quick = args.iter().any(|a| a == "--quick");
    let runs = args
        .iter()
        .position(|a| a == "--runs")
        .and_then(|i| args.get(i + 1)?.parse().ok())
        .unwrap_or(if quick { 2 } else { 5 });
    let settings = Settings {
        quick,
        runs,
        iperf_seconds: if quick { 2 } else { 5 },
        latency_seconds: if quick { 5 } else { 30 },
        conn_count: if quick { 2000 } else { 10000 },
        idle_connections: if quick {
            2000
        } else {
            idle_connections_that_fit()
        },
        memory_settle_seconds: if quick { 10 } else { 60 },
    };
    let out_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches");
    println!("== testbed: 2 nodes, client pod on node-1, server pod on node-2 (release binaries)");
    // Daemons log as in production (info, with the access log), not the tests' debug level.
    std::env::set_var("WEFT_TEST_DAEMON_LOG", "info");
    let mut c = Cluster::new(2);
    // One client pod holds all the idle connections of the memory case: its share must fit
    // them (the default per-source share, 2048, would cap the case, and the open-connection
    // check would stop the run).
    c.daemon_args = vec![
        "--max-connections-per-source".into(),
        (settings.idle_connections + 1000).to_string(),
    ];
    c.namespace("bench", &[AMBIENT]);
    c.write_config();
    c.start_daemon(0);
    c.start_daemon(1);
    c.add_pod(0, "bench", "client", "client", &[])
        .expect("client pod");
    c.add_pod(1, "bench", "server", "server", &[("app", "server")])
        .expect("server pod");
    let work = c.work.path().to_owned();
    start_servers(&mut c, &work);
    let server_ip = c.pods[1].ip.clone();

    let cases: Vec<String> = args
        .iter()
        .position(|a| a == "--cases")
        .and_then(|i| args.get(i + 1))
        .map(|c| c.split(',').map(str::to_owned).collect())
        .unwrap_or_else(|| {
            ["throughput", "latency", "connrate", "memory"]
                .map(String::from)
                .to_vec()
        });
    let wants = |case: &str| cases.iter().any(|c| c == case);
    println!("== memory at rest");
    let at_rest = rss_at_rest(&mut c);
    let ticks_per_second = procfs::clock_ticks_per_second();
    let mut results = Results::default();
    let measures_traffic = ["throughput", "latency", "connrate"]
        .iter()
        .any(|c| wants(c));
    for run in 0..if measures_traffic { settings.runs } else { 0 } {
        for mode in [Mode::Direct, Mode::Hbone] {
            println!("== run {} of {}, {:?}", run + 1, settings.runs, mode);
            set_mode(&mut c, mode);
            let label = format!("run{}-{}", run + 1, mode.tag());
            if wants("throughput") {
                wait_quiet(&mut results, &format!("{label}-iperf1"));
                let cpu0 = daemon_cpu_seconds(&c, ticks_per_second);
                let one = iperf(&c, &server_ip, 1, settings.iperf_seconds);
                let cpu1 = daemon_cpu_seconds(&c, ticks_per_second);
                results.add("throughput_1_stream_gbps", mode, one.received_gbps);
                // CPU over the whole run, over every bit of it (the omitted second too).
                results.add("daemon_cpu_s_per_gbit", mode, (cpu1 - cpu0) / one.gbit_sent);
                wait_quiet(&mut results, &format!("{label}-iperf4"));
                let four = iperf(&c, &server_ip, 4, settings.iperf_seconds);
                results.add("throughput_4_streams_gbps", mode, four.received_gbps);
            }
            if wants("latency") {
                wait_quiet(&mut results, &format!("{label}-latency"));
                let log = work.join("h2load.log");
                let (p50, p90, p99) = latency(&c, &server_ip, settings.latency_seconds, &log);
                results.add("latency_p50_ms", mode, p50);
                results.add("latency_p90_ms", mode, p90);
                results.add("latency_p99_ms", mode, p99);
            }
            if wants("connrate") {
                wait_quiet(&mut results, &format!("{label}-connrate"));
                let rate = connection_rate(&c, &server_ip, settings.conn_count);
                results.add("connections_per_s", mode, rate);
            }
        }
    }
    if !wants("memory") || cases.len() < 4 {
        println!("== partial run (--cases): results not written");
        let med = |case: &str, tag| {
            results
                .samples
                .get(&(case.to_owned(), tag))
                .map(|v| median(v))
        };
        for ((case, tag), _) in results.samples.iter() {
            println!(
                "  {case} {tag}: median {:.3}",
                med(case, tag).unwrap_or(f64::NAN)
            );
        }
        if wants("memory") {
            memory(&mut c, &settings, &work, at_rest);
        }
        return;
    }
    println!("== memory");
    let memory = memory(&mut c, &settings, &work, at_rest);
    write_results(&settings, &results, memory, &out_dir);
}

fn write_results(settings: &Settings, results: &Results, memory: Value, out_dir: &Path) {
    let cases = [
        (
            "throughput_1_stream_gbps",
            "Bulk throughput, 1 stream (iperf3)",
            "Gbit/s",
        ),
        (
            "throughput_4_streams_gbps",
            "Bulk throughput, 4 streams (iperf3)",
            "Gbit/s",
        ),
        (
            "daemon_cpu_s_per_gbit",
            "Daemon CPU per Gbit (both nodes, user + system, 1 stream)",
            "CPU s/Gbit",
        ),
        (
            "latency_p50_ms",
            "Latency p50 @1000 req/s, 16 conns, 1 KB",
            "ms",
        ),
        ("latency_p90_ms", "Latency p90 @1000 req/s", "ms"),
        ("latency_p99_ms", "Latency p99 @1000 req/s", "ms"),
        ("connections_per_s", "New connection per request", "conn/s"),
    ];
    let get = |case: &str, tag: &'static str| {
        results
            .samples
            .get(&(case.to_owned(), tag))
            .cloned()
            .unwrap_or_default()
    };
    let mut json_cases = serde_json::Map::new();
    let mut rows = Vec::new();
    for (case, title, unit) in cases {
        let (d, h) = (get(case, "D"), get(case, "H"));
        if d.is_empty() || h.is_empty() {
            continue;
        }
        let (md, mh) = (median(&d), median(&h));
        json_cases.insert(
            case.into(),
            json!({"title": title, "unit": unit, "D": stats(&d), "H": stats(&h),
                   "H_over_D": mh / md, "H_over_D_per_run": per_run_ratios(&d, &h)}),
        );
        let range = |v: &[f64]| {
            let (lo, hi) = min_max(v);
            format!("{}–{}", format_figure(lo), format_figure(hi))
        };
        // The daemons do no work in D, so a ratio of their CPU is meaningless.
        let h_over_d = if md > 1e-3 {
            format_figure(mh / md)
        } else {
            "n/a (D does not use the daemons)".to_owned()
        };
        rows.push(format!(
            "| {title} | {unit} | {} ({}) | {} ({}) | {h_over_d} |",
            format_figure(md),
            range(&d),
            format_figure(mh),
            range(&h),
        ));
    }
    let added = |p: &str| median(&get(p, "H")) - median(&get(p, "D"));
    let (added50, added99) = (added("latency_p50_ms"), added("latency_p99_ms"));
    let ratio = |case: &str| median(&get(case, "H")) / median(&get(case, "D"));
    let per_node = |key: &str| -> [f64; 2] {
        [
            json_f64(&memory[key]["node-1"]),
            json_f64(&memory[key]["node-2"]),
        ]
    };
    // The worse node counts; a node without a reading makes the figure NaN (never holds).
    let rest_mib = worst_highest(&per_node("rss_at_rest_kib")) / 1024.0;
    let per_conn = worst_highest(&per_node("kib_per_idle_connection"));
    let (before, loaded, after) = (
        per_node("rss_before_idle_connections_kib"),
        per_node("rss_with_idle_connections_kib"),
        per_node("rss_after_close_kib"),
    );
    let returned = (0..2).all(|i| memory_returned(before[i], loaded[i], after[i]));
    let target = |name: &str, value: f64, bound: Bound| json!({"target": name, "value": value, "holds": holds(value, bound)});
    let targets = vec![
        target(
            "H/D single-stream throughput >= 0.35",
            ratio("throughput_1_stream_gbps"),
            Bound::AtLeast(0.35),
        ),
        target("added latency p50 <= 0.10 ms", added50, Bound::AtMost(0.10)),
        target("added latency p99 <= 0.25 ms", added99, Bound::AtMost(0.25)),
        target(
            "connection rate H/D >= 0.5",
            ratio("connections_per_s"),
            Bound::AtLeast(0.5),
        ),
        target(
            "daemon RSS at rest <= 12 MiB",
            rest_mib,
            Bound::AtMost(12.0),
        ),
        target(
            "<= 4 KiB per idle tunneled connection (from just before they open)",
            per_conn,
            Bound::AtMost(4.0),
        ),
        json!({"target": "memory returned after connections close", "value": returned, "holds": returned}),
    ];
    let target_value = |t: &Value| match &t["value"] {
        Value::Bool(b) => b.to_string(),
        v => format_figure(json_f64(v)),
    };
    let date = std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    let command = if settings.quick {
        "bash benches/mesh.sh --quick"
    } else {
        "bash benches/mesh.sh"
    };
    let report = json!({
        "date": date,
        "command": command,
        "quick": settings.quick,
        "runs_per_mode": settings.runs,
        "order": "interleaved D/H/D/H",
        "machine": {"cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0)},
        "cases": json_cases,
        "added_latency_ms": {"p50": added50, "p99": added99},
        "memory": memory,
        "targets": targets,
        "loadavg_before_runs": results.loadavg,
    });
    // The run this one is compared with: the report it is about to replace.
    let json_path = out_dir.join("RESULTS.json");
    let earlier: Option<Value> = std::fs::read_to_string(&json_path)
        .ok()
        .and_then(|text| serde_json::from_str(&text).ok());
    let reproducibility = reproducibility_section(&report, earlier.as_ref());
    std::fs::write(
        &json_path,
        serde_json::to_string_pretty(&report).expect("report serializes") + "\n",
    )
    .unwrap_or_else(|e| panic!("writing {}: {e}", json_path.display()));
    let mut md = format!(
        "# weft benchmark results\n\n{date}, `{command}` ({} runs per mode, interleaved D/H/D/H{}).\nD = same pods, namespace not enrolled (direct); H = enrolled (HBONE mTLS through both daemons).\nMedians with min–max; ratios are H over D medians from the same run. Raw samples and the load average before each run: `benches/RESULTS.json`.\n\n",
        settings.runs,
        if settings.quick { ", QUICK smoke run: not comparable" } else { "" }
    );
    let busy = results
        .loadavg
        .iter()
        .filter(|l| l["busy"].as_bool() == Some(true))
        .count();
    if busy > 0 {
        md.push_str(&format!(
            "**{busy} of {} measurements started on a machine still busy (CPU >= 25%) after about a minute of waiting: see `loadavg_before_runs` in `benches/RESULTS.json`.**\n\n",
            results.loadavg.len()
        ));
    }
    md.push_str(
        "| case | unit | D median (min–max) | H median (min–max) | H/D |\n|---|---|---|---|---|\n",
    );
    md.push_str(&rows.join("\n"));
    md.push_str(&format!(
        "\n\nAdded latency (H − D medians): p50 {} ms, p99 {} ms.\n\n",
        format_figure(added50),
        format_figure(added99)
    ));
    let kib = |key: &str, decimals: usize| {
        per_node(key).map(|v| {
            if v.is_finite() {
                format!("{v:.decimals$} KiB")
            } else {
                format_figure(v)
            }
        })
    };
    let memory_row = |label: String, key: &str, decimals: usize| {
        let [one, two] = kib(key, decimals);
        format!("| {label} | {one} | {two} |\n")
    };
    let open = |node: &str| {
        let o = &memory["open_when_rss_sampled"][node];
        let gauge = json_f64(&o["gauge"]);
        let gauge = if gauge.is_finite() {
            format!("{gauge:.0}")
        } else {
            format_figure(gauge)
        };
        format!("{gauge} by gauge, {} sockets", o["sockets"])
    };
    md.push_str("## Memory (H)\n\n| | node-1 | node-2 |\n|---|---|---|\n");
    md.push_str(&memory_row(
        "RSS at rest (2 enrolled pods, before any traffic)".into(),
        "rss_at_rest_kib",
        0,
    ));
    md.push_str(&memory_row(
        "RSS just before the idle connections open".into(),
        "rss_before_idle_connections_kib",
        0,
    ));
    md.push_str(&memory_row(
        format!(
            "RSS with {} idle tunneled connections",
            memory["idle_connections"]
        ),
        "rss_with_idle_connections_kib",
        0,
    ));
    md.push_str(&format!(
        "| open on the daemon when RSS was sampled | {} | {} |\n",
        open("node-1"),
        open("node-2")
    ));
    md.push_str(&memory_row(
        "per idle connection (from just before they open)".into(),
        "kib_per_idle_connection",
        2,
    ));
    md.push_str(&memory_row(
        "per idle connection (from the at-rest baseline)".into(),
        "kib_per_idle_connection_vs_at_rest",
        2,
    ));
    md.push_str(&memory_row(
        format!("RSS {} s after they closed", memory["seconds_after_close"]),
        "rss_after_close_kib",
        0,
    ));
    md.push_str("\nEvery idle connection was checked open on both daemons (their `weft_open_connections` gauge and the sockets in their fd table, against the counts just before) before and after RSS was sampled.\n\n");
    md.push_str("## Targets (2-core machine)\n\n| target | value | holds |\n|---|---|---|\n");
    for t in &targets {
        md.push_str(&format!(
            "| {} | {} | {} |\n",
            t["target"].as_str().unwrap_or(""),
            target_value(t),
            if t["holds"].as_bool() == Some(true) {
                "yes"
            } else {
                "**no**"
            }
        ));
    }
    md.push('\n');
    md.push_str(&reproducibility);
    let notes = out_dir.join("RESULTS-notes.md");
    if let Ok(extra) = std::fs::read_to_string(&notes) {
        md.push('\n');
        md.push_str(&extra);
    }
    let md_path = out_dir.join("RESULTS.md");
    // The Kubernetes scale and waypoint sections are written by their own scripts.
    if let Ok(previous) = std::fs::read_to_string(&md_path) {
        if let Some(at) = report::first_section(&previous, &OTHER_SECTIONS) {
            md.push('\n');
            md.push_str(&previous[at..]);
        }
    }
    std::fs::write(&md_path, md).unwrap_or_else(|e| panic!("writing {}: {e}", md_path.display()));
    println!("== wrote benches/RESULTS.json and benches/RESULTS.md");
    for t in &targets {
        println!(
            "  {:<70} {:>18}  {}",
            t["target"].as_str().unwrap_or(""),
            target_value(t),
            if t["holds"].as_bool() == Some(true) {
                "holds"
            } else {
                "MISSED"
            }
        );
    }
}
