//! `discovery.k8s.io/v1 EndpointSlice` → the ready endpoints of the Service it names
//! (`kubernetes.io/service-name`), each attributed to its pod; and, once every object is in,
//! [`resolve_endpoints`]: a service with no slice takes its endpoints from its selector.

use std::collections::{BTreeMap, HashMap};

use super::context::{non_empty, BuildState, Ctx, KindObject};
use crate::model::error::ConfigError;
use crate::model::{Endpoint, Service, TargetPort, Workload};
use k8s_openapi::api::discovery::v1 as discovery;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

impl KindObject for discovery::EndpointSlice {
    fn metadata(&self) -> &ObjectMeta {
        &self.metadata
    }

    fn translate(&self, ctx: &Ctx, state: &mut BuildState) -> Result<(), ConfigError> {
        let namespace = &ctx.namespace;
        let field = format!("metadata.labels.{SERVICE_NAME_LABEL}");
        let labels = self.metadata.labels.as_ref();
        let Some(service_name) = non_empty(labels.and_then(|l| l.get(SERVICE_NAME_LABEL))) else {
            return Err(ctx.err(
                field,
                "missing; label the slice with the name of its Service",
            ));
        };
        let name_key = (namespace.clone(), service_name.clone());
        let Some(&index) = state.service_by_name.get(&name_key) else {
            let rejected =
                state
                    .rejected
                    .contains(&("Service", namespace.clone(), service_name.clone()));
            let message = if rejected {
                format!(
                    "Service {namespace}/{service_name} was rejected (see its error); its \
                     endpoints are left out until it is fixed"
                )
            } else {
                format!(
                    "Service {namespace}/{service_name} does not exist; add the Service or fix \
                     the label"
                )
            };
            return Err(ctx.err(field, message));
        };
        let endpoints = slice_endpoints(ctx, self, &state.services[index], state)?;
        let merged = state.slice_endpoints.entry(index).or_default();
        for endpoint in endpoints {
            merge_endpoint(merged, endpoint);
        }
        Ok(())
    }
}

fn slice_endpoints(
    ctx: &Ctx,
    slice: &discovery::EndpointSlice,
    service: &Service,
    state: &BuildState,
) -> Result<Vec<Endpoint>, ConfigError> {
    if slice.address_type == "FQDN" {
        return Err(ctx.err("addressType", "\"FQDN\" is not supported; use IPv4 or IPv6"));
    }
    // Slice port name → port number.
    let mut slice_ports: Vec<(Option<&String>, u16)> = Vec::new();
    for (i, port) in slice.ports.iter().flatten().enumerate() {
        if let Some(raw) = port.port {
            let number = ctx.port(format!("ports[{i}].port"), i64::from(raw))?;
            slice_ports.push((non_empty(port.name.as_ref()), number));
        }
    }
    let target_ports: BTreeMap<u16, u16> = service
        .ports
        .iter()
        .filter_map(|sp| {
            let (_, target) = slice_ports
                .iter()
                .find(|(name, _)| name.map(String::as_str) == sp.name.as_deref())?;
            Some((sp.port, *target))
        })
        .collect();

    let mut endpoints = Vec::new();
    for (i, endpoint) in slice.endpoints.iter().enumerate() {
        let mut ips = Vec::new();
        for (j, raw) in endpoint.addresses.iter().enumerate() {
            ips.push(ctx.routable_ip(format!("endpoints[{i}].addresses[{j}]"), raw)?);
        }
        let ready = endpoint
            .conditions
            .as_ref()
            .and_then(|c| c.ready)
            .unwrap_or(true);
        if !ready {
            continue;
        }
        let target_ref = endpoint.target_ref.as_ref();
        let ref_uid = target_ref.and_then(|r| non_empty(r.uid.as_ref())).cloned();
        let ref_pod = target_ref
            .filter(|r| r.kind.as_deref().is_none_or(|k| k == "Pod"))
            .and_then(|r| {
                let name = non_empty(r.name.as_ref())?;
                let ns = non_empty(r.namespace.as_ref()).unwrap_or(&service.namespace);
                let index = state.workload_by_name.get(&(ns.clone(), name.clone()))?;
                Some(state.workloads[*index].uid.as_str())
            });
        for ip in ips {
            let workload_uid = ref_uid
                .clone()
                .or_else(|| ref_pod.map(str::to_owned))
                .or_else(|| state.pod_ips.get(&ip).map(|owner| owner.uid.clone()));
            endpoints.push(Endpoint {
                ip,
                workload_uid,
                target_ports: target_ports.clone(),
            });
        }
    }
    Ok(endpoints)
}

/// Gives every service its endpoints: those of its EndpointSlices if it has any, else those
/// of the pods its selector picks; an endpoint that serves none of the service's ports is
/// left out.
pub(super) fn resolve_endpoints(state: &mut BuildState) {
    let mut from_slices: HashMap<usize, Vec<Endpoint>> = std::mem::take(&mut state.slice_endpoints);
    for (index, service) in state.services.iter_mut().enumerate() {
        let endpoints = match from_slices.remove(&index) {
            Some(endpoints) => endpoints,
            None => match &service.selector {
                Some(selector) => selector_endpoints(service, selector, &state.workloads),
                None => Vec::new(),
            },
        };
        service.endpoints = endpoints
            .into_iter()
            .filter(|e| service.ports.is_empty() || !e.target_ports.is_empty())
            .collect();
    }
}

/// Adds `endpoint`, merging it into an existing endpoint with the same IP.
fn merge_endpoint(endpoints: &mut Vec<Endpoint>, endpoint: Endpoint) {
    match endpoints.iter_mut().find(|e| e.ip == endpoint.ip) {
        Some(existing) => {
            for (port, target) in endpoint.target_ports {
                existing.target_ports.entry(port).or_insert(target);
            }
            if existing.workload_uid.is_none() {
                existing.workload_uid = endpoint.workload_uid;
            }
        }
        None => endpoints.push(endpoint),
    }
}

fn selector_endpoints(
    service: &Service,
    selector: &BTreeMap<String, String>,
    workloads: &[Workload],
) -> Vec<Endpoint> {
    let mut selected: Vec<&Workload> = workloads
        .iter()
        .filter(|w| w.namespace == service.namespace && !w.host_network && !w.ips.is_empty())
        .filter(|w| selector.iter().all(|(k, v)| w.labels.get(k) == Some(v)))
        .collect();
    selected.sort_by(|a, b| a.name.cmp(&b.name));
    let mut endpoints = Vec::new();
    for w in selected {
        let target_ports: BTreeMap<u16, u16> = service
            .ports
            .iter()
            .filter_map(|sp| {
                let target = match &sp.target_port {
                    TargetPort::Number(n) => *n,
                    TargetPort::Name(name) => *w.named_ports.get(name)?,
                };
                Some((sp.port, target))
            })
            .collect();
        for ip in &w.ips {
            merge_endpoint(
                &mut endpoints,
                Endpoint {
                    ip: *ip,
                    workload_uid: Some(w.uid.clone()),
                    target_ports: target_ports.clone(),
                },
            );
        }
    }
    endpoints
}
