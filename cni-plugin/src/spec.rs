//! The CNI spec pieces `weft-cni` needs: the runtime's environment, the network config on
//! stdin, the error codes, and the JSON the runtime expects on stdout.

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::protocol::{DEFAULT_RUN_DIR, DEFAULT_SOCKET_PATH};

/// CNI versions this plugin speaks.
pub const SUPPORTED_VERSIONS: [&str; 5] = ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];
/// The version used when none is known yet (e.g. to report an error before parsing).
pub const LATEST_VERSION: &str = "1.1.0";

/// Error codes from the CNI spec.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    /// The config's cniVersion is not one this plugin speaks.
    IncompatibleVersion = 1,
    /// A field of the network config is not supported.
    UnsupportedField = 2,
    /// The container (or its netns) does not exist.
    ContainerUnknown = 3,
    /// A required CNI_* variable is missing or malformed.
    InvalidEnvironment = 4,
    /// Reading stdin or writing stdout failed.
    IoFailure = 5,
    /// stdin is not a JSON network config.
    DecodeFailure = 6,
    /// The network config is JSON but not valid.
    InvalidNetworkConfig = 7,
    /// A transient failure: the runtime should retry (e.g. weft-node unreachable).
    TryAgainLater = 11,
    /// weft-node refused the pod for a reason a retry cannot fix (plugin-specific code).
    RefusedByDaemon = 100,
    /// STATUS: the plugin cannot serve ADDs now.
    PluginNotAvailable = 50,
}

/// A CNI error, printed as the spec's JSON on stdout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CniError {
    /// The spec's error code.
    pub code: Code,
    /// A short message for humans.
    pub msg: String,
    /// Longer details: what to do about it.
    pub details: String,
}

impl CniError {
    /// An error with its code, message and details.
    pub fn new(code: Code, msg: impl Into<String>, details: impl Into<String>) -> Self {
        CniError {
            code,
            msg: msg.into(),
            details: details.into(),
        }
    }

    /// The spec's error object.
    pub fn to_json(&self, cni_version: &str) -> String {
        serde_json::json!({
            "cniVersion": cni_version,
            "code": self.code as u32,
            "msg": self.msg,
            "details": self.details,
        })
        .to_string()
    }
}

/// The commands a runtime can ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// Set up a container's network.
    Add,
    /// Tear it down (idempotent).
    Del,
    /// Verify it is still as set up.
    Check,
    /// Report the spec versions this plugin speaks.
    Version,
    /// Whether the plugin can serve ADDs now.
    Status,
    /// Forget attachments the runtime no longer has.
    Gc,
}

/// Everything the runtime passes through the environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Environment {
    /// CNI_COMMAND.
    pub command: Command,
    /// CNI_CONTAINERID.
    pub container_id: Option<String>,
    /// CNI_NETNS.
    pub netns: Option<String>,
    /// CNI_ARGS, split into key/value pairs.
    pub args: BTreeMap<String, String>,
}

impl Environment {
    /// Reads CNI_* variables through `get` (the process environment in production).
    pub fn read(get: impl Fn(&str) -> Option<String>) -> Result<Environment, CniError> {
        let command = match get("CNI_COMMAND").as_deref() {
            Some("ADD") => Command::Add,
            Some("DEL") => Command::Del,
            Some("CHECK") => Command::Check,
            Some("VERSION") => Command::Version,
            Some("STATUS") => Command::Status,
            Some("GC") => Command::Gc,
            Some(other) => {
                return Err(CniError::new(
                    Code::InvalidEnvironment,
                    format!("unknown CNI_COMMAND {other:?}"),
                    "expected ADD, DEL, CHECK, VERSION, STATUS or GC",
                ))
            }
            None => {
                return Err(CniError::new(
                    Code::InvalidEnvironment,
                    "CNI_COMMAND is not set",
                    "weft-cni is a CNI plugin; it is run by a container runtime",
                ))
            }
        };
        let non_empty = |name: &str| get(name).filter(|v| !v.is_empty());
        let args = non_empty("CNI_ARGS")
            .map(|raw| {
                raw.split(';')
                    .filter_map(|pair| pair.split_once('='))
                    .map(|(k, v)| (k.to_owned(), v.to_owned()))
                    .collect()
            })
            .unwrap_or_default();
        let env = Environment {
            command,
            container_id: non_empty("CNI_CONTAINERID"),
            netns: non_empty("CNI_NETNS"),
            args,
        };
        if matches!(command, Command::Add | Command::Check | Command::Del)
            && env.container_id.is_none()
        {
            return Err(CniError::new(
                Code::InvalidEnvironment,
                "CNI_CONTAINERID is not set",
                "ADD, CHECK and DEL need the container id",
            ));
        }
        if let Some(id) = env.container_id.as_deref() {
            crate::protocol::check_container_id(id).map_err(|why| {
                CniError::new(
                    Code::InvalidEnvironment,
                    "CNI_CONTAINERID is not valid",
                    why.to_string(),
                )
            })?;
        }
        if matches!(command, Command::Add | Command::Check) && env.netns.is_none() {
            return Err(CniError::new(
                Code::InvalidEnvironment,
                "CNI_NETNS is not set",
                "ADD and CHECK need the path of the pod's network namespace",
            ));
        }
        Ok(env)
    }

