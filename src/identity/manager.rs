//! Keeps one leaf certificate per identity the daemon serves: issued on first use by the
//! [`Issuer`] (async, never on an async worker thread for the local CA), renewed at a
//! fraction of its lifetime (half by default), and, when renewal fails, retried with
//! exponential backoff while the still-valid old certificate keeps serving.
//!
//! Identities no served workload uses any more are retired: [`CertManager::retain`] is
//! called whenever the served set changes; an identity outside it whose leaf nobody holds
//! (no TLS config, no pooled connection) is dropped at once, one still held is dropped at
//! its next renewal time once it is released, and a retired identity is never renewed.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;
use tokio::sync::OnceCell;

use super::ca::{CaError, IssuedLeaf, MeshCa};
use super::error::IdentityError;
use super::issuer::{IssueRequest, Issuer, LocalCaIssuer};
use super::spiffe::SpiffeId;
use super::trust::TrustAnchors;

/// Lifetimes and retry timing for leaves.
#[derive(Debug, Clone)]
pub struct RenewalPolicy {
    /// Lifetime asked for each leaf (24 hours by default); the CA may shorten it to its
    /// own expiry.
    pub ttl: Duration,
    /// Renew once this fraction of the lifetime has passed.
    pub renew_at_fraction: f64,
    /// Wait before the first retry after a failed renewal (1 s by default); doubled after
    /// each further failure.
    pub retry_initial: Duration,
    /// Longest wait between renewal retries (60 s by default).
    pub retry_max: Duration,
}

impl Default for RenewalPolicy {
    fn default() -> Self {
        RenewalPolicy {
            ttl: Duration::from_secs(24 * 3600),
            renew_at_fraction: 0.5,
            retry_initial: Duration::from_secs(1),
            retry_max: Duration::from_secs(60),
        }
    }
}

/// The current leaf of one identity, ready for rustls.
pub struct LeafCert {
    /// The identity the leaf carries.
    pub id: SpiffeId,
    /// Leaf first, then the intermediates a verifier needs (no roots).
    pub chain: Vec<CertificateDer<'static>>,
    /// When it was signed; renewal is due at `renew_at_fraction` of the time from here to
    /// `not_after`.
    pub issued_at: SystemTime,
    /// Start of validity (backdated a little against clock skew).
    pub not_before: SystemTime,
    /// End of validity.
    pub not_after: SystemTime,
    /// The chain with its signing key, as the TLS configs present it.
    pub certified_key: Arc<CertifiedKey>,
}

/// One identity's slot: the current leaf, swapped atomically on renewal.
pub struct IdentityCert {
    id: SpiffeId,
    current: ArcSwap<LeafCert>,
}

impl IdentityCert {
    /// The identity this slot holds leaves for.
    pub fn id(&self) -> &SpiffeId {
        &self.id
    }

    /// The leaf in force right now.
    pub fn current(&self) -> Arc<LeafCert> {
        self.current.load_full()
    }
}

/// Summary of one identity's certificate, for the config dump and metrics.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CertStatus {
    /// The SPIFFE ID, as text.
    pub identity: String,
    /// Start of the current leaf's validity, in seconds since the Unix epoch.
    pub not_before_unix: u64,
    /// End of the current leaf's validity, in seconds since the Unix epoch.
    pub not_after_unix: u64,
    /// Successful renewals since the first leaf (which is not counted).
    pub renewals: u64,
    /// Failed renewal attempts; every retry counts.
    pub failed_renewals: u64,
}

#[derive(Default)]
struct Counters {
    renewals: u64,
    failed_renewals: u64,
}

/// One identity in the manager.
#[derive(Default)]
struct Entry {
    /// The slot, once its first leaf is issued; concurrent first callers share one issuance.
    slot: Arc<OnceCell<Arc<IdentityCert>>>,
    counters: Counters,
    /// No served workload uses this identity (set by [`CertManager::retain`]); it is dropped
    /// as soon as nobody holds its leaf.
    retiring: bool,
}

type Entries = HashMap<SpiffeId, Entry>;

/// Issues and renews leaves through an [`Issuer`].
pub struct CertManager {
    issuer: Arc<dyn Issuer>,
    policy: RenewalPolicy,
    /// The trust anchors, swapped whole when the trust bundle changes.
    anchors: TrustAnchors,
    entries: Mutex<Entries>,
    /// Identities whose first leaf [`CertManager::prefetch`] is fetching now.
    prefetching: Mutex<std::collections::HashSet<SpiffeId>>,
}

