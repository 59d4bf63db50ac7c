//! Kubernetes-shaped objects of Sluice, as pure code: parse and validate kubectl-style
//! manifests into [`Object`]s, and derive the canonical [`LabelSet`] that security
//! identities are allocated from. No I/O: callers hand in the manifest text.
//!
//! ```
//! use sluice_model::{parse_manifests, Kind, LabelSet};
//!
//! let yaml = r#"
//! apiVersion: v1
//! kind: Namespace
//! metadata: {name: shop, labels: {team: a}}
//! ---
//! apiVersion: v1
//! kind: Pod
//! metadata: {name: web, namespace: shop, labels: {app: web}}
//! spec:
//!   containers: [{name: web, command: [sleep, infinity]}]
//! "#;
//! let objects = parse_manifests("shop.yaml", yaml)?;
//! let (namespace, pod) = (&objects[0], &objects[1]);
//! assert_eq!(pod.kind(), Kind::Pod);
//!
//! let identity = LabelSet::for_pod(pod.labels(), namespace.name(), namespace.labels());
//! assert_eq!(
//!     identity.canonical_string(),
//!     "app=web,k8s:io.kubernetes.pod.namespace=shop,\
//!      k8s:io.kubernetes.pod.namespace.labels.kubernetes.io/metadata.name=shop,\
//!      k8s:io.kubernetes.pod.namespace.labels.team=a",
//! );
//! # Ok::<(), sluice_model::ManifestError>(())
//! ```

pub mod endpoint_slices;
pub mod labels;
pub mod manifest;
pub mod object;
pub mod policy;
pub mod service;

pub use endpoint_slices::{Batcher, DesiredEndpoint, Plan, SliceEndpoint, SliceWrite, SluiceEndpointSlice};
pub use labels::LabelSet;
pub use manifest::{parse_manifests, DocumentRef, ManifestError};
pub use object::{Kind, Object};
pub use service::{derive_endpoint_slices, Allocator, IpFamily, ServiceRanges};
