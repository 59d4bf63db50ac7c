//! Unknown-field detection. k8s-openapi skips fields it does not know, but Kubernetes' strict
//! field validation rejects them, and they are usually typos (`metadata.lables`) that would
//! otherwise vanish silently. A field is unknown when it does not survive a round trip
//! through the typed object.

use serde_yaml_ng::Value;

use super::path;
use crate::Object;

/// Path of the first field of `original` (in document order) that `object` did not keep.
pub(crate) fn first_unknown_field(original: &Value, object: &Object) -> Option<String> {
    // Serializing a typed Kubernetes object into a YAML value does not fail; should it ever,
    // the worst outcome is a typo that goes unreported, so the check is skipped.
    let known = serde_yaml_ng::to_value(object).ok()?;
    let mut at = String::new();
    find(original, &known, &mut at).then_some(at)
}

/// True when `original` holds a field `known` lacks; `at` is left pointing at it.
fn find(original: &Value, known: &Value, at: &mut String) -> bool {
    let depth = at.len();
    match (original, known) {
        (Value::Mapping(original), Value::Mapping(known)) => {
            for (key, value) in original {
                // Null means "not set"; non-string keys already failed decoding.
                let (false, Some(name)) = (value.is_null(), key.as_str()) else {
                    continue;
                };
                path::push_field(at, name);
                match known.get(key) {
                    None => return true,
                    Some(kept) if find(value, kept, at) => return true,
                    Some(_) => at.truncate(depth),
                }
            }
        }
        (Value::Sequence(original), Value::Sequence(known)) => {
            for (index, (value, kept)) in original.iter().zip(known).enumerate() {
                path::push_index(at, index);
                if find(value, kept, at) {
                    return true;
                }
                at.truncate(depth);
            }
        }
        _ => {}
    }
    false
}
