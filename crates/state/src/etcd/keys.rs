//! The key layout under the prefix and the one place that turns keys and values into [`Store`]
//! entries and back. Every other etcd module builds its keys here, so the layout is written once:
//!
//! ```text
//! <prefix>/objects/<kind>/<store key>      Kubernetes-shaped objects (JSON), written by `update`
//! <prefix>/objects-written                 bumped by every `update`, so deletions conflict too
//! <prefix>/nodes/<name>                    NodeRecord, bound to the node's lease
//! <prefix>/endpoints/<ns>/<name>           EndpointRecord, bound to the publishing node's lease
//! <prefix>/endpointslices/<ns>/<name>      SluiceEndpointSlice, bound to the writing node's lease
//! <prefix>/identities/id/<number>          IdentityRecord (plus `unusedSince` while unreferenced)
//! <prefix>/identities/labels/<sha256 hex>  the number, as text, of that canonical label string
//! <prefix>/identities/refs/<number>/<node> a node's hold on an identity, bound to its lease
//! <prefix>/ipam/<v4|v6>/<cidr, / as _>     a node's pod CIDR: {"node", "orphanedSince"?}
//! ```

use ipnet::IpNet;
use serde::Serialize;
use sha2::{Digest, Sha256};
use sluice_model::SluiceEndpointSlice;

use super::EtcdError;
use crate::cluster::{EndpointRecord, IdentityRecord, NodeRecord};
use crate::Store;

/// The kinds of Kubernetes-shaped objects, one per [`Store`] map.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ObjectKind {
    Namespaces,
    Pods,
    Services,
    EndpointSlices,
    NetworkPolicies,
    SluiceNetworkPolicies,
    SluiceClusterwideNetworkPolicies,
}

impl ObjectKind {
    pub const ALL: [ObjectKind; 7] = [
        Self::Namespaces,
        Self::Pods,
        Self::Services,
        Self::EndpointSlices,
        Self::NetworkPolicies,
        Self::SluiceNetworkPolicies,
        Self::SluiceClusterwideNetworkPolicies,
    ];

    /// The kind's segment in a key.
    pub fn dir(self) -> &'static str {
        match self {
            Self::Namespaces => "namespaces",
            Self::Pods => "pods",
            Self::Services => "services",
            Self::EndpointSlices => "endpointslices",
            Self::NetworkPolicies => "networkpolicies",
            Self::SluiceNetworkPolicies => "sluicenetworkpolicies",
            Self::SluiceClusterwideNetworkPolicies => "sluiceclusterwidenetworkpolicies",
        }
    }

    fn from_dir(dir: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.dir() == dir)
    }
}

/// An address family of pod CIDRs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    pub fn of(net: &IpNet) -> Self {
        match net {
            IpNet::V4(_) => Self::V4,
            IpNet::V6(_) => Self::V6,
        }
    }

    fn dir(self) -> &'static str {
        match self {
            Self::V4 => "v4",
            Self::V6 => "v6",
        }
    }
}

