//! Inbound connections to a workload this daemon serves, by HBONE (15008) or plaintext
//! (15006): what a target must state ([`InboundTarget`]: who it is, where its policy
//! decision comes from, how its app is reached) and the two entry points, which both run
//! the [`super::l4`] sequence with the same authorize and connect steps.
//!
//! Authorization cannot fail open: a target only names the workload whose policies
//! decide ([`InboundTarget::policy_workload`]); a destination it cannot name is denied,
//! and there is no way to skip the policy check.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use http::StatusCode;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tracing::Instrument;

use super::authz::{check_inbound, recheck_on_change};
use super::l4::{self, Authorize, Connect, Downstream, PlainDownstream, Refusal};
use super::tracker::{ConnectionTracker, Denial, TrackedAttrs};
use crate::hbone::server::BoxFuture;
use crate::hbone::{InboundRequest, Responder, ServedStream, StreamHandler, OWN_PORTS};
use crate::model::{MeshSnapshot, MeshStore, Workload};
use crate::telemetry::{
    ConnectionId, ConnectionReport, Reporter, ResponseFlag, Security, WorkloadLabels,
};

/// Workloads served here, as the inbound paths need them. The HBONE side (which identity
/// to present, which authorities are served) is the [`StreamHandler`] supertrait; a
/// target's `StreamHandler::handle` calls [`serve_hbone`].
pub trait InboundTarget: StreamHandler {
    /// The application side of an admitted connection.
    type Upstream: AsyncRead + AsyncWrite + Unpin + Send;
    /// The mesh config in force: labels and policies come from its current snapshot.
    fn store(&self) -> &Arc<MeshStore>;
    /// The policy decision path: the workload whose policies decide a connection to
    /// `destination` under `snapshot`. None: the destination is not a workload of this
    /// target, and the connection is denied.
    fn policy_workload(
        &self,
        snapshot: &MeshSnapshot,
        destination: SocketAddr,
    ) -> Option<Arc<Workload>>;
    /// Where admitted connections are remembered, so a policy change can close them.
    fn tracker(&self) -> &Arc<ConnectionTracker>;
    /// The upstream connect: opens the application side for a client at `client`.
    fn connect_upstream(
        &self,
        client: IpAddr,
        authority: SocketAddr,
    ) -> BoxFuture<'_, io::Result<Self::Upstream>>;
}

/// Whether `attrs` may reach the target's workload: its policies, or a denial when the
/// target names no workload for the destination.
pub fn authorize<T: InboundTarget + ?Sized>(
    target: &T,
    attrs: &TrackedAttrs,
) -> Result<(), Denial> {
    let snapshot = target.store().load();
    match target.policy_workload(&snapshot, attrs.destination) {
        Some(workload) => check_inbound(&snapshot, &workload, attrs),
        None => Err(not_a_workload()),
    }
}

fn not_a_workload() -> Denial {
    Denial {
        policy: None,
        reason: "destination is not a workload in the mesh config".into(),
    }
}

/// Closes the target's open connections that a config change denies; runs until the
/// store is gone.
pub async fn enforce_policy_changes<T: InboundTarget>(target: Arc<T>) {
    let store = target.store().clone();
    let tracker = target.tracker().clone();
    recheck_on_change(store, tracker, move |snapshot, attrs| {
        target.policy_workload(snapshot, attrs.destination)
    })
    .await
}

/// Why an inbound connection was refused.
#[derive(Debug, thiserror::Error)]
pub enum InboundError {
    /// Policy denied it, or the destination is no workload of the target (response flag
    /// `DENY`; an HBONE client gets 401).
    #[error("{}", .0.reason)]
    Denied(Denial),
    /// Authorized, but the application could not be connected to (response flag
    /// `CONNECT`; an HBONE client gets 503).
    #[error("application at {authority} unreachable: {source}")]
    Unreachable {
        /// The application address dialled.
        authority: SocketAddr,
        /// The connect error.
        source: io::Error,
    },
}

impl Refusal for InboundError {
    fn flag(&self) -> ResponseFlag {
        match self {
            InboundError::Denied(_) => ResponseFlag::Deny,
            InboundError::Unreachable { .. } => ResponseFlag::Connect,
        }
    }

    fn policy(&self) -> Option<&str> {
        match self {
            InboundError::Denied(denial) => denial.policy.as_deref(),
            InboundError::Unreachable { .. } => None,
        }
    }
}

/// The authorize and connect steps of one inbound connection.
struct InboundSteps<T: InboundTarget> {
    target: Arc<T>,
    client: IpAddr,
    authority: SocketAddr,
}

