//! The services of "TCP_CRR to a ClusterIP with N services": N ClusterIP services in one /17, the
//! last of them (the one kube-proxy's KUBE-SERVICES chain reaches after all the others) with the
//! server pod as its single backend, every other one with 1–10 dummy backends in the pod CIDR
//! that no traffic ever reaches. Both configurations that balance services get the same list.

use std::net::{Ipv4Addr, SocketAddrV4};

use ipnet::Ipv4Net;

/// The ClusterIP range of the many-services runs: a /17 holds 32,766 services (the lab's
/// default /20 holds 4,094, too few for 10,000).
pub const SERVICE_CIDR: Ipv4Net = match Ipv4Net::new(Ipv4Addr::new(198, 18, 128, 0), 17) {
    Ok(net) => net,
    Err(_) => panic!("198.18.128.0/17 is a valid network"),
};

/// The port every service listens on.
pub const SERVICE_PORT: u16 = 80;

/// The port dummy backends would listen on.
const DUMMY_BACKEND_PORT: u16 = 8080;

/// The namespace of the services (the pods' namespace in the Sluice lab).
pub const NAMESPACE: &str = "bench";

/// One ClusterIP service and its endpoints, in the terms both kube-proxy and Sluice need.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BenchService {
    pub name: String,
    pub cluster_ip: Ipv4Addr,
    pub port: u16,
    pub backends: Vec<SocketAddrV4>,
}

/// `count` services, the last one served by `target_backend`. Dummy backends are taken from
/// 198.19.0.100–249 (the pod subnet of both the lab's node0 and the classic bridge, at addresses
/// no pod gets in a two-pod run), so kube-proxy writes one KUBE-SEP chain per (service,
/// backend) as it would in a cluster.
pub fn catalogue(count: usize, target_backend: SocketAddrV4) -> Vec<BenchService> {
    (0..count)
        .map(|i| {
            let backends = if i + 1 == count {
                vec![target_backend]
            } else {
                (0..1 + i % 10).map(|b| SocketAddrV4::new(dummy_backend(i * 7 + b), DUMMY_BACKEND_PORT)).collect()
            };
            BenchService { name: format!("svc-{i}"), cluster_ip: cluster_ip(i), port: SERVICE_PORT, backends }
        })
        .collect()
}

/// The address the client connects to when `count` services exist: the last one's.
pub fn target(count: usize) -> SocketAddrV4 {
    SocketAddrV4::new(cluster_ip(count.saturating_sub(1)), SERVICE_PORT)
}

/// Cluster IP of service `i`: the (i + 1)-th address of the range (never the network address).
fn cluster_ip(i: usize) -> Ipv4Addr {
    let offset = u32::try_from(i + 1).unwrap_or(u32::MAX);
    assert!(offset < (1 << (32 - SERVICE_CIDR.prefix_len())) - 1, "service {i} does not fit {SERVICE_CIDR}");
    Ipv4Addr::from(u32::from(SERVICE_CIDR.network()) + offset)
}

fn dummy_backend(n: usize) -> Ipv4Addr {
    Ipv4Addr::new(198, 19, 0, 100 + (n % 150) as u8)
}

/// The largest number of services the range holds.
pub fn max_services() -> usize {
    (1usize << (32 - SERVICE_CIDR.prefix_len())) - 2
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_service_is_served_by_the_target_alone() {
        let server = SocketAddrV4::new(Ipv4Addr::new(198, 19, 0, 3), 7000);
        let list = catalogue(1000, server);
        assert_eq!(list.len(), 1000, "one entry per service");
        assert_eq!(list[999].backends, vec![server], "the target service has the server as its only backend");
        assert_eq!(SocketAddrV4::new(list[999].cluster_ip, list[999].port), target(1000), "target() names the last service");
        assert!(list[..999].iter().all(|s| (1..=10).contains(&s.backends.len())), "dummy services have 1-10 backends");
        assert!(list[..999].iter().all(|s| !s.backends.contains(&server)), "no dummy service reaches the server");
    }

    #[test]
    fn ten_thousand_cluster_ips_are_distinct_and_in_the_range() {
        let list = catalogue(10_000, SocketAddrV4::new(Ipv4Addr::new(198, 19, 0, 3), 7000));
        let ips: std::collections::BTreeSet<Ipv4Addr> = list.iter().map(|s| s.cluster_ip).collect();
        assert_eq!(ips.len(), 10_000, "every service has its own cluster IP");
        assert!(ips.iter().all(|ip| SERVICE_CIDR.contains(ip) && *ip != SERVICE_CIDR.network()), "all in {SERVICE_CIDR}");
        assert!(max_services() >= 10_000, "the range holds 10,000 services");
    }
}
