//! The L7 waypoint: per-service HTTP routing with Gateway API `HTTPRoute`s attached to
//! Services (GAMMA). What is here so far:
//!
//! - [`route_table`]: which rule of which route answers a request to a Service port, with
//!   the Gateway API's matching (path, headers, query params, method), parentRef port
//!   scoping, producer and consumer routes, and its precedence across all of them;
//! - [`filters`]: header modifiers, redirects, URL rewrites and mirror sampling, as pure
//!   functions of a filter and a request;
//! - [`backends`]: the weighted choice of a rule's backend, and the 500 / 503 the spec asks
//!   for when there is none to send to;
//! - [`route_status`]: `Accepted` / `ResolvedRefs` per route and parent, with the spec's
//!   reasons, for `/config_dump`;
//! - [`pipeline`]: one request's plan from the three above: answer here (404, 500, 503, a
//!   redirect) or forward, with the request head edited and the response filters to apply;
//! - [`mirror_body`]: the copy of a request body each mirror gets, which never slows the
//!   primary.
//! - [`retry`], [`retry_budget`], [`replay_body`]: when a failed attempt is tried again
//!   (a route's `retry` or the mesh default), how much extra load retries may add, and the
//!   request body kept so it can be sent again.
//! - [`balancer`]: which endpoint gets a request (least request by P2C over peak-EWMA,
//!   round robin, consistent hash) and which are ejected after consecutive failures;
//! - [`circuit_breaker`]: a backend's limits on requests in flight, connections and
//!   pending requests, failing fast over them;
//! - [`faults`]: the FaultInjection delays and aborts of a Service's requests;
//!
//! The rules themselves are typed and checked in [`crate::model::http_route_rules`] when the
//! model is built, so everything here works on routes already known to be honourable.

pub mod backends;
pub mod balancer;
pub mod circuit_breaker;
pub mod faults;
pub mod filters;
pub mod manifests;
pub mod mirror_body;
pub mod pipeline;
pub mod proxy;
pub mod replay_body;
pub mod retry;
pub mod retry_budget;
pub mod route_status;
pub mod route_table;
pub mod server;
pub mod upstream;

pub use server::{Waypoint, WaypointConfig};
