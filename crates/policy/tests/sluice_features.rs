//! What Sluice's own kinds add beyond NetworkPolicy, written directly in the IR: deny rules,
//! port ranges, entities, audit mode, policies without default deny, ICMP types.

#![allow(clippy::expect_used, clippy::unwrap_used)] // a test fails loudly on what it did not expect

mod common;

use std::net::IpAddr;

use common::{assert_grid, ip, pod_addr, Cluster, ALL};
use sluice_model::labels::NAMESPACE_LABEL;
use sluice_policy::{
    compile, connection, Action, ClusterView, Compiled, DirectionRules, Entity, Mode, Peer, Policy, PolicyRef, PortMatch, Protocol, Rule,
    Selector, Verdict, IDENTITY_ANY, PROTO_ICMP, PROTO_ICMPV6, PROTO_SCTP, PROTO_TCP, PROTO_UDP,
};

/// Pods labelled `pod: <pod>` in namespace `ns`.
fn pod(ns: &str, pod: &str) -> Selector {
    Selector {
        match_labels: [("pod".to_owned(), pod.to_owned()), (NAMESPACE_LABEL.to_owned(), ns.to_owned())].into(),
        match_expressions: Vec::new(),
    }
}

fn peers(keys: &[&str]) -> Option<Vec<Peer>> {
    Some(
        keys.iter()
            .map(|k| {
                let (ns, p) = k.split_once('/').unwrap_or((k, ""));
                Peer::Endpoints(pod(ns, p))
            })
            .collect(),
    )
}

fn rule(action: Action, peers: Option<Vec<Peer>>, ports: Vec<PortMatch>) -> Rule {
    Rule { action, peers, ports, http: None }
}

fn tcp(first: u16, last: u16) -> PortMatch {
    PortMatch::Range { protocol: Protocol::Tcp, first, last }
}

/// A SluiceNetworkPolicy in x selecting x/a in one direction.
fn xa_policy(name: &str, ingress: bool, rules: Vec<Rule>, default_deny: bool, audit: bool) -> Policy {
    let dir = Some(DirectionRules { rules, default_deny });
    Policy {
        id: PolicyRef { kind: "SluiceNetworkPolicy".to_owned(), namespace: Some("x".to_owned()), name: name.to_owned() },
        subject: pod("x", "a"),
        ingress: if ingress { dir.clone() } else { None },
        egress: if ingress { None } else { dir },
        audit,
    }
}

fn build(policies: &[Policy]) -> (ClusterView, Compiled) {
    let view = Cluster::new().view(policies);
    let compiled = compile(policies, &view);
    (view, compiled)
}

/// Column x/a as given (one cell per source row, x/a..z/c), the rest open.
fn to_xa(column: &str) -> String {
    let cells: Vec<char> = column.chars().filter(|c| !c.is_whitespace()).collect();
    let mut out = String::new();
    for (i, c) in cells.iter().enumerate() {
        out.push_str(&format!("{}/{} {c}.. ... ...\n", common::NAMESPACES[i / 3], common::PODS[i % 3]));
    }
    out
}

fn check(policies: &[Policy], grids: &[(u8, u16, &str)], what: &str) {
    let (view, compiled) = build(policies);
    for (proto, port, column) in grids {
        assert_grid(what, &compiled, &view, *proto, *port, &to_xa(column));
    }
}

#[test]
fn deny_wins_over_allow_of_the_same_key() {
    let allow = xa_policy("allow", true, vec![rule(Action::Allow, peers(&["x/b", "x/c"]), vec![tcp(80, 80)])], true, false);
    let deny = xa_policy("deny", true, vec![rule(Action::Deny, peers(&["x/b"]), vec![tcp(80, 80)])], true, false);
    check(&[allow, deny], &[(PROTO_TCP, 80, "XX. XXX XXX")], "deny of the same key");
}

