//! `gateway.networking.k8s.io/v1 HTTPRoute` → an [`HttpRoute`] of the model, kept for the
//! waypoint: its parents (checked: kind, names, port) and its rules, typed and checked by
//! [`crate::model::http_route_rules`] (a rule weft cannot honour rejects the route, naming
//! the field). A route may
//! name a Service that does not exist (yet): it attaches when the Service appears, as in
//! Gateway API.

use super::context::{BuildState, Ctx, KindObject};
use crate::model::error::ConfigError;
use crate::model::gateway_kinds;
use crate::model::http_route_rules::parse_rules;
use crate::model::{HttpRoute, RouteParent};
use crate::names;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

impl KindObject for gateway_kinds::HttpRoute {
    fn metadata(&self) -> &ObjectMeta {
        &self.metadata
    }

    fn translate(&self, ctx: &Ctx, state: &mut BuildState) -> Result<(), ConfigError> {
        let mut parents = Vec::new();
        for (i, parent) in self.spec.parent_refs.iter().enumerate() {
            let field = |f: &str| format!("spec.parentRefs[{i}].{f}");
            let group = parent
                .group
                .as_deref()
                .unwrap_or("gateway.networking.k8s.io");
            let kind = parent.kind.as_deref().unwrap_or("Gateway");
            match (group, kind) {
                ("", "Service") | ("gateway.networking.k8s.io", "Gateway") => {}
                _ => {
                    return Err(ctx.err(
                        field("kind"),
                        format!(
                            "{group:?}/{kind:?} is not a parent weft attaches routes to; use \
                             group \"\" and kind Service (a mesh route) or a Gateway"
                        ),
                    ))
                }
            }
            ctx.name(field("name"), &parent.name, names::check_dns_label)?;
            if let Some(namespace) = &parent.namespace {
                ctx.name(field("namespace"), namespace, names::check_dns_label)?;
            }
            let port = parent
                .port
                .map(|p| ctx.port(field("port"), p))
                .transpose()?;
            parents.push(RouteParent {
                kind: kind.to_owned(),
                namespace: parent
                    .namespace
                    .clone()
                    .unwrap_or_else(|| ctx.namespace.clone()),
                name: parent.name.clone(),
                section_name: parent.section_name.clone(),
                port,
            });
        }
        let rules = parse_rules(&self.spec.rules).map_err(|e| ctx.err(e.field, e.message))?;
        state.waypoint_objects.http_routes.push(HttpRoute {
            namespace: ctx.namespace.clone(),
            name: ctx.name.clone(),
            parents,
            hostnames: self.spec.hostnames.clone(),
            created_unix: self
                .metadata
                .creation_timestamp
                .as_ref()
                .map(|t| t.0.as_second()),
            rules,
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::model::translate::parse_and_build;

    #[test]
    fn a_route_weft_cannot_honour_rejects_the_config_naming_route_and_field() {
        let yaml = r#"
apiVersion: v1
kind: Namespace
metadata: {name: shop}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: bad, namespace: shop}
spec:
  parentRefs: [{group: "", kind: Service, name: echo, port: 80}]
  rules:
  - filters: [{type: ExtensionRef, extensionRef: {group: x, kind: y, name: z}}]
    backendRefs: [{name: echo-v1, port: 8080}]
"#;
        let error = parse_and_build(yaml).unwrap_err().to_string();
        assert!(
            error.contains("shop/bad") && error.contains("spec.rules[0].filters[0].type"),
            "{error}"
        );
    }
}
