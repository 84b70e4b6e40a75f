//! `weft-cni`: the chained CNI plugin that hands new pods to `weft-node`.
//!
//! This first version only answers `VERSION`; every other command fails with the CNI
//! spec's error JSON (code 4, "invalid configuration") until pods mode lands.

use std::io::Write;

const SUPPORTED_VERSIONS: [&str; 3] = ["0.4.0", "1.0.0", "1.1.0"];

#[derive(serde::Serialize)]
struct CniError<'a> {
    #[serde(rename = "cniVersion")]
    cni_version: &'a str,
    code: u32,
    msg: &'a str,
    details: &'a str,
}

fn main() {
    let command = std::env::var("CNI_COMMAND").unwrap_or_default();
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    if command == "VERSION" {
        let versions: Vec<&str> = SUPPORTED_VERSIONS.to_vec();
        let body = serde_json::json!({"cniVersion": "1.1.0", "supportedVersions": versions});
        let _ = writeln!(out, "{body}");
        return;
    }
    let error = CniError {
        cni_version: "1.1.0",
        code: 4,
        msg: "weft-cni: pods mode is not available in this build",
        details: "only CNI_COMMAND=VERSION is implemented",
    };
    let _ = writeln!(
        out,
        "{}",
        serde_json::to_string(&error).unwrap_or_else(|_| String::from("{}"))
    );
    std::process::exit(1);
}
