//! Endpoint slices derived from pods, as Kubernetes' endpoint-slice controller makes them:
//! the pods a service selects, one slice per address family and per set of resolved ports,
//! with ready, serving and terminating conditions.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{ObjectReference, Pod, Service, ServicePort};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::{IpFamily, SERVICE_NAME_LABEL};

/// Label naming what manages a slice; derived slices carry [`SLUICE_CONTROLLER`].
pub const MANAGED_BY_LABEL: &str = "endpointslice.kubernetes.io/managed-by";

/// The `managed-by` value of slices Sluice derives from pods.
pub const SLUICE_CONTROLLER: &str = "endpointslice-controller.sluice.io";

/// A service port resolved for one pod: (name, number, protocol, appProtocol). Ordered, so
/// pods with the same resolution share a slice.
type ResolvedPort = (String, i32, String, Option<String>);

/// The slices Kubernetes' endpoint-slice controller would make for `service` from `pods`.
/// Empty for a service without a selector (its slices are given by hand). Otherwise one
/// slice per family of the service (`spec.ipFamilies`, else its cluster IPs' families, else
/// IPv4), named `<service>-<ipv4|ipv6>`; pods whose named target ports resolve to different
/// numbers go to further slices, `<service>-<family>-2` and on. A family with no endpoints
/// still gets its (empty) slice, as upstream.
pub fn derive_endpoint_slices<'a>(service: &Service, pods: impl IntoIterator<Item = &'a Pod>) -> Vec<EndpointSlice> {
    let Some(spec) = &service.spec else { return Vec::new() };
    let Some(selector) = spec.selector.as_ref().filter(|s| !s.is_empty()) else { return Vec::new() };
    let namespace = service.metadata.namespace.as_deref().unwrap_or("default");
    let name = service.metadata.name.as_deref().unwrap_or_default();
    let publish_not_ready = spec.publish_not_ready_addresses == Some(true);
    let ports = spec.ports.as_deref().unwrap_or_default();

    let selected: Vec<&Pod> = pods
        .into_iter()
        .filter(|pod| pod.metadata.namespace.as_deref().unwrap_or("default") == namespace)
        .filter(|pod| {
            let labels = pod.metadata.labels.as_ref();
            selector.iter().all(|(key, value)| labels.and_then(|l| l.get(key)) == Some(value))
        })
        .filter(|pod| !matches!(phase(pod), "Succeeded" | "Failed"))
        .collect();

    let mut slices = Vec::new();
    for family in service_families(service) {
        let mut groups: BTreeMap<Vec<ResolvedPort>, Vec<Endpoint>> = BTreeMap::new();
        for pod in &selected {
            let Some(address) = pod_ips(pod).into_iter().find(|ip| IpFamily::of_text(ip) == Some(family)) else { continue };
            let resolved: Vec<ResolvedPort> = ports.iter().filter_map(|port| resolve_port(port, pod)).collect();
            groups.entry(resolved).or_default().push(endpoint(pod, address, publish_not_ready));
        }
        if groups.is_empty() {
            groups.insert(Vec::new(), Vec::new());
        }
        let base = format!("{name}-{}", family.lowercase());
        for (i, (resolved, mut endpoints)) in groups.into_iter().enumerate() {
            endpoints.sort_by(|a, b| target_name(a).cmp(target_name(b)));
            let slice_name = if i == 0 { base.clone() } else { format!("{base}-{}", i + 1) };
            slices.push(slice(namespace, name, slice_name, family, resolved, endpoints));
        }
    }
    slices
}

/// The families the service's slices are for.
fn service_families(service: &Service) -> Vec<IpFamily> {
    let spec = service.spec.as_ref();
    let mut families: Vec<IpFamily> =
        spec.and_then(|s| s.ip_families.as_ref()).into_iter().flatten().filter_map(|f| IpFamily::from_name(f)).collect();
    if families.is_empty() {
        families = spec.and_then(|s| s.cluster_ips.as_ref()).into_iter().flatten().filter_map(|ip| IpFamily::of_text(ip)).collect();
    }
    if families.is_empty() {
        families.push(IpFamily::V4);
    }
    families
}

