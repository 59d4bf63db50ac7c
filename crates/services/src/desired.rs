//! The services this node must program, computed from what is (Services and EndpointSlices),
//! never from the event that woke the reconciler: frontends (address, port, protocol, scope)
//! pointing at backend sets, with the semantics of kube-proxy and Cilium.
//!
//! Scopes. The datapath looks a frontend up with the scope of the packet first (Internal for
//! this node's pods and processes, External for traffic arriving from outside the node) and
//! then with Scope::External, so an External key serves both unless an Internal one exists.
//! Each service port and family has at most two backend sets:
//! - the External set, drawn by `externalTrafficPolicy`: all endpoints, or only this node's
//!   when `Local` (then the node keeps the client source, `Frontend::local_only`);
//! - the Internal set, for frontends whose callers must see other endpoints than the External
//!   set holds.
//!
//! Frontends:
//! - ClusterIP: an External key only. Its set follows `internalTrafficPolicy` (all endpoints,
//!   or only this node's when `Local`): the External set when that gives the same endpoints,
//!   else the Internal set. (ClusterIP is internal traffic for Kubernetes, so
//!   `externalTrafficPolicy: Local` must not narrow it.)
//! - NodePort (on each address of this node of the family), ExternalIp and LoadBalancer
//!   (`status.loadBalancer.ingress[].ip`, except `ipMode: Proxy`, whose traffic arrives at the
//!   node addresses): an External key on the External set. With `externalTrafficPolicy: Local`
//!   the same frontends get an Internal key on the Internal set holding all endpoints: pods and
//!   processes of the cluster reach every endpoint, as in Kubernetes.
//!
//! When two services claim the same frontend (an external IP shared by mistake), the first in
//! (namespace, name) order keeps it.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;

use crate::view::{EndpointView, ServiceView, SliceView};

/// The label that ties an EndpointSlice to its Service (in the same namespace).
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// The ClientIP session affinity timeout when the Service does not set one (Kubernetes'
/// default, three hours).
pub const DEFAULT_AFFINITY_TIMEOUT: u32 = 10800;

/// A transport protocol a service port can use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
}

/// Where a packet comes from, as the datapath sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Scope {
    /// Traffic arriving from outside the node (the uplink).
    External,
    /// Traffic from this node's pods and processes.
    Internal,
}

/// An address family.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Family {
    V4,
    V6,
}

/// Which Kubernetes address of a service a frontend is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FrontendKind {
    ClusterIp,
    NodePort,
    ExternalIp,
    LoadBalancer,
}

/// What the computation needs to know of this node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeInfo {
    /// The Kubernetes node name, compared with `Endpoint.nodeName` to find local backends.
    pub name: String,
    /// This node's addresses: NodePort frontends are programmed on each.
    pub addresses: Vec<IpAddr>,
}

/// A frontend as the datapath looks it up.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FrontendKey {
    pub addr: IpAddr,
    pub port: u16,
    pub protocol: Protocol,
    pub scope: Scope,
}

/// Names a backend set: one per service port, family and scope.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SetKey {
    pub namespace: String,
    pub service: String,
    /// The service port's name; empty for the unnamed port of a single-port service.
    pub port_name: String,
    pub family: Family,
    pub scope: Scope,
}

/// What a frontend does with a new connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frontend {
    pub kind: FrontendKind,
    /// The backend set new connections go to.
    pub set: SetKey,
    /// Seconds a client IP sticks to its backend (`sessionAffinity: ClientIP`), if it does.
    pub affinity_timeout: Option<u32>,
    /// `externalTrafficPolicy: Local` on an External-scope NodePort, ExternalIp or
    /// LoadBalancer frontend: only local backends, no SNAT, the client source is kept.
    pub local_only: bool,
}

/// One endpoint of a service port.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Backend {
    pub addr: IpAddr,
    /// The endpoint's port (the service's target port, resolved by the EndpointSlice).
    pub port: u16,
    pub protocol: Protocol,
    /// The endpoint runs on this node.
    pub local: bool,
    /// The endpoint's `terminating` condition.
    pub terminating: bool,
}

/// The backends of one set.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BackendSet {
    /// The backends that get new connections, sorted by (addr, port). Empty when there are
    /// none: the datapath then rejects connections with ICMP unreachable.
    pub backends: Vec<Backend>,
    /// Serving but terminating backends not chosen for new connections: established
    /// connections to them are kept. Sorted by (addr, port).
    pub terminating: Vec<Backend>,
    /// The set has an External-scope NodePort, ExternalIp or LoadBalancer frontend: packets
    /// are balanced with a Maglev table, so any node picks the same backend for a flow.
    pub maglev: bool,
}

/// Everything this node must program for services.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DesiredServices {
    pub frontends: BTreeMap<FrontendKey, Frontend>,
    /// Every set some frontend points at, and only those. Shared: the tables kept between
    /// rounds hold each set once however many views of them there are.
    pub sets: BTreeMap<SetKey, Arc<BackendSet>>,
}

// === impl Protocol ===

impl Protocol {
    /// The IP protocol number.
    pub fn number(self) -> u8 {
        match self {
            Protocol::Tcp => 6,
            Protocol::Udp => 17,
            Protocol::Sctp => 132,
        }
    }