#[test]
fn deny_wins_across_identity_keys() {
    // Allow any peer on 80, deny x/b on every port: two keys, two lookups.
    let allow = xa_policy("allow", true, vec![rule(Action::Allow, None, vec![tcp(80, 80)])], true, false);
    let deny = xa_policy("deny", true, vec![rule(Action::Deny, peers(&["x/b"]), vec![])], true, false);
    check(&[allow, deny], &[(PROTO_TCP, 80, ".X. ... ..."), (PROTO_TCP, 81, "XXX XXX XXX")], "specific deny");
    // Allow x/b on 80, deny any peer on 80.
    let allow = xa_policy("allow", true, vec![rule(Action::Allow, peers(&["x/b"]), vec![tcp(80, 80)])], true, false);
    let deny = xa_policy("deny", true, vec![rule(Action::Deny, None, vec![tcp(80, 80)])], true, false);
    check(&[allow, deny], &[(PROTO_TCP, 80, "XXX XXX XXX")], "any-peer deny");
}

#[test]
fn wider_deny_overrides_narrower_allow() {
    let allow = xa_policy("allow", true, vec![rule(Action::Allow, peers(&["x/b", "x/c"]), vec![tcp(80, 80)])], true, false);
    let deny = xa_policy("deny", true, vec![rule(Action::Deny, peers(&["x/b"]), vec![PortMatch::AllPorts(Protocol::Tcp)])], true, false);
    check(&[allow.clone(), deny], &[(PROTO_TCP, 80, "XX. XXX XXX")], "deny of every TCP port");
    let deny = xa_policy("deny", true, vec![rule(Action::Deny, peers(&["x/c"]), vec![tcp(0, 1023)])], true, false);
    check(&[allow, deny], &[(PROTO_TCP, 80, "X.X XXX XXX")], "deny of 0-1023");
}

#[test]
fn l4_rule_adds_to_l3_rule() {
    let l3 = xa_policy("l3", true, vec![rule(Action::Allow, peers(&["x/b"]), vec![])], true, false);
    let l4 = xa_policy("l4", true, vec![rule(Action::Allow, None, vec![tcp(81, 81)])], true, false);
    check(
        &[l3, l4],
        &[(PROTO_TCP, 80, "X.X XXX XXX"), (PROTO_TCP, 81, "... ... ..."), (PROTO_UDP, 53, "X.X XXX XXX")],
        "L3 of x/b and L4 of any",
    );
}

#[test]
fn port_range_is_exact() {
    let p = xa_policy("range", true, vec![rule(Action::Allow, peers(&["x/b"]), vec![tcp(1000, 2000)])], true, false);
    let (view, compiled) = build(&[p]);
    let (xa, xb) = (pod_addr("x/a", false), pod_addr("x/b", false));
    for (port, want) in
        [(999, Verdict::Deny), (1000, Verdict::Allow), (1500, Verdict::Allow), (2000, Verdict::Allow), (2001, Verdict::Deny)]
    {
        assert_eq!(connection(&compiled, &view, xb, xa, PROTO_TCP, port), want, "x/b -> x/a tcp/{port}");
    }
    assert_eq!(connection(&compiled, &view, xb, xa, PROTO_UDP, 1500), Verdict::Deny, "UDP not in the range");
    assert_eq!(compiled.endpoints["x/a"].ingress.entries.len(), 8, "1000-2000 is eight prefixes");
}

#[test]
fn protocol_any_is_tcp_udp_and_sctp() {
    let p = xa_policy(
        "any",
        true,
        vec![rule(Action::Allow, None, vec![PortMatch::Range { protocol: Protocol::Any, first: 80, last: 80 }])],
        true,
        false,
    );
    let open = "... ... ...";
    check(&[p], &[(PROTO_TCP, 80, open), (PROTO_UDP, 80, open), (PROTO_SCTP, 80, open), (PROTO_TCP, 81, "XXX XXX XXX")], "protocol ANY");
}

