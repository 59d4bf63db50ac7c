//! Layer-7 rules in the compiled tables: which entries send traffic through the proxy, how a
//! rule without layer-7 rules wins over one with them, and the grants the proxy is given.

#![allow(clippy::expect_used, clippy::unwrap_used)] // a test fails loudly on what it did not expect

mod common;

use common::{pod_addr, Cluster};
use sluice_model::policy::SluiceNetworkPolicy;
use sluice_policy::sluice::lower_namespaced;
use sluice_policy::{compile, deciding, lookup, peer_ids, Compiled, HttpRule, Policy, Verdict, IDENTITY_ANY, PROTO_TCP};

fn sluice(yaml: &str) -> Vec<Policy> {
    serde_yaml_ng::Deserializer::from_str(yaml)
        .map(|doc| {
            let policy: SluiceNetworkPolicy = serde::Deserialize::deserialize(doc).expect("valid SluiceNetworkPolicy");
            lower_namespaced(&policy).expect("lowers")
        })
        .collect()
}

/// The verdict and proxy flag of `from` -> `to` port `port` on `to`'s ingress.
fn ingress(compiled: &Compiled, from: &str, to: &str, port: u16) -> (Verdict, bool) {
    let table = &compiled.endpoints[to].ingress;
    let (verdict, matched) = lookup(table, peer_ids(compiled, pod_addr(from, false)), PROTO_TCP, port);
    (verdict, deciding(&matched).is_some_and(|m| m.entry.proxy))
}

fn egress(compiled: &Compiled, from: &str, to: &str, port: u16) -> (Verdict, bool) {
    let table = &compiled.endpoints[from].egress;
    let (verdict, matched) = lookup(table, peer_ids(compiled, pod_addr(to, true)), PROTO_TCP, port);
    (verdict, deciding(&matched).is_some_and(|m| m.entry.proxy))
}

const WEB_HTTP: &str = r#"
apiVersion: sluice.dev/v1
kind: SluiceNetworkPolicy
metadata: {name: web-http, namespace: x}
spec:
  endpointSelector: {matchLabels: {pod: a}}
  ingress:
  - fromEndpoints: [{matchLabels: {pod: b}}]
    toPorts:
    - ports: [{port: "80", protocol: TCP}]
      rules:
        http: [{method: GET, path: /public/.*}, {method: HEAD, headers: ["X-Probe: yes"]}]
    - ports: [{port: "81", protocol: TCP}]
"#;

#[test]
fn a_port_with_http_rules_goes_through_the_proxy_and_the_others_do_not() {
    let policies = sluice(WEB_HTTP);
    let view = Cluster::new().view(&policies);
    let compiled = compile(&policies, &view);
    assert_eq!(ingress(&compiled, "x/b", "x/a", 80), (Verdict::Allow, true), "port 80 carries HTTP rules: allowed through the proxy");
    assert_eq!(ingress(&compiled, "x/b", "x/a", 81), (Verdict::Allow, false), "port 81 has none: allowed directly");
    assert_eq!(ingress(&compiled, "x/c", "x/a", 80).0, Verdict::Deny, "x/c is not a peer of the rule");
    assert_eq!(ingress(&compiled, "x/b", "x/a", 82).0, Verdict::Deny, "the HTTP rules do not open other ports");

    let grants = &compiled.endpoints["x/a"].ingress.layer7;
    let b_identity = view.endpoints.iter().find(|e| e.key == "x/b").unwrap().identity;
    assert_eq!(grants.len(), 1, "one grant: peer x/b's identity on port 80, got {grants:?}");
    assert_eq!((grants[0].identity, grants[0].port), (b_identity, 80));
    assert_eq!(grants[0].policy, "SluiceNetworkPolicy x/web-http");
    assert_eq!(grants[0].http.len(), 2, "both HTTP rules are in the grant");
    assert_eq!(grants[0].http[1].headers[0].value.as_deref(), Some("yes"), "`Name: value` is split");
    assert!(compiled.endpoints["x/b"].ingress.layer7.is_empty(), "x/b is not selected");
}

#[test]
fn a_rule_without_http_rules_on_the_same_port_allows_all_of_it() {
    let plain = r#"
apiVersion: sluice.dev/v1
kind: SluiceNetworkPolicy
metadata: {name: plain, namespace: x}
spec:
  endpointSelector: {matchLabels: {pod: a}}
  ingress:
  - toPorts: [{ports: [{port: "80", protocol: TCP}]}]
"#;
    let policies = sluice(&format!("{WEB_HTTP}---{plain}"));
    let view = Cluster::new().view(&policies);
    let compiled = compile(&policies, &view);
    assert_eq!(ingress(&compiled, "x/b", "x/a", 80), (Verdict::Allow, false), "any peer on 80 without HTTP rules: not proxied");
    assert_eq!(ingress(&compiled, "y/c", "x/a", 80), (Verdict::Allow, false));
}

