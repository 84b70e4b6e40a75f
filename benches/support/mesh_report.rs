//! The pure half of the end-to-end benchmark (`benches/mesh.rs`): reading what the tools and
//! the kernel print (`/proc/<pid>/stat`, h2load's summary, iperf3's JSON report, the
//! daemon's Prometheus exposition), the statistics over runs, target verdicts, and the computed reproducibility
//! section of `benches/RESULTS.md`. Nothing here does I/O, so every rule is unit-tested:
//! `cargo test --test mesh_report` (a `[[test]]` target on this file, so
//! `cargo test --workspace` runs it) — `benches/mesh.rs` itself is a `harness = false`
//! program whose `#[test]`s would never run.

use anyhow::{bail, Context, Result};
use serde_json::Value;

// === /proc/<pid>/stat ===

/// CPU time a process has used, in clock ticks (`getconf CLK_TCK` per second).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CpuTicks {
    /// Field 14, `utime`: time in user mode.
    pub user: u64,
    /// Field 15, `stime`: time in kernel mode.
    pub system: u64,
}

impl CpuTicks {
    /// User plus kernel time.
    pub fn total(self) -> u64 {
        self.user + self.system
    }
}

/// Reads `utime` and `stime` (fields 14 and 15, counting from 1) from a `/proc/<pid>/stat`
/// line. Field 2, the command name, is in parentheses and may itself contain spaces and
/// parentheses, so fields are counted from the last `)`: field 3 (the state) is the first
/// one after it.
pub fn parse_proc_stat(stat: &str) -> Result<CpuTicks> {
    let close = stat.rfind(')').with_context(|| {
        format!("/proc stat line without a \")\" after the command name: {stat:?}")
    })?;
    let fields: Vec<&str> = stat[close + 1..].split_whitespace().collect();
    // fields[0] is field 3.
    let field = |number: usize| -> Result<&str> {
        fields
            .get(number - 3)
            .copied()
            .with_context(|| format!("/proc stat line has no field {number}: {stat:?}"))
    };
    let state = field(3)?;
    if state.len() != 1 || !state.chars().all(|c| c.is_ascii_alphabetic()) {
        bail!("/proc stat field 3 (state) is {state:?}, not a state letter: {stat:?}");
    }
    let number = |n: usize, name: &str| -> Result<u64> {
        let text = field(n)?;
        text.parse()
            .with_context(|| format!("/proc stat field {n} ({name}) is {text:?}, not a tick count"))
    };
    Ok(CpuTicks {
        user: number(14, "utime")?,
        system: number(15, "stime")?,
    })
}

// === h2load ===

/// h2load's request counts (its `requests:` summary line).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct H2loadCounts {
    /// Requests h2load was asked to make.
    pub total: u64,
    /// Requests sent.
    pub started: u64,
    /// Requests that got an answer or failed.
    pub done: u64,
    /// Requests answered with a 2xx/3xx status.
    pub succeeded: u64,
    /// Requests answered with another status.
    pub failed: u64,
    /// Requests lost to a connection or protocol error.
    pub errored: u64,
    /// Requests that timed out.
    pub timeout: u64,
}

/// Parses `requests: N total, N started, N done, N succeeded, N failed, N errored,
/// N timeout` from h2load's output; every count must be there.
pub fn parse_h2load_counts(output: &str) -> Result<H2loadCounts> {
    let line = output
        .lines()
        .find_map(|l| l.trim().strip_prefix("requests: "))
        .with_context(|| format!("h2load printed no \"requests:\" line:\n{output}"))?;
    let mut counts = H2loadCounts::default();
    let mut seen = Vec::new();
    for part in line.split(", ") {
        let (number, name) = part
            .trim()
            .split_once(' ')
            .with_context(|| format!("h2load count {part:?} is not \"<number> <name>\""))?;
        let number: u64 = number
            .parse()
            .with_context(|| format!("h2load count {part:?}: {number:?} is not a number"))?;
        let slot = match name {
            "total" => &mut counts.total,
            "started" => &mut counts.started,
            "done" => &mut counts.done,
            "succeeded" => &mut counts.succeeded,
            "failed" => &mut counts.failed,
            "errored" => &mut counts.errored,
            "timeout" => &mut counts.timeout,
            _ => continue,
        };
        *slot = number;
        seen.push(name);
    }
    for name in [
        "total",
        "started",
        "done",
        "succeeded",
        "failed",
        "errored",
        "timeout",
    ] {
        if !seen.contains(&name) {
            bail!("h2load's requests line has no {name:?} count: {line:?}");
        }
    }
    Ok(counts)
}

