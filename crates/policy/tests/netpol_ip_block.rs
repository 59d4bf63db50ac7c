//! Upstream NetworkPolicy semantics, part 4: ipBlock. A Kubernetes ipBlock matches every
//! address in its CIDR but not in its `except`, pods' and nodes' included (the upstream e2e
//! tests "should allow egress access to server in CIDR block", "should enforce except clause
//! while egress access to server in CIDR block", "should ensure an IP overlapping both
//! IPBlock.CIDR and IPBlock.Except is allowed", and the same rules on ingress, with ports),
//! decided per address even where an identity is shared by pods on both sides of the block.
//! Sluice's own CIDR rules keep Cilium's meaning: outside addresses only.
//!
//! Pod addresses (see `common`): namespace x is 10.244.1.0/24 and fd00:244:0:1::/64, y is
//! 10.244.2.0/24, z 10.244.3.0/24; pods a, b, c are .11, .12, .13 (::11, ::12, ::13).

#![allow(clippy::expect_used, clippy::unwrap_used)] // a test fails loudly on what it did not expect

mod common;

use common::{assert_grid, ip, labels, pod_addr, policies, scenario, Cluster, ALL};
use sluice_model::Object;
use sluice_policy::{compile, connection, trace, Policy, Verdict, PROTO_TCP, PROTO_UDP};

const HEADER: &str = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\n";

/// A policy in x selecting pod a, Egress only, with the given egress rules (YAML flow list).
fn xa_egress(name: &str, egress: &str) -> String {
    format!(
        "{HEADER}metadata: {{name: {name}, namespace: x}}\nspec:\n  podSelector: {{matchLabels: {{pod: a}}}}\n  \
         policyTypes: [Egress]\n  egress: {egress}\n"
    )
}

/// A policy in x selecting pod a, Ingress only, with the given ingress rules (YAML flow list).
fn xa_ingress(name: &str, ingress: &str) -> String {
    format!("{HEADER}metadata: {{name: {name}, namespace: x}}\nspec:\n  podSelector: {{matchLabels: {{pod: a}}}}\n  ingress: {ingress}\n")
}

/// `ipBlock` peers for a pod's IPv4 /32 and IPv6 /128, so both families see the same rule.
fn host_blocks(pod: &str) -> String {
    format!("{{ipBlock: {{cidr: {}/32}}}}, {{ipBlock: {{cidr: '{}/128'}}}}", pod_addr(pod, false), pod_addr(pod, true))
}

/// `ipBlock` peers over every pod of both families (the e2e tests' `<pod IP>/4`), each except
/// the given pods' host prefixes.
fn everything_except(pods: &[&str]) -> String {
    let block = |v6: bool| {
        let cidr = format!("'{}/4'", pod_addr("x/a", v6));
        let except: Vec<String> = pods.iter().map(|p| format!("'{}/{}'", pod_addr(p, v6), if v6 { 128 } else { 32 })).collect();
        if except.is_empty() {
            format!("{{ipBlock: {{cidr: {cidr}}}}}")
        } else {
            format!("{{ipBlock: {{cidr: {cidr}, except: [{}]}}}}", except.join(", "))
        }
    };
    format!("{}, {}", block(false), block(true))
}

/// Row x/a as given, every other row open.
fn from_xa(row: &str) -> String {
    let mut out = format!("x/a {row}\n");
    for key in ["x/b", "x/c", "y/a", "y/b", "y/c", "z/a", "z/b", "z/c"] {
        out.push_str(&format!("{key} ... ... ...\n"));
    }
    out
}

/// Column x/a as given (one cell per source row, x/a..z/c), the rest open.
fn to_xa(column: &str) -> String {
    let cells: Vec<char> = column.chars().filter(|c| !c.is_whitespace()).collect();
    assert_eq!(cells.len(), 9, "a column has 9 cells: {column:?}");
    let mut out = String::new();
    for (i, c) in cells.iter().enumerate() {
        out.push_str(&format!("{}/{} {c}.. ... ...\n", common::NAMESPACES[i / 3], common::PODS[i % 3]));
    }
    out
}

