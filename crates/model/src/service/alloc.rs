//! ClusterIP and NodePort allocation, as the API server's allocators do it: requested values
//! are checked against the ranges and the other services, missing ones are taken from the
//! ranges, and an existing service keeps what it was given.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::ops::RangeInclusive;

use ipnet::IpNet;
use k8s_openapi::api::core::v1::{Service, ServiceSpec};

use super::{needs_node_ports, object_key, IpFamily, HEADLESS};

/// Most addresses of one range the allocator considers (2^20, as Kubernetes caps service
/// ranges): a wider IPv6 range is used from its start only.
const MAX_RANGE_ADDRESSES: u128 = 1 << 20;

/// Where services get their addresses and node ports from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceRanges {
    /// ClusterIP ranges, at most one per family; the first one's family is the default of
    /// single-stack services.
    pub cidrs: Vec<IpNet>,
    /// Node ports of NodePort and LoadBalancer services.
    pub node_ports: RangeInclusive<u16>,
}

/// Why service ranges are rejected.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum RangeError {
    /// No ClusterIP range at all.
    #[error("at least one service CIDR is required")]
    NoCidr,
    /// Two ranges of one family: a service has one address per family.
    #[error("service CIDRs {first} and {second} are both {family}: give at most one per family")]
    SameFamily { family: IpFamily, first: IpNet, second: IpNet },
    /// A range with no usable address besides its network (and broadcast) address.
    #[error("service CIDR {0} is too small: it needs at least two usable addresses")]
    TooSmall(IpNet),
    /// A CIDR that does not parse, or has host bits set.
    #[error("service CIDR {text:?} is invalid: {reason}")]
    BadCidr { text: String, reason: String },
    /// A node port range that does not parse or is empty.
    #[error("node port range {text:?} is invalid: {reason}")]
    BadNodePorts { text: String, reason: String },
}

/// Why a service's addresses or node ports could not be allocated. Each names the field.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum AllocError {
    /// A requested cluster IP or node port is outside the configured range.
    #[error("{field}: {value} is not in the range {range}")]
    OutOfRange { field: String, value: String, range: String },
    /// A requested cluster IP or node port belongs to another service.
    #[error("{field}: {value} is already allocated to service {owner}")]
    InUse { field: String, value: String, owner: String },
    /// Every address or node port of the range is taken.
    #[error("{field}: no free {what} left in {range}; delete services or widen the range")]
    Exhausted { field: String, what: &'static str, range: String },
    /// The service asks for an address family the ranges do not have.
    #[error("{field}: {reason}")]
    FamilyNotConfigured { field: String, reason: String },
    /// A field that cannot change once the service exists.
    #[error("{field}: field is immutable: {old:?} cannot change to {new:?}; delete the service and apply it again")]
    Immutable { field: String, old: String, new: String },
}

/// Allocates cluster IPs and node ports for services, given the ones already stored. Lookups
/// are hash sets, and each range is handed out from a moving cursor, so allocating is O(1)
/// per service however many exist.
#[derive(Debug)]
pub struct Allocator {
    ranges: ServiceRanges,
    pools: Vec<IpPool>,
    /// Allocated cluster IPs and the `namespace/name` of the service owning each.
    ips: HashMap<IpAddr, String>,
    /// Allocated node ports by (protocol, port), and their owner.
    node_ports: HashMap<(String, u16), String>,
    next_node_port: u16,
    /// What each known service holds, by `namespace/name`: kept on re-apply.
    held: HashMap<String, Held>,
}

/// One family's range as offsets from its network address.
#[derive(Debug)]
struct IpPool {
    net: IpNet,
    base: u128,
    /// Usable offsets: 1 ..= last (the network address and IPv4 broadcast are never given).
    last: u128,
    next: u128,
}

/// The allocated values of one service.
#[derive(Clone, Debug, Default)]
struct Held {
    cluster_ips: Vec<String>,
    /// (port, protocol, nodePort) of each port with a node port.
    node_ports: Vec<(i32, String, u16)>,
}

// === impl ServiceRanges ===

