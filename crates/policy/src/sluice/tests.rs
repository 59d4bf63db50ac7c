//! Lowering of Sluice policies: namespace pinning and restriction, key spelling, peers,
//! ports, directions, default deny and audit mode.

use std::collections::BTreeMap;

use sluice_model::Object;

use super::*;

const NS: &str = "k8s:io.kubernetes.pod.namespace";

fn lower(yaml: &str) -> Policy {
    let objects = match sluice_model::parse_manifests("p.yaml", yaml) {
        Ok(objects) => objects,
        Err(error) => panic!("expected the policy to parse: {error}"),
    };
    let lowered = match &objects[0] {
        Object::SluiceNetworkPolicy(policy) => lower_namespaced(policy),
        Object::SluiceClusterwideNetworkPolicy(policy) => lower_clusterwide(policy),
        other => panic!("expected a Sluice policy, got {other:?}"),
    };
    match lowered {
        Ok(policy) => policy,
        Err(error) => panic!("expected the policy to lower: {error}"),
    }
}

fn snp(spec: &str) -> Policy {
    lower(&format!("apiVersion: sluice.dev/v1\nkind: SluiceNetworkPolicy\nmetadata: {{name: p, namespace: shop}}\nspec: {spec}\n"))
}

fn scnp(spec: &str) -> Policy {
    lower(&format!("apiVersion: sluice.dev/v1\nkind: SluiceClusterwideNetworkPolicy\nmetadata: {{name: p}}\nspec: {spec}\n"))
}

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

fn selector(pairs: &[(&str, &str)]) -> Selector {
    Selector { match_labels: labels(pairs), match_expressions: vec![] }
}

fn ingress_rules(policy: &Policy) -> Vec<Rule> {
    policy.ingress.clone().map(|d| d.rules).unwrap_or_default()
}

#[test]
fn namespaced_policy_is_pinned_to_its_namespace() {
    let policy = snp("{endpointSelector: {matchLabels: {k8s:app: web}}, ingress: [{fromEndpoints: [{matchLabels: {app: client}}, {}, {matchLabels: {k8s:io.kubernetes.pod.namespace: ops}}, {matchExpressions: [{key: io.kubernetes.pod.namespace, operator: Exists}]}]}]}");
    assert_eq!(
        policy.id,
        PolicyRef { kind: "SluiceNetworkPolicy".into(), namespace: Some("shop".into()), name: "p".into() },
        "policy reference"
    );
    assert_eq!(policy.subject, selector(&[("app", "web"), (NS, "shop")]), "subject: k8s: stripped, namespace added");
    let peers = ingress_rules(&policy)[0].peers.clone().unwrap_or_default();
    let expected = vec![
        Peer::Endpoints(selector(&[("app", "client"), (NS, "shop")])),
        Peer::Endpoints(selector(&[(NS, "shop")])),
        Peer::Endpoints(selector(&[(NS, "ops")])),
        Peer::Endpoints(Selector {
            match_labels: BTreeMap::new(),
            match_expressions: vec![Requirement { key: NS.into(), operator: Operator::Exists, values: vec![] }],
        }),
    ];
    assert_eq!(peers, expected, "peers restricted to the namespace unless they name one (with or without k8s:)");
}

#[test]
fn subject_naming_another_namespace_selects_nothing_rather_than_more() {
    let policy = snp("{endpointSelector: {matchLabels: {k8s:io.kubernetes.pod.namespace: ops}}, ingress: [{}]}");
    assert_eq!(policy.subject.match_labels.get(NS).map(String::as_str), Some("ops"), "the named namespace is kept");
    assert_eq!(
        policy.subject.match_expressions,
        vec![Requirement { key: NS.into(), operator: Operator::In, values: vec!["shop".into()] }],
        "and the policy's own namespace is required too"
    );
}

#[test]
fn clusterwide_policy_is_not_restricted() {
    let policy = scnp("{endpointSelector: {matchLabels: {app: web}}, egress: [{toEndpoints: [{matchLabels: {k8s:app: db, k8s:io.kubernetes.pod.namespace.labels.team: a}}]}]}");
    assert_eq!(policy.id.namespace, None, "cluster-wide reference has no namespace");
    assert_eq!(policy.subject, selector(&[("app", "web")]), "subject not pinned");
    let peers = policy.egress.clone().map(|d| d.rules).unwrap_or_default()[0].peers.clone();
    assert_eq!(
        peers,
        Some(vec![Peer::Endpoints(selector(&[("app", "db"), ("k8s:io.kubernetes.pod.namespace.labels.team", "a")]))]),
        "peer not restricted; namespace label key keeps its prefix"
    );
}

#[test]
fn peer_fields_are_a_union_and_no_peer_field_means_any_peer() {
    let policy = scnp("{endpointSelector: {}, ingress: [{fromEntities: [host, remote-node], fromCIDR: [192.0.2.1/24], fromCIDRSet: [{cidr: '2001:db8::/32', except: ['2001:db8:1::/48']}]}, {toPorts: [{ports: [{port: '80'}]}]}]}");
    let rules = ingress_rules(&policy);
    let cidr = |text: &str| text.parse::<IpNet>().unwrap_or_else(|e| panic!("{text}: {e}"));
    assert_eq!(
        rules[0].peers,
        Some(vec![
            Peer::Entity(Entity::Host),
            Peer::Entity(Entity::RemoteNode),
            Peer::Cidr { cidr: cidr("192.0.2.0/24"), except: vec![] },
            Peer::Cidr { cidr: cidr("2001:db8::/32"), except: vec![cidr("2001:db8:1::/48")] },
        ]),
        "entities, CIDRs (host bits cleared) and CIDR sets in one union"
    );
    assert_eq!(rules[0].ports, vec![], "no ports: every port");
    assert_eq!(rules[1].peers, None, "ports without a peer field: any peer");
}