impl<T: InboundTarget> Authorize for InboundSteps<T> {
    type Connect = Self;

    fn authorize(self, attrs: &TrackedAttrs) -> Result<Self, InboundError> {
        authorize(self.target.as_ref(), attrs).map_err(InboundError::Denied)?;
        Ok(self)
    }
}

impl<T: InboundTarget> Connect for InboundSteps<T> {
    type Upstream = T::Upstream;
    type Error = InboundError;

    async fn connect(self) -> Result<T::Upstream, InboundError> {
        self.target
            .connect_upstream(self.client, self.authority)
            .await
            .map_err(|source| InboundError::Unreachable {
                authority: self.authority,
                source,
            })
    }
}

/// The destination-side report of an inbound connection, labelled from the snapshot.
fn inbound_report<T: InboundTarget>(
    target: &T,
    id: ConnectionId,
    attrs: &TrackedAttrs,
    local: SocketAddr,
    security: Security,
) -> ConnectionReport {
    let snapshot = target.store().load();
    let workload = target.policy_workload(&snapshot, attrs.destination);
    ConnectionReport::new(
        id,
        Reporter::Destination,
        attrs.source,
        attrs.destination,
        WorkloadLabels::at(&snapshot, attrs.source, attrs.peer.as_deref()),
        WorkloadLabels::shared(workload.as_ref(), target.identity_for(local).as_ref()),
        None,
        security,
    )
}

/// Serves one HBONE stream the server handed over (a target's `StreamHandler::handle`).
pub async fn serve_hbone<T: InboundTarget>(
    target: Arc<T>,
    request: InboundRequest,
    responder: Responder,
) {
    let id = ConnectionId::next();
    let span = tracing::info_span!("connection", id = id.0, path = "hbone_in",
        src = %request.remote, dst = %request.authority, peer = %request.peer);
    async move {
        // The source address is the one the tunnel came from; `forwarded` is only logged,
        // never trusted, so a peer cannot make the app see another client's IP.
        tracing::debug!(forwarded = ?request.forwarded, "HBONE stream");
        let attrs = TrackedAttrs {
            peer: Some(request.peer.clone()),
            source: request.remote,
            destination: request.authority,
        };
        let report = inbound_report(
            target.as_ref(),
            id,
            &attrs,
            request.local,
            Security::MutualTls,
        );
        let steps = InboundSteps {
            target: target.clone(),
            client: request.remote.ip(),
            authority: request.authority,
        };
        l4::run(
            report,
            attrs,
            Some(target.tracker()),
            steps,
            HboneDownstream(responder),
        )
        .await
    }
    .instrument(span)
    .await
}

/// An HBONE stream's client side: 200 when admitted, 401 or 503 when refused.
struct HboneDownstream(Responder);

impl Downstream<InboundError> for HboneDownstream {
    type Stream = ServedStream;

    async fn admit(self) -> io::Result<ServedStream> {
        self.0.admit().map_err(io::Error::other)
    }

    async fn refuse(self, refusal: &InboundError) {
        let status = match refusal {
            InboundError::Denied(_) => StatusCode::UNAUTHORIZED,
            InboundError::Unreachable { .. } => StatusCode::SERVICE_UNAVAILABLE,
        };
        self.0.refuse(status, &refusal.to_string());
    }
}

/// Serves one plaintext connection redirected to 15006 (`dst` is where it was headed):
/// refused silently unless `dst` is an application address of the target; otherwise the
/// same sequence as HBONE, with no peer identity (so PeerAuthentication STRICT denies).
pub async fn serve_plaintext<T: InboundTarget>(
    target: Arc<T>,
    client: TcpStream,
    peer: SocketAddr,
    dst: SocketAddr,
    id: ConnectionId,
) {
    let local = client.local_addr().unwrap_or(dst);
    if OWN_PORTS.contains(&dst.port()) || !target.serves(local, dst) {
        tracing::info!(%peer, %dst, "refusing plaintext inbound to an address or port the app does not own");
        return;
    }
    let attrs = TrackedAttrs {
        peer: None,
        source: peer,
        destination: dst,
    };
    let report = inbound_report(target.as_ref(), id, &attrs, dst, Security::None);
    let steps = InboundSteps {
        target: target.clone(),
        client: peer.ip(),
        authority: dst,
    };
    l4::run(
        report,
        attrs,
        Some(target.tracker()),
        steps,
        PlainDownstream(client),
    )
    .await
}
