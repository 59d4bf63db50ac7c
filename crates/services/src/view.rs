//! Compact views of Services and EndpointSlices: the fields the service tables are computed
//! from, already parsed, and nothing else. An agent keeps every Service and EndpointSlice of
//! the cluster; as Kubernetes types an EndpointSlice of ten endpoints takes about 4 KiB (an
//! `Endpoint` is 328 bytes before any of its strings), as a view under 500 bytes. A view
//! keeps the computation's meaning exactly: whatever [`crate::desired`] reads of an object
//! becomes the same value here (a port of unknown protocol, an endpoint without a parseable
//! address are dropped where the computation would skip them).

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::desired::{Family, Protocol, DEFAULT_AFFINITY_TIMEOUT, SERVICE_NAME_LABEL};

/// A Service's `spec.type`, for the frontends it has.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ServiceKind {
    ClusterIp,
    NodePort,
    LoadBalancer,
}

/// What the service tables need of a Service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceView {
    pub namespace: String,
    pub name: String,
    /// `None` when the Service has no frontends to program: no spec, no name, or ExternalName.
    pub kind: Option<ServiceKind>,
    /// One cluster IP per family, in `spec.ipFamilies` order (else the cluster IPs' order);
    /// empty for a headless service.
    pub cluster_ips: Box<[(Family, IpAddr)]>,
    /// `externalTrafficPolicy: Local`.
    pub external_local: bool,
    /// `internalTrafficPolicy: Local`.
    pub internal_local: bool,
    /// Seconds of ClientIP session affinity, when the Service has it.
    pub affinity_timeout: Option<u32>,
    pub external_ips: Box<[IpAddr]>,
    /// `status.loadBalancer.ingress[].ip` of a LoadBalancer, except `ipMode: Proxy`.
    pub load_balancer_ips: Box<[IpAddr]>,
    /// The ports with a known protocol and a non-zero number.
    pub ports: Box<[PortView]>,
    /// `spec.selector` when it selects something: the Service's slices are derived from pods.
    pub selector: Option<BTreeMap<String, String>>,
    /// `spec.publishNotReadyAddresses` (for derived slices).
    pub publish_not_ready: bool,
}

/// A service port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortView {
    /// Empty for the unnamed port of a single-port service.
    pub name: String,
    pub port: u16,
    pub protocol: Protocol,
    /// The node port, on a NodePort or LoadBalancer service only.
    pub node_port: Option<u16>,
    /// `targetPort` (for derived slices).
    pub target_port: Option<IntOrString>,
}

/// What the service tables need of an EndpointSlice.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SliceView {
    pub namespace: String,
    /// The Service it belongs to (`kubernetes.io/service-name`); `None`: to none.
    pub service: Option<String>,
    /// `addressType`; `None` for FQDN.
    pub family: Option<Family>,
    pub ports: Box<[SlicePort]>,
    /// The endpoints with a parseable first address (the only one consumers use).
    pub endpoints: Box<[EndpointView]>,
}

/// A port of a slice.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SlicePort {
    pub name: String,
    pub port: Option<u16>,
    /// `None` for a protocol Sluice does not know (it matches no service port).
    pub protocol: Option<Protocol>,
}

/// An endpoint of a slice, its conditions defaulted as the API documents them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EndpointView {
    pub addr: IpAddr,
    pub ready: bool,
    pub serving: bool,
    pub terminating: bool,
    /// `nodeName`, shared by the endpoints of a slice on the same node.
    pub node: Option<Arc<str>>,
}

// === impl ServiceView ===

