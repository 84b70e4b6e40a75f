//! [`PolicyIndex`]: the policies of one snapshot, indexed so a decision walks only the
//! policies that apply to the workload, and the decision itself ([`PolicyIndex::authorize`])
//! and the mTLS mode resolution ([`PolicyIndex::mtls_mode`]).

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;
use std::sync::Arc;

use super::{
    selector_matches, Action, AuthorizationPolicy, ConnectionAttrs, DryRunOutcome, MtlsMode, Peer,
    PeerAuthentication, PolicyTarget, Verdict, ROOT_NAMESPACE,
};

/// How many applicable ALLOW policies a "no ALLOW policy matched" reason names.
const LISTED_ALLOW_POLICIES: usize = 5;

/// The policies of a snapshot, with per-workload lists of the policies that apply. `W` is the
/// model's workload type (see [`PolicyTarget`]).
#[derive(Debug, Clone, PartialEq)]
pub struct PolicyIndex<W> {
    root_namespace: String,
    /// Sorted by (namespace, name).
    authz: Vec<Arc<AuthorizationPolicy>>,
    /// Namespace (not the root one) → indexes into `authz`.
    authz_by_namespace: HashMap<String, Vec<usize>>,
    /// Indexes of the root namespace's policies.
    root_authz: Vec<usize>,
    /// Workload uid → the policies in force on it, precomputed.
    by_workload: HashMap<String, Applicable<W>>,
    /// Sorted by (namespace, name).
    peer: Vec<Arc<PeerAuthentication>>,
    /// Namespace (root included) → indexes into `peer`.
    peer_by_namespace: HashMap<String, Vec<usize>>,
    /// Namespaces held STRICT whatever their PeerAuthentications say (the root namespace:
    /// the whole mesh), because one of their PeerAuthentications could not be read.
    held_strict: BTreeSet<String>,
}

/// The policies in force on one indexed workload, split by what the decision does with them.
#[derive(Debug, Clone, PartialEq)]
struct Applicable<W> {
    /// The workload as indexed; a caller's workload with the same uid but another namespace
    /// or labels is evaluated on the fly instead.
    workload: Arc<W>,
    deny: Box<[usize]>,
    allow: Box<[usize]>,
    dry_run: Box<[usize]>,
    mtls: MtlsMode,
}

impl<W: PolicyTarget> Default for PolicyIndex<W> {
    fn default() -> Self {
        Self::new(Vec::new(), Vec::new(), BTreeSet::new(), &[], ROOT_NAMESPACE)
    }
}

