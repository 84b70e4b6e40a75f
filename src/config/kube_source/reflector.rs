//! [`KindStore`]: the reflector of one watched kind. It applies the events of a
//! kube-runtime watcher (an object applied or deleted, and a relist as `Init`, `InitApply`...,
//! `InitDone`, swapped in at once so a relist never shows half a cluster) and stores each
//! object already parsed by the one translation's parser, so a rebuild re-parses nothing.
//! An object that does not even parse is kept with its error, to be reported with the
//! others the build rejects.
//!
//! It also keeps the kind's health: synced once its first list completed, the last watch
//! error until the watch recovers.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use serde::Serialize;

use crate::config::KindStatus;
use crate::model::translate::{parse_object, ParsedObject};
use crate::model::{ConfigError, ObjectRef};

/// (namespace, name) of an object; the namespace is empty for cluster-scoped kinds.
pub(super) type ObjectName = (String, String);

/// One stored object: parsed, or the reason it could not be.
#[derive(Debug, Clone)]
pub(super) enum Stored {
    Parsed(ParsedObject),
    Invalid {
        object: ObjectRef,
        error: std::sync::Arc<ConfigError>,
    },
}

#[derive(Debug, Default)]
struct State {
    objects: HashMap<ObjectName, Stored>,
    /// Objects of a relist in progress (between `Init` and `InitDone`).
    relisting: Option<HashMap<ObjectName, Stored>>,
    synced: bool,
    installed: bool,
    /// The last watch error, when it happened, and whether the watch delivered anything
    /// since.
    last_error: Option<(String, Instant)>,
}

/// The reflector of one kind.
#[derive(Debug)]
pub(super) struct KindStore {
    /// How the kind is named in status and logs (`Pod (this node)`, `Service`).
    pub(super) label: &'static str,
    /// The kind as the translation names it (`Pod`), for errors of unparsable objects.
    kind: &'static str,
    namespaced: bool,
    /// Optional kinds (HTTPRoute) do not hold back the first snapshot when their API is
    /// not installed.
    pub(super) optional: bool,
    state: Mutex<State>,
}

// === impl KindStore ===

impl KindStore {
    pub(super) fn new(
        label: &'static str,
        kind: &'static str,
        namespaced: bool,
        optional: bool,
    ) -> Self {
        KindStore {
            label,
            kind,
            namespaced,
            optional,
            state: Mutex::new(State {
                installed: true,
                ..State::default()
            }),
        }
    }

    /// The kind as the translation names it.
    pub(super) fn kind(&self) -> &'static str {
        self.kind
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Every update is a single insert, remove or swap: a panic cannot leave it torn.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Parses an object from the API for storing.
    pub(super) fn parse<K: Serialize + kube::ResourceExt>(
        &self,
        object: &K,
    ) -> (ObjectName, Stored) {
        let key = self.key_of(object);
        let (namespace, name) = (object.namespace().unwrap_or_default(), object.name_any());
        let value = serde_yaml::to_value(object);
        let parsed = value
            .map_err(|e| ConfigError::Invalid {
                document: None,
                object: None,
                field: "(object)".to_owned(),
                message: format!("cannot read the object: {e}"),
            })
            .and_then(|value| parse_object(None, value));
        let stored = match parsed {
            Ok(parsed) => Stored::Parsed(parsed),
            Err(error) => {
                let object = if self.namespaced {
                    ObjectRef::namespaced(self.kind, Some(&namespace), Some(&name))
                } else {
                    ObjectRef::cluster_scoped(self.kind, Some(&name))
                };
                Stored::Invalid {
                    object,
                    error: std::sync::Arc::new(error),
                }
            }
        };
        (key, stored)
    }

    /// An object was added or changed (`None`: it is to be treated as absent, e.g. a pod
    /// that finished).
    pub(super) fn apply(&self, key: ObjectName, stored: Option<Stored>) {
        let mut state = self.lock();
        state.last_error = None;
        let target = match state.relisting.as_mut() {
            Some(relisting) => relisting,
            None => &mut state.objects,
        };
        match stored {
            Some(stored) => target.insert(key, stored),
            None => target.remove(&key),
        };
    }

    /// The key of an object from the API.
    pub(super) fn key_of<K: kube::ResourceExt>(&self, object: &K) -> ObjectName {
        let namespace = if self.namespaced {
            object.namespace().unwrap_or_default()
        } else {
            String::new()
        };
        (namespace, object.name_any())
    }

    /// Whether an object of this name is stored.
    pub(super) fn contains(&self, key: &ObjectName) -> bool {
        self.lock().objects.contains_key(key)
    }

