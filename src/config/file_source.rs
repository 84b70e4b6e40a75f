//! The local file config source: a multi-document YAML file of Kubernetes-shaped objects,
//! loaded once at start (a bad file refuses the start) and then polled for changes and
//! hot-reloaded. A bad edit is rejected with a `warn!` naming the document and field, and the
//! last good snapshot stays in force.
//!
//! Changes are detected by comparing content (a hash of the bytes), not mtimes, so editors that
//! replace the file by rename and several writes within one second are both seen. A change is
//! applied once the content has stayed the same for one poll interval, so a file caught halfway
//! through being written is not applied (a truncated file can still be valid YAML).

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use serde::Serialize;
use tokio::task::JoinHandle;
use tokio::time::MissedTickBehavior;
use tracing::{info, warn};

use crate::model::{parse_and_build, ConfigError, MeshSnapshot, MeshStore};

/// Counters of the reloads of a [`FileSource`].
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct ReloadStats {
    /// Successful loads, the initial one included.
    pub accepted: u64,
    /// Rejected reloads (invalid content, unreadable or missing file).
    pub rejected: u64,
    /// Why the latest reload attempt was rejected; `None` once a later reload succeeds.
    pub last_error: Option<String>,
    /// Generation of the snapshot this source last published.
    pub last_loaded_generation: u64,
}

/// What a poll saw at the path.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Observed {
    Content { len: usize, hash: u64 },
    Unreadable(io::ErrorKind),
}

impl Observed {
    fn of(read: &io::Result<Vec<u8>>) -> Self {
        match read {
            Ok(bytes) => {
                let mut hasher = DefaultHasher::new();
                bytes.hash(&mut hasher);
                Observed::Content {
                    len: bytes.len(),
                    hash: hasher.finish(),
                }
            }
            Err(e) => Observed::Unreadable(e.kind()),
        }
    }
}

#[derive(Debug)]
struct WatchState {
    stats: ReloadStats,
    /// The last state acted upon (applied or rejected).
    current: Observed,
    /// A different state seen by the previous poll, waiting to be seen again unchanged.
    pending: Option<Observed>,
}

/// A watched YAML config file feeding a [`MeshStore`].
#[derive(Debug)]
pub struct FileSource {
    path: PathBuf,
    store: Arc<MeshStore>,
    state: Mutex<WatchState>,
}

impl FileSource {
    /// Reads and translates the file once and publishes the snapshot; `Err` if that fails (the
    /// daemon refuses to start on a bad config).
    pub fn load_initial(
        path: impl Into<PathBuf>,
        store: Arc<MeshStore>,
    ) -> Result<Arc<FileSource>, ConfigError> {
        let path = path.into();
        let read = std::fs::read(&path);
        let current = Observed::of(&read);
        let bytes = read.map_err(|source| ConfigError::Io {
            path: path.clone(),
            source,
        })?;
        let snapshot = translate(&path, bytes)?;
        let counts = Counts::of(&snapshot);
        let generation = store.publish(snapshot);
        info!(
            path = %path.display(),
            generation,
            namespaces = counts.namespaces,
            workloads = counts.workloads,
            services = counts.services,
            "loaded mesh config"
        );
        Ok(Arc::new(FileSource {
            path,
            store,
            state: Mutex::new(WatchState {
                stats: ReloadStats {
                    accepted: 1,
                    rejected: 0,
                    last_error: None,
                    last_loaded_generation: generation,
                },
                current,
                pending: None,
            }),
        }))
    }