// === egress ===

#[test]
fn egress_to_a_server_in_a_cidr_block() {
    // "should allow egress access to server in CIDR block": x/a may reach y/b's /32 only.
    let p = policies(&xa_egress("allow-to-yb", &format!("[{{to: [{}]}}]", host_blocks("y/b"))));
    let expected = from_xa("XXX X.X XXX");
    scenario("egress to y/b by its address", &p, &[(PROTO_TCP, 80, &expected), (PROTO_UDP, 81, &expected)]);
}

#[test]
fn egress_except_clause_denies_the_excepted_server() {
    // "should enforce except clause while egress access to server in CIDR block": the block
    // holds every pod, the except holds x/b.
    let p = policies(&xa_egress("allow-except-xb", &format!("[{{to: [{}]}}]", everything_except(&["x/b"]))));
    scenario("egress to everything but x/b", &p, &[(PROTO_TCP, 80, &from_xa(".X. ... ..."))]);
}

#[test]
fn an_address_in_both_cidr_and_except_is_allowed_by_another_rule() {
    // "should ensure an IP overlapping both IPBlock.CIDR and IPBlock.Except is allowed": x/b is
    // excepted by one block and allowed by another, in another policy, in another rule of the
    // same policy, or as another peer of the same rule.
    let except = xa_egress("allow-except-xb", &format!("[{{to: [{}]}}]", everything_except(&["x/b"])));
    let server = xa_egress("allow-to-xb", &format!("[{{to: [{}]}}]", host_blocks("x/b")));
    let all = from_xa("... ... ...");
    scenario("two policies", &policies(&format!("{except}---\n{server}")), &[(PROTO_TCP, 80, &all)]);
    let two_rules = xa_egress("both", &format!("[{{to: [{}]}}, {{to: [{}]}}]", everything_except(&["x/b"]), host_blocks("x/b")));
    scenario("two rules of one policy", &policies(&two_rules), &[(PROTO_TCP, 80, &all)]);
    let two_peers = xa_egress("both", &format!("[{{to: [{}, {}]}}]", everything_except(&["x/b"]), host_blocks("x/b")));
    scenario("two peers of one rule", &policies(&two_peers), &[(PROTO_TCP, 80, &all)]);
    // The newer e2e test updates the policy in place to the server's /32: x/b only.
    let updated = xa_egress("allow-except-xb", &format!("[{{to: [{}]}}]", host_blocks("x/b")));
    scenario("the policy updated to the server's address", &policies(&updated), &[(PROTO_TCP, 80, &from_xa("X.X XXX XXX"))]);
}

#[test]
fn egress_ip_block_with_ports() {
    let p = policies(&xa_egress(
        "to-y-on-80",
        "[{to: [{ipBlock: {cidr: 10.244.2.0/24}}, {ipBlock: {cidr: 'fd00:244:0:2::/64'}}], ports: [{port: 80}]}]",
    ));
    scenario(
        "egress to namespace y's addresses on tcp/80",
        &p,
        &[(PROTO_TCP, 80, &from_xa("XXX ... XXX")), (PROTO_TCP, 81, &from_xa("XXX XXX XXX")), (PROTO_UDP, 80, &from_xa("XXX XXX XXX"))],
    );
}

// === ingress ===

#[test]
fn ingress_from_source_pods_in_a_cidr_block() {
    let p = policies(&xa_ingress("from-y", "[{from: [{ipBlock: {cidr: 10.244.2.0/24}}, {ipBlock: {cidr: 'fd00:244:0:2::/64'}}]}]"));
    let expected = to_xa("XXX ... XXX");
    scenario("ingress from namespace y's addresses", &p, &[(PROTO_TCP, 80, &expected), (PROTO_UDP, 81, &expected)]);
}

