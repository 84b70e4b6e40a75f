//! The one translation from Kubernetes-shaped objects to a [`MeshSnapshot`]: a registry of
//! the supported kinds (`KINDS`), one module per kind, and the two ways to build.
//! (`HTTPRoute`s are kept for the waypoint; the node daemons route at L4.)
//!
//! Each kind's module implements `KindObject` for its parsed shape: it validates one object
//! and adds what it means to the build state. This module recognises a document's kind,
//! parses it with the kind's shape ([`parse_documents`], [`parse_object`]), and translates the
//! objects in stage order (namespaces before the pods in them, pods before services, services
//! before their EndpointSlices), in input order within a stage. Adding a kind is a new module
//! and one line in `KINDS`.
//!
//! - [`build`]: all or nothing, the first invalid object fails the whole input (the file
//!   source: a bad edit changes nothing).
//! - [`build_lenient`]: an invalid object is left out with its error ([`Rejected`]) and the
//!   rest is built (a watch-based source, where one bad object must not hold back the
//!   others). A cross-object conflict (a duplicate name, a shared pod IP or cluster IP)
//!   rejects the later object only; an object that depends on a rejected one (a pod in a
//!   rejected Namespace, a slice of a rejected Service) is rejected too, saying why. A
//!   rejected security policy fails closed: a rejected AuthorizationPolicy is replaced by one
//!   that denies every connection to its namespace (the mesh, for the root namespace), a
//!   rejected PeerAuthentication holds its namespace (or the mesh) STRICT.

mod authorization_policy;
mod context;
mod endpoint_slice;
mod http_route;
mod namespace;
mod peer_authentication;
mod pod;
mod service;
mod traffic_policies;

#[cfg(test)]
mod lenient_tests;
#[cfg(test)]
mod tests;

use std::sync::Arc;

use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::discovery::v1 as discovery;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_yaml::Value;

use self::context::{identify, BuildState, KindObject};
use super::error::{ConfigError, ObjectRef};
use super::gateway_kinds::{self, GATEWAY_API_VERSION};
use super::weft_kinds::{self, WEFT_API_VERSION};
use super::MeshSnapshot;

/// The order kinds are translated in: a stage may use what earlier stages built.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Stage {
    Namespaces,
    Workloads,
    Services,
    Endpoints,
    Policies,
}

/// Parses a document into a kind's shape.
type ParseFn =
    fn(Value) -> Result<Arc<dyn KindObject>, serde_path_to_error::Error<serde_yaml::Error>>;

/// What a lenient build puts in place of a rejected object of a kind whose absence would
/// widen access (a security policy), so that leaving it out fails closed.
type FailClosedFn = fn(&ObjectRef, &ConfigError, &mut BuildState);

/// One supported kind.
struct KindEntry {
    api_version: &'static str,
    kind: &'static str,
    namespaced: bool,
    stage: Stage,
    parse: ParseFn,
    fail_closed: Option<FailClosedFn>,
}

// === impl KindEntry ===

impl std::fmt::Debug for KindEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.api_version, self.kind)
    }
}

