//! The Kubernetes-shaped objects Sluice works with. [`Object`] is one enum over the supported
//! kinds, all generated from the `kinds!` list below: adding a kind is one line there plus
//! its rules (an `impl Rules`) in `manifest::rules`.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Namespace, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::{ClusterResourceScope, Metadata, NamespaceResourceScope, Resource};
use serde::{Serialize, Serializer};

use crate::manifest::rules::{FieldError, Rules};
use crate::policy::{SluiceClusterwideNetworkPolicy, SluiceNetworkPolicy};

/// Maps k8s-openapi's scope marker types to "is this kind namespaced?".
trait Scope {
    const NAMESPACED: bool;
}

impl Scope for ClusterResourceScope {
    const NAMESPACED: bool = false;
}

impl Scope for NamespaceResourceScope {
    const NAMESPACED: bool = true;
}

/// Labels of an object that has none.
static NO_LABELS: BTreeMap<String, String> = BTreeMap::new();

/// Generates [`Object`], [`Kind`] and the per-kind dispatch from one list. Each type must
/// implement k8s-openapi's `Resource` and `Metadata<Ty = ObjectMeta>`, serde, and `Rules`.
macro_rules! kinds {
    ($($(#[$doc:meta])* $kind:ident($ty:ty),)+) => {
        /// A Kubernetes-shaped object of one of the supported kinds.
        // Objects are built once and then stored or borrowed, so the size gap between kinds
        // costs little; boxing would make every construction and match noisier.
        #[allow(clippy::large_enum_variant)]
        #[derive(Clone, Debug, PartialEq)]
        pub enum Object {
            $($(#[$doc])* $kind($ty),)+
        }

        /// The kinds an [`Object`] can be.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum Kind {
            $($(#[$doc])* $kind,)+
        }

        impl Kind {
            /// Every supported kind.
            pub const ALL: &'static [Kind] = &[$(Kind::$kind),+];

            /// The `kind` field value, e.g. `"Pod"`.
            pub fn as_str(self) -> &'static str {
                match self { $(Kind::$kind => <$ty as Resource>::KIND,)+ }
            }

            /// The `apiVersion` this kind is read with, e.g. `"v1"`.
            pub fn api_version(self) -> &'static str {
                match self { $(Kind::$kind => <$ty as Resource>::API_VERSION,)+ }
            }

            /// True when objects of this kind live in a namespace.
            pub fn is_namespaced(self) -> bool {
                match self { $(Kind::$kind => <<$ty as Resource>::Scope as Scope>::NAMESPACED,)+ }
            }

            pub(crate) fn check_name(self, name: &str) -> Result<(), String> {
                match self { $(Kind::$kind => <$ty as Rules>::check_name(name),)+ }
            }

            pub(crate) fn decode(
                self,
                value: serde_yaml_ng::Value,
            ) -> Result<Object, serde_path_to_error::Error<serde_yaml_ng::Error>> {
                match self {
                    $(Kind::$kind => serde_path_to_error::deserialize(value).map(Object::$kind),)+
                }
            }
        }

        impl Object {
            /// The object's kind.
            pub fn kind(&self) -> Kind {
                match self { $(Object::$kind(_) => Kind::$kind,)+ }
            }

            /// The object's metadata.
            pub fn metadata(&self) -> &ObjectMeta {
                match self { $(Object::$kind(o) => o.metadata(),)+ }
            }

            /// The object's metadata, for stores that set `uid`, `resourceVersion` and such.
            pub fn metadata_mut(&mut self) -> &mut ObjectMeta {
                match self { $(Object::$kind(o) => o.metadata_mut(),)+ }
            }

            pub(crate) fn check_spec(&self) -> Result<(), FieldError> {
                match self { $(Object::$kind(o) => o.check_spec(),)+ }
            }
        }

        impl Serialize for Object {
            /// Serializes as the Kubernetes object itself, `apiVersion` and `kind` included.
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                match self { $(Object::$kind(o) => o.serialize(serializer),)+ }
            }
        }
    };
}

kinds! {
    /// A namespace (`v1`, cluster-scoped).
    Namespace(Namespace),
    /// A pod (`v1`).
    Pod(Pod),
    /// A service (`v1`): ClusterIP, NodePort or LoadBalancer.
    Service(Service),
    /// An endpoint slice (`discovery.k8s.io/v1`): a service's backends, given by hand or
    /// derived from pods.
    EndpointSlice(EndpointSlice),
    /// A Kubernetes network policy (`networking.k8s.io/v1`).
    NetworkPolicy(NetworkPolicy),
    /// Sluice's namespaced policy (`sluice.dev/v1`): Cilium-shaped rules with deny rules,
    /// entities, CIDRs, ICMP and audit mode.
    SluiceNetworkPolicy(SluiceNetworkPolicy),
    /// Sluice's cluster-scoped policy (`sluice.dev/v1`), the same spec for every namespace.
    SluiceClusterwideNetworkPolicy(SluiceClusterwideNetworkPolicy),
}

// === impl Kind ===

impl Kind {
    /// The kind whose `kind` field value is `name`, if Sluice supports it.
    pub fn from_name(name: &str) -> Option<Kind> {
        Kind::ALL.iter().copied().find(|kind| kind.as_str() == name)
    }
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

// === impl Object ===

impl Object {
    /// `metadata.name`; never empty for an object from [`crate::parse_manifests`].
    pub fn name(&self) -> &str {
        self.metadata().name.as_deref().unwrap_or_default()
    }

    /// `metadata.namespace`: always set for namespaced kinds read by
    /// [`crate::parse_manifests`] (`"default"` when the manifest omits it), `None` otherwise.
    pub fn namespace(&self) -> Option<&str> {
        self.metadata().namespace.as_deref()
    }

    /// `metadata.labels`, empty when there are none.
    pub fn labels(&self) -> &BTreeMap<String, String> {
        self.metadata().labels.as_ref().unwrap_or(&NO_LABELS)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_know_their_names_versions_and_scope() {
        let cases = [
            (Kind::Namespace, "Namespace", "v1", false),
            (Kind::Pod, "Pod", "v1", true),
            (Kind::Service, "Service", "v1", true),
            (Kind::EndpointSlice, "EndpointSlice", "discovery.k8s.io/v1", true),
            (Kind::NetworkPolicy, "NetworkPolicy", "networking.k8s.io/v1", true),
            (Kind::SluiceNetworkPolicy, "SluiceNetworkPolicy", "sluice.dev/v1", true),
            (Kind::SluiceClusterwideNetworkPolicy, "SluiceClusterwideNetworkPolicy", "sluice.dev/v1", false),
        ];
        for (kind, name, api_version, namespaced) in cases {
            assert_eq!(kind.as_str(), name, "{kind:?} name");
            assert_eq!(kind.api_version(), api_version, "{kind:?} apiVersion");
            assert_eq!(kind.is_namespaced(), namespaced, "{kind:?} scope");
            assert_eq!(Kind::from_name(name), Some(kind), "{name} looks up {kind:?}");
        }
        assert_eq!(Kind::from_name("Ingress"), None, "Ingress is not supported");
    }

    #[test]
    fn helpers_read_metadata() {
        let mut pod = Pod::default();
        pod.metadata.name = Some("web".into());
        let object = Object::Pod(pod);
        assert_eq!(object.kind(), Kind::Pod, "kind");
        assert_eq!(object.name(), "web", "name");
        assert_eq!(object.namespace(), None, "no namespace outside parse_manifests");
        assert!(object.labels().is_empty(), "no labels");
    }
}