    /// The name Kubernetes uses.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
            Protocol::Sctp => "SCTP",
        }
    }

    /// Reads a Kubernetes protocol field, which defaults to TCP when absent.
    pub(crate) fn from_k8s(protocol: Option<&str>) -> Option<Self> {
        match protocol {
            None | Some("TCP") => Some(Protocol::Tcp),
            Some("UDP") => Some(Protocol::Udp),
            Some("SCTP") => Some(Protocol::Sctp),
            Some(_) => None,
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

// === impl Family ===

impl Family {
    pub fn of(addr: IpAddr) -> Self {
        match addr {
            IpAddr::V4(_) => Family::V4,
            IpAddr::V6(_) => Family::V6,
        }
    }

    /// Reads `spec.ipFamilies[]` or an EndpointSlice `addressType` (`FQDN` is no family).
    pub(crate) fn from_k8s(family: &str) -> Option<Self> {
        match family {
            "IPv4" => Some(Family::V4),
            "IPv6" => Some(Family::V6),
            _ => None,
        }
    }
}

// === impl Backend ===

impl Backend {
    /// The name the Maglev table hashes: `addr:port/PROTO`, IPv6 in brackets
    /// (`[fd00::1]:8080/TCP`). Every node derives the same name from the same endpoint.
    pub fn name(&self) -> String {
        format!("{}/{}", SocketAddr::new(self.addr, self.port), self.protocol)
    }
}

// === desired_services ===

/// Computes the frontends and backend sets this node must program. Pure and deterministic:
/// the same objects give the same result whatever their order.
pub fn desired_services(services: &[Service], slices: &[EndpointSlice], node: &NodeInfo) -> DesiredServices {
    let services: Vec<ServiceView> = services.iter().map(ServiceView::of).collect();
    let slices: Vec<SliceView> = slices.iter().map(SliceView::of).collect();
    desired_from_views(&services.iter().collect::<Vec<_>>(), &slices.iter().collect::<Vec<_>>(), node)
}

/// [`desired_services`] from the objects' compact views, as an agent keeps them.
pub fn desired_from_views(services: &[&ServiceView], slices: &[&SliceView], node: &NodeInfo) -> DesiredServices {
    let mut by_service: BTreeMap<(&str, &str), Vec<&SliceView>> = BTreeMap::new();
    for slice in slices {
        if let Some(service) = &slice.service {
            by_service.entry((slice.namespace.as_str(), service.as_str())).or_default().push(slice);
        }
    }

    let mut ordered: Vec<&ServiceView> = services.to_vec();
    ordered.sort_by_key(|s| (s.namespace.as_str(), s.name.as_str()));

    let mut plan = Plan::default();
    for service in ordered {
        plan.service(service, node);
    }

    let mut sets: BTreeMap<SetKey, BackendSet> = BTreeMap::new();
    let mut frontends = BTreeMap::new();
    let mut fills: BTreeMap<SetKey, SetFill> = BTreeMap::new();
    for (key, (frontend, fill)) in plan.frontends {
        let first = *fills.entry(frontend.set.clone()).or_insert(fill);
        debug_assert_eq!(first, fill, "frontends of set {:?} disagree on its endpoints", frontend.set);
        let set = sets.entry(frontend.set.clone()).or_insert_with(|| {
            let slices =
                by_service.get(&(frontend.set.namespace.as_str(), frontend.set.service.as_str())).map(Vec::as_slice).unwrap_or_default();
            backend_set(&frontend.set, fill, slices, node)
        });
        if key.scope == Scope::External && frontend.kind != FrontendKind::ClusterIp {
            set.maglev = true;
        }
        frontends.insert(key, frontend);
    }
    DesiredServices { frontends, sets: sets.into_iter().map(|(k, v)| (k, Arc::new(v))).collect() }
}

/// Which endpoints a set draws from, as a traffic policy says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Reach {
    Cluster,
    Local,
}

/// How to fill a set: decided with each frontend, applied once per set that a frontend keeps.
/// The scope rules of the module header give all frontends of a set the same fill.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct SetFill {
    reach: Reach,
    protocol: Protocol,
}

/// The frontends chosen so far, each with how to fill its set.
#[derive(Default)]
struct Plan {
    frontends: BTreeMap<FrontendKey, (Frontend, SetFill)>,
}

