//! The manifest parser never panics: random bytes, the real manifests (the repository's
//! examples and a fixture with every kind) cut short, with lines lost, repeated or swapped,
//! YAML syntax dropped in (anchors, aliases, merge keys, tags, block scalars), and their
//! documents with fields of the wrong type, numbers past their width, keys renamed, nesting too
//! deep. Every input is parsed into objects or refused with an error naming the file.
//! Bounded by a case count, a few seconds each (`PROPTEST_CASES` for a longer run).

#![allow(clippy::expect_used, clippy::unwrap_used)] // a test fails loudly on what it did not expect

use proptest::prelude::*;
use sluice_fuzz::{bytes, json};
use sluice_model::parse_manifests;

/// YAML syntax and the words of the kinds Sluice reads, to drop in where others belong.
const TOKENS: &[&str] = &[
    "---\n",
    "...\n",
    "- ",
    ": ",
    "? ",
    "&a ",
    "*a",
    "<<: *a\n",
    "<<: [*a, *a]\n",
    "!!str ",
    "!!int ",
    "!!binary ",
    "!!map ",
    "!Custom ",
    "|\n",
    ">-\n",
    "#",
    "~",
    "null",
    "true",
    "yes",
    "0o17",
    "0x1F",
    ".inf",
    "-.inf",
    ".nan",
    "1e3",
    "apiVersion: v1\n",
    "kind: Pod\n",
    "kind: Service\n",
    "kind: EndpointSlice\n",
    "kind: SluiceNetworkPolicy\n",
    "apiVersion",
    "kind",
    "metadata",
    "name",
    "namespace",
    "labels",
    "spec",
    "status",
    "type",
    "ports",
    "port",
    "targetPort",
    "nodePort",
    "endPort",
    "protocol",
    "selector",
    "podSelector",
    "endpointSelector",
    "matchLabels",
    "matchExpressions",
    "operator",
    "values",
    "ipBlock",
    "cidr",
    "except",
    "clusterIP",
    "clusterIPs",
    "ipFamilies",
    "ipFamilyPolicy",
    "addressType",
    "endpoints",
    "addresses",
    "conditions",
    "kubernetes.io/service-name",
    "ingress",
    "egress",
    "fromEndpoints",
    "toPorts",
    "toCIDRSet",
    "icmps",
    "fields",
    "family",
    "containers",
    "command",
    "IPv4",
    "IPv6",
    "TCP",
    "SCTP",
    "ANY",
    "In",
    "NotIn",
    "Exists",
    "a/b/c",
    "-",
    "_",
    "k8s:",
];

fn seeds() -> Vec<Vec<u8>> {
    // The runner's CARGO_MANIFEST_DIR: a cached binary from another checkout must read this
    // checkout's files.
    let dir = std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").to_string());
    let dir = std::path::Path::new(&dir);
    let files = [
        dir.join("tests/fixtures/every-kind.yaml"),
        dir.join("../../examples/demo.yaml"),
        dir.join("../../examples/policy.yaml"),
        dir.join("../../examples/http-policy.yaml"),
    ];
    files.iter().map(|p| std::fs::read(p).unwrap_or_else(|e| panic!("reading {}: {e}", p.display()))).collect()
}

/// Each document of the seeds as JSON (which is YAML too), for the tree mutations.
fn json_documents(seeds: &[Vec<u8>]) -> Vec<Vec<u8>> {
    let mut documents = Vec::new();
    for seed in seeds {
        let text = std::str::from_utf8(seed).expect("seeds are UTF-8");
        for document in serde_yaml_ng::Deserializer::from_str(text) {
            let value: serde_json::Value = serde::Deserialize::deserialize(document).expect("seed documents are plain YAML");
            if !value.is_null() {
                documents.push(serde_json::to_vec(&value).expect("a document as JSON"));
            }
        }
    }
    documents
}