impl<W: PolicyTarget> PolicyIndex<W> {
    /// Indexes the policies for `workloads`. `root_namespace` holds the mesh-wide policies.
    /// The workloads of a namespace in `held_strict` (of every namespace, if the root one is
    /// in it) are STRICT whatever the PeerAuthentications say: fail closed when one of the
    /// namespace's PeerAuthentications was rejected.
    pub fn new(
        authorization_policies: Vec<AuthorizationPolicy>,
        peer_authentications: Vec<PeerAuthentication>,
        held_strict: BTreeSet<String>,
        workloads: &[Arc<W>],
        root_namespace: &str,
    ) -> Self {
        let mut authz: Vec<Arc<AuthorizationPolicy>> =
            authorization_policies.into_iter().map(Arc::new).collect();
        authz.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        let mut peer: Vec<Arc<PeerAuthentication>> =
            peer_authentications.into_iter().map(Arc::new).collect();
        peer.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));

        let mut index = Self {
            root_namespace: root_namespace.to_owned(),
            authz,
            authz_by_namespace: HashMap::new(),
            root_authz: Vec::new(),
            by_workload: HashMap::new(),
            peer,
            peer_by_namespace: HashMap::new(),
            held_strict,
        };
        for (i, p) in index.authz.iter().enumerate() {
            if p.namespace == root_namespace {
                index.root_authz.push(i);
            } else {
                index
                    .authz_by_namespace
                    .entry(p.namespace.clone())
                    .or_default()
                    .push(i);
            }
        }
        for (i, p) in index.peer.iter().enumerate() {
            index
                .peer_by_namespace
                .entry(p.namespace.clone())
                .or_default()
                .push(i);
        }
        let mut by_workload = HashMap::with_capacity(workloads.len());
        for w in workloads {
            let (mut deny, mut allow, mut dry_run) = (Vec::new(), Vec::new(), Vec::new());
            for i in index.candidates(w.namespace()) {
                let p = &index.authz[i];
                if !p.applies_to(w.namespace(), w.labels(), root_namespace) {
                    continue;
                }
                match (p.dry_run, p.action) {
                    (true, _) => dry_run.push(i),
                    (false, Action::Deny) => deny.push(i),
                    (false, Action::Allow) => allow.push(i),
                }
            }
            let mtls = index.resolve_mtls(w.namespace(), w.labels());
            by_workload.insert(
                w.uid().to_owned(),
                Applicable {
                    workload: Arc::clone(w),
                    deny: deny.into(),
                    allow: allow.into(),
                    dry_run: dry_run.into(),
                    mtls,
                },
            );
        }
        index.by_workload = by_workload;
        index
    }

    /// The namespace whose selector-less policies are mesh-wide.
    pub fn root_namespace(&self) -> &str {
        &self.root_namespace
    }

    /// All authorization policies, sorted by (namespace, name).
    pub fn authorization_policies(&self) -> impl Iterator<Item = &Arc<AuthorizationPolicy>> {
        self.authz.iter()
    }

    /// All peer authentications, sorted by (namespace, name).
    pub fn peer_authentications(&self) -> impl Iterator<Item = &Arc<PeerAuthentication>> {
        self.peer.iter()
    }

    /// The precomputed entry of `workload`, if it is the indexed one (same uid, namespace and
    /// labels).
    fn indexed(&self, workload: &W) -> Option<&Applicable<W>> {
        let entry = self.by_workload.get(workload.uid())?;
        let same = std::ptr::eq(Arc::as_ptr(&entry.workload), workload)
            || (entry.workload.namespace() == workload.namespace()
                && entry.workload.labels() == workload.labels());
        same.then_some(entry)
    }

    /// Indexes of the policies of `namespace` and of the root namespace (not yet filtered by
    /// selector).
    fn candidates<'a>(&'a self, namespace: &str) -> impl Iterator<Item = usize> + Clone + 'a {
        let own = if namespace == self.root_namespace {
            &[][..]
        } else {
            self.authz_by_namespace
                .get(namespace)
                .map_or(&[][..], Vec::as_slice)
        };
        own.iter().chain(&self.root_authz).copied()
    }

    /// The policies in force on `workload` (dry-run ones included), sorted by (namespace,
    /// name).
    pub fn policies_for(&self, workload: &W) -> Vec<&AuthorizationPolicy> {
        let mut indexes: Vec<usize> = match self.indexed(workload) {
            Some(e) => e
                .deny
                .iter()
                .chain(&*e.allow)
                .chain(&*e.dry_run)
                .copied()
                .collect(),
            None => self
                .candidates(workload.namespace())
                .filter(|i| self.applies(*i, workload))
                .collect(),
        };
        indexes.sort_unstable();
        indexes.into_iter().map(|i| &*self.authz[i]).collect()
    }

    fn applies(&self, i: usize, workload: &W) -> bool {
        self.authz[i].applies_to(
            workload.namespace(),
            workload.labels(),
            &self.root_namespace,
        )
    }

    /// Decides a connection to `workload`: a matching (enforced) DENY policy denies; else, if
    /// enforced ALLOW policies apply, one of them must match; else the connection is allowed.
    /// Dry-run policies are evaluated and reported in [`Verdict::dry_run`], never enforced.
    ///
    /// Walks only the policies in force on the workload (precomputed for workloads of the
    /// snapshot; computed from namespace and labels for others). Allocates nothing unless it
    /// denies or dry-run policies apply.
    pub fn authorize(&self, workload: &W, attrs: &ConnectionAttrs<'_>) -> Verdict {
        let peer = Peer::new(attrs);
        match self.indexed(workload) {
            Some(e) => {
                let at = |i: &usize| &*self.authz[*i];
                decide(
                    e.deny.iter().map(at),
                    e.allow.iter().map(at),
                    e.dry_run.iter().map(at),
                    &peer,
                )
            }
            None => {
                let applicable = self
                    .candidates(workload.namespace())
                    .filter(|i| self.applies(*i, workload))
                    .map(|i| &*self.authz[i]);
                decide(
                    applicable
                        .clone()
                        .filter(|p| !p.dry_run && p.action == Action::Deny),
                    applicable
                        .clone()
                        .filter(|p| !p.dry_run && p.action == Action::Allow),
                    applicable.filter(|p| p.dry_run),
                    &peer,
                )
            }
        }
    }

    /// The mTLS mode of `workload`: its namespace's PeerAuthentication selecting it, else its
    /// namespace's selector-less one, else the root namespace's selector-less one, else
    /// PERMISSIVE. `UNSET` at a level defers to the next. When several policies sit at one
    /// level, the first by name wins. A namespace held STRICT (see [`PolicyIndex::new`]) is
    /// STRICT.
    pub fn mtls_mode(&self, workload: &W) -> MtlsMode {
        match self.indexed(workload) {
            Some(e) => e.mtls,
            None => self.resolve_mtls(workload.namespace(), workload.labels()),
        }
    }

    fn resolve_mtls(&self, namespace: &str, labels: &BTreeMap<String, String>) -> MtlsMode {
        if self.held_strict.contains(namespace) || self.held_strict.contains(&self.root_namespace) {
            return MtlsMode::Strict;
        }
        let in_ns = |ns: &str| {
            self.peer_by_namespace
                .get(ns)
                .map_or(&[][..], Vec::as_slice)
                .iter()
                .map(|i| &*self.peer[*i])
        };
        let selected = in_ns(namespace)
            .find(|p| p.selector.is_some() && selector_matches(p.selector.as_ref(), labels))
            .and_then(|p| p.mode);
        let namespace_wide = || {
            in_ns(namespace)
                .find(|p| p.selector.is_none())
                .and_then(|p| p.mode)
        };
        let mesh_wide = || {
            in_ns(&self.root_namespace)
                .find(|p| p.selector.is_none())
                .and_then(|p| p.mode)
        };
        selected
            .or_else(namespace_wide)
            .or_else(mesh_wide)
            .unwrap_or(MtlsMode::Permissive)
    }
}

