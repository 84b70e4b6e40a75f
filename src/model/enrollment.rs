//! The enrollment rule, decided here and nowhere else: which pods weft captures.
//!
//! A pod is enrolled when its namespace carries `weft.dev/dataplane-mode: ambient`, the pod
//! itself does not opt out with `weft.dev/dataplane-mode: none`, and it is not a hostNetwork
//! pod (its traffic is the node's own, which weft never captures). The translation records
//! the outcome on each workload ([`super::Workload::enrolled`]); the node agent and the config
//! source ask the same functions.

use std::collections::BTreeMap;

/// Label that enrolls workloads: `ambient` on a Namespace enrolls its pods; `none` on a Pod
/// opts that pod out.
pub const DATAPLANE_MODE_LABEL: &str = "weft.dev/dataplane-mode";
/// The [`DATAPLANE_MODE_LABEL`] value that enrolls a namespace's pods.
pub const AMBIENT: &str = "ambient";
/// The [`DATAPLANE_MODE_LABEL`] value by which a pod opts out.
pub const OPT_OUT: &str = "none";

/// Whether a namespace with these labels enrolls its pods.
pub fn namespace_is_ambient(namespace_labels: &BTreeMap<String, String>) -> bool {
    namespace_labels
        .get(DATAPLANE_MODE_LABEL)
        .map(String::as_str)
        == Some(AMBIENT)
}

/// Whether a pod is enrolled: `namespace_labels` are those of its namespace (`None` when
/// the namespace is not known, which enrolls nothing).
pub fn pod_is_enrolled(
    namespace_labels: Option<&BTreeMap<String, String>>,
    pod_labels: &BTreeMap<String, String>,
    host_network: bool,
) -> bool {
    let opted_out = pod_labels.get(DATAPLANE_MODE_LABEL).map(String::as_str) == Some(OPT_OUT);
    !host_network && namespace_labels.is_some_and(namespace_is_ambient) && !opted_out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(mode: Option<&str>) -> BTreeMap<String, String> {
        let mut labels = BTreeMap::from([("app".to_owned(), "web".to_owned())]);
        if let Some(mode) = mode {
            labels.insert(DATAPLANE_MODE_LABEL.to_owned(), mode.to_owned());
        }
        labels
    }

    #[test]
    fn namespace_label_enrolls() {
        assert!(namespace_is_ambient(&labels(Some("ambient"))));
        for other in [None, Some("none"), Some("Ambient"), Some("")] {
            assert!(!namespace_is_ambient(&labels(other)), "{other:?}");
        }
        let ambient = labels(Some("ambient"));
        assert!(pod_is_enrolled(Some(&ambient), &labels(None), false));
        assert!(!pod_is_enrolled(Some(&labels(None)), &labels(None), false));
        assert!(!pod_is_enrolled(None, &labels(None), false));
    }

    #[test]
    fn pod_opt_out_label_releases_the_pod() {
        let ambient = labels(Some("ambient"));
        assert!(!pod_is_enrolled(
            Some(&ambient),
            &labels(Some("none")),
            false
        ));
        // Any other value does not opt out (and cannot enroll a pod on its own).
        assert!(pod_is_enrolled(
            Some(&ambient),
            &labels(Some("ambient")),
            false
        ));
        assert!(pod_is_enrolled(Some(&ambient), &labels(Some("x")), false));
        assert!(!pod_is_enrolled(
            Some(&labels(None)),
            &labels(Some("ambient")),
            false
        ));
    }

    #[test]
    fn host_network_pods_are_never_enrolled() {
        let ambient = labels(Some("ambient"));
        assert!(!pod_is_enrolled(Some(&ambient), &labels(None), true));
        assert!(!pod_is_enrolled(
            Some(&ambient),
            &labels(Some("ambient")),
            true
        ));
    }
}
