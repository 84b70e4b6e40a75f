//! One watch per kind: kube-runtime's [`watcher`] lists, then watches from the list's
//! resourceVersion, resumes from bookmarks after a dropped connection, relists on 410 Gone,
//! and retries with exponential backoff and jitter; each event is stripped ([`super::strip`])
//! and applied to the kind's [`KindStore`], and the rebuild is told that something changed.
//!
//! An optional kind (Gateway API `HTTPRoute`) whose API is not installed is not watched: it
//! counts as empty and its API is looked for again every minute, so installing the CRD later
//! is picked up without a restart.

use std::fmt::Debug;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use kube::api::ListParams;
use kube::runtime::utils::{Backoff, ResetTimerBackoff, WatchStreamExt};
use kube::runtime::watcher::{self, watcher, Event};
use kube::{Api, Resource};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use super::reflector::KindStore;

/// First retry after a failed watch.
const BACKOFF_MIN: Duration = Duration::from_millis(500);
/// Retries back off up to this (with jitter, so a restarted API server is not hit by every
/// node at once).
pub(super) const BACKOFF_MAX: Duration = Duration::from_secs(10);
/// A watch that ran this long without failing starts its backoff from the beginning again.
const BACKOFF_RESET: Duration = Duration::from_secs(60);
/// How often an optional kind's missing API is looked for again.
const OPTIONAL_RECHECK: Duration = Duration::from_secs(60);

/// Keeps an object (after stripping it in place) or says it is to be treated as absent.
pub(super) type Keep<K> = fn(&mut K) -> bool;

/// A watch to run.
pub(super) struct WatchSpec<K: Resource> {
    pub(super) api: Api<K>,
    pub(super) config: watcher::Config,
    pub(super) store: Arc<KindStore>,
    pub(super) keep: Keep<K>,
}

/// Spawns the watch; it runs until the handle is aborted.
pub(super) fn spawn<K>(spec: WatchSpec<K>, changed: Arc<Notify>) -> JoinHandle<()>
where
    K: Resource + Clone + DeserializeOwned + Serialize + Debug + Send + Sync + 'static,
{
    tokio::spawn(async move {
        if spec.store.optional {
            wait_until_installed(&spec, &changed).await;
        }
        run(spec, changed).await;
    })
}

/// Returns once the kind's API answers a list; until then the kind counts as not installed.
async fn wait_until_installed<K>(spec: &WatchSpec<K>, changed: &Notify)
where
    K: Resource + Clone + DeserializeOwned + Debug,
{
    loop {
        match spec
            .api
            .list_metadata(&ListParams::default().limit(1))
            .await
        {
            Err(kube::Error::Api(status)) if status.code == 404 => {
                debug!(
                    kind = spec.store.label,
                    "API not installed; looking again in a minute"
                );
                spec.store.not_installed();
                changed.notify_one();
                tokio::time::sleep(OPTIONAL_RECHECK).await;
            }
            // Installed, or an error the watch will report and retry itself.
            _ => {
                info!(kind = spec.store.label, "watching");
                return;
            }
        }
    }
}

async fn run<K>(spec: WatchSpec<K>, changed: Arc<Notify>)
where
    K: Resource + Clone + DeserializeOwned + Serialize + Debug + Send + Sync + 'static,
{
    let backoff = ResetTimerBackoff::new(WatchBackoff::default(), BACKOFF_RESET);
    let store = spec.store;
    let keep = spec.keep;
    let mut events = watcher(spec.api, spec.config).backoff(backoff).boxed();
    while let Some(event) = events.next().await {
        match event {
            Ok(Event::Init) => store.relist_start(),
            Ok(Event::InitApply(mut object)) => {
                let kept = keep(&mut object);
                let (key, stored) = store.parse(&object);
                store.apply(key, kept.then_some(stored));
            }
            Ok(Event::InitDone) => {
                store.relist_done();
                changed.notify_one();
            }
            Ok(Event::Apply(mut object)) => {
                let kept = keep(&mut object);
                let (key, stored) = store.parse(&object);
                store.apply(key, kept.then_some(stored));
                changed.notify_one();
            }
            Ok(Event::Delete(object)) => {
                store.delete(&store.key_of(&object));
                changed.notify_one();
            }
            Err(error) => {
                let message = describe(&error);
                warn!(
                    kind = store.label,
                    "watch failed, retrying with backoff; the last snapshot keeps serving: {message}"
                );
                store.failed(message);
                changed.notify_one();
            }
        }
    }
}

/// Exponential backoff from [`BACKOFF_MIN`] doubling up to [`BACKOFF_MAX`], each delay
/// drawn uniformly from its upper half so that nodes spread their retries.
#[derive(Debug, Clone)]
struct WatchBackoff {
    next: Duration,
}

impl Default for WatchBackoff {
    fn default() -> Self {
        WatchBackoff { next: BACKOFF_MIN }
    }
}

impl Iterator for WatchBackoff {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        use rand::Rng;
        let ceiling = self.next;
        self.next = (self.next * 2).min(BACKOFF_MAX);
        Some(rand::thread_rng().gen_range(ceiling / 2..=ceiling))
    }
}

impl Backoff for WatchBackoff {
    fn reset(&mut self) {
        self.next = BACKOFF_MIN;
    }
}

/// The error in words, with the API server's own message when it sent one (RBAC refusals
/// name the verb and resource).
fn describe(error: &watcher::Error) -> String {
    use watcher::Error as E;
    let api = |e: &kube::Error| match e {
        kube::Error::Api(status) => {
            format!("{} ({} {})", status.message, status.code, status.reason)
        }
        other => other.to_string(),
    };
    match error {
        E::InitialListFailed(e) => format!("listing failed: {}", api(e)),
        E::WatchStartFailed(e) => format!("starting the watch failed: {}", api(e)),
        E::WatchFailed(e) => format!("the watch failed: {}", api(e)),
        E::WatchError(status) => format!("the watch failed: {} ({})", status.message, status.code),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_backoff_doubles_up_to_its_cap_with_jitter_and_resets() {
        let mut backoff = WatchBackoff::default();
        let delays: Vec<Duration> = (&mut backoff).take(8).collect();
        for (i, delay) in delays.iter().enumerate() {
            let ceiling = (BACKOFF_MIN * 2u32.pow(i as u32)).min(BACKOFF_MAX);
            assert!(*delay <= ceiling && *delay >= ceiling / 2, "{i}: {delay:?}");
        }
        backoff.reset();
        assert!(backoff.next().unwrap() <= BACKOFF_MIN);
    }
}
