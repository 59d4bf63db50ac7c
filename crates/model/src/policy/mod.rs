//! Sluice's own policy kinds, `SluiceNetworkPolicy` (namespaced) and
//! `SluiceClusterwideNetworkPolicy` (cluster-scoped), apiVersion `sluice.dev/v1`. Their spec is
//! Cilium-shaped: an endpoint selector over identity labels, allow and deny rules per direction
//! with endpoints, entities, CIDRs, ports and ICMP types. What the API server would enforce on
//! them is in `manifest::policy_rules`; the engine lowers them in `sluice_policy::sluice`.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::{ClusterResourceScope, NamespaceResourceScope};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The API group of Sluice's kinds.
pub const GROUP: &str = "sluice.dev";
/// The apiVersion of Sluice's kinds.
pub const API_VERSION: &str = "sluice.dev/v1";

/// The spec both policy kinds share. Every list is optional rather than defaulted, so that an
/// object serializes back to exactly the fields it was read with (what the unknown-field check
/// compares against).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PolicySpec {
    /// The endpoints the policy applies to, over identity labels (`app` and `k8s:app` alike).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint_selector: Option<LabelSelector>,
    /// `enforce` (the default) or `audit`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enforcement_mode: Option<EnforcementMode>,
    /// Whether selection denies what no rule allows, per direction; each defaults to true
    /// when the policy has rules (allow or deny) in that direction.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enable_default_deny: Option<DefaultDeny>,
    /// Traffic to allow into the selected endpoints.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress: Option<Vec<IngressRule>>,
    /// Traffic to drop on its way into the selected endpoints, whatever allows it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress_deny: Option<Vec<IngressRule>>,
    /// Traffic to allow out of the selected endpoints.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress: Option<Vec<EgressRule>>,
    /// Traffic to drop on its way out of the selected endpoints, whatever allows it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress_deny: Option<Vec<EgressRule>>,
}

/// What a policy does with the traffic its rules do not allow.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "lowercase")]
pub enum EnforcementMode {
    /// Drop it.
    #[default]
    Enforce,
    /// Let it pass and report what would have been dropped.
    Audit,
}

/// `enableDefaultDeny`: per direction, `None` means "true when the direction has rules".
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DefaultDeny {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress: Option<bool>,
}

/// One ingress rule: traffic from any of its peers on any of its ports. Several peer fields
/// are a union; a rule with ports but no peer field speaks of every peer.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IngressRule {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_endpoints: Option<Vec<LabelSelector>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_entities: Option<Vec<Entity>>,
    #[serde(default, rename = "fromCIDR", skip_serializing_if = "Option::is_none")]
    pub from_cidr: Option<Vec<String>>,
    #[serde(default, rename = "fromCIDRSet", skip_serializing_if = "Option::is_none")]
    pub from_cidr_set: Option<Vec<CidrRule>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to_ports: Option<Vec<PortRule>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub icmps: Option<Vec<IcmpRule>>,
}

/// One egress rule: traffic to any of its peers on any of its ports.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EgressRule {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to_endpoints: Option<Vec<LabelSelector>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to_entities: Option<Vec<Entity>>,
    #[serde(default, rename = "toCIDR", skip_serializing_if = "Option::is_none")]
    pub to_cidr: Option<Vec<String>>,
    #[serde(default, rename = "toCIDRSet", skip_serializing_if = "Option::is_none")]
    pub to_cidr_set: Option<Vec<CidrRule>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to_ports: Option<Vec<PortRule>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub icmps: Option<Vec<IcmpRule>>,
}

/// A reserved group of peers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "kebab-case")]
pub enum Entity {
    /// The local node.
    Host,
    /// Every other node of the cluster.
    RemoteNode,
    /// Everything outside the cluster.
    World,
    /// Every pod and node of the cluster.
    Cluster,
    /// Anything.
    All,
}

/// `fromCIDRSet`/`toCIDRSet` entry: addresses in `cidr` but in none of `except`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CidrRule {
    pub cidr: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub except: Option<Vec<String>>,
}

/// `toPorts` entry.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PortRule {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ports: Option<Vec<PortProtocol>>,
    /// Layer-7 rules: only what they allow passes on these ports (the node's proxy answers
    /// anything else with `403 Forbidden`). Allow rules of enforcing policies only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rules: Option<L7Rules>,
}

/// `toPorts[].rules`: the layer-7 protocol rules of a port.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct L7Rules {
    /// HTTP requests allowed; a request matching any entry passes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<Vec<HttpRule>>,
}

