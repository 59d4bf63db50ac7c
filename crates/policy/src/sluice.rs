//! Lowering of Sluice's policy kinds to the IR. A `SluiceNetworkPolicy` speaks of its own
//! namespace: its subject is pinned to it, and so is each endpoint selector of its rules
//! unless the selector names `k8s:io.kubernetes.pod.namespace` itself (Cilium's rule). A
//! `SluiceClusterwideNetworkPolicy` is lowered the same way without either restriction.
//!
//! ```
//! use sluice_model::Object;
//!
//! let yaml = "apiVersion: sluice.dev/v1
//! kind: SluiceNetworkPolicy
//! metadata: {name: web, namespace: shop}
//! spec:
//!   endpointSelector: {matchLabels: {app: web}}
//!   ingress: [{fromEndpoints: [{matchLabels: {k8s:app: client}}], toPorts: [{ports: [{port: '80', protocol: TCP}]}]}]
//! ";
//! let objects = sluice_model::parse_manifests("web.yaml", yaml)?;
//! let Object::SluiceNetworkPolicy(policy) = &objects[0] else { unreachable!() };
//! let lowered = sluice_policy::sluice::lower_namespaced(policy)?;
//! assert_eq!(lowered.subject.match_labels.get("k8s:io.kubernetes.pod.namespace").map(String::as_str), Some("shop"));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use ipnet::IpNet;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use sluice_model::labels::{NAMESPACE_LABEL, NAMESPACE_LABELS_PREFIX};
use sluice_model::policy::{self as model, EnforcementMode, IcmpFamily, PolicySpec, PortProtocolName, RuleView};
use sluice_model::policy::{SluiceClusterwideNetworkPolicy, SluiceNetworkPolicy};

use crate::ir::{
    Action, DirectionRules, Entity, HeaderMatch, HttpRule, Operator, Peer, Policy, PolicyRef, PortMatch, Protocol, Requirement, Rule,
    Selector,
};

/// The source prefix of Kubernetes-derived identity labels.
const K8S_PREFIX: &str = "k8s:";

/// Why a policy could not be lowered. Objects read by `sluice_model::parse_manifests` are
/// validated and never fail; these errors are for objects built or stored some other way.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LowerError {
    /// A field the policy needs is absent (`spec`, `spec.endpointSelector`).
    #[error("{policy}: {path}: required value is missing")]
    Missing {
        /// `Kind namespace/name` or `Kind name`.
        policy: String,
        path: String,
    },
    /// A value validation rejects (a CIDR, a port, an operator, an ICMP type).
    #[error("{policy}: {path}: {value:?} is invalid")]
    Invalid {
        /// `Kind namespace/name` or `Kind name`.
        policy: String,
        path: String,
        value: String,
    },
}

/// Ports of a `toPorts` entry with layer-7 rules, and its HTTP rules.
type Layer7Ports = (Vec<PortMatch>, Vec<HttpRule>);

/// Lowers a `SluiceNetworkPolicy`; its namespace defaults to `default` when unset.
pub fn lower_namespaced(policy: &SluiceNetworkPolicy) -> Result<Policy, LowerError> {
    let namespace = policy.metadata.namespace.as_deref().unwrap_or("default");
    let id = PolicyRef {
        kind: "SluiceNetworkPolicy".into(),
        namespace: Some(namespace.into()),
        name: policy.metadata.name.clone().unwrap_or_default(),
    };
    Lowering { id, namespace: Some(namespace) }.policy(policy.spec.as_ref())
}

/// Lowers a `SluiceClusterwideNetworkPolicy`.
pub fn lower_clusterwide(policy: &SluiceClusterwideNetworkPolicy) -> Result<Policy, LowerError> {
    let id = PolicyRef {
        kind: "SluiceClusterwideNetworkPolicy".into(),
        namespace: None,
        name: policy.metadata.name.clone().unwrap_or_default(),
    };
    Lowering { id, namespace: None }.policy(policy.spec.as_ref())
}

/// One policy being lowered: who it is (for errors) and the namespace it is bound to.
struct Lowering<'a> {
    id: PolicyRef,
    namespace: Option<&'a str>,
}