impl H2loadCounts {
    /// Every request that was sent completed and succeeded (and, with `expected`, exactly
    /// that many did).
    pub fn check_all_succeeded(&self, expected: Option<u64>) -> Result<()> {
        if self.failed != 0 || self.errored != 0 || self.timeout != 0 {
            bail!(
                "h2load: {} failed, {} errored, {} timed out",
                self.failed,
                self.errored,
                self.timeout
            );
        }
        if self.done == 0 || self.succeeded != self.done {
            bail!(
                "h2load: {} of {} completed requests succeeded",
                self.succeeded,
                self.done
            );
        }
        if let Some(expected) = expected {
            if self.succeeded != expected {
                bail!(
                    "h2load: {} requests succeeded, {expected} expected",
                    self.succeeded
                );
            }
        }
        Ok(())
    }
}

/// The rate from h2load's `finished in <time>, <rate> req/s, ...` line (which, unlike a
/// wall clock around the process, excludes its start-up).
pub fn parse_h2load_rate(output: &str) -> Result<f64> {
    let line = output
        .lines()
        .find_map(|l| l.trim().strip_prefix("finished in "))
        .with_context(|| format!("h2load printed no \"finished in\" line:\n{output}"))?;
    let rate = line
        .split(", ")
        .nth(1)
        .and_then(|r| r.strip_suffix(" req/s"))
        .with_context(|| format!("h2load's finished line has no req/s figure: {line:?}"))?;
    let rate: f64 = rate
        .parse()
        .with_context(|| format!("h2load's req/s figure {rate:?} is not a number"))?;
    if !rate.is_finite() || rate <= 0.0 {
        bail!("h2load's req/s figure is {rate}");
    }
    Ok(rate)
}

// === iperf3 ===

/// What one `iperf3 -J` client run measured.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct IperfRun {
    /// The receiver's rate over the measured (not omitted) intervals, Gbit/s.
    pub received_gbps: f64,
    /// Every bit sent over the whole run, the omitted warm-up intervals included: what the
    /// daemons' CPU time over the whole run is divided by.
    pub gbit_sent: f64,
}

/// Reads an `iperf3 -J` client report; an `error` entry, a missing figure or a run that
/// moved nothing is an error.
pub fn parse_iperf(report: &Value) -> Result<IperfRun> {
    if let Some(error) = report["error"].as_str() {
        bail!("iperf3 failed: {error}");
    }
    let bps = report["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .with_context(|| {
            format!("iperf3 report has no end.sum_received.bits_per_second: {report}")
        })?;
    let intervals = report["intervals"]
        .as_array()
        .filter(|i| !i.is_empty())
        .with_context(|| format!("iperf3 report has no intervals: {report}"))?;
    let mut bytes = 0.0;
    for interval in intervals {
        bytes += interval["sum"]["bytes"]
            .as_f64()
            .with_context(|| format!("iperf3 interval without sum.bytes: {interval}"))?;
    }
    if !(bps > 0.0 && bytes > 0.0) {
        bail!("iperf3 moved nothing ({bps} bit/s, {bytes} bytes in its intervals)");
    }
    Ok(IperfRun {
        received_gbps: bps / 1e9,
        gbit_sent: bytes * 8.0 / 1e9,
    })
}

// === Prometheus exposition ===