#[test]
fn ingress_except_clause_and_ports() {
    let rule = format!("[{{from: [{}], ports: [{{port: 80}}, {{protocol: UDP, port: serve-81-udp}}]}}]", everything_except(&["y/b"]));
    let p = policies(&xa_ingress("all-but-yb", &rule));
    scenario(
        "ingress from every pod but y/b on tcp/80 and the named udp/81",
        &p,
        &[
            (PROTO_TCP, 80, &to_xa("... .X. ...")),
            (PROTO_UDP, 81, &to_xa("... .X. ...")),
            (PROTO_TCP, 81, &to_xa("XXX XXX XXX")),
            (PROTO_UDP, 80, &to_xa("XXX XXX XXX")),
        ],
    );
}

#[test]
fn ingress_overlapping_cidr_and_except_allowed_by_another_policy() {
    let except = xa_ingress("all-but-yb", &format!("[{{from: [{}]}}]", everything_except(&["y/b"])));
    let yb = xa_ingress("yb-on-81", &format!("[{{from: [{}], ports: [{{port: 81}}]}}]", host_blocks("y/b")));
    let p = policies(&format!("{except}---\n{yb}"));
    scenario(
        "y/b excepted by one policy, allowed on tcp/81 by another",
        &p,
        &[(PROTO_TCP, 80, &to_xa("... .X. ...")), (PROTO_TCP, 81, &to_xa("... ... ..."))],
    );
}

// === per address, not per identity ===

#[test]
fn a_block_holding_some_pods_of_an_identity_matches_only_those() {
    // x/b and x/c share one label set, so one identity; the block holds x/b only.
    let mut cluster = Cluster::new();
    cluster.pod_mut("x/c").labels = labels(&[("pod", "b")]);
    let egress = policies(&xa_egress("to-xb", &format!("[{{to: [{}]}}]", host_blocks("x/b"))));
    let view = cluster.view(&egress);
    let (xb, xc) = (&view.endpoints[1], &view.endpoints[2]);
    assert_eq!(xb.identity, xc.identity, "x/b and x/c share an identity");
    assert_grid("egress to x/b's address", &compile(&egress, &view), &view, PROTO_TCP, 80, &from_xa("X.X XXX XXX"));
    let ingress = policies(&xa_ingress("from-xb", &format!("[{{from: [{}]}}]", host_blocks("x/b"))));
    let view = cluster.view(&ingress);
    assert_grid("ingress from x/b's address", &compile(&ingress, &view), &view, PROTO_TCP, 80, &to_xa("X.X XXX XXX"));
    // And the other way round: x/c excepted from a block holding both.
    let except = policies(&xa_egress("all-but-xc", &format!("[{{to: [{}]}}]", everything_except(&["x/c"]))));
    let view = cluster.view(&except);
    assert_grid("egress to all but x/c's address", &compile(&except, &view), &view, PROTO_TCP, 80, &from_xa("..X ... ..."));
}

#[test]
fn entries_by_address_do_not_change_when_pods_come_and_go() {
    // A pod added inside the block is matched at once, and no local table changes: the entries
    // by address speak of prefixes, not of pods.
    let p = policies(&xa_egress("to-y", "[{to: [{ipBlock: {cidr: 10.244.2.0/24}}]}]"));
    let mut cluster = Cluster::new();
    cluster.pods.truncate(4); // x/a, x/b, x/c, y/a
    let before_view = cluster.view(&p);
    let before = compile(&p, &before_view);
    cluster.pods.extend(Cluster::new().pods.into_iter().skip(4));
    let after_view = cluster.view(&p);
    let after = compile(&p, &after_view);
    assert_eq!(before.endpoints["x/a"], after.endpoints["x/a"], "x/a's tables are the same with y/b, y/c, z/* added");
    assert_eq!(before.ipblocks, after.ipblocks, "the ipBlock prefixes are the same");
    let (xa, yc) = (pod_addr("x/a", false), pod_addr("y/c", false));
    assert_eq!(connection(&after, &after_view, xa, yc, PROTO_TCP, 80), Verdict::Allow, "y/c, new in the block, is reached");
    assert_eq!(connection(&after, &after_view, xa, pod_addr("z/c", false), PROTO_TCP, 80), Verdict::Deny, "z/c is outside");
    assert!(!after.endpoints["x/a"].egress.by_address.is_empty(), "x/a's egress has entries by address");
}