/// What a key under the prefix names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Key<'a> {
    /// An object and its key in the kind's [`Store`] map.
    Object(ObjectKind, &'a str),
    /// The marker every `update` rewrites.
    ObjectsWritten,
    Node(&'a str),
    /// An endpoint by `namespace/name`.
    Endpoint(&'a str),
    /// A slice of endpoints by `namespace/name`.
    EndpointSlice(&'a str),
    Identity(u32),
    /// The number of a label set, by the hash of its canonical string.
    IdentityLabels(&'a str),
    IdentityRef(u32, &'a str),
    Ipam(Family, IpNet),
}

/// The key layout under one prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keys {
    /// The prefix with exactly one trailing `/`.
    root: String,
}

// === impl Keys ===

impl Keys {
    pub fn new(prefix: &str) -> Self {
        Self { root: format!("{}/", prefix.trim_end_matches('/')) }
    }

    /// Every Sluice key starts with this (it ends with `/`).
    pub fn root(&self) -> &str {
        &self.root
    }

    pub fn objects(&self) -> String {
        format!("{}objects/", self.root)
    }

    pub fn objects_written(&self) -> String {
        format!("{}objects-written", self.root)
    }

    pub fn object(&self, kind: ObjectKind, key: &str) -> String {
        format!("{}objects/{}/{key}", self.root, kind.dir())
    }

    pub fn nodes(&self) -> String {
        format!("{}nodes/", self.root)
    }

    pub fn node(&self, name: &str) -> String {
        format!("{}nodes/{name}", self.root)
    }

    pub fn endpoints(&self) -> String {
        format!("{}endpoints/", self.root)
    }

    pub fn endpoint(&self, namespace: &str, name: &str) -> String {
        format!("{}endpoints/{namespace}/{name}", self.root)
    }

    pub fn endpoint_slices(&self) -> String {
        format!("{}endpointslices/", self.root)
    }

    pub fn endpoint_slice(&self, namespace: &str, name: &str) -> String {
        format!("{}endpointslices/{namespace}/{name}", self.root)
    }

    pub fn identities(&self) -> String {
        format!("{}identities/", self.root)
    }

    pub fn identity_ids(&self) -> String {
        format!("{}identities/id/", self.root)
    }

    pub fn identity(&self, id: u32) -> String {
        format!("{}identities/id/{id}", self.root)
    }

    /// The key of a canonical label string: its SHA-256 in hex, so any label text fits a key.
    pub fn identity_labels(&self, canonical: &str) -> String {
        format!("{}identities/labels/{}", self.root, label_hash(canonical))
    }

    /// The folder of the nodes' holds on `id` (ends with `/`).
    pub fn identity_refs(&self, id: u32) -> String {
        format!("{}identities/refs/{id}/", self.root)
    }

    pub fn identity_ref(&self, id: u32, node: &str) -> String {
        format!("{}identities/refs/{id}/{node}", self.root)
    }

    pub fn ipam(&self) -> String {
        format!("{}ipam/", self.root)
    }

    pub fn ipam_family(&self, family: Family) -> String {
        format!("{}ipam/{}/", self.root, family.dir())
    }

    pub fn ipam_cidr(&self, cidr: &IpNet) -> String {
        format!("{}{}", self.ipam_family(Family::of(cidr)), cidr.to_string().replace('/', "_"))
    }

    /// What `key` names; `None` for keys outside the prefix or of no known shape.
    pub fn parse<'a>(&self, key: &'a str) -> Option<Key<'a>> {
        let rest = key.strip_prefix(self.root.as_str())?;
        if rest == "objects-written" {
            return Some(Key::ObjectsWritten);
        }
        let (dir, rest) = rest.split_once('/')?;
        match dir {
            "objects" => {
                let (kind, key) = rest.split_once('/')?;
                let kind = ObjectKind::from_dir(kind)?;
                (!key.is_empty()).then_some(Key::Object(kind, key))
            }
            "nodes" => (!rest.is_empty() && !rest.contains('/')).then_some(Key::Node(rest)),
            "endpoints" => {
                let (ns, name) = rest.split_once('/')?;
                (!ns.is_empty() && !name.is_empty() && !name.contains('/')).then_some(Key::Endpoint(rest))
            }
            "endpointslices" => {
                let (ns, name) = rest.split_once('/')?;
                (!ns.is_empty() && !name.is_empty() && !name.contains('/')).then_some(Key::EndpointSlice(rest))
            }
            "identities" => {
                let (sub, rest) = rest.split_once('/')?;
                match sub {
                    "id" => parse_id(rest).map(Key::Identity),
                    "labels" => (!rest.is_empty()).then_some(Key::IdentityLabels(rest)),
                    "refs" => {
                        let (id, node) = rest.split_once('/')?;
                        let id = parse_id(id)?;
                        (!node.is_empty()).then_some(Key::IdentityRef(id, node))
                    }
                    _ => None,
                }
            }
            "ipam" => {
                let (family, cidr) = rest.split_once('/')?;
                let cidr: IpNet = cidr.replacen('_', "/", 1).parse().ok()?;
                let family = match family {
                    "v4" => Family::V4,
                    "v6" => Family::V6,
                    _ => return None,
                };
                (Family::of(&cidr) == family).then_some(Key::Ipam(family, cidr))
            }
            _ => None,
        }
    }
}

fn parse_id(text: &str) -> Option<u32> {
    // Only the canonical spelling, so one number has one key.
    let id: u32 = text.parse().ok()?;
    (id.to_string() == text).then_some(id)
}

/// The hash that names a label set's key.
pub fn label_hash(canonical: &str) -> String {
    hex::encode(Sha256::digest(canonical.as_bytes()))
}

/// The end of the range of keys that start with `prefix` (etcd's "prefix end").
pub fn prefix_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    // Every byte was 0xff: the range runs to the end of the keyspace.
    vec![0]
}

// === Store entries ===

/// Puts the entry `key` names into `store`. Keys that carry no [`Store`] entry (label hashes,
/// refs, IPAM) and unknown keys leave it unchanged; a value that does not decode is an error and
/// changes nothing.
pub fn apply_put(keys: &Keys, store: &mut Store, key: &[u8], value: &[u8]) -> Result<(), EtcdError> {
    let Some((text, parsed)) = parse_bytes(keys, key) else {
        return Ok(());
    };
    let decode = |source| EtcdError::Decode { key: text.to_string(), source };
    match parsed {
        Key::Object(kind, k) => {
            let k = k.to_string();
            match kind {
                ObjectKind::Namespaces => drop(store.namespaces.insert(k, serde_json::from_slice(value).map_err(decode)?)),
                ObjectKind::Pods => drop(store.pods.insert(k, serde_json::from_slice(value).map_err(decode)?)),
                ObjectKind::Services => store.put_service(k, serde_json::from_slice(value).map_err(decode)?),
                ObjectKind::EndpointSlices => store.put_endpoint_slice(k, serde_json::from_slice(value).map_err(decode)?),
                ObjectKind::NetworkPolicies => drop(store.network_policies.insert(k, serde_json::from_slice(value).map_err(decode)?)),
                ObjectKind::SluiceNetworkPolicies => drop(store.sluice_policies.insert(k, serde_json::from_slice(value).map_err(decode)?)),
                ObjectKind::SluiceClusterwideNetworkPolicies => {
                    drop(store.clusterwide_policies.insert(k, serde_json::from_slice(value).map_err(decode)?))
                }
            }
        }
        Key::Node(name) => {
            let record: NodeRecord = serde_json::from_slice(value).map_err(decode)?;
            store.nodes.insert(name.to_string(), record);
        }
        Key::Endpoint(k) => {
            let record: EndpointRecord = serde_json::from_slice(value).map_err(decode)?;
            store.endpoints.insert(k.to_string(), record);
        }
        Key::EndpointSlice(k) => {
            let slice: SluiceEndpointSlice = serde_json::from_slice(value).map_err(decode)?;
            store.published_slices.insert(k.to_string(), slice);
        }
        Key::Identity(id) => {
            let record: IdentityRecord = serde_json::from_slice(value).map_err(decode)?;
            store.identities.insert(id, record);
        }
        Key::ObjectsWritten | Key::IdentityLabels(_) | Key::IdentityRef(..) | Key::Ipam(..) => {}
    }
    Ok(())
}

/// Removes the entry `key` names from `store`, if any.
pub fn apply_delete(keys: &Keys, store: &mut Store, key: &[u8]) {
    let Some((_, parsed)) = parse_bytes(keys, key) else {
        return;
    };
    match parsed {
        Key::Object(kind, k) => match kind {
            ObjectKind::Namespaces => store.namespaces.remove(k).map(drop),
            ObjectKind::Pods => store.pods.remove(k).map(drop),
            ObjectKind::Services => {
                store.remove_service(k);
                Some(())
            }
            ObjectKind::EndpointSlices => {
                store.remove_endpoint_slice(k);
                Some(())
            }
            ObjectKind::NetworkPolicies => store.network_policies.remove(k).map(drop),
            ObjectKind::SluiceNetworkPolicies => store.sluice_policies.remove(k).map(drop),
            ObjectKind::SluiceClusterwideNetworkPolicies => store.clusterwide_policies.remove(k).map(drop),
        },
        Key::Node(name) => store.nodes.remove(name).map(drop),
        Key::Endpoint(k) => store.endpoints.remove(k).map(drop),
        Key::EndpointSlice(k) => store.published_slices.remove(k).map(drop),
        Key::Identity(id) => store.identities.remove(&id).map(drop),
        Key::ObjectsWritten | Key::IdentityLabels(_) | Key::IdentityRef(..) | Key::Ipam(..) => None,
    };
}

fn parse_bytes<'a>(keys: &Keys, key: &'a [u8]) -> Option<(&'a str, Key<'a>)> {
    let Ok(text) = std::str::from_utf8(key) else {
        tracing::debug!(key = %String::from_utf8_lossy(key), "ignoring an etcd key that is not UTF-8");
        return None;
    };
    match keys.parse(text) {
        Some(parsed) => Some((text, parsed)),
        None => {
            tracing::debug!(key = text, "ignoring an etcd key of no known shape");
            None
        }
    }
}

