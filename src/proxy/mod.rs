//! L4 proxy logic shared by every entry point (SOCKS5 in host mode, the 15001/15006
//! listeners in pods mode): where an outbound connection goes, how an inbound HBONE stream
//! reaches the local app, and the byte copy between the two sides.

pub mod authz;
pub mod copy;
pub mod inbound;
pub mod outbound;
pub mod tracker;

pub use copy::{copy_both_ways, copy_metered, CopyTotals};
pub use inbound::HostWorkloads;
pub use outbound::{OutboundConnection, OutboundProxy, ProxyError, Route, Upstream};
pub use tracker::{ConnectionTracker, Denial, TrackedAttrs, TrackedConnection};
