//! kube-proxy's nftables mode (kube-proxy 1.29 and later), reproduced for the classic-nft node:
//! one `ip kube-proxy` table whose `services` chain sends every new connection through the
//! `service-ips` verdict map to a chain per service port, which picks an endpoint chain with
//! `numgen random`; the endpoint chain DNATs. The same services as the iptables flavour get.

use std::fmt::Write;
use std::path::Path;
use std::time::Duration;

use sha2::{Digest, Sha256};

use super::kube_proxy::CLUSTER_CIDR;
use super::services::{BenchService, NAMESPACE, SERVICE_CIDR};
use crate::process::{self, Place};
use crate::BenchError;

/// kube-proxy's table; every chain, set and map lives in it.
const TABLE: &str = "ip kube-proxy";

/// The base chain of the forward hook: its first rule counts what the node forwards (bridged
/// frames included, through br_netfilter).
pub const FORWARD_CHAIN: &str = "filter-forward";

/// The base chain whose `jump services` counts the connections that walked the services map:
/// NAT chains see the first packet of each connection only.
pub const SERVICES_JUMP_CHAIN: &str = "nat-prerouting";

/// kube-proxy's default masquerade bit (14), written as it formats it.
const MASQUERADE_MARK: &str = "0x004000";

/// kube-proxy's base chains: (name, type, hook, priority). The filter chains run just before
/// DNAT (dstnat - 10) so they see the service address. Priorities are numbers, as kube-proxy
/// writes them, because nft before 1.0.7 refuses `dstnat` outside prerouting.
const BASE_CHAINS: [(&str, &str, &str, i32); 8] = [
    ("filter-prerouting", "filter", "prerouting", -110),
    ("filter-input", "filter", "input", -110),
    (FORWARD_CHAIN, "filter", "forward", -110),
    ("filter-output", "filter", "output", -110),
    ("filter-output-post-dnat", "filter", "output", -90),
    (SERVICES_JUMP_CHAIN, "nat", "prerouting", -100),
    ("nat-output", "nat", "output", -100),
    ("nat-postrouting", "nat", "postrouting", 100),
];

/// kube-proxy's jumps from base chains: (regular chain, from, match before the jump).
const JUMPS: [(&str, &str, &str); 11] = [
    ("nodeport-endpoints-check", "filter-input", "ct state new "),
    ("service-endpoints-check", "filter-input", "ct state new "),
    ("service-endpoints-check", FORWARD_CHAIN, "ct state new "),
    ("service-endpoints-check", "filter-output", "ct state new "),
    ("firewall-check", "filter-prerouting", "ct state new "),
    ("firewall-check", "filter-output", "ct state new "),
    ("services", "nat-output", ""),
    ("services", SERVICES_JUMP_CHAIN, ""),
    ("masquerading", "nat-postrouting", ""),
    ("cluster-ips-check", FORWARD_CHAIN, "ct state new "),
    ("cluster-ips-check", "filter-output-post-dnat", "ct state new "),
];

/// The chains kube-proxy gives one service's port and its first endpoint: (service chain,
/// endpoint chain), for reading what the target's endpoint chain counted.
pub fn service_chains(service: &BenchService) -> Option<(String, String)> {
    let backend = service.backends.first()?;
    Some((service_chain(service), endpoint_chain(service, &backend.to_string())))
}