impl CertManager {
    /// Issues from the local CA directory: loads it once now (failing early if it is
    /// unusable) and keeps its roots; every issuance re-reads it off the async executor.
    pub fn new(ca_dir: PathBuf, policy: RenewalPolicy) -> Result<Arc<CertManager>, CaError> {
        let ca = MeshCa::load(&ca_dir)?;
        Ok(CertManager::with_issuer(
            Arc::new(LocalCaIssuer::new(ca_dir)),
            TrustAnchors::new(ca.roots().to_vec()),
            policy,
        ))
    }

    /// Issues through `issuer`; peers must chain to `anchors` (which may change later).
    pub fn with_issuer(
        issuer: Arc<dyn Issuer>,
        anchors: TrustAnchors,
        policy: RenewalPolicy,
    ) -> Arc<CertManager> {
        Arc::new(CertManager {
            issuer,
            policy,
            anchors,
            entries: Mutex::new(HashMap::new()),
            prefetching: Mutex::new(std::collections::HashSet::new()),
        })
    }

    /// The trust anchors peers must chain to, as of now. TLS configs built from them
    /// compare this `Arc` with [`CertManager::roots`] later to see whether they are stale.
    pub fn roots(&self) -> Arc<Vec<CertificateDer<'static>>> {
        self.anchors.current()
    }

    /// The shared anchors (a trust-bundle watcher replaces them; handshakes from then on
    /// verify against the new set, and leaves already issued keep serving).
    pub fn anchors(&self) -> &TrustAnchors {
        &self.anchors
    }

    /// The identity's slot, issuing its first leaf (and starting its renewal task) if
    /// needed. Must be called within a tokio runtime.
    pub async fn get_or_issue(
        self: &Arc<Self>,
        id: &SpiffeId,
    ) -> Result<Arc<IdentityCert>, IdentityError> {
        let cell = {
            let mut entries = self.lock_entries();
            let entry = entries.entry(id.clone()).or_default();
            entry.retiring = false;
            entry.slot.clone()
        };
        let created = AtomicBool::new(false);
        let slot = cell
            .get_or_try_init(|| async {
                let leaf = self.issue(id).await?;
                created.store(true, Ordering::Relaxed);
                Ok::<_, IdentityError>(Arc::new(IdentityCert {
                    id: id.clone(),
                    current: ArcSwap::from_pointee(leaf),
                }))
            })
            .await?
            .clone();
        if created.load(Ordering::Relaxed) {
            tokio::spawn(renew_forever(Arc::downgrade(self), Arc::downgrade(&slot)));
        }
        Ok(slot)
    }

    /// Starts issuing `id`'s first leaf in the background, unless it has one or a prefetch
    /// is already under way, so a workload's first connection does not wait for the issuer
    /// (a CSR round trip in a cluster). A failure is logged; the first connection then asks
    /// again. Must be called within a tokio runtime.
    pub fn prefetch(self: &Arc<Self>, id: &SpiffeId) {
        if self
            .lock_entries()
            .get(id)
            .is_some_and(|entry| entry.slot.initialized())
        {
            return;
        }
        if !self
            .prefetching
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id.clone())
        {
            return;
        }
        let (manager, id) = (self.clone(), id.clone());
        tokio::spawn(async move {
            if let Err(error) = manager.get_or_issue(&id).await {
                tracing::warn!(identity = %id, %error, "fetching a certificate ahead of the first connection failed");
            }
            manager
                .prefetching
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&id);
        });
    }

    /// Keeps only the identities `in_use` says a served workload has (plus those whose
    /// leaf someone still holds, until they let go); the others stop being renewed and
    /// leave [`CertManager::status`]. Returns the identities retired now.
    pub fn retain(&self, in_use: impl Fn(&SpiffeId) -> bool) -> Vec<SpiffeId> {
        let mut retired = Vec::new();
        self.lock_entries().retain(|id, entry| {
            entry.retiring = !in_use(id);
            let held = entry
                .slot
                .get()
                .is_some_and(|slot| Arc::strong_count(slot) > 1);
            let keep = !entry.retiring || held;
            if !keep {
                retired.push(id.clone());
            }
            keep
        });
        for id in &retired {
            tracing::info!(identity = %id, "no served workload uses this identity; its certificate is retired");
        }
        retired
    }

    /// Every identity held, with its certificate's validity.
    pub fn status(&self) -> Vec<CertStatus> {
        let mut list: Vec<CertStatus> = self
            .lock_entries()
            .values()
            .filter_map(|entry| {
                let slot = entry.slot.get()?;
                let leaf = slot.current();
                Some(CertStatus {
                    identity: slot.id.to_string(),
                    not_before_unix: unix_seconds(leaf.not_before),
                    not_after_unix: unix_seconds(leaf.not_after),
                    renewals: entry.counters.renewals,
                    failed_renewals: entry.counters.failed_renewals,
                })
            })
            .collect();
        list.sort_by(|a, b| a.identity.cmp(&b.identity));
        list
    }

    async fn issue(&self, id: &SpiffeId) -> Result<LeafCert, IdentityError> {
        let request = IssueRequest {
            id: id.clone(),
            ttl: self.policy.ttl,
        };
        let issued = self.issuer.issue(request).await?;
        if &issued.id != id {
            return Err(IdentityError::WrongIdentity {
                requested: id.to_string(),
                returned: issued.id.to_string(),
            });
        }
        Ok(leaf_from_issued(issued)?)
    }

    fn lock_entries(&self) -> std::sync::MutexGuard<'_, Entries> {
        // A poisoned lock only means another thread panicked mid-update of plain counters;
        // the map itself is still consistent, so keep serving.
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn record(&self, id: &SpiffeId, ok: bool) {
        if let Some(entry) = self.lock_entries().get_mut(id) {
            if ok {
                entry.counters.renewals += 1;
            } else {
                entry.counters.failed_renewals += 1;
            }
        }
    }

    /// Whether `slot` should still be renewed: it is the identity's current slot, and the
    /// identity is in use or its leaf is held by someone besides the manager and the
    /// caller. A slot that is neither is retired here.
    fn keep_renewing(&self, slot: &Arc<IdentityCert>) -> bool {
        let mut entries = self.lock_entries();
        let Some(entry) = entries.get(&slot.id) else {
            return false;
        };
        if !entry.slot.get().is_some_and(|held| Arc::ptr_eq(held, slot)) {
            return false;
        }
        // Held by the map and by the renewal task's upgrade: nobody else.
        if entry.retiring && Arc::strong_count(slot) <= 2 {
            entries.remove(&slot.id);
            tracing::info!(identity = %slot.id, "no served workload uses this identity any more; its certificate is retired");
            return false;
        }
        true
    }
}
/// Turns a signed leaf into what rustls needs to present it.
pub fn leaf_from_issued(issued: IssuedLeaf) -> Result<LeafCert, CaError> {
    let key = PrivateKeyDer::Pkcs8(issued.key.clone_key());
    let signing_key = rustls::crypto::aws_lc_rs::sign::any_supported_type(&key).map_err(|e| {
        CaError::Signing {
            id: issued.id.to_string(),
            reason: format!("rustls cannot use the leaf key: {e}"),
        }
    })?;
    Ok(LeafCert {
        certified_key: Arc::new(CertifiedKey::new(issued.chain.clone(), signing_key)),
        id: issued.id,
        chain: issued.chain,
        issued_at: issued.issued_at,
        not_before: issued.not_before,
        not_after: issued.not_after,
    })
}