// === impl Lowering ===

impl Lowering<'_> {
    fn policy(self, spec: Option<&PolicySpec>) -> Result<Policy, LowerError> {
        let spec = spec.ok_or_else(|| self.missing("spec"))?;
        let selector = spec.endpoint_selector.as_ref().ok_or_else(|| self.missing("spec.endpointSelector"))?;
        let mut subject = self.selector("spec.endpointSelector", selector)?;
        if let Some(namespace) = self.namespace {
            pin_namespace(&mut subject, namespace);
        }
        let default_deny = spec.enable_default_deny.unwrap_or_default();
        let ingress =
            spec.ingress_lists().map(|(field, rules, deny)| (field, rules.iter().map(model::IngressRule::view).collect::<Vec<_>>(), deny));
        let egress =
            spec.egress_lists().map(|(field, rules, deny)| (field, rules.iter().map(model::EgressRule::view).collect::<Vec<_>>(), deny));
        Ok(Policy {
            ingress: self.direction(&ingress, default_deny.ingress)?,
            egress: self.direction(&egress, default_deny.egress)?,
            audit: spec.enforcement_mode == Some(EnforcementMode::Audit),
            subject,
            id: self.id,
        })
    }

    /// The rules of one direction (allow list, then deny list), or `None` when the policy has
    /// no rules in it and so does not select its endpoints in that direction.
    fn direction(
        &self,
        lists: &[(&'static str, Vec<RuleView<'_>>, bool); 2],
        default_deny: Option<bool>,
    ) -> Result<Option<DirectionRules>, LowerError> {
        if lists.iter().all(|(_, rules, _)| rules.is_empty()) {
            return Ok(None);
        }
        let mut rules = Vec::new();
        for (field, views, deny) in lists {
            let action = if *deny { Action::Deny } else { Action::Allow };
            for (i, view) in views.iter().enumerate() {
                rules.extend(self.rule(&format!("spec.{field}[{i}]"), view, action)?);
            }
        }
        Ok(Some(DirectionRules { rules, default_deny: default_deny.unwrap_or(true) }))
    }

    /// One rule, split in one per `toPorts` entry with layer-7 rules; none for a rule with
    /// neither peers nor ports (`{}`), which, as in Cilium,
    /// only makes its direction selected (default deny) and allows or denies nothing itself.
    fn rule(&self, at: &str, view: &RuleView<'_>, action: Action) -> Result<Vec<Rule>, LowerError> {
        let mut peers = Vec::new();
        let (field, selectors) = view.endpoints;
        for (i, selector) in selectors.into_iter().flatten().enumerate() {
            let mut selector = self.selector(&format!("{at}.{field}[{i}]"), selector)?;
            if let Some(namespace) = self.namespace {
                if !names_namespace(&selector) {
                    selector.match_labels.insert(NAMESPACE_LABEL.to_owned(), namespace.to_owned());
                }
            }
            peers.push(Peer::Endpoints(selector));
        }
        peers.extend(view.entities.1.into_iter().flatten().map(|entity| Peer::Entity(lower_entity(*entity))));
        let (field, cidrs) = view.cidr;
        for (i, cidr) in cidrs.into_iter().flatten().enumerate() {
            peers.push(Peer::Cidr { cidr: self.cidr(&format!("{at}.{field}[{i}]"), cidr)?, except: Vec::new() });
        }
        let (field, sets) = view.cidr_set;
        for (i, set) in sets.into_iter().flatten().enumerate() {
            let at = format!("{at}.{field}[{i}]");
            let except = set
                .except
                .iter()
                .flatten()
                .enumerate()
                .map(|(j, e)| self.cidr(&format!("{at}.except[{j}]"), e))
                .collect::<Result<_, _>>()?;
            peers.push(Peer::Cidr { cidr: self.cidr(&format!("{at}.cidr"), &set.cidr)?, except });
        }
        let peers = if view.has_no_peer_field() { None } else { Some(peers) };
        let (ports, layer7) = self.ports(at, view)?;
        if peers.is_none() && ports.is_empty() && layer7.is_empty() {
            return Ok(Vec::new());
        }
        let mut rules = Vec::new();
        // Ports with layer-7 rules are rules of their own; the rest keep the plain rule, which
        // exists unless every port of the rule has layer-7 rules (without ports it would allow
        // every port).
        if !ports.is_empty() || layer7.is_empty() {
            rules.push(Rule { action, peers: peers.clone(), ports, http: None });
        }
        for (ports, http) in layer7 {
            rules.push(Rule { action, peers: peers.clone(), ports, http: Some(http) });
        }
        Ok(rules)
    }

    /// The `toPorts` ports without layer-7 rules and every `icmps` type of a rule, in order;
    /// then each `toPorts` entry with layer-7 rules, with its HTTP rules.
    fn ports(&self, at: &str, view: &RuleView<'_>) -> Result<(Vec<PortMatch>, Vec<Layer7Ports>), LowerError> {
        let mut out = Vec::new();
        let mut layer7 = Vec::new();
        for (i, rule) in view.to_ports.into_iter().flatten().enumerate() {
            let mut ports = Vec::new();
            for (j, port) in rule.ports.iter().flatten().enumerate() {
                let at = format!("{at}.toPorts[{i}].ports[{j}]");
                let protocol = lower_protocol(port.protocol.unwrap_or_default());
                let text = port.port.as_deref().unwrap_or("0");
                let matched = match text.parse::<u16>() {
                    Ok(0) => PortMatch::AllPorts(protocol),
                    Ok(first) => {
                        let last = match port.end_port {
                            None => first,
                            Some(end) => u16::try_from(end)
                                .ok()
                                .filter(|end| *end >= first)
                                .ok_or_else(|| self.invalid(&format!("{at}.endPort"), &end.to_string()))?,
                        };
                        PortMatch::Range { protocol, first, last }
                    }
                    Err(_) if text.starts_with(|c: char| c.is_ascii_lowercase()) => PortMatch::Named { protocol, name: text.to_owned() },
                    Err(_) => return Err(self.invalid(&format!("{at}.port"), text)),
                };
                ports.push(matched);
            }
            match rule.rules.as_ref().and_then(|r| r.http.as_deref()) {
                Some(http) => {
                    let at = format!("{at}.toPorts[{i}].rules.http");
                    let http = http.iter().enumerate().map(|(j, r)| self.http_rule(&format!("{at}[{j}]"), r)).collect::<Result<_, _>>()?;
                    layer7.push((ports, http));
                }
                None => out.extend(ports),
            }
        }
        for (i, rule) in view.icmps.into_iter().flatten().enumerate() {
            for (j, field) in rule.fields.iter().flatten().enumerate() {
                let at = format!("{at}.icmps[{i}].fields[{j}].type");
                let value = field.icmp_type.ok_or_else(|| self.missing(&at))?;
                let icmp_type = u8::try_from(value).map_err(|_| self.invalid(&at, &value.to_string()))?;
                out.push(PortMatch::Icmp { ipv6: field.family == Some(IcmpFamily::IPv6), icmp_type: Some(icmp_type) });
            }
        }
        Ok((out, layer7))
    }

    fn http_rule(&self, at: &str, rule: &model::HttpRule) -> Result<HttpRule, LowerError> {
        let mut headers = Vec::new();
        for (k, text) in rule.headers.iter().flatten().enumerate() {
            let (name, value) = model::parse_header_match(text).map_err(|_| self.invalid(&format!("{at}.headers[{k}]"), text))?;
            headers.push(HeaderMatch { name, value });
        }
        Ok(HttpRule { method: rule.method.clone(), path: rule.path.clone(), host: rule.host.clone(), headers })
    }

    /// A selector with its keys in identity label form: `k8s:` dropped from pod label keys,
    /// kept (or added) on the namespace keys, which only exist with it.
    fn selector(&self, at: &str, selector: &LabelSelector) -> Result<Selector, LowerError> {
        let match_labels = selector.match_labels.iter().flatten().map(|(k, v)| (identity_key(k), v.clone())).collect();
        let mut match_expressions = Vec::new();
        for (i, requirement) in selector.match_expressions.iter().flatten().enumerate() {
            let operator = match requirement.operator.as_str() {
                "In" => Operator::In,
                "NotIn" => Operator::NotIn,
                "Exists" => Operator::Exists,
                "DoesNotExist" => Operator::DoesNotExist,
                other => return Err(self.invalid(&format!("{at}.matchExpressions[{i}].operator"), other)),
            };
            match_expressions.push(Requirement {
                key: identity_key(&requirement.key),
                operator,
                values: requirement.values.clone().unwrap_or_default(),
            });
        }
        Ok(Selector { match_labels, match_expressions })
    }

    /// A CIDR with its host bits cleared.
    fn cidr(&self, at: &str, value: &str) -> Result<IpNet, LowerError> {
        value.parse::<IpNet>().map(|net| net.trunc()).map_err(|_| self.invalid(at, value))
    }

    fn name(&self) -> String {
        match &self.id.namespace {
            Some(namespace) => format!("{} {namespace}/{}", self.id.kind, self.id.name),
            None => format!("{} {}", self.id.kind, self.id.name),
        }
    }

    fn missing(&self, path: &str) -> LowerError {
        LowerError::Missing { policy: self.name(), path: path.to_owned() }
    }

    fn invalid(&self, path: &str, value: &str) -> LowerError {
        LowerError::Invalid { policy: self.name(), path: path.to_owned(), value: value.to_owned() }
    }
}

