//! Upstream NetworkPolicy semantics, part 3: ipBlock (with except, both families), and
//! results that change with the cluster: pod and namespace labels, policy updates, pods on
//! other nodes.

#![allow(clippy::expect_used, clippy::unwrap_used)] // a test fails loudly on what it did not expect

mod common;

use common::{assert_grid, ip, labels, pod_addr, policies, scenario, Cluster, ALL};
use sluice_policy::{compile, connection, Verdict, PROTO_TCP};

const HEADER: &str = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\n";

/// x/a accepts from pods labelled `pod: <from>` of its namespace only.
fn xa_from_pod(from: &str) -> String {
    format!(
        "{HEADER}metadata: {{name: from-pod, namespace: x}}\n\
         spec:\n  podSelector: {{matchLabels: {{pod: a}}}}\n  \
         ingress: [{{from: [{{podSelector: {{matchLabels: {{pod: {from}}}}}}}]}}]\n"
    )
}

#[test]
fn ip_block_with_except_matches_external_addresses() {
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
        (xa(false), "198.18.0.1", Verdict::Deny, "the node: host, not the block"),
        (xa(true), "fd00:198::5", Verdict::Allow, "inside the IPv6 block"),
        (xa(true), "fd00:198::fffa", Verdict::Deny, "inside the IPv6 except"),
    ];
    for (src, dst, want, what) in cases {
        assert_eq!(connection(&compiled, &view, src, ip(dst), PROTO_TCP, 80), want, "x/a -> {dst}: {what}");
    }
    let pods = "
x/a XXX XXX XXX
x/b ... ... ...
x/c ... ... ...
y/a ... ... ...
y/b ... ... ...
y/c ... ... ...
z/a ... ... ...
z/b ... ... ...
z/c ... ... ...
";
    assert_grid("ipBlock egress, pod to pod", &compiled, &view, PROTO_TCP, 80, pods);
}

#[test]
fn ip_block_ingress_does_not_match_pods() {
    // The block holds every pod address and the node, yet those keep their own identities.
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
        ("198.18.0.1", Verdict::Deny, "the local node"),
        ("198.18.0.2", Verdict::Deny, "a remote node"),
    ] {
        assert_eq!(connection(&compiled, &view, ip(src), xa, PROTO_TCP, 80), want, "{src} -> x/a: {what}");
    }
    let pods = "
x/a X.. ... ...
x/b X.. ... ...
x/c X.. ... ...
y/a X.. ... ...
y/b X.. ... ...
y/c X.. ... ...
z/a X.. ... ...
z/b X.. ... ...
z/c X.. ... ...
";
    assert_grid("ipBlock ingress, pod to pod", &compiled, &view, PROTO_TCP, 80, pods);
}

#[test]
fn pod_label_change_changes_the_result() {
    let p = policies(&xa_from_pod("b"));
    let mut cluster = Cluster::new();
    let before = "
x/a X.. ... ...
x/b ... ... ...
x/c X.. ... ...
y/a X.. ... ...
y/b X.. ... ...
y/c X.. ... ...
z/a X.. ... ...
z/b X.. ... ...
z/c X.. ... ...
";
    let view = cluster.view(&p);
    assert_grid("before relabel", &compile(&p, &view), &view, PROTO_TCP, 80, before);
    cluster.pod_mut("x/c").labels = labels(&[("pod", "b")]);
    let after = "
x/a X.. ... ...
x/b ... ... ...
x/c ... ... ...
y/a X.. ... ...
y/b X.. ... ...
y/c X.. ... ...
z/a X.. ... ...
z/b X.. ... ...
z/c X.. ... ...
";
    let view = cluster.view(&p);
    assert_grid("x/c relabelled pod=b", &compile(&p, &view), &view, PROTO_TCP, 80, after);
}

#[test]
fn namespace_label_change_changes_the_result() {
    let p = policies(&format!(
        "{HEADER}metadata: {{name: from-blue, namespace: x}}\n\
         spec:\n  podSelector: {{}}\n  \
         ingress: [{{from: [{{namespaceSelector: {{matchLabels: {{team: blue}}}}}}]}}]\n"
    ));
    let mut cluster = Cluster::new();
    let closed = "
x/a XXX ... ...
x/b XXX ... ...
x/c XXX ... ...
y/a XXX ... ...
y/b XXX ... ...
y/c XXX ... ...
z/a XXX ... ...
z/b XXX ... ...
z/c XXX ... ...
";
    let view = cluster.view(&p);
    assert_grid("no blue namespace", &compile(&p, &view), &view, PROTO_TCP, 80, closed);
    if let Some(z) = cluster.namespaces.get_mut("z") {
        z.insert("team".to_owned(), "blue".to_owned());
    }
    let z_open = "
x/a XXX ... ...
x/b XXX ... ...
x/c XXX ... ...
y/a XXX ... ...
y/b XXX ... ...
y/c XXX ... ...
z/a ... ... ...
z/b ... ... ...
z/c ... ... ...
";
    let view = cluster.view(&p);
    assert_grid("z labelled team=blue", &compile(&p, &view), &view, PROTO_TCP, 80, z_open);
}

#[test]
fn policy_update_changes_the_result() {
    let first = policies(&xa_from_pod("b"));
    let updated = policies(&xa_from_pod("c"));
    assert_eq!(first[0].id, updated[0].id, "same policy object");
    let expected = "
x/a X.. ... ...
x/b X.. ... ...
x/c ... ... ...
y/a X.. ... ...
y/b X.. ... ...
y/c X.. ... ...
z/a X.. ... ...
z/b X.. ... ...
z/c X.. ... ...
";
    scenario("policy updated to pod=c", &updated, &[(PROTO_TCP, 80, expected)]);
}

#[test]
fn only_local_endpoints_are_compiled() {
    // Namespace z lives on another node: its deny-all is that node's to enforce.
    let p = policies(&format!("{HEADER}metadata: {{name: deny-all, namespace: z}}\nspec:\n  podSelector: {{}}\n"));
    let mut cluster = Cluster::new();
    for pod in &mut cluster.pods {
        pod.local = pod.namespace != "z";
    }
    let view = cluster.view(&p);
    let compiled = compile(&p, &view);
    assert_eq!(compiled.endpoints.len(), 6, "x and y pods only");
    assert!(!compiled.endpoints.contains_key("z/a"), "z/a is remote");
    assert_grid("remote deny-all", &compiled, &view, PROTO_TCP, 80, ALL);
    assert_eq!(
        compiled.ipcache.get(&ipnet::IpNet::from(pod_addr("z/a", true))),
        Some(&view.endpoints[6].identity),
        "remote pods are still in the ipcache"
    );
}