#[test]
fn empty_rule_selects_the_direction_and_allows_nothing() {
    let policy = snp("{endpointSelector: {}, ingress: [{}]}");
    assert_eq!(
        policy.ingress,
        Some(DirectionRules { rules: vec![], default_deny: true }),
        "ingress: [{{}}] is default deny with no rule (Cilium's deny-all idiom)"
    );
    assert_eq!(policy.egress, None, "egress not selected");
}

#[test]
fn deny_rules_share_the_direction_with_allow_rules() {
    let policy = scnp("{endpointSelector: {}, ingress: [{fromEntities: [cluster]}], ingressDeny: [{fromEntities: [world]}], egressDeny: [{toCIDR: [10.0.0.0/8]}]}");
    let actions: Vec<(Action, Option<Vec<Peer>>)> = ingress_rules(&policy).into_iter().map(|r| (r.action, r.peers)).collect();
    assert_eq!(
        actions,
        vec![(Action::Allow, Some(vec![Peer::Entity(Entity::Cluster)])), (Action::Deny, Some(vec![Peer::Entity(Entity::World)]))],
        "allow then deny, in one direction"
    );
    let egress = policy.egress.clone().unwrap_or_default();
    assert!(egress.default_deny, "a deny-only direction has rules, so default deny defaults on");
    assert_eq!(egress.rules.iter().map(|r| r.action).collect::<Vec<_>>(), vec![Action::Deny], "egress deny rule");
}

#[test]
fn default_deny_and_audit_follow_the_spec() {
    let defaults = scnp("{endpointSelector: {}, ingress: [{}], egress: [{}]}");
    assert!(defaults.ingress.is_some_and(|d| d.default_deny), "ingress default deny defaults on");
    assert!(defaults.egress.is_some_and(|d| d.default_deny), "egress default deny defaults on");
    assert!(!defaults.audit, "enforce by default");
    let off = scnp("{endpointSelector: {}, enforcementMode: audit, enableDefaultDeny: {ingress: false}, ingress: [{fromEntities: [all]}], egress: [{}]}");
    assert!(off.ingress.as_ref().is_some_and(|d| !d.default_deny), "ingress default deny turned off");
    assert!(off.egress.as_ref().is_some_and(|d| d.default_deny), "egress keeps its default");
    assert!(off.audit, "audit mode");
    let no_rules = scnp("{endpointSelector: {}, enableDefaultDeny: {ingress: true}}");
    assert_eq!(
        (no_rules.ingress, no_rules.egress),
        (None, None),
        "without rules a direction is not selected, whatever enableDefaultDeny says"
    );
}

#[test]
fn ports_and_icmp_types() {
    let policy = snp("{endpointSelector: {}, egress: [{toPorts: [{ports: [{port: '53', protocol: UDP}, {port: 8000, endPort: 8080, protocol: TCP}, {port: http}, {port: '0', protocol: SCTP}, {protocol: TCP}]}, {ports: [{port: '443'}]}], icmps: [{fields: [{type: 8}, {type: 128, family: IPv6}]}]}]}");
    let ports = policy.egress.map(|d| d.rules).unwrap_or_default()[0].ports.clone();
    assert_eq!(
        ports,
        vec![
            PortMatch::Range { protocol: Protocol::Udp, first: 53, last: 53 },
            PortMatch::Range { protocol: Protocol::Tcp, first: 8000, last: 8080 },
            PortMatch::Named { protocol: Protocol::Any, name: "http".into() },
            PortMatch::AllPorts(Protocol::Sctp),
            PortMatch::AllPorts(Protocol::Tcp),
            PortMatch::Range { protocol: Protocol::Any, first: 443, last: 443 },
            PortMatch::Icmp { ipv6: false, icmp_type: Some(8) },
            PortMatch::Icmp { ipv6: true, icmp_type: Some(128) },
        ],
        "single ports, ranges, named ports, every port, ANY by default, ICMP and ICMPv6 types"
    );
}

#[test]
fn objects_not_validated_are_reported_not_lowered_wrongly() {
    let mut policy = SluiceNetworkPolicy::default();
    policy.metadata.name = Some("p".into());
    assert_eq!(
        lower_namespaced(&policy),
        Err(LowerError::Missing { policy: "SluiceNetworkPolicy default/p".into(), path: "spec".into() }),
        "no spec"
    );
    policy.spec = Some(PolicySpec {
        endpoint_selector: Some(LabelSelector::default()),
        ingress: Some(vec![model::IngressRule { from_cidr: Some(vec!["nope".into()]), ..Default::default() }]),
        ..Default::default()
    });
    assert_eq!(
        lower_namespaced(&policy),
        Err(LowerError::Invalid {
            policy: "SluiceNetworkPolicy default/p".into(),
            path: "spec.ingress[0].fromCIDR[0]".into(),
            value: "nope".into()
        }),
        "a bad CIDR is an error, never a dropped peer"
    );
}
