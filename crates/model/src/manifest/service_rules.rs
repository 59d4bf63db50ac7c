//! What the API server enforces on Services and EndpointSlices, beyond the schema: types,
//! ports, cluster IPs and their families, affinity and traffic policies; slice addresses of
//! the slice's family. Ranges and conflicts between services are the allocator's job.

use std::collections::HashSet;
use std::net::IpAddr;

use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::rules::{check_labels, invalid, FieldError, Rules};
use crate::labels::{validate_dns1035_label, validate_dns1123_label, validate_iana_svc_name};
use crate::service::{IpFamily, HEADLESS, MAX_AFFINITY_TIMEOUT_SECONDS, SERVICE_NAME_LABEL};

const PROTOCOLS: [&str; 3] = ["TCP", "UDP", "SCTP"];

fn reject(path: impl Into<String>, reason: impl Into<String>) -> FieldError {
    FieldError::Invalid { path: path.into(), reason: reason.into() }
}

/// One of `allowed`, or the error listing them.
fn one_of(path: &str, value: &str, allowed: &[&str]) -> Result<(), FieldError> {
    if allowed.contains(&value) {
        return Ok(());
    }
    Err(reject(path, format!("{value:?} is not supported: must be one of {}", allowed.join(", "))))
}

fn port_number(path: &str, port: i32) -> Result<(), FieldError> {
    if (1..=65535).contains(&port) {
        return Ok(());
    }
    Err(reject(path, format!("{port} is invalid: must be between 1 and 65535, inclusive")))
}

fn ip(path: &str, value: &str) -> Result<IpAddr, FieldError> {
    value.parse().map_err(|_| reject(path, format!("{value:?} is invalid: must be a valid IP address (e.g. 10.9.8.7 or 2001:db8::ffff)")))
}

// === impl Rules ===

impl Rules for Service {
    /// Service names are DNS-1035 labels: they become DNS names of their own.
    fn check_name(name: &str) -> Result<(), String> {
        validate_dns1035_label(name)
    }

    fn check_spec(&self) -> Result<(), FieldError> {
        let Some(spec) = &self.spec else {
            return Err(FieldError::Missing("spec.ports".to_owned()));
        };
        let type_ = spec.type_.as_deref().unwrap_or("ClusterIP");
        if type_ == "ExternalName" {
            return Err(reject("spec.type", "\"ExternalName\" is not supported by Sluice (it is DNS only; no dataplane programs it): use ClusterIP, NodePort or LoadBalancer"));
        }
        one_of("spec.type", type_, &["ClusterIP", "NodePort", "LoadBalancer"])?;
        check_labels("spec.selector", spec.selector.as_ref())?;
        let headless = check_cluster_ips(spec, type_)?;
        check_ports(spec, type_, headless)?;
        for (i, external) in spec.external_ips.iter().flatten().enumerate() {
            ip(&format!("spec.externalIPs[{i}]"), external)?;
        }
        check_affinity(spec)?;
        if let Some(policy) = spec.internal_traffic_policy.as_deref() {
            one_of("spec.internalTrafficPolicy", policy, &["Cluster", "Local"])?;
        }
        if let Some(policy) = spec.external_traffic_policy.as_deref() {
            one_of("spec.externalTrafficPolicy", policy, &["Cluster", "Local"])?;
            let external_ips = spec.external_ips.as_ref().is_some_and(|ips| !ips.is_empty());
            if type_ == "ClusterIP" && !external_ips {
                return Err(reject(
                    "spec.externalTrafficPolicy",
                    "may only be set for externally-accessible services (NodePort, LoadBalancer, or with spec.externalIPs)",
                ));
            }
        }
        let ingress = self.status.as_ref().and_then(|s| s.load_balancer.as_ref()).and_then(|lb| lb.ingress.as_ref());
        for (i, entry) in ingress.into_iter().flatten().enumerate() {
            if let Some(address) = &entry.ip {
                ip(&format!("status.loadBalancer.ingress[{i}].ip"), address)?;
            }
        }
        Ok(())
    }
}