impl Default for ServiceRanges {
    /// IPv4 198.18.128.0/20, IPv6 2001:2:0:fe::/112 (benchmarking space, beside the lab's
    /// pod ranges), node ports 30000-32767 as in Kubernetes.
    fn default() -> Self {
        let v4 = IpNet::new(IpAddr::V4(Ipv4Addr::new(198, 18, 128, 0)), 20);
        let v6 = IpNet::new(IpAddr::V6(Ipv6Addr::new(0x2001, 2, 0, 0xfe, 0, 0, 0, 0)), 112);
        Self { cidrs: v4.into_iter().chain(v6).collect(), node_ports: 30000..=32767 }
    }
}

impl ServiceRanges {
    /// Checks the ranges: one or two CIDRs of different families, each with room, and a
    /// non-empty node port range.
    pub fn new(cidrs: Vec<IpNet>, node_ports: RangeInclusive<u16>) -> Result<Self, RangeError> {
        if cidrs.is_empty() {
            return Err(RangeError::NoCidr);
        }
        for (i, cidr) in cidrs.iter().enumerate() {
            if let Some(first) = cidrs[..i].iter().find(|c| IpFamily::of(c.addr()) == IpFamily::of(cidr.addr())) {
                return Err(RangeError::SameFamily { family: IpFamily::of(cidr.addr()), first: *first, second: *cidr });
            }
            if IpPool::new(*cidr).last < 2 {
                return Err(RangeError::TooSmall(*cidr));
            }
        }
        if node_ports.is_empty() || *node_ports.start() == 0 {
            let text = format!("{}-{}", node_ports.start(), node_ports.end());
            return Err(RangeError::BadNodePorts { text, reason: "must be FIRST-LAST with 1 <= FIRST <= LAST <= 65535".into() });
        }
        Ok(Self { cidrs, node_ports })
    }

    /// Parses a service CIDR such as `198.18.128.0/20`; host bits must be zero.
    pub fn parse_cidr(text: &str) -> Result<IpNet, RangeError> {
        let bad = |reason: String| RangeError::BadCidr { text: text.to_owned(), reason };
        let net: IpNet = text.parse().map_err(|e: ipnet::AddrParseError| bad(e.to_string()))?;
        if net.addr() != net.network() {
            return Err(bad(format!("host bits are set (did you mean {}?)", net.trunc())));
        }
        Ok(net)
    }

    /// Parses a node port range written `FIRST-LAST`, e.g. `30000-32767`.
    pub fn parse_node_ports(text: &str) -> Result<RangeInclusive<u16>, RangeError> {
        let bad = |reason: &str| RangeError::BadNodePorts { text: text.to_owned(), reason: reason.to_owned() };
        let (first, last) = text.split_once('-').ok_or_else(|| bad("must be FIRST-LAST, e.g. 30000-32767"))?;
        let port = |s: &str| s.trim().parse::<u16>().ok().filter(|p| *p > 0);
        let (Some(first), Some(last)) = (port(first), port(last)) else {
            return Err(bad("ports must be numbers from 1 to 65535"));
        };
        if first > last {
            return Err(bad("FIRST must not be greater than LAST"));
        }
        Ok(first..=last)
    }

    /// The range of a family, if there is one.
    pub fn cidr(&self, family: IpFamily) -> Option<IpNet> {
        self.cidrs.iter().copied().find(|c| IpFamily::of(c.addr()) == family)
    }

    /// The families the ranges have, in range order.
    pub fn families(&self) -> Vec<IpFamily> {
        self.cidrs.iter().map(|c| IpFamily::of(c.addr())).collect()
    }

    fn node_port_text(&self) -> String {
        format!("{}-{}", self.node_ports.start(), self.node_ports.end())
    }
}

// === impl IpPool ===

impl IpPool {
    fn new(net: IpNet) -> Self {
        let (base, size) = match net {
            IpNet::V4(n) => (u128::from(u32::from(n.network())), 1u128 << (32 - n.prefix_len())),
            IpNet::V6(n) => (u128::from(n.network()), 1u128.checked_shl(u32::from(128 - n.prefix_len())).unwrap_or(u128::MAX)),
        };
        let size = size.min(MAX_RANGE_ADDRESSES);
        // IPv4 loses its broadcast address too; IPv6 has none.
        let last = match net {
            IpNet::V4(_) => size.saturating_sub(2),
            IpNet::V6(_) => size.saturating_sub(1),
        };
        Self { net, base, last, next: 1 }
    }

