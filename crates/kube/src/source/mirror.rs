//! How each watched kind lands in the agent's [`Store`]: the key it is filed under, what of it
//! is kept, and whether a write changed anything (so that a relist after a reconnect, which
//! hands back every object, changes nothing that did not change).
//!
//! What is kept: Services and EndpointSlices as the compact views the service tables read;
//! pods of this node whole, pods of other nodes reduced to what policy reads (labels, node,
//! phase, addresses); Sluice's own kinds as the records the rest of the agent knows from etcd.

use k8s_openapi::api::core::v1::{Namespace, Pod, PodSpec, PodStatus, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::ResourceExt;
use sluice_model::policy::{SluiceClusterwideNetworkPolicy, SluiceNetworkPolicy};
use sluice_services::view::{ServiceView, SliceView};
use sluice_state::{ObjectMap, Store};

use crate::crds::{ConvertError, SluiceEndpoint, SluiceEndpointSlice, SluiceIdentity, SluiceNode};

/// A kind the source mirrors into the store.
pub trait Mirror: kube::Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + Sync + 'static {
    /// The kind's plural, for logs and health.
    const PLURAL: &'static str;

    /// The store key of `obj`.
    fn key(obj: &Self) -> String {
        match obj.namespace() {
            Some(ns) => Store::key(&ns, &obj.name_any()),
            None => obj.name_any(),
        }
    }

    /// Files `obj` (as `node` keeps it); true when the store changed.
    fn put(store: &mut Store, obj: Self, node: &str) -> Result<bool, ConvertError>;

    /// Removes the object under `key`; true when there was one.
    fn remove(store: &mut Store, key: &str) -> bool;

    /// Every key of the kind in the store.
    fn keys(store: &Store) -> Vec<String>;
}

/// Drops what changes on every write without meaning anything to the agent.
fn trim(meta: &mut ObjectMeta) {
    meta.managed_fields = None;
}

fn put_value<T: Clone + PartialEq>(map: &mut ObjectMap<T>, key: String, value: T) -> bool {
    if map.get(&key) == Some(&value) {
        return false;
    }
    map.insert(key, value);
    true
}

macro_rules! whole {
    ($ty:ty, $plural:literal, $field:ident) => {
        impl Mirror for $ty {
            const PLURAL: &'static str = $plural;

            fn put(store: &mut Store, mut obj: Self, _node: &str) -> Result<bool, ConvertError> {
                trim(&mut obj.metadata);
                let key = Self::key(&obj);
                Ok(put_value(&mut store.$field, key, obj))
            }

            fn remove(store: &mut Store, key: &str) -> bool {
                store.$field.remove(key).is_some()
            }

            fn keys(store: &Store) -> Vec<String> {
                store.$field.keys().cloned().collect()
            }
        }
    };
}

whole!(Namespace, "namespaces", namespaces);
whole!(NetworkPolicy, "networkpolicies", network_policies);
whole!(SluiceNetworkPolicy, "sluicenetworkpolicies", sluice_policies);
whole!(SluiceClusterwideNetworkPolicy, "sluiceclusterwidenetworkpolicies", clusterwide_policies);

impl Mirror for Pod {
    const PLURAL: &'static str = "pods";

    fn put(store: &mut Store, mut pod: Self, node: &str) -> Result<bool, ConvertError> {
        trim(&mut pod.metadata);
        let own = pod.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(node);
        if !own {
            pod = compact_pod(pod);
        }
        let key = Self::key(&pod);
        Ok(put_value(&mut store.pods, key, pod))
    }

    fn remove(store: &mut Store, key: &str) -> bool {
        store.pods.remove(key).is_some()
    }

    fn keys(store: &Store) -> Vec<String> {
        store.pods.keys().cloned().collect()
    }
}

/// A pod of another node as policy reads it: who it is, where, and its addresses.
pub fn compact_pod(pod: Pod) -> Pod {
    let meta = pod.metadata;
    Pod {
        metadata: ObjectMeta {
            name: meta.name,
            namespace: meta.namespace,
            uid: meta.uid,
            labels: meta.labels,
            resource_version: meta.resource_version,
            deletion_timestamp: meta.deletion_timestamp,
            ..Default::default()
        },
        spec: pod.spec.map(|s| PodSpec { node_name: s.node_name, host_network: s.host_network, ..Default::default() }),
        status: pod.status.map(|s| PodStatus {
            phase: s.phase,
            pod_ip: s.pod_ip,
            pod_ips: s.pod_ips,
            host_ip: s.host_ip,
            ..Default::default()
        }),
    }
}

/// A kind the agent keeps as a compact view (`views.<field>`), put and removed through the
/// store's own methods, which keep either form.
macro_rules! view {
    ($ty:ty, $plural:literal, $view:ty, $field:ident, $put:ident, $remove:ident) => {
        impl Mirror for $ty {
            const PLURAL: &'static str = $plural;

            fn put(store: &mut Store, obj: Self, _node: &str) -> Result<bool, ConvertError> {
                let key = Self::key(&obj);
                let view = <$view>::of(&obj);
                let same = store.views.as_ref().and_then(|v| v.$field.get(&key)).is_some_and(|old| **old == view);
                if !same {
                    store.$put(key, obj);
                }
                Ok(!same)
            }

            fn remove(store: &mut Store, key: &str) -> bool {
                let had = store.views.as_ref().is_some_and(|v| v.$field.contains_key(key));
                store.$remove(key);
                had
            }

            fn keys(store: &Store) -> Vec<String> {
                store.views.as_ref().map(|v| v.$field.keys().cloned().collect()).unwrap_or_default()
            }
        }
    };
}

view!(Service, "services", ServiceView, services, put_service, remove_service);
view!(EndpointSlice, "endpointslices", SliceView, endpoint_slices, put_endpoint_slice, remove_endpoint_slice);

macro_rules! record {
    ($ty:ty, $plural:literal, $field:ident) => {
        impl Mirror for $ty {
            const PLURAL: &'static str = $plural;

            fn put(store: &mut Store, obj: Self, _node: &str) -> Result<bool, ConvertError> {
                let key = Self::key(&obj);
                let record = obj.to_record()?;
                Ok(put_value(&mut store.$field, key, record))
            }

            fn remove(store: &mut Store, key: &str) -> bool {
                store.$field.remove(key).is_some()
            }

            fn keys(store: &Store) -> Vec<String> {
                store.$field.keys().cloned().collect()
            }
        }
    };
}

record!(SluiceNode, "sluicenodes", nodes);
record!(SluiceEndpoint, "sluiceendpoints", endpoints);
record!(SluiceEndpointSlice, "sluiceendpointslices", published_slices);

impl Mirror for SluiceIdentity {
    const PLURAL: &'static str = "sluiceidentities";

    fn put(store: &mut Store, obj: Self, _node: &str) -> Result<bool, ConvertError> {
        let record = obj.to_record()?;
        if store.identities.get(&record.id) == Some(&record) {
            return Ok(false);
        }
        store.identities.insert(record.id, record);
        Ok(true)
    }

    fn remove(store: &mut Store, key: &str) -> bool {
        key.parse::<u32>().is_ok_and(|id| store.identities.remove(&id).is_some())
    }

    fn keys(store: &Store) -> Vec<String> {
        store.identities.keys().map(ToString::to_string).collect()
    }
}
