//! L4 proxy logic shared by every entry point. Every connection runs the one sequence in
//! [`l4`] (report -> authorize -> connect -> track -> copy); the entry points supply their
//! parts: [`inbound`] (HBONE streams and plaintext for an [`InboundTarget`]: [`host`] for
//! host mode, [`pod`] for an enrolled pod), [`outbound`] (routing and the loop check, used
//! by [`capture`]'s 15001 listener and by SOCKS5), with [`authz`] (policy checks and
//! re-checks), [`tracker`] (open inbound connections) and [`copy`] (the metered byte copy).

pub mod authz;
pub mod capture;
pub mod copy;
pub mod host;
pub mod inbound;
pub mod l4;
pub mod outbound;
pub mod pod;
pub mod tracker;

pub use copy::{copy_both_ways, copy_metered, CopyTotals};
pub use host::HostWorkloads;
pub use inbound::{InboundError, InboundTarget};
pub use outbound::{OutboundConnection, OutboundProxy, ProxyError, Route, Upstream};
pub use pod::{PodInbound, TransparentSockets};
pub use tracker::{ConnectionTracker, Denial, TrackedAttrs, TrackedConnection};
