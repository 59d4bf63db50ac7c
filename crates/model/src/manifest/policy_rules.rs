//! What the API server enforces on NetworkPolicies (`ValidateNetworkPolicy`), and the same
//! kind of rules for Sluice's policy kinds: label selectors, peers, CIDRs and their
//! exceptions, ports, entities, ICMP types. Each error names the field path.

use std::collections::BTreeMap;

use ipnet::IpNet;
use k8s_openapi::api::networking::v1::{IPBlock, NetworkPolicy, NetworkPolicyPeer, NetworkPolicyPort};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::path;
use super::rules::{check_labels, invalid, FieldError, Rules};
use crate::labels::{validate_iana_svc_name, validate_label_key, validate_label_value};
use crate::policy::{
    CidrRule, EnforcementMode, PolicySpec, PortProtocolName, RuleView, SluiceClusterwideNetworkPolicy, SluiceNetworkPolicy,
};

/// The source prefix Cilium writes before Kubernetes-derived identity labels.
pub const K8S_SOURCE_PREFIX: &str = "k8s:";

fn reject(path: impl Into<String>, reason: impl Into<String>) -> FieldError {
    FieldError::Invalid { path: path.into(), reason: reason.into() }
}

/// Which keys a selector may use: Kubernetes label keys, or identity label keys (a label key
/// with an optional `k8s:` source prefix).
#[derive(Clone, Copy)]
enum Keys {
    Kubernetes,
    Identity,
}

impl Keys {
    fn check(self, key: &str) -> Result<(), String> {
        match self {
            Keys::Kubernetes => validate_label_key(key),
            Keys::Identity => validate_label_key(key.strip_prefix(K8S_SOURCE_PREFIX).unwrap_or(key)),
        }
    }
}

/// `ValidateLabelSelector`: valid keys and values; `In`/`NotIn` need values, `Exists` and
/// `DoesNotExist` take none.
fn check_selector(at: &str, selector: &LabelSelector, keys: Keys) -> Result<(), FieldError> {
    let labels_at = format!("{at}.matchLabels");
    match keys {
        Keys::Kubernetes => check_labels(&labels_at, selector.match_labels.as_ref())?,
        Keys::Identity => check_identity_labels(&labels_at, selector.match_labels.as_ref())?,
    }
    for (i, requirement) in selector.match_expressions.iter().flatten().enumerate() {
        let at = format!("{at}.matchExpressions[{i}]");
        let key = requirement.key.as_str();
        if key.is_empty() {
            return Err(FieldError::Missing(format!("{at}.key")));
        }
        keys.check(key).map_err(|reason| invalid(&format!("{at}.key"), key, reason))?;
        let values = requirement.values.as_deref().unwrap_or_default();
        match requirement.operator.as_str() {
            "In" | "NotIn" if values.is_empty() => {
                return Err(reject(format!("{at}.values"), "must be specified when `operator` is 'In' or 'NotIn'"));
            }
            "Exists" | "DoesNotExist" if !values.is_empty() => {
                return Err(reject(format!("{at}.values"), "may not be specified when `operator` is 'Exists' or 'DoesNotExist'"));
            }
            "In" | "NotIn" | "Exists" | "DoesNotExist" => {}
            "" => return Err(FieldError::Missing(format!("{at}.operator"))),
            other => {
                return Err(reject(
                    format!("{at}.operator"),
                    format!("{other:?} is not a valid label selector operator: must be one of In, NotIn, Exists, DoesNotExist"),
                ));
            }
        }
        for (j, value) in values.iter().enumerate() {
            validate_label_value(value).map_err(|reason| invalid(&format!("{at}.values[{j}]"), value, reason))?;
        }
    }
    Ok(())
}

/// Like `check_labels`, with identity label keys.
fn check_identity_labels(at: &str, labels: Option<&BTreeMap<String, String>>) -> Result<(), FieldError> {
    for (key, value) in labels.into_iter().flatten() {
        Keys::Identity.check(key).map_err(|reason| reject(at, format!("key {key:?} is invalid: {reason}")))?;
        validate_label_value(value).map_err(|reason| invalid(&path::map_key(at, key), value, reason))?;
    }
    Ok(())
}

