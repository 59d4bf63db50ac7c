//! Reading manifests: kubectl-shaped multi-document YAML in, validated [`Object`]s out.
//! Parsing is atomic (one bad document rejects the file) and every error names the file,
//! the document and the field, with the reason the Kubernetes API server would give.

mod error;
mod path;
mod policy_rules;
#[cfg(test)]
mod policy_tests;
pub(crate) mod rules;
mod service_rules;
#[cfg(test)]
mod service_tests;
mod strict;
#[cfg(test)]
mod tests;

use std::collections::HashMap;

use serde::Deserialize;
use serde_yaml_ng::{Mapping, Value};

pub use error::{DocumentRef, ManifestError};
use rules::FieldError;

use crate::{Kind, Object};

/// Namespace of namespaced objects whose manifest names none, as in Kubernetes.
pub const DEFAULT_NAMESPACE: &str = "default";

/// Parses the YAML documents of one manifest file (`---` separated; empty and comment-only
/// documents are skipped) into validated objects, in document order. `file` is the name
/// errors show. Namespaced objects without `metadata.namespace` get [`DEFAULT_NAMESPACE`].
/// Fails with the first problem in document order; on error no object is returned.
pub fn parse_manifests(file: &str, text: &str) -> Result<Vec<Object>, ManifestError> {
    let mut objects = Vec::new();
    // (kind, namespace, name) -> index of the document that declared it
    let mut seen: HashMap<(Kind, String, String), usize> = HashMap::new();
    for (i, document) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
        let mut doc = DocumentRef::new(file, i + 1);
        let value = match Value::deserialize(document) {
            Ok(value) => value,
            Err(error) => return Err(ManifestError::Yaml { doc: Box::new(doc), error }),
        };
        let Some(object) = parse_document(&mut doc, value)? else {
            continue;
        };
        let namespace = object.namespace().map(str::to_owned);
        let key = (object.kind(), namespace.clone().unwrap_or_default(), object.name().to_owned());
        if let Some(&first) = seen.get(&key) {
            return Err(ManifestError::Duplicate { doc: Box::new(doc), namespace, first });
        }
        seen.insert(key, doc.index);
        objects.push(object);
    }
    Ok(objects)
}

/// One document to an object; `None` for an empty document. Fills in `doc.kind` and
/// `doc.name` as soon as they are read, so later errors name the object.
fn parse_document(doc: &mut DocumentRef, mut value: Value) -> Result<Option<Object>, ManifestError> {
    if value.is_null() {
        return Ok(None);
    }
    if let Err(error) = value.apply_merge() {
        return Err(ManifestError::Yaml { doc: doc.boxed(), error });
    }
    let Value::Mapping(fields) = &value else {
        return Err(ManifestError::NotAnObject { doc: doc.boxed(), found: describe(&value) });
    };
    let non_empty = |field: Option<&Value>| {
        let text = field.and_then(Value::as_str).filter(|text| !text.is_empty());
        text.map(str::to_owned)
    };
    doc.kind = non_empty(fields.get("kind"));
    doc.name = non_empty(value.get("metadata").and_then(|meta| meta.get("name")));
    let api_version = required_string(doc, fields, "apiVersion")?;
    let kind_name = required_string(doc, fields, "kind")?;

    let Some(kind) = Kind::from_name(kind_name) else {
        return Err(ManifestError::UnsupportedKind { doc: doc.boxed(), kind: kind_name.to_owned() });
    };
    if api_version != kind.api_version() {
        return Err(ManifestError::WrongApiVersion { doc: doc.boxed(), kind, found: api_version.to_owned(), expected: kind.api_version() });
    }

    let mut object = kind.decode(value.clone()).map_err(|error| ManifestError::Schema {
        doc: doc.boxed(),
        path: path::from_serde(error.path()),
        reason: error.into_inner().to_string(),
    })?;
    if let Some(path) = strict::first_unknown_field(&value, &object) {
        return Err(ManifestError::UnknownField { doc: doc.boxed(), path });
    }
    apply_namespace_default(&mut object);
    let checked = rules::check(&object);
    match (&checked, &mut object) {
        (Ok(()), Object::Service(service)) => crate::service::apply_defaults(service),
        (Ok(()), Object::Namespace(namespace)) => {
            let name = namespace.metadata.name.clone().unwrap_or_default();
            namespace.metadata.labels = Some(crate::labels::namespace_labels(&name, namespace.metadata.labels.as_ref()));
        }
        _ => {}
    }
    checked.map_err(|error| match error {
        FieldError::Missing(path) => ManifestError::MissingField { doc: doc.boxed(), path },
        FieldError::Invalid { path, reason } => ManifestError::InvalidField { doc: doc.boxed(), path, reason },
    })?;
    Ok(Some(object))
}

/// A top-level string field that must be present and non-empty.
fn required_string<'v>(doc: &DocumentRef, fields: &'v Mapping, name: &str) -> Result<&'v str, ManifestError> {
    match fields.get(name) {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) if s.is_empty() => {}
        Some(Value::String(s)) => return Ok(s),
        Some(other) => {
            return Err(ManifestError::Schema {
                doc: doc.boxed(),
                path: name.to_owned(),
                reason: format!("expected a string, found {}", describe(other)),
            })
        }
    }
    Err(ManifestError::MissingField { doc: doc.boxed(), path: name.to_owned() })
}

/// Defaults the namespace of namespaced objects and clears it on cluster-scoped ones, as the
/// API server does.
fn apply_namespace_default(object: &mut Object) {
    let namespaced = object.kind().is_namespaced();
    let namespace = &mut object.metadata_mut().namespace;
    if !namespaced {
        *namespace = None;
    } else if namespace.as_deref().unwrap_or_default().is_empty() {
        *namespace = Some(DEFAULT_NAMESPACE.to_owned());
    }
}

fn describe(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Sequence(_) => "a list",
        Value::Mapping(_) => "an object",
        Value::Tagged(_) => "a tagged value",
    }
}
