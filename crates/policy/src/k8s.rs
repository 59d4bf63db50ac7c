//! Lowering of Kubernetes `NetworkPolicy` to the engine's IR, with upstream semantics.
//! Objects are assumed validated; what still cannot be lowered is dropped in the direction
//! that never allows more (a peer or port that cannot be read matches nothing).

use std::collections::BTreeMap;

use ipnet::IpNet;
use k8s_openapi::api::networking::v1::{NetworkPolicy, NetworkPolicyPeer, NetworkPolicyPort};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use sluice_model::labels::{NAMESPACE_LABEL, NAMESPACE_LABELS_PREFIX};

use crate::ir::{Action, DirectionRules, Operator, Peer, Policy, PolicyRef, PortMatch, Protocol, Requirement, Rule, Selector};

/// Lowers a NetworkPolicy. Its pod selector and bare peer pod selectors are confined to the
/// policy's namespace; `policyTypes` defaults to Ingress, plus Egress when egress rules exist.
pub fn lower_network_policy(np: &NetworkPolicy) -> Policy {
    let namespace = np.metadata.namespace.as_deref().unwrap_or("default");
    let id = PolicyRef {
        kind: "NetworkPolicy".to_owned(),
        namespace: Some(namespace.to_owned()),
        name: np.metadata.name.clone().unwrap_or_default(),
    };
    let Some(spec) = &np.spec else {
        // No spec: Ingress type with no rules, selecting every pod of the namespace.
        return Policy { id, subject: in_namespace(Selector::default(), namespace), ingress: Some(deny_all()), egress: None, audit: false };
    };
    let subject = lower_selector(&spec.pod_selector, "").map_or_else(Selector::nothing, |s| in_namespace(s, namespace));
    let ingress_rules = spec.ingress.as_deref().unwrap_or_default();
    let egress_rules = spec.egress.as_deref().unwrap_or_default();
    let (has_ingress, has_egress) = match &spec.policy_types {
        Some(types) => (types.iter().any(|t| t == "Ingress"), types.iter().any(|t| t == "Egress")),
        None => (true, !egress_rules.is_empty()),
    };
    let ingress = has_ingress.then(|| DirectionRules {
        rules: ingress_rules.iter().filter_map(|r| lower_rule(r.from.as_deref(), r.ports.as_deref(), namespace)).collect(),
        default_deny: true,
    });
    let egress = has_egress.then(|| DirectionRules {
        rules: egress_rules.iter().filter_map(|r| lower_rule(r.to.as_deref(), r.ports.as_deref(), namespace)).collect(),
        default_deny: true,
    });
    Policy { id, subject, ingress, egress, audit: false }
}

fn deny_all() -> DirectionRules {
    DirectionRules { rules: Vec::new(), default_deny: true }
}

/// One allow rule; `None` when its ports were given but none could be read (an empty port
/// list would mean "every port").
fn lower_rule(peers: Option<&[NetworkPolicyPeer]>, ports: Option<&[NetworkPolicyPort]>, namespace: &str) -> Option<Rule> {
    let peers = match peers {
        None | Some([]) => None,
        Some(peers) => Some(peers.iter().filter_map(|p| lower_peer(p, namespace)).collect()),
    };
    let given = ports.unwrap_or_default();
    let ports: Vec<PortMatch> = given.iter().filter_map(lower_port).collect();
    if ports.is_empty() && !given.is_empty() {
        return None;
    }
    Some(Rule { action: Action::Allow, peers, ports, http: None })
}

/// podSelector alone: pods of the policy's namespace; namespaceSelector alone: every pod of
/// the matching namespaces; both: pods matching both (AND).
fn lower_peer(peer: &NetworkPolicyPeer, namespace: &str) -> Option<Peer> {
    if let Some(block) = &peer.ip_block {
        let cidr = block.cidr.parse::<IpNet>().ok()?.trunc();
        let except = block.except.iter().flatten().map(|e| e.parse::<IpNet>().map(|n| n.trunc())).collect::<Result<Vec<_>, _>>().ok()?;
        return Some(Peer::IpBlock { cidr, except });
    }
    // A selector present but unreadable drops the peer.
    let pods = match &peer.pod_selector {
        Some(s) => Some(lower_selector(s, "")?),
        None => None,
    };
    let namespaces = match &peer.namespace_selector {
        Some(s) => Some(lower_selector(s, NAMESPACE_LABELS_PREFIX)?),
        None => None,
    };
    let selector = match (pods, namespaces) {
        (None, None) => return None,
        (Some(pods), None) => in_namespace(pods, namespace),
        (None, Some(namespaces)) => namespaces,
        // Pod keys and prefixed namespace keys never collide (the prefix holds ':').
        (Some(mut pods), Some(namespaces)) => {
            pods.match_labels.extend(namespaces.match_labels);
            pods.match_expressions.extend(namespaces.match_expressions);
            pods
        }
    };
    Some(Peer::Endpoints(selector))
}

fn in_namespace(mut selector: Selector, namespace: &str) -> Selector {
    selector.match_labels.insert(NAMESPACE_LABEL.to_owned(), namespace.to_owned());
    selector
}

