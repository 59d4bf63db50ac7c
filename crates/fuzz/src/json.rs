//! Tree mutations of JSON inputs. Good at fields: the document stays valid JSON, so the parser
//! gets past decoding and meets a field of the wrong type, a number past its width, a missing
//! key, a list repeated, a value nested deeper than any real one.

use proptest::collection::vec;
use proptest::prelude::*;
use serde_json::{json, Map, Value};

use crate::{Pick, HOSTILE};

/// One change to a document. Nodes are numbered in pre-order (the root is 0) and picked by
/// [`Pick`], so an edit fits any document.
#[derive(Debug, Clone)]
pub enum Edit {
    /// Replace a node with one of [`values`]: another type, an extreme number, an empty or long
    /// string, an empty container.
    Replace(Pick, Pick),
    /// Replace a node with a copy of another node of the same document (a field where another
    /// belongs, an object where a string belongs).
    Graft(Pick, Pick),
    /// Remove one member of an object or one element of a list.
    Remove(Pick, Pick),
    /// Repeat one element of a list, or give an object a copy of a member under a new key.
    Duplicate(Pick, Pick),
    /// Wrap a node in up to 60 lists or objects.
    Nest(Pick, usize, bool),
    /// Append a token to a string, or turn a number into a string with a token after it.
    Mangle(Pick, Pick),
    /// Rename a member of an object to a token.
    RenameKey(Pick, Pick, Pick),
}

/// Values that do not belong where they are put.
pub fn values() -> Vec<Value> {
    vec![
        Value::Null,
        json!(true),
        json!(false),
        json!(0),
        json!(-1),
        json!(65536),
        json!(4294967296u64),
        json!(u64::MAX),
        json!(i64::MIN),
        json!(1e308),
        json!(-1e308),
        json!(0.5),
        json!(""),
        json!("x".repeat(4096)),
        json!("\u{0}"),
        json!("-1"),
        json!("18446744073709551616"),
        json!("::"),
        json!("0.0.0.0/33"),
        json!([]),
        json!({}),
        json!([null]),
        json!({"": null}),
        json!([[[[[[[[[[]]]]]]]]]]),
    ]
}

/// One of `seeds` (each must be JSON; they are the real inputs) changed by one to six
/// [`Edit`]s, written back as JSON text. `dictionary` adds the format's own tokens.
pub fn mutated(seeds: &[Vec<u8>], dictionary: &'static [&'static str]) -> BoxedStrategy<Vec<u8>> {
    let documents: Vec<Value> = seeds
        .iter()
        .enumerate()
        .map(|(i, s)| serde_json::from_slice(s).unwrap_or_else(|e| panic!("JSON seed {i} does not parse: {e}")))
        .collect();
    assert!(!documents.is_empty(), "mutations need at least one seed");
    let tokens: Vec<&'static str> = dictionary.iter().chain(HOSTILE).copied().collect();
    let values = values();
    (proptest::sample::select(documents), vec(edit(), 1..=6))
        .prop_map(move |(mut document, edits)| {
            for edit in &edits {
                apply(&mut document, edit, &values, &tokens);
            }
            serde_json::to_vec(&document).unwrap_or_default()
        })
        .boxed()
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        3 => (Pick::any(), Pick::any()).prop_map(|(n, v)| Edit::Replace(n, v)),
        2 => (Pick::any(), Pick::any()).prop_map(|(n, from)| Edit::Graft(n, from)),
        2 => (Pick::any(), Pick::any()).prop_map(|(n, child)| Edit::Remove(n, child)),
        1 => (Pick::any(), Pick::any()).prop_map(|(n, child)| Edit::Duplicate(n, child)),
        1 => (Pick::any(), 1usize..=60, any::<bool>()).prop_map(|(n, depth, list)| Edit::Nest(n, depth, list)),
        2 => (Pick::any(), Pick::any()).prop_map(|(n, token)| Edit::Mangle(n, token)),
        1 => (Pick::any(), Pick::any(), Pick::any()).prop_map(|(n, child, token)| Edit::RenameKey(n, child, token)),
    ]
}

