//! Circuit breaking: a DestinationPolicy's `connectionPool` limits per backend Service,
//! which fail requests fast (503, response flag `UO`) when the backend is saturated
//! instead of queueing them without bound.
//!
//! - `http.http2MaxRequests`: requests in flight to the backend at once (from the first
//!   attempt to the end of the response body).
//! - `tcp.maxConnections`: connections the waypoint holds open to the backend's endpoints
//!   (busy or idle; backends never share connections). A request that needs a
//!   new connection when they are all open waits for one to come free, as one of at most
//!   `http.http1MaxPendingRequests` pending requests (default 0: none wait).
//!
//! The gauge `weft_waypoint_circuit_breaker_open` is 1 for a backend while a limit turns
//! requests away; `weft_waypoint_circuit_breaker_overflows_total` counts them.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

use crate::model::traffic_policies::DestinationPolicy;

/// Counter: requests turned away by a limit, by destination service and limit.
pub const OVERFLOWS_TOTAL: &str = "weft_waypoint_circuit_breaker_overflows_total";
/// Gauge: 1 while a backend's limits turn requests away.
pub const CIRCUIT_OPEN: &str = "weft_waypoint_circuit_breaker_open";

/// A backend's `connectionPool` limits.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PoolLimits {
    /// `tcp.maxConnections`.
    pub max_connections: Option<usize>,
    /// `http.http1MaxPendingRequests`.
    pub max_pending: usize,
    /// `http.http2MaxRequests`.
    pub max_requests: Option<usize>,
}

impl PoolLimits {
    fn of(policy: Option<&DestinationPolicy>) -> Self {
        let widen = |v: Option<u32>| v.map(|v| v as usize);
        PoolLimits {
            max_connections: widen(policy.and_then(|p| p.max_connections)),
            max_pending: widen(policy.and_then(|p| p.max_pending_requests)).unwrap_or(0),
            max_requests: widen(policy.and_then(|p| p.max_requests)),
        }
    }
}

/// Which limit turned a request away.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Overflow {
    /// `http2MaxRequests` requests were in flight.
    #[error("{0} requests are in flight to the backend, as many as its DestinationPolicy's connectionPool.http.http2MaxRequests allows")]
    Requests(usize),
    /// `maxConnections` were open and `http1MaxPendingRequests` already waited.
    #[error("{0} connections are open to the backend and {1} requests already wait for one, as its DestinationPolicy's connectionPool allows")]
    Pending(usize, usize),
}

impl Overflow {
    fn label(&self) -> &'static str {
        match self {
            Overflow::Requests(_) => "requests",
            Overflow::Pending(..) => "pending",
        }
    }
}

/// One backend's counters and limits.
#[derive(Debug)]
pub struct BackendGate {
    /// `namespace/name`.
    service: Arc<str>,
    limits: Mutex<PoolLimits>,
    requests: AtomicUsize,
    connections: AtomicUsize,
    pending: AtomicUsize,
    /// Signalled when a connection closes or goes back to the idle pool.
    freed: Notify,
    overflows_requests: metrics::Counter,
    overflows_pending: metrics::Counter,
    open: metrics::Gauge,
}

/// Held while a request is in flight to the backend.
#[derive(Debug)]
pub struct RequestPermit {
    gate: Arc<BackendGate>,
}

impl Drop for RequestPermit {
    fn drop(&mut self) {
        self.gate.requests.fetch_sub(1, Ordering::AcqRel);
        self.gate.update_open();
    }
}

/// Held by an open connection to one of the backend's endpoints.
#[derive(Debug)]
pub struct ConnectionPermit {
    gate: Arc<BackendGate>,
}

impl Drop for ConnectionPermit {
    fn drop(&mut self) {
        self.gate.connections.fetch_sub(1, Ordering::AcqRel);
        self.gate.freed.notify_one();
        self.gate.update_open();
    }
}

/// Counts a request waiting for a connection.
struct Waiting<'a>(&'a BackendGate);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.pending.fetch_sub(1, Ordering::AcqRel);
    }
}

// === impl BackendGate ===

impl BackendGate {
    fn new(service: &str, limits: PoolLimits) -> Self {
        let label = |limit: &'static str| metrics::counter!(OVERFLOWS_TOTAL, "destination_service" => service.to_owned(), "limit" => limit);
        BackendGate {
            service: Arc::from(service),
            limits: Mutex::new(limits),
            requests: AtomicUsize::new(0),
            connections: AtomicUsize::new(0),
            pending: AtomicUsize::new(0),
            freed: Notify::new(),
            overflows_requests: label("requests"),
            overflows_pending: label("pending"),
            open: metrics::gauge!(CIRCUIT_OPEN, "destination_service" => service.to_owned()),
        }
    }