fn cidr(at: &str, value: &str) -> Result<IpNet, FieldError> {
    value.parse().map_err(|_| invalid(at, value, "must be a valid CIDR value (e.g. 10.9.8.0/24 or 2001:db8::/64)".to_owned()))
}

/// A CIDR and its exceptions: each exception of the same family, strictly inside it.
fn check_cidr_except(at: &str, value: &str, except: &[String]) -> Result<(), FieldError> {
    let outer = cidr(&format!("{at}.cidr"), value)?;
    for (i, item) in except.iter().enumerate() {
        let at = format!("{at}.except[{i}]");
        let inner = cidr(&at, item)?;
        let same_family = matches!((outer, inner), (IpNet::V4(_), IpNet::V4(_)) | (IpNet::V6(_), IpNet::V6(_)));
        if !same_family {
            return Err(invalid(&at, item, format!("must be of the same IP family as cidr ({value})")));
        }
        if inner.prefix_len() <= outer.prefix_len() || !outer.contains(&inner.network()) {
            return Err(invalid(&at, item, format!("must be a strict subset of cidr ({value})")));
        }
    }
    Ok(())
}

fn port_range(at: &str, port: i64, min: i64) -> Result<(), FieldError> {
    if (min..=65535).contains(&port) {
        return Ok(());
    }
    Err(reject(at, format!("{port} is invalid: must be between {min} and 65535, inclusive")))
}

// === NetworkPolicy ===

impl Rules for NetworkPolicy {
    fn check_spec(&self) -> Result<(), FieldError> {
        // An absent spec is the zero value, as in the API server: every pod, ingress isolated.
        let Some(spec) = &self.spec else { return Ok(()) };
        check_selector("spec.podSelector", &spec.pod_selector, Keys::Kubernetes)?;
        for (i, rule) in spec.ingress.iter().flatten().enumerate() {
            let at = format!("spec.ingress[{i}]");
            check_ports(&at, rule.ports.as_deref())?;
            check_peers(&format!("{at}.from"), rule.from.as_deref())?;
        }
        for (i, rule) in spec.egress.iter().flatten().enumerate() {
            let at = format!("spec.egress[{i}]");
            check_ports(&at, rule.ports.as_deref())?;
            check_peers(&format!("{at}.to"), rule.to.as_deref())?;
        }
        let types = spec.policy_types.as_deref().unwrap_or_default();
        if types.len() > 2 {
            return Err(reject("spec.policyTypes", "may not specify more than two policyTypes"));
        }
        for (i, type_) in types.iter().enumerate() {
            let at = format!("spec.policyTypes[{i}]");
            if !matches!(type_.as_str(), "Ingress" | "Egress") {
                return Err(reject(at, format!("{type_:?} is not supported: must be one of Ingress, Egress")));
            }
            if types[..i].contains(type_) {
                return Err(reject(at, format!("duplicate policy type {type_:?}")));
            }
        }
        Ok(())
    }
}

fn check_ports(at: &str, ports: Option<&[NetworkPolicyPort]>) -> Result<(), FieldError> {
    for (i, port) in ports.into_iter().flatten().enumerate() {
        let at = |field: &str| format!("{at}.ports[{i}].{field}");
        let protocol = port.protocol.as_deref().unwrap_or("TCP");
        if !matches!(protocol, "TCP" | "UDP" | "SCTP") {
            return Err(reject(at("protocol"), format!("{protocol:?} is not supported: must be one of TCP, UDP, SCTP")));
        }
        let first = match &port.port {
            Some(IntOrString::Int(number)) => {
                port_range(&at("port"), i64::from(*number), 1)?;
                Some(*number)
            }
            Some(IntOrString::String(name)) => {
                validate_iana_svc_name(name).map_err(|reason| invalid(&at("port"), name, reason))?;
                None
            }
            None => None,
        };
        let Some(end) = port.end_port else { continue };
        match (&port.port, first) {
            (None, _) => return Err(reject(at("endPort"), "may not be specified when `port` is not specified")),
            (Some(_), None) => return Err(reject(at("endPort"), "may not be specified when `port` is non-numeric")),
            (Some(_), Some(first)) if end < first => {
                return Err(reject(at("endPort"), format!("{end} is invalid: must be greater than or equal to `port` ({first})")));
            }
            (Some(_), Some(_)) => port_range(&at("endPort"), i64::from(end), 1)?,
        }
    }
    Ok(())
}