// === nodes and addresses outside the cluster ===

#[test]
fn ip_block_with_except_matches_nodes_and_external_addresses() {
    let p = policies(&format!(
        "{HEADER}{}",
        r#"metadata: {name: to-lab, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  policyTypes: [Egress]
  egress:
  - to:
    - ipBlock: {cidr: 198.18.0.0/24, except: [198.18.0.128/25]}
    - ipBlock: {cidr: "fd00:198::/64", except: ["fd00:198::8000/113"]}
"#
    ));
    let view = Cluster::new().view(&p);
    let compiled = compile(&p, &view);
    let xa = |v6| pod_addr("x/a", v6);
    let cases = [
        (xa(false), "198.18.0.5", Verdict::Allow, "inside the block"),
        (xa(false), "198.18.0.250", Verdict::Deny, "inside except"),
        (xa(false), "198.18.1.5", Verdict::Deny, "outside the block"),
        (xa(false), "198.18.0.1", Verdict::Allow, "this node's address, inside the block"),
        (xa(false), "198.18.0.2", Verdict::Allow, "another node's address, inside the block"),
        (xa(true), "fd00:198::5", Verdict::Allow, "inside the IPv6 block"),
        (xa(true), "fd00:198::fffa", Verdict::Deny, "inside the IPv6 except"),
        (xa(true), "fd00:18::1", Verdict::Deny, "this node's IPv6 address, outside the block"),
    ];
    for (src, dst, want, what) in cases {
        assert_eq!(connection(&compiled, &view, src, ip(dst), PROTO_TCP, 80), want, "x/a -> {dst}: {what}");
    }
    // No pod is in the block.
    assert_grid("ipBlock egress, pod to pod", &compiled, &view, PROTO_TCP, 80, &from_xa("XXX XXX XXX"));
}

#[test]
fn ip_block_ingress_matches_pods_nodes_and_external_addresses() {
    let p = policies(&format!(
        "{HEADER}{}",
        r#"metadata: {name: from-blocks, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress:
  - from:
    - ipBlock: {cidr: 10.0.0.0/8}
    - ipBlock: {cidr: "fd00::/8"}
    - ipBlock: {cidr: 198.18.0.0/16, except: [198.18.0.128/25]}
"#
    ));
    let view = Cluster::new().view(&p);
    let compiled = compile(&p, &view);
    let xa = pod_addr("x/a", false);
    for (src, want, what) in [
        ("198.18.0.5", Verdict::Allow, "external, in the block"),
        ("198.18.0.250", Verdict::Deny, "external, in except"),
        ("10.9.9.9", Verdict::Allow, "external, in 10/8"),
        ("198.18.0.1", Verdict::Allow, "the local node, in the block"),
        ("198.18.0.2", Verdict::Allow, "a remote node, in the block"),
        ("192.0.2.1", Verdict::Deny, "external, in no block"),
    ] {
        assert_eq!(connection(&compiled, &view, ip(src), xa, PROTO_TCP, 80), want, "{src} -> x/a: {what}");
    }
    assert_grid("ipBlock ingress, pod to pod: every pod is in 10/8 or fd00::/8", &compiled, &view, PROTO_TCP, 80, ALL);
}

// === Sluice's own kinds keep Cilium's meaning ===

fn sluice_policy(yaml: &str) -> Policy {
    let objects = sluice_model::parse_manifests("test.yaml", yaml).expect("valid manifest");
    let Some(Object::SluiceNetworkPolicy(p)) = objects.first() else { panic!("one SluiceNetworkPolicy: {objects:?}") };
    sluice_policy::sluice::lower_namespaced(p).expect("lowers")
}

