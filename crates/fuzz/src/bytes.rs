//! Byte- and line-level mutations of real inputs. Good at syntax: cut a document mid-token,
//! lose or repeat a line, drop a format's keyword where another belongs.

use proptest::collection::vec;
use proptest::prelude::*;

use crate::{Pick, HOSTILE};

/// One change to an input. Positions are [`Pick`]s, so the same edit fits any length and
/// shrinks towards the start.
#[derive(Debug, Clone)]
pub enum Edit {
    /// Cut the input at a point: what a reader killed mid-write leaves.
    Truncate(Pick),
    /// Flip one bit of one byte.
    FlipBit(Pick, u8),
    /// Overwrite one byte.
    SetByte(Pick, u8),
    /// Remove a span of up to 64 bytes.
    Delete(Pick, usize),
    /// Copy a span of up to 256 bytes to another place.
    Duplicate { from: Pick, len: usize, to: Pick },
    /// Insert a token of the format (or a hostile one) at a point.
    Insert(Pick, Pick),
    /// Insert a token repeated many times: deep nesting, long lines, many fields.
    Repeat(Pick, Pick, usize),
    /// Remove a whole line.
    DeleteLine(Pick),
    /// Repeat a whole line right after itself.
    DuplicateLine(Pick),
    /// Swap two lines.
    SwapLines(Pick, Pick),
}

/// Uniformly random bytes, up to `max_len` of them.
pub fn random(max_len: usize) -> BoxedStrategy<Vec<u8>> {
    vec(any::<u8>(), 0..=max_len).boxed()
}

/// One of `seeds`, changed by one to eight [`Edit`]s whose tokens come from `dictionary` (the
/// format's keywords and punctuation) and [`HOSTILE`].
pub fn mutated(seeds: Vec<Vec<u8>>, dictionary: &'static [&'static str]) -> BoxedStrategy<Vec<u8>> {
    assert!(!seeds.is_empty(), "mutations need at least one seed");
    let tokens: Vec<&'static str> = dictionary.iter().chain(HOSTILE).copied().collect();
    (proptest::sample::select(seeds), vec(edit(), 1..=8))
        .prop_map(move |(mut input, edits)| {
            for edit in &edits {
                apply(&mut input, edit, &tokens);
            }
            input
        })
        .boxed()
}

/// As [`mutated`], as text: invalid UTF-8 from a flipped bit becomes U+FFFD, which is what a
/// caller that reads a file or a tool's output into a `String` lossily would hand the parser.
pub fn mutated_text(seeds: Vec<Vec<u8>>, dictionary: &'static [&'static str]) -> BoxedStrategy<String> {
    mutated(seeds, dictionary).prop_map(|b| String::from_utf8_lossy(&b).into_owned()).boxed()
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        1 => Pick::any().prop_map(Edit::Truncate),
        1 => (Pick::any(), 0u8..8).prop_map(|(at, bit)| Edit::FlipBit(at, bit)),
        1 => (Pick::any(), any::<u8>()).prop_map(|(at, byte)| Edit::SetByte(at, byte)),
        1 => (Pick::any(), 1usize..=64).prop_map(|(at, len)| Edit::Delete(at, len)),
        1 => (Pick::any(), 1usize..=256, Pick::any()).prop_map(|(from, len, to)| Edit::Duplicate { from, len, to }),
        3 => (Pick::any(), Pick::any()).prop_map(|(at, token)| Edit::Insert(at, token)),
        1 => (Pick::any(), Pick::any(), 2usize..=300).prop_map(|(at, token, n)| Edit::Repeat(at, token, n)),
        2 => Pick::any().prop_map(Edit::DeleteLine),
        2 => Pick::any().prop_map(Edit::DuplicateLine),
        2 => (Pick::any(), Pick::any()).prop_map(|(a, b)| Edit::SwapLines(a, b)),
    ]
}