/// A label selector with every key prefixed by `prefix`; `None` if an operator is unknown.
fn lower_selector(selector: &LabelSelector, prefix: &str) -> Option<Selector> {
    let match_labels: BTreeMap<String, String> =
        selector.match_labels.iter().flatten().map(|(k, v)| (format!("{prefix}{k}"), v.clone())).collect();
    let match_expressions = selector
        .match_expressions
        .iter()
        .flatten()
        .map(|e| {
            let operator = match e.operator.as_str() {
                "In" => Operator::In,
                "NotIn" => Operator::NotIn,
                "Exists" => Operator::Exists,
                "DoesNotExist" => Operator::DoesNotExist,
                _ => return None,
            };
            Some(Requirement { key: format!("{prefix}{}", e.key), operator, values: e.values.clone().unwrap_or_default() })
        })
        .collect::<Option<Vec<_>>>()?;
    Some(Selector { match_labels, match_expressions })
}

/// Protocol defaults to TCP; no `port` is every port; `endPort` makes a range.
fn lower_port(port: &NetworkPolicyPort) -> Option<PortMatch> {
    let protocol = match port.protocol.as_deref().unwrap_or("TCP") {
        "TCP" => Protocol::Tcp,
        "UDP" => Protocol::Udp,
        "SCTP" => Protocol::Sctp,
        _ => return None,
    };
    Some(match &port.port {
        None => PortMatch::AllPorts(protocol),
        Some(IntOrString::String(name)) => PortMatch::Named { protocol, name: name.clone() },
        Some(IntOrString::Int(first)) => {
            let first = u16::try_from(*first).ok().filter(|p| *p != 0)?;
            let last = match port.end_port {
                None => first,
                Some(end) => u16::try_from(end).ok().filter(|e| *e >= first)?,
            };
            PortMatch::Range { protocol, first, last }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lower(yaml: &str) -> Policy {
        let np: NetworkPolicy = serde_yaml_ng::from_str(yaml).expect("valid NetworkPolicy YAML");
        lower_network_policy(&np)
    }

    #[test]
    fn implied_policy_types() {
        let p = lower(
            "metadata: {name: p, namespace: x}\n\
             spec:\n  podSelector: {}\n  egress: [{}]\n",
        );
        assert_eq!(p.ingress, Some(deny_all()), "ingress implied, no rules: deny all");
        let egress = p.egress.expect("egress implied by egress rules");
        assert_eq!(egress.rules.len(), 1, "one egress rule");
        assert_eq!(egress.rules[0].peers, None, "empty rule: any peer");
        assert!(egress.rules[0].ports.is_empty(), "empty rule: any port");
        let p = lower("metadata: {name: p, namespace: x}\nspec:\n  podSelector: {}\n  egress: []\n");
        assert_eq!(p.egress, None, "an empty egress list does not imply Egress");
    }

    #[test]
    fn peers_and_ports() {
        let p = lower(
            r#"
metadata: {name: p, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  policyTypes: [Egress]
  egress:
  - to:
    - podSelector: {matchLabels: {pod: b}}
      namespaceSelector: {matchExpressions: [{key: ns, operator: In, values: [y]}]}
    - ipBlock: {cidr: 198.18.0.1/24, except: [198.18.0.128/25]}
    ports:
    - {port: 80}
    - {protocol: UDP, port: 1000, endPort: 2000}
    - {protocol: SCTP, port: serve}
    - {protocol: UDP}
    - {protocol: ICMP}
"#,
        );
        assert_eq!(p.ingress, None, "explicit types: no ingress");
        assert_eq!(p.subject.match_labels.get(NAMESPACE_LABEL).map(String::as_str), Some("x"), "subject confined to the namespace");
        let rule = &p.egress.expect("egress").rules[0];
        let peers = rule.peers.as_ref().expect("peers");
        let Peer::Endpoints(sel) = &peers[0] else { panic!("first peer is endpoints: {peers:?}") };
        assert_eq!(sel.match_labels.get("pod").map(String::as_str), Some("b"), "pod part");
        assert_eq!(sel.match_labels.get(NAMESPACE_LABEL), None, "ns selector replaces ns");
        assert_eq!(sel.match_expressions[0].key, format!("{NAMESPACE_LABELS_PREFIX}ns"), "namespace expression prefixed");
        assert_eq!(
            peers[1],
            Peer::IpBlock { cidr: "198.18.0.0/24".parse().expect("cidr"), except: vec!["198.18.0.128/25".parse().expect("cidr")] },
            "ipBlock normalized, matched by address"
        );
        assert_eq!(
            rule.ports,
            vec![
                PortMatch::Range { protocol: Protocol::Tcp, first: 80, last: 80 },
                PortMatch::Range { protocol: Protocol::Udp, first: 1000, last: 2000 },
                PortMatch::Named { protocol: Protocol::Sctp, name: "serve".into() },
                PortMatch::AllPorts(Protocol::Udp),
            ],
            "ports lowered; the unknown protocol dropped"
        );
    }

    #[test]
    fn unreadable_ports_match_nothing() {
        let p = lower(
            "metadata: {name: p, namespace: x}\nspec:\n  podSelector: {}\n  \
             ingress: [{ports: [{protocol: ICMP}]}]\n",
        );
        assert_eq!(p.ingress, Some(deny_all()), "rule with no readable port dropped");
    }
}
