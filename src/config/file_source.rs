//! The local file config source: a multi-document YAML file of Kubernetes-shaped objects,
//! loaded once at start (a bad file refuses the start) and then polled for changes and
//! hot-reloaded. A bad edit is rejected with a `warn!` naming the document and field, and the
//! last good snapshot stays in force.
//!
//! Changes are detected by comparing content (a hash of the bytes), not mtimes, so editors that
//! replace the file by rename and several writes within one second are both seen. A change is
//! applied once the content has stayed the same for one poll interval, so a file caught halfway
//! through being written is not applied (a truncated file can still be valid YAML).
//!
//! The path is untrusted input: it is opened non-blocking (a FIFO cannot hang the watcher),
//! must be a regular file (symlinks to one, as ConfigMap mounts use, are fine; `/dev/zero` is
//! not) no larger than a cap, and is re-read only when its metadata changed (or it changed so
//! recently that a same-tick edit could hide behind equal metadata, as git's "racy" check).
//! An empty or document-less file is an error, and so is a reload that would release every
//! enrolled pod because their namespaces vanished from the file: releasing everything takes
//! an explicit edit (keep the Namespaces, remove their `weft.dev/dataplane-mode` label). A
//! watcher that stops completing polls is reported by [`FileSource::stalled`].

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::io::{self, Read};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::MissedTickBehavior;
use tracing::{info, warn};

use super::source::{ConfigSource, ReloadStats, SourceStatus};
use crate::model::{ConfigError, MeshSnapshot, MeshStore, DATAPLANE_MODE_LABEL};

/// Largest config file read by default (a cluster's worth of pods is far below this).
pub const DEFAULT_MAX_BYTES: u64 = 16 * 1024 * 1024;
/// A file modified this recently is re-read even if its metadata looks unchanged: file
/// timestamps are coarse, so two same-size writes in one tick look alike.
const RACY_WINDOW: Duration = Duration::from_secs(2);
/// The watcher counts as stalled when no poll completed for this many poll intervals
/// (and at least [`MIN_STALL`]).
const STALL_POLLS: u32 = 25;
const MIN_STALL: Duration = Duration::from_secs(5);

/// How a [`FileSource`] reads its file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileSourceLimits {
    /// A larger file is rejected without being read whole.
    pub max_bytes: u64,
}

impl Default for FileSourceLimits {
    fn default() -> Self {
        FileSourceLimits {
            max_bytes: DEFAULT_MAX_BYTES,
        }
    }
}

/// The metadata that tells whether a file may have changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Fingerprint {
    dev: u64,
    ino: u64,
    len: u64,
    mtime_ns: i128,
    ctime_ns: i128,
}

impl Fingerprint {
    fn of(meta: &std::fs::Metadata) -> Self {
        Fingerprint {
            dev: meta.dev(),
            ino: meta.ino(),
            len: meta.len(),
            mtime_ns: i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec()),
            ctime_ns: i128::from(meta.ctime()) * 1_000_000_000 + i128::from(meta.ctime_nsec()),
        }
    }

    /// Whether the content was modified within [`RACY_WINDOW`] before `seen_at`.
    fn racy(&self, seen_at: SystemTime) -> bool {
        let seen_ns = seen_at
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as i128);
        seen_ns - self.mtime_ns < RACY_WINDOW.as_nanos() as i128
    }
}

/// Reads the config file as untrusted input: non-blocking open, regular files only, at most
/// `max_bytes`.
fn read_config(path: &Path, max_bytes: u64) -> io::Result<(Vec<u8>, Fingerprint)> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NONBLOCK | nix::libc::O_NOCTTY)
        .open(path)?;
    let meta = file.metadata()?;
    if !meta.file_type().is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "it is not a regular file (it is a {}); point --config at a regular file",
                file_kind(&meta)
            ),
        ));
    }
    if meta.len() > max_bytes {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "it is {} bytes, larger than the {max_bytes}-byte limit; split the config or \
                 raise --config-max-bytes",
                meta.len()
            ),
        ));
    }
    let mut bytes = Vec::with_capacity(meta.len().min(1024 * 1024) as usize);
    file.take(max_bytes.saturating_add(1))
        .read_to_end(&mut bytes)?;
    if bytes.len() as u64 > max_bytes {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("it grew beyond the {max_bytes}-byte limit while being read"),
        ));
    }
    Ok((bytes, Fingerprint::of(&meta)))
}

