//! Messages between `weft-cni` and `weft-node`: one JSON request line from the plugin, one
//! JSON response line from the daemon, over the unix socket `<runDir>/cni.sock`.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

/// Socket file name inside the run dir.
pub const SOCKET_FILE: &str = "cni.sock";
/// The daemon's last written state inside the run dir.
pub const STATE_FILE: &str = "state.json";
/// Where weft-node keeps its socket and state file unless the conf says otherwise.
pub const DEFAULT_RUN_DIR: &str = "/var/run/weft";
/// The daemon's CNI socket unless the conf names another.
pub const DEFAULT_SOCKET_PATH: &str = "/var/run/weft/cni.sock";

/// Longest container id accepted (runtimes use 64 hex characters).
pub const MAX_CONTAINER_ID: usize = 256;

/// A container id as the CNI spec allows: alphanumerics plus `_`, `.` and `-`, bounded.
/// Both ends check it: the plugin answers a bad one with a permanent error, the daemon
/// refuses it from any client.
pub fn check_container_id(id: &str) -> Result<(), ContainerIdError> {
    if id.is_empty() {
        return Err(ContainerIdError::Empty);
    }
    if id.len() > MAX_CONTAINER_ID {
        return Err(ContainerIdError::TooLong(id.len()));
    }
    if !id
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
    {
        return Err(ContainerIdError::BadCharacter);
    }
    Ok(())
}

/// Why a container id is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ContainerIdError {
    /// No id at all.
    #[error("the container id is empty")]
    Empty,
    /// Longer than [`MAX_CONTAINER_ID`] (the length is given).
    #[error("the container id is {0} characters long; at most {MAX_CONTAINER_ID} are accepted")]
    TooLong(usize),
    /// A character outside the spec's set.
    #[error("the container id may contain only letters, digits, '_', '.' and '-'")]
    BadCharacter,
}

/// One pod sandbox as the container runtime described it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodAttachment {
    /// The runtime's container id (CNI_CONTAINERID).
    pub container_id: String,
    /// Path of the pod's network namespace (CNI_NETNS).
    pub netns: String,
    /// The pod's Kubernetes namespace (K8S_POD_NAMESPACE).
    pub namespace: String,
    /// The pod's name (K8S_POD_NAME).
    pub name: String,
    /// The pod's uid (K8S_POD_UID): the key the config matches the pod by.
    pub uid: String,
    /// The pod's addresses, from the IPAM plugin's prevResult.
    pub ips: Vec<IpAddr>,
}

/// What the plugin asks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "lowercase")]
pub enum Request {
    /// A new pod: learn its netns; enroll it if its namespace says so. Answer when done.
    Add(PodAttachment),
    /// Is this pod's setup intact?
    Check(PodAttachment),
    /// The pod is going away: release and forget it (idempotent).
    Del {
        /// The runtime's container id.
        container_id: String,
    },
    /// Is the daemon ready to serve pods?
    Status,
    /// Forget every pod not in this list. The plugin sends it only when the runtime gave
    /// `cni.dev/valid-attachments`; without that list a GC is a no-op, never "release all".
    Gc {
        /// Container ids the runtime still has.
        valid_container_ids: Vec<String>,
    },
}

/// What the daemon answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Response {
    /// The request succeeded.
    pub ok: bool,
    /// For Add/Check: the pod is enrolled (rules applied, listeners up).
    #[serde(default)]
    pub enrolled: bool,
    #[serde(default)]
    /// Why it did not succeed (empty when it did).
    pub message: String,
    /// The request can never succeed as sent (a retry would fail the same way).
    #[serde(default)]
    pub permanent: bool,
}

/// The part of the daemon's state file the plugin reads.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateView {
    #[serde(default)]
    /// Namespaces the daemon enrolled when it last wrote the file.
    pub enrolled_namespaces: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip_as_tagged_json() {
        let add = Request::Add(PodAttachment {
            container_id: "c1".into(),
            netns: "/var/run/netns/x".into(),
            namespace: "shop".into(),
            name: "order".into(),
            uid: "u1".into(),
            ips: vec!["10.0.0.5".parse().unwrap()],
        });
        let text = serde_json::to_string(&add).unwrap();
        assert!(text.contains("\"command\":\"add\""), "{text}");
        assert_eq!(serde_json::from_str::<Request>(&text).unwrap(), add);
        let status: Request = serde_json::from_str(r#"{"command":"status"}"#).unwrap();
        assert_eq!(status, Request::Status);
    }
}