fn entity_verdicts(entity: Entity, ingress: bool, peers_to_check: &[(&str, Verdict)]) {
    let p = xa_policy("entity", ingress, vec![rule(Action::Allow, Some(vec![Peer::Entity(entity)]), vec![])], true, false);
    // A CIDR policy elsewhere gives 203.0.113.0/24 an identity of its own.
    let cidr = Policy {
        id: PolicyRef { kind: "NetworkPolicy".into(), namespace: Some("y".into()), name: "cidr".into() },
        subject: pod("y", "a"),
        ingress: None,
        egress: Some(DirectionRules {
            rules: vec![rule(
                Action::Allow,
                Some(vec![Peer::Cidr { cidr: "203.0.113.0/24".parse().expect("cidr"), except: vec![] }]),
                vec![],
            )],
            default_deny: true,
        }),
        audit: false,
    };
    let (view, compiled) = build(&[p, cidr]);
    let xa = pod_addr("x/a", false);
    for (peer, want) in peers_to_check {
        let peer: IpAddr = ip(peer);
        let got = if ingress {
            connection(&compiled, &view, peer, xa, PROTO_TCP, 80)
        } else {
            connection(&compiled, &view, xa, peer, PROTO_TCP, 80)
        };
        assert_eq!(got, *want, "{entity:?} ({}) and {peer}", if ingress { "ingress" } else { "egress" });
    }
}

#[test]
fn entities() {
    use Verdict::{Allow, Deny};
    let (node, remote, pod_b, world, cidr) = ("198.18.0.1", "198.18.0.2", "10.244.1.12", "192.0.2.7", "203.0.113.9");
    entity_verdicts(Entity::Host, true, &[(node, Allow), (remote, Deny), (pod_b, Deny), (world, Deny)]);
    entity_verdicts(Entity::RemoteNode, true, &[(node, Deny), (remote, Allow), (pod_b, Deny)]);
    entity_verdicts(Entity::World, false, &[(world, Allow), (cidr, Allow), (pod_b, Deny), (node, Deny), ("2001:db8::1", Allow)]);
    entity_verdicts(Entity::Cluster, false, &[(pod_b, Allow), (node, Allow), (remote, Allow), (world, Deny), (cidr, Deny)]);
    entity_verdicts(Entity::All, false, &[(pod_b, Allow), (node, Allow), (world, Allow), (cidr, Allow)]);
    let p = xa_policy("all", true, vec![rule(Action::Allow, Some(vec![Peer::Entity(Entity::All)]), vec![])], true, false);
    let (_, compiled) = build(&[p]);
    assert!(compiled.endpoints["x/a"].ingress.entries.keys().all(|k| k.identity == IDENTITY_ANY), "entity all is the identity wildcard");
}

#[test]
fn world_entity_over_ipv6() {
    // 2001:db8::1 is IPv6 world: world is identity 2 in both families.
    let p = xa_policy("world", false, vec![rule(Action::Allow, Some(vec![Peer::Entity(Entity::World)]), vec![])], true, false);
    let (view, compiled) = build(&[p]);
    let xa6 = pod_addr("x/a", true);
    assert_eq!(connection(&compiled, &view, xa6, ip("2001:db8::1"), PROTO_TCP, 443), Verdict::Allow, "IPv6 world");
    assert_eq!(connection(&compiled, &view, xa6, pod_addr("y/a", true), PROTO_TCP, 443), Verdict::Deny, "IPv6 pod");
}

