//! Whether weft is still installed in the cluster, as the API server tells a node daemon at
//! shutdown: the answer decides between "restart or upgrade, keep the node's CNI config" and
//! "uninstall, take weft out of the node's CNI chain".
//!
//! Only answers the API server gives on purpose count as "uninstalled": the DaemonSet is
//! gone (404) or being deleted (deletionTimestamp), or this node's ServiceAccount may no
//! longer read it (403: its RBAC was deleted with the rest of weft). A lost API server, a
//! timeout or a bad token (401) say nothing, and weft stays installed: removing the CNI
//! config by mistake would let enrolled namespaces' new pods start outside the mesh.

use std::time::Duration;

use k8s_openapi::api::apps::v1::DaemonSet;
use kube::Api;

use crate::config::kube_source::ApiClient;

/// How long the shutdown check waits for the API server.
pub const CHECK_TIMEOUT: Duration = Duration::from_secs(5);

/// What the API server says about weft's DaemonSet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InstallState {
    /// The DaemonSet exists and is not being deleted: a restart or an upgrade.
    Installed,
    /// weft is being taken out of the cluster (the reason says how the API server said so).
    Uninstalled(String),
    /// No answer that means anything (the reason says why): treated as installed.
    Unknown(String),
}

/// Asks the API server about the DaemonSet `namespace/name`.
pub async fn daemonset_state(api: &ApiClient, namespace: &str, name: &str) -> InstallState {
    let daemonsets: Api<DaemonSet> = Api::namespaced(api.client.clone(), namespace);
    match tokio::time::timeout(CHECK_TIMEOUT, daemonsets.get(name)).await {
        Err(_) => InstallState::Unknown(format!(
            "the API server did not answer within {CHECK_TIMEOUT:?}"
        )),
        Ok(Ok(daemonset)) => match daemonset.metadata.deletion_timestamp {
            Some(when) => InstallState::Uninstalled(format!(
                "DaemonSet {namespace}/{name} is being deleted (since {})",
                when.0
            )),
            None => InstallState::Installed,
        },
        Ok(Err(kube::Error::Api(status))) if status.code == 404 => {
            InstallState::Uninstalled(format!("DaemonSet {namespace}/{name} was deleted"))
        }
        Ok(Err(kube::Error::Api(status))) if status.code == 403 => {
            InstallState::Uninstalled(format!(
                "reading DaemonSet {namespace}/{name} is forbidden (weft's RBAC was removed): {}",
                status.message
            ))
        }
        Ok(Err(error)) => InstallState::Unknown(error.to_string()),
    }
}