fn file_kind(meta: &std::fs::Metadata) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    let kind = meta.file_type();
    if kind.is_dir() {
        "directory"
    } else if kind.is_fifo() {
        "FIFO"
    } else if kind.is_char_device() {
        "character device"
    } else if kind.is_block_device() {
        "block device"
    } else if kind.is_socket() {
        "socket"
    } else {
        "special file"
    }
}

/// What a poll saw at the path.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Observed {
    Content { len: usize, hash: u64 },
    Unreadable(String),
}

impl Observed {
    fn of(read: Result<&[u8], &io::Error>) -> Self {
        match read {
            Ok(bytes) => {
                let mut hasher = DefaultHasher::new();
                bytes.hash(&mut hasher);
                Observed::Content {
                    len: bytes.len(),
                    hash: hasher.finish(),
                }
            }
            Err(why) => Observed::Unreadable(why.to_string()),
        }
    }
}

#[derive(Debug)]
struct WatchState {
    stats: ReloadStats,
    /// Metadata of the file as last read, and when it was read.
    last_read: Option<(Fingerprint, SystemTime)>,
    /// How many times the file was opened and read.
    reads: u64,
    /// When the watcher last completed a poll (`None` before it starts).
    last_poll: Option<Instant>,
    poll_interval: Duration,
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
    limits: FileSourceLimits,
    state: Mutex<WatchState>,
    /// A copy of `state.stats` for subscribers, sent whenever it changes.
    stats_tx: watch::Sender<ReloadStats>,
}

impl FileSource {
    /// Reads and translates the file once and publishes the snapshot; `Err` if that fails (the
    /// daemon refuses to start on a bad config).
    pub fn load_initial(
        path: impl Into<PathBuf>,
        store: Arc<MeshStore>,
    ) -> Result<Arc<FileSource>, ConfigError> {
        Self::load_initial_with(path, store, FileSourceLimits::default())
    }

    /// [`FileSource::load_initial`] with explicit limits.
    pub fn load_initial_with(
        path: impl Into<PathBuf>,
        store: Arc<MeshStore>,
        limits: FileSourceLimits,
    ) -> Result<Arc<FileSource>, ConfigError> {
        Self::load_initial_guarded(path, store, limits, &[])
    }

    /// Like [`FileSource::load_initial_with`], for a daemon that had `enrolled_before`
    /// namespaces enrolled when it last ran (its state file): a first config in which all
    /// of them vanished is refused, as a reload would be, so a restart with a wrong file
    /// cannot release every pod.
    pub fn load_initial_guarded(
        path: impl Into<PathBuf>,
        store: Arc<MeshStore>,
        limits: FileSourceLimits,
        enrolled_before: &[String],
    ) -> Result<Arc<FileSource>, ConfigError> {
        let path = path.into();
        let read_at = SystemTime::now();
        let read = read_config(&path, limits.max_bytes);
        let last_read = read.as_ref().ok().map(|(_, print)| (*print, read_at));
        let read = read.map(|(bytes, _)| bytes);
        let current = Observed::of(read.as_deref());
        let bytes = read.map_err(|source| ConfigError::Io {
            path: path.clone(),
            source,
        })?;
        let snapshot = refuse_release_of(&path, enrolled_before, translate(&path, bytes)?)?;
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
        let stats = ReloadStats {
            accepted: 1,
            rejected: 0,
            last_error: None,
            last_loaded_generation: generation,
        };
        let (stats_tx, _) = watch::channel(stats.clone());
        Ok(Arc::new(FileSource {
            path,
            store,
            limits,
            state: Mutex::new(WatchState {
                last_read,
                reads: 1,
                last_poll: None,
                poll_interval: Duration::ZERO,
                stats,
                current,
                pending: None,
            }),
            stats_tx,
        }))
    }

