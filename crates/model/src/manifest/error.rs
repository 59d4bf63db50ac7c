//! Errors of manifest parsing. Each names where the problem is (file, document, object) and
//! the field path, so a user can fix the manifest without guessing.

use std::fmt;

/// Where in a manifest file a document is, and which object it declares when that is known.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DocumentRef {
    /// The file's display name, as given to [`crate::parse_manifests`].
    pub file: String,
    /// 1-based index of the YAML document in the file; empty documents count too, so the
    /// number matches what a reader counts between `---` lines.
    pub index: usize,
    /// The document's `kind` field, once read.
    pub kind: Option<String>,
    /// The document's `metadata.name`, once read.
    pub name: Option<String>,
}

/// Why a manifest file was rejected. Parsing stops at the first error in document order.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// A document is not well-formed YAML (or uses a YAML feature that cannot be loaded, such
    /// as an unknown anchor). The YAML error's message carries the line and column; it is
    /// shown in this error's message rather than chained as a source.
    #[error("{doc}: invalid YAML: {error}")]
    Yaml {
        /// The document (boxed, to keep the error small).
        doc: Box<DocumentRef>,
        /// The YAML parser's error.
        error: serde_yaml_ng::Error,
    },

    /// A document is a scalar or a list instead of an object.
    #[error("{doc}: expected an object with apiVersion, kind and metadata, found {found}")]
    NotAnObject {
        /// The document (boxed, to keep the error small).
        doc: Box<DocumentRef>,
        /// What the document is instead ("a string", "a list", ...).
        found: &'static str,
    },

    /// A required field is absent, null or empty.
    #[error("{doc}: {path}: required value is missing")]
    MissingField {
        /// The document (boxed, to keep the error small).
        doc: Box<DocumentRef>,
        /// Path of the missing field, e.g. `metadata.name`.
        path: String,
    },

    /// The `kind` is not one Sluice reads (see [`crate::Kind::ALL`]).
    #[error("{doc}: kind: {kind:?} is not supported (supported: {})", supported_kinds())]
    UnsupportedKind {
        /// The document (boxed, to keep the error small).
        doc: Box<DocumentRef>,
        /// The `kind` found.
        kind: String,
    },

    /// The `kind` is supported but not with the `apiVersion` given.
    #[error("{doc}: apiVersion: {kind} must have apiVersion {expected:?}, found {found:?}")]
    WrongApiVersion {
        /// The document (boxed, to keep the error small).
        doc: Box<DocumentRef>,
        /// The kind.
        kind: crate::Kind,
        /// The `apiVersion` found.
        found: String,
        /// The `apiVersion` the kind is read with.
        expected: &'static str,
    },

    /// A field has the wrong type or shape for the kind's schema (a string where a list is
    /// expected, a number as a label value, ...).
    #[error("{doc}: {path}: {reason}")]
    Schema {
        /// The document (boxed, to keep the error small).
        doc: Box<DocumentRef>,
        /// Path of the field, e.g. `spec.containers[0].command`.
        path: String,
        /// The deserializer's explanation.
        reason: String,
    },

    /// A field that the kind's schema does not have, which Kubernetes' strict field
    /// validation (the `kubectl apply` default) rejects; usually a typo.
    #[error("{doc}: {path}: unknown field")]
    UnknownField {
        /// The document (boxed, to keep the error small).
        doc: Box<DocumentRef>,
        /// Path of the unknown field, e.g. `metadata.lables`.
        path: String,
    },

    /// A field's value breaks a rule Kubernetes enforces (name syntax, label syntax, ...).
    #[error("{doc}: {path}: {reason}")]
    InvalidField {
        /// The document (boxed, to keep the error small).
        doc: Box<DocumentRef>,
        /// Path of the field, e.g. `metadata.labels` or `metadata.labels["app"]`.
        path: String,
        /// What is wrong, with the offending value.
        reason: String,
    },

    /// Two documents declare the same object (same kind, namespace and name).
    #[error("{doc}: duplicate object: {} is already defined in document {first}", describe(.doc, .namespace))]
    Duplicate {
        /// The later document (boxed, to keep the error small).
        doc: Box<DocumentRef>,
        /// The object's namespace, for namespaced kinds.
        namespace: Option<String>,
        /// Index of the earlier document declaring the same object.
        first: usize,
    },
}

// === impl DocumentRef ===

impl DocumentRef {
    pub(crate) fn boxed(&self) -> Box<Self> {
        Box::new(self.clone())
    }

    pub(crate) fn new(file: &str, index: usize) -> Self {
        DocumentRef { file: file.to_owned(), index, kind: None, name: None }
    }
}

impl fmt::Display for DocumentRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: document {}", self.file, self.index)?;
        match (&self.kind, &self.name) {
            (Some(kind), Some(name)) => write!(f, " ({kind} {name:?})"),
            (Some(kind), None) => write!(f, " ({kind})"),
            (None, _) => Ok(()),
        }
    }
}

// === impl ManifestError ===

impl ManifestError {
    /// The document the error is about.
    pub fn document(&self) -> &DocumentRef {
        match self {
            ManifestError::Yaml { doc, .. }
            | ManifestError::NotAnObject { doc, .. }
            | ManifestError::MissingField { doc, .. }
            | ManifestError::UnsupportedKind { doc, .. }
            | ManifestError::WrongApiVersion { doc, .. }
            | ManifestError::Schema { doc, .. }
            | ManifestError::UnknownField { doc, .. }
            | ManifestError::InvalidField { doc, .. }
            | ManifestError::Duplicate { doc, .. } => doc,
        }
    }
}

fn supported_kinds() -> String {
    let kinds: Vec<String> = crate::Kind::ALL.iter().map(|kind| format!("{} {kind}", kind.api_version())).collect();
    kinds.join(", ")
}

fn describe(doc: &DocumentRef, namespace: &Option<String>) -> String {
    let kind = doc.kind.as_deref().unwrap_or("object");
    let name = doc.name.as_deref().unwrap_or_default();
    match namespace {
        Some(namespace) => format!("{kind} {name:?} in namespace {namespace:?}"),
        None => format!("{kind} {name:?}"),
    }
}