/// One write of an update: a key and its new value, `None` to delete it.
pub type ObjectWrite = (String, Option<Vec<u8>>);

/// The writes that turn `old`'s objects into `new`'s: a put per added or changed object, a
/// delete per removed one. Versions of one store share structure, so this costs what changed.
pub fn object_changes(keys: &Keys, old: &Store, new: &Store) -> Result<Vec<ObjectWrite>, EtcdError> {
    let mut out = Vec::new();
    diff_kind(keys, ObjectKind::Namespaces, &old.namespaces, &new.namespaces, &mut out)?;
    diff_kind(keys, ObjectKind::Pods, &old.pods, &new.pods, &mut out)?;
    diff_kind(keys, ObjectKind::Services, &old.services, &new.services, &mut out)?;
    diff_kind(keys, ObjectKind::EndpointSlices, &old.endpoint_slices, &new.endpoint_slices, &mut out)?;
    diff_kind(keys, ObjectKind::NetworkPolicies, &old.network_policies, &new.network_policies, &mut out)?;
    diff_kind(keys, ObjectKind::SluiceNetworkPolicies, &old.sluice_policies, &new.sluice_policies, &mut out)?;
    diff_kind(keys, ObjectKind::SluiceClusterwideNetworkPolicies, &old.clusterwide_policies, &new.clusterwide_policies, &mut out)?;
    Ok(out)
}