/// The sum of every sample of metric `name` (all label sets) in a Prometheus text
/// exposition; 0 when the metric has no samples yet (a gauge nobody has touched).
pub fn prometheus_sum(exposition: &str, name: &str) -> Result<f64> {
    let mut sum = 0.0;
    for line in exposition.lines() {
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        // Exactly this metric: not `name_total` or another with the same prefix.
        let value = if let Some(labeled) = rest.strip_prefix('{') {
            labeled.rsplit_once('}').map(|(_, v)| v)
        } else if rest.starts_with(' ') {
            Some(rest)
        } else {
            None
        };
        let Some(value) = value else { continue };
        let value = value
            .split_whitespace()
            .next()
            .with_context(|| format!("metric sample without a value: {line:?}"))?;
        let value: f64 = value
            .parse()
            .with_context(|| format!("metric sample value {value:?} is not a number: {line:?}"))?;
        sum += value;
    }
    Ok(sum)
}

// === h2load's per-request log ===

/// The request times (µs, the third tab-separated field) of an h2load `--log-file`.
pub fn h2load_log_micros(text: &str) -> Vec<f64> {
    text.lines()
        .filter_map(|l| l.split('\t').nth(2)?.parse().ok())
        .collect()
}

/// The value at rank `p` (0..=1, nearest rank) of `sorted`, which must not be empty.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

// === RESULTS.md sections ===

/// `old` with the section that starts at the line `head` (up to the next `## ` heading)
/// replaced by `text`, or `text` appended when there is none: each benchmark script owns
/// its section of `benches/RESULTS.md` and leaves the others as they are.
pub fn replace_section(old: &str, head: &str, text: &str) -> String {
    match old.find(head) {
        Some(start) => {
            let after = &old[start + head.len()..];
            let end = after
                .find("\n## ")
                .map_or(old.len(), |i| start + head.len() + i + 1);
            format!("{}{}{}", &old[..start], text, &old[end..])
        }
        None => format!("{}\n{}", old.trim_end_matches('\n').to_owned() + "\n", text),
    }
}

/// The earliest of `heads` in `text`: where the sections other scripts own begin.
pub fn first_section(text: &str, heads: &[&str]) -> Option<usize> {
    heads.iter().filter_map(|h| text.find(h)).min()
}

// === statistics and verdicts ===

/// The median (mean of the two middle values for an even count); NaN for no values.
pub fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(|a, b| a.total_cmp(b));
    let n = sorted.len();
    match n {
        0 => f64::NAN,
        _ if n % 2 == 1 => sorted[n / 2],
        _ => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    }
}

/// (min, max); NaN if there are no values or any is NaN.
pub fn min_max(values: &[f64]) -> (f64, f64) {
    if values.is_empty() || values.iter().any(|v| v.is_nan()) {
        return (f64::NAN, f64::NAN);
    }
    let lo = values.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    (lo, hi)
}

/// The largest value, NaN if there are none or any is NaN (`f64::max` would silently
/// drop a NaN reading and report the other node's value).
pub fn worst_highest(values: &[f64]) -> f64 {
    min_max(values).1
}

/// What a target requires of its value.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Bound {
    /// The value must be this or more (ratios, rates).
    AtLeast(f64),
    /// The value must be this or less (latency, CPU, memory).
    AtMost(f64),
}

/// Whether `value` meets `bound`; a NaN or infinite reading never does.
pub fn holds(value: f64, bound: Bound) -> bool {
    value.is_finite()
        && match bound {
            Bound::AtLeast(limit) => value >= limit,
            Bound::AtMost(limit) => value <= limit,
        }
}

/// KiB each of `connections` connections added to RSS over `baseline_kib`; NaN when a
/// reading is missing or there are no connections.
pub fn kib_per_connection(loaded_kib: f64, baseline_kib: f64, connections: u64) -> f64 {
    if connections == 0 {
        return f64::NAN;
    }
    (loaded_kib - baseline_kib) / connections as f64
}

/// Memory came back after the connections closed: at least 80% of what they took is gone.
/// False when any reading is missing (NaN).
pub fn memory_returned(before_kib: f64, loaded_kib: f64, after_kib: f64) -> bool {
    [before_kib, loaded_kib, after_kib]
        .iter()
        .all(|v| v.is_finite())
        && after_kib <= before_kib + 0.2 * (loaded_kib - before_kib).max(0.0)
}

/// A figure for the report: three decimals, or a loud marker for a missing reading.
pub fn format_figure(value: f64) -> String {
    if value.is_finite() {
        format!("{value:.3}")
    } else {
        "NaN (no reading)".to_owned()
    }
}