#[test]
fn egress_http_rules_to_any_peer_are_keyed_by_identity_any() {
    let policies = sluice(
        r#"
apiVersion: sluice.dev/v1
kind: SluiceNetworkPolicy
metadata: {name: api-client, namespace: x}
spec:
  endpointSelector: {matchLabels: {pod: a}}
  egress:
  - toPorts:
    - ports: [{port: "8080", protocol: TCP}]
      rules: {http: [{path: /api/.*}]}
"#,
    );
    let view = Cluster::new().view(&policies);
    let compiled = compile(&policies, &view);
    assert_eq!(egress(&compiled, "x/a", "z/c", 8080), (Verdict::Allow, true));
    assert_eq!(egress(&compiled, "x/a", "z/c", 80).0, Verdict::Deny);
    let grants = &compiled.endpoints["x/a"].egress.layer7;
    assert_eq!(grants.len(), 1);
    assert_eq!(grants[0].identity, IDENTITY_ANY);
    assert_eq!(grants[0].http, vec![HttpRule { path: Some("/api/.*".into()), ..Default::default() }]);
}

#[test]
fn policy_trace_names_the_proxy_and_the_http_rules_it_judges_by() {
    let policies = sluice(WEB_HTTP);
    let view = Cluster::new().view(&policies);
    let compiled = compile(&policies, &view);
    let (b, a) = (pod_addr("x/b", false), pod_addr("x/a", false));
    let t = sluice_policy::trace(&policies, &view, &compiled, b, a, PROTO_TCP, 80);
    let side = t.ingress.as_ref().expect("x/a is local");
    assert!(side.reason.contains("through the layer-7 proxy"), "{}", side.reason);
    let http = side.http.as_ref().expect("the HTTP rules of a proxied verdict");
    assert_eq!(http.len(), 1);
    assert_eq!(http[0].policy, "SluiceNetworkPolicy x/web-http");
    assert_eq!(http[0].rules.len(), 2);
    let text = t.to_string();
    assert!(text.contains("method GET, path /public/.*"), "{text}");
    assert!(text.contains("method HEAD, header X-Probe: yes"), "{text}");

    let plain = sluice_policy::trace(&policies, &view, &compiled, b, a, PROTO_TCP, 81);
    let side = plain.ingress.as_ref().expect("x/a is local");
    assert!(side.http.is_none(), "port 81 is not proxied: {side:?}");
    assert!(!side.reason.contains("proxy"), "{}", side.reason);
}

#[test]
fn the_proxy_is_told_which_peers_a_direction_lets_through_whole() {
    let plain_for_b = r#"
apiVersion: sluice.dev/v1
kind: SluiceNetworkPolicy
metadata: {name: b-whole, namespace: x}
spec:
  endpointSelector: {matchLabels: {pod: a}}
  ingress:
  - fromEndpoints: [{matchLabels: {pod: b}}]
    toPorts: [{ports: [{port: "80", protocol: TCP}]}]
"#;
    let http_for_all = r#"
apiVersion: sluice.dev/v1
kind: SluiceNetworkPolicy
metadata: {name: all-http, namespace: x}
spec:
  endpointSelector: {matchLabels: {pod: a}}
  ingress:
  - toPorts:
    - ports: [{port: "80", protocol: TCP}]
      rules: {http: [{method: GET}]}
"#;
    let policies = sluice(&format!("{plain_for_b}---{http_for_all}"));
    let view = Cluster::new().view(&policies);
    let compiled = compile(&policies, &view);
    let b = view.endpoints.iter().find(|e| e.key == "x/b").unwrap().identity;
    assert_eq!(ingress(&compiled, "x/b", "x/a", 80), (Verdict::Allow, false), "x/b is allowed whole");
    assert_eq!(ingress(&compiled, "x/c", "x/a", 80), (Verdict::Allow, true), "everyone else through the proxy");
    let proxied = &compiled.endpoints["x/a"].ingress.proxied;
    assert_eq!(proxied.len(), 1, "one port with grants: {proxied:?}");
    assert_eq!(proxied[0].port, 80);
    assert!(proxied[0].plain.contains(&b), "x/b's identity is let through whole: {proxied:?}");
    assert!(!proxied[0].proxies(Some(b)), "so the proxy does not judge x/b by these rules");
    assert!(proxied[0].proxies(Some(99_999)), "an identity without entries of its own is judged (the wildcard's entry)");
    assert!(proxied[0].proxies(None), "and so is an unknown one");
}