    fn addr(&self, offset: u128) -> IpAddr {
        match self.net {
            // The offset is within a 32-bit range, so the sum fits.
            IpNet::V4(_) => IpAddr::V4(Ipv4Addr::from(u32::try_from(self.base + offset).unwrap_or(u32::MAX))),
            IpNet::V6(_) => IpAddr::V6(Ipv6Addr::from(self.base + offset)),
        }
    }

    fn offset(&self, ip: IpAddr) -> Option<u128> {
        let value = match ip {
            IpAddr::V4(v4) => u128::from(u32::from(v4)),
            IpAddr::V6(v6) => u128::from(v6),
        };
        if !self.net.contains(&ip) {
            return None;
        }
        value.checked_sub(self.base).filter(|o| (1..=self.last).contains(o))
    }

    fn family(&self) -> IpFamily {
        IpFamily::of(self.net.addr())
    }
}

// === impl Allocator ===

impl Allocator {
    /// An allocator that knows what `existing` services hold. Their values are taken as
    /// they are, even when the ranges have changed since.
    pub fn new<'a>(ranges: &ServiceRanges, existing: impl IntoIterator<Item = &'a Service>) -> Self {
        let mut allocator = Self {
            pools: ranges.cidrs.iter().map(|c| IpPool::new(*c)).collect(),
            ranges: ranges.clone(),
            ips: HashMap::new(),
            node_ports: HashMap::new(),
            next_node_port: *ranges.node_ports.start(),
            held: HashMap::new(),
        };
        for service in existing {
            let key = key_of(service);
            let held = Held::of(service);
            allocator.claim(&key, &held);
            allocator.held.insert(key, held);
        }
        allocator
    }

    /// Fills in `spec.clusterIP`, `spec.clusterIPs`, `spec.ipFamilies`, `spec.ipFamilyPolicy`
    /// and the node ports of `service`, and records them. A service the allocator already
    /// knows (same namespace and name) keeps its values. On error nothing is recorded and
    /// `service` is left as it was.
    pub fn allocate(&mut self, service: &mut Service) -> Result<(), AllocError> {
        let key = key_of(service);
        let previous = self.held.get(&key).cloned();
        let mut spec = service.spec.clone().unwrap_or_default();
        let policy = spec.ip_family_policy.clone().unwrap_or_else(|| "SingleStack".to_owned());
        let requested = requested_ips(&spec);
        if let (Some(previous), Some(first)) = (&previous, requested.first()) {
            if let Some(old) = previous.cluster_ips.first().filter(|old| *old != first) {
                return Err(AllocError::Immutable { field: "spec.clusterIP".into(), old: old.clone(), new: first.clone() });
            }
        }
        let headless = requested.first().map(String::as_str) == Some(HEADLESS)
            || previous.as_ref().and_then(|p| p.cluster_ips.first()).map(String::as_str) == Some(HEADLESS);
        let families = self.families(&spec, &requested, previous.as_ref(), &policy)?;
        // As in Kubernetes, a service's primary family is as fixed as its cluster IP.
        let old_primary = previous.as_ref().and_then(|p| p.cluster_ips.first()).and_then(|ip| IpFamily::of_text(ip));
        if let (Some(old), Some(new)) = (old_primary, families.first()) {
            if old != *new {
                return Err(AllocError::Immutable { field: "spec.ipFamilies[0]".into(), old: old.to_string(), new: new.to_string() });
            }
        }
        let cluster_ips =
            if headless { vec![HEADLESS.to_owned()] } else { self.cluster_ips(&key, &families, &requested, previous.as_ref())? };
        let node_ports = if needs_node_ports(service) { self.node_ports_of(&key, &spec, previous.as_ref())? } else { Vec::new() };

        for port in spec.ports.iter_mut().flatten() {
            let protocol = port.protocol.as_deref().unwrap_or("TCP");
            port.node_port = node_ports.iter().find(|(p, proto, _)| *p == port.port && proto == protocol).map(|(_, _, n)| i32::from(*n));
        }
        spec.cluster_ip = cluster_ips.first().cloned();
        spec.cluster_ips = Some(cluster_ips.clone());
        spec.ip_families = Some(families.iter().map(|f| f.as_str().to_owned()).collect());
        spec.ip_family_policy = Some(policy);
        service.spec = Some(spec);

        let held = Held { cluster_ips, node_ports };
        if let Some(previous) = previous {
            self.release(&previous);
        }
        self.claim(&key, &held);
        self.held.insert(key, held);
        Ok(())
    }

    /// Forgets a service, freeing its cluster IPs and node ports.
    pub fn remove(&mut self, namespace: &str, name: &str) {
        if let Some(held) = self.held.remove(&object_key(namespace, name)) {
            self.release(&held);
        }
    }

    /// The families the service gets, primary first.
    fn families(
        &self,
        spec: &ServiceSpec,
        requested: &[String],
        previous: Option<&Held>,
        policy: &str,
    ) -> Result<Vec<IpFamily>, AllocError> {
        let lab = self.ranges.families();
        let given: Vec<IpFamily> = spec.ip_families.iter().flatten().filter_map(|f| IpFamily::from_name(f)).collect();
        let mut families = if !given.is_empty() {
            given
        } else {
            let from_ips = |ips: &[String]| ips.iter().filter_map(|ip| IpFamily::of_text(ip)).collect::<Vec<_>>();
            let mut families = from_ips(requested);
            if families.is_empty() {
                families = previous.map(|p| from_ips(&p.cluster_ips)).unwrap_or_default();
            }
            if families.is_empty() {
                families = lab.first().copied().into_iter().collect();
            }
            families
        };
        let field = if spec.ip_families.as_ref().is_some_and(|f| !f.is_empty()) { "spec.ipFamilies" } else { "spec.clusterIPs" };
        for (i, family) in families.iter().enumerate() {
            if !lab.contains(family) {
                return Err(AllocError::FamilyNotConfigured {
                    field: format!("{field}[{i}]"),
                    reason: format!("{family} is not configured: the service ranges are {}", self.cidr_text()),
                });
            }
        }
        match policy {
            "PreferDualStack" | "RequireDualStack" => {
                if let Some(other) = lab.iter().find(|f| !families.contains(f)) {
                    families.push(*other);
                }
                if policy == "RequireDualStack" && families.len() < 2 {
                    return Err(AllocError::FamilyNotConfigured {
                        field: "spec.ipFamilyPolicy".into(),
                        reason: format!("RequireDualStack needs an IPv4 and an IPv6 service range; the ranges are {}", self.cidr_text()),
                    });
                }
            }
            _ => families.truncate(1),
        }
        Ok(families)
    }

    /// One cluster IP per family: the requested one (checked), the one held, or a new one.
    fn cluster_ips(
        &mut self,
        key: &str,
        families: &[IpFamily],
        requested: &[String],
        previous: Option<&Held>,
    ) -> Result<Vec<String>, AllocError> {
        let mut out = Vec::new();
        for (i, family) in families.iter().enumerate() {
            let field = if i == 0 { "spec.clusterIP".to_owned() } else { format!("spec.clusterIPs[{i}]") };
            let Some(pool) = self.pools.iter().position(|p| p.family() == *family) else {
                return Err(AllocError::FamilyNotConfigured { field, reason: format!("{family} is not configured") });
            };
            let held = previous.and_then(|p| p.cluster_ips.iter().find(|ip| IpFamily::of_text(ip) == Some(*family)));
            let ip = match requested.iter().find(|ip| IpFamily::of_text(ip) == Some(*family)).or(held) {
                Some(text) => self.check_ip(key, pool, &field, text)?,
                None => self.next_ip(pool, &field)?,
            };
            out.push(ip.to_string());
        }
        Ok(out)
    }

    fn check_ip(&self, key: &str, pool: usize, field: &str, text: &str) -> Result<IpAddr, AllocError> {
        let pool = &self.pools[pool];
        let ip: IpAddr =
            text.parse().map_err(|_| AllocError::OutOfRange { field: field.into(), value: text.into(), range: pool.net.to_string() })?;
        if pool.offset(ip).is_none() {
            return Err(AllocError::OutOfRange {
                field: field.into(),
                value: text.into(),
                range: format!("{} (network and broadcast addresses excluded)", pool.net),
            });
        }
        match self.ips.get(&ip) {
            Some(owner) if owner != key => Err(AllocError::InUse { field: field.into(), value: text.into(), owner: owner.clone() }),
            _ => Ok(ip),
        }
    }

    fn next_ip(&mut self, pool: usize, field: &str) -> Result<IpAddr, AllocError> {
        let pool = &mut self.pools[pool];
        for _ in 0..pool.last {
            let offset = pool.next;
            pool.next = if pool.next >= pool.last { 1 } else { pool.next + 1 };
            let ip = pool.addr(offset);
            if !self.ips.contains_key(&ip) {
                return Ok(ip);
            }
        }
        Err(AllocError::Exhausted { field: field.into(), what: "cluster IP", range: pool.net.to_string() })
    }

    /// (port, protocol, nodePort) for every port: requested (checked), held, or new.
    fn node_ports_of(&mut self, key: &str, spec: &ServiceSpec, previous: Option<&Held>) -> Result<Vec<(i32, String, u16)>, AllocError> {
        let mut out: Vec<(i32, String, u16)> = Vec::new();
        let taken =
            |out: &[(i32, String, u16)], protocol: &str, node_port: u16| out.iter().any(|(_, p, n)| p == protocol && *n == node_port);
        for (i, port) in spec.ports.iter().flatten().enumerate() {
            let field = format!("spec.ports[{i}].nodePort");
            let protocol = port.protocol.clone().unwrap_or_else(|| "TCP".to_owned());
            let node_port = match port.node_port.filter(|n| *n != 0) {
                Some(requested) => {
                    let value = u16::try_from(requested).ok().filter(|n| self.ranges.node_ports.contains(n));
                    let Some(value) = value else {
                        return Err(AllocError::OutOfRange { field, value: requested.to_string(), range: self.ranges.node_port_text() });
                    };
                    match self.node_ports.get(&(protocol.clone(), value)) {
                        Some(owner) if owner != key => {
                            return Err(AllocError::InUse { field, value: format!("{value}/{protocol}"), owner: owner.clone() });
                        }
                        _ => value,
                    }
                }
                None => {
                    let held = previous
                        .and_then(|p| p.node_ports.iter().find(|(n, proto, _)| *n == port.port && *proto == protocol))
                        .map(|(_, _, node_port)| *node_port)
                        .filter(|n| !taken(&out, &protocol, *n));
                    match held {
                        Some(node_port) => node_port,
                        None => self.next_node_port(&protocol, &field, |n| taken(&out, &protocol, n))?,
                    }
                }
            };
            out.push((port.port, protocol, node_port));
        }
        Ok(out)
    }

    fn next_node_port(&mut self, protocol: &str, field: &str, taken: impl Fn(u16) -> bool) -> Result<u16, AllocError> {
        let (first, last) = (*self.ranges.node_ports.start(), *self.ranges.node_ports.end());
        for _ in first..=last {
            let candidate = self.next_node_port;
            self.next_node_port = if candidate >= last { first } else { candidate + 1 };
            // A port this service holds now is free to it only through `held`; skipping it
            // here keeps two of its ports from sharing a number.
            let owned = self.node_ports.contains_key(&(protocol.to_owned(), candidate));
            if !owned && !taken(candidate) {
                return Ok(candidate);
            }
        }
        Err(AllocError::Exhausted {
            field: field.into(),
            what: "node port",
            range: format!("{} ({protocol})", self.ranges.node_port_text()),
        })
    }

    fn claim(&mut self, key: &str, held: &Held) {
        for ip in held.cluster_ips.iter().filter_map(|ip| ip.parse::<IpAddr>().ok()) {
            self.ips.insert(ip, key.to_owned());
        }
        for (_, protocol, node_port) in &held.node_ports {
            self.node_ports.insert((protocol.clone(), *node_port), key.to_owned());
        }
    }

    fn release(&mut self, held: &Held) {
        for ip in held.cluster_ips.iter().filter_map(|ip| ip.parse::<IpAddr>().ok()) {
            self.ips.remove(&ip);
        }
        for (_, protocol, node_port) in &held.node_ports {
            self.node_ports.remove(&(protocol.clone(), *node_port));
        }
    }

    fn cidr_text(&self) -> String {
        let cidrs: Vec<String> = self.ranges.cidrs.iter().map(IpNet::to_string).collect();
        cidrs.join(", ")
    }
}