fn check_peers(at: &str, peers: Option<&[NetworkPolicyPeer]>) -> Result<(), FieldError> {
    for (i, peer) in peers.into_iter().flatten().enumerate() {
        let at = format!("{at}[{i}]");
        let mut count = 0;
        if let Some(selector) = &peer.pod_selector {
            count += 1;
            check_selector(&format!("{at}.podSelector"), selector, Keys::Kubernetes)?;
        }
        if let Some(selector) = &peer.namespace_selector {
            count += 1;
            check_selector(&format!("{at}.namespaceSelector"), selector, Keys::Kubernetes)?;
        }
        if let Some(IPBlock { cidr: value, except }) = &peer.ip_block {
            if count > 0 {
                return Err(reject(at, "may not specify both ipBlock and another peer"));
            }
            count += 1;
            if value.is_empty() {
                return Err(FieldError::Missing(format!("{at}.ipBlock.cidr")));
            }
            check_cidr_except(&format!("{at}.ipBlock"), value, except.as_deref().unwrap_or_default())?;
        }
        if count == 0 {
            return Err(reject(at, "must specify a peer (podSelector, namespaceSelector or ipBlock)"));
        }
    }
    Ok(())
}

// === Sluice's kinds ===

impl Rules for SluiceNetworkPolicy {
    fn check_spec(&self) -> Result<(), FieldError> {
        check_sluice_spec(self.spec.as_ref())
    }
}

impl Rules for SluiceClusterwideNetworkPolicy {
    fn check_spec(&self) -> Result<(), FieldError> {
        check_sluice_spec(self.spec.as_ref())
    }
}

fn check_sluice_spec(spec: Option<&PolicySpec>) -> Result<(), FieldError> {
    let Some(spec) = spec else { return Err(FieldError::Missing("spec".to_owned())) };
    let Some(selector) = &spec.endpoint_selector else {
        return Err(FieldError::Missing("spec.endpointSelector".to_owned()));
    };
    check_selector("spec.endpointSelector", selector, Keys::Identity)?;
    let audit = spec.enforcement_mode == Some(EnforcementMode::Audit);
    for (field, rules, deny) in spec.ingress_lists() {
        for (i, rule) in rules.iter().enumerate() {
            let at = format!("spec.{field}[{i}]");
            check_sluice_rule(&at, rule.view())?;
            check_layer7(&at, rule.view(), deny, audit)?;
        }
    }
    for (field, rules, deny) in spec.egress_lists() {
        for (i, rule) in rules.iter().enumerate() {
            let at = format!("spec.{field}[{i}]");
            check_sluice_rule(&at, rule.view())?;
            check_layer7(&at, rule.view(), deny, audit)?;
        }
    }
    Ok(())
}

/// `toPorts[].rules`: only in allow rules of enforcing policies (the proxy answers what they
/// do not allow; a deny or an audit has no request to answer), only on single TCP ports, and
/// with expressions and header names the proxy can use.
fn check_layer7(at: &str, rule: RuleView<'_>, deny: bool, audit: bool) -> Result<(), FieldError> {
    for (i, port_rule) in rule.to_ports.into_iter().flatten().enumerate() {
        let Some(l7) = &port_rule.rules else { continue };
        let at = format!("{at}.toPorts[{i}]");
        if deny {
            return Err(reject(format!("{at}.rules"), "layer-7 rules are allowed only in allow rules (ingress, egress)"));
        }
        if audit {
            return Err(reject(format!("{at}.rules"), "layer-7 rules are not supported with enforcementMode: audit"));
        }
        for (j, port) in port_rule.ports.iter().flatten().enumerate() {
            let at = format!("{at}.ports[{j}]");
            if port.protocol != Some(PortProtocolName::Tcp) {
                return Err(reject(format!("{at}.protocol"), "must be TCP on a port with layer-7 rules"));
            }
            let number = port.port.as_deref().and_then(|p| p.parse::<u16>().ok()).unwrap_or(0);
            if number == 0 {
                return Err(reject(format!("{at}.port"), "must be a port number from 1 to 65535 on a port with layer-7 rules"));
            }
            if port.end_port.is_some() {
                return Err(reject(format!("{at}.endPort"), "may not be specified on a port with layer-7 rules"));
            }
        }
        let http = l7.http.as_deref().unwrap_or_default();
        if http.is_empty() {
            return Err(FieldError::Missing(format!("{at}.rules.http")));
        }
        for (j, request) in http.iter().enumerate() {
            let at = format!("{at}.rules.http[{j}]");
            for (field, value) in [("method", &request.method), ("path", &request.path), ("host", &request.host)] {
                if let Some(value) = value {
                    check_expression(&format!("{at}.{field}"), value)?;
                }
            }
            for (k, header) in request.headers.iter().flatten().enumerate() {
                crate::policy::parse_header_match(header).map_err(|reason| invalid(&format!("{at}.headers[{k}]"), header, reason))?;
            }
        }
    }
    Ok(())
}