/// The decision over the policies in force, split into enforced DENY, enforced ALLOW and
/// dry-run ones.
fn decide<'p>(
    deny: impl Iterator<Item = &'p AuthorizationPolicy>,
    allow: impl Iterator<Item = &'p AuthorizationPolicy> + Clone,
    dry_run: impl Iterator<Item = &'p AuthorizationPolicy>,
    peer: &Peer<'_>,
) -> Verdict {
    // Collecting an empty iterator does not allocate.
    let dry_run: Vec<DryRunOutcome> = dry_run
        .map(|p| {
            let matched = p.matching_rule(peer).is_some();
            DryRunOutcome {
                policy: Arc::clone(&p.key),
                would_allow: match p.action {
                    Action::Deny => !matched,
                    Action::Allow => matched,
                },
            }
        })
        .collect();

    for p in deny {
        if let Some(rule) = p.matching_rule(peer) {
            return Verdict {
                allowed: false,
                policy: Some(Arc::clone(&p.key)),
                reason: Cow::Owned(format!(
                    "denied by DENY policy {} (rule {rule} matched)",
                    p.key
                )),
                dry_run,
            };
        }
    }

    let mut any_allow = false;
    for p in allow.clone() {
        any_allow = true;
        if p.matching_rule(peer).is_some() {
            return Verdict {
                allowed: true,
                policy: Some(Arc::clone(&p.key)),
                reason: Cow::Borrowed("allowed by an ALLOW policy"),
                dry_run,
            };
        }
    }
    if !any_allow {
        return Verdict {
            allowed: true,
            policy: None,
            reason: Cow::Borrowed("no DENY policy matched and no ALLOW policy applies"),
            dry_run,
        };
    }

    let mut reason = String::from("no ALLOW policy matched; ALLOW policies in force: ");
    let mut count = 0;
    for p in allow {
        if count < LISTED_ALLOW_POLICIES {
            if count > 0 {
                reason.push_str(", ");
            }
            reason.push_str(&p.key);
        }
        count += 1;
    }
    if count > LISTED_ALLOW_POLICIES {
        // Writing to a String cannot fail.
        let _ = write!(reason, " and {} more", count - LISTED_ALLOW_POLICIES);
    }
    Verdict {
        allowed: false,
        policy: None,
        reason: Cow::Owned(reason),
        dry_run,
    }
}