    /// An object was deleted.
    pub(super) fn delete(&self, key: &ObjectName) {
        let mut state = self.lock();
        state.last_error = None;
        state.objects.remove(key);
    }

    /// A relist starts: objects arrive in a buffer until [`KindStore::relist_done`].
    pub(super) fn relist_start(&self) {
        let mut state = self.lock();
        state.last_error = None;
        state.relisting = Some(HashMap::new());
    }

    /// A relist completed: its objects replace the stored ones at once.
    pub(super) fn relist_done(&self) {
        let mut state = self.lock();
        state.last_error = None;
        if let Some(listed) = state.relisting.take() {
            state.objects = listed;
        }
        state.synced = true;
        state.installed = true;
    }

    /// The watch failed; the stored objects stay as they are.
    pub(super) fn failed(&self, error: String) {
        self.lock().last_error = Some((error, Instant::now()));
    }

    /// An optional kind's API is not installed: it counts as synced and empty.
    pub(super) fn not_installed(&self) {
        let mut state = self.lock();
        state.objects.clear();
        state.relisting = None;
        state.installed = false;
        state.synced = true;
        state.last_error = None;
    }

    /// The watch recovered (the API server answers and no error came for a while).
    pub(super) fn recovered_if_quiet(&self, quiet: std::time::Duration) {
        let mut state = self.lock();
        if state
            .last_error
            .as_ref()
            .is_some_and(|(_, at)| at.elapsed() >= quiet)
        {
            state.last_error = None;
        }
    }

    pub(super) fn synced(&self) -> bool {
        self.lock().synced
    }

    /// The last watch error, while the kind has not recovered.
    pub(super) fn error(&self) -> Option<String> {
        self.lock().last_error.as_ref().map(|(e, _)| e.clone())
    }

    /// Every stored object, for a rebuild.
    pub(super) fn objects(&self) -> Vec<Stored> {
        self.lock().objects.values().cloned().collect()
    }

    /// The kind's status, with `rejected` objects left out by the last build.
    pub(super) fn status(&self, rejected: usize) -> KindStatus {
        let state = self.lock();
        KindStatus {
            objects: state.objects.len(),
            rejected,
            synced: state.synced,
            installed: state.installed,
            last_error: state.last_error.as_ref().map(|(e, _)| e.clone()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(name: &str) -> kube::api::DynamicObject {
        serde_json::from_value(
            json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": "shop"}}),
        )
        .unwrap()
    }

    #[test]
    fn a_relist_replaces_the_objects_at_once() {
        let store = KindStore::new("Pod", "Pod", true, false);
        for name in ["a", "b"] {
            let (key, stored) = store.parse(&pod(name));
            store.apply(key, Some(stored));
        }
        store.relist_start();
        let (key, stored) = store.parse(&pod("c"));
        store.apply(key, Some(stored));
        // Until the relist is done the old objects serve.
        assert_eq!(store.objects().len(), 2);
        store.relist_done();
        let names: Vec<String> = store
            .objects()
            .into_iter()
            .map(|s| match s {
                Stored::Parsed(p) => p.object_ref().name.unwrap_or_default(),
                Stored::Invalid { .. } => panic!("parses"),
            })
            .collect();
        assert_eq!(names, vec!["c".to_owned()]);
        assert!(store.synced());
    }

    #[test]
    fn an_object_that_does_not_parse_is_kept_with_its_error() {
        let store = KindStore::new("Pod", "Pod", true, false);
        let bad = json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "x", "namespace": "shop"}, "spec": {"hostNetwork": "yes"}});
        let bad: kube::api::DynamicObject = serde_json::from_value(bad).unwrap();
        let (key, stored) = store.parse(&bad);
        assert_eq!(key, ("shop".to_owned(), "x".to_owned()));
        match stored {
            Stored::Invalid { object, error } => {
                assert_eq!(object.to_string(), "Pod shop/x");
                assert!(error.to_string().contains("spec.hostNetwork"), "{error}");
            }
            Stored::Parsed(_) => panic!("must not parse"),
        }
    }

    #[test]
    fn an_error_holds_until_the_watch_delivers_or_stays_quiet() {
        let store = KindStore::new("Pod", "Pod", true, false);
        store.failed("connection refused".into());
        store.recovered_if_quiet(std::time::Duration::from_secs(3600));
        assert_eq!(store.error().as_deref(), Some("connection refused"));
        store.recovered_if_quiet(std::time::Duration::ZERO);
        assert_eq!(store.error(), None);
        store.failed("again".into());
        store.relist_start();
        assert_eq!(store.error(), None);
    }
}
