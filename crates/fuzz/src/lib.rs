//! Test support for "parsers never panic": proptest strategies that start from real inputs (the
//! fixtures and examples the parsers are tested on) and break them the ways input breaks in the
//! field — cut short, bits flipped, lines lost or repeated, a field of the wrong type, a number
//! too big, nesting too deep — so that generated cases reach past the first syntax check into
//! the paths that handle fields. Plain random bytes are one strategy among them.
//!
//! ```
//! use proptest::prelude::*;
//! use sluice_fuzz::{bytes, json};
//!
//! let seeds = vec![br#"{"cniVersion":"1.1.0","name":"n","type":"t"}"#.to_vec()];
//! let inputs = prop_oneof![bytes::random(256), bytes::mutated(seeds.clone(), &["{", "\"mtu\":"]), json::mutated(&seeds, &["/"])];
//! let mut runner = proptest::test_runner::TestRunner::new(sluice_fuzz::config(16));
//! runner.run(&inputs, |input| {
//!     let _ = serde_json::from_slice::<serde_json::Value>(&input);
//!     Ok(())
//! }).unwrap();
//! ```

pub mod bytes;
pub mod json;

use proptest::prelude::{any, Strategy};
use proptest::test_runner::Config;

/// A runner configuration for `cases` generated inputs: enough to find the shallow panics in a
/// few seconds on every CI run. `PROPTEST_CASES` raises (or lowers) it for a longer run by hand.
/// Failures are not written to files: a panic found is kept as a named regression test beside
/// the parser instead, with the input that caused it.
pub fn config(cases: u32) -> Config {
    let cases = std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(cases);
    Config { cases, failure_persistence: None, ..Config::default() }
}

/// A position chosen without knowing the input's size: a fraction of `usize::MAX` mapped onto
/// the length the input has when the edit applies (proptest's `Index`, which tests cannot
/// build). It shrinks towards the start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pick(pub usize);

impl Pick {
    pub fn any() -> impl Strategy<Value = Pick> {
        any::<usize>().prop_map(Pick)
    }

    /// The pick that lands on `n` of `size` (for tests of the edits themselves).
    pub fn at(n: usize, size: usize) -> Pick {
        Pick(usize::try_from((((n as u128) << usize::BITS) + (1u128 << usize::BITS) / 2) / size.max(1) as u128).unwrap_or(usize::MAX))
    }

    /// A position in `0..size`; 0 when `size` is 0.
    pub fn of(self, size: usize) -> usize {
        ((size as u128 * self.0 as u128) >> usize::BITS) as usize
    }

    /// The element of a non-empty slice this picks.
    pub fn get<T>(self, slice: &[T]) -> &T {
        &slice[self.of(slice.len())]
    }
}

/// Tokens that upset parsers of any text format: NULs, byte-order marks, the largest code point,
/// line ends, numbers just past the integer widths, exponents past f64.
pub const HOSTILE: &[&str] = &[
    "\0",
    "\u{feff}",
    "\u{10ffff}",
    "\u{fffd}",
    "\r\n",
    "\r",
    "\n",
    "\t",
    " ",
    "\\",
    "\"",
    "'",
    "-1",
    "0",
    "255",
    "256",
    "65535",
    "65536",
    "4294967295",
    "4294967296",
    "2147483648",
    "-2147483649",
    "18446744073709551615",
    "18446744073709551616",
    "-9223372036854775809",
    "340282366920938463463374607431768211456",
    "1e999",
    "-1e999",
    "NaN",
    "0x",
    "0xffffffff",
    "%",
    "/",
    "/0",
    "/33",
    "/129",
    "/-1",
    ":",
    "::",
    ":::",
    "[",
    "]",
    "{",
    "}",
    ",",
    ".",
    "..",
    "!",
];