fn inputs() -> BoxedStrategy<String> {
    let seeds = seeds();
    let documents = json_documents(&seeds);
    prop_oneof![
        1 => bytes::random(512),
        5 => bytes::mutated(seeds, TOKENS),
        5 => json::mutated(&documents, TOKENS),
    ]
    .prop_map(|b| String::from_utf8_lossy(&b).into_owned())
    .boxed()
}

proptest! {
    #![proptest_config(sluice_fuzz::config(5000))]

    #[test]
    fn manifests_never_panic(text in inputs()) {
        match parse_manifests("fuzz.yaml", &text) {
            Ok(objects) => {
                for object in &objects {
                    prop_assert!(!object.name().is_empty(), "an object read has a name: {:?}", object);
                }
            }
            Err(error) => prop_assert!(error.to_string().contains("fuzz.yaml"), "the error names the file: {}", error),
        }
    }
}

#[test]
fn the_seeds_parse_and_the_mutations_reach_past_yaml() {
    for (i, seed) in seeds().iter().enumerate() {
        let text = std::str::from_utf8(seed).expect("UTF-8");
        if let Err(e) = parse_manifests("seed.yaml", text) {
            panic!("seed {i} must parse: {e}");
        }
    }
    // If nearly every generated input failed as YAML, the property above would prove little
    // about the field checks: a fair share must be YAML that reaches them.
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    let strategy = inputs();
    let (mut objects_or_field_errors, total) = (0, 400);
    for _ in 0..total {
        let text = strategy.new_tree(&mut runner).expect("an input").current();
        let past_yaml = match parse_manifests("fuzz.yaml", &text) {
            Ok(_) => true,
            Err(error) => !matches!(error, sluice_model::ManifestError::Yaml { .. }),
        };
        objects_or_field_errors += usize::from(past_yaml);
    }
    assert!(objects_or_field_errors >= total / 3, "only {objects_or_field_errors} of {total} inputs got past YAML decoding");
}

#[test]
fn hostile_documents_are_refused() {
    let laughs = {
        let mut doc = String::from("a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n");
        for i in 1..12 {
            let prev = format!("*a{}", i - 1);
            doc.push_str(&format!("a{i}: &a{i} [{}]\n", [prev.as_str(); 9].join(", ")));
        }
        format!("apiVersion: v1\nkind: Namespace\nmetadata: {{name: x}}\n{doc}")
    };
    // (what, manifest, what the error must say)
    let cases = [
        (
            "10,000 nested lists",
            format!("apiVersion: v1\nkind: Pod\nspec: {}{}\n", "[".repeat(10_000), "]".repeat(10_000)),
            "recursion limit",
        ),
        (
            "10,000 nested maps",
            format!("apiVersion: v1\nkind: Pod\nspec: {}{}\n", "{a: ".repeat(10_000), "}".repeat(10_000)),
            "recursion limit",
        ),
        ("an alias bomb (9^12 strings)", laughs, "repetition limit"),
        ("a merge of an alias of itself", "apiVersion: v1\nkind: Namespace\nmetadata: &m {name: x, <<: *m}\n".to_string(), "invalid YAML"),
        (
            "a port past every integer width",
            "apiVersion: v1\nkind: Service\nmetadata: {name: s}\nspec: {ports: [{port: 99999999999999999999}]}\n".to_string(),
            "spec.ports[0].port",
        ),
        ("a tagged scalar for a document", "!!binary aGVsbG8=\n".to_string(), "expected an object"),
    ];
    for (what, text, says) in cases {
        let started = std::time::Instant::now();
        match parse_manifests("hostile.yaml", &text) {
            Ok(objects) => panic!("{what}: must be refused, parsed {} objects", objects.len()),
            Err(error) => assert!(error.to_string().contains(says), "{what}: the error says {says:?}: {error}"),
        }
        assert!(started.elapsed() < std::time::Duration::from_secs(5), "{what}: refused in {:?}", started.elapsed());
    }
}