/// Applies one edit; one that does not fit the node it picked (removing from a string) changes
/// nothing.
pub fn apply(document: &mut Value, edit: &Edit, values: &[Value], tokens: &[&str]) {
    let count = count(document);
    let pick = |index: &Pick| index.of(count);
    match edit {
        Edit::Replace(node, value) => {
            if let Some(target) = nth(document, pick(node)) {
                *target = value.get(values).clone();
            }
        }
        Edit::Graft(node, from) => {
            let copy = nth(document, pick(from)).map(|v| v.clone());
            if let (Some(copy), Some(target)) = (copy, nth(document, pick(node))) {
                *target = copy;
            }
        }
        Edit::Remove(node, child) => match nth(document, pick(node)) {
            Some(Value::Array(items)) if !items.is_empty() => {
                items.remove(child.of(items.len()));
            }
            Some(Value::Object(members)) if !members.is_empty() => {
                let key = members.keys().nth(child.of(members.len())).cloned().unwrap_or_default();
                members.remove(&key);
            }
            _ => {}
        },
        Edit::Duplicate(node, child) => match nth(document, pick(node)) {
            Some(Value::Array(items)) if !items.is_empty() => {
                let i = child.of(items.len());
                items.insert(i, items[i].clone());
            }
            Some(Value::Object(members)) if !members.is_empty() => {
                let (key, value) = members.iter().nth(child.of(members.len())).map(|(k, v)| (k.clone(), v.clone())).unwrap_or_default();
                members.insert(format!("{key}{key}"), value);
            }
            _ => {}
        },
        Edit::Nest(node, depth, list) => {
            if let Some(target) = nth(document, pick(node)) {
                let mut value = target.take();
                for _ in 0..*depth {
                    value = if *list { Value::Array(vec![value]) } else { Value::Object(Map::from_iter([("a".to_owned(), value)])) };
                }
                *target = value;
            }
        }
        Edit::Mangle(node, token) if !tokens.is_empty() => {
            let token = token.get(tokens);
            match nth(document, pick(node)) {
                Some(Value::String(s)) => s.push_str(token),
                Some(target @ Value::Number(_)) => *target = Value::String(format!("{target}{token}")),
                _ => {}
            }
        }
        Edit::RenameKey(node, child, token) if !tokens.is_empty() => {
            if let Some(Value::Object(members)) = nth(document, pick(node)) {
                if !members.is_empty() {
                    let key = members.keys().nth(child.of(members.len())).cloned().unwrap_or_default();
                    if let Some(value) = members.remove(&key) {
                        members.insert(token.get(tokens).to_string(), value);
                    }
                }
            }
        }
        _ => {}
    }
}

/// Nodes in the document, the root included.
fn count(value: &Value) -> usize {
    1 + match value {
        Value::Array(items) => items.iter().map(count).sum(),
        Value::Object(members) => members.values().map(count).sum(),
        _ => 0,
    }
}

/// The node numbered `n` in pre-order.
fn nth(value: &mut Value, n: usize) -> Option<&mut Value> {
    fn walk<'v>(value: &'v mut Value, n: &mut usize) -> Option<&'v mut Value> {
        if *n == 0 {
            return Some(value);
        }
        *n -= 1;
        match value {
            Value::Array(items) => items.iter_mut().find_map(|item| walk(item, n)),
            Value::Object(members) => members.values_mut().find_map(|member| walk(member, n)),
            _ => None,
        }
    }
    let mut n = n;
    walk(value, &mut n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nodes_are_numbered_in_pre_order() {
        let mut doc = json!({"a": [1, {"b": 2}], "c": 3});
        assert_eq!(count(&doc), 6, "root, a, 1, {{b}}, 2, c");
        let want = [json!([1, {"b": 2}]), json!(1), json!({"b": 2}), json!(2), json!(3)];
        for (n, want) in want.iter().enumerate() {
            assert_eq!(nth(&mut doc, n + 1).map(|v| v.clone()), Some(want.clone()), "node {}", n + 1);
        }
        assert_eq!(nth(&mut doc, 6), None, "past the last node");
    }
}