/// A regular expression the proxy can compile, with a bound on its compiled size.
fn check_expression(at: &str, value: &str) -> Result<(), FieldError> {
    regex::RegexBuilder::new(value).size_limit(crate::policy::HTTP_REGEX_SIZE_LIMIT).build().map(|_| ()).map_err(|e| {
        invalid(at, value, format!("must be a valid regular expression: {}", e.to_string().lines().last().unwrap_or("invalid")))
    })
}

fn check_sluice_rule(at: &str, rule: RuleView<'_>) -> Result<(), FieldError> {
    let (field, selectors) = rule.endpoints;
    for (i, selector) in selectors.into_iter().flatten().enumerate() {
        check_selector(&format!("{at}.{field}[{i}]"), selector, Keys::Identity)?;
    }
    let (field, cidrs) = rule.cidr;
    for (i, value) in cidrs.into_iter().flatten().enumerate() {
        cidr(&format!("{at}.{field}[{i}]"), value)?;
    }
    let (field, sets) = rule.cidr_set;
    for (i, CidrRule { cidr: value, except }) in sets.into_iter().flatten().enumerate() {
        let at = format!("{at}.{field}[{i}]");
        if value.is_empty() {
            return Err(FieldError::Missing(format!("{at}.cidr")));
        }
        check_cidr_except(&at, value, except.as_deref().unwrap_or_default())?;
    }
    for (i, port_rule) in rule.to_ports.into_iter().flatten().enumerate() {
        let at = format!("{at}.toPorts[{i}].ports");
        let ports = port_rule.ports.as_deref().unwrap_or_default();
        if ports.is_empty() {
            return Err(FieldError::Missing(at));
        }
        for (j, port) in ports.iter().enumerate() {
            let at = |field: &str| format!("{at}[{j}].{field}");
            let first = match port.port.as_deref() {
                None => None,
                Some(text) if text.parse::<i64>().is_ok() || text.starts_with(|c: char| c.is_ascii_digit()) => {
                    let number =
                        text.parse::<i64>().map_err(|_| invalid(&at("port"), text, "must be a port number or a port name".to_owned()))?;
                    port_range(&at("port"), number, 0)?;
                    Some(number)
                }
                Some(name) => {
                    validate_iana_svc_name(name).map_err(|reason| invalid(&at("port"), name, reason))?;
                    if port.end_port.is_some() {
                        return Err(reject(at("endPort"), format!("may not be specified with a named port ({name:?})")));
                    }
                    None
                }
            };
            let Some(end) = port.end_port else { continue };
            match first {
                None | Some(0) => {
                    return Err(reject(at("endPort"), "may not be specified without a port number (absent or 0 means every port)"))
                }
                Some(first) if i64::from(end) < first => {
                    return Err(reject(at("endPort"), format!("{end} is invalid: must be greater than or equal to port ({first})")));
                }
                Some(_) => port_range(&at("endPort"), i64::from(end), 1)?,
            }
        }
    }
    for (i, icmp) in rule.icmps.into_iter().flatten().enumerate() {
        let at = format!("{at}.icmps[{i}].fields");
        let fields = icmp.fields.as_deref().unwrap_or_default();
        if fields.is_empty() {
            return Err(FieldError::Missing(at));
        }
        for (j, field) in fields.iter().enumerate() {
            let at = format!("{at}[{j}].type");
            match field.icmp_type {
                None => return Err(FieldError::Missing(at)),
                Some(type_) if !(0..=255).contains(&type_) => {
                    return Err(reject(at, format!("{type_} is invalid: must be between 0 and 255, inclusive")));
                }
                Some(_) => {}
            }
        }
    }
    Ok(())
}
