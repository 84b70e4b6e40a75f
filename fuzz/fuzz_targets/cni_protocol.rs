#![no_main]
//! Feeds the CNI unix-socket protocol as both ends read it: the daemon's first line (at most
//! 64 KiB, UTF-8, trimmed) as a `Request` (node-agent/src/cni_server.rs), the same line as
//! the plugin reads a `Response` (cni-plugin/src/daemon.rs), and the whole input as the
//! daemon's `state.json` (`StateView`). Asserts: whatever parses re-serializes to one JSON
//! line that parses back equal and serializes identically again; the daemon's own
//! "malformed request" answer is one line the plugin can parse.

use libfuzzer_sys::fuzz_target;
use serde::{de::DeserializeOwned, Serialize};
use weft_cni::protocol::{Request, Response, StateView};

/// node-agent/src/cni_server.rs: `MAX_REQUEST`.
const MAX_REQUEST: usize = 64 * 1024;

fn round_trip<T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug>(value: &T) {
    let line = serde_json::to_string(value).expect("serializes");
    assert!(!line.contains('\n'), "not one line: {line:?}");
    let back: T = serde_json::from_str(line.trim())
        .unwrap_or_else(|e| panic!("{line:?} does not parse back: {e}"));
    assert_eq!(&back, value, "{line}");
    assert_eq!(serde_json::to_string(&back).unwrap(), line);
}

fuzz_target!(|data: &[u8]| {
    // BufReader::take(MAX_REQUEST).read_line: up to and including the first '\n'.
    let window = &data[..data.len().min(MAX_REQUEST)];
    let line = match window.iter().position(|&b| b == b'\n') {
        Some(at) => &window[..=at],
        None => window,
    };
    if let Ok(line) = std::str::from_utf8(line) {
        match serde_json::from_str::<Request>(line.trim()) {
            Ok(request) => round_trip(&request),
            Err(error) => round_trip(&Response {
                ok: false,
                enrolled: false,
                message: format!("malformed request: {error}"),
                permanent: true,
            }),
        }
        if let Ok(response) = serde_json::from_str::<Response>(line.trim()) {
            round_trip(&response);
        }
    }
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(state) = serde_json::from_str::<StateView>(text) {
            round_trip(&state);
        }
    }
});