/// A position in `0..=len` (the end included, for insertions).
fn point(index: &Pick, len: usize) -> usize {
    index.of(len + 1)
}

/// Applies one edit; edits that do not fit (a byte of an empty input) change nothing.
pub fn apply(input: &mut Vec<u8>, edit: &Edit, tokens: &[&str]) {
    let len = input.len();
    match edit {
        Edit::Truncate(at) => input.truncate(point(at, len)),
        Edit::FlipBit(at, bit) if len > 0 => input[at.of(len)] ^= 1 << (bit % 8),
        Edit::SetByte(at, byte) if len > 0 => input[at.of(len)] = *byte,
        Edit::Delete(at, n) => {
            let start = point(at, len);
            input.drain(start..(start + n).min(len));
        }
        Edit::Duplicate { from, len: n, to } if len > 0 => {
            let start = from.of(len);
            let span = input[start..(start + n).min(len)].to_vec();
            let to = point(to, len);
            input.splice(to..to, span);
        }
        Edit::Insert(at, token) if !tokens.is_empty() => {
            let to = point(at, len);
            input.splice(to..to, token.get(tokens).bytes());
        }
        Edit::Repeat(at, token, n) if !tokens.is_empty() => {
            let to = point(at, len);
            input.splice(to..to, token.get(tokens).repeat(*n).into_bytes());
        }
        Edit::DeleteLine(at) => {
            let mut lines = lines(input);
            if !lines.is_empty() {
                lines.remove(at.of(lines.len()));
                *input = lines.concat();
            }
        }
        Edit::DuplicateLine(at) => {
            let mut lines = lines(input);
            if !lines.is_empty() {
                let i = at.of(lines.len());
                lines.insert(i, lines[i].clone());
                *input = lines.concat();
            }
        }
        Edit::SwapLines(a, b) => {
            let mut lines = lines(input);
            if !lines.is_empty() {
                let (a, b) = (a.of(lines.len()), b.of(lines.len()));
                lines.swap(a, b);
                *input = lines.concat();
            }
        }
        _ => {}
    }
}

/// The lines of `input`, each with its `\n` (the last may have none).
fn lines(input: &[u8]) -> Vec<Vec<u8>> {
    input.split_inclusive(|b| *b == b'\n').map(<[u8]>::to_vec).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ix(n: usize, of: usize) -> Pick {
        Pick::at(n, of)
    }

    #[test]
    fn line_edits_keep_line_ends() {
        let mut input = b"a\nb\nc".to_vec();
        apply(&mut input, &Edit::SwapLines(ix(0, 3), ix(2, 3)), &[]);
        assert_eq!(input, b"cb\na\n", "each line keeps its own line end");
        let mut input = b"a\nb\n".to_vec();
        apply(&mut input, &Edit::DuplicateLine(ix(1, 2)), &[]);
        assert_eq!(input, b"a\nb\nb\n", "second line repeated");
    }

    #[test]
    fn edits_of_an_empty_input_do_not_panic() {
        let tokens = ["x"];
        let edits = [
            Edit::Truncate(ix(0, 1)),
            Edit::FlipBit(ix(0, 1), 3),
            Edit::SetByte(ix(0, 1), 7),
            Edit::Delete(ix(0, 1), 5),
            Edit::Duplicate { from: ix(0, 1), len: 4, to: ix(0, 1) },
            Edit::DeleteLine(ix(0, 1)),
            Edit::DuplicateLine(ix(0, 1)),
            Edit::SwapLines(ix(0, 1), ix(0, 1)),
        ];
        for edit in &edits {
            let mut input = Vec::new();
            apply(&mut input, edit, &tokens);
            assert!(input.is_empty(), "{edit:?} of nothing is nothing");
        }
        let mut input = Vec::new();
        apply(&mut input, &Edit::Repeat(ix(0, 1), ix(0, 1), 3), &tokens);
        assert_eq!(input, b"xxx", "a repeated token lands in an empty input");
    }
}