impl ServiceView {
    pub fn of(service: &Service) -> Self {
        let namespace = service.metadata.namespace.clone().unwrap_or_default();
        let name = service.metadata.name.clone();
        let empty = |name: Option<String>| Self {
            namespace: namespace.clone(),
            name: name.unwrap_or_default(),
            kind: None,
            cluster_ips: Box::default(),
            external_local: false,
            internal_local: false,
            affinity_timeout: None,
            external_ips: Box::default(),
            load_balancer_ips: Box::default(),
            ports: Box::default(),
            selector: None,
            publish_not_ready: false,
        };
        let (Some(spec), Some(name)) = (&service.spec, name.clone()) else { return empty(name) };
        let kind = match spec.type_.as_deref().unwrap_or("ClusterIP") {
            "ExternalName" => return empty(Some(name)),
            "NodePort" => ServiceKind::NodePort,
            "LoadBalancer" => ServiceKind::LoadBalancer,
            _ => ServiceKind::ClusterIp,
        };
        let has_node_ports = kind != ServiceKind::ClusterIp;
        let ports = spec
            .ports
            .iter()
            .flatten()
            .filter_map(|port| {
                Some(PortView {
                    name: port.name.clone().unwrap_or_default(),
                    port: u16::try_from(port.port).ok().filter(|p| *p != 0)?,
                    protocol: Protocol::from_k8s(port.protocol.as_deref())?,
                    node_port: port.node_port.and_then(|p| u16::try_from(p).ok()).filter(|p| *p != 0 && has_node_ports),
                    target_port: port.target_port.clone(),
                })
            })
            .collect();
        let ingress = service
            .status
            .as_ref()
            .filter(|_| kind == ServiceKind::LoadBalancer)
            .and_then(|s| s.load_balancer.as_ref())
            .and_then(|lb| lb.ingress.as_ref());
        Self {
            namespace,
            name,
            kind: Some(kind),
            cluster_ips: cluster_ips(spec).into(),
            external_local: spec.external_traffic_policy.as_deref() == Some("Local"),
            internal_local: spec.internal_traffic_policy.as_deref() == Some("Local"),
            affinity_timeout: (spec.session_affinity.as_deref() == Some("ClientIP")).then(|| {
                spec.session_affinity_config
                    .as_ref()
                    .and_then(|c| c.client_ip.as_ref())
                    .and_then(|c| c.timeout_seconds)
                    .and_then(|t| u32::try_from(t).ok())
                    .filter(|t| *t > 0)
                    .unwrap_or(DEFAULT_AFFINITY_TIMEOUT)
            }),
            external_ips: spec.external_ips.iter().flatten().filter_map(|ip| ip.parse().ok()).collect(),
            load_balancer_ips: ingress
                .into_iter()
                .flatten()
                .filter(|ingress| ingress.ip_mode.as_deref() != Some("Proxy"))
                .filter_map(|ingress| ingress.ip.as_deref()?.parse().ok())
                .collect(),
            ports,
            selector: spec.selector.clone().filter(|s| !s.is_empty()),
            publish_not_ready: spec.publish_not_ready_addresses == Some(true),
        }
    }

    /// The Service as far as deriving its endpoint slices from pods reads it, for a selector
    /// service with cluster IPs (the slices of one without are never programmed).
    pub fn derivable(&self) -> Option<Service> {
        let selector = self.selector.clone()?;
        if self.kind.is_none() || self.cluster_ips.is_empty() {
            return None;
        }
        let family = |f: Family| match f {
            Family::V4 => "IPv4".to_owned(),
            Family::V6 => "IPv6".to_owned(),
        };
        let ports = self
            .ports
            .iter()
            .map(|p| ServicePort {
                name: (!p.name.is_empty()).then(|| p.name.clone()),
                port: i32::from(p.port),
                protocol: Some(p.protocol.as_str().to_owned()),
                target_port: p.target_port.clone(),
                ..Default::default()
            })
            .collect();
        Some(Service {
            metadata: ObjectMeta { namespace: Some(self.namespace.clone()), name: Some(self.name.clone()), ..Default::default() },
            spec: Some(ServiceSpec {
                selector: Some(selector),
                publish_not_ready_addresses: Some(self.publish_not_ready),
                ip_families: Some(self.cluster_ips.iter().map(|(f, _)| family(*f)).collect()),
                cluster_ips: Some(self.cluster_ips.iter().map(|(_, ip)| ip.to_string()).collect()),
                ports: Some(ports),
                ..Default::default()
            }),
            status: None,
        })
    }
}

