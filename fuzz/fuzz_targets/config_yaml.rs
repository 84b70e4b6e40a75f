#![no_main]
//! Feeds arbitrary text to the config translation, as `FileSource` does with the mesh file
//! (non-UTF-8 is rejected before translation, so only UTF-8 inputs go on):
//! `weft::model::parse_and_build` (= `parse_documents` + `build`). Asserts: errors display;
//! `parse_and_build` agrees with `parse_documents` + `build`; translation is deterministic
//! (two runs give equal snapshots); the snapshot serializes to JSON; its indexes agree with
//! its content (every pod IP, uid, node and cluster IP finds its object: the translation
//! promised they are unique); "objects may come in any order": building the reversed object
//! list succeeds exactly when the original does, with the same content; every accepted pod
//! has a valid SPIFFE ID (namespace and service account pass the identity checks); policy
//! evaluation does not panic for any workload. The lenient build (`build_lenient`) rejects
//! nothing exactly when `build` succeeds, then builds the same snapshot, and whatever it
//! builds keeps the same index promises.

use std::net::{IpAddr, Ipv4Addr};

use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use weft::model::{build, build_lenient, parse_and_build, parse_documents, MeshSnapshot};
use weft::policy::ConnectionAttrs;

/// The snapshot as JSON, with each service's endpoints sorted (their order follows the
/// order of EndpointSlices in the file, which is not part of the model's meaning).
fn canonical(snapshot: &MeshSnapshot) -> Value {
    let mut json = serde_json::to_value(snapshot).expect("a snapshot serializes to JSON");
    if let Some(services) = json.get_mut("services").and_then(Value::as_array_mut) {
        for service in services {
            if let Some(endpoints) = service.get_mut("endpoints").and_then(Value::as_array_mut) {
                endpoints.sort_by_key(|e| e.to_string());
            }
        }
    }
    json
}

fn check_indexes(snapshot: &MeshSnapshot) {
    for w in snapshot.workloads() {
        let by_uid = snapshot.workload_by_uid(&w.uid).expect("uid index");
        assert_eq!(by_uid.name, w.name, "uid {:?} maps to another pod", w.uid);
        assert_eq!(by_uid.namespace, w.namespace);
        if !w.host_network {
            for ip in &w.ips {
                let by_ip = snapshot.workload_by_ip(*ip).expect("ip index");
                assert_eq!(by_ip.uid, w.uid, "pod IP {ip} maps to another pod");
            }
        }
        if let Some(node) = &w.node {
            assert!(snapshot.workloads_on_node(node).any(|n| n.uid == w.uid));
        }
        let attrs = ConnectionAttrs {
            source_principal: Some("cluster.local/ns/default/sa/default"),
            source_namespace: None,
            source_ip: IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)),
            destination_ip: w.ips.first().copied().unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST)),
            destination_port: 8080,
        };
        let _ = snapshot.authorize(w, &attrs);
        let _ = snapshot.mtls_mode(w);
        let _ = snapshot.policies_for(w);
        // Names are checked as the API server does, so every accepted pod has an identity.
        if let Err(e) = w.spiffe_id("cluster.local") {
            panic!("accepted pod {}/{} has no valid SPIFFE ID: {e}", w.namespace, w.name);
        }
    }
    for s in snapshot.services() {
        let by_name = snapshot.service(&s.namespace, &s.name).expect("name index");
        assert_eq!(by_name.name, s.name);
        for vip in &s.vips {
            let by_vip = snapshot.service_by_vip(*vip).expect("vip index");
            assert_eq!(
                (&by_vip.namespace, &by_vip.name),
                (&s.namespace, &s.name),
                "cluster IP {vip} maps to another service"
            );
            assert!(
                snapshot.workload_by_ip(*vip).is_none(),
                "cluster IP {vip} is also a pod IP"
            );
        }
        let _ = s.hostname();
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let whole = parse_and_build(text);
    let objects = parse_documents(text);
    match (&whole, &objects) {
        (Err(e), _) => {
            let _ = e.to_string();
        }
        (Ok(_), Err(e)) => panic!("parse_and_build succeeded but parse_documents failed: {e}"),
        (Ok(_), Ok(_)) => {}
    }
    let Ok(objects) = objects else { return };
    let built = build(&objects);
    assert_eq!(
        built.is_ok(),
        whole.is_ok(),
        "build(parse_documents) and parse_and_build disagree: {:?} vs {:?}",
        built.as_ref().err().map(ToString::to_string),
        whole.as_ref().err().map(ToString::to_string)
    );
    let (lenient, rejected) = build_lenient(&objects);
    assert_eq!(
        rejected.is_empty(),
        built.is_ok(),
        "lenient and strict builds disagree: {rejected:?} vs {:?}",
        built.as_ref().err().map(ToString::to_string)
    );
    if let Ok(strict) = &built {
        assert!(*strict == lenient, "lenient build of a valid input differs");
    }
    check_indexes(&lenient);
    let reversed: Vec<_> = objects.iter().rev().cloned().collect();
    let built_reversed = build(&reversed);
    assert_eq!(
        built_reversed.is_ok(),
        built.is_ok(),
        "object order changes the outcome: in file order {:?}, reversed {:?}",
        built.as_ref().err().map(ToString::to_string),
        built_reversed.as_ref().err().map(ToString::to_string)
    );
    let (Ok(snapshot), Ok(whole), Ok(reversed)) = (built, whole, built_reversed) else {
        return;
    };
    assert!(snapshot == whole, "two translations of the same text differ");
    let json = canonical(&snapshot);
    assert_eq!(json, canonical(&reversed), "object order changes the snapshot");
    check_indexes(&snapshot);
    let _ = format!("{snapshot:?}");
});