/// The whole ruleset as one `nft -f` transaction, modelled on what kube-proxy's nftables
/// proxier writes on a full sync: the table is created, deleted and written again, so
/// reprogramming replaces everything atomically. Departures, all for the benchmark's checks
/// or the lab: three counters (the first rule of filter-forward, the jump to `services`, and
/// the DNAT of every endpoint of the `counted` service) since nftables counts only where
/// asked; no `masquerade` in the masquerading chain (the lab never masquerades, and no
/// benchmark packet carries the mark); no node addresses in `nodeport-ips` (the lab node has
/// none outside the pod bridge, and no service has a NodePort).
pub fn ruleset(services: &[BenchService], counted: Option<&str>) -> String {
    let mut out = format!("add table {TABLE}\ndelete table {TABLE}\nadd table {TABLE} {{ comment \"rules for kube-proxy\" ; }}\n");
    for (name, kind, hook, priority) in BASE_CHAINS {
        let _ = writeln!(out, "add chain {TABLE} {name} {{ type {kind} hook {hook} priority {priority} ; }}");
    }
    let _ = writeln!(out, "add rule {TABLE} {FORWARD_CHAIN} counter comment \"sluice bench: forwarded packets\"");
    let mut made: Vec<&str> = Vec::new();
    for (chain, from, matches) in JUMPS {
        if !made.contains(&chain) {
            let _ = writeln!(out, "add chain {TABLE} {chain}");
            made.push(chain);
        }
        let counter = if from == SERVICES_JUMP_CHAIN { "counter " } else { "" };
        let _ = writeln!(out, "add rule {TABLE} {from} {matches}{counter}jump {chain}");
    }
    out.push_str(&format!(
        "add chain {TABLE} mark-for-masquerade\n\
         add rule {TABLE} mark-for-masquerade mark set mark or {MASQUERADE_MARK}\n\
         add rule {TABLE} masquerading mark and {MASQUERADE_MARK} == 0 return\n\
         add rule {TABLE} masquerading mark set mark xor {MASQUERADE_MARK}\n\
         add set {TABLE} cluster-ips {{ type ipv4_addr ; comment \"Active ClusterIPs\" ; }}\n\
         add rule {TABLE} cluster-ips-check ip daddr @cluster-ips reject comment \"Reject traffic to invalid ports of ClusterIPs\"\n\
         add rule {TABLE} cluster-ips-check ip daddr {{ {SERVICE_CIDR} }} drop comment \"Drop traffic to unallocated ClusterIPs\"\n\
         add set {TABLE} nodeport-ips {{ type ipv4_addr ; comment \"IPs that accept NodePort traffic\" ; }}\n\
         add map {TABLE} no-endpoint-services {{ type ipv4_addr . inet_proto . inet_service : verdict ; comment \"vmap to drop or reject packets to services with no endpoints\" ; }}\n\
         add map {TABLE} no-endpoint-nodeports {{ type inet_proto . inet_service : verdict ; comment \"vmap to drop or reject packets to service nodeports with no endpoints\" ; }}\n\
         add chain {TABLE} reject-chain {{ comment \"helper for @no-endpoint-services / @no-endpoint-nodeports\" ; }}\n\
         add rule {TABLE} reject-chain reject\n\
         add rule {TABLE} service-endpoints-check ip daddr . meta l4proto . th dport vmap @no-endpoint-services\n\
         add rule {TABLE} nodeport-endpoints-check ip daddr @nodeport-ips meta l4proto . th dport vmap @no-endpoint-nodeports\n\
         add map {TABLE} firewall-ips {{ type ipv4_addr . inet_proto . inet_service : verdict ; comment \"destinations that are subject to LoadBalancerSourceRanges\" ; }}\n\
         add rule {TABLE} firewall-check ip daddr . meta l4proto . th dport vmap @firewall-ips\n\
         add map {TABLE} service-ips {{ type ipv4_addr . inet_proto . inet_service : verdict ; comment \"ClusterIP, ExternalIP and LoadBalancer IP traffic\" ; }}\n\
         add map {TABLE} service-nodeports {{ type inet_proto . inet_service : verdict ; comment \"NodePort traffic\" ; }}\n\
         add rule {TABLE} services ip daddr . meta l4proto . th dport vmap @service-ips\n\
         add rule {TABLE} services ip daddr @nodeport-ips meta l4proto . th dport vmap @service-nodeports\n"
    ));
    for service in services {
        write_service(&mut out, service, counted == Some(service.name.as_str()));
    }
    out
}