/// Every kind weft reads.
const KINDS: &[KindEntry] = &[
    KindEntry {
        api_version: "v1",
        kind: "Namespace",
        namespaced: false,
        stage: Stage::Namespaces,
        parse: parse_as::<core::Namespace>,
        fail_closed: None,
    },
    KindEntry {
        api_version: "v1",
        kind: "Pod",
        namespaced: true,
        stage: Stage::Workloads,
        parse: parse_as::<core::Pod>,
        fail_closed: None,
    },
    KindEntry {
        api_version: "v1",
        kind: "Service",
        namespaced: true,
        stage: Stage::Services,
        parse: parse_as::<core::Service>,
        fail_closed: None,
    },
    KindEntry {
        api_version: "discovery.k8s.io/v1",
        kind: "EndpointSlice",
        namespaced: true,
        stage: Stage::Endpoints,
        parse: parse_as::<discovery::EndpointSlice>,
        fail_closed: None,
    },
    KindEntry {
        api_version: WEFT_API_VERSION,
        kind: "AuthorizationPolicy",
        namespaced: true,
        stage: Stage::Policies,
        parse: parse_as::<weft_kinds::AuthorizationPolicy>,
        fail_closed: Some(authorization_policy::deny_all_in_its_namespace),
    },
    KindEntry {
        api_version: WEFT_API_VERSION,
        kind: "PeerAuthentication",
        namespaced: true,
        stage: Stage::Policies,
        parse: parse_as::<weft_kinds::PeerAuthentication>,
        fail_closed: Some(peer_authentication::hold_its_namespace_strict),
    },
    KindEntry {
        api_version: WEFT_API_VERSION,
        kind: "DestinationPolicy",
        namespaced: true,
        stage: Stage::Policies,
        parse: parse_as::<crate::model::traffic_policies::DestinationPolicyObject>,
        fail_closed: None,
    },
    KindEntry {
        api_version: WEFT_API_VERSION,
        kind: "FaultInjection",
        namespaced: true,
        stage: Stage::Policies,
        parse: parse_as::<crate::model::traffic_policies::FaultInjectionObject>,
        fail_closed: None,
    },
    KindEntry {
        api_version: GATEWAY_API_VERSION,
        kind: "HTTPRoute",
        namespaced: true,
        stage: Stage::Policies,
        parse: parse_as::<gateway_kinds::HttpRoute>,
        fail_closed: None,
    },
];

fn parse_as<T: KindObject + DeserializeOwned + 'static>(
    value: Value,
) -> Result<Arc<dyn KindObject>, serde_path_to_error::Error<serde_yaml::Error>> {
    serde_path_to_error::deserialize::<_, T>(value).map(|t| Arc::new(t) as Arc<dyn KindObject>)
}

/// What weft reads, for error messages: "v1 Namespace, v1 Pod, ..., weft.dev/v1alpha1
/// AuthorizationPolicy, PeerAuthentication, DestinationPolicy and FaultInjection, and
/// gateway.networking.k8s.io/v1 HTTPRoute".
fn supported_kinds() -> String {
    let mut groups: Vec<(&str, Vec<&str>)> = Vec::new();
    for entry in KINDS {
        match groups.last_mut() {
            Some((api, kinds)) if *api == entry.api_version && entry.api_version != "v1" => {
                kinds.push(entry.kind)
            }
            _ => groups.push((entry.api_version, vec![entry.kind])),
        }
    }
    let phrases: Vec<String> = groups
        .iter()
        .map(|(api, kinds)| match kinds.as_slice() {
            [one] => format!("{api} {one}"),
            [rest @ .., last] => format!("{api} {} and {last}", rest.join(", ")),
            [] => String::new(),
        })
        .collect();
    match phrases.as_slice() {
        [rest @ .., last] if !rest.is_empty() => format!("{}, and {last}", rest.join(", ")),
        _ => phrases.concat(),
    }
}

/// A parsed object of a supported kind, and the document (1-based) it came from when it came
/// from a file.
#[derive(Debug, Clone)]
pub struct ParsedObject {
    /// The 1-based document of the file, `None` for an object that came from no file.
    pub document: Option<usize>,
    kind: &'static KindEntry,
    object: Arc<dyn KindObject>,
}

// === impl ParsedObject ===

impl ParsedObject {
    /// The `kind`, as written in manifests.
    pub fn kind(&self) -> &'static str {
        self.kind.kind
    }

    /// The order in which a watch-based source hands objects to [`build_lenient`]: oldest
    /// first (`metadata.creationTimestamp`), then by namespace and name. A conflict (a pod IP
    /// or cluster IP claimed twice) then rejects the newer object, the same one every
    /// rebuild.
    pub fn age_order(&self) -> impl Ord {
        let meta = self.object.metadata();
        (
            meta.creation_timestamp.clone(),
            meta.namespace.clone(),
            meta.name.clone(),
        )
    }

    /// Which object this is, as errors name it.
    pub fn object_ref(&self) -> ObjectRef {
        object_ref(
            self.kind,
            self.object.metadata().namespace.as_deref(),
            self.object.metadata().name.as_deref(),
        )
    }
}

fn object_ref(kind: &KindEntry, namespace: Option<&str>, name: Option<&str>) -> ObjectRef {
    fn non_empty(s: Option<&str>) -> Option<&str> {
        s.filter(|s| !s.is_empty())
    }
    if kind.namespaced {
        ObjectRef::namespaced(kind.kind, non_empty(namespace), non_empty(name))
    } else {
        ObjectRef::cluster_scoped(kind.kind, non_empty(name))
    }
}