fn phase(pod: &Pod) -> &str {
    pod.status.as_ref().and_then(|s| s.phase.as_deref()).unwrap_or("Pending")
}

/// `status.podIPs`, or `status.podIP` when that is all there is.
fn pod_ips(pod: &Pod) -> Vec<String> {
    let Some(status) = &pod.status else { return Vec::new() };
    match &status.pod_ips {
        Some(ips) if !ips.is_empty() => ips.iter().map(|ip| ip.ip.clone()).collect(),
        _ => status.pod_ip.iter().cloned().collect(),
    }
}

/// The port a service port reaches on this pod: a number as given (the service port when
/// unset), a name looked up in the pod's container ports of the same protocol. `None` when
/// the pod has no port of that name.
fn resolve_port(port: &ServicePort, pod: &Pod) -> Option<ResolvedPort> {
    let protocol = port.protocol.clone().unwrap_or_else(|| "TCP".to_owned());
    let number = match &port.target_port {
        None => port.port,
        Some(IntOrString::Int(number)) => *number,
        Some(IntOrString::String(name)) => {
            let containers = pod.spec.as_ref().map(|s| s.containers.as_slice()).unwrap_or_default();
            let mut container_ports = containers.iter().flat_map(|c| c.ports.iter().flatten());
            let found =
                container_ports.find(|p| p.name.as_deref() == Some(name.as_str()) && p.protocol.as_deref().unwrap_or("TCP") == protocol)?;
            found.container_port
        }
    };
    Some((port.name.clone().unwrap_or_default(), number, protocol, port.app_protocol.clone()))
}