// === impl Held ===

impl Held {
    fn of(service: &Service) -> Self {
        let spec = service.spec.as_ref();
        let cluster_ips = spec.map(requested_ips).unwrap_or_default();
        let node_ports = spec
            .and_then(|s| s.ports.as_ref())
            .into_iter()
            .flatten()
            .filter_map(|p| {
                let node_port = u16::try_from(p.node_port?).ok()?;
                Some((p.port, p.protocol.clone().unwrap_or_else(|| "TCP".to_owned()), node_port))
            })
            .collect();
        Self { cluster_ips, node_ports }
    }
}

fn key_of(service: &Service) -> String {
    let meta = &service.metadata;
    object_key(meta.namespace.as_deref().unwrap_or("default"), meta.name.as_deref().unwrap_or_default())
}

/// `clusterIPs`, or `clusterIP` alone, without empty or repeated entries.
fn requested_ips(spec: &ServiceSpec) -> Vec<String> {
    let ips = match (&spec.cluster_ips, &spec.cluster_ip) {
        (Some(ips), _) if !ips.is_empty() => ips.clone(),
        (_, Some(ip)) => vec![ip.clone()],
        _ => Vec::new(),
    };
    let mut seen = HashSet::new();
    ips.into_iter().filter(|ip| !ip.is_empty() && seen.insert(ip.clone())).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::ServicePort;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn service(name: &str, type_: &str, ports: &[(i32, Option<i32>)]) -> Service {
        Service {
            metadata: ObjectMeta { name: Some(name.into()), namespace: Some("default".into()), ..Default::default() },
            spec: Some(ServiceSpec {
                type_: Some(type_.into()),
                ports: Some(
                    ports
                        .iter()
                        .map(|(port, node_port)| ServicePort {
                            name: Some(format!("p{port}")),
                            port: *port,
                            node_port: *node_port,
                            protocol: Some("TCP".into()),
                            ..Default::default()
                        })
                        .collect(),
                ),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn with(mut service: Service, f: impl FnOnce(&mut ServiceSpec)) -> Service {
        f(service.spec.get_or_insert_with(Default::default));
        service
    }

    fn allocated(allocator: &mut Allocator, mut service: Service) -> Result<ServiceSpec, AllocError> {
        allocator.allocate(&mut service)?;
        Ok(service.spec.unwrap_or_default())
    }

    fn v4_only() -> ServiceRanges {
        ServiceRanges { cidrs: vec![ServiceRanges::default().cidrs[0]], ..Default::default() }
    }

    fn strings(values: &[&str]) -> Option<Vec<String>> {
        Some(values.iter().map(|v| v.to_string()).collect())
    }

    #[test]
    fn families_default_from_policy() {
        let mut allocator = Allocator::new(&ServiceRanges::default(), []);
        let single = allocated(&mut allocator, service("a", "ClusterIP", &[(80, None)]));
        let single = single.unwrap_or_default();
        assert_eq!(single.cluster_ips, strings(&["198.18.128.1"]), "SingleStack: first usable IPv4 address");
        assert_eq!(single.ip_families, strings(&["IPv4"]), "SingleStack: the first range's family");
        assert_eq!(single.ip_family_policy.as_deref(), Some("SingleStack"), "policy defaulted");

        let dual = allocated(
            &mut allocator,
            with(service("b", "ClusterIP", &[(80, None)]), |s| s.ip_family_policy = Some("PreferDualStack".into())),
        );
        let dual = dual.unwrap_or_default();
        assert_eq!(dual.cluster_ips, strings(&["198.18.128.2", "2001:2:0:fe::1"]), "PreferDualStack: both families");
        assert_eq!(dual.ip_families, strings(&["IPv4", "IPv6"]), "primary family first");

        let v6 = allocated(&mut allocator, with(service("c", "ClusterIP", &[(80, None)]), |s| s.ip_families = strings(&["IPv6"])));
        assert_eq!(v6.map(|s| s.cluster_ip), Ok(Some("2001:2:0:fe::2".into())), "ipFamilies [IPv6] picks the IPv6 range");

        let mut single_family = Allocator::new(&v4_only(), []);
        let prefer = allocated(
            &mut single_family,
            with(service("d", "ClusterIP", &[(80, None)]), |s| s.ip_family_policy = Some("PreferDualStack".into())),
        );
        assert_eq!(prefer.map(|s| s.ip_families), Ok(strings(&["IPv4"])), "PreferDualStack on a single-family lab is single stack");
        let require = allocated(
            &mut single_family,
            with(service("e", "ClusterIP", &[(80, None)]), |s| s.ip_family_policy = Some("RequireDualStack".into())),
        );
        assert!(
            matches!(&require, Err(AllocError::FamilyNotConfigured { field, .. }) if field == "spec.ipFamilyPolicy"),
            "RequireDualStack on a single-family lab is an error, got {require:?}"
        );
        let v6_missing =
            allocated(&mut single_family, with(service("f", "ClusterIP", &[(80, None)]), |s| s.ip_families = strings(&["IPv6"])));
        assert!(
            matches!(&v6_missing, Err(AllocError::FamilyNotConfigured { field, .. }) if field == "spec.ipFamilies[0]"),
            "an unconfigured family is an error, got {v6_missing:?}"
        );
    }

    #[test]
    fn requested_cluster_ips_are_checked() {
        let mut allocator = Allocator::new(&ServiceRanges::default(), []);
        let request = |name: &str, ip: &str| with(service(name, "ClusterIP", &[(80, None)]), |s| s.cluster_ip = Some(ip.into()));
        let inside = allocated(&mut allocator, request("a", "198.18.140.7"));
        assert_eq!(inside.map(|s| s.cluster_ip), Ok(Some("198.18.140.7".into())), "an address in the range is kept");
        for (ip, why) in
            [("10.0.0.1", "outside the range"), ("198.18.128.0", "the network address"), ("198.18.143.255", "the broadcast address")]
        {
            let result = allocated(&mut allocator, request("b", ip));
            assert!(
                matches!(&result, Err(AllocError::OutOfRange { field, .. }) if field == "spec.clusterIP"),
                "{ip} ({why}) must be rejected on spec.clusterIP, got {result:?}"
            );
        }
        let taken = allocated(&mut allocator, request("c", "198.18.140.7"));
        assert_eq!(
            taken,
            Err(AllocError::InUse { field: "spec.clusterIP".into(), value: "198.18.140.7".into(), owner: "default/a".into() }),
            "another service's address is refused, naming the owner"
        );
        let next = allocated(&mut allocator, service("d", "ClusterIP", &[(80, None)]));
        assert_eq!(next.map(|s| s.cluster_ip), Ok(Some("198.18.128.1".into())), "failed requests allocate nothing");
    }

    #[test]
    fn node_ports_are_allocated_checked_and_exhausted() {
        let ranges = ServiceRanges { node_ports: 30000..=30002, ..Default::default() };
        let mut allocator = Allocator::new(&ranges, []);
        let node_ports = |spec: Result<ServiceSpec, AllocError>| {
            spec.map(|s| s.ports.unwrap_or_default().iter().map(|p| p.node_port).collect::<Vec<_>>())
        };
        let first = allocated(&mut allocator, service("a", "NodePort", &[(80, None), (443, Some(30002))]));
        assert_eq!(node_ports(first), Ok(vec![Some(30000), Some(30002)]), "free port allocated, requested port kept");
        let cluster_ip = allocated(&mut allocator, service("b", "ClusterIP", &[(80, None)]));
        assert_eq!(node_ports(cluster_ip), Ok(vec![None]), "ClusterIP services get no node port");
        let outside = allocated(&mut allocator, service("c", "NodePort", &[(80, Some(40000))]));
        assert!(
            matches!(&outside, Err(AllocError::OutOfRange { field, .. }) if field == "spec.ports[0].nodePort"),
            "outside the range: {outside:?}"
        );
        let used = allocated(&mut allocator, service("c", "NodePort", &[(80, Some(30002))]));
        assert!(matches!(&used, Err(AllocError::InUse { owner, .. }) if owner == "default/a"), "used by another service: {used:?}");
        let udp = allocated(
            &mut allocator,
            with(service("c", "NodePort", &[(53, Some(30002))]), |s| {
                s.ports.iter_mut().flatten().for_each(|p| p.protocol = Some("UDP".into()))
            }),
        );
        assert_eq!(node_ports(udp), Ok(vec![Some(30002)]), "the same number with another protocol is free");
        let exhausted = allocated(&mut allocator, service("d", "NodePort", &[(80, None), (81, None)]));
        assert_eq!(
            exhausted.map_err(|e| e.to_string()),
            Err("spec.ports[1].nodePort: no free node port left in 30000-30002 (TCP); delete services or widen the range".into()),
            "exhaustion names the port and the range"
        );
        let load_balancer = allocated(&mut allocator, service("e", "LoadBalancer", &[(80, None)]));
        assert_eq!(node_ports(load_balancer), Ok(vec![Some(30001)]), "LoadBalancer ports get node ports; a failed service held none");
    }

    #[test]
    fn reapply_keeps_allocated_values() {
        let ranges = ServiceRanges::default();
        let manifest = with(service("a", "NodePort", &[(80, None)]), |s| s.ip_family_policy = Some("PreferDualStack".into()));
        let mut allocator = Allocator::new(&ranges, []);
        let mut other = service("other", "NodePort", &[(80, None)]);
        let mut stored = manifest.clone();
        for service in [&mut other, &mut stored] {
            if let Err(error) = allocator.allocate(service) {
                panic!("first allocation failed: {error}");
            }
        }
        // A later apply: a new allocator over what the store holds, the same manifest again.
        let mut again = Allocator::new(&ranges, [&stored, &other]);
        let reapplied = allocated(&mut again, manifest.clone()).unwrap_or_default();
        let stored_spec = stored.spec.clone().unwrap_or_default();
        assert_eq!(reapplied.cluster_ips, stored_spec.cluster_ips, "cluster IPs kept");
        assert_eq!(reapplied.ports, stored_spec.ports, "node ports kept");
        let changed = allocated(&mut again, with(manifest, |s| s.cluster_ip = Some("198.18.130.1".into())));
        assert!(
            matches!(&changed, Err(AllocError::Immutable { field, .. }) if field == "spec.clusterIP"),
            "clusterIP is immutable: {changed:?}"
        );
        let flipped = allocated(&mut again, with(service("a", "NodePort", &[(80, None)]), |s| s.ip_families = strings(&["IPv6"])));
        assert!(
            matches!(&flipped, Err(AllocError::Immutable { field, .. }) if field == "spec.ipFamilies[0]"),
            "the primary family is immutable: {flipped:?}"
        );
    }

    #[test]
    fn headless_services_get_no_address() {
        let mut allocator = Allocator::new(&ServiceRanges::default(), []);
        let headless = allocated(&mut allocator, with(service("a", "ClusterIP", &[]), |s| s.cluster_ip = Some("None".into())));
        assert_eq!(headless.map(|s| s.cluster_ips), Ok(strings(&["None"])), "headless stays None");
    }

    #[test]
    fn ten_thousand_services_allocate_well_under_a_second() {
        let ranges =
            ServiceRanges::new(vec![ServiceRanges::parse_cidr("198.18.128.0/18").unwrap_or_else(|e| panic!("{e}"))], 30000..=32767);
        let ranges = ranges.unwrap_or_else(|e| panic!("{e}"));
        let services: Vec<Service> = (0..10_000).map(|i| service(&format!("s{i}"), "ClusterIP", &[(80, None)])).collect();
        let started = std::time::Instant::now();
        let mut allocator = Allocator::new(&ranges, []);
        let mut ips = HashSet::new();
        for mut service in services {
            if let Err(error) = allocator.allocate(&mut service) {
                panic!("allocation failed: {error}");
            }
            ips.insert(service.spec.and_then(|s| s.cluster_ip));
        }
        let elapsed = started.elapsed();
        assert_eq!(ips.len(), 10_000, "every service has its own address");
        assert!(elapsed < std::time::Duration::from_millis(500), "10k allocations took {elapsed:?}");
    }

    #[test]
    fn ranges_are_validated() {
        let cidr = |s: &str| ServiceRanges::parse_cidr(s);
        assert!(cidr("198.18.128.1/20").is_err(), "host bits set");
        assert!(cidr("nonsense").is_err(), "not a CIDR");
        let v4 = cidr("10.96.0.0/16").unwrap_or_else(|e| panic!("{e}"));
        let other_v4 = cidr("10.97.0.0/16").unwrap_or_else(|e| panic!("{e}"));
        assert!(matches!(ServiceRanges::new(vec![v4, other_v4], 30000..=32767), Err(RangeError::SameFamily { .. })), "two IPv4 ranges");
        assert_eq!(ServiceRanges::new(vec![], 30000..=32767), Err(RangeError::NoCidr), "no range");
        let tiny = cidr("10.0.0.0/31").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(ServiceRanges::new(vec![tiny], 30000..=32767), Err(RangeError::TooSmall(tiny)), "a /31 has no usable address");
        assert_eq!(ServiceRanges::parse_node_ports("30000-32767"), Ok(30000..=32767), "FIRST-LAST");
        for bad in ["30000", "0-10", "32767-30000", "a-b", "30000-70000"] {
            assert!(ServiceRanges::parse_node_ports(bad).is_err(), "{bad:?} must be rejected");
        }
    }
}
