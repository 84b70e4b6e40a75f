//! The signer's decision on one CSR: who asks (weft-node's ServiceAccount, and which node its
//! credentials name; or a workload such as a waypoint asking for its own identity with its
//! pod's token), what it asks for (the usages weft needs; one identity in the mesh's trust
//! domain over a P-256 key), and whether a pod of that identity is scheduled on the asking
//! node (for a workload: the identity must be its own ServiceAccount's). A [`Denial`] carries a condition reason (CamelCase, also the metric label)
//! and a message an operator reads in `kubectl describe csr`.

use std::collections::BTreeSet;
use std::time::Duration;

use k8s_openapi::api::certificates::v1::CertificateSigningRequest;
use k8s_openapi::api::core::v1::Pod;
use kube::api::ListParams;
use kube::{Api, Client};

use crate::identity::csr::{read_request, WorkloadRequest};

/// The extra a pod-bound ServiceAccount token carries: the node the pod runs on.
pub const NODE_NAME_EXTRA: &str = "authentication.kubernetes.io/node-name";
/// The extra naming the token's pod.
pub const POD_NAME_EXTRA: &str = "authentication.kubernetes.io/pod-name";
/// The extra with the token's pod's UID.
pub const POD_UID_EXTRA: &str = "authentication.kubernetes.io/pod-uid";

/// Usages a CSR may ask for: the mesh's, and key encipherment, which many CSR clients add
/// (the leaf never carries it: its key is ECDSA).
const USAGES: [&str; 4] = [
    "digital signature",
    "key encipherment",
    "server auth",
    "client auth",
];
/// Usages a node must ask for.
const REQUIRED_USAGES: [&str; 2] = ["server auth", "client auth"];
/// Pods of other nodes named in a denial, at most.
const NODES_NAMED: usize = 5;

/// Why a CSR is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denial {
    /// The condition reason (CamelCase); also the `reason` label of the denial metric.
    pub reason: &'static str,
    /// What a human reads.
    pub message: String,
}

impl Denial {
    fn new(reason: &'static str, message: impl Into<String>) -> Denial {
        Denial {
            reason,
            message: message.into(),
        }
    }
}

/// What the signer does with a CSR.
#[derive(Debug)]
pub enum Verdict {
    /// Approve and sign for this identity and lifetime.
    Sign {
        /// The request as read.
        request: WorkloadRequest,
        /// The node the requester runs on.
        node: String,
        /// The leaf's lifetime.
        ttl: Duration,
    },
    /// Deny (or, once approved by someone else, fail) with this reason.
    Deny(Denial),
}

/// What the reviewer needs to know.
#[derive(Debug, Clone)]
pub struct ReviewPolicy {
    /// The mesh's trust domain.
    pub trust_domain: String,
    /// weft-node's ServiceAccount: namespace and name.
    pub node_service_account: (String, String),
    /// Lifetime when the CSR asks for none.
    pub default_ttl: Duration,
    /// Longest lifetime signed, whatever the CSR asks.
    pub max_ttl: Duration,
    /// A CSR older than this when first reviewed is denied (`Expired`): its node gave up
    /// waiting long ago (after a signer outage, say) and asks again with a new one.
    pub max_csr_age: Duration,
}

impl ReviewPolicy {
    fn node_username(&self) -> String {
        let (ns, name) = &self.node_service_account;
        format!("system:serviceaccount:{ns}:{name}")
    }
}

/// Reviews `csr`. `Err` is an API failure while looking things up: nothing is decided and
/// the CSR is reviewed again later.
pub async fn review(
    client: &Client,
    policy: &ReviewPolicy,
    csr: &CertificateSigningRequest,
) -> Result<Verdict, kube::Error> {
    if let Some(denial) = expired(csr, policy.max_csr_age) {
        return Ok(Verdict::Deny(denial));
    }
    let requester = match requester(client, policy, csr).await? {
        Ok(requester) => requester,
        Err(denial) => return Ok(Verdict::Deny(denial)),
    };
    if let Err(denial) = check_usages(csr.spec.usages.as_deref().unwrap_or_default()) {
        return Ok(Verdict::Deny(denial));
    }
    let request = match read_request(&csr.spec.request.0, &policy.trust_domain) {
        Ok(request) => request,
        Err(rejection) => {
            return Ok(Verdict::Deny(Denial::new(
                "BadRequest",
                rejection.to_string(),
            )))
        }
    };
    let node = match requester {
        Requester::Node(node) => {
            if let Some(denial) = pod_on_node(client, &request, &node).await? {
                return Ok(Verdict::Deny(denial));
            }
            node
        }
        Requester::Workload {
            namespace,
            service_account,
            node,
        } => {
            let (ns, sa) = (request.id.namespace(), request.id.service_account());
            if (ns, sa) != (namespace.as_str(), service_account.as_str()) {
                return Ok(Verdict::Deny(Denial::new(
                    "NotOwnIdentity",
                    format!("requested by service account {namespace}/{service_account} for {}; a workload may only ask for its own identity", request.id),
                )));
            }
            node
        }
    };
    let asked = csr
        .spec
        .expiration_seconds
        .and_then(|s| u64::try_from(s).ok())
        .map_or(policy.default_ttl, Duration::from_secs);
    Ok(Verdict::Sign {
        request,
        node,
        ttl: asked.min(policy.max_ttl),
    })
}

