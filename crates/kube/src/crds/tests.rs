//! The definitions against what the API server requires of them and against `deploy/crds/`.
//! (No API server runs here; the deploy test with a real one reads `SLUICE_KUBE_BIN`.)

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde_json::Value;
use sluice_state::{EndpointRecord, IdentityRecord, NodeRecord};

use super::*;

fn schema_of(crd: &CustomResourceDefinition) -> Value {
    let schema = crd.spec.versions[0].schema.as_ref().and_then(|s| s.open_api_v3_schema.as_ref()).expect("every version has a schema");
    serde_json::to_value(schema).expect("a schema serializes")
}

#[test]
fn deploy_crds_are_exactly_what_the_types_generate() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../deploy/crds");
    let mut on_disk: BTreeMap<String, String> = BTreeMap::new();
    for entry in std::fs::read_dir(&dir).expect("deploy/crds is there") {
        let entry = entry.expect("a directory entry");
        let name = entry.file_name().to_string_lossy().into_owned();
        on_disk.insert(name, std::fs::read_to_string(entry.path()).expect("a definition reads"));
    }
    let generated: BTreeMap<String, String> =
        definitions().expect("definitions generate").iter().map(|c| (file_name(c), render(c).expect("renders"))).collect();
    assert_eq!(
        on_disk.keys().collect::<Vec<_>>(),
        generated.keys().collect::<Vec<_>>(),
        "deploy/crds holds other files than the types generate: run `sluice crds --out deploy/crds`"
    );
    for (name, text) in &generated {
        assert!(on_disk[name] == *text, "deploy/crds/{name} is stale: run `sluice crds --out deploy/crds`");
    }
}

/// The rules of a structural schema that a generator can break: every node says its type (or
/// is an int-or-string), objects with properties are objects, arrays have items, and no
/// `additionalProperties` sits beside `properties` or is `false`; no references.
fn check_structural(path: &str, node: &Value, problems: &mut Vec<String>) {
    let Some(map) = node.as_object() else {
        problems.push(format!("{path}: not an object"));
        return;
    };
    let int_or_string = map.get("x-kubernetes-int-or-string") == Some(&Value::Bool(true));
    let ty = map.get("type").and_then(Value::as_str);
    if ty.is_none() && !int_or_string {
        problems.push(format!("{path}: no type"));
    }
    for banned in ["$ref", "definitions", "$schema"] {
        if map.contains_key(banned) {
            problems.push(format!("{path}: has {banned}"));
        }
    }
    if let Some(properties) = map.get("properties").and_then(Value::as_object) {
        if ty != Some("object") {
            problems.push(format!("{path}: properties on a {ty:?}"));
        }
        if map.contains_key("additionalProperties") {
            problems.push(format!("{path}: additionalProperties beside properties"));
        }
        for (name, inner) in properties {
            check_structural(&format!("{path}.{name}"), inner, problems);
        }
    }
    match map.get("additionalProperties") {
        Some(Value::Bool(false)) => problems.push(format!("{path}: additionalProperties: false")),
        Some(inner @ Value::Object(_)) => check_structural(&format!("{path}[*]"), inner, problems),
        _ => {}
    }
    if ty == Some("array") {
        match map.get("items") {
            Some(items) => check_structural(&format!("{path}[]"), items, problems),
            None => problems.push(format!("{path}: an array without items")),
        }
    }
    for key in ["allOf", "anyOf", "oneOf"] {
        if map.contains_key(key) {
            problems.push(format!("{path}: {key} (the generator should have inlined it)"));
        }
    }
}

#[test]
fn every_schema_is_structural() {
    let all = definitions().expect("definitions generate");
    assert_eq!(all.len(), 6);
    for crd in &all {
        let mut problems = Vec::new();
        check_structural(&crd.spec.names.kind, &schema_of(crd), &mut problems);
        assert!(problems.is_empty(), "{} is not structural:\n{}", crd.spec.names.kind, problems.join("\n"));
        assert_eq!(crd.spec.group, "sluice.dev");
        assert_eq!(crd.metadata.name.as_deref(), Some(format!("{}.sluice.dev", crd.spec.names.plural).as_str()));
    }
}

#[test]
fn the_structural_check_finds_what_it_looks_for() {
    let bad = serde_json::json!({
        "type": "object",
        "properties": { "a": { "description": "no type" }, "b": { "type": "array" } },
        "additionalProperties": false,
    });
    let mut problems = Vec::new();
    check_structural("x", &bad, &mut problems);
    assert_eq!(problems.len(), 4, "{problems:?}");
}

