//! Cost of an L4 authorization decision (`MeshSnapshot::authorize`) with a large policy set,
//! and of building the snapshot from YAML.
//!
//! The mesh: 100 namespaces of 10 pods each, 100 AuthorizationPolicies of 10 rules per
//! namespace (10,000) plus 5 mesh-wide ones in the root namespace. Rules mix exact, prefix
//! and suffix principals, namespaces, v4/v6 ipBlocks, ports, notPorts and `when` conditions.
//! The target pod (`ns-0/target`) has 105 policies in force: all 100 of its namespace select
//! it (20 DENY, 80 ALLOW) and the 5 mesh-wide ones (4 DENY, 1 ALLOW).
//!
//! Cases (each measures one `authorize` call):
//! - `baseline_no_policies`: the same workload in a snapshot without policies (the floor);
//! - `allowed_last_rule`: allowed by rule 9 of the last ALLOW policy, so every DENY rule and
//!   every other ALLOW rule is evaluated first (the worst allow path);
//! - `allowed_not_indexed`: the same, for a workload the snapshot does not list (policies
//!   found from namespace + labels on the fly);
//! - `denied_by_deny`: denied by rule 0 of the last DENY policy;
//! - `denied_no_allow_match`: no rule matches anywhere, denied because ALLOW policies apply
//!   (full scan plus the reason string).
//!
//! Before measuring, the bench checks each case decides as named and that the allow paths
//! allocate nothing (a counting global allocator).
//!
//! The snapshot build time (YAML parse, then validation and indexing) is printed before the
//! criterion groups run. Run with `cargo bench --bench policy_decision -- --noplot`.

// criterion_group! defines a public function it gives no doc comment.
#![allow(missing_docs)]
// The counting allocator below implements GlobalAlloc, an unsafe trait.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::fmt::Write as _;
use std::hint::black_box;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};

use weft::model::{build, parse_documents, MeshSnapshot, Workload};
use weft::policy::ConnectionAttrs;

/// Counts allocations, to check the allow path makes none.
struct CountingAllocator;

static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards every call unchanged to the system allocator; only counts.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: same contract as our caller's.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as our caller's.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: same contract as our caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: CountingAllocator = CountingAllocator;

/// How many allocations `f` makes.
fn allocations_of<T>(f: impl FnOnce() -> T) -> usize {
    let before = ALLOCATIONS.load(Ordering::Relaxed);
    let out = f();
    let after = ALLOCATIONS.load(Ordering::Relaxed);
    drop(black_box(out));
    after - before
}

const NAMESPACES: usize = 100;
const PODS_PER_NAMESPACE: usize = 10;
const POLICIES_PER_NAMESPACE: usize = 100;
const RULES_PER_POLICY: usize = 10;
/// In ns-0, policies 0..20 are DENY, the rest ALLOW.
const DENY_POLICIES_IN_TARGET_NS: usize = 20;

/// One rule, varied by `(policy, rule)`; none of them matches the benchmark's connections
/// (the matching ones are added explicitly).
fn rule(out: &mut String, ns: &str, p: usize, r: usize) {
    let _ = match (p * RULES_PER_POLICY + r) % 5 {
        0 => writeln!(
            out,
            "  - from: [{{source: {{principals: [\"cluster.local/ns/{ns}/sa/sa-{p}-{r}\", \
             \"cluster.local/ns/{ns}/sa/pre-{r}*\"]}}}}]\n    \
             to: [{{operation: {{ports: [\"{}\"]}}}}]",
            9000 + r
        ),
        1 => writeln!(
            out,
            "  - from: [{{source: {{principals: [\"*/sa/svc-{p}-{r}\"], namespaces: [\"ns-{}\"]}}}}]\n    \
             to: [{{operation: {{ports: [\"{}\", \"{}\"]}}}}]",
            (p + r) % NAMESPACES,
            8000 + p % 50,
            8100 + r
        ),
        2 => writeln!(
            out,
            "  - from: [{{source: {{ipBlocks: [\"10.{}.{}.0/24\", \"fd00:{p:x}:{r:x}::/48\"]}}}}]\n    \
             to: [{{operation: {{notPorts: [\"22\"]}}}}]",
            200 + r % 50,
            p % 250
        ),
        3 => writeln!(
            out,
            "  - from: [{{source: {{namespaces: [\"team-{p}-*\"], \
             notPrincipals: [\"cluster.local/ns/{ns}/sa/blocked\"]}}}}]\n    \
             to: [{{operation: {{ports: [\"{}\"]}}}}]",
            7000 + r
        ),
        _ => writeln!(
            out,
            "  - when:\n    - {{key: source.ip, values: [\"172.16.{}.0/24\"]}}\n    \
             - {{key: destination.port, values: [\"{}\"]}}",
            p % 256,
            6000 + r
        ),
    };
}

