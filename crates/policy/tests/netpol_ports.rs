//! Upstream NetworkPolicy semantics, part 2: ports (number, name, endPort), protocols
//! (TCP, UDP, SCTP), policy types (explicit and implied), ingress and egress.

#![allow(clippy::expect_used, clippy::unwrap_used)] // a test fails loudly on what it did not expect

mod common;

use common::{policies, scenario, ALL};
use sluice_policy::{PROTO_SCTP, PROTO_TCP, PROTO_UDP};

const HEADER: &str = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\n";

/// Ingress of x/a from anyone on `ports` (a YAML flow list).
fn xa_ingress_on(ports: &str) -> String {
    format!(
        "{HEADER}metadata: {{name: ports, namespace: x}}\n\
         spec:\n  podSelector: {{matchLabels: {{pod: a}}}}\n  ingress: [{{ports: {ports}}}]\n"
    )
}

/// Column x/a denied, the rest open.
const XA_CLOSED: &str = "
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

#[test]
fn port_by_number_defaults_to_tcp() {
    let p = policies(&xa_ingress_on("[{port: 80}]"));
    scenario(
        "port 80",
        &p,
        &[
            (PROTO_TCP, 80, ALL),
            (PROTO_TCP, 81, XA_CLOSED),
            (PROTO_UDP, 80, XA_CLOSED),
        ],
    );
}

#[test]
fn port_by_name_is_resolved_on_the_destination_pod() {
    let p = policies(&xa_ingress_on(
        "[{port: serve-81-tcp}, {protocol: UDP, port: serve-80-udp}]",
    ));
    scenario(
        "named ports",
        &p,
        &[
            (PROTO_TCP, 81, ALL),
            (PROTO_TCP, 80, XA_CLOSED),
            (PROTO_UDP, 80, ALL),
            (PROTO_UDP, 81, XA_CLOSED),
        ],
    );
    // A TCP port named after a UDP container port resolves nowhere.
    let p = policies(&xa_ingress_on("[{port: serve-80-udp}]"));
    scenario(
        "named port, wrong protocol",
        &p,
        &[(PROTO_TCP, 80, XA_CLOSED), (PROTO_UDP, 80, XA_CLOSED)],
    );
}

#[test]
fn named_ingress_port_differs_per_pod() {
    // `web` is 80 on pods a, 81 on pods b, absent on pods c.
    let p = policies(&format!(
        "{HEADER}metadata: {{name: web, namespace: x}}\n\
         spec:\n  podSelector: {{}}\n  ingress: [{{ports: [{{port: web}}]}}]\n"
    ));
    let to_xa = "
x/a .XX ... ...
x/b .XX ... ...
x/c .XX ... ...
y/a .XX ... ...
y/b .XX ... ...
y/c .XX ... ...
z/a .XX ... ...
z/b .XX ... ...
z/c .XX ... ...
";
    let to_xb = "
x/a X.X ... ...
x/b X.X ... ...
x/c X.X ... ...
y/a X.X ... ...
y/b X.X ... ...
y/c X.X ... ...
z/a X.X ... ...
z/b X.X ... ...
z/c X.X ... ...
";
    scenario(
        "named port per pod",
        &p,
        &[(PROTO_TCP, 80, to_xa), (PROTO_TCP, 81, to_xb)],
    );
}

#[test]
fn named_egress_port_is_resolved_per_peer() {
    let p = policies(&format!(
        "{HEADER}metadata: {{name: web-out, namespace: x}}\n\
         spec:\n  podSelector: {{matchLabels: {{pod: a}}}}\n  policyTypes: [Egress]\n  \
         egress: [{{ports: [{{port: web}}]}}]\n"
    ));
    let tcp80 = "
x/a .XX .XX .XX
x/b ... ... ...
x/c ... ... ...
y/a ... ... ...
y/b ... ... ...
y/c ... ... ...
z/a ... ... ...
z/b ... ... ...
z/c ... ... ...
";
    let tcp81 = "
x/a X.X X.X X.X
x/b ... ... ...
x/c ... ... ...
y/a ... ... ...
y/b ... ... ...
y/c ... ... ...
z/a ... ... ...
z/b ... ... ...
z/c ... ... ...
";
    scenario(
        "named egress port",
        &p,
        &[(PROTO_TCP, 80, tcp80), (PROTO_TCP, 81, tcp81)],
    );
}

#[test]
fn end_port_makes_a_range() {
    let p = policies(&xa_ingress_on("[{port: 80, endPort: 81}]"));
    scenario(
        "endPort",
        &p,
        &[
            (PROTO_TCP, 80, ALL),
            (PROTO_TCP, 81, ALL),
            (PROTO_UDP, 80, XA_CLOSED),
        ],
    );
}

