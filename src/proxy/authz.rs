//! Applying the mesh's policies to one inbound connection: builds the L4 attributes from
//! what the connection proved (peer identity or none, addresses), reports dry-run
//! outcomes in the log, enforces PeerAuthentication STRICT for plaintext, and turns a deny
//! into a [`Denial`] naming the policy.

use crate::model::{MeshSnapshot, Workload};
use crate::policy::{ConnectionAttrs, MtlsMode};

use super::tracker::{Denial, TrackedAttrs};

/// Whether `attrs` may reach `workload` under the policies in `snapshot`.
pub fn check_inbound(
    snapshot: &MeshSnapshot,
    workload: &Workload,
    attrs: &TrackedAttrs,
) -> Result<(), Denial> {
    if attrs.peer.is_none() && snapshot.mtls_mode(workload) == MtlsMode::Strict {
        return Err(Denial {
            policy: None,
            reason: format!(
                "PeerAuthentication STRICT for {}/{}: plaintext is refused, only mTLS (HBONE)",
                workload.namespace, workload.name
            ),
        });
    }
    let principal = attrs.peer.as_ref().map(|p| p.principal());
    let connection = ConnectionAttrs {
        source_principal: principal.as_deref(),
        source_namespace: attrs.peer.as_ref().map(|p| p.namespace()),
        source_ip: attrs.source.ip(),
        destination_ip: attrs.destination.ip(),
        destination_port: attrs.destination.port(),
    };
    let verdict = snapshot.authorize(workload, &connection);
    for outcome in &verdict.dry_run {
        tracing::info!(
            target: "weft::access",
            dry_run_policy = %outcome.policy,
            would_allow = outcome.would_allow,
            src = %attrs.source,
            dst = %attrs.destination,
            principal = principal.as_deref().unwrap_or("unknown"),
            "dry-run policy decision (not enforced)"
        );
    }
    if verdict.allowed {
        Ok(())
    } else {
        Err(Denial {
            policy: verdict.policy.map(|p| p.to_string()),
            reason: verdict.reason.into_owned(),
        })
    }
}

/// Re-checks `tracker`'s open connections every time a new snapshot is published and
/// closes the ones now denied. `workload_for` names the destination workload of a
/// connection in a snapshot (None: it left the mesh, and its connections are closed).
pub async fn recheck_on_change(
    store: std::sync::Arc<crate::model::MeshStore>,
    tracker: std::sync::Arc<super::tracker::ConnectionTracker>,
    workload_for: impl Fn(&MeshSnapshot, &TrackedAttrs) -> Option<std::sync::Arc<Workload>>
        + Send
        + 'static,
) {
    let mut changes = store.subscribe();
    while changes.changed().await.is_ok() {
        let snapshot = store.load();
        let closed = tracker.recheck(|attrs| match workload_for(&snapshot, attrs) {
            Some(workload) => check_inbound(&snapshot, &workload, attrs),
            None => Err(Denial {
                policy: None,
                reason: "the destination is no longer a workload in the mesh config".into(),
            }),
        });
        for (attrs, denial) in closed {
            tracing::info!(
                target: "weft::access",
                src = %attrs.source,
                dst = %attrs.destination,
                principal = %attrs.peer.as_ref().map(|p| p.principal()).unwrap_or_else(|| "unknown".into()),
                policy = denial.policy.as_deref().unwrap_or("-"),
                reason = %denial.reason,
                "closed an open connection: a policy change denies it"
            );
        }
    }
}
