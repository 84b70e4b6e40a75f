//! `weft.dev/v1alpha1 PeerAuthentication` → a compiled [`PeerAuthentication`] of
//! [`crate::policy`]: the mTLS mode of the workloads it selects.

use std::collections::BTreeMap;

use super::context::{selector, BuildState, Ctx, KindObject};
use crate::model::error::{ConfigError, ObjectRef};
use crate::model::weft_kinds;
use crate::policy::{MtlsMode, PeerAuthentication};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

impl KindObject for weft_kinds::PeerAuthentication {
    fn metadata(&self) -> &ObjectMeta {
        &self.metadata
    }

    fn translate(&self, ctx: &Ctx, state: &mut BuildState) -> Result<(), ConfigError> {
        let default_spec = weft_kinds::PeerAuthenticationSpec::default();
        let spec = self.spec.as_ref().unwrap_or(&default_spec);
        if spec.port_level_mtls.is_some() {
            return Err(ctx.err(
                "spec.portLevelMtls",
                "is not supported: weft applies one mTLS mode to all ports of a workload; remove \
                 portLevelMtls and set spec.mtls.mode",
            ));
        }
        let mode = match spec.mtls.as_ref().and_then(|m| m.mode.as_deref()) {
            None | Some("UNSET") => None,
            Some("STRICT") => Some(MtlsMode::Strict),
            Some("PERMISSIVE") => Some(MtlsMode::Permissive),
            Some(other) => {
                let hint = if other == "DISABLE" {
                    " (DISABLE is not supported: the mesh always offers mTLS; use PERMISSIVE to \
                     also accept plaintext)"
                        .to_owned()
                } else if ["strict", "permissive", "unset"]
                    .iter()
                    .any(|m| other.eq_ignore_ascii_case(m))
                {
                    format!(
                        "; write it in upper case ({:?})",
                        other.to_ascii_uppercase()
                    )
                } else {
                    String::new()
                };
                return Err(ctx.err(
                    "spec.mtls.mode",
                    format!("{other:?} is not STRICT, PERMISSIVE or UNSET{hint}"),
                ));
            }
        };
        state.peer_authentications.push(PeerAuthentication {
            name: ctx.name.clone(),
            namespace: ctx.namespace.clone(),
            selector: selector(spec.selector.as_ref()),
            mode,
        });
        Ok(())
    }
}

/// Fail-closed stand-in for a rejected PeerAuthentication (lenient build): its namespace
/// (the whole mesh, in the root namespace) is held STRICT until it is fixed.
pub(super) fn hold_its_namespace_strict(
    object: &ObjectRef,
    error: &ConfigError,
    state: &mut BuildState,
) {
    let namespace = object.namespace.clone().unwrap_or_default();
    tracing::warn!(
        namespace = %namespace,
        "{object} was rejected; namespace {namespace} is held STRICT until it is fixed: {error}"
    );
    state.held_strict.insert(namespace);
}

/// Logs what cannot be enforced as written, once per load.
pub(super) fn log_warnings(peer_authentications: &[PeerAuthentication]) {
    // Two namespace-wide PeerAuthentications in one namespace: Istio takes the oldest; weft
    // has no creation times and takes the first by name.
    let mut namespace_wide: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for pa in peer_authentications
        .iter()
        .filter(|pa| pa.selector.is_none())
    {
        namespace_wide
            .entry(pa.namespace.as_str())
            .or_default()
            .push(pa.name.as_str());
    }
    for (namespace, mut names) in namespace_wide {
        if names.len() > 1 {
            names.sort_unstable();
            tracing::warn!(
                namespace,
                "namespace {namespace} has {} PeerAuthentications without a selector ({}); \
                 {} is in force, delete the others",
                names.len(),
                names.join(", "),
                names[0]
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{assert_error, error};

    fn pa(spec: &str) -> String {
        format!(
            "apiVersion: weft.dev/v1alpha1\nkind: PeerAuthentication\n\
             metadata: {{name: mtls, namespace: shop}}\nspec:\n{spec}\n"
        )
    }

    #[test]
    fn bad_mtls_mode() {
        assert_eq!(
            error(&pa("  mtls: {mode: STRICTER}")),
            "document 1 (PeerAuthentication shop/mtls): spec.mtls.mode: \"STRICTER\" is not \
             STRICT, PERMISSIVE or UNSET"
        );
        assert_error(
            &pa("  mtls: {mode: DISABLE}"),
            &["spec.mtls.mode", "DISABLE is not supported"],
        );
        assert_error(&pa("  mtls: {mode: strict}"), &["upper case (\"STRICT\")"]);
        assert_error(
            &pa("  mtls: {mode: STRICT}\n  portLevelMtls: {8080: {mode: DISABLE}}"),
            &[
                "PeerAuthentication shop/mtls",
                "spec.portLevelMtls",
                "is not supported",
            ],
        );
        assert_error(
            &pa("  mtls: {mode: STRICT, extra: 1}"),
            &["spec.mtls", "unknown field `extra`"],
        );
    }
}
