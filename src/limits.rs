//! Load shedding for the shared daemon: one process carries every pod's traffic, so one
//! client must not be able to take all of it.
//!
//! Every proxied connection (and every HBONE stream, which opens an upstream socket) holds
//! a [`Permit`] from the process-wide [`ConnectionGate`]. A source IP (a pod, or a peer)
//! may hold at most `per_source` permits at once on each listener; all sources together at most
//! `max_total`, which the daemon derives from its open-files limit minus a reserve kept
//! for its own work (config reloads, the CNI socket, the admin ports, new handshakes). A
//! refusal is counted in `weft_connections_refused_total{reason}` and logged (at most once
//! a second), and the connection is closed; everyone else keeps being served.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

/// Default cap on concurrent connections (plus HBONE streams) from one source IP.
pub const DEFAULT_PER_SOURCE: usize = 2048;
/// File descriptors kept free for the daemon's own work.
pub const DEFAULT_FD_RESERVE: u64 = 512;

/// The limits in force.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Connections one source address may hold on one listener.
    pub per_source: usize,
    /// Connections the whole process may hold.
    pub max_total: usize,
}

impl Limits {
    /// Limits for a process whose open-files limit is `nofile`: every proxied connection
    /// costs about two descriptors (client and upstream), and `reserve` stay free.
    pub fn for_fd_limit(nofile: u64, reserve: u64, per_source: usize) -> Limits {
        let usable = nofile.saturating_sub(reserve) / 2;
        Limits {
            per_source: per_source.max(1),
            max_total: usize::try_from(usable).unwrap_or(usize::MAX).max(1),
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        let nofile = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
            .map(|(soft, _)| soft)
            .unwrap_or(1024);
        Limits::for_fd_limit(nofile, DEFAULT_FD_RESERVE, DEFAULT_PER_SOURCE)
    }
}

/// Why a connection was shed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The source already holds its share.
    #[error("{client} already holds {limit} connections (the per-source limit)")]
    PerSource {
        /// The source address.
        client: IpAddr,
        /// Its share.
        limit: usize,
    },
    /// The process holds all the connections its descriptors allow.
    #[error("the daemon holds {limit} connections; the rest of its file descriptors are reserved for its own work")]
    Total {
        /// The total limit.
        limit: usize,
    },
}

impl Refusal {
    /// The `reason` label of the refusal counter.
    pub fn reason(&self) -> &'static str {
        match self {
            Refusal::PerSource { .. } => "per_source_limit",
            Refusal::Total { .. } => "fd_reserve",
        }
    }
}

/// Counts permits per source and in total.
#[derive(Debug)]
pub struct ConnectionGate {
    limits: Mutex<Limits>,
    total: AtomicUsize,
    /// Permits held per (listener, source IP).
    by_source: Mutex<HashMap<(&'static str, IpAddr), usize>>,
    last_warning_secs: AtomicU64,
}

/// One admitted connection; dropping it gives the slot back.
#[derive(Debug)]
pub struct Permit {
    gate: &'static ConnectionGate,
    key: (&'static str, IpAddr),
}

static GLOBAL: OnceLock<ConnectionGate> = OnceLock::new();

/// The process-wide gate (default limits until [`configure`] is called).
pub fn global() -> &'static ConnectionGate {
    GLOBAL.get_or_init(|| ConnectionGate::new(Limits::default()))
}

/// Sets the limits of the process-wide gate (the daemon does this at start).
pub fn configure(limits: Limits) {
    *global()
        .limits
        .lock()
        .unwrap_or_else(PoisonError::into_inner) = limits;
}

// === impl ConnectionGate ===

impl ConnectionGate {
    /// A gate with no permits held.
    pub fn new(limits: Limits) -> ConnectionGate {
        ConnectionGate {
            limits: Mutex::new(limits),
            total: AtomicUsize::new(0),
            by_source: Mutex::new(HashMap::new()),
            last_warning_secs: AtomicU64::new(0),
        }
    }