    /// Spawns (on the current tokio runtime) the loop that polls the file every
    /// `poll_interval` (200ms in the daemon) and reloads it on change. Runs until the returned
    /// handle is aborted.
    pub fn spawn_watch(self: &Arc<Self>, poll_interval: Duration) -> JoinHandle<()> {
        let this = Arc::clone(self);
        // `tokio::time::interval` panics on a zero period.
        let period = poll_interval.max(Duration::from_millis(1));
        {
            let mut state = self.lock();
            state.poll_interval = period;
            state.last_poll = Some(Instant::now());
        }
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
                this.lock().last_poll = Some(Instant::now());
            }
        })
    }

    /// A copy of the reload counters.
    pub fn stats(&self) -> ReloadStats {
        self.lock().stats.clone()
    }

    /// How many times the file has been read (polls that found its metadata unchanged do
    /// not read it).
    pub fn reads(&self) -> u64 {
        self.lock().reads
    }

    /// Why the watcher counts as stuck (no poll completed for a long while), if it does.
    pub fn stalled(&self) -> Option<String> {
        let state = self.lock();
        let last = state.last_poll?;
        let limit = (state.poll_interval * STALL_POLLS).max(MIN_STALL);
        let age = last.elapsed();
        (age > limit).then(|| {
            format!(
                "config source {} is stuck: no poll completed for {}s; edits are not applied",
                self.path.display(),
                age.as_secs()
            )
        })
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
        if self.unchanged_since_last_read() {
            return;
        }
        let read_at = SystemTime::now();
        let read = read_config(&self.path, self.limits.max_bytes);
        let observed = Observed::of(read.as_ref().map(|(bytes, _)| bytes.as_slice()));
        {
            let mut state = self.lock();
            state.reads += 1;
            state.last_read = read.as_ref().ok().map(|(_, print)| (*print, read_at));
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
            Ok((bytes, _)) => translate(&self.path, bytes)
                .and_then(|next| refuse_accidental_release(&self.path, &self.store.load(), next)),
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
                self.stats_tx.send_replace(state.stats.clone());
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
                self.stats_tx.send_replace(state.stats.clone());
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

impl ConfigSource for FileSource {
    fn name(&self) -> String {
        format!("file {}", self.path.display())
    }

    fn status(&self) -> SourceStatus {
        let (reloads, reads) = {
            let state = self.lock();
            (state.stats.clone(), state.reads)
        };
        SourceStatus {
            name: self.name(),
            reloads,
            reads,
            stalled: self.stalled(),
            degraded: None,
            last_sync_unix: None,
            kinds: Default::default(),
            rejected_objects: Vec::new(),
        }
    }

    fn subscribe(&self) -> watch::Receiver<ReloadStats> {
        self.stats_tx.subscribe()
    }
}

impl FileSource {
    /// Whether the file's metadata is what it was at the last read, and that read was
    /// long enough after the last change that an equal-metadata edit is impossible.
    fn unchanged_since_last_read(&self) -> bool {
        let (print, read_at) = {
            let state = self.lock();
            // New content waiting to be confirmed by a second read must get that read,
            // whatever the metadata says (a file moved in with an old mtime).
            match state.last_read {
                Some(last) if state.pending.is_none() => last,
                _ => return false,
            }
        };
        match std::fs::metadata(&self.path) {
            Ok(meta) => Fingerprint::of(&meta) == print && !print.racy(read_at),
            Err(_) => false,
        }
    }
}

/// Refuses a snapshot that would release every enrolled pod because the namespaces that
/// enrolled them vanished from the file (a truncated or wrong file), rather than because an
/// operator changed their labels.
fn refuse_accidental_release(
    path: &Path,
    current: &MeshSnapshot,
    next: MeshSnapshot,
) -> Result<MeshSnapshot, ConfigError> {
    let enrolled_now: Vec<String> = ambient_namespaces(current);
    refuse_release_of(path, &enrolled_now, next)
}

fn ambient_namespaces(snapshot: &MeshSnapshot) -> Vec<String> {
    snapshot
        .namespaces()
        .filter(|ns| ns.is_ambient())
        .map(|ns| ns.name.clone())
        .collect()
}

/// The release-everything check against the namespaces enrolled until now.
fn refuse_release_of(
    path: &Path,
    enrolled_now: &[String],
    next: MeshSnapshot,
) -> Result<MeshSnapshot, ConfigError> {
    if enrolled_now.is_empty() || !ambient_namespaces(&next).is_empty() {
        return Ok(next);
    }
    let vanished: Vec<&String> = enrolled_now
        .iter()
        .filter(|name| next.namespace(name).is_none())
        .collect();
    if vanished.len() < enrolled_now.len() {
        // At least one enrolled namespace is still declared with its label changed: the
        // operator released it on purpose.
        return Ok(next);
    }
    Err(ConfigError::Refused {
        path: path.display().to_string(),
        message: format!(
            "this reload would release every enrolled pod: the ambient namespaces {} are no \
             longer declared; to release them on purpose keep their Namespace objects and \
             remove the {DATAPLANE_MODE_LABEL} label",
            vanished
                .iter()
                .map(|n| n.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    })
}

fn translate(path: &Path, bytes: Vec<u8>) -> Result<MeshSnapshot, ConfigError> {
    let text = String::from_utf8(bytes).map_err(|e| ConfigError::Io {
        path: path.to_owned(),
        source: io::Error::new(
            io::ErrorKind::InvalidData,
            format!("the file is not UTF-8 text ({e}); save it as UTF-8"),
        ),
    })?;
    let objects = crate::model::parse_documents(&text)?;
    if objects.is_empty() {
        return Err(ConfigError::Io {
            path: path.to_owned(),
            source: io::Error::new(
                io::ErrorKind::InvalidData,
                "the file holds no objects (it is empty or only comments); an empty config \
                 would release every pod: write the Namespaces and Pods back",
            ),
        });
    }
    crate::model::build(&objects)
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
    async fn the_config_source_trait_reports_status_and_notifies_every_judged_edit() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mesh.yaml");
        std::fs::write(&path, pod("a", "10.0.0.1")).unwrap();
        let store = Arc::new(MeshStore::default());
        let file = FileSource::load_initial(&path, Arc::clone(&store)).unwrap();
        let watch = file.spawn_watch(POLL);
        let source: Arc<dyn ConfigSource> = file;
        assert_eq!(source.name(), format!("file {}", path.display()));
        let status = source.status();
        assert_eq!(
            (status.reloads.accepted, status.reads, status.stalled),
            (1, 1, None)
        );
        let mut rx = source.subscribe();
        assert_eq!(rx.borrow_and_update().last_loaded_generation, 1);

        std::fs::write(&path, pod("b", "10.0.0.999")).unwrap();
        let judged = tokio::time::timeout(Duration::from_secs(1), rx.changed()).await;
        assert!(matches!(judged, Ok(Ok(()))), "rejection not notified");
        let stats = rx.borrow_and_update().clone();
        assert_eq!((stats.accepted, stats.rejected), (1, 1));
        assert!(stats.last_error.unwrap().contains("status.podIP"));

        std::fs::write(&path, pod("b", "10.0.0.2")).unwrap();
        let judged = tokio::time::timeout(Duration::from_secs(1), rx.changed()).await;
        assert!(matches!(judged, Ok(Ok(()))), "acceptance not notified");
        let stats = rx.borrow_and_update().clone();
        assert_eq!((stats.accepted, stats.last_loaded_generation), (2, 2));
        assert_eq!(stats.last_error, None);
        assert_eq!(source.status().reloads, stats);
        assert_eq!(store.load().generation, 2);
        watch.abort();
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

    const AMBIENT: &str = "apiVersion: v1\nkind: Namespace\nmetadata: {name: shop, labels: {weft.dev/dataplane-mode: ambient}}\n";

    async fn start(content: &str) -> (tempfile::TempDir, PathBuf, Arc<MeshStore>, Arc<FileSource>) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mesh.yaml");
        std::fs::write(&path, content).unwrap();
        let store = Arc::new(MeshStore::default());
        let source = FileSource::load_initial(&path, Arc::clone(&store)).unwrap();
        (dir, path, store, source)
    }

    #[test]
    fn empty_or_comment_only_files_refuse_to_start() {
        let dir = tempfile::tempdir().unwrap();
        for (name, content) in [("empty", ""), ("comments", "# nothing\n---\n# here\n")] {
            let path = dir.path().join(name);
            std::fs::write(&path, content).unwrap();
            let err = FileSource::load_initial(&path, Arc::new(MeshStore::default())).unwrap_err();
            assert!(
                err.to_string().contains("holds no objects"),
                "{name}: {err}"
            );
        }
    }

    #[tokio::test]
    async fn emptying_the_file_keeps_the_last_good_config() {
        let (_dir, path, store, source) =
            start(&format!("{AMBIENT}---\n{}", pod("a", "10.0.0.1"))).await;
        let watch = source.spawn_watch(POLL);
        for (round, content) in ["", "# only a comment\n"].into_iter().enumerate() {
            std::fs::write(&path, content).unwrap();
            wait_until("rejection", || source.stats().rejected == round as u64 + 1).await;
            let error = source.stats().last_error.unwrap();
            assert!(error.contains("holds no objects"), "{error}");
            assert_eq!(store.load().generation, 1);
            assert!(store.load().namespace("shop").is_some());
        }
        watch.abort();
    }

    #[tokio::test]
    async fn releasing_every_pod_needs_an_explicit_edit() {
        let (_dir, path, store, source) =
            start(&format!("{AMBIENT}---\n{}", pod("a", "10.0.0.1"))).await;
        let mut rx = store.subscribe();
        let watch = source.spawn_watch(POLL);
        // The ambient namespace vanishes (a wrong or truncated file): refused.
        std::fs::write(&path, pod("a", "10.0.0.1")).unwrap();
        wait_until("rejection", || source.stats().rejected == 1).await;
        let error = source.stats().last_error.unwrap();
        assert!(
            error.contains("release every enrolled pod") && error.contains("shop"),
            "{error}"
        );
        assert_eq!(store.load().generation, 1);
        // The namespace stays declared with its label removed: the operator meant it.
        std::fs::write(
            &path,
            format!(
                "apiVersion: v1\nkind: Namespace\nmetadata: {{name: shop}}\n---\n{}",
                pod("a", "10.0.0.1")
            ),
        )
        .unwrap();
        wait_generation(&mut rx, 2).await;
        assert!(store.load().namespace("shop").unwrap().labels.is_empty());
        watch.abort();
    }

    #[tokio::test]
    async fn a_fifo_device_or_huge_file_is_refused_without_hanging() {
        let (dir, path, store, source) = start(&pod("a", "10.0.0.1")).await;
        let watch = source.spawn_watch(POLL);
        // A FIFO with no writer: a blocking open would hang the watcher forever.
        std::fs::remove_file(&path).unwrap();
        nix::unistd::mkfifo(&path, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        wait_until("FIFO rejection", || {
            source
                .stats()
                .last_error
                .is_some_and(|e| e.contains("FIFO"))
        })
        .await;
        assert!(source.stalled().is_none());
        // A symlink to /dev/zero: an endless read.
        std::fs::remove_file(&path).unwrap();
        std::os::unix::fs::symlink("/dev/zero", &path).unwrap();
        wait_until("device rejection", || {
            source
                .stats()
                .last_error
                .is_some_and(|e| e.contains("character device"))
        })
        .await;
        // Larger than the cap.
        std::fs::remove_file(&path).unwrap();
        let big = dir.path().join("big.yaml");
        let file = std::fs::File::create(&big).unwrap();
        file.set_len(DEFAULT_MAX_BYTES + 1).unwrap();
        std::fs::rename(&big, &path).unwrap();
        wait_until("size rejection", || {
            source
                .stats()
                .last_error
                .is_some_and(|e| e.contains("limit"))
        })
        .await;
        assert_eq!(store.load().generation, 1, "the first config stays");
        // A symlink to a regular file (how ConfigMaps are mounted) is fine.
        std::fs::remove_file(&path).unwrap();
        let real = dir.path().join("real.yaml");
        std::fs::write(&real, pod("b", "10.0.0.2")).unwrap();
        std::os::unix::fs::symlink(&real, &path).unwrap();
        let mut rx = store.subscribe();
        wait_generation(&mut rx, 2).await;
        watch.abort();
    }

    #[tokio::test]
    async fn an_unchanged_file_is_not_reread() {
        let (_dir, path, _store, source) = start(&pod("a", "10.0.0.1")).await;
        // Make the file old, so its metadata alone proves it unchanged.
        let old = std::time::SystemTime::now() - Duration::from_secs(60);
        std::fs::File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_modified(old)
            .unwrap();
        let watch = source.spawn_watch(POLL);
        // The first poll reads once (the metadata changed since load), then no more.
        wait_until("first re-read", || source.reads() >= 2).await;
        let reads = source.reads();
        let polls_before = Instant::now();
        while polls_before.elapsed() < POLL * 10 {
            tokio::time::sleep(POLL).await;
        }
        assert_eq!(source.reads(), reads, "unchanged file re-read");
        watch.abort();
    }

    #[tokio::test]
    async fn a_watcher_that_stops_polling_is_reported_stalled() {
        let (_dir, _path, _store, source) = start(&pod("a", "10.0.0.1")).await;
        assert!(source.stalled().is_none(), "not watching yet");
        let watch = source.spawn_watch(POLL);
        assert!(source.stalled().is_none());
        watch.abort();
        // Pretend the last poll finished a minute ago (as a hung read would leave it).
        source.lock().last_poll = Some(Instant::now() - Duration::from_secs(60));
        let reason = source.stalled().unwrap();
        assert!(
            reason.contains("stuck") && reason.contains("mesh.yaml"),
            "{reason}"
        );
    }

    #[tokio::test]
    async fn a_file_moved_in_with_an_old_mtime_is_applied() {
        let (dir, path, store, source) = start(&pod("a", "10.0.0.1")).await;
        let mut rx = store.subscribe();
        let watch = source.spawn_watch(POLL);
        // As `cp -p`, `rsync -a` or `mv` of an old file would leave it.
        let staged = dir.path().join("staged.yaml");
        std::fs::write(&staged, pod("b", "10.0.0.2")).unwrap();
        std::fs::File::options()
            .write(true)
            .open(&staged)
            .unwrap()
            .set_modified(std::time::SystemTime::now() - Duration::from_secs(60))
            .unwrap();
        std::fs::rename(&staged, &path).unwrap();
        wait_generation(&mut rx, 2).await;
        assert!(store
            .load()
            .workload_by_ip("10.0.0.2".parse().unwrap())
            .is_some());
        watch.abort();
    }

    #[test]
    fn a_restart_with_a_file_missing_every_enrolled_namespace_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mesh.yaml");
        std::fs::write(&path, pod("a", "10.0.0.1")).unwrap();
        let enrolled = vec!["shop".to_owned()];
        let store = Arc::new(MeshStore::default());
        let limits = FileSourceLimits::default();
        let err =
            FileSource::load_initial_guarded(&path, store.clone(), limits, &enrolled).unwrap_err();
        assert!(
            err.to_string().contains("release every enrolled pod"),
            "{err}"
        );
        assert_eq!(store.load().generation, 0);
        // Keeping the namespace without its label is the explicit way.
        std::fs::write(
            &path,
            "apiVersion: v1\nkind: Namespace\nmetadata: {name: shop}\n",
        )
        .unwrap();
        FileSource::load_initial_guarded(&path, store, limits, &enrolled).unwrap();
    }
}
