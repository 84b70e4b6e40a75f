//! Open inbound connections, remembered with what authorized them, so that when policies
//! change each one can be checked again and the ones now denied closed at once.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use std::sync::atomic::AtomicBool;

use tokio::sync::Notify;

/// A cancellation flag: lighter than a CancellationToken (no parent/child tree), which
/// matters when every open connection carries one.
#[derive(Debug, Default)]
struct Cancel {
    cancelled: AtomicBool,
    notify: Notify,
}

impl Cancel {
    fn cancel(&self) {
        self.cancelled.store(true, Ordering::Release);
        self.notify.notify_waiters();
    }

    fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::Acquire)
    }

    async fn cancelled(&self) {
        loop {
            let notified = self.notify.notified();
            if self.is_cancelled() {
                return;
            }
            notified.await;
        }
    }
}

type CancellationToken = Arc<Cancel>;

use crate::identity::SpiffeId;

/// What an inbound connection was authorized on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrackedAttrs {
    /// The peer's identity (HBONE, shared by the streams of one connection), or None for
    /// plaintext.
    pub peer: Option<Arc<SpiffeId>>,
    /// The client's address: the tunnel's remote end for HBONE, the socket's peer for
    /// plaintext and outbound.
    pub source: SocketAddr,
    /// Where the client was headed: the CONNECT authority, or the original destination of
    /// a redirected connection.
    pub destination: SocketAddr,
}

/// Why a connection is not (or no longer) allowed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denial {
    /// `namespace/name` of the deciding policy, when one decided.
    pub policy: Option<String>,
    /// Human-readable cause, logged and sent back in an HBONE refusal.
    pub reason: String,
}

impl std::fmt::Display for Denial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.policy {
            Some(policy) => write!(f, "denied by {policy}: {}", self.reason),
            None => write!(f, "denied: {}", self.reason),
        }
    }
}

type Entries = HashMap<u64, (TrackedAttrs, CancellationToken)>;

/// The open connections of one inbound target.
#[derive(Debug, Default)]
pub struct ConnectionTracker {
    next_id: AtomicU64,
    open: Mutex<Entries>,
}

impl ConnectionTracker {
    /// An empty tracker; each inbound target owns one.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    fn entries(&self) -> std::sync::MutexGuard<'_, Entries> {
        // The map stays consistent even if a holder panicked; keep serving.
        self.open.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Remembers an admitted connection until the returned handle is dropped.
    pub fn track(self: &Arc<Self>, attrs: TrackedAttrs) -> TrackedConnection {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let token = CancellationToken::default();
        self.entries().insert(id, (attrs, token.clone()));
        TrackedConnection {
            id,
            tracker: self.clone(),
            token,
        }
    }

    /// Number of connections being tracked.
    pub fn len(&self) -> usize {
        self.entries().len()
    }

    /// Whether no connection is being tracked.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Checks every open connection again; closes those now denied. Returns the denials.
    pub fn recheck(
        &self,
        still_allowed: impl Fn(&TrackedAttrs) -> Result<(), Denial>,
    ) -> Vec<(TrackedAttrs, Denial)> {
        let mut closed = Vec::new();
        for (attrs, token) in self.entries().values() {
            if token.is_cancelled() {
                continue;
            }
            if let Err(denial) = still_allowed(attrs) {
                token.cancel();
                closed.push((attrs.clone(), denial));
            }
        }
        closed
    }
}

/// One tracked connection; await [`TrackedConnection::cancelled`] next to the byte copy.
#[derive(Debug)]
pub struct TrackedConnection {
    id: u64,
    tracker: Arc<ConnectionTracker>,
    token: CancellationToken,
}

impl TrackedConnection {
    /// Completes when a policy change denies this connection.
    pub async fn cancelled(&self) {
        self.token.cancelled().await
    }
}

impl Drop for TrackedConnection {
    fn drop(&mut self) {
        self.tracker.entries().remove(&self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recheck_cancels_only_denied_connections() {
        let tracker = ConnectionTracker::new();
        let attrs = |port| TrackedAttrs {
            peer: None,
            source: "10.0.0.1:1000".parse().unwrap(),
            destination: SocketAddr::new("10.0.0.2".parse().unwrap(), port),
        };
        let keep = tracker.track(attrs(8080));
        let cut = tracker.track(attrs(9090));
        let closed = tracker.recheck(|a| {
            if a.destination.port() == 9090 {
                Err(Denial {
                    policy: Some("shop/p".into()),
                    reason: "test".into(),
                })
            } else {
                Ok(())
            }
        });
        assert_eq!(closed.len(), 1);
        assert!(cut.token.is_cancelled());
        assert!(!keep.token.is_cancelled());
        drop(cut);
        assert_eq!(tracker.len(), 1);
    }
}