/// An object the lenient build left out, and why.
#[derive(Debug)]
pub struct Rejected {
    /// The object left out.
    pub object: ObjectRef,
    /// The document it came from, when it came from a file.
    pub document: Option<usize>,
    /// Why: names the object and the field.
    pub error: ConfigError,
}

/// Parses YAML and builds a snapshot (generation 0) from it, all or nothing.
pub fn parse_and_build(yaml: &str) -> Result<MeshSnapshot, ConfigError> {
    build(&parse_documents(yaml)?)
}

/// Parses a multi-document YAML stream into typed objects. Empty documents are skipped (but
/// counted, so document numbers match the file).
pub fn parse_documents(yaml: &str) -> Result<Vec<ParsedObject>, ConfigError> {
    let mut objects = Vec::new();
    for (index, doc) in serde_yaml::Deserializer::from_str(yaml).enumerate() {
        let document = index + 1;
        let value = Value::deserialize(doc).map_err(|e| ConfigError::Yaml {
            document,
            message: e.to_string(),
        })?;
        if value.is_null() {
            continue;
        }
        objects.push(parse_object(Some(document), value)?);
    }
    Ok(objects)
}

/// Parses one object (a document of a file, or an object from a watch with `document`
/// `None`) with the shape of its kind.
pub fn parse_object(document: Option<usize>, value: Value) -> Result<ParsedObject, ConfigError> {
    let invalid = |object: Option<ObjectRef>, field: &str, message: String| ConfigError::Invalid {
        document,
        object: object.map(Box::new),
        field: field.to_owned(),
        message,
    };
    if !value.is_mapping() {
        return Err(invalid(
            None,
            "(document)",
            format!(
                "expected a Kubernetes object (a mapping with apiVersion, kind and metadata), \
                 found {}",
                value_type(&value)
            ),
        ));
    }
    let str_at = |path: &[&str]| {
        let mut v = &value;
        for key in path {
            v = v.get(*key)?;
        }
        v.as_str()
    };
    let name = str_at(&["metadata", "name"]).filter(|n| !n.is_empty());
    let namespace = str_at(&["metadata", "namespace"]);
    let api_version = str_at(&["apiVersion"]);
    let Some(kind) = str_at(&["kind"]) else {
        let found = match value.get("kind") {
            None | Some(Value::Null) => "it is missing".to_owned(),
            Some(other) => format!("found {}", value_type(other)),
        };
        let object = name.map(|name| ObjectRef::cluster_scoped("(no kind)", Some(name)));
        return Err(invalid(
            object,
            "kind",
            format!(
                "every document must be a Kubernetes object with a string kind, but {found}; \
                 weft reads {}",
                supported_kinds()
            ),
        ));
    };
    let Some(entry) = KINDS.iter().find(|k| k.kind == kind) else {
        return Err(invalid(
            Some(ObjectRef::namespaced(
                kind,
                namespace.filter(|n| !n.is_empty()),
                name,
            )),
            "kind",
            format!(
                "{kind:?} is not supported; weft reads {} (remove this document from the file)",
                supported_kinds()
            ),
        ));
    };
    let object = object_ref(entry, namespace, name);
    if api_version != Some(entry.api_version) {
        return Err(invalid(
            Some(object),
            "apiVersion",
            format!(
                "{} is not supported for kind {kind}; use {:?} (weft reads {})",
                api_version.map_or_else(|| "a missing apiVersion".to_owned(), |a| format!("{a:?}")),
                entry.api_version,
                supported_kinds()
            ),
        ));
    }
    let parsed = (entry.parse)(value).map_err(|e| {
        let path = e.path().to_string();
        let mut message = e.into_inner().to_string();
        if message.ends_with("expected i32") {
            message.push_str(" (a whole number)");
        }
        if message.ends_with("expected a string") {
            message.push_str("; quote the value (e.g. \"1\" or \"true\")");
        }
        let field = if path == "." { "(document)" } else { &path };
        invalid(Some(object.clone()), field, message)
    })?;
    Ok(ParsedObject {
        document,
        kind: entry,
        object: parsed,
    })
}

