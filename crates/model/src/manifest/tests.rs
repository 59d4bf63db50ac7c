//! Table-driven tests of `parse_manifests`: valid files, then one case per error.

use super::*;

const POD: &str = "apiVersion: v1
kind: Pod
metadata:
  name: web
spec:
  containers:
  - name: web
    command: [sleep, infinity]
";

fn parse(text: &str) -> Result<Vec<Object>, ManifestError> {
    parse_manifests("pods.yaml", text)
}

fn summary(objects: &[Object]) -> Vec<(Kind, Option<&str>, &str)> {
    objects.iter().map(|o| (o.kind(), o.namespace(), o.name())).collect()
}

#[test]
fn valid_multi_document_file() {
    let text = r#"# Leading comment, then an explicit start.
---
apiVersion: v1
kind: Namespace
metadata:
  name: shop
  namespace: ignored   # cluster-scoped: cleared, as the API server does
  labels: {team: payments, "app.kubernetes.io/part-of": shop, empty: ""}
---
# comment-only document
---
---
apiVersion: v1
kind: Pod
metadata:
  name: web-0.frontend
  namespace: shop
  labels:
    app: web
    example.com/Tier: Front_End.v1
spec:
  nodeName: node-1.lab
  containers:
  - name: web
    command: [sleep, infinity]
  - name: sidecar
---
apiVersion: v1
kind: Pod
metadata: {name: web}
spec: {containers: [{name: web}]}
---
"#;
    let objects = match parse(text) {
        Ok(objects) => objects,
        Err(error) => panic!("expected the file to parse, got: {error}"),
    };
    assert_eq!(
        summary(&objects),
        [(Kind::Namespace, None, "shop"), (Kind::Pod, Some("shop"), "web-0.frontend"), (Kind::Pod, Some("default"), "web"),],
        "objects in document order, pod namespace defaulted, namespace's namespace cleared"
    );
    assert_eq!(objects[0].labels().get("empty").map(String::as_str), Some(""), "empty value");
    let Object::Pod(pod) = &objects[1] else { panic!("expected a pod, got {:?}", objects[1]) };
    let spec = pod.spec.as_ref();
    assert_eq!(spec.and_then(|s| s.node_name.as_deref()), Some("node-1.lab"), "nodeName");
    assert_eq!(spec.map(|s| s.containers.len()), Some(2), "both containers");
}

#[test]
fn files_without_objects_are_empty() {
    for text in ["", "\n", "# only a comment\n", "---\n", "---\n# c\n---\n...\n"] {
        let result = parse(text);
        assert!(matches!(&result, Ok(objects) if objects.is_empty()), "{text:?}: expected no objects, got {result:?}");
    }
}

#[test]
fn same_name_in_other_namespace_or_kind_is_not_a_duplicate() {
    let text = format!(
        "{POD}---\n{}---\n{}",
        POD.replace("name: web\nspec", "name: web\n  namespace: shop\nspec"),
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: web}\n"
    );
    let result = parse(&text).map(|objects| objects.len());
    assert_eq!(result.ok(), Some(3), "three distinct objects");
}

#[test]
fn kubectl_generated_output_is_accepted() {
    // What `kubectl run --dry-run=client -o yaml` emits, plus common fields: the strict
    // unknown-field check must not trip over nulls, empty objects or nested structures.
    let text = r#"
apiVersion: v1
kind: Pod
metadata:
  creationTimestamp: null
  labels: {run: web}
  annotations: {note: "x"}
  name: web
spec:
  containers:
  - image: nginx
    name: web
    args: ["-g", "daemon off;"]
    ports: [{containerPort: 80, protocol: TCP, name: http}]
    env: [{name: A, value: "1"}, {name: B, valueFrom: {fieldRef: {fieldPath: status.podIP}}}]
    resources: {limits: {memory: 64Mi, cpu: 500m}}
    securityContext: {capabilities: {add: [NET_ADMIN]}}
    readinessProbe: {httpGet: {path: /, port: http}}
    volumeMounts: [{name: data, mountPath: /data}]
  volumes: [{name: data, emptyDir: {}}]
  hostNetwork: false
  dnsPolicy: ClusterFirst
  restartPolicy: Always
status: {}
"#;
    let result = parse(text);
    assert!(result.is_ok(), "expected the pod to parse, got {result:?}");
}

#[test]
fn yaml_merge_keys_are_applied() {
    let text = "apiVersion: v1
kind: Pod
metadata: {name: web, labels: &common {app: web}}
spec:
  containers:
  - &base {name: a, command: [sleep, '1']}
  - <<: *base
    name: b
";
    let containers = parse(text).ok().and_then(|objects| match objects.first() {
        Some(Object::Pod(pod)) => pod.spec.as_ref().map(|s| s.containers.clone()),
        _ => None,
    });
    let commands: Option<Vec<_>> = containers.map(|cs| cs.into_iter().map(|c| (c.name, c.command)).collect());
    let sleep = Some(vec!["sleep".to_owned(), "1".to_owned()]);
    assert_eq!(commands, Some(vec![("a".to_owned(), sleep.clone()), ("b".to_owned(), sleep)]), "container b inherits command from a");
}