/// Checks `clusterIP`, `clusterIPs`, `ipFamilies` and `ipFamilyPolicy` together; returns
/// whether the service is headless.
fn check_cluster_ips(spec: &ServiceSpec, type_: &str) -> Result<bool, FieldError> {
    let policy = spec.ip_family_policy.as_deref();
    if let Some(policy) = policy {
        one_of("spec.ipFamilyPolicy", policy, &["SingleStack", "PreferDualStack", "RequireDualStack"])?;
    }
    let families = spec.ip_families.as_deref().unwrap_or_default();
    let mut parsed = Vec::new();
    for (i, name) in families.iter().enumerate() {
        let path = format!("spec.ipFamilies[{i}]");
        let family =
            IpFamily::from_name(name).ok_or_else(|| reject(&path, format!("{name:?} is not supported: must be one of IPv4, IPv6")))?;
        if parsed.contains(&family) {
            return Err(reject(path, format!("duplicate family {name:?}")));
        }
        parsed.push(family);
    }
    let dual_stack_policy = matches!(policy, Some("PreferDualStack" | "RequireDualStack"));
    if parsed.len() > 1 && !dual_stack_policy {
        return Err(reject("spec.ipFamilyPolicy", "must be RequireDualStack or PreferDualStack when two ipFamilies are given"));
    }

    let cluster_ip = spec.cluster_ip.as_deref().filter(|ip| !ip.is_empty());
    let cluster_ips = spec.cluster_ips.as_deref().unwrap_or_default();
    if let (Some(ip), Some(first)) = (cluster_ip, cluster_ips.first()) {
        if ip != first {
            return Err(reject("spec.clusterIPs[0]", format!("{first:?} must be the same as spec.clusterIP ({ip:?})")));
        }
    }
    let headless = cluster_ip == Some(HEADLESS) || cluster_ips.first().map(String::as_str) == Some(HEADLESS);
    if headless {
        if cluster_ips.len() > 1 {
            return Err(reject("spec.clusterIPs", "must have one entry when the service is headless (\"None\")"));
        }
        if type_ != "ClusterIP" {
            return Err(reject("spec.clusterIP", format!("may not be \"None\" for {type_} services")));
        }
        return Ok(true);
    }
    if let Some(value) = cluster_ip {
        ip("spec.clusterIP", value)?;
    }
    if cluster_ips.len() > 2 {
        return Err(reject("spec.clusterIPs", "may have at most two entries (one per family)"));
    }
    let mut ip_families = Vec::new();
    for (i, value) in cluster_ips.iter().enumerate() {
        let path = format!("spec.clusterIPs[{i}]");
        if value == HEADLESS {
            return Err(reject(path, "\"None\" may only be the first and only entry"));
        }
        let family = IpFamily::of(ip(&path, value)?);
        if ip_families.contains(&family) {
            return Err(reject(path, "the two clusterIPs must be of different families (one IPv4, one IPv6)"));
        }
        if let Some(expected) = parsed.get(i) {
            if *expected != family {
                return Err(reject(
                    path,
                    format!("{value:?} is {family} but spec.ipFamilies[{i}] is {expected}: clusterIPs must follow the order of ipFamilies"),
                ));
            }
        }
        ip_families.push(family);
    }
    if ip_families.len() > 1 && !dual_stack_policy {
        return Err(reject("spec.ipFamilyPolicy", "must be RequireDualStack or PreferDualStack when two clusterIPs are given"));
    }
    Ok(false)
}

fn check_ports(spec: &ServiceSpec, type_: &str, headless: bool) -> Result<(), FieldError> {
    let ports = spec.ports.as_deref().unwrap_or_default();
    if ports.is_empty() && !headless {
        return Err(FieldError::Missing("spec.ports".to_owned()));
    }
    let mut names = HashSet::new();
    let mut numbers = HashSet::new();
    let mut node_ports = HashSet::new();
    let node_ports_allowed = matches!(type_, "NodePort" | "LoadBalancer");
    for (i, port) in ports.iter().enumerate() {
        let at = |field: &str| format!("spec.ports[{i}].{field}");
        check_port_name(port, ports.len(), &at("name"), &mut names)?;
        port_number(&at("port"), port.port)?;
        let protocol = port.protocol.as_deref().unwrap_or("TCP");
        one_of(&at("protocol"), protocol, &PROTOCOLS)?;
        if !numbers.insert((port.port, protocol)) {
            return Err(reject(at("port"), format!("duplicate port {}/{protocol}", port.port)));
        }
        match &port.target_port {
            Some(IntOrString::Int(target)) => port_number(&at("targetPort"), *target)?,
            Some(IntOrString::String(name)) => validate_iana_svc_name(name).map_err(|reason| invalid(&at("targetPort"), name, reason))?,
            None => {}
        }
        match port.node_port {
            None | Some(0) => {}
            Some(_) if !node_ports_allowed => {
                return Err(reject(at("nodePort"), format!("may not be used when spec.type is {type_:?}")));
            }
            Some(node_port) => {
                port_number(&at("nodePort"), node_port)?;
                if !node_ports.insert((node_port, protocol)) {
                    return Err(reject(at("nodePort"), format!("duplicate nodePort {node_port}/{protocol}")));
                }
            }
        }
    }
    Ok(())
}

