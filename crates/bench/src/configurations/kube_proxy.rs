//! kube-proxy's iptables mode, reproduced for the classic node: the chains it installs
//! (KUBE-SERVICES, KUBE-SVC-*, KUBE-SEP-*, KUBE-FORWARD, ...) with random-probability backend
//! selection and conntrack, for a handful of dummy services, so every new connection on the
//! classic node walks the rules it would walk in a cluster.

use std::fmt::Write;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::Path;
use std::time::Duration;

use super::services::{BenchService, NAMESPACE};
use crate::process::{self, Place};
use crate::BenchError;

/// The dummy services: ClusterIPs in 198.18.128.0/24 and backends in the classic pod subnet at
/// addresses no pod has; no traffic is ever sent to them.
#[derive(Debug, Clone, Copy)]
pub struct Services {
    pub count: usize,
    pub backends: usize,
}

pub const SERVICES: Services = Services { count: 10, backends: 3 };

/// The chains kube-proxy gives one service's port and its first endpoint: (KUBE-SVC-*,
/// KUBE-SEP-*), for reading what the target service's rules counted.
pub fn service_chains(service: &BenchService) -> Option<(String, String)> {
    let name = format!("{}/{}:http", NAMESPACE, service.name);
    let backend = service.backends.first()?;
    Some((chain("KUBE-SVC-", &name), chain("KUBE-SEP-", &format!("{name}/{backend}"))))
}

// === impl Services ===

impl Services {
    /// The dummy services as a list: ClusterIPs from 198.18.128.10, backends from 198.19.0.100
    /// on port 8080.
    pub fn list(self) -> Vec<BenchService> {
        (0..self.count)
            .map(|s| BenchService {
                name: format!("svc-{s}"),
                cluster_ip: Ipv4Addr::new(198, 18, 128, (10 + s).min(254) as u8),
                port: 80,
                backends: (0..self.backends)
                    .map(|b| SocketAddrV4::new(Ipv4Addr::new(198, 19, 0, (100 + s * self.backends + b).min(250) as u8), 8080))
                    .collect(),
            })
            .collect()
    }
}

/// The pod CIDR kube-proxy is told about (`--cluster-cidr`).
pub const CLUSTER_CIDR: &str = "198.19.0.0/16";

