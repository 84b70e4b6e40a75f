//! `v1 Pod` → a [`Workload`]: identity (service account), node, IPs, named container ports,
//! enrollment (decided by [`crate::model::enrollment`]) and waypoint. Two pods may not share
//! an IP (hostNetwork pods excepted) or a uid.

use std::collections::{BTreeMap, HashSet};
use std::net::IpAddr;

use super::context::{non_empty, waypoint, BuildState, Ctx, KindObject, PodIpOwner};
use crate::model::enrollment::pod_is_enrolled;
use crate::model::error::ConfigError;
use crate::model::Workload;
use crate::names;
use k8s_openapi::api::core::v1 as core;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

/// Namespaces every cluster has, so a config need not declare them.
const BUILT_IN_NAMESPACES: [&str; 4] = ["default", "kube-system", "kube-public", "kube-node-lease"];

impl KindObject for core::Pod {
    fn metadata(&self) -> &ObjectMeta {
        &self.metadata
    }

    fn translate(&self, ctx: &Ctx, state: &mut BuildState) -> Result<(), ConfigError> {
        let (workload, ip_fields) = workload(ctx, self, state)?;
        if let Some(first) = state.pod_uids.get(&workload.uid) {
            return Err(ctx.err(
                "metadata.uid",
                format!(
                    "{:?} is already used by {first}; every pod needs a unique uid",
                    workload.uid
                ),
            ));
        }
        if !workload.host_network {
            for (ip, field) in &ip_fields {
                if let Some(other) = state.pod_ips.get(ip) {
                    return Err(ctx.err(
                        field.as_str(),
                        format!(
                            "{ip} is already used by {}; two pods cannot share an IP: remove \
                             the stale pod or fix its IP",
                            other.owner
                        ),
                    ));
                }
            }
            for (ip, _) in ip_fields {
                state.pod_ips.insert(
                    ip,
                    PodIpOwner {
                        uid: workload.uid.clone(),
                        owner: ctx.owner(),
                    },
                );
            }
        }
        state.pod_uids.insert(workload.uid.clone(), ctx.owner());
        state.workload_by_name.insert(
            (workload.namespace.clone(), workload.name.clone()),
            state.workloads.len(),
        );
        state.workloads.push(workload);
        Ok(())
    }
}

/// The workload of `pod`, with each of its IPs and the field it came from.
fn workload(
    ctx: &Ctx,
    pod: &core::Pod,
    state: &BuildState,
) -> Result<(Workload, Vec<(IpAddr, String)>), ConfigError> {
    let meta = &pod.metadata;
    let default_spec = core::PodSpec::default();
    let spec = pod.spec.as_ref().unwrap_or(&default_spec);
    let default_status = core::PodStatus::default();
    let status = pod.status.as_ref().unwrap_or(&default_status);
    let labels = meta.labels.clone().unwrap_or_default();
    let host_network = spec.host_network.unwrap_or(false);

    let mut named_ports = BTreeMap::new();
    for (c, container) in spec.containers.iter().enumerate() {
        for (p, port) in container.ports.iter().flatten().enumerate() {
            let number = ctx.port(
                format!("spec.containers[{c}].ports[{p}].containerPort"),
                i64::from(port.container_port),
            )?;
            if let Some(port_name) = non_empty(port.name.as_ref()) {
                named_ports.entry(port_name.clone()).or_insert(number);
            }
        }
    }

    // Each IP with the field it came from (for conflict messages), deduplicated.
    let mut ip_fields: Vec<(IpAddr, String)> = Vec::new();
    for (i, pod_ip) in status.pod_ips.iter().flatten().enumerate() {
        if !pod_ip.ip.is_empty() {
            let field = format!("status.podIPs[{i}].ip");
            ip_fields.push((ctx.ip(field.clone(), &pod_ip.ip)?, field));
        }
    }
    if let Some(raw) = non_empty(status.pod_ip.as_ref()) {
        ip_fields.push((ctx.ip("status.podIP", raw)?, "status.podIP".to_owned()));
    }
    let mut unique = HashSet::new();
    ip_fields.retain(|(ip, _)| unique.insert(*ip));
    let ips = ip_fields.iter().map(|(ip, _)| *ip).collect();

    let namespace = &ctx.namespace;
    let ns = state.namespaces.get(namespace);
    if ns.is_none() && !BUILT_IN_NAMESPACES.contains(&namespace.as_str()) {
        let key = ("Namespace", String::new(), namespace.clone());
        let message = if state.rejected.contains(&key) {
            format!(
                "Namespace {namespace:?} was rejected (see its error); its pods are left out \
                 until it is fixed"
            )
        } else {
            format!("Namespace {namespace:?} is not declared; add a Namespace object for it")
        };
        return Err(ctx.err("metadata.namespace", message));
    }
    let service_account = non_empty(spec.service_account_name.as_ref())
        .map(|sa| ("spec.serviceAccountName", sa))
        .or(non_empty(spec.service_account.as_ref()).map(|sa| ("spec.serviceAccount", sa)));
    if let Some((field, sa)) = service_account {
        ctx.name(field, sa, names::check_dns_subdomain)?;
    }
    let enrolled = pod_is_enrolled(ns.map(|ns| &ns.labels), &labels, host_network);

    let workload = Workload {
        uid: non_empty(meta.uid.as_ref())
            .cloned()
            .unwrap_or_else(|| format!("{namespace}/{}", ctx.name)),
        service_account: service_account
            .map(|(_, sa)| sa.clone())
            .unwrap_or_else(|| "default".to_owned()),
        node: non_empty(spec.node_name.as_ref()).cloned(),
        waypoint: waypoint(&labels, ns),
        name: ctx.name.clone(),
        namespace: namespace.clone(),
        ips,
        labels,
        host_network,
        enrolled,
        named_ports,
    };
    Ok((workload, ip_fields))
}
