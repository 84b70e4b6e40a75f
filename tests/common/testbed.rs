//! The network-namespace testbed for end-to-end tests: uniquely named namespaces joined by
//! veth links, daemons and tools started inside them, and cleanup of every namespace and
//! process by name or id when the test ends, pass or fail.
//!
//! These tests need root. Without root they are skipped with a message, unless
//! `WEFT_E2E=1` (as CI sets it): then a missing privilege or tool is a failure.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// True when the end-to-end test should run; panics if it must run but cannot.
pub fn e2e_ready(tools: &[&str]) -> bool {
    let required = std::env::var("WEFT_E2E").is_ok_and(|v| v == "1");
    let is_root = nix::unistd::Uid::effective().is_root();
    let missing: Vec<&str> = tools.iter().copied().filter(|t| !tool_exists(t)).collect();
    if is_root && missing.is_empty() {
        return true;
    }
    let why = if !is_root {
        "not running as root".to_string()
    } else {
        format!(
            "missing tools: {} (run scripts/install-deps.sh)",
            missing.join(", ")
        )
    };
    assert!(
        !required,
        "WEFT_E2E=1 but the end-to-end test cannot run: {why}"
    );
    eprintln!("skipping end-to-end test: {why} (set WEFT_E2E=1 to make this a failure)");
    false
}

fn tool_exists(tool: &str) -> bool {
    std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).any(|dir| dir.join(tool).is_file()))
        .unwrap_or(false)
}