/// Who asks.
enum Requester {
    /// weft-node, on this node: it may ask for any identity with a pod on the node.
    Node(String),
    /// A pod asking for its own identity (a waypoint), with the node it runs on.
    Workload {
        namespace: String,
        service_account: String,
        node: String,
    },
}

/// The requester and the node its credentials name, or why there is none to trust.
async fn requester(
    client: &Client,
    policy: &ReviewPolicy,
    csr: &CertificateSigningRequest,
) -> Result<Result<Requester, Denial>, kube::Error> {
    let node_user = policy.node_username();
    let username = csr.spec.username.as_deref().unwrap_or_default();
    if username == node_user {
        let (ns, sa) = &policy.node_service_account;
        return Ok(requester_pod(client, csr, ns, sa)
            .await?
            .map(Requester::Node));
    }
    let workload = username
        .strip_prefix("system:serviceaccount:")
        .and_then(|rest| rest.split_once(':'))
        .filter(|(ns, sa)| !ns.is_empty() && !sa.is_empty() && !sa.contains(':'));
    let Some((ns, sa)) = workload else {
        return Ok(Err(Denial::new(
            "RequesterNotWeftNode",
            format!("requested by {username:?}; only {node_user} (weft-node) or a ServiceAccount asking for its own identity with its pod's token may request weft.dev/workload certificates"),
        )));
    };
    Ok(requester_pod(client, csr, ns, sa)
        .await?
        .map(|node| Requester::Workload {
            namespace: ns.to_owned(),
            service_account: sa.to_owned(),
            node,
        }))
}

/// The node of the pod the requester's token is bound to, which must run as `ns`/`sa`, be
/// alive, and be on the node the token names (if it names one).
async fn requester_pod(
    client: &Client,
    csr: &CertificateSigningRequest,
    ns: &str,
    sa: &str,
) -> Result<Result<String, Denial>, kube::Error> {
    let extra = csr.spec.extra.clone().unwrap_or_default();
    let single = |key: &str| match extra.get(key).map(Vec::as_slice) {
        Some([value]) if !value.is_empty() => Some(value.clone()),
        _ => None,
    };
    let (Some(pod_name), Some(pod_uid)) = (single(POD_NAME_EXTRA), single(POD_UID_EXTRA)) else {
        return Ok(Err(Denial::new(
            "NoNodeInCredentials",
            format!("the requester's token is not bound to a pod (no {POD_NAME_EXTRA} and {POD_UID_EXTRA} extras): the requester must authenticate with its pod's projected ServiceAccount token"),
        )));
    };
    // The token names the pod; the pod, read now, names the node (and must still be the
    // requester's, alive, and on the node the token says, if it says one).
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let gone = |why: &str| {
        Ok(Err(Denial::new(
            "RequesterPodGone",
            format!("the requester's pod {ns}/{pod_name} (uid {pod_uid}) {why}"),
        )))
    };
    let Some(pod) = pods.get_opt(&pod_name).await? else {
        return gone("no longer exists");
    };
    if pod.metadata.uid.as_deref() != Some(pod_uid.as_str()) {
        return gone("no longer exists (a pod of that name has another uid)");
    }
    let spec = pod.spec.as_ref();
    if spec.and_then(|s| s.service_account_name.as_deref()) != Some(sa) {
        return gone(&format!("does not run as {ns}/{sa}"));
    }
    if past_grace(&pod) {
        return gone("is being deleted and past its grace period");
    }
    let Some(node) = spec.and_then(|s| s.node_name.clone()) else {
        return gone("is not scheduled on a node");
    };
    if let Some(named) = single(NODE_NAME_EXTRA) {
        if named != node {
            return gone(&format!("runs on {node}, not on {named} as its token says"));
        }
    }
    Ok(Ok(node))
}