/// One service port: its endpoint chains and service chain, its ClusterIP in `cluster-ips`
/// and `service-ips`, then the rules, in the order kube-proxy adds them.
fn write_service(out: &mut String, service: &BenchService, counted: bool) {
    let (cluster_ip, port) = (service.cluster_ip, service.port);
    let chain = service_chain(service);
    let endpoints: Vec<(String, String)> =
        service.backends.iter().map(|b| (endpoint_chain(service, &b.to_string()), b.to_string())).collect();
    for (endpoint, _) in &endpoints {
        let _ = writeln!(out, "add chain {TABLE} {endpoint}");
    }
    let _ = writeln!(out, "add chain {TABLE} {chain}");
    let _ = writeln!(out, "add element {TABLE} cluster-ips {{ {cluster_ip} }}");
    let _ = writeln!(out, "add element {TABLE} service-ips {{ {cluster_ip} . tcp . {port} : goto {chain} }}");
    // Off-cluster clients of the ClusterIP are masqueraded (kube-proxy's local-traffic detector
    // by cluster CIDR).
    let _ = writeln!(
        out,
        "add rule {TABLE} {chain} ip daddr {cluster_ip} tcp dport {port} ip saddr != {CLUSTER_CIDR} jump mark-for-masquerade"
    );
    let choices: Vec<String> = endpoints.iter().enumerate().map(|(i, (endpoint, _))| format!("{i} : goto {endpoint}")).collect();
    let _ = writeln!(out, "add rule {TABLE} {chain} numgen random mod {} vmap {{ {} }}", endpoints.len(), choices.join(" , "));
    let counter = if counted { "counter " } else { "" };
    for ((endpoint, address), backend) in endpoints.iter().zip(&service.backends) {
        // Hairpin: a backend reaching itself through the service is marked for masquerade.
        let _ = writeln!(out, "add rule {TABLE} {endpoint} ip saddr {} jump mark-for-masquerade", backend.ip());
        let _ = writeln!(out, "add rule {TABLE} {endpoint} meta l4proto tcp {counter}dnat to {address}");
    }
}

/// `service-HASH-namespace/name/tcp/port-name`, as kube-proxy names a service port's chain.
fn service_chain(service: &BenchService) -> String {
    format!("service-{}", hashed(&format!("{NAMESPACE}/{}/tcp/http", service.name)))
}

/// `endpoint-HASH-namespace/name/tcp/port-name__ip/port`, as kube-proxy names an endpoint's
/// chain.
fn endpoint_chain(service: &BenchService, endpoint: &str) -> String {
    let endpoint = endpoint.replace(':', "/");
    format!("endpoint-{}", hashed(&format!("{NAMESPACE}/{}/tcp/http__{endpoint}", service.name)))
}

/// The name prefixed with 8 base32 characters of its SHA-256, as kube-proxy makes chain names
/// unique (its truncation to 240 characters never applies to the benchmark's short names).
fn hashed(name: &str) -> String {
    const BASE32: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let digest = Sha256::digest(name.as_bytes());
    let bits = digest.iter().take(5).fold(0u64, |acc, b| (acc << 8) | u64::from(*b));
    let code: String = (0..8).rev().map(|i| char::from(BASE32[((bits >> (i * 5)) & 31) as usize])).collect();
    format!("{code}-{name}")
}

/// Installs `ruleset` in the namespace at `node` with `nft -f -`: one transaction.
pub async fn install(node: &Path, ruleset: &str) -> Result<(), BenchError> {
    nft(node, &["-f", "-"], Some(ruleset)).await.map(|_| ())
}

/// Packets counted by the first counter of `chain` in kube-proxy's table, in the namespace at
/// `node`. Slow at scale: to list one chain, nft 1.0.6 fetches the elements of every set in the
/// table, one request each, and each service chain's `numgen` map is such a set (about 4 s with
/// 10,000 services; the checks read between measurements, never during one).
pub async fn chain_packets(node: &Path, chain: &str) -> Result<u64, BenchError> {
    let listing = nft(node, &["-j", "list", "chain", "ip", "kube-proxy", chain], None).await?;
    first_counter(&listing).ok_or_else(|| BenchError::Check(format!("no counter in nft chain {chain} of {}", node.display())))
}

/// Fails unless kube-proxy's table is the only nftables table in the namespace at `node`: the
/// node must not hold iptables rules too (iptables-nft would show as `ip filter`, `ip nat`).
pub async fn check_alone(node: &Path) -> Result<(), BenchError> {
    let listing = nft(node, &["-j", "list", "tables"], None).await?;
    let tables = table_names(&listing)
        .ok_or_else(|| BenchError::tool("nft", format!("printed unreadable JSON: {}", process::tail(&listing, 300))))?;
    if tables != [TABLE] {
        return Err(BenchError::Check(format!("the classic-nft node must hold kube-proxy's nftables table only; it holds {tables:?}")));
    }
    Ok(())
}

