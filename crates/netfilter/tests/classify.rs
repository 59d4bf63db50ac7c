//! Table-driven: each fixture (real iptables-save / nft JSON output, see fixtures/regenerate.sh)
//! classified for a node with pod CIDRs 10.244.1.0/24 and fd00:10:244:1::/64 and device eth0,
//! against the expected count per class and the expected bypassed rules with a reason fragment.

#![allow(clippy::expect_used, clippy::unwrap_used)] // a test fails loudly on what it did not expect

use ipnet::IpNet;
use sluice_netfilter::model::{Backend, Family, Ruleset, Source};
use sluice_netfilter::{iptables, nft, Class, Context, Counts, Report};

/// One dump of a node.
#[derive(Clone, Copy)]
enum Dump {
    Iptables(&'static str, Family),
    Nft(&'static str),
}

struct Case {
    name: &'static str,
    dumps: &'static [Dump],
    /// Whether the node's other local networks (docker0, the compose bridge, virbr0, wg0) are known.
    local_networks: bool,
    counts: Counts,
    /// Text of each bypassed rule, in report order, with a fragment of its reason.
    bypassed: &'static [(&'static str, &'static str)],
}

const fn counts(owned: usize, harmless: usize, kube_proxy: usize, bypassed: usize) -> Counts {
    Counts { owned, harmless, kube_proxy, bypassed }
}

use Dump::{Iptables, Nft};
use Family::{Ipv4, Ipv6};

const CASES: &[Case] = &[
    Case {
        name: "clean node, IPv4: INPUT firewall, Sluice's own FORWARD chain, conntrack ACCEPT",
        dumps: &[Iptables("clean.iptables-save", Ipv4)],
        local_networks: false,
        counts: counts(3, 13, 0, 0),
        bypassed: &[],
    },
    Case {
        name: "clean node, IPv6",
        dumps: &[Iptables("clean.ip6tables-save", Ipv6)],
        local_networks: false,
        counts: counts(3, 8, 0, 0),
        bypassed: &[],
    },
    Case {
        name: "clean node, nft JSON alone (iptables-nft tables plus a native inet table)",
        dumps: &[Nft("clean.nft.json")],
        local_networks: false,
        counts: counts(6, 24, 0, 0),
        bypassed: &[],
    },
    Case {
        name: "clean node, all three dumps merged: iptables-nft copies in the nft JSON dropped",
        dumps: &[Iptables("clean.iptables-save", Ipv4), Iptables("clean.ip6tables-save", Ipv6), Nft("clean.nft.json")],
        local_networks: false,
        counts: counts(6, 21 + 3, 0, 0),
        bypassed: &[],
    },
    Case {
        name: "kube-proxy iptables mode: KUBE-* rules are kube-proxy, builtin policies harmless",
        dumps: &[Iptables("kube-proxy.iptables-save", Ipv4)],
        local_networks: false,
        counts: counts(0, 12, 50, 0),
        bypassed: &[],
    },
    Case {
        name: "kube-proxy nftables mode: the kube-proxy table",
        dumps: &[Nft("kube-proxy.nft.json")],
        local_networks: false,
        counts: counts(0, 0, 47, 0),
        bypassed: &[],
    },
    Case {
        name: "user DNAT on the pod CIDR and pod masquerade (iptables)",
        dumps: &[Iptables("user-dnat.iptables-save", Ipv4)],
        local_networks: false,
        counts: counts(0, 9, 0, 2),
        bypassed: &[
            (
                r#"-A PREROUTING -d 10.244.0.0/16 -p tcp -m tcp --dport 8080 -m comment --comment "legacy clients: app moved to port 80" -j DNAT --to-destination 10.244.1.20:80"#,
                "PREROUTING rule matches destination 10.244.0.0/16, which contains pod CIDR 10.244.1.0/24: under eBPF host routing pod traffic skips PREROUTING, so this DNAT would no longer apply",
            ),
            (
                r#"-A POSTROUTING -s 10.244.0.0/16 ! -d 10.244.0.0/16 -m comment --comment "pods to the world" -j MASQUERADE"#,
                "skips POSTROUTING, so this MASQUERADE would no longer apply",
            ),
        ],
    },
    Case {
        name: "user DNAT on the pod CIDR and pod masquerade (native nft, both families)",
        dumps: &[Nft("user-dnat.nft.json")],
        local_networks: false,
        counts: counts(0, 4, 0, 3),
        bypassed: &[
            (
                r#"ip daddr 10.244.0.0/16 tcp dport 8080 dnat to 10.244.1.20:80 comment "legacy clients: app moved to port 80""#,
                "rule in chain prerouting (PREROUTING hook) matches destination 10.244.0.0/16",
            ),
            ("ip saddr 10.244.0.0/16 ip daddr != 10.244.0.0/16 masquerade", "so this MASQUERADE would no longer apply"),
            (
                r#"ip6 saddr fd00:10:244::/56 oifname "eth0" masquerade"#,
                "matches source fd00:10:244::/56, which contains pod CIDR fd00:10:244:1::/64",
            ),
        ],
    },
    Case {
        name: "DROPs in FORWARD, a user chain, conntrack INVALID, metadata block (iptables)",
        dumps: &[Iptables("forward-drop.iptables-save", Ipv4)],
        local_networks: false,
        counts: counts(0, 8, 0, 6),
        bypassed: &[
            ("-A FORWARD -m conntrack --ctstate INVALID -j DROP", "only -m conntrack --ctstate INVALID"),
            (
                r#"-A FORWARD -d 169.254.169.254/32 -m comment --comment "no instance metadata for forwarded traffic" -j DROP"#,
                "matches destination 169.254.169.254/32, which pods can send to",
            ),
            ("-A FORWARD -i lxc+ -j POD-EGRESS", "jumps to POD-EGRESS, which holds"),
            (
                "-A FORWARD -s 10.244.0.0/16 -d 192.168.0.0/16 -j DROP",
                "FORWARD rule matches source 10.244.0.0/16, which contains pod CIDR 10.244.1.0/24: under eBPF host routing pod traffic skips FORWARD, so this DROP would no longer apply",
            ),
            (r#"-A POD-EGRESS -p tcp -m tcp --dport 25 -j LOG --log-prefix "pod smtp: ""#, "so this LOG would"),
            ("-A POD-EGRESS -p tcp -m tcp --dport 25 -j REJECT --reject-with tcp-reset", "rule in chain POD-EGRESS (reached from FORWARD)"),
        ],
    },
    Case {
        name: "IPv6 FORWARD DROP policy behind ACCEPTs of all pod traffic: only the REJECT is bypassed",
        dumps: &[Iptables("forward-drop.ip6tables-save", Ipv6)],
        local_networks: false,
        counts: counts(0, 6, 0, 1),
        bypassed: &[(
            "-A FORWARD -s fd00:10:244::/56 -d fd12:3456:789a::/48 -j REJECT --reject-with icmp6-adm-prohibited",
            "skips FORWARD, so this REJECT",
        )],
    },
    Case {
        name: "native nft forward chain, policy drop shadowed by pod ACCEPTs",
        dumps: &[Nft("forward-drop.nft.json")],
        local_networks: false,
        counts: counts(0, 6, 0, 3),
        bypassed: &[
            ("ct state invalid drop", "only ct state invalid"),
            (
                r#"iifname "lxc*" ip daddr 169.254.169.254 counter drop comment "no instance metadata for pods""#,
                "matches input interface lxc+ (pod interfaces)",
            ),
            ("ip saddr 10.244.0.0/16 ip daddr 192.168.0.0/16 drop", "which contains pod CIDR 10.244.1.0/24"),
        ],
    },
    Case {
        name: "Docker, local networks known: only Docker's FORWARD DROP policy stops applying",
        dumps: &[Iptables("docker.iptables-save", Ipv4)],
        local_networks: true,
        counts: counts(0, 32, 0, 1),
        bypassed: &[(":FORWARD DROP", "FORWARD policy DROP drops pod traffic that no rule accepts")],
    },
    Case {
        name: "Docker, local networks unknown: its masquerades might see traffic from 172.17/16 to pods",
        dumps: &[Iptables("docker.iptables-save", Ipv4)],
        local_networks: false,
        counts: counts(0, 30, 0, 3),
        bypassed: &[
            (":FORWARD DROP", "so it would pass instead"),
            ("-A POSTROUTING -s 172.18.0.0/16 ! -o br-3c2f6d1e9a8b -j MASQUERADE", "source 172.18.0.0/16, which can send to pods"),
            ("-A POSTROUTING -s 172.17.0.0/16 ! -o docker0 -j MASQUERADE", "source 172.17.0.0/16, which can send to pods"),
        ],
    },
    Case {
        name: "Docker seen only through nft JSON: xt matches (addrtype) are opaque, so more is flagged",
        dumps: &[Nft("docker.nft.json")],
        local_networks: true,
        counts: counts(0, 30, 0, 3),
        bypassed: &[
            ("xt match addrtype counter jump DOCKER", "only xt match addrtype"),
            (r#"iifname != "docker0" tcp dport 8080 counter xt target DNAT"#, "so this DNAT would no longer apply"),
            ("policy drop;", "FORWARD policy DROP"),
        ],
    },
    Case {
        name: "Docker, iptables-save and nft JSON merged: the readable iptables-save view wins",
        dumps: &[Iptables("docker.iptables-save", Ipv4), Nft("docker.nft.json")],
        local_networks: true,
        counts: counts(0, 32, 0, 1),
        bypassed: &[(":FORWARD DROP", "FORWARD policy DROP")],
    },
    Case {
        name: "libvirt, WireGuard and tun rules (legacy, with counters), local networks known",
        dumps: &[Iptables("unrelated-ifaces.iptables-legacy-save", Ipv4)],
        local_networks: true,
        counts: counts(0, 40, 0, 0),
        bypassed: &[],
    },
    Case {
        name: "libvirt without local networks: its masquerades could meet traffic to pods",
        dumps: &[Iptables("unrelated-ifaces.iptables-legacy-save", Ipv4)],
        local_networks: false,
        counts: counts(0, 36, 0, 4),
        bypassed: &[
            ("-A POSTROUTING -j LIBVIRT_PRT", "jumps to LIBVIRT_PRT"),
            ("-A LIBVIRT_PRT -s 192.168.122.0/24 ! -d 192.168.122.0/24 -p tcp -j MASQUERADE --to-ports 1024-65535", "destination ! 192.168.122.0/24, which does not exclude pod CIDR"),
            ("-A LIBVIRT_PRT -s 192.168.122.0/24 ! -d 192.168.122.0/24 -p udp -j MASQUERADE --to-ports 1024-65535", "MASQUERADE"),
            ("-A LIBVIRT_PRT -s 192.168.122.0/24 ! -d 192.168.122.0/24 -j MASQUERADE", "MASQUERADE"),
        ],
    },
];

fn fixture(name: &str) -> String {
    // The runner's CARGO_MANIFEST_DIR, not the one compiled in: a cached test binary built from
    // another checkout of the same sources would otherwise read that checkout's fixtures.
    let dir = std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").to_string());
    let path = format!("{dir}/tests/fixtures/{name}");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {path}: {e}"))
}

fn load(dumps: &[Dump]) -> Ruleset {
    Ruleset::merge(dumps.iter().map(|dump| match *dump {
        Iptables(name, family) => iptables::parse(&fixture(name), family).unwrap_or_else(|e| panic!("{name}: {e}")),
        Nft(name) => nft::parse(&fixture(name)).unwrap_or_else(|e| panic!("{name}: {e}")),
    }))
}

fn nets(list: &[&str]) -> Vec<IpNet> {
    list.iter().map(|n| n.parse().unwrap()).collect()
}

fn node() -> Context {
    Context::new(nets(&["10.244.1.0/24", "fd00:10:244:1::/64"]), vec!["eth0".to_string()])
}

fn node_with_local_networks() -> Context {
    node().with_local_networks(nets(&["172.17.0.0/16", "172.18.0.0/16", "192.168.122.0/24", "10.8.0.0/24"]))
}

#[test]
fn fixtures() {
    for case in CASES {
        let ruleset = load(case.dumps);
        let ctx = if case.local_networks { node_with_local_networks() } else { node() };
        let report = Report::new(&ruleset, &ctx);
        assert_eq!(report.counts(), case.counts, "{}: counts per class\n{}", case.name, report.render_table(true));
        assert_eq!(report.clean(), case.bypassed.is_empty(), "{}: clean()", case.name);
        let bypassed: Vec<_> = report.bypassed().collect();
        let texts: Vec<&str> = bypassed.iter().map(|v| v.rule.text.as_str()).collect();
        let expected: Vec<&str> = case.bypassed.iter().map(|(text, _)| *text).collect();
        assert_eq!(texts, expected, "{}: bypassed rules", case.name);
        for (verdict, (text, reason)) in bypassed.iter().zip(case.bypassed) {
            assert!(
                verdict.reason.contains(reason),
                "{}: reason for `{text}` should contain {reason:?}, is {:?}",
                case.name,
                verdict.reason
            );
        }
    }
}

/// A one-table ruleset: `rules` are iptables-save rule lines of table `table`.
fn snippet(table: &str, user_chains: &[&str], rules: &[&str]) -> Ruleset {
    let builtin: &[&str] = match table {
        "nat" => &["PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"],
        "raw" => &["PREROUTING", "OUTPUT"],
        "mangle" => &["PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"],
        _ => &["INPUT", "FORWARD", "OUTPUT"],
    };
    let mut text = format!("*{table}\n");
    for chain in builtin {
        text.push_str(&format!(":{chain} ACCEPT [0:0]\n"));
    }
    for chain in user_chains {
        text.push_str(&format!(":{chain} - [0:0]\n"));
    }
    for rule in rules {
        text.push_str(rule);
        text.push('\n');
    }
    text.push_str("COMMIT\n");
    iptables::parse(&text, Ipv4).unwrap_or_else(|e| panic!("{text}: {e}"))
}

struct RuleCase {
    table: &'static str,
    chains: &'static [&'static str],
    rules: &'static [&'static str],
    /// Context variant: "node", "local" (local networks known), "no-devices", "ipv6-only".
    ctx: &'static str,
    /// The rule under test (the last one of `rules`), its expected class and reason fragment.
    class: Class,
    reason: &'static str,
}

const RULE_CASES: &[RuleCase] = &[
    RuleCase {
        table: "filter",
        chains: &[],
        rules: &["-A FORWARD -s 10.244.0.0/16 -j DROP"],
        ctx: "node",
        class: Class::Bypassed,
        reason: "FORWARD rule matches source 10.244.0.0/16, which contains pod CIDR 10.244.1.0/24: under eBPF host routing pod traffic skips FORWARD, so this DROP would no longer apply",
    },
    RuleCase {
        table: "nat",
        chains: &[],
        rules: &["-A PREROUTING -d 10.244.1.0/24 -p tcp -m tcp --dport 80 -j DNAT --to-destination 10.244.1.9:8080"],
        ctx: "node",
        class: Class::Bypassed,
        reason: "matches destination 10.244.1.0/24, which is the pod CIDR",
    },
    RuleCase {
        table: "nat",
        chains: &[],
        rules: &["-A POSTROUTING -s 10.244.1.7/32 -o eth0 -j SNAT --to-source 192.0.2.1"],
        ctx: "node",
        class: Class::Bypassed,
        reason: "matches output interface eth0 (a configured device) and matches source 10.244.1.7/32, inside pod CIDR 10.244.1.0/24",
    },
    RuleCase {
        table: "filter",
        chains: &[],
        rules: &["-A FORWARD -j DROP"],
        ctx: "node",
        class: Class::Bypassed,
        reason: "matches all traffic (pod traffic included)",
    },
    RuleCase {
        table: "filter",
        chains: &[],
        rules: &["-A FORWARD -o lxc+ -j DROP"],
        ctx: "node",
        class: Class::Bypassed,
        reason: "matches output interface lxc+ (pod interfaces)",
    },
    RuleCase {
        table: "filter",
        chains: &[],
        rules: &["-A FORWARD -i eth0 -p tcp -m tcp --dport 22 -j REJECT"],
        ctx: "node",
        class: Class::Bypassed,
        reason: "matches input interface eth0 (a configured device)",
    },
    RuleCase {
        table: "filter",
        chains: &[],
        rules: &["-A FORWARD -i eth0 -j DROP"],
        ctx: "no-devices",
        class: Class::Harmless,
        reason: "from pods: input interface eth0 is not a pod interface (lxc+)",
    },
    RuleCase {
        table: "filter",
        chains: &[],
        rules: &["-A FORWARD -i docker0 -j DROP"],
        ctx: "node",
        class: Class::Harmless,
        reason: "to pods: input interface docker0 is not a configured device (eth0)",
    },
    RuleCase {
        table: "filter",
        chains: &[],
        rules: &["-A FORWARD -o br-5f0e1d2c3b4a -j DROP"],
        ctx: "node",
        class: Class::Harmless,
        reason: "output interface br-5f0e1d2c3b4a is neither a pod interface (lxc+) nor a configured device (eth0)",
    },
    RuleCase {
        table: "filter",
        chains: &[],
        rules: &["-A FORWARD ! -i lxc+ ! -i eth0 -j DROP"],
        ctx: "node",
        class: Class::Harmless,
        reason: "input interface ! lxc+ excludes every pod interface",
    },
    RuleCase {
        table: "filter",
        chains: &[],
        rules: &["-A FORWARD -d 172.17.0.0/16 -j DROP"],
        ctx: "local",
        class: Class::Harmless,
        reason: "destination 172.17.0.0/16 lies in 172.17.0.0/16, a network of another interface",
    },
    RuleCase {
        table: "filter",
        chains: &[],
        rules: &["-A FORWARD -d 172.17.0.0/16 -j DROP"],
        ctx: "node",
        class: Class::Bypassed,
        reason: "matches destination 172.17.0.0/16, which pods can send to",
    },
    RuleCase {
        table: "filter",
        chains: &[],
        rules: &["-A FORWARD ! -s 10.244.0.0/16 -d 10.244.0.0/16 -j DROP"],
        ctx: "node",
        class: Class::Bypassed,
        reason: "matches destination 10.244.0.0/16, which contains pod CIDR 10.244.1.0/24",
    },
    RuleCase {
        table: "filter",
        chains: &[],
        rules: &["-A FORWARD ! -s 10.0.0.0/8 ! -d 10.0.0.0/8 -j DROP"],
        ctx: "node",
        class: Class::Harmless,
        reason: "from pods: source ! 10.0.0.0/8 excludes every pod CIDR (10.244.1.0/24); to pods: destination ! 10.0.0.0/8 excludes every pod CIDR",
    },
    RuleCase {
        table: "filter",
        chains: &[],
        rules: &["-A FORWARD -s 10.244.0.0/16 -j DROP"],
        ctx: "ipv6-only",
        class: Class::Harmless,
        reason: "no IPv4 pod CIDR is configured",
    },
    RuleCase {
        table: "filter",
        chains: &[],
        rules: &["-A INPUT -s 10.244.0.0/16 -p tcp -m tcp --dport 10250 -j DROP"],
        ctx: "node",
        class: Class::Harmless,
        reason: "INPUT is not skipped by eBPF host routing",
    },
    RuleCase {
        table: "filter",
        chains: &[],
        rules: &["-A FORWARD -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT"],
        ctx: "node",
        class: Class::Harmless,
        reason: "its verdict ACCEPT has no side effect",
    },
    RuleCase {
        table: "mangle",
        chains: &[],
        rules: &["-A FORWARD -p tcp -m tcp --tcp-flags SYN,RST SYN -j TCPMSS --clamp-mss-to-pmtu"],
        ctx: "node",
        class: Class::Bypassed,
        reason: "so this TCPMSS would no longer apply",
    },
    RuleCase {
        table: "raw",
        chains: &[],
        rules: &["-A PREROUTING -i lxc+ -j CT --notrack"],
        ctx: "node",
        class: Class::Bypassed,
        reason: "skips PREROUTING, so this CT would",
    },
    RuleCase {
        table: "mangle",
        chains: &[],
        rules: &["-A PREROUTING -i lxc+ -j MARK --set-xmark 0x1/0xffffffff"],
        ctx: "node",
        class: Class::Bypassed,
        reason: "so this MARK would no longer apply",
    },
    RuleCase {
        table: "filter",
        chains: &["ALLOW"],
        rules: &["-A ALLOW -s 10.244.0.0/16 -j ACCEPT", "-A ALLOW -j RETURN", "-A FORWARD -j ALLOW"],
        ctx: "node",
        class: Class::Harmless,
        reason: "ALLOW holds no rule pod traffic would skip",
    },
    RuleCase {
        table: "filter",
        chains: &["A", "B"],
        rules: &["-A B -o lxc+ -j DROP", "-A A -j B", "-A FORWARD -j A"],
        ctx: "node",
        class: Class::Bypassed,
        reason: "jumps to A, which holds `-A A -j B`",
    },
    RuleCase {
        table: "filter",
        chains: &["ONLY-DOCKER"],
        rules: &["-A ONLY-DOCKER -j DROP", "-A FORWARD -i docker0 -j ONLY-DOCKER"],
        ctx: "node",
        class: Class::Harmless,
        reason: "cannot match host-routed pod traffic",
    },
    RuleCase {
        table: "filter",
        chains: &["ONLY-DOCKER"],
        rules: &["-A FORWARD -i docker0 -j ONLY-DOCKER", "-A ONLY-DOCKER -j DROP"],
        ctx: "node",
        class: Class::Harmless,
        reason: "reached only through `-A FORWARD -i docker0 -j ONLY-DOCKER`, which cannot match pod traffic",
    },
    RuleCase {
        table: "filter",
        chains: &["UNUSED"],
        rules: &["-A UNUSED -j DROP"],
        ctx: "node",
        class: Class::Harmless,
        reason: "chain UNUSED is not reached from any base chain",
    },
    RuleCase {
        table: "filter",
        chains: &[],
        rules: &["-A FORWARD -i lxc+ -j ACCEPT", "-A FORWARD -j DROP"],
        ctx: "no-devices",
        class: Class::Harmless,
        reason: "pod traffic never gets here: rule 1 (`-A FORWARD -i lxc+ -j ACCEPT`) decides it first",
    },
    RuleCase {
        table: "filter",
        chains: &[],
        rules: &["-A FORWARD -i lxc+ -j ACCEPT", "-A FORWARD -j DROP"],
        ctx: "node",
        class: Class::Bypassed,
        reason: "matches all traffic",
    },
    RuleCase {
        table: "filter",
        chains: &[],
        rules: &["-A FORWARD -i lxc+ -m comment --comment \"sluice: pods\" -j DROP"],
        ctx: "node",
        class: Class::Owned,
        reason: "owned by Sluice (comment \"sluice: pods\")",
    },
    RuleCase {
        table: "nat",
        chains: &["KUBE-SERVICES"],
        rules: &["-A KUBE-SERVICES -d 10.96.0.1/32 -j DROP", "-A PREROUTING -j KUBE-SERVICES"],
        ctx: "node",
        class: Class::KubeProxy,
        reason: "kube-proxy rule (jumps to KUBE-SERVICES) that pod traffic meets on PREROUTING",
    },
];

#[test]
fn single_rules() {
    for case in RULE_CASES {
        let ruleset = snippet(case.table, case.chains, case.rules);
        let ctx = match case.ctx {
            "node" => node(),
            "local" => node_with_local_networks(),
            "no-devices" => Context::new(nets(&["10.244.1.0/24"]), Vec::new()),
            "ipv6-only" => Context::new(nets(&["fd00:10:244:1::/64"]), vec!["eth0".to_string()]),
            other => panic!("unknown context {other}"),
        };
        let report = Report::new(&ruleset, &ctx);
        let text = case.rules.last().unwrap();
        let verdict = report.verdicts.iter().find(|v| v.rule.text == *text).unwrap();
        assert_eq!(verdict.class, case.class, "{text} ({}): class; reason: {}", case.ctx, verdict.reason);
        assert!(
            verdict.reason.contains(case.reason),
            "{text} ({}): reason should contain {:?}, is {:?}",
            case.ctx,
            case.reason,
            verdict.reason
        );
    }
}

#[test]
fn nft_marks_iptables_nft_tables() {
    let ruleset = nft::parse(&fixture("clean.nft.json")).unwrap();
    for chain in &ruleset.chains {
        let expected = if chain.family == Family::Inet { Backend::Nftables } else { Backend::IptablesNft };
        assert_eq!(chain.backend, expected, "{} {} {}", chain.family, chain.table, chain.name);
    }
    assert!(
        ruleset.chains.iter().any(|c| c.table == "raw" && c.backend == Backend::IptablesNft),
        "the raw table holds no xt rule, yet its iptables chain names mark it as iptables-nft's"
    );
    let merged = Ruleset::merge([ruleset, iptables::parse(&fixture("clean.iptables-save"), Ipv4).unwrap()]);
    assert!(
        merged.chains.iter().all(|c| !(c.source == Source::NftJson && c.family == Family::Ipv4)),
        "IPv4 copies from the nft JSON are dropped when iptables-save covers them"
    );
    assert!(
        merged.chains.iter().any(|c| c.source == Source::NftJson && c.family == Family::Ipv6),
        "IPv6 copies stay: no ip6tables-save was given"
    );
}

#[test]
fn nft_jump_loops_terminate() {
    let json = r#"{"nftables": [
      {"chain": {"family": "inet", "table": "t", "name": "fwd", "type": "filter", "hook": "forward", "prio": 0, "policy": "accept"}},
      {"chain": {"family": "inet", "table": "t", "name": "a"}},
      {"chain": {"family": "inet", "table": "t", "name": "b"}},
      {"rule": {"family": "inet", "table": "t", "chain": "fwd", "expr": [{"jump": {"target": "a"}}]}},
      {"rule": {"family": "inet", "table": "t", "chain": "a", "expr": [{"jump": {"target": "b"}}]}},
      {"rule": {"family": "inet", "table": "t", "chain": "b", "expr": [{"jump": {"target": "a"}}]}},
      {"rule": {"family": "inet", "table": "t", "chain": "b", "expr": [{"drop": null}]}}
    ]}"#;
    let report = Report::new(&nft::parse(json).unwrap(), &node());
    let bypassed: Vec<&str> = report.bypassed().map(|v| v.rule.text.as_str()).collect();
    assert_eq!(bypassed, vec!["jump a", "jump b", "drop"], "the drop in the loop is found, the walk ends");
}