/// One allowed HTTP request shape; every field present must match.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpRule {
    /// Regular expression over the method, matched whole (`GET|HEAD`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    /// Regular expression over the path without its query, matched whole (`/api/.*`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Regular expression over the requested host without its port, matched whole.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// Headers the request must carry: `Name` (present) or `Name: value` (with that value).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub headers: Option<Vec<String>>,
}

/// A port, a port range or a named port, of one protocol.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PortProtocol {
    /// A number (`"0"` or absent: every port) or a named container port. Written as a string
    /// (as Cilium does); a bare number is read too.
    #[serde(default, deserialize_with = "string_or_number", skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "schema", schemars(schema_with = "int_or_string"))]
    pub port: Option<String>,
    /// Last port of a range starting at `port`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "schema", schemars(range(min = 1, max = 65535)))]
    pub end_port: Option<i32>,
    /// Defaults to `ANY`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<PortProtocolName>,
}

/// Layer 4 protocol of a port.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "UPPERCASE")]
pub enum PortProtocolName {
    Tcp,
    Udp,
    Sctp,
    /// TCP, UDP and SCTP alike.
    #[default]
    Any,
}

/// `icmps` entry.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IcmpRule {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fields: Option<Vec<IcmpField>>,
}

/// One ICMP or ICMPv6 type.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IcmpField {
    /// 0 to 255.
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "schema", schemars(range(min = 0, max = 255)))]
    pub icmp_type: Option<i64>,
    /// Defaults to `IPv4`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub family: Option<IcmpFamily>,
}

/// ICMP (`IPv4`) or ICMPv6 (`IPv6`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub enum IcmpFamily {
    #[default]
    IPv4,
    IPv6,
}

/// Peers and ports of one rule, with the field names of its direction, so that validation and
/// lowering read ingress and egress rules alike.
#[derive(Clone, Copy, Debug)]
pub struct RuleView<'a> {
    pub endpoints: (&'static str, Option<&'a [LabelSelector]>),
    pub entities: (&'static str, Option<&'a [Entity]>),
    pub cidr: (&'static str, Option<&'a [String]>),
    pub cidr_set: (&'static str, Option<&'a [CidrRule]>),
    pub to_ports: Option<&'a [PortRule]>,
    pub icmps: Option<&'a [IcmpRule]>,
}

// === impl RuleView ===

impl RuleView<'_> {
    /// True when the rule names no peer at all (absent and empty lists alike): it then speaks
    /// of every peer.
    pub fn has_no_peer_field(&self) -> bool {
        let lengths = [
            self.endpoints.1.map(<[_]>::len),
            self.entities.1.map(<[_]>::len),
            self.cidr.1.map(<[_]>::len),
            self.cidr_set.1.map(<[_]>::len),
        ];
        lengths.iter().all(|n| n.unwrap_or(0) == 0)
    }
}

impl IngressRule {
    pub fn view(&self) -> RuleView<'_> {
        RuleView {
            endpoints: ("fromEndpoints", self.from_endpoints.as_deref()),
            entities: ("fromEntities", self.from_entities.as_deref()),
            cidr: ("fromCIDR", self.from_cidr.as_deref()),
            cidr_set: ("fromCIDRSet", self.from_cidr_set.as_deref()),
            to_ports: self.to_ports.as_deref(),
            icmps: self.icmps.as_deref(),
        }
    }
}

impl EgressRule {
    pub fn view(&self) -> RuleView<'_> {
        RuleView {
            endpoints: ("toEndpoints", self.to_endpoints.as_deref()),
            entities: ("toEntities", self.to_entities.as_deref()),
            cidr: ("toCIDR", self.to_cidr.as_deref()),
            cidr_set: ("toCIDRSet", self.to_cidr_set.as_deref()),
            to_ports: self.to_ports.as_deref(),
            icmps: self.icmps.as_deref(),
        }
    }
}