/// A number from a JSON report; NaN when absent or null (serde_json writes NaN as null).
pub fn json_f64(value: &Value) -> f64 {
    value.as_f64().unwrap_or(f64::NAN)
}

fn samples(case: &Value, mode: &str) -> Vec<f64> {
    case[mode]["samples"]
        .as_array()
        .map(|s| s.iter().map(json_f64).collect())
        .unwrap_or_default()
}

/// H over D of each run (run i's H against run i's D, measured back to back); empty when the
/// two sample lists differ in length.
pub fn per_run_ratios(direct: &[f64], hbone: &[f64]) -> Vec<f64> {
    if direct.len() != hbone.len() {
        return Vec::new();
    }
    direct.iter().zip(hbone).map(|(d, h)| h / d).collect()
}

// === reproducibility ===

/// The cases compared between runs (ratios only: the machine's speed drifts, D with it).
pub const RATIO_CASES: [&str; 6] = [
    "connections_per_s",
    "latency_p50_ms",
    "latency_p90_ms",
    "latency_p99_ms",
    "throughput_1_stream_gbps",
    "throughput_4_streams_gbps",
];

/// The "Reproducibility" section of RESULTS.md, computed from this run's report and the
/// previous one (`benches/RESULTS.json` before it is overwritten): for each ratio case,
/// this run's per-run H/D interval (min–max over the interleaved D/H pairs) and its widest
/// interval (H min / D max – H max / D min), and whether the earlier run's H/D falls inside
/// each. An earlier quick run, or none, is not compared.
pub fn reproducibility_section(this: &Value, earlier: Option<&Value>) -> String {
    let mut out = String::from("## Reproducibility\n\n");
    let earlier = earlier.filter(|e| e["quick"].as_bool() == Some(false));
    match earlier {
        Some(e) => out.push_str(&format!(
            "Computed by `benches/mesh.rs` against the previous full run ({}, `{}`). \
             Per-run H/D: each run's H over the D measured just before it; widest: \
             H min / D max – H max / D min. D drift: this run's D median over the earlier one's.\n\n",
            e["date"].as_str().unwrap_or("date unknown"),
            e["command"].as_str().unwrap_or("command unknown"),
        )),
        None => out.push_str(
            "Computed by `benches/mesh.rs`. No earlier full run to compare with (the previous \
             `benches/RESULTS.json` was missing, unreadable or a quick run): this run's \
             intervals only. Per-run H/D: each run's H over the D measured just before it; \
             widest: H min / D max – H max / D min.\n\n",
        ),
    }
    out.push_str(
        "| case | H/D this run | per-run H/D (min–max) | widest | H/D earlier run | D drift | earlier inside per-run | earlier inside widest |\n|---|---|---|---|---|---|---|---|\n",
    );
    for case in RATIO_CASES {
        let now = &this["cases"][case];
        if now.is_null() {
            continue;
        }
        let (d, h) = (samples(now, "D"), samples(now, "H"));
        let ratio = median(&h) / median(&d);
        let (pair_lo, pair_hi) = min_max(&per_run_ratios(&d, &h));
        let (d_lo, d_hi) = min_max(&d);
        let (h_lo, h_hi) = min_max(&h);
        let (wide_lo, wide_hi) = (h_lo / d_hi, h_hi / d_lo);
        let inside = |value: f64, lo: f64, hi: f64| {
            if value.is_finite() && lo.is_finite() && hi.is_finite() {
                if lo <= value && value <= hi {
                    "yes"
                } else {
                    "**no**"
                }
            } else {
                "n/a"
            }
        };
        let (then, drift) = match earlier.map(|e| &e["cases"][case]) {
            Some(then) if !then.is_null() => {
                let (d0, h0) = (samples(then, "D"), samples(then, "H"));
                (median(&h0) / median(&d0), median(&d) / median(&d0) - 1.0)
            }
            _ => (f64::NAN, f64::NAN),
        };
        let title = now["title"].as_str().unwrap_or(case);
        out.push_str(&format!(
            "| {title} | {} | {}–{} | {}–{} | {} | {} | {} | {} |\n",
            format_figure(ratio),
            format_figure(pair_lo),
            format_figure(pair_hi),
            format_figure(wide_lo),
            format_figure(wide_hi),
            if then.is_finite() {
                format!("{then:.3}")
            } else {
                "—".to_owned()
            },
            if drift.is_finite() {
                format!("{:+.1}%", drift * 100.0)
            } else {
                "—".to_owned()
            },
            inside(then, pair_lo, pair_hi),
            inside(then, wide_lo, wide_hi),
        ));
    }
    out
}