    /// Kubernetes pod identity from CNI_ARGS, if the runtime passed it.
    pub fn pod(&self) -> Option<(String, String, String)> {
        let namespace = self.args.get("K8S_POD_NAMESPACE")?.clone();
        let name = self.args.get("K8S_POD_NAME")?.clone();
        let uid = self
            .args
            .get("K8S_POD_UID")
            .cloned()
            .unwrap_or_else(|| format!("{namespace}/{name}"));
        Some((namespace, name, uid))
    }
}

/// The network config on stdin (only the fields weft-cni reads).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
pub struct NetConf {
    /// The spec version the runtime speaks.
    #[serde(rename = "cniVersion")]
    pub cni_version: String,
    /// The network's name.
    #[serde(default)]
    pub name: String,
    /// The plugin type (`weft-cni`).
    #[serde(rename = "type", default)]
    pub plugin_type: String,
    /// weft-node's CNI socket.
    #[serde(rename = "socketPath", default = "default_socket_path")]
    pub socket_path: String,
    /// weft-node's run dir (its state file, read when the daemon is down).
    #[serde(rename = "runDir", default = "default_run_dir")]
    pub run_dir: String,
    /// The result of the plugins before this one in the chain.
    #[serde(rename = "prevResult", default)]
    pub prev_result: Option<Value>,
    /// GC: the attachments the runtime still has.
    #[serde(rename = "cni.dev/valid-attachments", default)]
    pub valid_attachments: Option<Vec<Value>>,
}

fn default_socket_path() -> String {
    DEFAULT_SOCKET_PATH.to_owned()
}

fn default_run_dir() -> String {
    DEFAULT_RUN_DIR.to_owned()
}

impl NetConf {
    /// Parses stdin, checking the version and the weft-specific fields.
    pub fn parse(stdin: &[u8]) -> Result<NetConf, CniError> {
        let conf: NetConf = serde_json::from_slice(stdin).map_err(|e| {
            CniError::new(
                Code::DecodeFailure,
                "cannot decode the network configuration on stdin",
                e.to_string(),
            )
        })?;
        if !SUPPORTED_VERSIONS.contains(&conf.cni_version.as_str()) {
            return Err(CniError::new(
                Code::IncompatibleVersion,
                format!("CNI version {:?} is not supported", conf.cni_version),
                format!("supported versions: {}", SUPPORTED_VERSIONS.join(", ")),
            ));
        }
        if conf.socket_path.is_empty() || !conf.socket_path.starts_with('/') {
            return Err(CniError::new(
                Code::InvalidNetworkConfig,
                format!("socketPath {:?} must be an absolute path", conf.socket_path),
                "",
            ));
        }
        if conf.run_dir.is_empty() || !conf.run_dir.starts_with('/') {
            return Err(CniError::new(
                Code::InvalidNetworkConfig,
                format!("runDir {:?} must be an absolute path", conf.run_dir),
                "",
            ));
        }
        Ok(conf)
    }

    /// The previous plugin's result, required for ADD and CHECK (weft-cni is chained).
    pub fn require_prev_result(&self) -> Result<&Value, CniError> {
        self.prev_result.as_ref().ok_or_else(|| {
            CniError::new(
                Code::InvalidNetworkConfig,
                "prevResult is missing",
                "weft-cni is a chained plugin: list it after the interface and IPAM plugins",
            )
        })
    }

    /// Container ids listed as still valid in a GC request; `None` when the runtime gave no
    /// `cni.dev/valid-attachments` list (then there is nothing to collect).
    pub fn valid_container_ids(&self) -> Result<Option<Vec<String>>, CniError> {
        let Some(attachments) = &self.valid_attachments else {
            return Ok(None);
        };
        let mut ids = Vec::with_capacity(attachments.len());
        for (i, attachment) in attachments.iter().enumerate() {
            let id = attachment.get("containerID").and_then(Value::as_str);
            let Some(id) = id else {
                return Err(CniError::new(
                    Code::DecodeFailure,
                    format!("cni.dev/valid-attachments[{i}] has no containerID"),
                    attachment.to_string(),
                ));
            };
            ids.push(id.to_owned());
        }
        Ok(Some(ids))
    }
}