/// The rules as `iptables-restore` reads them, modelled on what kube-proxy 1.29 writes. One
/// departure: KUBE-POSTROUTING does not MASQUERADE (the lab never masquerades; no benchmark
/// packet carries the masquerade mark anyway).
pub fn rules(services: &[BenchService]) -> String {
    let mut filter = String::from(
        "*filter\n\
         :INPUT ACCEPT [0:0]\n\
         :FORWARD ACCEPT [0:0]\n\
         :OUTPUT ACCEPT [0:0]\n\
         :KUBE-EXTERNAL-SERVICES - [0:0]\n\
         :KUBE-FIREWALL - [0:0]\n\
         :KUBE-FORWARD - [0:0]\n\
         :KUBE-NODEPORTS - [0:0]\n\
         :KUBE-PROXY-FIREWALL - [0:0]\n\
         :KUBE-SERVICES - [0:0]\n\
         -A INPUT -m conntrack --ctstate NEW -m comment --comment \"kubernetes load balancer firewall\" -j KUBE-PROXY-FIREWALL\n\
         -A INPUT -m comment --comment \"kubernetes health check service ports\" -j KUBE-NODEPORTS\n\
         -A INPUT -m conntrack --ctstate NEW -m comment --comment \"kubernetes externally-visible service portals\" -j KUBE-EXTERNAL-SERVICES\n\
         -A INPUT -j KUBE-FIREWALL\n\
         -A FORWARD -m conntrack --ctstate NEW -m comment --comment \"kubernetes load balancer firewall\" -j KUBE-PROXY-FIREWALL\n\
         -A FORWARD -m comment --comment \"kubernetes forwarding rules\" -j KUBE-FORWARD\n\
         -A FORWARD -m conntrack --ctstate NEW -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n\
         -A FORWARD -m conntrack --ctstate NEW -m comment --comment \"kubernetes externally-visible service portals\" -j KUBE-EXTERNAL-SERVICES\n\
         -A OUTPUT -m conntrack --ctstate NEW -m comment --comment \"kubernetes load balancer firewall\" -j KUBE-PROXY-FIREWALL\n\
         -A OUTPUT -m conntrack --ctstate NEW -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n\
         -A OUTPUT -j KUBE-FIREWALL\n\
         -A KUBE-FIREWALL ! -s 127.0.0.0/8 -d 127.0.0.0/8 -m comment --comment \"block incoming localnet connections\" -m conntrack ! --ctstate RELATED,ESTABLISHED,DNAT -j DROP\n\
         -A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP\n\
         -A KUBE-FORWARD -m comment --comment \"kubernetes forwarding rules\" -m mark --mark 0x4000/0x4000 -j ACCEPT\n\
         -A KUBE-FORWARD -m comment --comment \"kubernetes forwarding conntrack rule\" -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT\n\
         COMMIT\n",
    );
    let mut chains = String::new();
    let mut nat_rules = String::new();
    let mut svc_rules = String::new();
    for service in services {
        let name = format!("{}/{}:http", NAMESPACE, service.name);
        let (cluster_ip, port) = (service.cluster_ip, service.port);
        let svc = chain("KUBE-SVC-", &name);
        let _ = writeln!(chains, ":{svc} - [0:0]");
        let _ = writeln!(
            svc_rules,
            "-A KUBE-SERVICES -d {cluster_ip}/32 -p tcp -m comment --comment \"{name} cluster IP\" -m tcp --dport {port} -j {svc}"
        );
        let _ = writeln!(
            nat_rules,
            "-A {svc} ! -s {CLUSTER_CIDR} -d {cluster_ip}/32 -p tcp -m comment --comment \"{name} cluster IP\" -m tcp --dport {port} -j KUBE-MARK-MASQ"
        );
        let mut seps = String::new();
        let count = service.backends.len();
        for (b, backend) in service.backends.iter().enumerate() {
            let sep = chain("KUBE-SEP-", &format!("{name}/{backend}"));
            let _ = writeln!(chains, ":{sep} - [0:0]");
            let remaining = count - b;
            if remaining > 1 {
                // Backend b of n is taken with probability 1/(n-b): uniform over all n.
                let _ = writeln!(
                    nat_rules,
                    "-A {svc} -m comment --comment \"{name} -> {backend}\" -m statistic --mode random --probability {:.11} -j {sep}",
                    1.0 / remaining as f64
                );
            } else {
                let _ = writeln!(nat_rules, "-A {svc} -m comment --comment \"{name} -> {backend}\" -j {sep}");
            }
            let _ = writeln!(seps, "-A {sep} -s {}/32 -m comment --comment \"{name}\" -j KUBE-MARK-MASQ", backend.ip());
            let _ = writeln!(seps, "-A {sep} -p tcp -m comment --comment \"{name}\" -m tcp -j DNAT --to-destination {backend}");
        }
        nat_rules.push_str(&seps);
    }
    let nat = format!(
        "*nat\n\
         :PREROUTING ACCEPT [0:0]\n\
         :INPUT ACCEPT [0:0]\n\
         :OUTPUT ACCEPT [0:0]\n\
         :POSTROUTING ACCEPT [0:0]\n\
         :KUBE-MARK-MASQ - [0:0]\n\
         :KUBE-NODEPORTS - [0:0]\n\
         :KUBE-POSTROUTING - [0:0]\n\
         :KUBE-SERVICES - [0:0]\n\
         {chains}\
         -A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n\
         -A OUTPUT -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n\
         -A POSTROUTING -m comment --comment \"kubernetes postrouting rules\" -j KUBE-POSTROUTING\n\
         -A KUBE-MARK-MASQ -j MARK --or-mark 0x4000\n\
         -A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN\n\
         -A KUBE-POSTROUTING -j MARK --xor-mark 0x4000\n\
         {svc_rules}\
         -A KUBE-SERVICES -m comment --comment \"kubernetes service nodeports; NOTE: this must be the last rule in this chain\" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS\n\
         {nat_rules}\
         COMMIT\n"
    );
    filter.push_str(&nat);
    filter
}

