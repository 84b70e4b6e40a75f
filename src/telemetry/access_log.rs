//! The access log: one structured line per connection at close, at target `weft::access`,
//! so it follows the daemon's log format (plain or JSON, `--log-format`) and can be
//! filtered on its own (`RUST_LOG=weft::access=info`).

use std::net::SocketAddr;
use std::time::Duration;

use super::labels::{ResponseFlag, WorkloadLabels};

/// What is logged for one connection.
#[derive(Debug)]
pub struct Entry<'a> {
    /// The connection's [`super::ConnectionId`], also on its tracing span.
    pub connection_id: u64,
    pub direction: &'static str,
    pub src: SocketAddr,
    pub dst: SocketAddr,
    pub source: &'a WorkloadLabels,
    pub destination: &'a WorkloadLabels,
    pub destination_service: &'a str,
    pub security: &'a str,
    /// Request direction (client to server).
    pub bytes_received: u64,
    /// Response direction (server to client).
    pub bytes_sent: u64,
    pub duration: Duration,
    pub response_flags: ResponseFlag,
    pub error: Option<&'a str>,
    pub policy: Option<&'a str>,
}

/// Writes the line.
pub fn connection_closed(entry: Entry<'_>) {
    tracing::info!(
        target: "weft::access",
        conn_id = entry.connection_id,
        direction = entry.direction,
        src = %entry.src,
        dst = %entry.dst,
        src_workload = %entry.source.workload,
        src_namespace = %entry.source.namespace,
        src_identity = %entry.source.principal,
        dst_workload = %entry.destination.workload,
        dst_namespace = %entry.destination.namespace,
        dst_identity = %entry.destination.principal,
        dst_service = entry.destination_service,
        security = entry.security,
        bytes_received = entry.bytes_received,
        bytes_sent = entry.bytes_sent,
        duration_ms = entry.duration.as_millis() as u64,
        response_flags = entry.response_flags.as_str(),
        policy = entry.policy.unwrap_or("-"),
        error = entry.error.unwrap_or("-"),
        "connection"
    );
}
