//! Field paths in error messages, written the way users read them: `spec.containers[0].name`
//! for fields and list items, `metadata.labels["app/x"]` for map keys that are not plain words.

use serde_path_to_error::Segment;

/// `base` followed by a map key, always in brackets: `metadata.labels["app"]`.
pub(crate) fn map_key(base: &str, key: &str) -> String {
    format!("{base}[\"{}\"]", key.escape_debug())
}

/// Appends a field or key: `.name` when it is a plain word, `["app/x"]` otherwise.
pub(crate) fn push_field(path: &mut String, key: &str) {
    let plain = key.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if !plain {
        *path = map_key(path, key);
        return;
    }
    if !path.is_empty() {
        path.push('.');
    }
    path.push_str(key);
}

/// Appends a list index: `[3]`.
pub(crate) fn push_index(path: &mut String, index: usize) {
    path.push_str(&format!("[{index}]"));
}

/// Converts the path serde_path_to_error tracked while deserializing.
pub(crate) fn from_serde(serde_path: &serde_path_to_error::Path) -> String {
    let mut path = String::new();
    for segment in serde_path {
        match segment {
            Segment::Seq { index } => push_index(&mut path, *index),
            Segment::Map { key } | Segment::Enum { variant: key } => push_field(&mut path, key),
            Segment::Unknown => push_field(&mut path, "?"),
        }
    }
    if path.is_empty() {
        path.push('.');
    }
    path
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_indexes_and_keys() {
        let mut path = String::new();
        push_field(&mut path, "spec");
        push_field(&mut path, "containers");
        push_index(&mut path, 0);
        push_field(&mut path, "command");
        assert_eq!(path, "spec.containers[0].command", "fields and indexes");

        let mut path = "metadata.labels".to_owned();
        push_field(&mut path, "app/x");
        assert_eq!(path, r#"metadata.labels["app/x"]"#, "keys that are not words");
        assert_eq!(map_key("metadata.labels", "a\"b"), r#"metadata.labels["a\"b"]"#, "escaped");
    }
}
