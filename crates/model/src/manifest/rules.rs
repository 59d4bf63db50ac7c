//! The rules Kubernetes' API server enforces beyond the schema: required fields, name and
//! label syntax, and each kind's own spec rules (the `Rules` trait, one impl per kind).

use std::collections::{BTreeMap, HashSet};

use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::path;
use crate::labels::{validate_dns1123_label, validate_dns1123_subdomain, validate_label_key, validate_label_value};
use crate::{Kind, Object};

/// A broken rule, located by field path; the caller adds the file and document.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum FieldError {
    /// A required field is absent or empty.
    Missing(String),
    /// A field's value is rejected.
    Invalid { path: String, reason: String },
}

/// What a kind adds to the common metadata checks.
pub(crate) trait Rules {
    /// Checks `metadata.name`; most kinds take DNS-1123 subdomains.
    fn check_name(name: &str) -> Result<(), String> {
        validate_dns1123_subdomain(name)
    }

    /// Checks the kind's own fields.
    fn check_spec(&self) -> Result<(), FieldError> {
        Ok(())
    }
}

/// Checks an object's metadata, then its kind's rules.
pub(crate) fn check(object: &Object) -> Result<(), FieldError> {
    check_metadata(object.kind(), object.metadata())?;
    object.check_spec()
}

fn check_metadata(kind: Kind, meta: &ObjectMeta) -> Result<(), FieldError> {
    let name = meta.name.as_deref().unwrap_or_default();
    if name.is_empty() {
        return Err(FieldError::Missing("metadata.name".to_owned()));
    }
    kind.check_name(name).map_err(|reason| invalid("metadata.name", name, reason))?;
    if let Some(namespace) = &meta.namespace {
        validate_dns1123_label(namespace).map_err(|reason| invalid("metadata.namespace", namespace, reason))?;
    }
    check_labels("metadata.labels", meta.labels.as_ref())
}

/// Checks a label map at `path`; a bad key is reported on the map, a bad value on its key.
pub(super) fn check_labels(path: &str, labels: Option<&BTreeMap<String, String>>) -> Result<(), FieldError> {
    for (key, value) in labels.into_iter().flatten() {
        validate_label_key(key)
            .map_err(|reason| FieldError::Invalid { path: path.to_owned(), reason: format!("key {key:?} is invalid: {reason}") })?;
        validate_label_value(value).map_err(|reason| invalid(&path::map_key(path, key), value, reason))?;
    }
    Ok(())
}

/// `path: "value" is invalid: reason`
pub(super) fn invalid(path: &str, value: &str, reason: String) -> FieldError {
    FieldError::Invalid { path: path.to_owned(), reason: format!("{value:?} is invalid: {reason}") }
}

// === impl Rules ===

impl Rules for Namespace {
    fn check_name(name: &str) -> Result<(), String> {
        validate_dns1123_label(name)
    }
}

impl Rules for Pod {
    fn check_spec(&self) -> Result<(), FieldError> {
        let Some(spec) = &self.spec else {
            return Err(FieldError::Missing("spec.containers".to_owned()));
        };
        if spec.containers.is_empty() {
            return Err(FieldError::Invalid {
                path: "spec.containers".to_owned(),
                reason: "at least one container is required".to_owned(),
            });
        }
        let mut names = HashSet::new();
        for (i, container) in spec.containers.iter().enumerate() {
            let at = |field: &str| format!("spec.containers[{i}].{field}");
            let name = container.name.as_str();
            if name.is_empty() {
                return Err(FieldError::Missing(at("name")));
            }
            validate_dns1123_label(name).map_err(|reason| invalid(&at("name"), name, reason))?;
            if !names.insert(name) {
                return Err(FieldError::Invalid { path: at("name"), reason: format!("duplicate container name {name:?}") });
            }
            if container.command.as_ref().is_some_and(Vec::is_empty) {
                return Err(FieldError::Invalid {
                    path: at("command"),
                    reason: "must not be an empty list; omit it to use the image's entrypoint".to_owned(),
                });
            }
        }
        match spec.node_name.as_deref() {
            Some(node) if !node.is_empty() => validate_dns1123_subdomain(node).map_err(|reason| invalid("spec.nodeName", node, reason)),
            _ => Ok(()),
        }
    }
}
