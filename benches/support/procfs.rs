//! What the benchmarks read of a process from the kernel: CPU seconds (`utime + stime` of
//! `/proc/<pid>/stat`, all threads) and resident memory (`VmRSS` of `/proc/<pid>/status`).

use crate::report::parse_proc_stat;

/// Clock ticks per second of /proc CPU times (`getconf CLK_TCK`).
pub fn clock_ticks_per_second() -> f64 {
    let out = std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .expect("getconf CLK_TCK");
    let text = String::from_utf8_lossy(&out.stdout);
    let ticks: f64 = text
        .trim()
        .parse()
        .unwrap_or_else(|e| panic!("getconf CLK_TCK printed {text:?}: {e}"));
    assert!(ticks > 0.0, "getconf CLK_TCK printed {ticks}");
    ticks
}

/// User plus kernel CPU seconds process `pid` (`what`, for errors) has used so far.
pub fn cpu_seconds(pid: u32, ticks_per_second: f64, what: &str) -> f64 {
    let path = format!("/proc/{pid}/stat");
    let stat =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{what}: reading {path}: {e}"));
    let ticks = parse_proc_stat(&stat).unwrap_or_else(|e| panic!("{what}: {e:#}"));
    ticks.total() as f64 / ticks_per_second
}

/// The resident set (VmRSS) of `pid` in KiB; NaN if it cannot be read (never a target that
/// holds).
pub fn rss_kib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(f64::NAN)
}