#[test]
fn audit_mode_reports_instead_of_denying() {
    let audit_deny_all = xa_policy("audit", true, vec![rule(Action::Allow, peers(&["x/b"]), vec![])], true, true);
    let (view, compiled) = build(std::slice::from_ref(&audit_deny_all));
    assert_eq!(compiled.endpoints["x/a"].ingress.mode, Mode::Audit, "audit policies only: Audit mode");
    assert_grid("audit mode", &compiled, &view, PROTO_TCP, 80, &to_xa("A.A AAA AAA"));
    // Under an enforcing deny-all, the audit policy's allow opens nothing.
    let deny_all = xa_policy("deny-all", true, vec![], true, false);
    check(&[audit_deny_all, deny_all.clone()], &[(PROTO_TCP, 80, "XXX XXX XXX")], "audit allow under Enforce");
    // Under Enforce, an audit deny turns what is allowed into Audit and opens nothing.
    let allow_all = xa_policy("allow-all", true, vec![rule(Action::Allow, None, vec![])], true, false);
    let audit_deny_b = xa_policy("audit-b", true, vec![rule(Action::Deny, peers(&["x/b"]), vec![])], false, true);
    check(&[allow_all, audit_deny_b.clone()], &[(PROTO_TCP, 80, ".A. ... ...")], "audit deny of a specific peer");
    check(&[deny_all, audit_deny_b], &[(PROTO_TCP, 80, "XXX XXX XXX")], "audit deny alone under Enforce");
    let allow_bc = xa_policy("allow-bc", true, vec![rule(Action::Allow, peers(&["x/b", "x/c"]), vec![tcp(80, 80)])], true, false);
    let audit_tcp = xa_policy("audit-tcp", true, vec![rule(Action::Deny, None, vec![PortMatch::AllPorts(Protocol::Tcp)])], false, true);
    check(&[allow_bc, audit_tcp], &[(PROTO_TCP, 80, "XAA XXX XXX"), (PROTO_TCP, 81, "XXX XXX XXX")], "audit deny of any peer");
}

#[test]
fn policies_without_default_deny_allow_the_rest() {
    let p = xa_policy("no-default-deny", true, vec![rule(Action::Deny, peers(&["x/b"]), vec![tcp(80, 80)])], false, false);
    let (view, compiled) = build(std::slice::from_ref(&p));
    assert_eq!(compiled.endpoints["x/a"].ingress.mode, Mode::DefaultAllow, "DefaultAllow mode");
    assert_grid("DefaultAllow", &compiled, &view, PROTO_TCP, 80, &to_xa(".X. ... ..."));
    assert_grid("DefaultAllow, other port", &compiled, &view, PROTO_TCP, 81, ALL);
    let audit = xa_policy("audit-c", true, vec![rule(Action::Deny, peers(&["x/c"]), vec![])], false, true);
    check(&[p, audit], &[(PROTO_TCP, 80, ".XA ... ...")], "audit deny under DefaultAllow");
}

#[test]
fn icmp_types() {
    let p = xa_policy(
        "icmp",
        true,
        vec![
            rule(
                Action::Allow,
                None,
                vec![PortMatch::Icmp { ipv6: false, icmp_type: Some(8) }, PortMatch::Icmp { ipv6: true, icmp_type: Some(128) }],
            ),
            rule(Action::Allow, peers(&["x/b"]), vec![PortMatch::Icmp { ipv6: false, icmp_type: None }]),
        ],
        true,
        false,
    );
    let (view, compiled) = build(&[p]);
    let (xa, xc, xb) = (pod_addr("x/a", false), pod_addr("x/c", false), pod_addr("x/b", false));
    let (xa6, xc6) = (pod_addr("x/a", true), pod_addr("x/c", true));
    let cases = [
        (xc, xa, PROTO_ICMP, 8, Verdict::Allow, "echo request"),
        (xc, xa, PROTO_ICMP, 13, Verdict::Deny, "timestamp"),
        (xb, xa, PROTO_ICMP, 13, Verdict::Allow, "every type from x/b"),
        (xc6, xa6, PROTO_ICMPV6, 128, Verdict::Allow, "ICMPv6 echo request"),
        (xc6, xa6, PROTO_ICMPV6, 129, Verdict::Deny, "ICMPv6 echo reply"),
        (xc6, xa6, PROTO_ICMP, 8, Verdict::Allow, "the table does not know families"),
    ];
    for (src, dst, proto, icmp_type, want, what) in cases {
        assert_eq!(connection(&compiled, &view, src, dst, proto, icmp_type), want, "{src} -> {dst} {what}");
    }
}