#[test]
fn protocol_without_port_is_every_port() {
    let p = policies(&xa_ingress_on("[{protocol: UDP}]"));
    scenario(
        "UDP, every port",
        &p,
        &[
            (PROTO_UDP, 80, ALL),
            (PROTO_UDP, 81, ALL),
            (PROTO_TCP, 80, XA_CLOSED),
        ],
    );
}

#[test]
fn sctp() {
    let p = policies(&xa_ingress_on("[{protocol: SCTP, port: 80}]"));
    scenario(
        "SCTP 80",
        &p,
        &[
            (PROTO_SCTP, 80, ALL),
            (PROTO_SCTP, 81, XA_CLOSED),
            (PROTO_TCP, 80, XA_CLOSED),
        ],
    );
}

#[test]
fn empty_ports_means_every_port_and_protocol() {
    let p = policies(&xa_ingress_on("[]"));
    scenario(
        "ports: []",
        &p,
        &[
            (PROTO_TCP, 81, ALL),
            (PROTO_UDP, 80, ALL),
            (PROTO_SCTP, 81, ALL),
        ],
    );
}

#[test]
fn egress_to_a_namespace_on_one_port() {
    let p = policies(&format!(
        "{HEADER}metadata: {{name: to-y-80, namespace: x}}\n\
         spec:\n  podSelector: {{matchLabels: {{pod: a}}}}\n  policyTypes: [Egress]\n  \
         egress: [{{to: [{{namespaceSelector: {{matchLabels: {{ns: y}}}}}}], ports: [{{port: 80}}]}}]\n"
    ));
    let tcp80 = "
x/a XXX ... XXX
x/b ... ... ...
x/c ... ... ...
y/a ... ... ...
y/b ... ... ...
y/c ... ... ...
z/a ... ... ...
z/b ... ... ...
z/c ... ... ...
";
    let closed = "
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
    scenario(
        "egress to y on 80",
        &p,
        &[
            (PROTO_TCP, 80, tcp80),
            (PROTO_TCP, 81, closed),
            (PROTO_UDP, 80, closed),
        ],
    );
}

#[test]
fn explicit_policy_types() {
    // Both types, ingress rules only: egress of x/a is denied entirely.
    let p = policies(&format!(
        "{HEADER}metadata: {{name: both, namespace: x}}\n\
         spec:\n  podSelector: {{matchLabels: {{pod: a}}}}\n  policyTypes: [Ingress, Egress]\n  \
         ingress: [{{from: [{{podSelector: {{matchLabels: {{pod: b}}}}}}]}}]\n"
    ));
    let expected = "
x/a XXX XXX XXX
x/b ... ... ...
x/c X.. ... ...
y/a X.. ... ...
y/b X.. ... ...
y/c X.. ... ...
z/a X.. ... ...
z/b X.. ... ...
z/c X.. ... ...
";
    scenario(
        "policyTypes Ingress, Egress",
        &p,
        &[(PROTO_TCP, 80, expected)],
    );
    // Egress only: the ingress rules are ignored and ingress stays open.
    let p = policies(&format!(
        "{HEADER}metadata: {{name: egress-only, namespace: x}}\n\
         spec:\n  podSelector: {{matchLabels: {{pod: a}}}}\n  policyTypes: [Egress]\n  \
         ingress: [{{from: [{{podSelector: {{matchLabels: {{pod: b}}}}}}]}}]\n  egress: [{{}}]\n"
    ));
    scenario("policyTypes Egress", &p, &[(PROTO_TCP, 80, ALL)]);
}

#[test]
fn implied_policy_types() {
    // Egress rules and no policyTypes: Ingress (no rules: deny all) and Egress.
    let p = policies(&format!(
        "{HEADER}metadata: {{name: implied, namespace: x}}\n\
         spec:\n  podSelector: {{matchLabels: {{pod: a}}}}\n  \
         egress: [{{to: [{{podSelector: {{matchLabels: {{pod: c}}}}}}]}}]\n"
    ));
    let expected = "
x/a XX. XXX XXX
x/b X.. ... ...
x/c X.. ... ...
y/a X.. ... ...
y/b X.. ... ...
y/c X.. ... ...
z/a X.. ... ...
z/b X.. ... ...
z/c X.. ... ...
";
    scenario(
        "implied Ingress and Egress",
        &p,
        &[(PROTO_TCP, 80, expected)],
    );
}
