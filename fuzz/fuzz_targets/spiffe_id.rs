#![no_main]
//! Feeds arbitrary text to `SpiffeId::from_str` (how peer certificate SANs, policy
//! principals and config values become identities), and the same text split at its first
//! two `\n` to `SpiffeId::new(trust_domain, namespace, service_account)`. Asserts: a parsed
//! ID displays back to exactly the input, its principal is the input without `spiffe://`,
//! `new` on its parts gives the same ID, and it serializes to the JSON string of its display;
//! an ID built by `new` parses back from its display to the same ID; each accepted part is
//! 1-253 characters of `[A-Za-z0-9._-]`; errors display.

use libfuzzer_sys::fuzz_target;
use weft::identity::SpiffeId;

fn check_parts(id: &SpiffeId) {
    for part in [id.trust_domain(), id.namespace(), id.service_account()] {
        assert!((1..=253).contains(&part.len()), "part {part:?}");
        assert!(
            part.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_')),
            "part {part:?}"
        );
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match text.parse::<SpiffeId>() {
        Ok(id) => {
            check_parts(&id);
            assert_eq!(id.to_string(), text);
            assert_eq!(Some(id.principal().as_str()), text.strip_prefix("spiffe://"));
            let rebuilt = SpiffeId::new(id.trust_domain(), id.namespace(), id.service_account());
            assert_eq!(rebuilt.as_ref(), Ok(&id));
            let json = serde_json::to_string(&id).expect("serializes");
            assert_eq!(json, serde_json::to_string(text).unwrap());
        }
        Err(error) => {
            let _ = error.to_string();
        }
    }

    let mut parts = text.splitn(3, '\n');
    let (Some(td), Some(ns), Some(sa)) = (parts.next(), parts.next(), parts.next()) else {
        return;
    };
    match SpiffeId::new(td, ns, sa) {
        Ok(id) => {
            check_parts(&id);
            assert_eq!(
                (id.trust_domain(), id.namespace(), id.service_account()),
                (td, ns, sa)
            );
            let shown = id.to_string();
            assert_eq!(shown.parse::<SpiffeId>().as_ref(), Ok(&id), "{shown}");
        }
        Err(error) => {
            let _ = error.to_string();
        }
    }
});