    /// The limits this gate enforces.
    pub fn limits(&self) -> Limits {
        *self.limits.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Permits held now.
    pub fn open(&self) -> usize {
        self.total.load(Ordering::Relaxed)
    }

    /// Admits one connection from `source` on `listener`, or says why not (counted and
    /// logged). Each listener has its own per-source share, so a pod's outbound
    /// connections and the HBONE streams it sends to a pod on the same node do not
    /// compete.
    pub fn admit(&'static self, source: IpAddr, listener: &'static str) -> Result<Permit, Refusal> {
        let key = (listener, source);
        let limits = self.limits();
        let refusal = {
            let mut by_source = self
                .by_source
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            let held = by_source.get(&key).copied().unwrap_or(0);
            if held >= limits.per_source {
                Some(Refusal::PerSource {
                    client: source,
                    limit: limits.per_source,
                })
            } else if self.total.load(Ordering::Relaxed) >= limits.max_total {
                Some(Refusal::Total {
                    limit: limits.max_total,
                })
            } else {
                by_source.insert(key, held + 1);
                self.total.fetch_add(1, Ordering::Relaxed);
                None
            }
        };
        match refusal {
            None => Ok(Permit { gate: self, key }),
            Some(refusal) => {
                metrics::counter!(
                    crate::telemetry::registry::CONNECTIONS_REFUSED,
                    "reason" => refusal.reason()
                )
                .increment(1);
                self.warn_at_most_once_a_second(&refusal, listener);
                Err(refusal)
            }
        }
    }

    fn warn_at_most_once_a_second(&self, refusal: &Refusal, listener: &str) {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let last = self.last_warning_secs.swap(now, Ordering::Relaxed);
        if last != now {
            tracing::warn!(%listener, reason = refusal.reason(), "shedding load: {refusal}; connection closed");
        } else {
            tracing::debug!(%listener, reason = refusal.reason(), "shedding load: {refusal}");
        }
    }

    fn release(&self, key: (&'static str, IpAddr)) {
        let mut by_source = self
            .by_source
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(held) = by_source.get_mut(&key) {
            *held -= 1;
            if *held == 0 {
                by_source.remove(&key);
            }
        }
        self.total.fetch_sub(1, Ordering::Relaxed);
    }
}

// === impl Permit ===

impl Drop for Permit {
    fn drop(&mut self) {
        self.gate.release(self.key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gate(per_source: usize, max_total: usize) -> &'static ConnectionGate {
        Box::leak(Box::new(ConnectionGate::new(Limits {
            per_source,
            max_total,
        })))
    }

    #[test]
    fn one_source_cannot_take_everything() {
        let gate = gate(2, 10);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let p1 = gate.admit(a, "t").unwrap();
        let _p2 = gate.admit(a, "t").unwrap();
        assert_eq!(
            gate.admit(a, "t").unwrap_err(),
            Refusal::PerSource {
                client: a,
                limit: 2
            }
        );
        let _other = gate.admit(b, "t").expect("another source is still served");
        let _elsewhere = gate
            .admit(a, "other listener")
            .expect("each listener has its own share");
        drop(p1);
        let _again = gate.admit(a, "t").expect("a released slot is reusable");
        assert_eq!(gate.open(), 4);
    }

    #[test]
    fn the_total_keeps_a_reserve() {
        let gate = gate(100, 2);
        let _a = gate.admit("10.0.0.1".parse().unwrap(), "t").unwrap();
        let _b = gate.admit("10.0.0.2".parse().unwrap(), "t").unwrap();
        let err = gate.admit("10.0.0.3".parse().unwrap(), "t").unwrap_err();
        assert_eq!(err.reason(), "fd_reserve");
    }

    #[test]
    fn limits_follow_the_fd_limit() {
        let limits = Limits::for_fd_limit(1024, 512, 50);
        assert_eq!(limits.max_total, 256);
        assert_eq!(limits.per_source, 50);
        assert_eq!(Limits::for_fd_limit(100, 512, 0).max_total, 1);
    }
}