async fn nft(node: &Path, args: &[&str], stdin: Option<&str>) -> Result<String, BenchError> {
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    let cmd = process::command("nft", &args, &Place::node(node))?;
    // Like iptables-restore, nft takes seconds for tens of thousands of chains.
    process::output(cmd, "nft", stdin, Duration::from_secs(600)).await
}

/// The packets of the first rule with a counter in an `nft -j list chain` listing.
fn first_counter(listing: &str) -> Option<u64> {
    let json: serde_json::Value = serde_json::from_str(listing).ok()?;
    json["nftables"].as_array()?.iter().find_map(|item| {
        let exprs = item["rule"]["expr"].as_array()?;
        exprs.iter().find_map(|e| e["counter"]["packets"].as_u64())
    })
}

/// "family name" of every table in an `nft -j list tables` listing.
fn table_names(listing: &str) -> Option<Vec<String>> {
    let json: serde_json::Value = serde_json::from_str(listing).ok()?;
    let items = json["nftables"].as_array()?;
    Some(
        items
            .iter()
            .filter_map(|item| Some(format!("{} {}", item["table"]["family"].as_str()?, item["table"]["name"].as_str()?)))
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, SocketAddrV4};

    use super::*;
    use crate::configurations::kube_proxy::Services;

    /// Rules of `chain`, in order, without the `add rule ip kube-proxy CHAIN ` prefix.
    fn rules_of<'a>(text: &'a str, chain: &str) -> Vec<&'a str> {
        let prefix = format!("add rule {TABLE} {chain} ");
        text.lines().filter_map(|l| l.strip_prefix(prefix.as_str())).collect()
    }

    fn two_services() -> Vec<BenchService> {
        let server = SocketAddrV4::new(Ipv4Addr::new(198, 19, 0, 3), 7000);
        let mut list = Services { count: 2, backends: 3 }.list();
        list[1].backends = vec![server, SocketAddrV4::new(Ipv4Addr::new(198, 19, 0, 4), 7000)];
        list
    }

    #[test]
    fn chain_names_are_kube_proxys() {
        // From kube-proxy's own tests: the same input gives the same names.
        assert_eq!(hashed("ns1/svc1/tcp/p80"), "ULMVA6XW-ns1/svc1/tcp/p80", "service chain base");
        assert_eq!(hashed("ns1/svc1/tcp/p80__10.180.0.1/80"), "5OJB2KTY-ns1/svc1/tcp/p80__10.180.0.1/80", "endpoint chain base");
        let (svc, ep) = service_chains(&two_services()[1]).unwrap();
        assert!(svc.starts_with("service-") && svc.ends_with("-bench/svc-1/tcp/http"), "{svc}");
        assert!(ep.starts_with("endpoint-") && ep.ends_with("-bench/svc-1/tcp/http__198.19.0.3/7000"), "{ep}");
    }

    #[test]
    fn the_services_map_has_an_element_per_service_port() {
        let list = two_services();
        let text = ruleset(&list, None);
        let elements: Vec<&str> = text.lines().filter(|l| l.starts_with("add element ip kube-proxy service-ips ")).collect();
        assert_eq!(elements.len(), 2, "one service-ips element per service port: {elements:?}");
        for s in &list {
            let wanted = format!("{{ {} . tcp . 80 : goto {} }}", s.cluster_ip, service_chain(s));
            assert!(elements.iter().any(|e| e.ends_with(&wanted)), "{wanted} in {elements:?}");
        }
        assert_eq!(
            rules_of(&text, "services")[0],
            "ip daddr . meta l4proto . th dport vmap @service-ips",
            "services dispatches through the map first"
        );
        assert!(text.contains("add map ip kube-proxy service-ips { type ipv4_addr . inet_proto . inet_service : verdict ;"), "map type");
        assert_eq!(
            text.lines().filter(|l| l.starts_with("add element ip kube-proxy cluster-ips ")).count(),
            2,
            "every ClusterIP in cluster-ips"
        );
    }

    #[test]
    fn each_service_chain_picks_uniformly_among_its_endpoints() {
        let list = two_services();
        let text = ruleset(&list, None);
        for s in &list {
            let rules = rules_of(&text, &service_chain(s));
            let pick = rules.iter().find(|r| r.starts_with("numgen ")).unwrap_or_else(|| panic!("no numgen rule in {rules:?}"));
            let n = s.backends.len();
            assert!(pick.starts_with(&format!("numgen random mod {n} vmap {{ ")), "mod {n}: {pick}");
            for (i, b) in s.backends.iter().enumerate() {
                assert!(
                    pick.contains(&format!("{i} : goto {}", endpoint_chain(s, &b.to_string()))),
                    "choice {i} goes to {b}'s chain: {pick}"
                );
            }
            assert_eq!(pick.matches(" : goto ").count(), n, "one choice per endpoint: {pick}");
        }
    }

    #[test]
    fn endpoint_chains_dnat_to_their_backend() {
        let list = two_services();
        let text = ruleset(&list, Some("svc-1"));
        for s in &list {
            for b in &s.backends {
                let rules = rules_of(&text, &endpoint_chain(s, &b.to_string()));
                assert_eq!(rules.len(), 2, "hairpin mark and DNAT: {rules:?}");
                assert_eq!(rules[0], format!("ip saddr {} jump mark-for-masquerade", b.ip()), "hairpin");
                let counter = if s.name == "svc-1" { "counter " } else { "" };
                assert_eq!(rules[1], format!("meta l4proto tcp {counter}dnat to {b}"), "DNAT, counted for the counted service only");
            }
        }
    }

    #[test]
    fn the_checks_find_their_counters_and_nothing_masquerades() {
        let text = ruleset(&two_services(), None);
        assert!(rules_of(&text, FORWARD_CHAIN)[0].starts_with("counter "), "the forward hook counts every packet first");
        assert_eq!(rules_of(&text, SERVICES_JUMP_CHAIN), vec!["counter jump services"], "prerouting counts connections into services");
        assert!(!text.contains(" masquerade"), "the lab never masquerades");
        assert!(
            text.starts_with("add table ip kube-proxy\ndelete table ip kube-proxy\nadd table ip kube-proxy "),
            "the table is replaced in one transaction"
        );
    }

    #[test]
    fn listings_are_read() {
        let chain = r#"{"nftables": [{"metainfo": {"version": "1.0.6"}}, {"chain": {"family": "ip", "table": "kube-proxy", "name": "x", "handle": 9}}, {"rule": {"chain": "x", "handle": 19, "expr": [{"jump": {"target": "mark-for-masquerade"}}]}}, {"rule": {"chain": "x", "handle": 20, "expr": [{"match": {"op": "==", "left": {"meta": {"key": "l4proto"}}, "right": "tcp"}}, {"counter": {"packets": 42, "bytes": 2520}}, {"dnat": {"addr": "198.19.0.3", "port": 7000}}]}}]}"#;
        assert_eq!(first_counter(chain), Some(42));
        assert_eq!(first_counter(r#"{"nftables": [{"metainfo": {}}]}"#), None, "no rule, no counter");
        let tables = r#"{"nftables": [{"metainfo": {"version": "1.0.6"}}, {"table": {"family": "ip", "name": "kube-proxy", "handle": 3}}, {"table": {"family": "ip", "name": "nat", "handle": 4}}]}"#;
        assert_eq!(table_names(tables), Some(vec!["ip kube-proxy".to_string(), "ip nat".to_string()]));
    }

    /// nft's check mode accepts the ruleset, in a namespace of its own (nothing is committed).
    #[test]
    fn nft_accepts_the_ruleset() {
        if !sluice_datapath::testing::require_root("nft_accepts_the_ruleset") {
            return;
        }
        let name = format!("sluice-nft-check-{}", std::process::id());
        let netns = sluice_datapath::netns::create_named_netns(&name).unwrap();
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let list = Services { count: 3, backends: 3 }.list();
        let checked = runtime.block_on(nft(&netns, &["-c", "-f", "-"], Some(&ruleset(&list, Some("svc-2")))));
        sluice_datapath::netns::delete_named_netns(&name).unwrap();
        // A missing nft fails here too: the benchmark cannot run without it.
        checked.unwrap();
    }
}