/// A pod manifest with `field` spliced into the first container.
fn pod_with_container(field: &str) -> String {
    format!("apiVersion: v1\nkind: Pod\nmetadata: {{name: web}}\nspec:\n  containers:\n  - name: web\n    {field}\n")
}

/// A pod manifest with `labels` (flow mapping) as metadata.labels.
fn pod_with_labels(labels: &str) -> String {
    format!("apiVersion: v1\nkind: Pod\nmetadata: {{name: web, labels: {labels}}}\nspec: {{containers: [{{name: web}}]}}\n")
}

#[test]
fn errors_name_file_document_and_field() {
    let ns = |meta: &str| format!("apiVersion: v1\nkind: Namespace\nmetadata: {meta}\n");
    let ok_ns = ns("{name: shop}");
    // (case, documents, expected document number, fragments the message must contain)
    let cases: Vec<(&str, Vec<String>, usize, Vec<&str>)> = vec![
        (
            "bad YAML reports line and column in the file",
            vec![ok_ns.clone(), "apiVersion: v1\nkind: Pod\nmetadata:\n  name: [web\n".into()],
            2,
            vec!["invalid YAML", "line 9 column"],
        ),
        ("duplicate key", vec!["kind: Pod\nkind: Pod\n".into()], 1, vec!["invalid YAML", "duplicate"]),
        ("not an object", vec!["- a\n- b\n".into()], 1, vec!["expected an object", "found a list"]),
        (
            "missing apiVersion",
            vec!["kind: Pod\nmetadata: {name: web}\n".into()],
            1,
            vec![r#"(Pod "web"): apiVersion: required value is missing"#],
        ),
        ("missing kind", vec!["apiVersion: v1\nmetadata: {name: web}\n".into()], 1, vec!["kind: required value is missing"]),
        ("kind not a string", vec!["apiVersion: v1\nkind: [Pod]\n".into()], 1, vec!["kind: expected a string, found a list"]),
        (
            "unknown kind",
            vec![ok_ns.clone(), "apiVersion: v1\nkind: Widget\nmetadata: {name: w}\n".into()],
            2,
            vec![
                r#"(Widget "w"): kind: "Widget" is not supported (supported: v1 Namespace, v1 Pod, v1 Service, discovery.k8s.io/v1 EndpointSlice, networking.k8s.io/v1 NetworkPolicy, sluice.dev/v1 SluiceNetworkPolicy, sluice.dev/v1 SluiceClusterwideNetworkPolicy)"#,
            ],
        ),
        (
            "wrong apiVersion",
            vec![POD.replace("apiVersion: v1", "apiVersion: apps/v1")],
            1,
            vec![r#"(Pod "web"): apiVersion: Pod must have apiVersion "v1", found "apps/v1""#],
        ),
        ("missing name", vec![ns("{labels: {a: b}}")], 1, vec!["(Namespace): metadata.name: required value is missing"]),
        ("empty name", vec![ns("{name: ''}")], 1, vec!["(Namespace): metadata.name: required value is missing"]),
        (
            "namespace name not a DNS-1123 label",
            vec![ns("{name: shop.eu}")],
            1,
            vec![r#"metadata.name: "shop.eu" is invalid: a lowercase RFC 1123 label"#],
        ),
        ("uppercase namespace name", vec![ns("{name: Shop}")], 1, vec![r#"(Namespace "Shop"): metadata.name: "Shop" is invalid"#]),
        (
            "pod name not a DNS-1123 subdomain",
            vec![POD.replace("name: web\nspec", "name: web_1\nspec")],
            1,
            vec![r#"metadata.name: "web_1" is invalid: a lowercase RFC 1123 subdomain"#],
        ),
        (
            "invalid metadata.namespace",
            vec![POD.replace("name: web\nspec", "name: web\n  namespace: Shop\nspec")],
            1,
            vec![r#"metadata.namespace: "Shop" is invalid: a lowercase RFC 1123 label"#],
        ),
        (
            "label key name part",
            vec![pod_with_labels("{-bad: x}")],
            1,
            vec![r#"(Pod "web"): metadata.labels: key "-bad" is invalid: name part must consist of"#],
        ),
        ("label key a/b/c", vec![pod_with_labels("{a/b/c: x}")], 1, vec![r#"metadata.labels: key "a/b/c" is invalid: a qualified name"#]),
        (
            "label key uppercase prefix",
            vec![pod_with_labels("{Example.com/app: x}")],
            1,
            vec![r#"metadata.labels: key "Example.com/app" is invalid: prefix part"#],
        ),
        (
            "label value",
            vec![pod_with_labels("{app/x: -web}")],
            1,
            vec![r#"metadata.labels["app/x"]: "-web" is invalid: a valid label must be"#],
        ),
        (
            "label value too long",
            vec![pod_with_labels(&format!("{{app: {}}}", "v".repeat(64)))],
            1,
            vec![r#"metadata.labels["app"]"#, "no more than 63 characters"],
        ),
        (
            "label value not a string",
            vec![pod_with_labels("{version: 1}")],
            1,
            vec!["metadata.labels.version: invalid type: integer `1`, expected a string"],
        ),
        (
            "namespace labels too",
            vec![ns("{name: shop, labels: {bad key: x}}")],
            1,
            vec![r#"(Namespace "shop"): metadata.labels: key "bad key" is invalid"#],
        ),
        (
            "pod without spec",
            vec!["apiVersion: v1\nkind: Pod\nmetadata: {name: web}\n".into()],
            1,
            vec!["spec.containers: required value is missing"],
        ),
        (
            "no containers",
            vec!["apiVersion: v1\nkind: Pod\nmetadata: {name: web}\nspec: {containers: []}\n".into()],
            1,
            vec!["spec.containers: at least one container is required"],
        ),
        (
            "container without name",
            vec!["apiVersion: v1\nkind: Pod\nmetadata: {name: web}\nspec: {containers: [{image: x}]}\n".into()],
            1,
            vec!["spec.containers[0].name: required value is missing"],
        ),
        (
            "container name invalid",
            vec![pod_with_container("image: x").replace("- name: web", "- name: Web")],
            1,
            vec![r#"spec.containers[0].name: "Web" is invalid"#],
        ),
        ("empty command", vec![pod_with_container("command: []")], 1, vec!["spec.containers[0].command: must not be an empty list"]),
        (
            "command not a list",
            vec![pod_with_container("command: sleep")],
            1,
            vec!["spec.containers[0].command: invalid type: string \"sleep\", expected a sequence"],
        ),
        (
            "second container's command",
            vec!["apiVersion: v1\nkind: Pod\nmetadata: {name: web}\nspec: {containers: [{name: a}, {name: b, command: []}]}\n".into()],
            1,
            vec!["spec.containers[1].command: must not be an empty list"],
        ),
        (
            "duplicate container names",
            vec!["apiVersion: v1\nkind: Pod\nmetadata: {name: web}\nspec: {containers: [{name: a}, {name: a}]}\n".into()],
            1,
            vec![r#"spec.containers[1].name: duplicate container name "a""#],
        ),
        ("invalid nodeName", vec![POD.replace("spec:\n", "spec:\n  nodeName: Node_1\n")], 1, vec![r#"spec.nodeName: "Node_1" is invalid"#]),
        ("unknown metadata field", vec![ns("{name: shop, lables: {a: b}}")], 1, vec!["metadata.lables: unknown field"]),
        ("unknown container field", vec![pod_with_container("comand: [sleep]")], 1, vec!["spec.containers[0].comand: unknown field"]),
        (
            "duplicate object",
            vec![POD.into(), ok_ns.clone(), POD.into()],
            3,
            vec![r#"(Pod "web"): duplicate object: Pod "web" in namespace "default" is already defined in document 1"#],
        ),
        (
            "duplicate with explicit default namespace",
            vec![POD.into(), POD.replace("name: web\nspec", "name: web\n  namespace: default\nspec")],
            2,
            vec!["already defined in document 1"],
        ),
        (
            "empty documents count toward the index",
            vec![ok_ns.clone(), "# nothing\n".into(), "".into(), ns("{name: Shop}")],
            4,
            vec![r#"metadata.name: "Shop" is invalid"#],
        ),
        ("the first bad document wins", vec![ok_ns.clone(), ns("{name: A}"), ns("{name: B}")], 2, vec![r#"metadata.name: "A" is invalid"#]),
    ];
    for (case, documents, document, fragments) in cases {
        let text = documents.join("---\n");
        let error = match parse(&text) {
            Ok(objects) => panic!("{case}: expected an error, parsed {:?}", summary(&objects)),
            Err(error) => error,
        };
        let message = error.to_string();
        let prefix = format!("pods.yaml: document {document}");
        assert!(message.starts_with(&prefix), "{case}: expected {prefix:?} at the start of {message:?}");
        assert_eq!(error.document().index, document, "{case}: document index of {message:?}");
        for fragment in fragments {
            assert!(message.contains(fragment), "{case}: expected {fragment:?} in {message:?}");
        }
    }
}

#[test]
fn error_variants_carry_structured_fields() {
    let error = parse(&pod_with_labels("{-bad: x}")).err();
    let Some(ManifestError::InvalidField { doc, path, reason }) = error else {
        panic!("expected InvalidField, got {error:?}");
    };
    assert_eq!(doc.kind.as_deref(), Some("Pod"), "kind recorded");
    assert_eq!(doc.name.as_deref(), Some("web"), "name recorded");
    assert_eq!(path, "metadata.labels", "path of a bad key is the map");
    assert!(reason.starts_with(r#"key "-bad" is invalid: name part"#), "reason: {reason}");
}