// benches/mesh.rs (harness = false) is also compiled with cfg(test) by clippy and never runs
// these, so their fixtures would be dead code there; the `mesh_report` test target runs them.
#[cfg(test)]
#[allow(dead_code)]
mod tests {
    use super::*;
    use serde_json::json;

    // A weft-node line as the kernel writes it: state S, utime 1234, stime 567.
    const STAT: &str = "4242 (weft-node) S 4200 4242 4200 0 -1 4194560 2631 0 0 0 1234 567 0 0 20 0 3 0 88213 1097728000 2812 18446744073709551615 1 1 0 0 0 0 0 4096 17414 0 0 0 17 1 0 0 0 0 0 0 0 0 0 0 0 0 0";

    #[test]
    fn proc_stat_reads_utime_and_stime() {
        let ticks = parse_proc_stat(STAT).unwrap();
        assert_eq!(
            ticks,
            CpuTicks {
                user: 1234,
                system: 567
            }
        );
        assert_eq!(ticks.total(), 1801);
    }

    #[test]
    fn proc_stat_command_name_with_spaces_and_parentheses() {
        let line = STAT.replace("(weft-node)", "(tokio ) (x) 9 9)");
        let ticks = parse_proc_stat(&line).unwrap();
        assert_eq!(ticks.user, 1234);
        assert_eq!(ticks.system, 567);
    }

    #[test]
    fn proc_stat_rejects_truncated_or_garbled_lines() {
        assert!(parse_proc_stat("").is_err());
        assert!(parse_proc_stat("4242 (weft-node) S 4200 4242").is_err());
        // Without the state field every later field would shift by one.
        let shifted = STAT.replace(") S ", ") ");
        assert!(parse_proc_stat(&shifted).is_err());
    }

    const H2LOAD_OK: &str = "finished in 48.26ms, 414.46 req/s, 64.43KB/s\n\
        requests: 20 total, 20 started, 20 done, 20 succeeded, 0 failed, 0 errored, 0 timeout\n\
        status codes: 20 2xx, 0 3xx, 0 4xx, 0 5xx\n";

    #[test]
    fn h2load_counts_are_numbers() {
        let counts = parse_h2load_counts(H2LOAD_OK).unwrap();
        assert_eq!(
            counts,
            H2loadCounts {
                total: 20,
                started: 20,
                done: 20,
                succeeded: 20,
                failed: 0,
                errored: 0,
                timeout: 0
            }
        );
        counts.check_all_succeeded(Some(20)).unwrap();
        assert!(counts.check_all_succeeded(Some(21)).is_err());
    }

    #[test]
    fn ten_failed_is_not_zero_failed() {
        let text = "requests: 20 total, 20 started, 20 done, 10 succeeded, 10 failed, 0 errored, 0 timeout\n";
        // The substring test this replaces.
        assert!(text.contains("0 failed"));
        let counts = parse_h2load_counts(text).unwrap();
        assert_eq!(counts.failed, 10);
        assert!(counts.check_all_succeeded(None).is_err());
    }

    #[test]
    fn h2load_errors_timeouts_and_nothing_done_fail() {
        let errored =
            "requests: 5 total, 0 started, 0 done, 0 succeeded, 5 failed, 5 errored, 0 timeout";
        assert!(parse_h2load_counts(errored)
            .unwrap()
            .check_all_succeeded(None)
            .is_err());
        let timeout =
            "requests: 5 total, 5 started, 5 done, 5 succeeded, 0 failed, 0 errored, 1 timeout";
        assert!(parse_h2load_counts(timeout)
            .unwrap()
            .check_all_succeeded(None)
            .is_err());
        let nothing =
            "requests: 0 total, 0 started, 0 done, 0 succeeded, 0 failed, 0 errored, 0 timeout";
        assert!(parse_h2load_counts(nothing)
            .unwrap()
            .check_all_succeeded(None)
            .is_err());
    }

