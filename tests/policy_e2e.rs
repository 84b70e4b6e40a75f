//! L4 authorization and peer authentication end to end, across two nodes: the
//! order/payment/inventory scenario, STRICT vs PERMISSIVE for a client outside the mesh,
//! a principal DENY overriding a namespace ALLOW, dry-run, cutting a long-lived connection
//! within a second of a policy change while others stay up, and malformed policies
//! rejected with the policies in force unchanged.

mod common;

use std::time::Duration;

use common::cluster::{stream_outcome, unix_now, Cluster};
use common::testbed::*;

fn ready() -> bool {
    e2e_ready(&["ip", "nft", "nsenter", "curl", "python3"])
}

/// The ALLOW policy of the scenario: order may call payment on 8080 (and 7070 for the
/// long-lived test); `plain_cidr` (the outsider) may call 8080 too.
fn payment_allow(plain_cidr: &str, extra_principal: &str) -> String {
    format!(
        r#"apiVersion: weft.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {{name: payment-callers, namespace: shop}}
spec:
  selector: {{matchLabels: {{app: payment}}}}
  action: ALLOW
  rules:
  - from: [{{source: {{principals: ["cluster.local/ns/shop/sa/order"{extra_principal}]}}}}]
    to: [{{operation: {{ports: ["8080", "7070"]}}}}]
  - from: [{{source: {{ipBlocks: ["{plain_cidr}"]}}}}]
    to: [{{operation: {{ports: ["8080"]}}}}]
"#
    )
}

fn peer_auth(mode: &str) -> String {
    format!(
        "apiVersion: weft.dev/v1alpha1\nkind: PeerAuthentication\nmetadata: {{name: default, namespace: shop}}\nspec:\n  mtls: {{mode: {mode}}}\n"
    )
}