/// Upstream's conditions: serving is "the pod is ready" (here: Running, and a Ready condition
/// that is not false, since lab pods have no probes), terminating is "being deleted", and
/// ready is serving and not terminating, or always with publishNotReadyAddresses.
fn endpoint(pod: &Pod, address: String, publish_not_ready: bool) -> Endpoint {
    let status = pod.status.as_ref();
    let ready_condition = status.and_then(|s| s.conditions.as_ref()).and_then(|c| c.iter().find(|c| c.type_ == "Ready"));
    let serving = phase(pod) == "Running" && ready_condition.is_none_or(|c| c.status == "True");
    let terminating = pod.metadata.deletion_timestamp.is_some();
    let ready = publish_not_ready || (serving && !terminating);
    Endpoint {
        addresses: vec![address],
        conditions: Some(EndpointConditions { ready: Some(ready), serving: Some(serving), terminating: Some(terminating) }),
        node_name: pod.spec.as_ref().and_then(|s| s.node_name.clone()),
        target_ref: Some(ObjectReference {
            kind: Some("Pod".to_owned()),
            namespace: pod.metadata.namespace.clone(),
            name: pod.metadata.name.clone(),
            uid: pod.metadata.uid.clone(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn target_name(endpoint: &Endpoint) -> &str {
    endpoint.target_ref.as_ref().and_then(|t| t.name.as_deref()).unwrap_or_default()
}

fn slice(
    namespace: &str,
    service: &str,
    name: String,
    family: IpFamily,
    ports: Vec<ResolvedPort>,
    endpoints: Vec<Endpoint>,
) -> EndpointSlice {
    let labels =
        BTreeMap::from([(SERVICE_NAME_LABEL.to_owned(), service.to_owned()), (MANAGED_BY_LABEL.to_owned(), SLUICE_CONTROLLER.to_owned())]);
    let ports = ports
        .into_iter()
        .map(|(name, port, protocol, app_protocol)| EndpointPort {
            name: Some(name),
            port: Some(port),
            protocol: Some(protocol),
            app_protocol,
        })
        .collect();
    EndpointSlice {
        metadata: ObjectMeta { name: Some(name), namespace: Some(namespace.to_owned()), labels: Some(labels), ..Default::default() },
        address_type: family.as_str().to_owned(),
        endpoints,
        ports: Some(ports),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{Container, ContainerPort, PodCondition, PodIP, PodSpec, PodStatus, ServiceSpec};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    fn pod(namespace: &str, name: &str, app: &str, ips: &[&str]) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some(namespace.into()),
                uid: Some(format!("uid-{name}")),
                labels: Some(BTreeMap::from([("app".to_owned(), app.to_owned())])),
                ..Default::default()
            },
            spec: Some(PodSpec {
                node_name: Some("node0".into()),
                containers: vec![Container { name: "c".into(), ..Default::default() }],
                ..Default::default()
            }),
            status: Some(PodStatus {
                phase: Some("Running".into()),
                pod_ips: Some(ips.iter().map(|ip| PodIP { ip: ip.to_string() }).collect()),
                ..Default::default()
            }),
        }
    }

    fn with_named_port(mut pod: Pod, name: &str, number: i32) -> Pod {
        if let Some(container) = pod.spec.as_mut().and_then(|s| s.containers.first_mut()) {
            container.ports = Some(vec![ContainerPort { name: Some(name.into()), container_port: number, ..Default::default() }]);
        }
        pod
    }

    fn service(families: &[&str], target: IntOrString) -> Service {
        Service {
            metadata: ObjectMeta { name: Some("web".into()), namespace: Some("shop".into()), ..Default::default() },
            spec: Some(ServiceSpec {
                selector: Some(BTreeMap::from([("app".to_owned(), "web".to_owned())])),
                ip_families: Some(families.iter().map(|f| f.to_string()).collect()),
                ports: Some(vec![ServicePort {
                    name: Some("http".into()),
                    port: 80,
                    protocol: Some("TCP".into()),
                    target_port: Some(target),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    /// A slice as (name, [(pod, address)], [port numbers]).
    type Summary = (String, Vec<(String, String)>, Vec<i32>);

    fn summary(slices: &[EndpointSlice]) -> Vec<Summary> {
        slices
            .iter()
            .map(|s| {
                let endpoints = s.endpoints.iter().map(|e| (target_name(e).to_owned(), e.addresses.join(","))).collect();
                let ports = s.ports.iter().flatten().filter_map(|p| p.port).collect();
                (s.metadata.name.clone().unwrap_or_default(), endpoints, ports)
            })
            .collect()
    }

    fn conditions(slices: &[EndpointSlice], pod: &str) -> Option<(bool, bool, bool)> {
        let endpoint = slices.iter().flat_map(|s| &s.endpoints).find(|e| target_name(e) == pod)?;
        let c = endpoint.conditions.as_ref()?;
        Some((c.ready?, c.serving?, c.terminating?))
    }

    fn owned(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect()
    }

    #[test]
    fn selector_matches_labels_in_the_service_namespace_only() {
        let pods = [
            pod("shop", "web-1", "web", &["198.19.0.5"]),
            pod("shop", "db-1", "db", &["198.19.0.6"]),
            pod("other", "web-2", "web", &["198.19.0.7"]),
        ];
        let slices = derive_endpoint_slices(&service(&["IPv4"], IntOrString::Int(8080)), &pods);
        assert_eq!(summary(&slices), vec![("web-ipv4".to_owned(), owned(&[("web-1", "198.19.0.5")]), vec![8080])], "only web-1 in shop");
        let slice = &slices[0];
        let labels = slice.metadata.labels.clone().unwrap_or_default();
        assert_eq!(labels.get(SERVICE_NAME_LABEL).map(String::as_str), Some("web"), "service-name label");
        assert_eq!(labels.get(MANAGED_BY_LABEL).map(String::as_str), Some(SLUICE_CONTROLLER), "managed-by label");
        let target = slice.endpoints[0].target_ref.clone().unwrap_or_default();
        assert_eq!(
            (target.kind.as_deref(), target.namespace.as_deref(), target.uid.as_deref()),
            (Some("Pod"), Some("shop"), Some("uid-web-1")),
            "targetRef"
        );
        assert_eq!(slice.endpoints[0].node_name.as_deref(), Some("node0"), "nodeName");
    }

    #[test]
    fn services_without_selector_get_no_derived_slices() {
        let mut without = service(&["IPv4"], IntOrString::Int(80));
        without.spec.iter_mut().for_each(|s| s.selector = None);
        assert!(derive_endpoint_slices(&without, &[pod("shop", "web-1", "web", &["198.19.0.5"])]).is_empty(), "no selector, no slices");
        let empty = derive_endpoint_slices(&service(&["IPv4"], IntOrString::Int(80)), &[]);
        assert_eq!(summary(&empty), vec![("web-ipv4".to_owned(), vec![], vec![])], "no matching pods: one empty slice, as upstream");
    }

    #[test]
    fn named_target_ports_resolve_per_pod() {
        let pods = [
            with_named_port(pod("shop", "a", "web", &["198.19.0.1"]), "http", 8080),
            with_named_port(pod("shop", "b", "web", &["198.19.0.2"]), "http", 9090),
            with_named_port(pod("shop", "c", "web", &["198.19.0.3"]), "http", 8080),
            pod("shop", "d", "web", &["198.19.0.4"]),
        ];
        let slices = derive_endpoint_slices(&service(&["IPv4"], IntOrString::String("http".into())), &pods);
        assert_eq!(
            summary(&slices),
            vec![
                ("web-ipv4".to_owned(), owned(&[("d", "198.19.0.4")]), vec![]),
                ("web-ipv4-2".to_owned(), owned(&[("a", "198.19.0.1"), ("c", "198.19.0.3")]), vec![8080]),
                ("web-ipv4-3".to_owned(), owned(&[("b", "198.19.0.2")]), vec![9090]),
            ],
            "one slice per resolution; a pod without the name has no port for it"
        );
    }

    #[test]
    fn ready_serving_and_terminating() {
        let mut not_ready = pod("shop", "not-ready", "web", &["198.19.0.2"]);
        if let Some(status) = not_ready.status.as_mut() {
            status.conditions = Some(vec![PodCondition { type_: "Ready".into(), status: "False".into(), ..Default::default() }]);
        }
        let mut terminating = pod("shop", "terminating", "web", &["198.19.0.3"]);
        terminating.metadata.deletion_timestamp = Some(Time(Default::default()));
        let mut pending = pod("shop", "pending", "web", &["198.19.0.4"]);
        let mut succeeded = pod("shop", "succeeded", "web", &["198.19.0.5"]);
        pending.status.iter_mut().for_each(|s| s.phase = Some("Pending".into()));
        succeeded.status.iter_mut().for_each(|s| s.phase = Some("Succeeded".into()));
        let pods = [pod("shop", "running", "web", &["198.19.0.1"]), not_ready, terminating, pending, succeeded];

        let slices = derive_endpoint_slices(&service(&["IPv4"], IntOrString::Int(80)), &pods);
        assert_eq!(conditions(&slices, "running"), Some((true, true, false)), "Running without a Ready condition is ready");
        assert_eq!(conditions(&slices, "not-ready"), Some((false, false, false)), "Ready=False is neither ready nor serving");
        assert_eq!(conditions(&slices, "terminating"), Some((false, true, true)), "terminating serves but is not ready");
        assert_eq!(conditions(&slices, "pending"), Some((false, false, false)), "Pending is not ready");
        assert_eq!(conditions(&slices, "succeeded"), None, "Succeeded pods are left out");

        let mut publish = service(&["IPv4"], IntOrString::Int(80));
        publish.spec.iter_mut().for_each(|s| s.publish_not_ready_addresses = Some(true));
        let slices = derive_endpoint_slices(&publish, &pods);
        assert_eq!(conditions(&slices, "not-ready"), Some((true, false, false)), "publishNotReadyAddresses makes it ready");
        assert_eq!(conditions(&slices, "terminating"), Some((true, true, true)), "even while terminating");
    }

    #[test]
    fn dual_stack_gets_a_slice_per_family() {
        let pods = [pod("shop", "dual", "web", &["198.19.0.1", "2001:2:0:1::5"]), pod("shop", "v4", "web", &["198.19.0.2"])];
        let slices = derive_endpoint_slices(&service(&["IPv6", "IPv4"], IntOrString::Int(80)), &pods);
        assert_eq!(
            summary(&slices),
            vec![
                ("web-ipv6".to_owned(), owned(&[("dual", "2001:2:0:1::5")]), vec![80]),
                ("web-ipv4".to_owned(), owned(&[("dual", "198.19.0.1"), ("v4", "198.19.0.2")]), vec![80]),
            ],
            "IPv6 slice skips the IPv4-only pod"
        );
        assert_eq!(slices[0].address_type, "IPv6", "address type of the first slice");
    }
}