    #[test]
    fn h2load_output_without_counts_is_an_error() {
        assert!(parse_h2load_counts("connect: Connection refused\n").is_err());
        assert!(parse_h2load_counts("requests: 20 total, 20 done, 0 failed").is_err());
        assert!(parse_h2load_counts(
            "requests: x total, 20 started, 20 done, 20 succeeded, 0 failed, 0 errored, 0 timeout"
        )
        .is_err());
    }

    #[test]
    fn h2load_rate() {
        assert_eq!(parse_h2load_rate(H2LOAD_OK).unwrap(), 414.46);
        assert!(parse_h2load_rate("requests: 1 total").is_err());
        assert!(parse_h2load_rate("finished in 277us, 0.00 req/s, 0B/s").is_err());
    }

    #[test]
    fn iperf_counts_the_omitted_warm_up_in_the_bits_sent() {
        // Shape of `iperf3 -c ... -J -t 1 -O 1`: one omitted interval, one measured.
        let report = json!({
            "intervals": [
                {"sum": {"omitted": true, "bytes": 1_000_000_000u64, "seconds": 1.0}},
                {"sum": {"omitted": false, "bytes": 1_500_000_000u64, "seconds": 1.0}},
            ],
            "end": {"sum_received": {"bits_per_second": 12.0e9, "bytes": 1_500_000_000u64}},
        });
        let run = parse_iperf(&report).unwrap();
        assert_eq!(run.received_gbps, 12.0);
        assert_eq!(run.gbit_sent, 20.0);
        assert!(parse_iperf(&json!({"error": "unable to connect to server"})).is_err());
        assert!(parse_iperf(&json!({"end": {"sum_received": {"bits_per_second": 1.0}}})).is_err());
        let mut idle = report.clone();
        idle["end"]["sum_received"]["bits_per_second"] = json!(0.0);
        assert!(parse_iperf(&idle).is_err());
    }

    #[test]
    fn prometheus_sum_adds_label_sets_of_that_metric_only() {
        let text = "# HELP weft_open_connections Open connections\n\
            # TYPE weft_open_connections gauge\n\
            weft_open_connections{direction=\"outbound\"} 2000\n\
            weft_open_connections{direction=\"inbound\"} 3\n\
            weft_open_connections_total 99\n\
            istio_tcp_connections_opened_total{a=\"}\"} 7\n";
        assert_eq!(
            prometheus_sum(text, "weft_open_connections").unwrap(),
            2003.0
        );
        assert_eq!(prometheus_sum(text, "weft_enrolled_pods").unwrap(), 0.0);
        assert_eq!(prometheus_sum("weft_x 5\n", "weft_x").unwrap(), 5.0);
        assert!(prometheus_sum("weft_x{a=\"b\"} many\n", "weft_x").is_err());
    }