#[test]
fn l4_policies_across_nodes() {
    if !ready() {
        return;
    }
    let mut c = Cluster::running(2, true);
    let order = c.add_pod(0, "shop", "order", "order", &[]).unwrap();
    let inventory = c.add_pod(0, "shop", "inventory", "inventory", &[]).unwrap();
    let payment = c
        .add_pod(1, "shop", "payment", "payment", &[("app", "payment")])
        .unwrap();
    let outsider = c.add_pod(0, "legacy", "outsider", "default", &[]).unwrap();
    c.start_app(payment, 8080);
    // A second app port on payment: the same HTTP app on 9090.
    c.start_app_named(payment, 9090, "payment-9090");
    c.start_echo(payment, 7070);
    let pay_ip = c.pods[payment].ip.clone();
    let outsider_cidr = format!("{}/32", c.pods[outsider].ip);
    let url = |port: u16| format!("http://{pay_ip}:{port}/");
    let curl = |c: &Cluster, from: usize, port: u16| Cluster::curl(&c.pods[from].ns, &url(port));

    // No policy yet: everything reaches payment.
    assert!(curl(&c, inventory, 8080).is_ok());
    assert!(
        curl(&c, order, 9090).is_ok(),
        "9090 app must be up before policies"
    );

    // The scenario under PERMISSIVE.
    c.extra_yaml = format!(
        "{}---\n{}",
        payment_allow(&outsider_cidr, ""),
        peer_auth("PERMISSIVE")
    );
    c.write_config();
    c.settle();
    assert_eq!(
        curl(&c, order, 8080).expect("order -> payment:8080"),
        format!("payment sees {}", c.pods[order].ip)
    );
    assert!(
        curl(&c, order, 9090).is_err(),
        "order -> payment:9090 must be denied"
    );
    assert!(
        curl(&c, inventory, 8080).is_err(),
        "inventory -> payment must be denied"
    );
    assert_eq!(
        curl(&c, outsider, 8080).expect("plaintext outsider allowed under PERMISSIVE"),
        format!("payment sees {}", c.pods[outsider].ip)
    );
    let log = c.daemon_log(1);
    assert!(
        log.contains("shop/payment-callers") || log.contains("no ALLOW policy matched"),
        "denials must be logged:\n{log}"
    );
    assert!(
        log.contains("status=401"),
        "HBONE denials answer 401:\n{log}"
    );

    // STRICT: the outsider's plaintext is refused; mTLS callers unaffected.
    c.extra_yaml = format!(
        "{}---\n{}",
        payment_allow(&outsider_cidr, ""),
        peer_auth("STRICT")
    );
    c.write_config();
    c.settle();
    assert!(
        curl(&c, outsider, 8080).is_err(),
        "plaintext must be refused under STRICT"
    );
    assert!(
        curl(&c, order, 8080).is_ok(),
        "order still allowed under STRICT"
    );
    assert!(
        c.daemon_log(1).contains("STRICT"),
        "STRICT refusal must be logged"
    );

    // A malformed policy is rejected naming the object and field; policies in force stay.
    let good = c.extra_yaml.clone();
    c.extra_yaml = good.replace("action: ALLOW", "action: PERMIT");
    let seen = c.daemon_log_mark(1);
    c.write_config();
    c.settle();
    let log = c.daemon_log_since(1, seen);
    assert!(
        log.contains("payment-callers") && log.contains("spec.action") && log.contains("PERMIT"),
        "unclear rejection:\n{log}"
    );
    assert!(
        curl(&c, order, 9090).is_err(),
        "old policy must stay in force"
    );
    assert!(curl(&c, order, 8080).is_ok());
    for (bad, field) in [
        (good.replace(&outsider_cidr, "10.0.0.0/33"), "ipBlocks"),
        (good.replace("\"7070\"", "\"70000\""), "ports"),
    ] {
        c.extra_yaml = bad;
        // Only what the daemon logged about this edit counts.
        let seen = c.daemon_log_mark(1);
        c.write_config();
        c.settle();
        let log = c.daemon_log_since(1, seen);
        assert!(
            log.contains(field) && log.contains("payment-callers"),
            "rejection must name {field}:\n{log}"
        );
        assert!(
            curl(&c, order, 9090).is_err(),
            "old policy must stay in force"
        );
    }

    // A DENY for one principal overrides a namespace-wide ALLOW.
    c.extra_yaml = r#"apiVersion: weft.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {name: shop-internal, namespace: shop}
spec:
  action: ALLOW
  rules: [{from: [{source: {namespaces: ["shop"]}}]}]
---
apiVersion: weft.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {name: no-inventory, namespace: shop}
spec:
  selector: {matchLabels: {app: payment}}
  action: DENY
  rules: [{from: [{source: {principals: ["cluster.local/ns/shop/sa/inventory"]}}]}]
"#
    .to_owned();
    c.write_config();
    c.settle();
    assert!(
        curl(&c, order, 9090).is_ok(),
        "namespace ALLOW lets order in on any port"
    );
    assert!(
        curl(&c, inventory, 8080).is_err(),
        "DENY overrides the namespace ALLOW"
    );
    assert!(
        c.daemon_log(1).contains("shop/no-inventory"),
        "the deny names its policy"
    );

    // Dry-run: logged, not enforced.
    c.extra_yaml = r#"apiVersion: weft.dev/v1alpha1
kind: AuthorizationPolicy
metadata:
  name: would-deny-order
  namespace: shop
  annotations: {weft.dev/dry-run: "true"}
spec:
  action: DENY
  rules: [{from: [{source: {principals: ["cluster.local/ns/shop/sa/order"]}}]}]
"#
    .to_owned();
    c.write_config();
    c.settle();
    assert!(curl(&c, order, 8080).is_ok(), "dry-run must not enforce");
    let log = c.daemon_log(1);
    assert!(
        log.contains("dry-run") && log.contains("would-deny-order"),
        "dry-run decision must be logged:\n{log}"
    );

    // Long-lived connections: a policy change cuts the newly denied one within a second;
    // the other stays up.
    c.extra_yaml = payment_allow(&outsider_cidr, ", \"cluster.local/ns/shop/sa/inventory\"");
    c.write_config();
    c.settle();
    // Both connections carry data before the change (start_stream_client returns once a
    // ping came back), so a cut measured below is a cut, not a refusal from the start.
    let doomed = c.start_stream_client(order, &pay_ip, 7070, 8);
    let survivor = c.start_stream_client(inventory, &pay_ip, 7070, 8);
    // order is no longer allowed; inventory still is.
    c.extra_yaml = payment_allow(&outsider_cidr, "").replace(
        "cluster.local/ns/shop/sa/order",
        "cluster.local/ns/shop/sa/inventory",
    );
    let changed_at = unix_now();
    c.write_config();
    let (doomed_state, closed_at) = stream_outcome(&doomed, Duration::from_secs(10));
    assert_eq!(doomed_state, "closed", "order's connection must be cut");
    let delay = closed_at - changed_at;
    eprintln!("denied connection closed {delay:.3} s after the policy change");
    assert!(
        doomed.log_text().contains("echoed "),
        "the cut connection must have carried data before the change"
    );
    assert!(
        delay > 0.0,
        "the connection closed {:.3} s before the policy change: it was never cut by it",
        -delay
    );
    assert!(
        delay < 1.0,
        "cut took {delay:.3} s; it must be within a second"
    );
    let (survivor_state, _) = stream_outcome(&survivor, Duration::from_secs(15));
    assert_eq!(
        survivor_state, "alive",
        "unaffected connection must stay up"
    );
    assert!(c.daemon_log(1).contains("a policy change denies it"));
}
