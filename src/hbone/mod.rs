//! HBONE: HTTP/2 CONNECT over mutual TLS 1.3, wire-compatible with Istio's ztunnel.
//!
//! Transport only: nothing here knows policy, telemetry or where a stream's bytes go.
//! `client` opens CONNECT streams over pooled h2 connections; `server` accepts them on 15008
//! and hands each stream that passes the transport checks to a [`server::StreamHandler`];
//! `stream` adapts an h2 stream to tokio's `AsyncRead`/`AsyncWrite`.

pub mod client;
pub mod server;
pub mod stream;

pub use client::{ConnectRequest, HboneClient, HboneClientConfig};
pub use server::{
    HboneServer, HboneServerConfig, InboundRequest, Responder, ServedStream, ServerStats,
    StreamHandler,
};
pub use stream::H2Stream;

pub use crate::dataplane::{HBONE_PORT, OWN_PORTS};

/// HTTP/2 flow-control window of each stream, in bytes (client and server): MiB-sized so a
/// single stream can carry multiple Gbit/s.
pub const STREAM_WINDOW: u32 = 4 * 1024 * 1024;
/// HTTP/2 flow-control window of a whole connection, in bytes, shared by its streams: room
/// for four streams at full window.
pub const CONNECTION_WINDOW: u32 = 16 * 1024 * 1024;
/// Largest DATA frame we send (the peer's SETTINGS may lower it).
pub const MAX_FRAME_SIZE: u32 = 256 * 1024;
/// Largest header block a server accepts; anything larger gets 431.
pub const MAX_HEADER_LIST_SIZE: u32 = 16 * 1024;

/// Sets TCP_NODELAY; a failure only costs latency, so it is logged, not fatal.
pub(crate) fn set_nodelay(stream: &tokio::net::TcpStream) {
    if let Err(error) = stream.set_nodelay(true) {
        tracing::debug!(%error, "could not set TCP_NODELAY");
    }
}