/// A chain name as kube-proxy makes them: a prefix and 16 characters of a hash of what the
/// chain is for (kube-proxy uses base32 of SHA-256; any stable hash serves here).
fn chain(prefix: &str, of: &str) -> String {
    // FNV-1a, 64 bits.
    let hash = of.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3));
    format!("{prefix}{hash:016X}")
}

/// Installs `rules` in the namespace at `node` with `iptables-restore`.
pub async fn install(node: &Path, rules: &str) -> Result<(), BenchError> {
    let place = Place::node(node);
    let cmd = process::command("iptables-restore", &["-w".into()], &place)?;
    // Tens of thousands of chains take a while to load: kube-proxy's own sync of 10,000
    // services is counted in seconds.
    process::output(cmd, "iptables-restore", Some(rules), Duration::from_secs(600)).await?;
    Ok(())
}

/// Packets counted by the jump to `target` in `chain` of `table`, in the namespace at `node`.
pub async fn jump_packets(node: &Path, table: &str, chain: &str, target: &str) -> Result<u64, BenchError> {
    let place = Place::node(node);
    let args: Vec<String> = ["-w", "-t", table, "-L", chain, "-n", "-v", "-x"].iter().map(|s| s.to_string()).collect();
    let cmd = process::command("iptables", &args, &place)?;
    let listing = process::output(cmd, "iptables", None, Duration::from_secs(30)).await?;
    listed_packets(&listing, target)
        .ok_or_else(|| BenchError::Check(format!("no jump to {target} in {table} {chain} of {}", node.display())))
}

/// The packet counter of the first rule jumping to `target` in an `iptables -L -v -x` listing.
fn listed_packets(listing: &str, target: &str) -> Option<u64> {
    listing.lines().skip(2).find_map(|line| {
        let mut fields = line.split_whitespace();
        let packets = fields.next()?.parse().ok()?;
        let _bytes = fields.next()?;
        (fields.next()? == target).then_some(packets)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_service_has_a_chain_and_uniform_backend_selection() {
        let text = rules(&Services { count: 4, backends: 3 }.list());
        assert_eq!(text.matches("-A KUBE-SERVICES -d ").count(), 4, "one KUBE-SERVICES rule per service");
        assert_eq!(text.matches("--probability 0.33333333333").count(), 4, "first of three backends: 1/3");
        assert_eq!(text.matches("--probability 0.50000000000").count(), 4, "second of three: 1/2");
        assert_eq!(text.matches("-j DNAT --to-destination").count(), 12, "one DNAT per backend");
        assert_eq!(text.matches("COMMIT").count(), 2, "filter and nat tables");
        assert!(!text.contains("MASQUERADE"), "the lab never masquerades");
    }

    #[test]
    fn the_nodeports_rule_closes_kube_services() {
        let text = rules(&SERVICES.list());
        let last = text.lines().rfind(|l| l.starts_with("-A KUBE-SERVICES")).unwrap();
        assert!(last.contains("KUBE-NODEPORTS"), "last KUBE-SERVICES rule: {last}");
    }

    #[test]
    fn chain_names_fit_iptables() {
        let name = chain("KUBE-SEP-", "bench/svc-9:http/198.19.0.129");
        assert!(name.len() <= 28, "{name} is longer than iptables allows");
        assert_ne!(chain("KUBE-SVC-", "a"), chain("KUBE-SVC-", "b"));
    }

    #[test]
    fn jump_counters_are_read_from_the_listing() {
        let listing = "Chain FORWARD (policy ACCEPT 0 packets, 0 bytes)\n    pkts      bytes target     prot opt in     out     source               destination\n       0        0 KUBE-PROXY-FIREWALL  0    --  *      *       0.0.0.0/0            0.0.0.0/0            ctstate NEW\n  366615 10141492973 KUBE-FORWARD  0    --  *      *       0.0.0.0/0            0.0.0.0/0\n";
        assert_eq!(listed_packets(listing, "KUBE-FORWARD"), Some(366_615));
        assert_eq!(listed_packets(listing, "KUBE-SERVICES"), None);
    }
}