    fn limits(&self) -> PoolLimits {
        *self.limits.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn overflowed(&self, overflow: Overflow) -> Overflow {
        match overflow.label() {
            "requests" => self.overflows_requests.increment(1),
            _ => self.overflows_pending.increment(1),
        }
        self.open.set(1.0);
        overflow
    }

    fn update_open(&self) {
        let limits = self.limits();
        let requests_full = limits
            .max_requests
            .is_some_and(|max| self.requests.load(Ordering::Acquire) >= max);
        let connections_full = limits.max_connections.is_some_and(|max| {
            self.connections.load(Ordering::Acquire) >= max
                && self.pending.load(Ordering::Acquire) >= limits.max_pending
        });
        self.open.set(if requests_full || connections_full {
            1.0
        } else {
            0.0
        });
    }

    /// Admits one more request in flight, or says which limit refuses it.
    pub fn admit_request(self: &Arc<Self>) -> Result<RequestPermit, Overflow> {
        let max = self.limits().max_requests;
        let before = self.requests.fetch_add(1, Ordering::AcqRel);
        let permit = RequestPermit { gate: self.clone() };
        if let Some(max) = max {
            if before >= max {
                drop(permit);
                return Err(self.overflowed(Overflow::Requests(max)));
            }
        }
        Ok(permit)
    }

    /// A permit to open one more connection now, if the limit allows.
    pub fn try_connection(self: &Arc<Self>) -> Option<ConnectionPermit> {
        let max = self.limits().max_connections;
        let mut current = self.connections.load(Ordering::Acquire);
        loop {
            if max.is_some_and(|max| current >= max) {
                return None;
            }
            match self.connections.compare_exchange(
                current,
                current + 1,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return Some(ConnectionPermit { gate: self.clone() }),
                Err(now) => current = now,
            }
        }
    }

    /// Waits for a connection to come free (to the idle pool or closed), as one of at most
    /// `http1MaxPendingRequests` waiting; `Err` when that many already wait.
    pub async fn wait_for_connection(&self) -> Result<(), Overflow> {
        let limits = self.limits();
        let before = self.pending.fetch_add(1, Ordering::AcqRel);
        let waiting = Waiting(self);
        if before >= limits.max_pending {
            drop(waiting);
            return Err(self.overflowed(Overflow::Pending(
                limits.max_connections.unwrap_or_default(),
                limits.max_pending,
            )));
        }
        self.freed.notified().await;
        drop(waiting);
        Ok(())
    }

    /// A connection went back to the idle pool: a waiter may take it.
    pub fn connection_idle(&self) {
        self.freed.notify_one();
    }

    /// The backend, `namespace/name`.
    pub fn service(&self) -> Arc<str> {
        self.service.clone()
    }

    /// Requests in flight now.
    pub fn requests(&self) -> usize {
        self.requests.load(Ordering::Acquire)
    }

    /// Connections open now.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::Acquire)
    }
}

/// Every backend's gate, made on first use.
#[derive(Debug, Default)]
pub struct CircuitBreakers {
    gates: Mutex<HashMap<String, Arc<BackendGate>>>,
}

// === impl CircuitBreakers ===

impl CircuitBreakers {
    /// The gate of Service `namespace/name`, with its DestinationPolicy's limits.
    pub fn gate(&self, service: &str, policy: Option<&DestinationPolicy>) -> Arc<BackendGate> {
        let limits = PoolLimits::of(policy);
        let mut gates = self.gates.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(gate) = gates.get(service) {
            *gate.limits.lock().unwrap_or_else(|e| e.into_inner()) = limits;
            return gate.clone();
        }
        let gate = Arc::new(BackendGate::new(service, limits));
        gates.insert(service.to_owned(), gate.clone());
        gate
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn gate(limits: PoolLimits) -> Arc<BackendGate> {
        Arc::new(BackendGate::new("test/svc", limits))
    }

    #[test]
    fn requests_over_the_limit_fail_fast_and_permits_free_places() {
        let g = gate(PoolLimits {
            max_requests: Some(2),
            ..PoolLimits::default()
        });
        let a = g.admit_request().unwrap();
        let _b = g.admit_request().unwrap();
        assert_eq!(g.admit_request().unwrap_err(), Overflow::Requests(2));
        assert_eq!(g.requests(), 2, "a refused request leaves no count behind");
        drop(a);
        assert!(g.admit_request().is_ok());
        let unlimited = gate(PoolLimits::default());
        let held: Vec<_> = (0..100)
            .map(|_| unlimited.admit_request().unwrap())
            .collect();
        assert_eq!(unlimited.requests(), held.len());
    }

    #[tokio::test]
    async fn connections_at_the_limit_make_requests_wait_then_overflow() {
        let g = gate(PoolLimits {
            max_connections: Some(1),
            max_pending: 1,
            max_requests: None,
        });
        let first = g.try_connection().expect("one connection allowed");
        assert!(g.try_connection().is_none());
        assert_eq!(g.connections(), 1);
        // One request may wait; a second overflows at once.
        let waiter = {
            let g = g.clone();
            tokio::spawn(async move { g.wait_for_connection().await })
        };
        tokio::time::timeout(Duration::from_secs(5), async {
            while g.pending.load(Ordering::Acquire) == 0 {
                tokio::task::yield_now().await;
            }
        })
        .await
        .expect("the waiter registers");
        assert_eq!(g.wait_for_connection().await, Err(Overflow::Pending(1, 1)));
        // The connection closing frees the waiter.
        drop(first);
        assert_eq!(waiter.await.unwrap(), Ok(()));
        assert!(g.try_connection().is_some());
        let none_wait = gate(PoolLimits {
            max_connections: Some(1),
            ..PoolLimits::default()
        });
        assert!(none_wait.wait_for_connection().await.is_err());
    }
}
