//! Handing a node from one weft-node process to the next, so an upgrade (the DaemonSet
//! starts the new pod before it stops the old one) or a restart refuses no connection.
//!
//! Two processes may run side by side on one node. Every in-pod listener is opened with
//! SO_REUSEPORT (and the pod's `net.ipv4.tcp_migrate_req` on, so connections queued on a
//! listener that closes move to the other one instead of being reset), and so are the
//! admin, metrics and readiness ports. What only one process may do at a time — answer the
//! CNI plugin, write the state file, enroll and release pods, keep the CNI config installed —
//! belongs to the *owner*, the process holding an exclusive `flock` on `<run-dir>/owner.lock`.
//!
//! The new process opens the listeners of every pod it finds in the state file, then binds
//! the CNI socket (the socket path now leads to it: new ADDs wait for it), then waits for the
//! lock. The old process notices that the socket path is no longer its socket, finishes the
//! CNI request in hand, stops managing pods and releases the lock; it keeps serving the
//! connections and listeners it has until SIGTERM, then drains. The new owner re-reads the
//! state file (pods the old one added or deleted meanwhile), brings every pod to its desired
//! state, and only then answers CNI requests and reports ready. A process that dies releases
//! the lock with it.

use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::fcntl::{Flock, FlockArg};

/// The lock file inside the run dir.
pub const LOCK_FILE: &str = "owner.lock";
/// How often an old process checks whether a new one took the CNI socket.
const TAKEOVER_POLL: Duration = Duration::from_millis(100);
/// How often a new process retries the lock while the old one hands over.
const LOCK_POLL: Duration = Duration::from_millis(50);

/// Taking or checking ownership of the node failed.
#[derive(Debug, thiserror::Error)]
pub enum HandoverError {
    #[error("cannot {action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Held while this process owns the node; dropping it hands the node over.
pub struct Ownership {
    _lock: Flock<File>,
}

/// Takes the node's ownership lock, waiting while another process holds it, for at most
/// `patience` (then it goes ahead, saying so: a wedged old process must not block a node's
/// upgrade forever; the state it failed to hand over is found again by discovery).
pub async fn acquire(
    run_dir: &Path,
    patience: Duration,
) -> Result<Option<Ownership>, HandoverError> {
    let path = run_dir.join(LOCK_FILE);
    let deadline = tokio::time::Instant::now() + patience;
    let mut waiting = false;
    loop {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|source| HandoverError::Io {
                action: "open",
                path: path.clone(),
                source,
            })?;
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => {
                if waiting {
                    tracing::info!("the previous weft-node handed this node over");
                }
                return Ok(Some(Ownership { _lock: lock }));
            }
            Err((_, nix::errno::Errno::EWOULDBLOCK)) => {}
            Err((_, errno)) => {
                return Err(HandoverError::Io {
                    action: "lock",
                    path,
                    source: std::io::Error::from(errno),
                })
            }
        }
        if !waiting {
            tracing::info!(lock = %path.display(), "another weft-node owns this node; waiting for it to hand over");
            waiting = true;
        }
        if tokio::time::Instant::now() >= deadline {
            tracing::warn!(?patience, "the previous weft-node did not hand over in time; taking the node without its lock");
            return Ok(None);
        }
        tokio::time::sleep(LOCK_POLL).await;
    }
}

/// Which file a path named when this process bound it: a later process binding the same
/// path replaces the file, so a different identity means "taken over".
#[derive(Debug, Clone)]
pub struct SocketIdentity {
    path: PathBuf,
    dev: u64,
    ino: u64,
}

// === impl SocketIdentity ===

impl SocketIdentity {
    /// The identity of the file at `path` now (just after binding it).
    pub fn of(path: &Path) -> Result<SocketIdentity, HandoverError> {
        let meta = std::fs::symlink_metadata(path).map_err(|source| HandoverError::Io {
            action: "inspect",
            path: path.to_owned(),
            source,
        })?;
        Ok(SocketIdentity {
            path: path.to_owned(),
            dev: meta.dev(),
            ino: meta.ino(),
        })
    }

    /// Whether the path still names this process's socket.
    pub fn is_current(&self) -> bool {
        std::fs::symlink_metadata(&self.path)
            .is_ok_and(|meta| meta.dev() == self.dev && meta.ino() == self.ino)
    }

    /// Removes the socket file, but only if it is still this process's (a newer process's
    /// socket at the same path is left alone).
    pub fn remove_if_current(&self) {
        if self.is_current() {
            let _ = std::fs::remove_file(&self.path);
        }
    }

    /// Returns once another process has bound the path (or removed it).
    pub async fn taken_over(&self) {
        while self.is_current() {
            tokio::time::sleep(TAKEOVER_POLL).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_lock_is_exclusive_and_released_on_drop() {
        let dir = std::env::temp_dir().join(format!("weft-handover-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let first = acquire(&dir, Duration::ZERO).await.unwrap();
        assert!(first.is_some());
        // Held: a second taker gives up after its patience.
        assert!(acquire(&dir, Duration::from_millis(120))
            .await
            .unwrap()
            .is_none());
        let waiter = tokio::spawn({
            let dir = dir.clone();
            async move { acquire(&dir, Duration::from_secs(10)).await.unwrap() }
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!waiter.is_finished(), "the lock is still held");
        drop(first);
        assert!(waiter.await.unwrap().is_some());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn a_socket_bound_again_at_the_same_path_is_a_takeover() {
        let dir = std::env::temp_dir().join(format!("weft-takeover-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("cni.sock");
        let _ = std::fs::remove_file(&path);
        let _old = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let old = SocketIdentity::of(&path).unwrap();
        assert!(old.is_current());
        std::fs::remove_file(&path).unwrap();
        let _new = std::os::unix::net::UnixListener::bind(&path).unwrap();
        tokio::time::timeout(Duration::from_secs(5), old.taken_over())
            .await
            .unwrap();
        // The old process leaves the new socket alone.
        old.remove_if_current();
        assert!(path.exists());
        assert!(SocketIdentity::of(&path).unwrap().is_current());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
