//! `weft.dev/v1alpha1 AuthorizationPolicy` → a compiled [`AuthorizationPolicy`] of
//! [`crate::policy`].
//!
//! Every value is validated and parsed here (patterns, CIDRs, ports, enums), so a mistake is a
//! [`ConfigError`] naming the object, the field path and the offending value, and the
//! decision path never parses anything. Fields that need L7 are recorded on the rule and
//! become warnings on the policy (see [`crate::policy::Rule::l7_fields`]).

use std::borrow::Cow;
use std::collections::BTreeMap;

use super::context::{non_empty, selector, BuildState, Ctx, KindObject};
use crate::model::error::{ConfigError, ObjectRef};
use crate::model::weft_kinds::{self, IntOrString};
use crate::policy::{
    parse_port, port_from_int, Action, AuthorizationPolicy, Condition, IpBlock, Operation,
    PolicyError, Rule, Source, StringMatch, DRY_RUN_ANNOTATION, L4_CONDITION_KEYS,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

impl KindObject for weft_kinds::AuthorizationPolicy {
    fn metadata(&self) -> &ObjectMeta {
        &self.metadata
    }

    fn translate(&self, ctx: &Ctx, state: &mut BuildState) -> Result<(), ConfigError> {
        let dry_run = dry_run(ctx, self.metadata.annotations.as_ref())?;
        let default_spec = weft_kinds::AuthorizationPolicySpec::default();
        let spec = self.spec.as_ref().unwrap_or(&default_spec);
        if spec.target_ref.is_some() || spec.target_refs.is_some() {
            let field = if spec.target_ref.is_some() {
                "spec.targetRef"
            } else {
                "spec.targetRefs"
            };
            return Err(ctx.err(
                field,
                "is not supported; select workloads with spec.selector.matchLabels \
                 (or omit the selector for the whole namespace)",
            ));
        }
        if spec.provider.is_some() {
            return Err(ctx.err(
                "spec.provider",
                "is not supported: it belongs to action CUSTOM (external authorization), which \
                 weft does not implement; use ALLOW or DENY rules",
            ));
        }
        let action = match spec.action.as_deref() {
            None | Some("ALLOW") => Action::Allow,
            Some("DENY") => Action::Deny,
            Some(other) => {
                let hint = match other {
                    "AUDIT" | "CUSTOM" => " (AUDIT and CUSTOM are not supported)".to_owned(),
                    _ if other.eq_ignore_ascii_case("allow")
                        || other.eq_ignore_ascii_case("deny") =>
                    {
                        format!(
                            "; write it in upper case ({:?})",
                            other.to_ascii_uppercase()
                        )
                    }
                    _ => String::new(),
                };
                return Err(ctx.err(
                    "spec.action",
                    format!("{other:?} is not ALLOW or DENY{hint}"),
                ));
            }
        };
        let selector = selector(spec.selector.as_ref());
        let rules = spec
            .rules
            .iter()
            .flatten()
            .enumerate()
            .map(|(i, rule)| translate_rule(ctx, i, rule))
            .collect::<Result<Vec<_>, _>>()?;
        state.authorization_policies.push(AuthorizationPolicy::new(
            ctx.name.clone(),
            ctx.namespace.clone(),
            selector,
            action,
            rules,
            dry_run,
        ));
        Ok(())
    }
}

/// Fail-closed stand-in for a rejected AuthorizationPolicy (lenient build): a DENY policy
/// with one rule that matches every connection, for the whole namespace of the rejected one
/// (the whole mesh, in the root namespace), named after it with its error as a warning.
pub(super) fn deny_all_in_its_namespace(
    object: &ObjectRef,
    error: &ConfigError,
    state: &mut BuildState,
) {
    let name = object.name.as_deref().unwrap_or("<no name>");
    let namespace = object.namespace.clone().unwrap_or_default();
    let mut stand_in = AuthorizationPolicy::new(
        format!("{name} (rejected)"),
        namespace,
        None,
        Action::Deny,
        vec![Rule::default()],
        false,
    );
    stand_in.warnings.push(format!(
        "stands in for a rejected policy and denies every connection to its namespace until the policy is fixed: {error}"
    ));
    state.authorization_policies.push(stand_in);
}

/// Logs what cannot be enforced as written, once per load.
pub(super) fn log_warnings(authorization_policies: &[AuthorizationPolicy]) {
    for policy in authorization_policies {
        for warning in &policy.warnings {
            tracing::warn!(policy = %policy.key(), "AuthorizationPolicy {}: {warning}", policy.key());
        }
    }
}

/// `metadata.annotations["weft.dev/dry-run"]`.
fn dry_run(ctx: &Ctx, annotations: Option<&BTreeMap<String, String>>) -> Result<bool, ConfigError> {
    match annotations.and_then(|a| a.get(DRY_RUN_ANNOTATION)) {
        None => Ok(false),
        Some(v) if v.eq_ignore_ascii_case("true") => Ok(true),
        Some(v) if v.eq_ignore_ascii_case("false") || v.is_empty() => Ok(false),
        Some(other) => Err(ctx.err(
            format!("metadata.annotations.{DRY_RUN_ANNOTATION}"),
            format!("{other:?} is not \"true\" or \"false\""),
        )),
    }
}

/// A list field, empty when absent.
fn list<T>(field: &Option<Vec<T>>) -> &[T] {
    field.as_deref().unwrap_or_default()
}

/// Parses every value of a list field, blaming `field[k]` for a bad one.
fn parse_list<T, R>(
    ctx: &Ctx,
    field: &str,
    values: &Option<Vec<T>>,
    parse: impl Fn(&T) -> Result<R, PolicyError>,
) -> Result<Vec<R>, ConfigError> {
    list(values)
        .iter()
        .enumerate()
        .map(|(k, v)| parse(v).map_err(|e| ctx.err(format!("{field}[{k}]"), e.to_string())))
        .collect()
}

fn port_value(value: &IntOrString) -> Result<u16, PolicyError> {
    match value {
        IntOrString::Int(n) => port_from_int(*n),
        IntOrString::String(s) => parse_port(s),
    }
}

fn string_value(value: &IntOrString) -> Cow<'_, str> {
    match value {
        IntOrString::Int(n) => Cow::Owned(n.to_string()),
        IntOrString::String(s) => Cow::Borrowed(s.as_str()),
    }
}