#[test]
fn sluice_cidr_rules_do_not_match_pods_or_nodes() {
    let p = sluice_policy(
        r#"apiVersion: sluice.dev/v1
kind: SluiceNetworkPolicy
metadata: {name: to-cidrs, namespace: x}
spec:
  endpointSelector: {matchLabels: {pod: a}}
  egress:
  - toCIDRSet:
    - {cidr: 10.0.0.0/8, except: [10.244.2.12/32]}
    - {cidr: "fd00::/8"}
    - {cidr: 198.18.0.0/16}
"#,
    );
    let view = Cluster::new().view(std::slice::from_ref(&p));
    let compiled = compile(std::slice::from_ref(&p), &view);
    assert!(compiled.ipblocks.is_empty(), "a Sluice CIDR rule needs no ipBlock prefix");
    assert!(compiled.endpoints["x/a"].egress.by_address.is_empty(), "and makes no entry by address");
    let xa = pod_addr("x/a", false);
    for (dst, want, what) in [
        ("10.9.9.9", Verdict::Allow, "external, in 10/8"),
        ("198.18.0.5", Verdict::Allow, "external, in 198.18/16"),
        ("198.18.0.1", Verdict::Deny, "this node: host, not the CIDR"),
        ("198.18.0.2", Verdict::Deny, "another node: remote-node, not the CIDR"),
    ] {
        assert_eq!(connection(&compiled, &view, xa, ip(dst), PROTO_TCP, 80), want, "x/a -> {dst}: {what}");
    }
    assert_grid("SluiceNetworkPolicy CIDR over the pods", &compiled, &view, PROTO_TCP, 80, &from_xa("XXX XXX XXX"));
}

#[test]
fn a_sluice_deny_still_wins_over_an_ip_block_allow() {
    // NetworkPolicy allows every pod into x/a by address; a SluiceNetworkPolicy denies y.
    let mut p = policies(&xa_ingress("all-pods", &format!("[{{from: [{}]}}]", everything_except(&[]))));
    p.push(sluice_policy(
        r#"apiVersion: sluice.dev/v1
kind: SluiceNetworkPolicy
metadata: {name: deny-y, namespace: x}
spec:
  endpointSelector: {matchLabels: {pod: a}}
  ingressDeny: [{fromEndpoints: [{matchLabels: {k8s:io.kubernetes.pod.namespace: y}}]}]
"#,
    ));
    scenario("deny y over an ipBlock allow of every pod", &p, &[(PROTO_TCP, 80, &to_xa("... XXX ..."))]);
}

// === what trace says ===

#[test]
fn trace_names_the_ip_block_and_the_entry_by_address() {
    let p = policies(&xa_egress("to-y", "[{to: [{ipBlock: {cidr: 10.244.2.0/24, except: [10.244.2.12/32]}}], ports: [{port: 80}]}]"));
    let view = Cluster::new().view(&p);
    let compiled = compile(&p, &view);
    let (xa, ya, yb) = (pod_addr("x/a", false), pod_addr("y/a", false), pod_addr("y/b", false));
    let t = trace(&p, &view, &compiled, xa, ya, PROTO_TCP, 80);
    assert_eq!(t.verdict, Verdict::Allow, "x/a -> y/a is allowed");
    let side = t.egress.as_ref().expect("x/a is local");
    assert_eq!(side.peer.what, "y/a", "the peer is named as the pod");
    let block = side.peer.ip_block.as_ref().expect("y/a's address is under an ipBlock prefix");
    assert_eq!(block.prefix.to_string(), "10.244.2.0/24", "the longest ipBlock prefix holding y/a");
    assert_eq!(side.matched.len(), 1, "one entry matched: {:?}", side.matched);
    assert!(side.matched[0].by_address, "found among the entries by address");
    assert_eq!(side.reason, "allowed by NetworkPolicy x/to-y egress rule 0 (allow)", "the rule is named");
    let text = t.to_string();
    assert!(text.contains("in ipBlock 10.244.2.0/24"), "text names the block: {text}");
    assert!(text.contains("entry by address"), "text marks the entry by address: {text}");

    let t = trace(&p, &view, &compiled, xa, yb, PROTO_TCP, 80);
    assert_eq!(t.verdict, Verdict::Deny, "x/a -> y/b (excepted) is denied");
    let side = t.egress.as_ref().expect("x/a is local");
    assert_eq!(side.peer.ip_block.as_ref().map(|b| b.prefix.to_string()), Some("10.244.2.12/32".to_owned()), "y/b is under the except");
    assert!(side.reason.contains("or address in ipBlock 10.244.2.12/32"), "the default deny names the address too: {}", side.reason);
}

