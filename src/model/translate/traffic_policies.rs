//! `weft.dev/v1alpha1 DestinationPolicy` and `FaultInjection` → the model's
//! [`DestinationPolicy`] and [`FaultInjection`], kept for waypoints; checked by
//! [`crate::model::traffic_policies`], which names the field of a bad value. A policy may
//! target a Service that does not exist (yet): it applies when the Service appears.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::context::{BuildState, Ctx, KindObject};
use crate::model::error::ConfigError;
use crate::model::traffic_policies::{
    DestinationPolicy, DestinationPolicyObject, FaultInjection, FaultInjectionObject,
};

impl KindObject for DestinationPolicyObject {
    fn metadata(&self) -> &ObjectMeta {
        &self.metadata
    }

    fn translate(&self, ctx: &Ctx, state: &mut BuildState) -> Result<(), ConfigError> {
        let policy = DestinationPolicy::parse(&ctx.namespace, &ctx.name, self)
            .map_err(|e| ctx.err(e.field, e.message))?;
        state.waypoint_objects.destination_policies.push(policy);
        Ok(())
    }
}

impl KindObject for FaultInjectionObject {
    fn metadata(&self) -> &ObjectMeta {
        &self.metadata
    }

    fn translate(&self, ctx: &Ctx, state: &mut BuildState) -> Result<(), ConfigError> {
        let faults = FaultInjection::parse(&ctx.namespace, &ctx.name, self)
            .map_err(|e| ctx.err(e.field, e.message))?;
        state.waypoint_objects.fault_injections.push(faults);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::model::translate::parse_and_build;

    const SHOP: &str = "apiVersion: v1\nkind: Namespace\nmetadata: {name: shop}\n";

    #[test]
    fn traffic_kinds_reach_the_snapshot_and_a_bad_one_is_named() {
        let yaml = format!(
            r#"{SHOP}---
apiVersion: weft.dev/v1alpha1
kind: DestinationPolicy
metadata: {{name: pay, namespace: shop}}
spec:
  targetRefs: [{{kind: Service, name: pay}}]
  loadBalancer: {{simple: ROUND_ROBIN}}
---
apiVersion: weft.dev/v1alpha1
kind: FaultInjection
metadata: {{name: chaos, namespace: shop}}
spec:
  targetRefs: [{{kind: Service, name: pay}}]
  rules: [{{abort: {{httpStatus: 503, percentage: {{value: 10}}}}}}]
"#
        );
        let snapshot = parse_and_build(&yaml).unwrap();
        let policy = snapshot.destination_policy("shop", "pay").unwrap();
        assert_eq!(policy.name, "pay");
        assert!(snapshot.destination_policy("shop", "other").is_none());
        assert_eq!(snapshot.fault_injections_for("shop", "pay").count(), 1);
        let dump = serde_json::to_value(&snapshot).unwrap();
        assert_eq!(
            dump["destination_policies"][0]["load_balancing"],
            "RoundRobin"
        );

        let bad = format!(
            "{SHOP}---\napiVersion: weft.dev/v1alpha1\nkind: DestinationPolicy\nmetadata: {{name: bad, namespace: shop}}\nspec: {{targetRefs: [{{kind: Service, name: pay}}], outlierDetection: {{maxEjectionPercent: 200}}}}\n"
        );
        let error = parse_and_build(&bad).unwrap_err().to_string();
        assert!(
            error.contains("shop/bad")
                && error.contains("spec.outlierDetection.maxEjectionPercent"),
            "{error}"
        );
        let unknown = format!(
            "{SHOP}---\napiVersion: weft.dev/v1alpha1\nkind: FaultInjection\nmetadata: {{name: bad, namespace: shop}}\nspec: {{targetRefs: [{{kind: Service, name: pay}}], rules: [{{abort: {{httpStatus: 500}}, percent: 5}}]}}\n"
        );
        let error = parse_and_build(&unknown).unwrap_err().to_string();
        assert!(error.contains("percent"), "{error}");
    }
}