/// One cluster IP per family, in family order. Headless ("None") and unset cluster IPs do not
/// parse: such services have none.
fn cluster_ips(spec: &ServiceSpec) -> Vec<(Family, IpAddr)> {
    let ips: Vec<IpAddr> = match spec.cluster_ips.as_deref() {
        Some(ips) if !ips.is_empty() => ips.iter().filter_map(|ip| ip.parse().ok()).collect(),
        _ => spec.cluster_ip.iter().filter_map(|ip| ip.parse().ok()).collect(),
    };
    let mut families: Vec<Family> = match spec.ip_families.as_deref() {
        Some(families) if !families.is_empty() => families.iter().filter_map(|f| Family::from_k8s(f)).collect(),
        _ => ips.iter().map(|ip| Family::of(*ip)).collect(),
    };
    families.dedup();
    families.into_iter().filter_map(|family| Some((family, *ips.iter().find(|ip| Family::of(**ip) == family)?))).collect()
}

impl From<&Service> for ServiceView {
    fn from(service: &Service) -> Self {
        Self::of(service)
    }
}

// === impl SliceView ===

impl From<&EndpointSlice> for SliceView {
    fn from(slice: &EndpointSlice) -> Self {
        Self::of(slice)
    }
}

impl SliceView {
    pub fn of(slice: &EndpointSlice) -> Self {
        let mut nodes: Vec<Arc<str>> = Vec::new();
        let endpoints = slice
            .endpoints
            .iter()
            .filter_map(|endpoint| {
                let addr: IpAddr = endpoint.addresses.first()?.parse().ok()?;
                let conditions = endpoint.conditions.as_ref();
                let ready = conditions.and_then(|c| c.ready).unwrap_or(true);
                let node = endpoint.node_name.as_deref().map(|name| match nodes.iter().find(|n| &***n == name) {
                    Some(shared) => shared.clone(),
                    None => {
                        let new: Arc<str> = name.into();
                        nodes.push(new.clone());
                        new
                    }
                });
                Some(EndpointView {
                    addr,
                    ready,
                    serving: conditions.and_then(|c| c.serving).unwrap_or(ready),
                    terminating: conditions.and_then(|c| c.terminating).unwrap_or(false),
                    node,
                })
            })
            .collect();
        Self {
            namespace: slice.metadata.namespace.clone().unwrap_or_default(),
            service: slice.metadata.labels.as_ref().and_then(|l| l.get(SERVICE_NAME_LABEL)).cloned(),
            family: Family::from_k8s(&slice.address_type),
            ports: slice
                .ports
                .iter()
                .flatten()
                .map(|p| SlicePort {
                    name: p.name.clone().unwrap_or_default(),
                    port: p.port.and_then(|p| u16::try_from(p).ok()),
                    protocol: Protocol::from_k8s(p.protocol.as_deref()),
                })
                .collect(),
            endpoints,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_service_view_keeps_what_the_tables_read() {
        let service: Service = serde_json::from_value(json!({
            "metadata": {"namespace": "shop", "name": "web"},
            "spec": {
                "type": "LoadBalancer",
                "clusterIPs": ["10.96.0.10", "fd00::10"],
                "ipFamilies": ["IPv6", "IPv4"],
                "externalTrafficPolicy": "Local",
                "sessionAffinity": "ClientIP",
                "externalIPs": ["192.0.2.7", "not-an-ip"],
                "selector": {"app": "web"},
                "ports": [
                    {"name": "http", "port": 80, "targetPort": "http", "nodePort": 30080},
                    {"name": "odd", "port": 81, "protocol": "ICMP"},
                ],
            },
            "status": {"loadBalancer": {"ingress": [{"ip": "198.51.100.1"}, {"ip": "198.51.100.2", "ipMode": "Proxy"}]}},
        }))
        .unwrap();
        let view = ServiceView::of(&service);
        assert_eq!(view.kind, Some(ServiceKind::LoadBalancer));
        assert_eq!(
            &*view.cluster_ips,
            &[(Family::V6, "fd00::10".parse().unwrap()), (Family::V4, "10.96.0.10".parse().unwrap())],
            "one cluster IP per family, in ipFamilies order"
        );
        assert!(view.external_local && !view.internal_local);
        assert_eq!(view.affinity_timeout, Some(DEFAULT_AFFINITY_TIMEOUT), "ClientIP without a timeout gets the default");
        assert_eq!(&*view.external_ips, &["192.0.2.7".parse::<IpAddr>().unwrap()], "unparseable external IPs are dropped");
        assert_eq!(&*view.load_balancer_ips, &["198.51.100.1".parse::<IpAddr>().unwrap()], "ipMode Proxy is no frontend");
        assert_eq!(view.ports.len(), 1, "a port of unknown protocol is dropped");
        assert_eq!(view.ports[0].node_port, Some(30080));
        let derivable = view.derivable().expect("a selector service with cluster IPs derives slices");
        let spec = derivable.spec.unwrap();
        assert_eq!(spec.ip_families, Some(vec!["IPv6".to_owned(), "IPv4".to_owned()]));
        assert_eq!(spec.ports.unwrap()[0].target_port, Some(IntOrString::String("http".into())));
    }

    #[test]
    fn external_names_and_headless_services_program_nothing() {
        let external: Service =
            serde_json::from_value(json!({"metadata": {"name": "x"}, "spec": {"type": "ExternalName", "externalName": "example.org"}}))
                .unwrap();
        assert_eq!(ServiceView::of(&external).kind, None);
        let headless: Service =
            serde_json::from_value(json!({"metadata": {"name": "h"}, "spec": {"clusterIP": "None", "selector": {"a": "b"}}})).unwrap();
        let view = ServiceView::of(&headless);
        assert!(view.cluster_ips.is_empty(), "headless: no cluster IP");
        assert!(view.derivable().is_none(), "a headless service's slices are never programmed");
    }

    #[test]
    fn a_slice_view_defaults_conditions_and_shares_node_names() {
        let slice: EndpointSlice = serde_json::from_value(json!({
            "metadata": {"namespace": "shop", "name": "web-1", "labels": {SERVICE_NAME_LABEL: "web"}},
            "addressType": "IPv4",
            "ports": [{"port": 8080, "protocol": "UDP"}],
            "endpoints": [
                {"addresses": ["10.0.1.1"], "nodeName": "a"},
                {"addresses": ["10.0.1.2"], "nodeName": "a", "conditions": {"ready": false}},
                {"addresses": ["bogus"], "nodeName": "b"},
            ],
        }))
        .unwrap();
        let view = SliceView::of(&slice);
        assert_eq!(view.service.as_deref(), Some("web"));
        assert_eq!(view.family, Some(Family::V4));
        assert_eq!(&*view.ports, &[SlicePort { name: String::new(), port: Some(8080), protocol: Some(Protocol::Udp) }]);
        assert_eq!(view.endpoints.len(), 2, "an endpoint without a parseable address is dropped");
        assert!(view.endpoints[0].ready && view.endpoints[0].serving && !view.endpoints[0].terminating, "conditions default to ready");
        assert!(!view.endpoints[1].ready && !view.endpoints[1].serving, "serving defaults to ready");
        let (a, b) = (view.endpoints[0].node.as_ref().unwrap(), view.endpoints[1].node.as_ref().unwrap());
        assert!(Arc::ptr_eq(a, b), "one node name, one allocation");
    }
}