fn value_type(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Sequence(_) => "a list",
        Value::Mapping(_) => "a mapping",
        Value::Tagged(_) => "a tagged value",
    }
}

/// Validates the objects and translates them into a snapshot (generation 0); the first
/// invalid object fails the whole build.
///
/// Objects may come in any order. Endpoints of a service come from the EndpointSlices that
/// name it if there is at least one, else from its selector; an endpoint that serves none of
/// the service's ports is left out.
pub fn build(objects: &[ParsedObject]) -> Result<MeshSnapshot, ConfigError> {
    let mut state = BuildState::default();
    for parsed in in_stage_order(objects) {
        translate_one(parsed, &mut state)?;
    }
    Ok(finish(state))
}

/// An object a watch-based source could not even parse into its kind's shape, so it never
/// became a [`ParsedObject`].
#[derive(Debug, Clone)]
pub struct Unparsed {
    /// The object (its kind as weft names it).
    pub object: ObjectRef,
    /// Why it did not parse.
    pub error: Arc<ConfigError>,
}

/// Like [`build`], but an invalid object is left out (returned with its error) and the rest is
/// built.
pub fn build_lenient(objects: &[ParsedObject]) -> (MeshSnapshot, Vec<Rejected>) {
    build_lenient_with_unparsed(objects, &[])
}

/// [`build_lenient`] for a source that also holds objects that did not parse: each counts as
/// rejected (objects that depend on it say why), and a security policy among them fails
/// closed exactly as one rejected by its translation does. The returned rejections are those
/// of `objects` only; the source already knows the unparsed ones.
pub fn build_lenient_with_unparsed(
    objects: &[ParsedObject],
    unparsed: &[Unparsed],
) -> (MeshSnapshot, Vec<Rejected>) {
    let mut state = BuildState::default();
    let mut rejected = Vec::new();
    for object in unparsed {
        let Some(entry) = KINDS.iter().find(|k| k.kind == object.object.kind) else {
            continue;
        };
        if let Some(name) = &object.object.name {
            let namespace = object.object.namespace.clone().unwrap_or_default();
            state.rejected.insert((entry.kind, namespace, name.clone()));
        }
        if let Some(fail_closed) = entry.fail_closed {
            fail_closed(&object.object, &object.error, &mut state);
        }
    }
    for parsed in in_stage_order(objects) {
        if let Err(error) = translate_one(parsed, &mut state) {
            let object = parsed.object_ref();
            if let Some(name) = &object.name {
                let namespace = object.namespace.clone().unwrap_or_default();
                state
                    .rejected
                    .insert((parsed.kind.kind, namespace, name.clone()));
            }
            if let Some(fail_closed) = parsed.kind.fail_closed {
                fail_closed(&object, &error, &mut state);
            }
            rejected.push(Rejected {
                object,
                document: parsed.document,
                error,
            });
        }
    }
    (finish(state), rejected)
}

fn in_stage_order(objects: &[ParsedObject]) -> Vec<&ParsedObject> {
    let mut ordered: Vec<&ParsedObject> = objects.iter().collect();
    // Stable: input order within a stage.
    ordered.sort_by_key(|o| o.kind.stage);
    ordered
}

fn translate_one(parsed: &ParsedObject, state: &mut BuildState) -> Result<(), ConfigError> {
    let entry = parsed.kind;
    let (ctx, key) = identify(
        entry.kind,
        entry.namespaced,
        parsed.document,
        parsed.object.metadata(),
        state,
    )?;
    parsed.object.translate(&ctx, state)?;
    state.seen.insert(key, parsed.document);
    Ok(())
}

/// What needs every object: service endpoints from selectors, policy warnings, the indexes.
fn finish(mut state: BuildState) -> MeshSnapshot {
    endpoint_slice::resolve_endpoints(&mut state);
    authorization_policy::log_warnings(&state.authorization_policies);
    peer_authentication::log_warnings(&state.peer_authentications);
    MeshSnapshot::from_parts(
        state.namespaces.into_values().collect(),
        state.workloads,
        state.services,
        state.authorization_policies,
        state.peer_authentications,
        state.held_strict,
        state.waypoint_objects,
    )
}
