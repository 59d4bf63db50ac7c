//! `LabelSet`: the canonical, sorted labels from which a security identity is derived.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

/// Key of the label naming a pod's namespace in its identity labels (as Cilium spells it).
pub const NAMESPACE_LABEL: &str = "k8s:io.kubernetes.pod.namespace";
/// Prefix of the identity labels copied from the pod's namespace labels.
pub const NAMESPACE_LABELS_PREFIX: &str = "k8s:io.kubernetes.pod.namespace.labels.";

/// The label the API server puts on every namespace, its own name: what a NetworkPolicy's
/// `namespaceSelector` matches a namespace by name with.
pub const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

/// The labels a namespace carries in the API server: `labels` as given, and
/// [`NAMESPACE_NAME_LABEL`] set to its name (whatever the manifest said). A namespace that was
/// never created explicitly gets the same, so its pods select alike.
pub fn namespace_labels(name: &str, labels: Option<&BTreeMap<String, String>>) -> BTreeMap<String, String> {
    let mut labels = labels.cloned().unwrap_or_default();
    labels.insert(NAMESPACE_NAME_LABEL.to_owned(), name.to_owned());
    labels
}

/// A sorted set of labels. Two pods get the same security identity exactly when their label
/// sets are equal, so the order of construction never matters: it is a `BTreeMap` underneath.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct LabelSet(BTreeMap<String, String>);

// === impl LabelSet ===

impl LabelSet {
    /// The identity labels of a pod: its own labels as they are, the name of its namespace
    /// under [`NAMESPACE_LABEL`], and each namespace label under [`NAMESPACE_LABELS_PREFIX`].
    /// The added keys contain `:`, which valid label keys cannot, so they never collide.
    pub fn for_pod(pod_labels: &BTreeMap<String, String>, namespace: &str, namespace_labels: &BTreeMap<String, String>) -> Self {
        let mut labels = pod_labels.clone();
        labels.insert(NAMESPACE_LABEL.to_owned(), namespace.to_owned());
        for (key, value) in namespace_labels {
            labels.insert(format!("{NAMESPACE_LABELS_PREFIX}{key}"), value.clone());
        }
        LabelSet(labels)
    }

    /// The deterministic `k=v,k=v` form, sorted by key. It is unambiguous for valid labels,
    /// whose keys and values contain neither `,` nor `=`.
    pub fn canonical_string(&self) -> String {
        self.to_string()
    }

    /// The value of label `key`, if present.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }

    /// The labels in key order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// Number of labels.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// True when there are no labels.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The labels as a map.
    pub fn as_map(&self) -> &BTreeMap<String, String> {
        &self.0
    }
}

impl fmt::Display for LabelSet {
    /// Writes [`LabelSet::canonical_string`].
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (key, value)) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{key}={value}")?;
        }
        Ok(())
    }
}

impl From<BTreeMap<String, String>> for LabelSet {
    fn from(labels: BTreeMap<String, String>) -> Self {
        LabelSet(labels)
    }
}

impl<K: Into<String>, V: Into<String>> FromIterator<(K, V)> for LabelSet {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        LabelSet(iter.into_iter().map(|(k, v)| (k.into(), v.into())).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn for_pod_includes_namespace_name_and_labels() {
        let set = LabelSet::for_pod(
            &map(&[("app", "web"), ("tier", "")]),
            "shop",
            &map(&[("team", "a"), ("kubernetes.io/metadata.name", "shop")]),
        );
        let expected = [
            ("app", "web"),
            ("k8s:io.kubernetes.pod.namespace", "shop"),
            ("k8s:io.kubernetes.pod.namespace.labels.kubernetes.io/metadata.name", "shop"),
            ("k8s:io.kubernetes.pod.namespace.labels.team", "a"),
            ("tier", ""),
        ];
        assert_eq!(set.iter().collect::<Vec<_>>(), expected, "labels in key order");
        assert_eq!(
            set.canonical_string(),
            "app=web,k8s:io.kubernetes.pod.namespace=shop,\
             k8s:io.kubernetes.pod.namespace.labels.kubernetes.io/metadata.name=shop,\
             k8s:io.kubernetes.pod.namespace.labels.team=a,tier=",
            "canonical string"
        );
    }

    #[test]
    fn canonical_string_does_not_depend_on_insertion_order() {
        let forward: LabelSet = [("a", "1"), ("b", "2"), ("c", "3")].into_iter().collect();
        let backward: LabelSet = [("c", "3"), ("b", "2"), ("a", "1")].into_iter().collect();
        assert_eq!(forward, backward, "sets with the same labels are equal");
        assert_eq!(forward.canonical_string(), "a=1,b=2,c=3", "sorted by key");
        assert_eq!(forward.canonical_string(), backward.canonical_string(), "same string");
    }

    #[test]
    fn namespace_labels_distinguish_identities() {
        let pod = map(&[("app", "web")]);
        let prod = LabelSet::for_pod(&pod, "shop", &map(&[("env", "prod")]));
        let test = LabelSet::for_pod(&pod, "shop", &map(&[("env", "test")]));
        let other_ns = LabelSet::for_pod(&pod, "bank", &map(&[("env", "prod")]));
        assert_ne!(prod, test, "namespace label values are part of the identity");
        assert_ne!(prod, other_ns, "the namespace name is part of the identity");
        assert_eq!(prod.get(NAMESPACE_LABEL), Some("shop"), "namespace label present");
    }

    #[test]
    fn empty_set() {
        let set = LabelSet::default();
        assert!(set.is_empty(), "default set is empty");
        assert_eq!(set.canonical_string(), "", "empty canonical string");
        let only_ns = LabelSet::for_pod(&BTreeMap::new(), "default", &BTreeMap::new());
        assert_eq!(only_ns.len(), 1, "only the namespace label");
        assert_eq!(only_ns.canonical_string(), "k8s:io.kubernetes.pod.namespace=default");
    }
}