/// Runs a command, panicking with its output if it fails.
pub fn sh(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A short name unique to this test process, for namespaces and links:
/// `<prefix><pid>x<n>`, so leftovers of a killed run can be traced to their (dead) owner
/// and removed (scripts/clean-testbed.sh).
pub fn unique(prefix: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    format!(
        "{prefix}{}x{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// A network namespace, deleted on drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(prefix: &str) -> Netns {
        let name = unique(prefix);
        sh(Command::new("ip").args(["netns", "add", &name]));
        let ns = Netns { name };
        ns.run(&["ip", "link", "set", "lo", "up"]);
        ns
    }

    /// A command that runs inside this namespace.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name]).arg(program);
        cmd
    }

    pub fn run(&self, argv: &[&str]) -> String {
        let mut cmd = self.command(argv[0]);
        cmd.args(&argv[1..]);
        sh(&mut cmd)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Processes still inside would keep it alive; kill them by namespace first.
        let _ = Command::new("ip")
            .args(["netns", "pids", &self.name])
            .output()
            .map(|out| {
                for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                    let _ = Command::new("kill").args(["-9", pid]).status();
                }
            });
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// Joins two namespaces with a veth pair and gives each end an address (CIDR notation).
pub fn link(a: &Netns, a_addr: &str, b: &Netns, b_addr: &str) -> (String, String) {
    let a_if = unique("va");
    let b_if = unique("vb");
    sh(Command::new("ip").args([
        "link", "add", &a_if, "netns", &a.name, "type", "veth", "peer", "name", &b_if, "netns",
        &b.name,
    ]));
    a.run(&["ip", "addr", "add", a_addr, "dev", &a_if]);
    b.run(&["ip", "addr", "add", b_addr, "dev", &b_if]);
    a.run(&["ip", "link", "set", &a_if, "up"]);
    b.run(&["ip", "link", "set", &b_if, "up"]);
    (a_if, b_if)
}

/// A background process, killed on drop; its stderr/stdout go to a log file.
pub struct Process {
    pub child: Child,
    pub log: PathBuf,
    pub what: String,
}

impl Process {
    pub fn spawn(mut cmd: Command, log: &Path, what: &str) -> Process {
        let file = std::fs::File::create(log).expect("log file");
        let err = file.try_clone().expect("log file");
        let child = cmd
            .stdout(Stdio::from(file))
            .stderr(Stdio::from(err))
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {what}: {e}"));
        Process {
            child,
            log: log.to_owned(),
            what: what.to_owned(),
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until the log contains `needle`.
    pub fn wait_for_log(&mut self, needle: &str, timeout: Duration) {
        let log = self.log.clone();
        self.wait_until(&format!("logging {needle:?}"), timeout, || {
            std::fs::read_to_string(&log)
                .unwrap_or_default()
                .contains(needle)
        });
    }

    /// Waits until `ready()` holds (polled every 50 ms); fails with the log if the process
    /// exits first or `timeout` passes.
    pub fn wait_until(&mut self, what: &str, timeout: Duration, mut ready: impl FnMut() -> bool) {
        let deadline = Instant::now() + timeout;
        loop {
            if ready() {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "{} exited ({status}) before {what}:\n{}",
                    self.what,
                    self.log_text()
                );
            }
            assert!(
                Instant::now() < deadline,
                "{} not {what} within {timeout:?}:\n{}",
                self.what,
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Sends a signal and waits for the exit status.
    pub fn signal_and_wait(
        &mut self,
        signal: nix::sys::signal::Signal,
        timeout: Duration,
    ) -> std::process::ExitStatus {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, signal);
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "{} did not exit within {timeout:?}",
                self.what
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Path of a workspace binary built next to this test (`cargo build --workspace --bins`
/// first; scripts/test.sh does).
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test exe");
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target/<profile> dir");
    let path = profile_dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: run `cargo build --workspace --bins` before the end-to-end tests (scripts/test.sh does)",
        path.display()
    );
    path
}

/// A tcpdump capture of TCP on one interface of a namespace.
pub struct Capture {
    process: Process,
    pcap: PathBuf,
}

impl Capture {
    pub fn start(ns: &Netns, interface: &str, dir: &Path) -> Capture {
        let pcap = dir.join(format!("{}.pcap", unique("cap")));
        let mut cmd = ns.command("tcpdump");
        cmd.args(["-i", interface, "-U", "--immediate-mode", "-s", "0", "-w"])
            .arg(&pcap)
            .arg("tcp");
        let mut process = Process::spawn(cmd, &pcap.with_extension("log"), "tcpdump");
        process.wait_for_log("listening on", Duration::from_secs(10));
        Capture { process, pcap }
    }

    /// Stops the capture; returns the raw pcap bytes and tcpdump's one-line-per-packet text.
    pub fn stop(mut self) -> (Vec<u8>, Vec<String>) {
        // tcpdump writes every packet at once (-U, --immediate-mode) and flushes on SIGINT.
        self.process
            .signal_and_wait(nix::sys::signal::Signal::SIGINT, Duration::from_secs(5));
        let raw = std::fs::read(&self.pcap).unwrap_or_default();
        let text = sh(Command::new("tcpdump").args(["-nn", "-r"]).arg(&self.pcap));
        let lines = text
            .lines()
            .filter(|l| l.contains(" IP "))
            .map(str::to_owned)
            .collect();
        (raw, lines)
    }
}

/// What a capture of the underlay must show of mesh traffic: packets (`lines`), every one
/// to or from the HBONE port, and never the plaintext `marker` in the raw bytes.
pub fn assert_only_hbone(raw: &[u8], lines: &[String], marker: &[u8]) {
    assert!(
        !contains_bytes(raw, marker),
        "payload crossed the underlay in clear"
    );
    assert!(!lines.is_empty(), "nothing captured on the underlay");
    for line in lines {
        assert!(
            is_port(line, 15008),
            "non-HBONE packet on the underlay: {line}"
        );
    }
}

/// True if `needle` occurs anywhere in `haystack`.
pub fn contains_bytes(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// True if a tcpdump line is to or from `port`.
pub fn is_port(line: &str, port: u16) -> bool {
    line.contains(&format!(".{port} ")) || line.contains(&format!(".{port}:"))
}

/// The listing of nft table `family table` in `ns`, if it exists.
pub fn nft_table(ns: &Netns, family: &str, table: &str) -> Option<String> {
    let out = ns
        .command("nft")
        .args(["list", "table", family, table])
        .output()
        .expect("nft");
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}