fn diff_kind<T: Serialize + Clone + PartialEq>(
    keys: &Keys,
    kind: ObjectKind,
    old: &crate::ObjectMap<T>,
    new: &crate::ObjectMap<T>,
    out: &mut Vec<ObjectWrite>,
) -> Result<(), EtcdError> {
    for item in old.diff(new) {
        match item {
            imbl::ordmap::DiffItem::Add(k, v) | imbl::ordmap::DiffItem::Update { new: (k, v), .. } => {
                let key = keys.object(kind, k);
                let value = encode(&key, v)?;
                out.push((key, Some(value)));
            }
            imbl::ordmap::DiffItem::Remove(k, _) => out.push((keys.object(kind, k), None)),
        }
    }
    Ok(())
}

/// Encodes a value for `key`.
pub(crate) fn encode<T: Serialize>(key: &str, value: &T) -> Result<Vec<u8>, EtcdError> {
    serde_json::to_vec(value).map_err(|source| EtcdError::Encode { key: key.to_string(), source })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_key_parses_back_to_what_built_it() {
        let keys = Keys::new("/sluice/v1/");
        assert_eq!(keys.root(), "/sluice/v1/", "one trailing slash");
        let cidr: IpNet = "198.19.3.0/24".parse().unwrap();
        let v6: IpNet = "fd00:198:19:1::/64".parse().unwrap();
        let cases = [
            (keys.object(ObjectKind::Pods, "ns/web"), Key::Object(ObjectKind::Pods, "ns/web")),
            (keys.object(ObjectKind::Namespaces, "ns"), Key::Object(ObjectKind::Namespaces, "ns")),
            (keys.objects_written(), Key::ObjectsWritten),
            (keys.node("n1"), Key::Node("n1")),
            (keys.endpoint("ns", "p"), Key::Endpoint("ns/p")),
            (keys.endpoint_slice("ns", "n1-300-0"), Key::EndpointSlice("ns/n1-300-0")),
            (keys.identity(300), Key::Identity(300)),
            (keys.identity_ref(300, "n1"), Key::IdentityRef(300, "n1")),
            (keys.ipam_cidr(&cidr), Key::Ipam(Family::V4, cidr)),
            (keys.ipam_cidr(&v6), Key::Ipam(Family::V6, v6)),
        ];
        for (key, want) in cases {
            assert_eq!(keys.parse(&key), Some(want.clone()), "{key} names {want:?}");
        }
        assert_eq!(keys.ipam_cidr(&cidr), "/sluice/v1/ipam/v4/198.19.3.0_24");
        let labels = keys.identity_labels("a=b");
        assert!(matches!(keys.parse(&labels), Some(Key::IdentityLabels(h)) if h.len() == 64), "{labels}");
    }

    #[test]
    fn odd_keys_are_not_entries() {
        let keys = Keys::new("/sluice/v1");
        for key in [
            "/other/objects/pods/a/b",
            "/sluice/v1/objects/widgets/a",
            "/sluice/v1/objects/pods/",
            "/sluice/v1/identities/id/007",
            "/sluice/v1/ipam/v6/198.19.0.0_24",
            "/sluice/v1/nodes/a/b",
            "/sluice/v1/x",
        ] {
            assert_eq!(keys.parse(key), None, "{key} is no entry");
        }
        let mut store = Store::default();
        apply_put(&keys, &mut store, b"/sluice/v1/unknown/x", b"not json").unwrap();
        assert!(store.namespaces.is_empty(), "unknown keys change nothing");
    }

    #[test]
    fn put_and_delete_reach_the_right_map() {
        let keys = Keys::new("/p");
        let mut store = Store::default();
        apply_put(&keys, &mut store, b"/p/objects/namespaces/x", br#"{"metadata":{"name":"x"}}"#).unwrap();
        apply_put(&keys, &mut store, b"/p/identities/id/256", br#"{"id":256,"labels":{"a":"b"},"unusedSince":5}"#).unwrap();
        assert!(store.namespaces.contains_key("x"), "namespace decoded");
        assert_eq!(store.identities.get(&256).map(|i| i.labels.len()), Some(1), "identity decoded despite the mark");
        let err = apply_put(&keys, &mut store, b"/p/nodes/n1", b"{").unwrap_err().to_string();
        assert!(err.contains("/p/nodes/n1"), "the error names the key: {err}");
        apply_delete(&keys, &mut store, b"/p/objects/namespaces/x");
        assert!(store.namespaces.is_empty(), "namespace removed");
        let slice =
            br#"{"name":"n1-300-0","namespace":"x","identity":300,"node":"n1","endpoints":[{"name":"web","addresses":["198.19.1.5"]}]}"#;
        apply_put(&keys, &mut store, b"/p/endpointslices/x/n1-300-0", slice).unwrap();
        let published: Vec<_> = store.published_endpoints().map(|e| (e.namespace, e.name, e.node, e.identity)).collect();
        assert_eq!(published, [("x".into(), "web".into(), "n1".into(), 300)], "a slice's endpoints read as records");
        apply_delete(&keys, &mut store, b"/p/endpointslices/x/n1-300-0");
        assert!(store.published_slices.is_empty(), "slice removed");
    }

    #[test]
    fn prefix_end_is_the_next_key() {
        assert_eq!(prefix_end("/a/"), b"/a0".to_vec());
        assert_eq!(prefix_end("a\u{7f}"), b"a\x80".to_vec());
    }
}
