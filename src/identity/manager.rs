//! Keeps one leaf certificate per identity the daemon serves: issued on first use, renewed at
//! a fraction of its lifetime (half by default), and, when renewal fails, retried with
//! exponential backoff while the still-valid old certificate keeps serving.
//!
//! The CA directory is re-read at every issuance, so an operator who rotates the signing CA
//! in place is picked up at the next renewal without a restart.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;

use super::ca::{CaError, IssuedLeaf, MeshCa};
use super::spiffe::SpiffeId;

/// Lifetimes and retry timing for leaves.
#[derive(Debug, Clone)]
pub struct RenewalPolicy {
    pub ttl: Duration,
    /// Renew once this fraction of the lifetime has passed.
    pub renew_at_fraction: f64,
    pub retry_initial: Duration,
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
    pub id: SpiffeId,
    pub chain: Vec<CertificateDer<'static>>,
    pub issued_at: SystemTime,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
    pub certified_key: Arc<CertifiedKey>,
}

/// One identity's slot: the current leaf, swapped atomically on renewal.
pub struct IdentityCert {
    id: SpiffeId,
    current: ArcSwap<LeafCert>,
}

impl IdentityCert {
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
    pub identity: String,
    pub not_before_unix: u64,
    pub not_after_unix: u64,
    pub renewals: u64,
    pub failed_renewals: u64,
}

#[derive(Default)]
struct Counters {
    renewals: u64,
    failed_renewals: u64,
}

/// Issues and renews leaves from the CA directory.
pub struct CertManager {
    ca_dir: PathBuf,
    policy: RenewalPolicy,
    roots: Vec<CertificateDer<'static>>,
    entries: Mutex<HashMap<SpiffeId, (Arc<IdentityCert>, Counters)>>,
}

impl CertManager {
    /// Loads the CA directory once (failing early if it is unusable) and keeps its roots.
    pub fn new(ca_dir: PathBuf, policy: RenewalPolicy) -> Result<Arc<CertManager>, CaError> {
        let ca = MeshCa::load(&ca_dir)?;
        Ok(Arc::new(CertManager {
            roots: ca.roots().to_vec(),
            ca_dir,
            policy,
            entries: Mutex::new(HashMap::new()),
        }))
    }

    /// The trust anchors peers must chain to.
    pub fn roots(&self) -> &[CertificateDer<'static>] {
        &self.roots
    }

    /// The identity's slot, issuing its first leaf (and starting its renewal task) if needed.
    /// Must be called within a tokio runtime.
    pub fn get_or_issue(self: &Arc<Self>, id: &SpiffeId) -> Result<Arc<IdentityCert>, CaError> {
        if let Some((slot, _)) = self.lock_entries().get(id) {
            return Ok(slot.clone());
        }
        let leaf = self.issue(id)?;
        let slot = Arc::new(IdentityCert {
            id: id.clone(),
            current: ArcSwap::from_pointee(leaf),
        });
        let mut entries = self.lock_entries();
        if let Some((existing, _)) = entries.get(id) {
            // Another caller won the race; use its slot.
            return Ok(existing.clone());
        }
        entries.insert(id.clone(), (slot.clone(), Counters::default()));
        drop(entries);
        tokio::spawn(renew_forever(Arc::downgrade(self), slot.clone()));
        Ok(slot)
    }

    /// Every identity held, with its certificate's validity.
    pub fn status(&self) -> Vec<CertStatus> {
        let mut list: Vec<CertStatus> = self
            .lock_entries()
            .values()
            .map(|(slot, counters)| {
                let leaf = slot.current();
                CertStatus {
                    identity: slot.id.to_string(),
                    not_before_unix: unix_seconds(leaf.not_before),
                    not_after_unix: unix_seconds(leaf.not_after),
                    renewals: counters.renewals,
                    failed_renewals: counters.failed_renewals,
                }
            })
            .collect();
        list.sort_by(|a, b| a.identity.cmp(&b.identity));
        list
    }

    fn issue(&self, id: &SpiffeId) -> Result<LeafCert, CaError> {
        let ca = MeshCa::load(&self.ca_dir)?;
        let issued = ca.issue(id, self.policy.ttl)?;
        leaf_from_issued(issued)
    }

    fn lock_entries(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<SpiffeId, (Arc<IdentityCert>, Counters)>> {
        // A poisoned lock only means another thread panicked mid-update of plain counters;
        // the map itself is still consistent, so keep serving.
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn record(&self, id: &SpiffeId, ok: bool) -> bool {
        match self.lock_entries().get_mut(id) {
            Some((_, counters)) => {
                if ok {
                    counters.renewals += 1;
                } else {
                    counters.failed_renewals += 1;
                }
                true
            }
            None => false,
        }
    }

    fn is_current(&self, slot: &Arc<IdentityCert>) -> bool {
        self.lock_entries()
            .get(&slot.id)
            .is_some_and(|(held, _)| Arc::ptr_eq(held, slot))
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

async fn renew_forever(manager: Weak<CertManager>, slot: Arc<IdentityCert>) {
    loop {
        let (policy, leaf) = match manager.upgrade() {
            Some(m) if m.is_current(&slot) => (m.policy.clone(), slot.current()),
            _ => return,
        };
        let lifetime = leaf
            .not_after
            .duration_since(leaf.issued_at)
            .unwrap_or_default();
        let renew_at = leaf.issued_at + lifetime.mul_f64(policy.renew_at_fraction);
        let wait = renew_at
            .duration_since(SystemTime::now())
            .unwrap_or_default();
        tokio::time::sleep(wait).await;

        let mut backoff = policy.retry_initial;
        loop {
            let Some(m) = manager.upgrade() else { return };
            if !m.is_current(&slot) {
                return;
            }
            match m.issue(&slot.id) {
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
                    drop(m);
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