    /// Spawns (on the current tokio runtime) the loop that polls the file every
    /// `poll_interval` (200ms in the daemon) and reloads it on change. Runs until the returned
    /// handle is aborted.
    pub fn spawn_watch(self: &Arc<Self>, poll_interval: Duration) -> JoinHandle<()> {
        let this = Arc::clone(self);
        // `tokio::time::interval` panics on a zero period.
        let period = poll_interval.max(Duration::from_millis(1));
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(period);
            ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
            loop {
                ticker.tick().await;
                // Reading and translating a large file blocks: keep it off the async workers.
                let source = Arc::clone(&this);
                if let Err(e) = tokio::task::spawn_blocking(move || source.poll_once()).await {
                    warn!(path = %this.path.display(), "config file poll failed: {e}");
                }
            }
        })
    }

    /// A copy of the reload counters.
    pub fn stats(&self) -> ReloadStats {
        self.lock().stats.clone()
    }

    /// The watched file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn lock(&self) -> MutexGuard<'_, WatchState> {
        // The state is only ever replaced field by field; a panic cannot leave it torn.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// One poll: reloads if the file changed and has been stable for one poll.
    fn poll_once(&self) {
        let read = std::fs::read(&self.path);
        let observed = Observed::of(&read);
        {
            let mut state = self.lock();
            if observed == state.current {
                state.pending = None;
                return;
            }
            if state.pending.as_ref() != Some(&observed) {
                state.pending = Some(observed);
                return;
            }
            state.pending = None;
            state.current = observed;
        }

        let result = match read {
            Ok(bytes) => translate(&self.path, bytes),
            Err(source) if source.kind() == io::ErrorKind::NotFound => Err(ConfigError::Io {
                path: self.path.clone(),
                source: io::Error::new(
                    source.kind(),
                    format!(
                        "the file disappeared ({source}); it was deleted or moved away: \
                             put a valid config back at this path"
                    ),
                ),
            }),
            Err(source) => Err(ConfigError::Io {
                path: self.path.clone(),
                source,
            }),
        };

        match result {
            Ok(snapshot) => {
                let counts = Counts::of(&snapshot);
                // Publish under the state lock so that whoever sees the new generation also
                // sees the stats that account for it.
                let mut state = self.lock();
                let generation = self.store.publish(snapshot);
                state.stats.accepted += 1;
                state.stats.last_error = None;
                state.stats.last_loaded_generation = generation;
                drop(state);
                info!(
                    path = %self.path.display(),
                    generation,
                    namespaces = counts.namespaces,
                    workloads = counts.workloads,
                    services = counts.services,
                    "reloaded mesh config"
                );
            }
            Err(error) => {
                let message = error.to_string();
                let mut state = self.lock();
                state.stats.rejected += 1;
                state.stats.last_error = Some(message.clone());
                let kept = state.stats.last_loaded_generation;
                drop(state);
                warn!(
                    path = %self.path.display(),
                    kept_generation = kept,
                    "rejected mesh config reload: {message}; the last good config \
                     (generation {kept}) stays in force until the file is fixed"
                );
            }
        }
    }
}

fn translate(path: &Path, bytes: Vec<u8>) -> Result<MeshSnapshot, ConfigError> {
    let text = String::from_utf8(bytes).map_err(|e| ConfigError::Io {
        path: path.to_owned(),
        source: io::Error::new(
            io::ErrorKind::InvalidData,
            format!("the file is not UTF-8 text ({e}); save it as UTF-8"),
        ),
    })?;
    parse_and_build(&text)
}

struct Counts {
    namespaces: usize,
    workloads: usize,
    services: usize,
}

impl Counts {
    fn of(snapshot: &MeshSnapshot) -> Self {
        Counts {
            namespaces: snapshot.namespaces().count(),
            workloads: snapshot.workloads().count(),
            services: snapshot.services().count(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;
    use tokio::sync::watch;

    const POLL: Duration = Duration::from_millis(20);

    fn pod(name: &str, ip: &str) -> String {
        format!("apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}}}\nstatus: {{podIP: {ip}}}\n")
    }

    /// Waits (bounded) for the store to publish generation `want`.
    async fn wait_generation(rx: &mut watch::Receiver<u64>, want: u64) {
        let deadline = Duration::from_secs(1);
        tokio::time::timeout(deadline, rx.wait_for(|g| *g >= want))
            .await
            .unwrap_or_else(|_| panic!("generation {want} not published within {deadline:?}"))
            .unwrap();
    }

    /// Polls `cond` until it holds or a second passes.
    async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(1);
        while !cond() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(POLL / 2).await;
        }
    }

    #[test]
    fn bad_initial_file_refuses_to_start() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(MeshStore::default());

        let missing = dir.path().join("missing.yaml");
        let err = FileSource::load_initial(&missing, Arc::clone(&store)).unwrap_err();
        assert!(matches!(err, ConfigError::Io { .. }));
        assert!(err.to_string().contains("missing.yaml"), "{err}");

        let bad = dir.path().join("bad.yaml");
        std::fs::write(&bad, pod("p", "10.0.0.300")).unwrap();
        let err = FileSource::load_initial(&bad, Arc::clone(&store)).unwrap_err();
        assert!(err.to_string().contains("status.podIP"), "{err}");
        assert_eq!(store.load().generation, 0, "nothing published");
    }