impl Plan {
    fn service(&mut self, service: &ServiceView, node: &NodeInfo) {
        if service.kind.is_none() {
            return;
        }
        let (namespace, name) = (service.namespace.as_str(), service.name.as_str());
        let external_local = service.external_local;
        let external_reach = if external_local { Reach::Local } else { Reach::Cluster };
        let cluster_ip_reach = if service.internal_local { Reach::Local } else { Reach::Cluster };
        let affinity_timeout = service.affinity_timeout;

        for port in service.ports.iter() {
            let (protocol, service_port, node_port, port_name) = (port.protocol, port.port, port.node_port, &port.name);

            for &(family, cluster_ip) in service.cluster_ips.iter() {
                let set_key = |scope| SetKey {
                    namespace: namespace.to_string(),
                    service: name.to_string(),
                    port_name: port_name.clone(),
                    family,
                    scope,
                };
                let frontend = |kind, set: &SetKey, reach, local_only| {
                    let fill = SetFill { reach, protocol };
                    (Frontend { kind, set: set.clone(), affinity_timeout, local_only }, fill)
                };
                let external_set = set_key(Scope::External);
                let internal_set = set_key(Scope::Internal);

                let cluster_ip_set = if cluster_ip_reach == external_reach { &external_set } else { &internal_set };
                let key = FrontendKey { addr: cluster_ip, port: service_port, protocol, scope: Scope::External };
                self.frontend(key, frontend(FrontendKind::ClusterIp, cluster_ip_set, cluster_ip_reach, false));

                let node_addresses = node.addresses.iter().filter_map(|addr| Some((*addr, node_port?)));
                let outside = node_addresses
                    .map(|(addr, port)| (FrontendKind::NodePort, addr, port))
                    .chain(service.external_ips.iter().map(|ip| (FrontendKind::ExternalIp, *ip, service_port)))
                    .chain(service.load_balancer_ips.iter().map(|ip| (FrontendKind::LoadBalancer, *ip, service_port)))
                    .filter(|(_, addr, _)| Family::of(*addr) == family);
                for (kind, addr, port) in outside {
                    let key = FrontendKey { addr, port, protocol, scope: Scope::External };
                    self.frontend(key, frontend(kind, &external_set, external_reach, external_local));
                    if external_local {
                        let key = FrontendKey { addr, port, protocol, scope: Scope::Internal };
                        self.frontend(key, frontend(kind, &internal_set, Reach::Cluster, false));
                    }
                }
            }
        }
    }

    /// Keeps the first claim on a frontend: services come in (namespace, name) order.
    fn frontend(&mut self, key: FrontendKey, claim: (Frontend, SetFill)) {
        self.frontends.entry(key).or_insert(claim);
    }
}

/// An endpoint of a set with the conditions that pick its role.
struct Candidate {
    backend: Backend,
    ready: bool,
    serving: bool,
}

impl Candidate {
    /// Which of two copies of one endpoint (listed by two slices while the controller moves
    /// it) to keep: the more usable, then the greater, so the input order does not matter.
    fn better_than(&self, other: &Candidate) -> bool {
        let rank = |c: &Candidate| (c.ready, c.serving, !c.backend.terminating);
        (rank(self), &self.backend) > (rank(other), &other.backend)
    }
}

fn backend_set(key: &SetKey, fill: SetFill, slices: &[&SliceView], node: &NodeInfo) -> BackendSet {
    let mut candidates: BTreeMap<(IpAddr, u16), Candidate> = BTreeMap::new();
    for slice in slices {
        if slice.family != Some(key.family) {
            continue;
        }
        let port = slice.ports.iter().find(|p| p.name == key.port_name && p.protocol == Some(fill.protocol)).and_then(|p| p.port);
        let Some(port) = port else { continue };
        for endpoint in slice.endpoints.iter() {
            let Some(candidate) = candidate(endpoint, port, fill.protocol, key.family, node) else {
                continue;
            };
            if fill.reach == Reach::Local && !candidate.backend.local {
                continue;
            }
            let slot = (candidate.backend.addr, candidate.backend.port);
            match candidates.get(&slot) {
                Some(kept) if !candidate.better_than(kept) => {}
                _ => {
                    candidates.insert(slot, candidate);
                }
            }
        }
    }

    // KEP-1669: new connections go to ready endpoints; when there are none, to those still
    // serving while terminating, so a rolling restart does not blackhole the service.
    let any_ready = candidates.values().any(|c| c.ready);
    let mut set = BackendSet::default();
    for candidate in candidates.into_values() {
        let serving_terminating = candidate.serving && candidate.backend.terminating;
        if candidate.ready || (!any_ready && serving_terminating) {
            set.backends.push(candidate.backend);
        } else if serving_terminating {
            set.terminating.push(candidate.backend);
        }
    }
    set
}