/// Pod IPs from a prevResult (`ips[].address` in CIDR form). A result without any IP is
/// refused: a pod the mesh cannot address cannot be served.
pub fn ips_from_result(result: &Value) -> Result<Vec<IpAddr>, CniError> {
    let entries = match result.get("ips") {
        Some(Value::Array(entries)) => entries,
        Some(other) => {
            return Err(CniError::new(
                Code::DecodeFailure,
                "prevResult.ips is not a list",
                format!("found {other}"),
            ))
        }
        None => &Vec::new(),
    };
    let mut ips = Vec::new();
    for entry in entries {
        let cidr = entry
            .get("address")
            .and_then(Value::as_str)
            .ok_or_else(|| {
                CniError::new(
                    Code::DecodeFailure,
                    "prevResult.ips[] entry has no address",
                    entry.to_string(),
                )
            })?;
        let ip = cidr.split('/').next().unwrap_or_default();
        ips.push(ip.parse().map_err(|_| {
            CniError::new(
                Code::DecodeFailure,
                format!("prevResult address {cidr:?} is not an IP/prefix"),
                "",
            )
        })?);
    }
    if ips.is_empty() {
        return Err(CniError::new(
            Code::InvalidNetworkConfig,
            "prevResult has no IP addresses",
            "list weft-cni after the interface and IPAM plugins in the conflist",
        ));
    }
    Ok(ips)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(vars: &[(&str, &str)]) -> Result<Environment, CniError> {
        let vars: BTreeMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Environment::read(|k| vars.get(k).cloned())
    }

    #[test]
    fn environment_errors_name_the_variable() {
        assert_eq!(env(&[]).unwrap_err().code, Code::InvalidEnvironment);
        let err = env(&[("CNI_COMMAND", "ADD"), ("CNI_CONTAINERID", "c")]).unwrap_err();
        assert!(err.msg.contains("CNI_NETNS"), "{err:?}");
        let err = env(&[("CNI_COMMAND", "EXPLODE")]).unwrap_err();
        assert!(err.msg.contains("EXPLODE"));
        let ok = env(&[
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "c"),
            ("CNI_NETNS", "/var/run/netns/p"),
            (
                "CNI_ARGS",
                "IgnoreUnknown=1;K8S_POD_NAMESPACE=shop;K8S_POD_NAME=order;K8S_POD_UID=u-1",
            ),
        ])
        .unwrap();
        assert_eq!(
            ok.pod(),
            Some(("shop".into(), "order".into(), "u-1".into()))
        );
    }

    #[test]
    fn config_is_checked() {
        assert_eq!(
            NetConf::parse(b"garbage").unwrap_err().code,
            Code::DecodeFailure
        );
        let err =
            NetConf::parse(br#"{"cniVersion":"9.9.9","name":"n","type":"weft-cni"}"#).unwrap_err();
        assert_eq!(err.code, Code::IncompatibleVersion);
        let err =
            NetConf::parse(br#"{"cniVersion":"1.0.0","socketPath":"relative.sock"}"#).unwrap_err();
        assert_eq!(err.code, Code::InvalidNetworkConfig);
        let conf =
            NetConf::parse(br#"{"cniVersion":"1.0.0","name":"n","type":"weft-cni"}"#).unwrap();
        assert_eq!(conf.socket_path, DEFAULT_SOCKET_PATH);
        assert_eq!(conf.run_dir, DEFAULT_RUN_DIR);
        assert!(conf.require_prev_result().is_err());
    }

    #[test]
    fn reads_ips_from_prev_result() {
        let result: Value = serde_json::from_str(
            r#"{"ips":[{"address":"10.1.0.5/24","gateway":"10.1.0.1"},{"address":"fd00::5/64"}]}"#,
        )
        .unwrap();
        let ips = ips_from_result(&result).unwrap();
        assert_eq!(
            ips,
            vec![
                "10.1.0.5".parse::<IpAddr>().unwrap(),
                "fd00::5".parse().unwrap()
            ]
        );
        for bad in [
            r#"{"ips":[{"address":"nope/24"}]}"#,
            r#"{"ips":"nope"}"#,
            r#"{"ips":[]}"#,
            r#"{}"#,
        ] {
            let bad: Value = serde_json::from_str(bad).unwrap();
            assert!(ips_from_result(&bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn container_ids_are_checked_as_permanent_errors() {
        for bad in ["a/b", "x y", &"c".repeat(100 * 1024)] {
            let err = env(&[
                ("CNI_COMMAND", "ADD"),
                ("CNI_CONTAINERID", bad),
                ("CNI_NETNS", "/var/run/netns/p"),
            ])
            .unwrap_err();
            assert_eq!(err.code, Code::InvalidEnvironment, "{err:?}");
        }
    }

    #[test]
    fn gc_without_valid_attachments_collects_nothing() {
        let conf =
            NetConf::parse(br#"{"cniVersion":"1.1.0","name":"n","type":"weft-cni"}"#).unwrap();
        assert_eq!(conf.valid_container_ids().unwrap(), None);
        let conf = NetConf::parse(
            br#"{"cniVersion":"1.1.0","name":"n","type":"weft-cni","cni.dev/valid-attachments":[]}"#,
        )
        .unwrap();
        assert_eq!(conf.valid_container_ids().unwrap(), Some(vec![]));
        let conf = NetConf::parse(
            br#"{"cniVersion":"1.1.0","name":"n","type":"weft-cni","cni.dev/valid-attachments":[{"ifname":"eth0"}]}"#,
        )
        .unwrap();
        assert!(conf.valid_container_ids().is_err());
    }
}