    #[tokio::test]
    async fn reloads_edits_rejects_bad_ones_and_recovers() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mesh.yaml");
        std::fs::write(&path, pod("a", "10.0.0.1")).unwrap();
        let store = Arc::new(MeshStore::default());
        let source = FileSource::load_initial(&path, Arc::clone(&store)).unwrap();
        assert_eq!(source.path(), path);
        assert_eq!(store.load().generation, 1);
        assert_eq!(
            source.stats(),
            ReloadStats {
                accepted: 1,
                rejected: 0,
                last_error: None,
                last_loaded_generation: 1
            }
        );
        let mut rx = store.subscribe();
        let watch = source.spawn_watch(POLL);

        // A good edit, same length as before (same-second mtime would not tell).
        std::fs::write(&path, pod("b", "10.0.0.2")).unwrap();
        wait_generation(&mut rx, 2).await;
        let snap = store.load();
        assert_eq!(
            snap.workload_by_ip("10.0.0.2".parse().unwrap())
                .unwrap()
                .name,
            "b"
        );
        assert_eq!(source.stats().last_loaded_generation, 2);
        assert_eq!(source.stats().accepted, 2);

        // A broken edit: rejected, the previous snapshot stays.
        std::fs::write(&path, pod("c", "10.0.0.999")).unwrap();
        wait_until("rejection", || source.stats().rejected == 1).await;
        let stats = source.stats();
        let error = stats.last_error.unwrap();
        assert!(
            error.contains("document 1 (Pod default/c): status.podIP"),
            "{error}"
        );
        assert_eq!(stats.accepted, 2);
        assert_eq!(store.load().generation, 2);
        assert!(Arc::ptr_eq(&store.load(), &snap));
        // The same broken content is not re-rejected on every poll.
        tokio::time::sleep(POLL * 4).await;
        assert_eq!(source.stats().rejected, 1);

        // The next good edit recovers.
        std::fs::write(&path, pod("d", "10.0.0.4")).unwrap();
        wait_generation(&mut rx, 3).await;
        let stats = source.stats();
        assert_eq!((stats.accepted, stats.rejected), (3, 1));
        assert_eq!(stats.last_error, None);
        assert!(store
            .load()
            .workload_by_ip("10.0.0.4".parse().unwrap())
            .is_some());
        watch.abort();
    }

    #[tokio::test]
    async fn picks_up_replacement_by_rename_and_survives_deletion() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mesh.yaml");
        std::fs::write(&path, pod("a", "10.0.0.1")).unwrap();
        let store = Arc::new(MeshStore::default());
        let source = FileSource::load_initial(&path, Arc::clone(&store)).unwrap();
        let mut rx = store.subscribe();
        let watch = source.spawn_watch(POLL);

        // Editors write a temporary file and rename it over the original.
        let tmp = dir.path().join(".mesh.yaml.swp");
        std::fs::write(
            &tmp,
            format!("{}---\n{}", pod("a", "10.0.0.1"), pod("b", "10.0.0.2")),
        )
        .unwrap();
        std::fs::rename(&tmp, &path).unwrap();
        wait_generation(&mut rx, 2).await;
        assert_eq!(store.load().workloads().count(), 2);

        // The file disappears: a rejected reload, not a crash; the snapshot stays.
        std::fs::remove_file(&path).unwrap();
        wait_until("rejection", || source.stats().rejected == 1).await;
        let error = source.stats().last_error.unwrap();
        assert!(
            error.contains("mesh.yaml") && error.contains("disappeared"),
            "{error}"
        );
        assert_eq!(store.load().generation, 2);
        assert!(!watch.is_finished());

        // It comes back.
        std::fs::write(&path, pod("c", "10.0.0.3")).unwrap();
        wait_generation(&mut rx, 3).await;
        assert_eq!(store.load().workloads().count(), 1);
        watch.abort();
    }
}
