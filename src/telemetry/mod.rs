//! Telemetry with the names SREs already use: Istio-compatible Prometheus metrics for every
//! proxied connection (reported by both ends) and every request a waypoint carries, daemon
//! health metrics, one access log line per connection or request, and W3C trace context.

pub mod access_log;
pub mod connection;
pub mod labels;
pub mod registry;
pub mod request;
pub mod trace_context;

pub use connection::{ByteMeter, ConnectionId, ConnectionReport};
pub use labels::{Reporter, ResponseFlag, Security, WorkloadLabels};
pub use registry::{install, MetricsHandle};
