//! Telemetry with the names SREs already use: Istio-compatible Prometheus metrics for every
//! proxied connection (reported by both ends), daemon health metrics, and one access log
//! line per connection.

pub mod access_log;
pub mod connection;
pub mod labels;
pub mod registry;

pub use connection::{ByteMeter, ConnectionId, ConnectionReport};
pub use labels::{Reporter, ResponseFlag, Security, WorkloadLabels};
pub use registry::{install, MetricsHandle};