fn policy(
    out: &mut String,
    ns: &str,
    name: &str,
    p: usize,
    deny: bool,
    selector: Option<&str>,
    extra_last_rule: Option<&str>,
) {
    let _ = writeln!(
        out,
        "---\napiVersion: weft.dev/v1alpha1\nkind: AuthorizationPolicy\n\
         metadata: {{name: {name}, namespace: {ns}}}\nspec:\n  action: {}",
        if deny { "DENY" } else { "ALLOW" }
    );
    if let Some(app) = selector {
        let _ = writeln!(out, "  selector: {{matchLabels: {{app: {app}}}}}");
    }
    out.push_str("  rules:\n");
    let generated = RULES_PER_POLICY - usize::from(extra_last_rule.is_some());
    for r in 0..generated {
        rule(out, ns, p, r);
    }
    if let Some(extra) = extra_last_rule {
        out.push_str(extra);
    }
}

/// The mesh; without the AuthorizationPolicies when `policies` is false.
fn mesh_yaml(policies: bool) -> String {
    let mut out = String::with_capacity(16 << 20);
    for n in 0..NAMESPACES {
        let ns = format!("ns-{n}");
        let _ = writeln!(
            out,
            "---\napiVersion: v1\nkind: Namespace\nmetadata: {{name: {ns}, labels: \
             {{weft.dev/dataplane-mode: ambient}}}}"
        );
        for k in 0..PODS_PER_NAMESPACE {
            let (name, app) = if n == 0 && k == 0 {
                ("target".to_owned(), "target".to_owned())
            } else {
                (format!("w-{k}"), format!("w-{k}"))
            };
            let _ = writeln!(
                out,
                "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: {ns}, \
                 labels: {{app: {app}}}}}\nspec: {{serviceAccountName: {name}}}\n\
                 status: {{podIP: 10.{n}.{k}.10}}"
            );
        }
        for p in 0..POLICIES_PER_NAMESPACE {
            if !policies {
                break;
            }
            if n == 0 {
                let deny = p < DENY_POLICIES_IN_TARGET_NS;
                let name = if deny {
                    format!("deny-{p:03}")
                } else {
                    format!("allow-{p:03}")
                };
                let last = p == POLICIES_PER_NAMESPACE - 1;
                let extra = last.then_some(
                    "  - from: [{source: {principals: [\"cluster.local/ns/ns-1/sa/client\"]}}]\n    \
                     to: [{operation: {ports: [\"8080\"]}}]\n",
                );
                policy(&mut out, &ns, &name, p, deny, Some("target"), extra);
            } else {
                let selector = format!("w-{}", p % PODS_PER_NAMESPACE);
                let name = format!("pol-{p:03}");
                policy(&mut out, &ns, &name, p, p % 5 == 0, Some(&selector), None);
            }
        }
    }
    for p in 0..if policies { 5 } else { 0 } {
        let name = format!("mesh-{p}");
        policy(&mut out, "weft-system", &name, 1000 + p, p != 4, None, None);
    }
    out
}

fn target(snapshot: &MeshSnapshot) -> &Workload {
    snapshot
        .workloads()
        .find(|w| w.namespace == "ns-0" && w.name == "target")
        .expect("target workload")
}

fn attrs(principal: &str, port: u16) -> ConnectionAttrs<'_> {
    ConnectionAttrs {
        source_principal: Some(principal),
        source_namespace: None,
        source_ip: IpAddr::from([10, 1, 0, 5]),
        destination_ip: IpAddr::from([10, 0, 0, 10]),
        destination_port: port,
    }
}

