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
    /// `outbound` when the source side reports, `inbound` when the destination side does.
    pub direction: &'static str,
    /// The client's address.
    pub src: SocketAddr,
    /// Where the client was headed (the original destination or CONNECT authority).
    pub dst: SocketAddr,
    /// Labels of the client's workload.
    pub source: &'a WorkloadLabels,
    /// Labels of the destination workload.
    pub destination: &'a WorkloadLabels,
    /// The Service hostname dialled, or `unknown`.
    pub destination_service: &'a str,
    /// The `connection_security_policy` value: `mutual_tls` or `none`.
    pub security: &'a str,
    /// Request direction (client to server).
    pub bytes_received: u64,
    /// Response direction (server to client).
    pub bytes_sent: u64,
    /// From the report's creation to its close or refusal.
    pub duration: Duration,
    /// How the connection ended.
    pub response_flags: ResponseFlag,
    /// Why it was refused or ended badly; logged as `-` when `None`.
    pub error: Option<&'a str>,
    /// `namespace/name` of the policy that refused it, when one did; logged as `-` when
    /// `None`.
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