async fn renew_forever(manager: Weak<CertManager>, slot: Weak<IdentityCert>) {
    loop {
        let (policy, leaf) = {
            let (Some(m), Some(slot)) = (manager.upgrade(), slot.upgrade()) else {
                return;
            };
            if !m.keep_renewing(&slot) {
                return;
            }
            (m.policy.clone(), slot.current())
        };
        let lifetime = leaf
            .not_after
            .duration_since(leaf.issued_at)
            .unwrap_or_default();
        let renew_at = leaf.issued_at + lifetime.mul_f64(policy.renew_at_fraction);
        let wait = renew_at
            .duration_since(SystemTime::now())
            .unwrap_or_default();
        drop(leaf);
        tokio::time::sleep(wait).await;

        let mut backoff = policy.retry_initial;
        loop {
            let (Some(m), Some(slot)) = (manager.upgrade(), slot.upgrade()) else {
                return;
            };
            if !m.keep_renewing(&slot) {
                return;
            }
            match m.issue(&slot.id).await {
                Ok(fresh) => {
                    tracing::info!(identity = %slot.id, "renewed certificate");
                    slot.current.store(Arc::new(fresh));
                    m.record(&slot.id, true);
                    break;
                }
                Err(error) => {
                    m.record(&slot.id, false);
                    tracing::warn!(identity = %slot.id, %error, retry_in = ?backoff,
                        "certificate renewal failed; still serving the previous certificate");
                    drop((m, slot));
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(policy.retry_max);
                }
            }
        }
    }
}