#[test]
fn scopes_and_bounds_are_what_the_api_server_should_enforce() {
    let all = definitions().expect("definitions generate");
    let by_kind: BTreeMap<&str, &CustomResourceDefinition> = all.iter().map(|c| (c.spec.names.kind.as_str(), c)).collect();
    for (kind, scope) in [
        ("SluiceNetworkPolicy", "Namespaced"),
        ("SluiceClusterwideNetworkPolicy", "Cluster"),
        ("SluiceIdentity", "Cluster"),
        ("SluiceEndpoint", "Namespaced"),
        ("SluiceEndpointSlice", "Namespaced"),
        ("SluiceNode", "Cluster"),
    ] {
        assert_eq!(by_kind[kind].spec.scope, scope, "{kind}");
    }
    let endpoint = schema_of(by_kind["SluiceEndpoint"]);
    let identity = &endpoint["properties"]["spec"]["properties"]["identity"];
    assert_eq!(identity["minimum"], 256.0);
    assert_eq!(identity["maximum"], 16_777_215.0);
    assert_eq!(endpoint["properties"]["spec"]["properties"]["addresses"]["maxItems"], 2);
    let policy = schema_of(by_kind["SluiceNetworkPolicy"]);
    let port = &policy["properties"]["spec"]["properties"]["ingress"]["items"]["properties"]["toPorts"]["items"]["properties"]["ports"]
        ["items"]["properties"]["port"];
    assert_eq!(port["x-kubernetes-int-or-string"], true, "{port}");
    let rules = schema_of(by_kind["SluiceIdentity"])["x-kubernetes-validations"].as_array().cloned().unwrap_or_default();
    assert_eq!(rules.len(), 2, "the name rule and the immutability rule");
}

#[test]
fn records_survive_the_trip_through_their_objects() {
    let identity = IdentityRecord { id: 4096, labels: BTreeMap::from([("k8s:app".into(), "web".into())]) };
    assert_eq!(SluiceIdentity::from_record(&identity).to_record(), Ok(identity));

    let endpoint = EndpointRecord {
        namespace: "shop".into(),
        name: "web-1".into(),
        node: "node-2".into(),
        ips: vec!["198.19.1.7".parse().expect("an address"), "2001:db8::7".parse().expect("an address")],
        identity: 4096,
    };
    assert_eq!(SluiceEndpoint::from_record(&endpoint).to_record(), Ok(endpoint));

    let slice = sluice_model::SluiceEndpointSlice {
        name: "node-2-4096-0".into(),
        namespace: "shop".into(),
        identity: 4096,
        node: "node-2".into(),
        endpoints: vec![sluice_model::SliceEndpoint { name: "web-1".into(), addresses: vec!["198.19.1.7".parse().expect("an address")] }],
    };
    assert_eq!(SluiceEndpointSlice::from_record(&slice).to_record(), Ok(slice));

    let node = NodeRecord {
        name: "node-2".into(),
        addresses: vec!["198.18.0.12".parse().expect("an address")],
        pod_cidrs: vec!["198.19.1.0/24".parse().expect("a CIDR")],
        host_routing: "bpf".into(),
        health: "ready".into(),
        agent_version: "0.1.0".into(),
        registered: String::new(),
    };
    assert_eq!(SluiceNode::from_record(&node).to_record(), Ok(node));
}

#[test]
fn objects_that_break_their_kind_are_named_in_the_error() {
    let mut identity = SluiceIdentity::from_record(&IdentityRecord { id: 300, labels: BTreeMap::new() });
    identity.metadata.name = Some("web".into());
    let error = identity.to_record().expect_err("a name that is no number");
    assert_eq!(error.to_string(), "SluiceIdentity web: the name is not an identity number");

    let mut node = SluiceNode::new("node-1", SluiceNodeSpec::default());
    node.spec.pod_cidrs = vec!["198.19.1.0/33".into()];
    let error = node.to_record().expect_err("a CIDR that is none");
    assert!(error.to_string().contains("podCIDRs: \"198.19.1.0/33\""), "{error}");

    let mut endpoint = SluiceEndpoint::new("web-1", SluiceEndpointSpec { node: "n".into(), addresses: vec![], identity: 300 });
    endpoint.metadata.namespace = None;
    assert!(endpoint.to_record().is_err());
}
