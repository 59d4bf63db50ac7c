//! Label rules and label sets. Validation mirrors what the Kubernetes API server accepts for
//! names and labels; [`LabelSet`] is the canonical label form security identities derive from.

mod set;
mod validate;

pub use set::{namespace_labels, LabelSet, NAMESPACE_LABEL, NAMESPACE_LABELS_PREFIX, NAMESPACE_NAME_LABEL};
pub use validate::{
    validate_dns1035_label, validate_dns1123_label, validate_dns1123_subdomain, validate_iana_svc_name, validate_label_key,
    validate_label_value,
};