fn unix_seconds(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use super::*;

    /// The local CA, counting the issuances asked of it per identity.
    struct CountingIssuer {
        local: LocalCaIssuer,
        asked: Mutex<HashMap<SpiffeId, Arc<AtomicUsize>>>,
    }

    impl CountingIssuer {
        fn count(&self, id: &SpiffeId) -> usize {
            self.asked
                .lock()
                .unwrap()
                .get(id)
                .map_or(0, |n| n.load(Ordering::SeqCst))
        }
    }

    impl Issuer for CountingIssuer {
        fn issue(&self, request: IssueRequest) -> super::super::issuer::IssueFuture<'_> {
            // Counted when asked, before any await: a paused clock cannot skip it.
            self.asked
                .lock()
                .unwrap()
                .entry(request.id.clone())
                .or_default()
                .fetch_add(1, Ordering::SeqCst);
            self.local.issue(request)
        }
    }

    fn id(sa: &str) -> SpiffeId {
        SpiffeId::new("cluster.local", "demo", sa).unwrap()
    }

    fn manager(ttl: Duration) -> (tempfile::TempDir, Arc<CountingIssuer>, Arc<CertManager>) {
        let dir = tempfile::tempdir().unwrap();
        let ca = MeshCa::init(dir.path(), "cluster.local", false).unwrap();
        let issuer = Arc::new(CountingIssuer {
            local: LocalCaIssuer::new(dir.path().to_owned()),
            asked: Mutex::new(HashMap::new()),
        });
        let policy = RenewalPolicy {
            ttl,
            ..RenewalPolicy::default()
        };
        let certs = CertManager::with_issuer(
            issuer.clone(),
            TrustAnchors::new(ca.roots().to_vec()),
            policy,
        );
        (dir, issuer, certs)
    }

    fn listed(certs: &CertManager) -> Vec<String> {
        certs.status().into_iter().map(|s| s.identity).collect()
    }

    #[tokio::test]
    async fn concurrent_first_requests_share_one_issuance() {
        let (_dir, issuer, certs) = manager(Duration::from_secs(3600));
        let a_id = id("a");
        let (a, b) = tokio::join!(certs.get_or_issue(&a_id), certs.get_or_issue(&a_id));
        assert!(Arc::ptr_eq(&a.unwrap(), &b.unwrap()));
        assert_eq!(issuer.count(&id("a")), 1);
    }

    #[tokio::test]
    async fn prefetch_issues_once_in_the_background() {
        let (_dir, issuer, certs) = manager(Duration::from_secs(3600));
        certs.prefetch(&id("a"));
        certs.prefetch(&id("a"));
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while listed(&certs).is_empty() {
            assert!(tokio::time::Instant::now() < deadline, "never prefetched");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(listed(&certs), vec![id("a").to_string()]);
        certs.prefetch(&id("a"));
        certs.get_or_issue(&id("a")).await.unwrap();
        assert_eq!(issuer.count(&id("a")), 1);
    }

    #[tokio::test]
    async fn retain_drops_identities_no_served_workload_uses() {
        let (_dir, _issuer, certs) = manager(Duration::from_secs(3600));
        certs.get_or_issue(&id("a")).await.unwrap();
        certs.get_or_issue(&id("b")).await.unwrap();
        let retired = certs.retain(|candidate| candidate == &id("a"));
        assert_eq!(retired, vec![id("b")]);
        assert_eq!(listed(&certs), vec![id("a").to_string()]);

        // A leaf someone still presents (a TLS config holds it) is kept until released.
        let held = certs.get_or_issue(&id("c")).await.unwrap();
        assert!(certs.retain(|candidate| candidate == &id("a")).is_empty());
        assert!(listed(&certs).contains(&id("c").to_string()));
        drop(held);
        assert_eq!(
            certs.retain(|candidate| candidate == &id("a")),
            vec![id("c")]
        );

        // Asked for again, a retired identity gets a fresh leaf.
        certs.get_or_issue(&id("b")).await.unwrap();
        assert!(listed(&certs).contains(&id("b").to_string()));
    }

    /// Both identities share one renewal schedule (2 s leaves, renewed every second): once
    /// the one in use has been renewed twice, the retired one's renewal time has passed
    /// too, and it was never asked for again.
    #[tokio::test]
    async fn retired_identities_are_not_renewed() {
        let (_dir, issuer, certs) = manager(Duration::from_secs(2));
        let (kept_id, dropped_id) = (id("kept"), id("dropped"));
        let (kept, dropped) = tokio::join!(
            certs.get_or_issue(&kept_id),
            certs.get_or_issue(&dropped_id)
        );
        let (_kept, dropped) = (kept.unwrap(), dropped.unwrap());
        // Still held when retired: dropped at its renewal time instead of renewed.
        certs.retain(|candidate| candidate == &kept_id);
        drop(dropped);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while issuer.count(&kept_id) < 3 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the identity in use was not renewed"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(
            issuer.count(&dropped_id),
            1,
            "a retired identity was renewed"
        );
        assert_eq!(listed(&certs), vec![kept_id.to_string()]);
    }
}