#[test]
fn report_json_and_table() {
    let report = Report::new(&load(&[Iptables("forward-drop.iptables-save", Ipv4)]), &node());
    let json = serde_json::to_value(&report).unwrap();
    assert_eq!(json["clean"], false, "clean flag");
    assert_eq!(json["counts"]["bypassed"], 6, "counts");
    let first_bypassed = json["verdicts"].as_array().unwrap().iter().find(|v| v["class"] == "bypassed").unwrap();
    assert_eq!(first_bypassed["rule"]["family"], "ipv4", "family spelling");
    assert_eq!(first_bypassed["rule"]["backend"], "iptables-nft", "backend spelling");
    assert_eq!(first_bypassed["rule"]["actions"], serde_json::json!(["drop"]), "actions");
    assert_eq!(first_bypassed["rule"]["matches"]["other"][0], "-m conntrack --ctstate INVALID", "kept match");

    let table = report.render_table(false);
    let lines: Vec<&str> = table.lines().collect();
    assert!(lines[0].starts_with("CLASS"), "header first: {table}");
    assert!(table.contains("  why: FORWARD rule matches source 10.244.0.0/16"), "reasons under bypassed rows: {table}");
    assert!(!table.contains("harmless "), "harmless rows hidden: {table}");
    assert!(
        lines.last().unwrap().starts_with("14 rules: 6 bypassed, 0 kube-proxy, 0 owned, 8 harmless; NOT clean"),
        "summary last: {table}"
    );
    assert!(report.render_table(true).contains("harmless"), "harmless rows shown on request");
}