// === against the definition ===

#[test]
fn random_blocks_and_excepts_match_the_definition() {
    // Random ipBlock rules for x/a (egress, then ingress), each checked against what the
    // upstream definition says for every pod, both nodes and a few outside addresses: allowed
    // when some rule has a block whose cidr holds the address and no except of it does.
    let mut state: u64 = 0x1b10c;
    let mut next = |n: u64| {
        state = state.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
        (state >> 33) % n
    };
    let cluster = Cluster::new();
    let mut addresses: Vec<std::net::IpAddr> = (0..9).map(|i| common::pod_ip(i, false)).collect();
    addresses.extend(["198.18.0.1", "198.18.0.2", "10.244.7.7", "10.9.0.1", "192.0.2.1"].map(ip));
    for round in 0..200 {
        let ingress = round % 2 == 1;
        // (cidr, excepts) per rule; a prefix of some address, excepts inside it.
        let mut rules: Vec<Vec<(ipnet::Ipv4Net, Vec<ipnet::Ipv4Net>)>> = Vec::new();
        for _ in 0..1 + next(3) {
            let mut blocks = Vec::new();
            for _ in 0..1 + next(2) {
                let std::net::IpAddr::V4(base) = addresses[next(addresses.len() as u64) as usize] else { unreachable!() };
                let len = [8u8, 16, 20, 24, 28, 30, 32][next(7) as usize];
                let cidr = ipnet::Ipv4Net::new(base, len).unwrap().trunc();
                let mut excepts = Vec::new();
                for _ in 0..next(3) {
                    let std::net::IpAddr::V4(inner) = addresses[next(addresses.len() as u64) as usize] else { unreachable!() };
                    let elen = len + next(u64::from(33 - len)) as u8;
                    let e = ipnet::Ipv4Net::new(inner, elen).unwrap().trunc();
                    if cidr.contains(&e) {
                        excepts.push(e);
                    }
                }
                blocks.push((cidr, excepts));
            }
            rules.push(blocks);
        }
        let rule_yaml: Vec<String> = rules
            .iter()
            .map(|blocks| {
                let peers: Vec<String> = blocks
                    .iter()
                    .map(|(c, e)| {
                        let e: Vec<String> = e.iter().map(|e| format!("'{e}'")).collect();
                        format!("{{ipBlock: {{cidr: '{c}', except: [{}]}}}}", e.join(", "))
                    })
                    .collect();
                format!("{{{}: [{}]}}", if ingress { "from" } else { "to" }, peers.join(", "))
            })
            .collect();
        let yaml = if ingress {
            xa_ingress("random", &format!("[{}]", rule_yaml.join(", ")))
        } else {
            xa_egress("random", &format!("[{}]", rule_yaml.join(", ")))
        };
        let p = policies(&yaml);
        let view = cluster.view(&p);
        let compiled = compile(&p, &view);
        let xa = pod_addr("x/a", false);
        for peer in &addresses {
            let std::net::IpAddr::V4(v4) = peer else { unreachable!() };
            let want = rules.iter().flatten().any(|(c, e)| c.contains(v4) && !e.iter().any(|e| e.contains(v4)));
            let want = if want { Verdict::Allow } else { Verdict::Deny };
            let got = if ingress {
                connection(&compiled, &view, *peer, xa, PROTO_TCP, 80)
            } else {
                connection(&compiled, &view, xa, *peer, PROTO_TCP, 80)
            };
            // x/a to itself: its own egress and ingress both apply; only one is selected here.
            assert_eq!(got, want, "round {round} {} {peer}\n{yaml}", if ingress { "from" } else { "to" });
        }
    }
}
