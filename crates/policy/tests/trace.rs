//! `policy trace` explains the evaluator's verdicts in words and in JSON.

#![allow(clippy::expect_used, clippy::unwrap_used)] // a test fails loudly on what it did not expect

mod common;

use common::{ip, pod_addr, policies, Cluster};
use sluice_policy::{compile, connection, trace, Mode, Verdict, PROTO_TCP, PROTO_UDP};

const POLICIES: &str = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny-all, namespace: x}
spec:
  podSelector: {}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-b, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress:
  - from: [{podSelector: {matchLabels: {pod: b}}}]
    ports: [{port: 80}]
  - from: [{ipBlock: {cidr: 198.18.0.0/24}}]
"#;

#[test]
fn default_deny_names_the_policy_and_the_identity() {
    let p = policies(POLICIES);
    let view = Cluster::new().view(&p);
    let compiled = compile(&p, &view);
    let (src, dst) = (pod_addr("y/a", false), pod_addr("x/a", false));
    let t = trace(&p, &view, &compiled, src, dst, PROTO_TCP, 80);
    assert_eq!(t.verdict, Verdict::Deny, "denied");
    assert_eq!(t.verdict, connection(&compiled, &view, src, dst, PROTO_TCP, 80), "same as the evaluator");
    assert!(t.egress.is_some(), "y/a is local: its egress is traced");
    let side = t.ingress.as_ref().expect("x/a is local");
    assert_eq!(side.endpoint, "x/a", "destination endpoint");
    assert_eq!(side.mode, Mode::Enforce, "enforced");
    assert_eq!(side.policies.len(), 2, "both policies select x/a");
    assert_eq!(side.peer.what, "y/a", "the peer is a pod");
    let id = side.peer.identity;
    assert_eq!(
        side.reason,
        format!(
            "denied by default: selected by NetworkPolicy x/deny-all, NetworkPolicy x/allow-b, \
             no rule allows identity {id} on tcp/80"
        ),
        "reason"
    );
}

#[test]
fn allowed_names_the_rule() {
    let p = policies(POLICIES);
    let view = Cluster::new().view(&p);
    let compiled = compile(&p, &view);
    let t = trace(&p, &view, &compiled, pod_addr("x/b", true), pod_addr("x/a", true), PROTO_TCP, 80);
    assert_eq!(t.verdict, Verdict::Allow, "allowed over IPv6 too");
    let side = t.ingress.as_ref().expect("x/a is local");
    assert_eq!(side.matched.len(), 1, "one entry matched: {:?}", side.matched);
    assert_eq!(side.matched[0].rules[0].index, 0, "ingress rule 0");
    assert_eq!(side.reason, "allowed by NetworkPolicy x/allow-b ingress rule 0 (allow)", "reason");
    let text = t.to_string();
    for line in ["ingress of x/a", "mode: Enforce", "selected by NetworkPolicy x/deny-all", "peer fd00:244:0:1::12"] {
        assert!(text.contains(line), "text has {line:?}:\n{text}");
    }
    let json = serde_json::to_value(&t).expect("serializable");
    assert_eq!(json["ingress"]["endpoint"], "x/a", "JSON form");
}

#[test]
fn peers_outside_the_pods_are_named() {
    let p = policies(POLICIES);
    let view = Cluster::new().view(&p);
    let compiled = compile(&p, &view);
    let xa = pod_addr("x/a", false);
    // The nodes' addresses are in the ipBlock 198.18.0.0/24: a Kubernetes ipBlock matches them.
    for (src, what, verdict) in [
        ("198.18.0.9", "cidr 198.18.0.0/24", Verdict::Allow),
        ("198.18.0.1", "host", Verdict::Allow),
        ("198.18.0.2", "remote-node", Verdict::Allow),
        ("192.0.2.1", "world", Verdict::Deny),
    ] {
        let t = trace(&p, &view, &compiled, ip(src), xa, PROTO_UDP, 53);
        let side = t.ingress.as_ref().expect("x/a is local");
        assert_eq!(side.peer.what, what, "{src} is {what}");
        assert_eq!(t.verdict, verdict, "{src} -> x/a udp/53");
        assert!(t.egress.is_none(), "{src} is not a local endpoint");
    }
    let t = trace(&p, &view, &compiled, pod_addr("y/a", false), pod_addr("y/b", false), PROTO_TCP, 80);
    assert_eq!(t.ingress.expect("y/b is local").reason, "allowed: no policy selects y/b for ingress", "unselected endpoint");
}