/// `app` and `k8s:app` are the same key, `app`; `io.kubernetes.pod.namespace` and
/// `k8s:io.kubernetes.pod.namespace` (and the namespace label keys) are the same key, with
/// the prefix, as `sluice_model::LabelSet::for_pod` writes it.
fn identity_key(key: &str) -> String {
    let bare = key.strip_prefix(K8S_PREFIX).unwrap_or(key);
    let namespace_key = NAMESPACE_LABEL.strip_prefix(K8S_PREFIX).unwrap_or(NAMESPACE_LABEL);
    let labels_prefix = NAMESPACE_LABELS_PREFIX.strip_prefix(K8S_PREFIX).unwrap_or(NAMESPACE_LABELS_PREFIX);
    if bare == namespace_key || bare.starts_with(labels_prefix) {
        format!("{K8S_PREFIX}{bare}")
    } else {
        bare.to_owned()
    }
}

/// True when a selector says which namespace it means (then a namespaced policy leaves it be).
fn names_namespace(selector: &Selector) -> bool {
    selector.match_labels.contains_key(NAMESPACE_LABEL) || selector.match_expressions.iter().any(|r| r.key == NAMESPACE_LABEL)
}

/// Restricts a namespaced policy's subject to its namespace. A subject that names another
/// namespace keeps that too, so it selects nothing (as in Cilium) rather than being widened.
fn pin_namespace(subject: &mut Selector, namespace: &str) {
    match subject.match_labels.get(NAMESPACE_LABEL) {
        None => {
            subject.match_labels.insert(NAMESPACE_LABEL.to_owned(), namespace.to_owned());
        }
        Some(named) if named == namespace => {}
        Some(_) => subject.match_expressions.push(Requirement {
            key: NAMESPACE_LABEL.to_owned(),
            operator: Operator::In,
            values: vec![namespace.to_owned()],
        }),
    }
}

fn lower_entity(entity: model::Entity) -> Entity {
    match entity {
        model::Entity::Host => Entity::Host,
        model::Entity::RemoteNode => Entity::RemoteNode,
        model::Entity::World => Entity::World,
        model::Entity::Cluster => Entity::Cluster,
        model::Entity::All => Entity::All,
    }
}

fn lower_protocol(protocol: PortProtocolName) -> Protocol {
    match protocol {
        PortProtocolName::Tcp => Protocol::Tcp,
        PortProtocolName::Udp => Protocol::Udp,
        PortProtocolName::Sctp => Protocol::Sctp,
        PortProtocolName::Any => Protocol::Any,
    }
}

#[cfg(test)]
mod tests;