/// Port names are optional for a single port, required and unique otherwise (endpoint slices
/// and SRV records tell the ports apart by name).
fn check_port_name<'p>(port: &'p ServicePort, count: usize, path: &str, names: &mut HashSet<&'p str>) -> Result<(), FieldError> {
    let name = port.name.as_deref().unwrap_or_default();
    if name.is_empty() {
        if count > 1 {
            return Err(FieldError::Missing(path.to_owned()));
        }
        return Ok(());
    }
    validate_dns1123_label(name).map_err(|reason| invalid(path, name, reason))?;
    if !names.insert(name) {
        return Err(reject(path, format!("duplicate port name {name:?}")));
    }
    Ok(())
}

fn check_affinity(spec: &ServiceSpec) -> Result<(), FieldError> {
    let affinity = spec.session_affinity.as_deref().unwrap_or("None");
    one_of("spec.sessionAffinity", affinity, &["None", "ClientIP"])?;
    let config = spec.session_affinity_config.as_ref();
    if affinity == "None" {
        if config.is_some_and(|c| c.client_ip.is_some()) {
            return Err(reject("spec.sessionAffinityConfig", "must not be set when spec.sessionAffinity is None"));
        }
        return Ok(());
    }
    let timeout = config.and_then(|c| c.client_ip.as_ref()).and_then(|c| c.timeout_seconds);
    if let Some(timeout) = timeout {
        if !(1..=MAX_AFFINITY_TIMEOUT_SECONDS).contains(&timeout) {
            return Err(reject(
                "spec.sessionAffinityConfig.clientIP.timeoutSeconds",
                format!("{timeout} is invalid: must be greater than 0 and less than or equal to {MAX_AFFINITY_TIMEOUT_SECONDS}"),
            ));
        }
    }
    Ok(())
}

impl Rules for EndpointSlice {
    fn check_spec(&self) -> Result<(), FieldError> {
        let labels = self.metadata.labels.as_ref();
        if labels.and_then(|l| l.get(SERVICE_NAME_LABEL)).is_none_or(|name| name.is_empty()) {
            return Err(reject(
                "metadata.labels",
                format!("{SERVICE_NAME_LABEL:?} is required: it names the Service (in the same namespace) these endpoints belong to"),
            ));
        }
        let family = match self.address_type.as_str() {
            "IPv4" => IpFamily::V4,
            "IPv6" => IpFamily::V6,
            "FQDN" => {
                return Err(reject(
                    "addressType",
                    "\"FQDN\" is not supported by Sluice: the datapath needs IP addresses (use IPv4 or IPv6)",
                ))
            }
            "" => return Err(FieldError::Missing("addressType".to_owned())),
            other => return Err(reject("addressType", format!("{other:?} is not supported: must be one of IPv4, IPv6"))),
        };
        if self.endpoints.len() > 1000 {
            return Err(reject("endpoints", "must have at most 1000 items"));
        }
        for (i, endpoint) in self.endpoints.iter().enumerate() {
            if endpoint.addresses.is_empty() {
                return Err(FieldError::Missing(format!("endpoints[{i}].addresses")));
            }
            for (j, address) in endpoint.addresses.iter().enumerate() {
                let path = format!("endpoints[{i}].addresses[{j}]");
                let found = IpFamily::of(ip(&path, address)?);
                if found != family {
                    return Err(reject(path, format!("{address:?} is {found}, but addressType is {family}")));
                }
            }
            if let Some(node) = endpoint.node_name.as_deref().filter(|n| !n.is_empty()) {
                crate::labels::validate_dns1123_subdomain(node)
                    .map_err(|reason| invalid(&format!("endpoints[{i}].nodeName"), node, reason))?;
            }
        }
        let ports = self.ports.as_deref().unwrap_or_default();
        if ports.len() > 100 {
            return Err(reject("ports", "must have at most 100 items"));
        }
        let mut names = HashSet::new();
        for (i, port) in ports.iter().enumerate() {
            let at = |field: &str| format!("ports[{i}].{field}");
            let name = port.name.as_deref().unwrap_or_default();
            if !name.is_empty() {
                validate_dns1123_label(name).map_err(|reason| invalid(&at("name"), name, reason))?;
            }
            if !names.insert(name) {
                return Err(reject(at("name"), format!("duplicate port name {name:?}")));
            }
            // Kubernetes reads a missing port as "all ports"; the datapath programs one port
            // per backend, so Sluice needs the number.
            let Some(number) = port.port else { return Err(FieldError::Missing(at("port"))) };
            port_number(&at("port"), number)?;
            one_of(&at("protocol"), port.protocol.as_deref().unwrap_or("TCP"), &PROTOCOLS)?;
        }
        Ok(())
    }
}