fn candidate(endpoint: &EndpointView, port: u16, protocol: Protocol, family: Family, node: &NodeInfo) -> Option<Candidate> {
    // The addresses of one endpoint are fungible; kube-proxy uses the first (the view keeps it).
    if Family::of(endpoint.addr) != family {
        return None;
    }
    Some(Candidate {
        backend: Backend {
            addr: endpoint.addr,
            port,
            protocol,
            local: endpoint.node.as_deref() == Some(node.name.as_str()),
            terminating: endpoint.terminating,
        },
        ready: endpoint.ready,
        serving: endpoint.serving,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    /// This node: `a`, with one address of each family.
    fn node() -> NodeInfo {
        NodeInfo { name: "a".into(), addresses: vec!["192.168.0.10".parse().unwrap(), "2001:db8::10".parse().unwrap()] }
    }

    fn service(namespace: &str, name: &str, spec: Value) -> Service {
        serde_json::from_value(json!({"metadata": {"namespace": namespace, "name": name}, "spec": spec})).unwrap()
    }

    fn with_ingress(mut service: Service, ingress: Value) -> Service {
        service.status = Some(serde_json::from_value(json!({"loadBalancer": {"ingress": ingress}})).unwrap());
        service
    }

    fn slice(namespace: &str, service: &str, family: &str, ports: Value, endpoints: Value) -> EndpointSlice {
        serde_json::from_value(json!({
            "metadata": {
                "namespace": namespace,
                "name": format!("{service}-{family}"),
                "labels": {SERVICE_NAME_LABEL: service},
            },
            "addressType": family,
            "ports": ports,
            "endpoints": endpoints,
        }))
        .unwrap()
    }

    /// A ready endpoint of a pod on `node`.
    fn ep(addr: &str, node: &str) -> Value {
        json!({"addresses": [addr], "nodeName": node, "conditions": {"ready": true}})
    }

    /// An endpoint with explicit conditions.
    fn ep_in(addr: &str, node: &str, ready: bool, serving: bool, terminating: bool) -> Value {
        json!({
            "addresses": [addr],
            "nodeName": node,
            "conditions": {"ready": ready, "serving": serving, "terminating": terminating},
        })
    }

    /// One line per frontend and per set, in map order:
    /// `fe <addr:port/PROTO> <scope> <kind> -> <set> [affinity=N] [local_only]` and
    /// `set <ns>/<svc>:<port>/<family>/<scope> [maglev] [<backend>@<a: local, b: not> ...] [terminating ...]`
    /// (the scenarios' endpoints run on nodes `a`, this one, and `b`).
    fn render(desired: &DesiredServices) -> Vec<String> {
        let set_name = |k: &SetKey| format!("{}/{}:{}/{:?}/{:?}", k.namespace, k.service, k.port_name, k.family, k.scope);
        let backends = |list: &[Backend]| {
            list.iter().map(|b| format!("{}@{}", b.name(), if b.local { "a" } else { "b" })).collect::<Vec<_>>().join(" ")
        };
        let mut lines = Vec::new();
        for (key, fe) in &desired.frontends {
            let mut line = format!(
                "fe {}/{} {:?} {:?} -> {}",
                SocketAddr::new(key.addr, key.port),
                key.protocol,
                key.scope,
                fe.kind,
                set_name(&fe.set)
            );
            if let Some(timeout) = fe.affinity_timeout {
                line.push_str(&format!(" affinity={timeout}"));
            }
            if fe.local_only {
                line.push_str(" local_only");
            }
            lines.push(line);
        }
        for (key, set) in &desired.sets {
            let mut line = format!("set {}", set_name(key));
            if set.maglev {
                line.push_str(" maglev");
            }
            line.push_str(&format!(" [{}]", backends(&set.backends)));
            if !set.terminating.is_empty() {
                line.push_str(&format!(" terminating [{}]", backends(&set.terminating)));
            }
            lines.push(line);
        }
        lines
    }

    struct Scenario {
        name: &'static str,
        services: Vec<Service>,
        slices: Vec<EndpointSlice>,
        want: &'static [&'static str],
    }

    fn web_slice(endpoints: Value) -> EndpointSlice {
        slice("default", "web", "IPv4", json!([{"port": 8080}]), endpoints)
    }

    fn scenarios() -> Vec<Scenario> {
        vec![
            Scenario {
                name: "ClusterIP, single unnamed port",
                services: vec![service("default", "web", json!({"clusterIP": "10.96.0.10", "ports": [{"port": 80}]}))],
                slices: vec![web_slice(json!([ep("10.0.2.1", "b"), ep("10.0.1.1", "a")]))],
                want: &[
                    "fe 10.96.0.10:80/TCP External ClusterIp -> default/web:/V4/External",
                    "set default/web:/V4/External [10.0.1.1:8080/TCP@a 10.0.2.1:8080/TCP@b]",
                ],
            },
            Scenario {
                name: "multi-port service: each port takes the slice port of its name",
                services: vec![service(
                    "default",
                    "app",
                    json!({
                        "clusterIP": "10.96.0.11",
                        "ports": [{"name": "http", "port": 80}, {"name": "metrics", "port": 9090}],
                    }),
                )],
                slices: vec![slice(
                    "default",
                    "app",
                    "IPv4",
                    json!([{"name": "metrics", "port": 9100}, {"name": "http", "port": 8080}]),
                    json!([ep("10.0.1.1", "a")]),
                )],
                want: &[
                    "fe 10.96.0.11:80/TCP External ClusterIp -> default/app:http/V4/External",
                    "fe 10.96.0.11:9090/TCP External ClusterIp -> default/app:metrics/V4/External",
                    "set default/app:http/V4/External [10.0.1.1:8080/TCP@a]",
                    "set default/app:metrics/V4/External [10.0.1.1:9100/TCP@a]",
                ],
            },
            Scenario {
                name: "port matching by name and protocol",
                services: vec![service(
                    "kube-system",
                    "dns",
                    json!({
                        "clusterIP": "10.96.0.53",
                        "ports": [
                            {"name": "dns", "port": 53, "protocol": "UDP"},
                            {"name": "dns-tcp", "port": 53, "protocol": "TCP"},
                        ],
                    }),
                )],
                slices: vec![slice(
                    "kube-system",
                    "dns",
                    "IPv4",
                    json!([
                        {"name": "dns", "port": 9999, "protocol": "TCP"},
                        {"name": "dns-tcp", "port": 5354, "protocol": "TCP"},
                        {"name": "dns", "port": 5353, "protocol": "UDP"},
                    ]),
                    json!([ep("10.0.1.53", "a")]),
                )],
                want: &[
                    "fe 10.96.0.53:53/TCP External ClusterIp -> kube-system/dns:dns-tcp/V4/External",
                    "fe 10.96.0.53:53/UDP External ClusterIp -> kube-system/dns:dns/V4/External",
                    "set kube-system/dns:dns/V4/External [10.0.1.53:5353/UDP@a]",
                    "set kube-system/dns:dns-tcp/V4/External [10.0.1.53:5354/TCP@a]",
                ],
            },
            Scenario {
                name: "dual stack: one frontend and set per family, backends from the slice of that family",
                services: vec![service(
                    "default",
                    "web",
                    json!({
                        "clusterIP": "fd00:96::10",
                        "clusterIPs": ["fd00:96::10", "10.96.0.10"],
                        "ipFamilies": ["IPv6", "IPv4"],
                        "ports": [{"port": 80}],
                    }),
                )],
                slices: vec![
                    web_slice(json!([ep("10.0.1.1", "a")])),
                    slice("default", "web", "IPv6", json!([{"port": 8080}]), json!([ep("fd00:1::1", "a")])),
                ],
                want: &[
                    "fe 10.96.0.10:80/TCP External ClusterIp -> default/web:/V4/External",
                    "fe [fd00:96::10]:80/TCP External ClusterIp -> default/web:/V6/External",
                    "set default/web:/V4/External [10.0.1.1:8080/TCP@a]",
                    "set default/web:/V6/External [[fd00:1::1]:8080/TCP@a]",
                ],
            },
            Scenario {
                name: "NodePort on each node address of the service's families",
                services: vec![service(
                    "default",
                    "web",
                    json!({
                        "type": "NodePort",
                        "clusterIPs": ["10.96.0.10", "fd00:96::10"],
                        "ipFamilies": ["IPv4", "IPv6"],
                        "ports": [{"port": 80, "nodePort": 30080}],
                    }),
                )],
                slices: vec![
                    web_slice(json!([ep("10.0.1.1", "a"), ep("10.0.2.1", "b")])),
                    slice("default", "web", "IPv6", json!([{"port": 8080}]), json!([ep("fd00:2::1", "b")])),
                ],
                want: &[
                    "fe 10.96.0.10:80/TCP External ClusterIp -> default/web:/V4/External",
                    "fe 192.168.0.10:30080/TCP External NodePort -> default/web:/V4/External",
                    "fe [2001:db8::10]:30080/TCP External NodePort -> default/web:/V6/External",
                    "fe [fd00:96::10]:80/TCP External ClusterIp -> default/web:/V6/External",
                    "set default/web:/V4/External maglev [10.0.1.1:8080/TCP@a 10.0.2.1:8080/TCP@b]",
                    "set default/web:/V6/External maglev [[fd00:2::1]:8080/TCP@b]",
                ],
            },
            Scenario {
                name: "LoadBalancer: ingress IPs (not hostnames, not ipMode Proxy) and externalIPs of the family",
                services: vec![with_ingress(
                    service(
                        "default",
                        "web",
                        json!({
                            "type": "LoadBalancer",
                            "clusterIP": "10.96.0.10",
                            "externalIPs": ["203.0.113.5", "2001:db8::99"],
                            "ports": [{"port": 443, "nodePort": 30443}],
                        }),
                    ),
                    json!([{"ip": "198.51.100.1"}, {"hostname": "lb.example"}, {"ip": "198.51.100.2", "ipMode": "Proxy"}]),
                )],
                slices: vec![web_slice(json!([ep("10.0.1.1", "a")]))],
                want: &[
                    "fe 10.96.0.10:443/TCP External ClusterIp -> default/web:/V4/External",
                    "fe 192.168.0.10:30443/TCP External NodePort -> default/web:/V4/External",
                    "fe 198.51.100.1:443/TCP External LoadBalancer -> default/web:/V4/External",
                    "fe 203.0.113.5:443/TCP External ExternalIp -> default/web:/V4/External",
                    "set default/web:/V4/External maglev [10.0.1.1:8080/TCP@a]",
                ],
            },
            Scenario {
                name: "status ingress of a service that is no longer a LoadBalancer is ignored",
                services: vec![with_ingress(
                    service("default", "web", json!({"clusterIP": "10.96.0.10", "ports": [{"port": 80, "nodePort": 30080}]})),
                    json!([{"ip": "198.51.100.1"}]),
                )],
                slices: vec![web_slice(json!([ep("10.0.1.1", "a")]))],
                want: &[
                    "fe 10.96.0.10:80/TCP External ClusterIp -> default/web:/V4/External",
                    "set default/web:/V4/External [10.0.1.1:8080/TCP@a]",
                ],
            },
            Scenario {
                name: "externalTrafficPolicy Local: local-only External set, Internal set with all",
                services: vec![service(
                    "default",
                    "web",
                    json!({
                        "type": "NodePort",
                        "clusterIP": "10.96.0.10",
                        "externalIPs": ["203.0.113.5"],
                        "externalTrafficPolicy": "Local",
                        "ports": [{"port": 80, "nodePort": 30080}],
                    }),
                )],
                slices: vec![web_slice(json!([ep("10.0.1.1", "a"), ep("10.0.2.1", "b")]))],
                want: &[
                    "fe 10.96.0.10:80/TCP External ClusterIp -> default/web:/V4/Internal",
                    "fe 192.168.0.10:30080/TCP External NodePort -> default/web:/V4/External local_only",
                    "fe 192.168.0.10:30080/TCP Internal NodePort -> default/web:/V4/Internal",
                    "fe 203.0.113.5:80/TCP External ExternalIp -> default/web:/V4/External local_only",
                    "fe 203.0.113.5:80/TCP Internal ExternalIp -> default/web:/V4/Internal",
                    "set default/web:/V4/External maglev [10.0.1.1:8080/TCP@a]",
                    "set default/web:/V4/Internal [10.0.1.1:8080/TCP@a 10.0.2.1:8080/TCP@b]",
                ],
            },
            Scenario {
                name: "internalTrafficPolicy Local on a ClusterIP service",
                services: vec![service(
                    "default",
                    "web",
                    json!({
                        "clusterIP": "10.96.0.10",
                        "internalTrafficPolicy": "Local",
                        "ports": [{"port": 80}],
                    }),
                )],
                slices: vec![web_slice(json!([ep("10.0.1.1", "a"), ep("10.0.2.1", "b")]))],
                want: &[
                    "fe 10.96.0.10:80/TCP External ClusterIp -> default/web:/V4/Internal",
                    "set default/web:/V4/Internal [10.0.1.1:8080/TCP@a]",
                ],
            },
            Scenario {
                name: "internalTrafficPolicy Local with a cluster-wide NodePort: ClusterIP on its own local set",
                services: vec![service(
                    "default",
                    "web",
                    json!({
                        "type": "NodePort",
                        "clusterIP": "10.96.0.10",
                        "internalTrafficPolicy": "Local",
                        "ports": [{"port": 80, "nodePort": 30080}],
                    }),
                )],
                slices: vec![web_slice(json!([ep("10.0.1.1", "a"), ep("10.0.2.1", "b")]))],
                want: &[
                    "fe 10.96.0.10:80/TCP External ClusterIp -> default/web:/V4/Internal",
                    "fe 192.168.0.10:30080/TCP External NodePort -> default/web:/V4/External",
                    "set default/web:/V4/External maglev [10.0.1.1:8080/TCP@a 10.0.2.1:8080/TCP@b]",
                    "set default/web:/V4/Internal [10.0.1.1:8080/TCP@a]",
                ],
            },
            Scenario {
                name: "both policies Local: ClusterIP shares the local External set",
                services: vec![service(
                    "default",
                    "web",
                    json!({
                        "type": "NodePort",
                        "clusterIP": "10.96.0.10",
                        "internalTrafficPolicy": "Local",
                        "externalTrafficPolicy": "Local",
                        "ports": [{"port": 80, "nodePort": 30080}],
                    }),
                )],
                slices: vec![web_slice(json!([ep("10.0.1.1", "a"), ep("10.0.2.1", "b")]))],
                want: &[
                    "fe 10.96.0.10:80/TCP External ClusterIp -> default/web:/V4/External",
                    "fe 192.168.0.10:30080/TCP External NodePort -> default/web:/V4/External local_only",
                    "fe 192.168.0.10:30080/TCP Internal NodePort -> default/web:/V4/Internal",
                    "set default/web:/V4/External maglev [10.0.1.1:8080/TCP@a]",
                    "set default/web:/V4/Internal [10.0.1.1:8080/TCP@a 10.0.2.1:8080/TCP@b]",
                ],
            },
            Scenario {
                name: "session affinity: default and explicit timeout",
                services: vec![
                    service(
                        "default",
                        "sticky",
                        json!({
                            "clusterIP": "10.96.0.20",
                            "sessionAffinity": "ClientIP",
                            "ports": [{"port": 80}],
                        }),
                    ),
                    service(
                        "default",
                        "sticky-60",
                        json!({
                            "clusterIP": "10.96.0.21",
                            "sessionAffinity": "ClientIP",
                            "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 60}},
                            "ports": [{"port": 80}],
                        }),
                    ),
                    service(
                        "default",
                        "none",
                        json!({
                            "clusterIP": "10.96.0.22",
                            "sessionAffinity": "None",
                            "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 60}},
                            "ports": [{"port": 80}],
                        }),
                    ),
                ],
                slices: vec![],
                want: &[
                    "fe 10.96.0.20:80/TCP External ClusterIp -> default/sticky:/V4/External affinity=10800",
                    "fe 10.96.0.21:80/TCP External ClusterIp -> default/sticky-60:/V4/External affinity=60",
                    "fe 10.96.0.22:80/TCP External ClusterIp -> default/none:/V4/External",
                    "set default/none:/V4/External []",
                    "set default/sticky:/V4/External []",
                    "set default/sticky-60:/V4/External []",
                ],
            },
            Scenario {
                name: "headless, ExternalName and IP-less services yield nothing",
                services: vec![
                    service("default", "headless", json!({"clusterIP": "None", "clusterIPs": ["None"], "ports": [{"port": 80}]})),
                    service("default", "ext", json!({"type": "ExternalName", "externalName": "example.com", "ports": [{"port": 80}]})),
                    service("default", "unallocated", json!({"ports": [{"port": 80}]})),
                ],
                slices: vec![
                    slice("default", "headless", "IPv4", json!([{"port": 8080}]), json!([ep("10.0.1.1", "a")])),
                    slice("default", "ext", "IPv4", json!([{"port": 8080}]), json!([ep("10.0.1.1", "a")])),
                ],
                want: &[],
            },
            Scenario {
                name: "slices of another namespace or another service are ignored",
                services: vec![service("default", "web", json!({"clusterIP": "10.96.0.10", "ports": [{"port": 80}]}))],
                slices: vec![
                    slice("other", "web", "IPv4", json!([{"port": 8080}]), json!([ep("10.0.9.1", "a")])),
                    slice("default", "api", "IPv4", json!([{"port": 8080}]), json!([ep("10.0.9.2", "a")])),
                    web_slice(json!([ep("10.0.1.1", "a")])),
                ],
                want: &[
                    "fe 10.96.0.10:80/TCP External ClusterIp -> default/web:/V4/External",
                    "set default/web:/V4/External [10.0.1.1:8080/TCP@a]",
                ],
            },
            Scenario {
                name: "ready endpoints take new connections; serving terminating ones keep theirs",
                services: vec![service("default", "web", json!({"clusterIP": "10.96.0.10", "ports": [{"port": 80}]}))],
                slices: vec![web_slice(json!([
                    ep_in("10.0.1.1", "a", true, true, false),
                    ep_in("10.0.1.2", "a", false, true, true),
                    ep_in("10.0.1.3", "a", false, false, true),
                    ep_in("10.0.1.4", "a", false, false, false),
                    {"addresses": ["10.0.1.5"], "nodeName": "b"},
                    {"addresses": ["10.0.1.6"], "nodeName": "b", "conditions": {"ready": false, "terminating": true}},
                ]))],
                want: &[
                    "fe 10.96.0.10:80/TCP External ClusterIp -> default/web:/V4/External",
                    "set default/web:/V4/External [10.0.1.1:8080/TCP@a 10.0.1.5:8080/TCP@b] terminating [10.0.1.2:8080/TCP@a]",
                ],
            },
            Scenario {
                name: "no ready endpoint: serving terminating ones take new connections (KEP-1669)",
                services: vec![service("default", "web", json!({"clusterIP": "10.96.0.10", "ports": [{"port": 80}]}))],
                slices: vec![web_slice(json!([
                    ep_in("10.0.1.2", "a", false, true, true),
                    ep_in("10.0.1.3", "a", false, false, true),
                    ep_in("10.0.1.4", "a", false, false, false),
                ]))],
                want: &[
                    "fe 10.96.0.10:80/TCP External ClusterIp -> default/web:/V4/External",
                    "set default/web:/V4/External [10.0.1.2:8080/TCP@a]",
                ],
            },
            Scenario {
                name: "externalTrafficPolicy Local falls back among local endpoints only",
                services: vec![service(
                    "default",
                    "web",
                    json!({
                        "type": "NodePort",
                        "clusterIP": "10.96.0.10",
                        "externalTrafficPolicy": "Local",
                        "ports": [{"port": 80, "nodePort": 30080}],
                    }),
                )],
                slices: vec![web_slice(json!([ep_in("10.0.1.2", "a", false, true, true), ep_in("10.0.2.1", "b", true, true, false),]))],
                want: &[
                    "fe 10.96.0.10:80/TCP External ClusterIp -> default/web:/V4/Internal",
                    "fe 192.168.0.10:30080/TCP External NodePort -> default/web:/V4/External local_only",
                    "fe 192.168.0.10:30080/TCP Internal NodePort -> default/web:/V4/Internal",
                    "set default/web:/V4/External maglev [10.0.1.2:8080/TCP@a]",
                    "set default/web:/V4/Internal [10.0.2.1:8080/TCP@b] terminating [10.0.1.2:8080/TCP@a]",
                ],
            },
            Scenario {
                name: "no endpoints: the empty set is present",
                services: vec![service("default", "web", json!({"clusterIP": "10.96.0.10", "ports": [{"port": 80}]}))],
                slices: vec![],
                want: &["fe 10.96.0.10:80/TCP External ClusterIp -> default/web:/V4/External", "set default/web:/V4/External []"],
            },
            Scenario {
                name: "an endpoint listed by two slices is one backend, the ready copy",
                services: vec![service("default", "web", json!({"clusterIP": "10.96.0.10", "ports": [{"port": 80}]}))],
                slices: vec![
                    web_slice(json!([ep_in("10.0.1.1", "a", false, false, false)])),
                    slice("default", "web", "IPv4", json!([{"port": 8080}]), json!([ep("10.0.1.1", "a")])),
                ],
                want: &[
                    "fe 10.96.0.10:80/TCP External ClusterIp -> default/web:/V4/External",
                    "set default/web:/V4/External [10.0.1.1:8080/TCP@a]",
                ],
            },
            Scenario {
                name: "two services claiming one external IP: the first by namespace/name keeps it",
                services: vec![
                    service("default", "zeta", json!({"clusterIP": "10.96.0.12", "externalIPs": ["203.0.113.5"], "ports": [{"port": 80}]})),
                    service(
                        "default",
                        "alpha",
                        json!({"clusterIP": "10.96.0.11", "externalIPs": ["203.0.113.5"], "ports": [{"port": 80}]}),
                    ),
                ],
                slices: vec![],
                want: &[
                    "fe 10.96.0.11:80/TCP External ClusterIp -> default/alpha:/V4/External",
                    "fe 10.96.0.12:80/TCP External ClusterIp -> default/zeta:/V4/External",
                    "fe 203.0.113.5:80/TCP External ExternalIp -> default/alpha:/V4/External",
                    "set default/alpha:/V4/External maglev []",
                    "set default/zeta:/V4/External []",
                ],
            },
        ]
    }

    #[test]
    fn scenarios_give_the_expected_tables() {
        for scenario in scenarios() {
            let desired = desired_services(&scenario.services, &scenario.slices, &node());
            assert_eq!(render(&desired), scenario.want, "scenario: {}", scenario.name);
        }
    }

    #[test]
    fn scenarios_do_not_depend_on_input_order() {
        for scenario in scenarios() {
            let forward = desired_services(&scenario.services, &scenario.slices, &node());
            let mut services = scenario.services.clone();
            let mut slices = scenario.slices.clone();
            services.reverse();
            slices.reverse();
            let reversed = desired_services(&services, &slices, &node());
            assert_eq!(reversed, forward, "scenario with reversed inputs: {}", scenario.name);
        }
    }

    #[test]
    fn scenarios_keep_the_invariants() {
        for scenario in scenarios() {
            let desired = desired_services(&scenario.services, &scenario.slices, &node());
            for (key, set) in &desired.sets {
                let pointed = desired.frontends.values().any(|fe| &fe.set == key);
                assert!(pointed, "{}: set {key:?} has a frontend", scenario.name);
                for backend in set.backends.iter().chain(&set.terminating) {
                    assert_eq!(Family::of(backend.addr), key.family, "{}: {} in a set of its family", scenario.name, backend.name());
                }
                let sorted = |list: &[Backend]| list.windows(2).all(|w| (w[0].addr, w[0].port) < (w[1].addr, w[1].port));
                assert!(sorted(&set.backends), "{}: backends of {key:?} sorted by (addr, port)", scenario.name);
                assert!(sorted(&set.terminating), "{}: terminating of {key:?} sorted by (addr, port)", scenario.name);
            }
            for (key, fe) in &desired.frontends {
                let family = Family::of(key.addr);
                assert_eq!(fe.set.family, family, "{}: frontend {key:?} on a set of its family", scenario.name);
                if fe.local_only {
                    assert_eq!(key.scope, Scope::External, "{}: only External frontends are local_only", scenario.name);
                }
            }
        }
    }

    #[test]
    fn backend_fields_come_from_the_endpoint() {
        let services = [service("shop", "web", json!({"clusterIP": "10.96.0.10", "ports": [{"port": 80}]}))];
        let slices = [slice(
            "shop",
            "web",
            "IPv4",
            json!([{"port": 8080}]),
            json!([
                {"addresses": ["10.0.1.1"], "nodeName": "a", "conditions": {"ready": true}},
                {"addresses": ["10.0.1.2"], "conditions": {"ready": true}},
                {"addresses": ["10.0.1.3"], "nodeName": "b"},
            ]),
        )];
        let desired = desired_services(&services, &slices, &node());
        let set = desired.sets.values().next().expect("one set");
        let local = Backend { addr: "10.0.1.1".parse().unwrap(), port: 8080, protocol: Protocol::Tcp, local: true, terminating: false };
        assert_eq!(set.backends[0], local, "an endpoint on this node");
        assert!(!set.backends[1].local, "an endpoint of unknown node is not local");
        assert!(!set.backends[2].local, "an endpoint on another node is not local");
    }

    #[test]
    fn backend_names_for_maglev() {
        let backend =
            |addr: &str, protocol| Backend { addr: addr.parse().unwrap(), port: 8080, protocol, local: false, terminating: false };
        assert_eq!(backend("10.0.0.1", Protocol::Tcp).name(), "10.0.0.1:8080/TCP");
        assert_eq!(backend("fd00::1", Protocol::Udp).name(), "[fd00::1]:8080/UDP");
        assert_eq!(backend("10.0.0.1", Protocol::Sctp).name(), "10.0.0.1:8080/SCTP");
    }

    #[test]
    fn protocol_numbers() {
        assert_eq!(Protocol::Tcp.number(), 6, "TCP");
        assert_eq!(Protocol::Udp.number(), 17, "UDP");
        assert_eq!(Protocol::Sctp.number(), 132, "SCTP");
    }
}