    #[test]
    fn median_and_interval() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert!(median(&[]).is_nan());
        assert_eq!(min_max(&[2.0, 5.0, 1.0]), (1.0, 5.0));
        assert!(min_max(&[2.0, f64::NAN]).0.is_nan());
    }

    #[test]
    fn nan_never_holds() {
        assert!(!holds(f64::NAN, Bound::AtMost(4.0)));
        assert!(!holds(f64::NAN, Bound::AtLeast(0.35)));
        assert!(!holds(f64::INFINITY, Bound::AtLeast(0.35)));
        assert!(holds(3.9, Bound::AtMost(4.0)));
        assert!(!holds(4.1, Bound::AtMost(4.0)));
        assert!(holds(0.35, Bound::AtLeast(0.35)));
        // One node without a reading: the worst of both is NaN, not the other node's value.
        assert!(f64::NAN.max(3.0) == 3.0, "what f64::max does");
        let worst = worst_highest(&[f64::NAN, 3.0]);
        assert!(worst.is_nan());
        assert!(!holds(worst, Bound::AtMost(4.0)));
        assert_eq!(worst_highest(&[3.5, 3.0]), 3.5);
        assert!(worst_highest(&[]).is_nan());
        assert_eq!(format_figure(f64::NAN), "NaN (no reading)");
        assert!(json_f64(&json!(null)).is_nan());
        assert!(json_f64(&json!({})["missing"]).is_nan());
    }

    #[test]
    fn memory_figures() {
        assert_eq!(kib_per_connection(30_000.0, 10_000.0, 5_000), 4.0);
        assert!(kib_per_connection(f64::NAN, 10_000.0, 5_000).is_nan());
        assert!(kib_per_connection(30_000.0, 10_000.0, 0).is_nan());
        assert!(memory_returned(10_000.0, 50_000.0, 17_000.0));
        assert!(!memory_returned(10_000.0, 50_000.0, 30_000.0));
        assert!(!memory_returned(10_000.0, 50_000.0, f64::NAN));
        assert!(!memory_returned(f64::NAN, 50_000.0, 10_000.0));
    }

    fn report(quick: bool, d: &[f64], h: &[f64]) -> Value {
        json!({
            "date": "2026-11-21 07:26 UTC",
            "command": "bash benches/mesh.sh",
            "quick": quick,
            "cases": {"connections_per_s": {
                "title": "New connection per request",
                "D": {"samples": d},
                "H": {"samples": h},
            }},
        })
    }

    #[test]
    fn reproducibility_is_computed_from_both_runs() {
        let this = report(false, &[100.0, 80.0, 100.0], &[50.0, 48.0, 40.0]);
        // Earlier H/D: 45/100 = 0.45; per-run now: 0.5, 0.6, 0.4; widest 40/100–50/80.
        let earlier = report(false, &[100.0, 100.0, 100.0], &[45.0, 45.0, 45.0]);
        let text = reproducibility_section(&this, Some(&earlier));
        let row = text
            .lines()
            .find(|l| l.starts_with("| New connection per request"))
            .unwrap();
        assert_eq!(
            row,
            "| New connection per request | 0.480 | 0.400–0.600 | 0.400–0.625 | 0.450 | +0.0% | yes | yes |"
        );
        assert!(text.contains("2026-11-21 07:26 UTC"));
        // An earlier ratio outside this run's per-run interval but inside the widest.
        let earlier = report(false, &[100.0, 100.0, 100.0], &[62.0, 62.0, 62.0]);
        let text = reproducibility_section(&this, Some(&earlier));
        assert!(text.contains("| 0.620 | +0.0% | **no** | yes |"), "{text}");
    }

    #[test]
    fn reproducibility_does_not_compare_with_a_quick_or_missing_run() {
        let this = report(false, &[100.0, 80.0], &[50.0, 48.0]);
        let quick = report(true, &[100.0, 100.0], &[45.0, 45.0]);
        for earlier in [Some(&quick), None] {
            let text = reproducibility_section(&this, earlier);
            assert!(text.contains("No earlier full run"), "{text}");
            assert!(text.contains("| — | — | n/a | n/a |"), "{text}");
        }
    }

    #[test]
    fn sections_are_replaced_in_place_or_appended() {
        let old = "# r\n\n## A\na1\n\n## B\nb1\n";
        assert_eq!(
            replace_section(old, "## A", "## A\na2\n\n"),
            "# r\n\n## A\na2\n\n## B\nb1\n"
        );
        assert_eq!(
            replace_section(old, "## B", "## B\nb2\n"),
            "# r\n\n## A\na1\n\n## B\nb2\n"
        );
        assert_eq!(
            replace_section(old, "## C", "## C\nc\n"),
            "# r\n\n## A\na1\n\n## B\nb1\n\n## C\nc\n"
        );
        assert_eq!(first_section(old, &["## B", "## A"]), Some(5));
        assert_eq!(first_section(old, &["## Z"]), None);
    }

    #[test]
    fn h2load_logs_and_percentiles() {
        let log = "1700000000000000\t200\t350\n1700000000001000\t200\t150\nbad line\n";
        let mut micros = h2load_log_micros(log);
        assert_eq!(micros, vec![350.0, 150.0]);
        micros.sort_by(|a, b| a.total_cmp(b));
        assert_eq!(percentile(&micros, 0.0), 150.0);
        assert_eq!(percentile(&micros, 0.99), 350.0);
    }
}