/// A pod being deleted whose grace period is over: whatever still runs it is not a kubelet
/// that will stop it (a node holding a pod in Terminating to keep its identity).
fn past_grace(pod: &Pod) -> bool {
    let Some(deleted) = pod.metadata.deletion_timestamp.as_ref() else {
        return false;
    };
    let grace = pod
        .metadata
        .deletion_grace_period_seconds
        .unwrap_or(0)
        .max(0);
    let deadline = deleted.0.as_second().saturating_add(grace);
    now_unix() > deadline
}

fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// A CSR created longer than `max_age` ago.
fn expired(csr: &CertificateSigningRequest, max_age: Duration) -> Option<Denial> {
    let created = csr.metadata.creation_timestamp.as_ref()?.0.as_second();
    let age = now_unix().saturating_sub(created);
    let max = i64::try_from(max_age.as_secs()).unwrap_or(i64::MAX);
    (age > max).then(|| {
        Denial::new(
            "Expired",
            format!("created {age}s ago, more than the signer's --max-csr-age of {max}s; its node has asked again since"),
        )
    })
}

fn check_usages(usages: &[String]) -> Result<(), Denial> {
    let bad: Vec<&str> = usages
        .iter()
        .map(String::as_str)
        .filter(|u| !USAGES.contains(u))
        .collect();
    if !bad.is_empty() {
        return Err(Denial::new(
            "BadUsages",
            format!(
                "spec.usages asks for {bad:?}; weft workload certificates allow only {USAGES:?}"
            ),
        ));
    }
    let missing: Vec<&str> = REQUIRED_USAGES
        .iter()
        .copied()
        .filter(|u| !usages.iter().any(|have| have == u))
        .collect();
    if !missing.is_empty() {
        return Err(Denial::new(
            "BadUsages",
            format!(
                "spec.usages lacks {missing:?}; mesh mTLS needs both server auth and client auth"
            ),
        ));
    }
    Ok(())
}

/// `None` when a pod of the request's service account that has not finished (not
/// Succeeded or Failed, not past its deletion grace period) is scheduled on `node`; else
/// the denial, naming where that service account's pods do run.
async fn pod_on_node(
    client: &Client,
    request: &WorkloadRequest,
    node: &str,
) -> Result<Option<Denial>, kube::Error> {
    let (ns, sa) = (request.id.namespace(), request.id.service_account());
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let runs_here = |pod: &Pod| {
        let spec = pod.spec.as_ref();
        let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
        spec.and_then(|s| s.service_account_name.as_deref()) == Some(sa)
            && !matches!(phase, Some("Succeeded" | "Failed"))
            && !past_grace(pod)
    };
    let here = pods
        .list(&ListParams::default().fields(&format!(
            "spec.nodeName={node},spec.serviceAccountName={sa}"
        )))
        .await?;
    if here.items.iter().any(|pod| {
        runs_here(pod) && pod.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(node)
    }) {
        return Ok(None);
    }
    // Denied: say where this service account's pods do run (a bounded look).
    let anywhere = pods
        .list(
            &ListParams::default()
                .fields(&format!("spec.serviceAccountName={sa}"))
                .limit(50),
        )
        .await?;
    let elsewhere: BTreeSet<String> = anywhere
        .items
        .iter()
        .filter(|pod| runs_here(pod))
        .filter_map(|pod| pod.spec.as_ref().and_then(|s| s.node_name.clone()))
        .filter(|on| on != node)
        .take(NODES_NAMED)
        .collect();
    let where_else = if elsewhere.is_empty() {
        "it has no running pod on any node".to_owned()
    } else {
        format!(
            "its pods run on {}",
            elsewhere.into_iter().collect::<Vec<_>>().join(", ")
        )
    };
    Ok(Some(Denial::new(
        "NoPodOnNode",
        format!("no running pod of service account {ns}/{sa} is scheduled on node {node}, the requester's node; {where_else}"),
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usages(list: &[&str]) -> Vec<String> {
        list.iter().map(|u| (*u).to_owned()).collect()
    }

    #[test]
    fn usages_must_be_the_mesh_ones() {
        check_usages(&usages(&USAGES)).unwrap();
        check_usages(&usages(&crate::identity::csr::USAGES)).unwrap();
        check_usages(&usages(&["server auth", "client auth"])).unwrap();
        let err = check_usages(&usages(&["client auth"])).unwrap_err();
        assert_eq!(err.reason, "BadUsages");
        assert!(err.message.contains("server auth"), "{}", err.message);
        let err =
            check_usages(&usages(&["server auth", "client auth", "code signing"])).unwrap_err();
        assert!(err.message.contains("code signing"), "{}", err.message);
    }
}
