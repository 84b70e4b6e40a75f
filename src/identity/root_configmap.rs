//! The trust bundle in a cluster: the ConfigMap `weft-ca-root` (key `root-cert.pem`) in
//! weft's namespace. `weft signer`, the only reader of the CA Secret, publishes the CA's
//! roots there and puts them back if someone edits them; every node watches it and swaps its
//! [`TrustAnchors`] when it changes, so a root rotation (old and new roots published
//! together) reaches every handshake without a restart.
//!
//! A bundle that does not read (not PEM, no certificate, not a CA) is refused with the
//! ConfigMap and key named, and the roots in force keep serving; so does a deleted ConfigMap.

use std::collections::BTreeMap;
use std::time::Duration;

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Patch, PatchParams};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Client};
use tokio::sync::watch;

use super::trust::{roots_from_pem, TrustAnchors};

/// The ConfigMap's name.
pub const ROOT_CONFIGMAP: &str = "weft-ca-root";
/// The key holding the roots (PEM), as in Istio's `istio-ca-root-cert`.
pub const ROOT_KEY: &str = "root-cert.pem";
/// The field manager of the signer's writes.
const FIELD_MANAGER: &str = "weft-signer";

/// Writes `roots_pem` into the ConfigMap `namespace/name` unless it already holds exactly
/// that; returns whether it wrote.
pub async fn publish(
    client: Client,
    namespace: &str,
    name: &str,
    roots_pem: &str,
) -> Result<bool, kube::Error> {
    let api: Api<ConfigMap> = Api::namespaced(client, namespace);
    if let Some(current) = api.get_opt(name).await? {
        let held = current.data.as_ref().and_then(|d| d.get(ROOT_KEY));
        if held.map(String::as_str) == Some(roots_pem) {
            return Ok(false);
        }
    }
    let wanted = ConfigMap {
        metadata: kube::api::ObjectMeta {
            name: Some(name.to_owned()),
            namespace: Some(namespace.to_owned()),
            labels: Some(BTreeMap::from([(
                "app.kubernetes.io/part-of".to_owned(),
                "weft".to_owned(),
            )])),
            ..Default::default()
        },
        data: Some(BTreeMap::from([(
            ROOT_KEY.to_owned(),
            roots_pem.to_owned(),
        )])),
        ..Default::default()
    };
    let mut value = serde_json::to_value(&wanted).map_err(kube::Error::SerdeError)?;
    value["apiVersion"] = "v1".into();
    value["kind"] = "ConfigMap".into();
    api.patch(
        name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&value),
    )
    .await?;
    Ok(true)
}

/// A running watch of the trust-bundle ConfigMap.
pub struct RootWatch {
    loaded: watch::Receiver<bool>,
    source: String,
}

impl RootWatch {
    /// Starts watching `namespace/name`; every valid bundle replaces `anchors` (and is
    /// written to `cache`, if given). A valid bundle already in `cache` (from before a
    /// restart) is in force at once, so a node whose API server is slow to answer still
    /// verifies against the last roots it knew.
    pub fn start(
        client: Client,
        namespace: &str,
        name: &str,
        anchors: TrustAnchors,
        cache: Option<std::path::PathBuf>,
    ) -> RootWatch {
        let (loaded_tx, loaded) = watch::channel(false);
        if let Some(path) = &cache {
            match std::fs::read(path).map(|pem| roots_from_pem(&pem)) {
                Ok(Ok(roots)) => {
                    anchors.replace(roots);
                    loaded_tx.send_replace(true);
                    tracing::info!(cache = %path.display(), "trust bundle loaded from the last one seen");
                }
                Ok(Err(error)) => {
                    tracing::warn!(cache = %path.display(), %error, "the cached trust bundle is unusable; waiting for the ConfigMap")
                }
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
                Err(error) => {
                    tracing::warn!(cache = %path.display(), %error, "cannot read the cached trust bundle")
                }
            }
        }
        let source = format!("ConfigMap {namespace}/{name}");
        let api: Api<ConfigMap> = Api::namespaced(client, namespace);
        let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
        let what = source.clone();
        tokio::spawn(async move {
            let mut events = std::pin::pin!(watcher::watcher(api, config).default_backoff());
            while let Some(event) = events.next().await {
                match event {
                    Ok(watcher::Event::Apply(map) | watcher::Event::InitApply(map)) => {
                        if apply(&what, &map, &anchors) {
                            loaded_tx.send_replace(true);
                            if let Some(path) = &cache {
                                write_cache(path, &anchors).await;
                            }
                        }
                    }
                    Ok(watcher::Event::Delete(_)) => tracing::warn!(source = %what,
                        "the trust bundle was deleted; the roots in force keep serving"),
                    Ok(watcher::Event::Init | watcher::Event::InitDone) => {}
                    Err(error) => tracing::warn!(source = %what, %error,
                        "watching the trust bundle failed; retrying"),
                }
            }
        });
        RootWatch { loaded, source }
    }

    /// Waits until a valid bundle is in force, logging every `report_every` while none is.
    pub async fn wait_loaded(&mut self, report_every: Duration) {
        loop {
            if *self.loaded.borrow() {
                return;
            }
            match tokio::time::timeout(report_every, self.loaded.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return,
                Err(_) => tracing::warn!(source = %self.source,
                    "waiting for the mesh trust bundle (published by weft-signer); nothing can be verified until it exists"),
            }
        }
    }
}

/// Writes the roots in force to `path` (a temp file renamed over it: never half a file).
async fn write_cache(path: &std::path::Path, anchors: &TrustAnchors) {
    let pem = super::ca::chain_to_pem(&anchors.current());
    let temp = path.with_extension("pem.tmp");
    let written = async {
        tokio::fs::write(&temp, pem.as_bytes()).await?;
        tokio::fs::rename(&temp, path).await
    }
    .await;
    if let Err(error) = written {
        tracing::warn!(cache = %path.display(), %error, "cannot cache the trust bundle");
    }
}

/// Applies one version of the ConfigMap; returns whether a valid bundle is in force after.
fn apply(source: &str, map: &ConfigMap, anchors: &TrustAnchors) -> bool {
    let Some(pem) = map.data.as_ref().and_then(|d| d.get(ROOT_KEY)) else {
        tracing::error!(
            source,
            key = ROOT_KEY,
            "the trust bundle has no data.{ROOT_KEY}; the roots in force keep serving"
        );
        return !anchors.current().is_empty();
    };
    match roots_from_pem(pem.as_bytes()) {
        Ok(roots) => {
            let count = roots.len();
            if anchors.replace(roots) {
                tracing::info!(source, roots = count, "trust bundle loaded");
            }
            true
        }
        Err(error) => {
            tracing::error!(source, field = %format!("data.{ROOT_KEY}"), %error,
                "the trust bundle is invalid; the roots in force keep serving");
            !anchors.current().is_empty()
        }
    }
}
