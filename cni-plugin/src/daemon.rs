//! Talking to `weft-node` over its unix socket, and reading its state file when it is down.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use crate::protocol::{Request, Response, StateView, STATE_FILE};

/// How long the plugin waits for the daemon to finish a pod's setup.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(60);

/// Why the daemon could not answer.
#[derive(Debug)]
pub enum DaemonError {
    /// Nobody is listening: the daemon is down or not installed.
    Unreachable(std::io::Error),
    /// The daemon was reached but the exchange failed.
    Exchange(String),
}

impl std::fmt::Display for DaemonError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DaemonError::Unreachable(e) => write!(f, "weft-node is unreachable: {e}"),
            DaemonError::Exchange(e) => write!(f, "talking to weft-node failed: {e}"),
        }
    }
}

/// Sends one request and waits for the answer.
pub fn ask(socket_path: &Path, request: &Request) -> Result<Response, DaemonError> {
    let mut stream = UnixStream::connect(socket_path).map_err(DaemonError::Unreachable)?;
    let exchange = |e: std::io::Error| DaemonError::Exchange(e.to_string());
    stream
        .set_read_timeout(Some(ANSWER_TIMEOUT))
        .map_err(exchange)?;
    stream
        .set_write_timeout(Some(ANSWER_TIMEOUT))
        .map_err(exchange)?;
    let mut line =
        serde_json::to_string(request).map_err(|e| DaemonError::Exchange(e.to_string()))?;
    line.push('\n');
    stream.write_all(line.as_bytes()).map_err(exchange)?;
    let mut answer = String::new();
    BufReader::new(stream)
        .read_line(&mut answer)
        .map_err(exchange)?;
    if answer.trim().is_empty() {
        return Err(DaemonError::Exchange(
            "the daemon closed the connection without answering".into(),
        ));
    }
    serde_json::from_str(answer.trim())
        .map_err(|e| DaemonError::Exchange(format!("unreadable answer {answer:?}: {e}")))
}

/// What the daemon's last state file says about a namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LastKnown {
    /// The file lists the namespace as enrolled.
    Enrolled,
    /// The file exists and does not list it.
    NotEnrolled,
    /// No usable file: the daemon never ran here, or its state is unreadable.
    Unknown(String),
}

/// Reads `<run_dir>/state.json` for `namespace`.
pub fn last_known(run_dir: &Path, namespace: &str) -> LastKnown {
    let path = run_dir.join(STATE_FILE);
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) => return LastKnown::Unknown(format!("{}: {e}", path.display())),
    };
    match serde_json::from_str::<StateView>(&text) {
        Ok(view) if view.enrolled_namespaces.iter().any(|n| n == namespace) => LastKnown::Enrolled,
        Ok(_) => LastKnown::NotEnrolled,
        Err(e) => LastKnown::Unknown(format!("{} is unreadable: {e}", path.display())),
    }
}
