//! `v1 Service` → a [`Service`]: cluster IPs (none for a headless service), ports with their
//! target ports, selector and waypoint. A cluster IP may belong to one service only and never
//! be a pod's IP. Endpoints are added by `endpoint_slice.rs`.

use std::collections::HashSet;
use std::net::IpAddr;

use super::context::{non_empty, waypoint, BuildState, Ctx, KindObject};
use crate::model::error::ConfigError;
use crate::model::{Service, ServicePort, TargetPort};
use k8s_openapi::api::core::v1 as core;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

impl KindObject for core::Service {
    fn metadata(&self) -> &ObjectMeta {
        &self.metadata
    }

    fn translate(&self, ctx: &Ctx, state: &mut BuildState) -> Result<(), ConfigError> {
        let (service, vip_fields) = service(ctx, self, state)?;
        for (vip, field) in &vip_fields {
            if let Some(pod) = state.pod_ips.get(vip) {
                return Err(ctx.err(
                    field.as_str(),
                    format!(
                        "{vip} is the IP of {}; a cluster IP must not be a pod's address",
                        pod.owner
                    ),
                ));
            }
            if let Some(other) = state.vips.get(vip) {
                return Err(ctx.err(
                    field.as_str(),
                    format!(
                        "{vip} is already the cluster IP of {other}; every service needs its \
                         own cluster IP"
                    ),
                ));
            }
        }
        for (vip, _) in vip_fields {
            state.vips.insert(vip, ctx.owner());
        }
        state.service_by_name.insert(
            (service.namespace.clone(), service.name.clone()),
            state.services.len(),
        );
        state.services.push(service);
        Ok(())
    }
}

/// The service of `svc` (without endpoints), with each cluster IP and the field it came from.
fn service(
    ctx: &Ctx,
    svc: &core::Service,
    state: &BuildState,
) -> Result<(Service, Vec<(IpAddr, String)>), ConfigError> {
    let default_spec = core::ServiceSpec::default();
    let spec = svc.spec.as_ref().unwrap_or(&default_spec);
    let labels = svc.metadata.labels.clone().unwrap_or_default();

    // Each VIP with the field it came from, deduplicated; "None" or "" means headless.
    let mut vip_fields: Vec<(IpAddr, String)> = Vec::new();
    let is_vip = |raw: &&String| !raw.is_empty() && raw.as_str() != "None";
    for (i, raw) in spec.cluster_ips.iter().flatten().enumerate() {
        if is_vip(&raw) {
            let field = format!("spec.clusterIPs[{i}]");
            vip_fields.push((ctx.routable_ip(field.clone(), raw)?, field));
        }
    }
    if let Some(raw) = spec.cluster_ip.as_ref().filter(is_vip) {
        vip_fields.push((
            ctx.routable_ip("spec.clusterIP", raw)?,
            "spec.clusterIP".to_owned(),
        ));
    }
    let mut unique = HashSet::new();
    vip_fields.retain(|(ip, _)| unique.insert(*ip));
    let vips = vip_fields.iter().map(|(ip, _)| *ip).collect();

    let mut ports: Vec<ServicePort> = Vec::new();
    for (i, port) in spec.ports.iter().flatten().enumerate() {
        let number = ctx.port(format!("spec.ports[{i}].port"), i64::from(port.port))?;
        let target_field = format!("spec.ports[{i}].targetPort");
        let target_port = match &port.target_port {
            None => TargetPort::Number(number),
            Some(IntOrString::Int(n)) => TargetPort::Number(ctx.port(target_field, i64::from(*n))?),
            Some(IntOrString::String(s)) if s.is_empty() => {
                return Err(ctx.err(
                    target_field,
                    "is empty; use a port number or the name of a container port",
                ))
            }
            Some(IntOrString::String(s)) => match s.parse::<i64>() {
                Ok(n) => TargetPort::Number(ctx.port(target_field, n)?),
                Err(_) => TargetPort::Name(s.clone()),
            },
        };
        let protocol = non_empty(port.protocol.as_ref()).map_or("TCP", String::as_str);
        if let Some(j) = ports
            .iter()
            .position(|p| p.port == number && p.protocol == protocol)
        {
            return Err(ctx.err(
                format!("spec.ports[{i}].port"),
                format!("{number}/{protocol} is already declared by spec.ports[{j}]; remove one"),
            ));
        }
        ports.push(ServicePort {
            name: non_empty(port.name.as_ref()).cloned(),
            port: number,
            target_port,
            app_protocol: non_empty(port.app_protocol.as_ref()).cloned(),
            protocol: protocol.to_owned(),
        });
    }

    let service = Service {
        name: ctx.name.clone(),
        namespace: ctx.namespace.clone(),
        vips,
        ports,
        selector: spec.selector.clone().filter(|s| !s.is_empty()),
        endpoints: Vec::new(),
        waypoint: waypoint(&labels, state.namespaces.get(&ctx.namespace)),
    };
    Ok((service, vip_fields))
}