/// Records `path` as needing L7 when the list field is set.
fn note_l7<T>(l7: &mut Vec<String>, path: String, values: &Option<Vec<T>>) {
    if !list(values).is_empty() {
        l7.push(path);
    }
}

fn translate_rule(ctx: &Ctx, i: usize, rule: &weft_kinds::Rule) -> Result<Rule, ConfigError> {
    let base = format!("spec.rules[{i}]");
    let mut l7 = Vec::new();
    let mut out = Rule::default();

    for (j, from) in list(&rule.from).iter().enumerate() {
        let field = format!("{base}.from[{j}].source");
        let Some(src) = &from.source else {
            return Err(ctx.err(
                field,
                "missing; every from[] entry needs a source (remove the entry to match any \
                 source)",
            ));
        };
        let set = [
            &src.principals,
            &src.not_principals,
            &src.request_principals,
            &src.not_request_principals,
            &src.namespaces,
            &src.not_namespaces,
            &src.ip_blocks,
            &src.not_ip_blocks,
            &src.remote_ip_blocks,
            &src.not_remote_ip_blocks,
        ];
        if set.iter().all(|f| list(f).is_empty()) {
            return Err(ctx.err(
                field,
                "is empty; list principals, namespaces or ipBlocks (or remove the entry to \
                 match any source)",
            ));
        }
        let principal = |s: &String| StringMatch::parse_principal(s);
        let pattern = |s: &String| StringMatch::parse(s);
        let cidr = |s: &String| IpBlock::parse(s.trim());
        out.from.push(Source {
            principals: parse_list(
                ctx,
                &format!("{field}.principals"),
                &src.principals,
                principal,
            )?,
            not_principals: parse_list(
                ctx,
                &format!("{field}.notPrincipals"),
                &src.not_principals,
                principal,
            )?,
            namespaces: parse_list(
                ctx,
                &format!("{field}.namespaces"),
                &src.namespaces,
                pattern,
            )?,
            not_namespaces: parse_list(
                ctx,
                &format!("{field}.notNamespaces"),
                &src.not_namespaces,
                pattern,
            )?,
            ip_blocks: parse_list(ctx, &format!("{field}.ipBlocks"), &src.ip_blocks, cidr)?,
            not_ip_blocks: parse_list(
                ctx,
                &format!("{field}.notIpBlocks"),
                &src.not_ip_blocks,
                cidr,
            )?,
        });
        let rel = format!("from[{j}].source");
        note_l7(
            &mut l7,
            format!("{rel}.requestPrincipals"),
            &src.request_principals,
        );
        note_l7(
            &mut l7,
            format!("{rel}.notRequestPrincipals"),
            &src.not_request_principals,
        );
        note_l7(
            &mut l7,
            format!("{rel}.remoteIpBlocks"),
            &src.remote_ip_blocks,
        );
        note_l7(
            &mut l7,
            format!("{rel}.notRemoteIpBlocks"),
            &src.not_remote_ip_blocks,
        );
    }

    for (j, to) in list(&rule.to).iter().enumerate() {
        let field = format!("{base}.to[{j}].operation");
        let Some(op) = &to.operation else {
            return Err(ctx.err(
                field,
                "missing; every to[] entry needs an operation (remove the entry to match any \
                 destination)",
            ));
        };
        let l7_fields = [
            ("hosts", &op.hosts),
            ("notHosts", &op.not_hosts),
            ("methods", &op.methods),
            ("notMethods", &op.not_methods),
            ("paths", &op.paths),
            ("notPaths", &op.not_paths),
        ];
        if list(&op.ports).is_empty()
            && list(&op.not_ports).is_empty()
            && l7_fields.iter().all(|(_, f)| list(f).is_empty())
        {
            return Err(ctx.err(
                field,
                "is empty; list ports (or remove the entry to match any destination)",
            ));
        }
        out.to.push(Operation {
            ports: parse_list(ctx, &format!("{field}.ports"), &op.ports, port_value)?,
            not_ports: parse_list(ctx, &format!("{field}.notPorts"), &op.not_ports, port_value)?,
        });
        for (name, values) in l7_fields {
            note_l7(&mut l7, format!("to[{j}].operation.{name}"), values);
        }
    }

    for (j, cond) in list(&rule.when).iter().enumerate() {
        let field = format!("{base}.when[{j}]");
        let Some(key) = non_empty(cond.key.as_ref()) else {
            return Err(ctx.err(
                format!("{field}.key"),
                format!(
                    "missing; name the attribute to test (at L4: {})",
                    L4_CONDITION_KEYS.join(", ")
                ),
            ));
        };
        if list(&cond.values).is_empty() && list(&cond.not_values).is_empty() {
            return Err(ctx.err(
                field,
                format!("has no values or notValues for key {key:?}; list at least one"),
            ));
        }
        let values = format!("{field}.values");
        let not_values = format!("{field}.notValues");
        let (v, nv) = (&cond.values, &cond.not_values);
        let cidr = |s: &IntOrString| IpBlock::parse(string_value(s).trim());
        let pattern = |s: &IntOrString| StringMatch::parse(&string_value(s));
        let principal = |s: &IntOrString| StringMatch::parse_principal(&string_value(s));
        let condition = match key.as_str() {
            "source.ip" => Condition::SourceIp {
                values: parse_list(ctx, &values, v, cidr)?,
                not_values: parse_list(ctx, &not_values, nv, cidr)?,
            },
            "destination.ip" => Condition::DestinationIp {
                values: parse_list(ctx, &values, v, cidr)?,
                not_values: parse_list(ctx, &not_values, nv, cidr)?,
            },
            "source.namespace" => Condition::SourceNamespace {
                values: parse_list(ctx, &values, v, pattern)?,
                not_values: parse_list(ctx, &not_values, nv, pattern)?,
            },
            "source.principal" => Condition::SourcePrincipal {
                values: parse_list(ctx, &values, v, principal)?,
                not_values: parse_list(ctx, &not_values, nv, principal)?,
            },
            "destination.port" => Condition::DestinationPort {
                values: parse_list(ctx, &values, v, port_value)?,
                not_values: parse_list(ctx, &not_values, nv, port_value)?,
            },
            other => {
                l7.push(format!("when[{j}] (key {other})"));
                continue;
            }
        };
        out.when.push(condition);
    }

    out.l7_fields = l7;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::super::tests::{assert_error, error};
    use crate::model::parse_and_build;

    const NS: &str = "apiVersion: v1\nkind: Namespace\nmetadata: {name: shop}\n";

    fn ap(name: &str, spec: &str) -> String {
        format!(
            "apiVersion: weft.dev/v1alpha1\nkind: AuthorizationPolicy\n\
             metadata: {{name: {name}, namespace: shop}}\nspec:\n{spec}\n"
        )
    }

    fn pa(spec: &str) -> String {
        format!(
            "apiVersion: weft.dev/v1alpha1\nkind: PeerAuthentication\n\
             metadata: {{name: mtls, namespace: shop}}\nspec:\n{spec}\n"
        )
    }

    #[test]
    fn bad_cidr_names_document_object_and_field() {
        let yaml = format!(
            "{NS}---\n{}---\n{}---\n{}",
            ap("ok", "  rules: [{}]"),
            ap("other", "  action: DENY"),
            ap(
                "deny-inventory",
                "  action: DENY\n  rules:\n  - from:\n    - source:\n        \
                 ipBlocks: [10.0.0.0/8, 10.0.0.0/33]"
            )
        );
        let err = error(&yaml);
        assert!(
            err.starts_with(
                "document 4 (AuthorizationPolicy shop/deny-inventory): \
                 spec.rules[0].from[0].source.ipBlocks[1]: \"10.0.0.0/33\" is not a CIDR"
            ),
            "{err}"
        );
        assert_error(
            &ap(
                "p",
                "  rules: [{when: [{key: destination.ip, notValues: [\"fd00::/200\"]}]}]",
            ),
            &[
                "spec.rules[0].when[0].notValues[0]",
                "\"fd00::/200\" is not a CIDR",
            ],
        );
    }

    #[test]
    fn bad_action() {
        assert_eq!(
            error(&ap("p", "  action: REJECT")),
            "document 1 (AuthorizationPolicy shop/p): spec.action: \"REJECT\" is not ALLOW or DENY"
        );
        assert_error(
            &ap("p", "  action: AUDIT"),
            &[
                "spec.action",
                "\"AUDIT\"",
                "AUDIT and CUSTOM are not supported",
            ],
        );
        assert_error(
            &ap("p", "  action: allow"),
            &[
                "spec.action",
                "\"allow\" is not ALLOW or DENY",
                "upper case (\"ALLOW\")",
            ],
        );
        assert_error(
            &ap("p", "  action: CUSTOM\n  provider: {name: ext}"),
            &["spec.provider", "not supported"],
        );
    }

    #[test]
    fn bad_ports() {
        let rules = "  rules:\n  - to: [{operation: {ports: [\"80\"]}}]\n  \
                     - to: [{operation: {ports: [\"70000\"]}}]";
        assert_eq!(
            error(&ap("p", rules)),
            "document 1 (AuthorizationPolicy shop/p): spec.rules[1].to[0].operation.ports[0]: \
             \"70000\" is not a port (1-65535)"
        );
        assert_error(
            &ap("p", "  rules: [{to: [{operation: {notPorts: [0]}}]}]"),
            &[
                "spec.rules[0].to[0].operation.notPorts[0]",
                "0 is not a port",
            ],
        );
        assert_error(
            &ap("p", "  rules: [{to: [{operation: {ports: [http]}}]}]"),
            &["ports[0]", "\"http\" is not a port"],
        );
        assert_error(
            &ap(
                "p",
                "  rules: [{when: [{key: destination.port, values: [\"99999\"]}]}]",
            ),
            &["spec.rules[0].when[0].values[0]", "\"99999\" is not a port"],
        );
    }

    #[test]
    fn misspelt_or_empty_fields_are_rejected() {
        // A silently ignored field would widen the policy.
        assert_error(
            &ap(
                "p",
                "  rules: [{from: [{source: {principal: [a/ns/b/sa/c]}}]}]",
            ),
            &[
                "AuthorizationPolicy shop/p",
                "spec.rules[0].from[0].source",
                "unknown field `principal`",
            ],
        );
        assert_error(
            &ap("p", "  actions: DENY"),
            &["spec", "unknown field `actions`"],
        );
        assert_error(
            &ap("p", "  rules: [{from: [{source: {}}]}]"),
            &["spec.rules[0].from[0].source", "is empty"],
        );
        assert_error(
            &ap("p", "  rules: [{from: [{}]}]"),
            &["spec.rules[0].from[0].source", "missing"],
        );
        assert_error(
            &ap("p", "  rules: [{to: [{operation: {}}]}]"),
            &["spec.rules[0].to[0].operation", "is empty"],
        );
        assert_error(
            &ap("p", "  rules: [{when: [{values: [a]}]}]"),
            &["spec.rules[0].when[0].key", "missing", "source.ip"],
        );
        assert_error(
            &ap("p", "  rules: [{when: [{key: source.ip}]}]"),
            &["spec.rules[0].when[0]", "no values or notValues"],
        );
        assert_error(
            &ap(
                "p",
                "  rules: [{from: [{source: {principals: [\"a*b\"]}}]}]",
            ),
            &[
                "spec.rules[0].from[0].source.principals[0]",
                "\"a*b\"",
                "only alone",
            ],
        );
        assert_error(
            &ap("p", "  rules: [{from: [{source: {namespaces: [\"\"]}}]}]"),
            &["spec.rules[0].from[0].source.namespaces[0]", "is empty"],
        );
        assert_error(
            &ap("p", "  targetRefs: [{kind: Service, name: x}]"),
            &["spec.targetRefs", "spec.selector.matchLabels"],
        );
        assert_error(
            &ap("p", "  selector: {matchExpressions: []}"),
            &["spec.selector", "unknown field `matchExpressions`"],
        );
    }

    #[test]
    fn dry_run_annotation_and_api_version() {
        assert_error(
            "apiVersion: weft.dev/v1alpha1\nkind: AuthorizationPolicy\n\
             metadata: {name: p, namespace: shop, annotations: {weft.dev/dry-run: \"yes\"}}\n",
            &[
                "metadata.annotations.weft.dev/dry-run",
                "\"yes\" is not \"true\" or \"false\"",
            ],
        );
        assert_error(
            "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\n\
             metadata: {name: p, namespace: shop}\n",
            &[
                "AuthorizationPolicy shop/p",
                "apiVersion",
                "use \"weft.dev/v1alpha1\"",
            ],
        );
        assert_error(
            &format!(
                "{}---\n{}",
                ap("p", "  rules: [{}]"),
                ap("p", "  rules: []")
            ),
            &[
                "document 2",
                "metadata.name",
                "already defined by document 1",
            ],
        );
        // Same name, different kinds: fine.
        parse_and_build(&format!(
            "{}---\n{}",
            ap("mtls", "  rules: []"),
            pa("  mtls: {}")
        ))
        .unwrap();
    }
}