/// Parses and builds `yaml` three times; prints the best time of each phase.
fn report_build_time(yaml: &str) -> MeshSnapshot {
    let mut best_parse = Duration::MAX;
    let mut best_build = Duration::MAX;
    let mut snapshot = None;
    for _ in 0..3 {
        let start = Instant::now();
        let objects = parse_documents(yaml).expect("valid YAML");
        let parsed = Instant::now();
        let built = build(&objects).expect("valid config");
        best_parse = best_parse.min(parsed - start);
        best_build = best_build.min(parsed.elapsed());
        snapshot = Some(built);
    }
    let snapshot = snapshot.expect("built at least once");
    println!(
        "snapshot build: {} policies, {} workloads, {:.1} MiB YAML: parse {:.0} ms + \
         validate/compile/index {:.0} ms = {:.0} ms (best of 3)",
        snapshot.authorization_policies().count(),
        snapshot.workloads().count(),
        yaml.len() as f64 / (1 << 20) as f64,
        best_parse.as_secs_f64() * 1e3,
        best_build.as_secs_f64() * 1e3,
        (best_parse + best_build).as_secs_f64() * 1e3,
    );
    snapshot
}

fn bench(c: &mut Criterion) {
    let yaml = mesh_yaml(true);
    let snapshot = report_build_time(&yaml);
    let target = target(&snapshot).clone();
    println!(
        "policies in force on ns-0/target: {}",
        snapshot.policies_for(&target).len()
    );
    let empty = weft::model::parse_and_build(&mesh_yaml(false)).expect("policy-free mesh");

    let allowed = attrs("cluster.local/ns/ns-1/sa/client", 8080);
    let deny_principal = format!(
        "cluster.local/ns/ns-0/sa/sa-{}-0",
        DENY_POLICIES_IN_TARGET_NS - 1
    );
    let denied_by_deny = attrs(&deny_principal, 9000);
    let no_match = attrs("cluster.local/ns/ns-1/sa/other", 8080);

    // Sanity: each case decides as its name says.
    assert!(empty.authorize(&target, &allowed).allowed);
    let v = snapshot.authorize(&target, &allowed);
    assert!(
        v.allowed && v.policy.as_deref() == Some("ns-0/allow-099"),
        "{v:?}"
    );
    let v = snapshot.authorize(&target, &denied_by_deny);
    assert!(
        !v.allowed && v.policy.as_deref() == Some("ns-0/deny-019"),
        "{v:?}"
    );
    let v = snapshot.authorize(&target, &no_match);
    assert!(!v.allowed && v.policy.is_none(), "{v:?}");
    let mut stranger = target.clone();
    stranger.uid = "not-in-the-snapshot".into();
    assert!(snapshot.authorize(&stranger, &allowed).allowed);

    for (case, workload, conn) in [
        ("allowed_last_rule", &target, &allowed),
        ("allowed_not_indexed", &stranger, &allowed),
    ] {
        let n = allocations_of(|| snapshot.authorize(workload, conn));
        assert_eq!(n, 0, "{case}: {n} allocations on the allow path");
    }
    println!(
        "allocations per call: allowed 0, denied_by_deny {}, denied_no_allow_match {}",
        allocations_of(|| snapshot.authorize(&target, &denied_by_deny)),
        allocations_of(|| snapshot.authorize(&target, &no_match)),
    );

    let mut group = c.benchmark_group("authorize");
    group.bench_function("baseline_no_policies", |b| {
        b.iter(|| empty.authorize(black_box(&target), black_box(&allowed)))
    });
    group.bench_function("allowed_last_rule", |b| {
        b.iter(|| snapshot.authorize(black_box(&target), black_box(&allowed)))
    });
    group.bench_function("allowed_not_indexed", |b| {
        b.iter(|| snapshot.authorize(black_box(&stranger), black_box(&allowed)))
    });
    group.bench_function("denied_by_deny", |b| {
        b.iter(|| snapshot.authorize(black_box(&target), black_box(&denied_by_deny)))
    });
    group.bench_function("denied_no_allow_match", |b| {
        b.iter(|| snapshot.authorize(black_box(&target), black_box(&no_match)))
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
