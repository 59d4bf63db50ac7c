//! Upstream NetworkPolicy semantics, part 1: who a policy selects and which peers it allows
//! (default deny, allow-all, podSelector, namespaceSelector, their AND and OR, unions).

#![allow(clippy::expect_used, clippy::unwrap_used)] // a test fails loudly on what it did not expect

mod common;

use common::{policies, scenario, ALL};
use sluice_policy::PROTO_TCP;

const HEADER: &str = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\n";

/// `metadata` and `spec` of one policy, with the header every manifest carries.
fn np(body: &str) -> String {
    format!("{HEADER}{body}")
}

/// Column x/a allows only the marked rows; the rest of the grid is open.
fn only_to_xa(allowed: &[&str]) -> String {
    let mut out = String::new();
    for ns in common::NAMESPACES {
        for pod in common::PODS {
            let key = format!("{ns}/{pod}");
            let cell = if allowed.contains(&key.as_str()) { '.' } else { 'X' };
            out.push_str(&format!("{key} {cell}.. ... ...\n"));
        }
    }
    out
}

#[test]
fn no_policy_allows_everything() {
    scenario("no policy", &[], &[(PROTO_TCP, 80, ALL)]);
}

#[test]
fn deny_all_ingress_by_selection() {
    let p = policies(&np("metadata: {name: deny-all, namespace: x}\nspec:\n  podSelector: {}\n"));
    let expected = "
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
    scenario("deny-all ingress in x", &p, &[(PROTO_TCP, 80, expected), (PROTO_TCP, 81, expected)]);
}

#[test]
fn deny_all_egress_by_selection() {
    let p = policies(&np("metadata: {name: deny-egress, namespace: x}\n\
         spec:\n  podSelector: {}\n  policyTypes: [Egress]\n"));
    let expected = "
x/a XXX XXX XXX
x/b XXX XXX XXX
x/c XXX XXX XXX
y/a ... ... ...
y/b ... ... ...
y/c ... ... ...
z/a ... ... ...
z/b ... ... ...
z/c ... ... ...
";
    scenario("deny-all egress in x", &p, &[(PROTO_TCP, 80, expected)]);
}

#[test]
fn allow_all_unions_with_deny_all() {
    let p = policies(&format!(
        "{}---\n{}",
        np("metadata: {name: deny-all, namespace: x}\nspec:\n  podSelector: {}\n"),
        np("metadata: {name: allow-all, namespace: x}\nspec:\n  podSelector: {}\n  ingress: [{}]\n"),
    ));
    scenario("allow-all with deny-all", &p, &[(PROTO_TCP, 80, ALL)]);
}

#[test]
fn pod_selector_peer_is_confined_to_the_policy_namespace() {
    let p = policies(&np(r#"
metadata: {name: from-b, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress:
  - from:
    - podSelector: {matchLabels: {pod: b}}
"#));
    scenario("podSelector", &p, &[(PROTO_TCP, 80, &only_to_xa(&["x/b"]))]);
}

#[test]
fn namespace_selector_match_labels() {
    let p = policies(&np(r#"
metadata: {name: from-y, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress:
  - from:
    - namespaceSelector: {matchLabels: {ns: y}}
"#));
    scenario("namespaceSelector matchLabels", &p, &[(PROTO_TCP, 80, &only_to_xa(&["y/a", "y/b", "y/c"]))]);
}

#[test]
fn namespace_selector_match_expressions() {
    let p = policies(&np(r#"
metadata: {name: from-y-z, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress:
  - from:
    - namespaceSelector:
        matchExpressions: [{key: ns, operator: In, values: [y, z]}]
"#));
    let yz = ["y/a", "y/b", "y/c", "z/a", "z/b", "z/c"];
    scenario("namespaceSelector In", &p, &[(PROTO_TCP, 80, &only_to_xa(&yz))]);
    let p = policies(&np(r#"
metadata: {name: not-from-y, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress:
  - from:
    - namespaceSelector:
        matchExpressions:
        - {key: ns, operator: NotIn, values: [y]}
        - {key: team, operator: DoesNotExist}
"#));
    let xz = ["x/a", "x/b", "x/c", "z/a", "z/b", "z/c"];
    scenario("namespaceSelector NotIn", &p, &[(PROTO_TCP, 80, &only_to_xa(&xz))]);
}

#[test]
fn pod_and_namespace_selector_in_one_peer_is_and() {
    let p = policies(&np(r#"
metadata: {name: from-y-b, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress:
  - from:
    - namespaceSelector: {matchLabels: {ns: y}}
      podSelector: {matchLabels: {pod: b}}
"#));
    scenario("AND within a peer", &p, &[(PROTO_TCP, 80, &only_to_xa(&["y/b"]))]);
}

#[test]
fn several_peers_are_or() {
    let p = policies(&np(r#"
metadata: {name: from-y-or-b, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress:
  - from:
    - namespaceSelector: {matchLabels: {ns: y}}
    - podSelector: {matchLabels: {pod: b}}
"#));
    scenario("OR across peers", &p, &[(PROTO_TCP, 80, &only_to_xa(&["x/b", "y/a", "y/b", "y/c"]))]);
}

#[test]
fn empty_namespace_selector_means_every_namespace() {
    let p = policies(&np(r#"
metadata: {name: from-any-c, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress:
  - from:
    - namespaceSelector: {}
      podSelector: {matchLabels: {pod: c}}
"#));
    scenario("any namespace, pod c", &p, &[(PROTO_TCP, 80, &only_to_xa(&["x/c", "y/c", "z/c"]))]);
    let p = policies(&np(r#"
metadata: {name: from-all-pods, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress:
  - from: [{namespaceSelector: {}}]
"#));
    scenario("every pod", &p, &[(PROTO_TCP, 80, ALL)]);
}

#[test]
fn several_policies_are_a_union() {
    let p = policies(&format!(
        "{}---\n{}",
        np("metadata: {name: from-b, namespace: x}\nspec:\n  podSelector: {matchLabels: {pod: a}}\n  \
            ingress: [{from: [{podSelector: {matchLabels: {pod: b}}}]}]\n"),
        np("metadata: {name: from-y-c, namespace: x}\nspec:\n  podSelector: {matchLabels: {pod: a}}\n  \
            ingress: [{from: [{namespaceSelector: {matchLabels: {ns: y}}, podSelector: {matchLabels: {pod: c}}}]}]\n"),
    ));
    scenario("union of two policies", &p, &[(PROTO_TCP, 80, &only_to_xa(&["x/b", "y/c"]))]);
}

#[test]
fn both_sides_must_allow() {
    // x/a may send to y only, but y/b accepts nothing; x/a's policy also implies Ingress
    // with no rules, so x/a accepts nothing either.
    let p = policies(&format!(
        "{}---\n{}",
        np("metadata: {name: a-to-y, namespace: x}\nspec:\n  podSelector: {matchLabels: {pod: a}}\n  \
            egress: [{to: [{namespaceSelector: {matchLabels: {ns: y}}}]}]\n"),
        np("metadata: {name: deny-b, namespace: y}\nspec:\n  podSelector: {matchLabels: {pod: b}}\n"),
    ));
    let expected = "
x/a XXX .X. XXX
x/b X.. .X. ...
x/c X.. .X. ...
y/a X.. .X. ...
y/b X.. .X. ...
y/c X.. .X. ...
z/a X.. .X. ...
z/b X.. .X. ...
z/c X.. .X. ...
";
    scenario("egress allowed, ingress denied", &p, &[(PROTO_TCP, 80, expected)]);
}
