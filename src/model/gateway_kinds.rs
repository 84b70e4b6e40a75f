//! Shapes of the Gateway API kinds weft reads: `gateway.networking.k8s.io/v1 HTTPRoute`,
//! attached to Services (GAMMA) for the waypoint.
//!
//! The fields that decide where a route attaches (`parentRefs`, `hostnames`) are typed and
//! checked here; `rules` are kept as written for the waypoint, which types and validates
//! them where it applies them. Unknown fields are ignored, as the API server would keep
//! fields of a newer Gateway API release weft does not know yet.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::Deserialize;

/// The API version of the Gateway API kinds weft reads.
pub const GATEWAY_API_VERSION: &str = "gateway.networking.k8s.io/v1";

/// `gateway.networking.k8s.io/v1 HTTPRoute`.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HttpRoute {
    /// Name and namespace.
    #[serde(default)]
    pub metadata: ObjectMeta,
    /// The route.
    #[serde(default)]
    pub spec: HttpRouteSpec,
}

/// `HTTPRoute.spec`.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HttpRouteSpec {
    /// What the route attaches to: Services (GAMMA) for weft.
    #[serde(default)]
    pub parent_refs: Vec<ParentReference>,
    /// Host names the route matches; empty matches all.
    #[serde(default)]
    pub hostnames: Vec<String>,
    /// The routing rules, as written.
    #[serde(default)]
    pub rules: Vec<serde_json::Value>,
}

/// `HTTPRoute.spec.parentRefs[]`.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ParentReference {
    /// API group of the parent; `""` (core) for a Service. Default
    /// `gateway.networking.k8s.io`.
    pub group: Option<String>,
    /// Kind of the parent: `Service` for GAMMA. Default `Gateway`.
    pub kind: Option<String>,
    /// Namespace of the parent; default the route's.
    pub namespace: Option<String>,
    /// Name of the parent.
    #[serde(default)]
    pub name: String,
    /// A named port (Service) or listener (Gateway).
    pub section_name: Option<String>,
    /// A port of the parent.
    pub port: Option<i64>,
}