impl PolicySpec {
    /// `(field name, rules, deny?)` of each ingress list, in spec order.
    pub fn ingress_lists(&self) -> [(&'static str, &[IngressRule], bool); 2] {
        [
            ("ingress", self.ingress.as_deref().unwrap_or_default(), false),
            ("ingressDeny", self.ingress_deny.as_deref().unwrap_or_default(), true),
        ]
    }

    /// `(field name, rules, deny?)` of each egress list, in spec order.
    pub fn egress_lists(&self) -> [(&'static str, &[EgressRule], bool); 2] {
        [
            ("egress", self.egress.as_deref().unwrap_or_default(), false),
            ("egressDeny", self.egress_deny.as_deref().unwrap_or_default(), true),
        ]
    }
}

/// The compiled-size bound of a regular expression in an HTTP rule, checked when a policy is
/// applied and again by the proxy.
pub const HTTP_REGEX_SIZE_LIMIT: usize = 1 << 20;

/// `Name` or `Name: value` of an HTTP rule's `headers`: the name (an HTTP token) and the value,
/// if any, with the blanks around it removed.
pub fn parse_header_match(text: &str) -> Result<(String, Option<String>), String> {
    let (name, value) = match text.split_once(':') {
        Some((name, value)) => (name.trim(), Some(value.trim().to_owned())),
        None => (text.trim(), None),
    };
    let token = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c);
    if name.is_empty() || !name.chars().all(token) {
        return Err("must be a header name (an HTTP token), optionally followed by `: value`".to_owned());
    }
    if value.as_deref().is_some_and(|v| v.chars().any(|c| c.is_control())) {
        return Err("a header value may not contain control characters".to_owned());
    }
    Ok((name.to_owned(), value))
}

fn string_or_number<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Port {
        Number(i64),
        Text(String),
    }
    Ok(Option::<Port>::deserialize(deserializer)?.map(|port| match port {
        Port::Number(n) => n.to_string(),
        Port::Text(s) => s,
    }))
}

/// `port`'s schema: a number or a string, as the API server's `IntOrString`.
#[cfg(feature = "schema")]
fn int_or_string(_: &mut schemars::gen::SchemaGenerator) -> schemars::schema::Schema {
    let mut schema = schemars::schema::SchemaObject::default();
    schema.extensions.insert("x-kubernetes-int-or-string".into(), serde_json::Value::Bool(true));
    schema.into()
}

/// The wire form of both kinds: `apiVersion` and `kind` are checked when read and written
/// back from the type, as k8s-openapi does for Kubernetes' own kinds.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct WireOut<'a> {
    api_version: &'static str,
    kind: &'static str,
    metadata: &'a ObjectMeta,
    #[serde(skip_serializing_if = "Option::is_none")]
    spec: &'a Option<PolicySpec>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct WireIn {
    api_version: String,
    kind: String,
    #[serde(default)]
    metadata: ObjectMeta,
    #[serde(default)]
    spec: Option<PolicySpec>,
}

/// Defines a policy kind: the struct, k8s-openapi's traits and serde through the wire form.
macro_rules! policy_kind {
    ($(#[$doc:meta])* $name:ident, $kind:literal, $list:literal, $plural:literal, $scope:ty) => {
        $(#[$doc])*
        #[derive(Clone, Debug, Default, PartialEq)]
        pub struct $name {
            pub metadata: ObjectMeta,
            /// Required; optional here so that its absence is reported as a missing field.
            pub spec: Option<PolicySpec>,
        }

        impl k8s_openapi::Resource for $name {
            const API_VERSION: &'static str = API_VERSION;
            const GROUP: &'static str = GROUP;
            const KIND: &'static str = $kind;
            const VERSION: &'static str = "v1";
            const URL_PATH_SEGMENT: &'static str = $plural;
            type Scope = $scope;
        }

        impl k8s_openapi::ListableResource for $name {
            const LIST_KIND: &'static str = $list;
        }

        impl k8s_openapi::Metadata for $name {
            type Ty = ObjectMeta;

            fn metadata(&self) -> &ObjectMeta {
                &self.metadata
            }

            fn metadata_mut(&mut self) -> &mut ObjectMeta {
                &mut self.metadata
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                WireOut { api_version: API_VERSION, kind: $kind, metadata: &self.metadata, spec: &self.spec }.serialize(serializer)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let wire = WireIn::deserialize(deserializer)?;
                if wire.api_version != API_VERSION {
                    return Err(serde::de::Error::custom(format!("apiVersion: expected {API_VERSION:?}, found {:?}", wire.api_version)));
                }
                if wire.kind != $kind {
                    return Err(serde::de::Error::custom(format!("kind: expected {:?}, found {:?}", $kind, wire.kind)));
                }
                Ok($name { metadata: wire.metadata, spec: wire.spec })
            }
        }
    };
}

policy_kind! {
    /// Policy for the endpoints of one namespace; its endpoint selectors speak of that
    /// namespace unless they name `k8s:io.kubernetes.pod.namespace` themselves.
    SluiceNetworkPolicy, "SluiceNetworkPolicy", "SluiceNetworkPolicyList", "sluicenetworkpolicies", NamespaceResourceScope
}

policy_kind! {
    /// Policy for endpoints of any namespace (cluster-scoped); selectors are not restricted.
    SluiceClusterwideNetworkPolicy, "SluiceClusterwideNetworkPolicy", "SluiceClusterwideNetworkPolicyList", "sluiceclusterwidenetworkpolicies", ClusterResourceScope
}
