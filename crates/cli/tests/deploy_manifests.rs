//! The install in `deploy/` as a cluster would read it: every document is a well-formed
//! object of its kind (no field the API would drop), the ClusterRole grants exactly what the
//! agent asks of the API server, the ConfigMap is a valid agent configuration, and the
//! DaemonSet mounts and probes what that configuration names. No API server runs in CI: the
//! server-side dry run (`kubectl apply --dry-run=server`) is for the tests that read
//! `SLUICE_KUBE_BIN`.

#![allow(clippy::expect_used, clippy::unwrap_used)] // a test fails loudly on what it did not expect

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

fn deploy_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../deploy")
}

/// Every YAML document under `dir`, with the file it came from.
fn documents(dir: &Path) -> Vec<(String, Value)> {
    let mut files: Vec<PathBuf> = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "yaml") {
                files.push(path);
            }
        }
    }
    files.sort();
    let mut out = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        for doc in serde_yaml_ng::Deserializer::from_str(&text) {
            let value = Value::deserialize(doc).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
            if !value.is_null() {
                out.push((file.strip_prefix(dir).unwrap().display().to_string(), value));
            }
        }
    }
    out
}

use serde::Deserialize;

/// Drops nulls and empty maps, which a typed round trip may add or remove without meaning.
fn normalized(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k.clone(), normalized(v)))
                .filter(|(_, v)| !matches!(v, Value::Object(m) if m.is_empty()))
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(normalized).collect()),
        other => other.clone(),
    }
}

/// The document as `T`; fails when a field would be dropped (a typo, a misplaced key).
fn typed<T: DeserializeOwned + Serialize>(file: &str, value: &Value) -> T {
    let object: T = serde_json::from_value(value.clone()).unwrap_or_else(|e| panic!("{file}: {e}"));
    let back = normalized(&serde_json::to_value(&object).unwrap());
    assert_eq!(back, normalized(value), "{file}: a field is not part of its kind, or misplaced");
    object
}

fn find<'a>(docs: &'a [(String, Value)], kind: &str) -> Vec<&'a (String, Value)> {
    docs.iter().filter(|(_, v)| v["kind"] == kind).collect()
}

#[test]
fn every_document_is_an_object_of_its_kind() {
    let docs = documents(&deploy_dir());
    let mut kinds = BTreeSet::new();
    for (file, value) in &docs {
        let kind = value["kind"].as_str().unwrap_or_default().to_owned();
        match kind.as_str() {
            "Namespace" => drop(typed::<Namespace>(file, value)),
            "ServiceAccount" => drop(typed::<ServiceAccount>(file, value)),
            "ClusterRole" => drop(typed::<ClusterRole>(file, value)),
            "ClusterRoleBinding" => drop(typed::<ClusterRoleBinding>(file, value)),
            "ConfigMap" => drop(typed::<ConfigMap>(file, value)),
            "DaemonSet" => drop(typed::<DaemonSet>(file, value)),
            "CustomResourceDefinition" => drop(typed::<CustomResourceDefinition>(file, value)),
            other => panic!("{file}: unexpected kind {other:?}"),
        }
        kinds.insert(kind);
    }
    assert_eq!(kinds.len(), 7, "{kinds:?}");
    assert_eq!(find(&docs, "CustomResourceDefinition").len(), 6);
}

#[test]
fn the_cluster_role_grants_exactly_what_the_agent_asks_for() {
    let docs = documents(&deploy_dir());
    let (file, role) = find(&docs, "ClusterRole")[0];
    let role: ClusterRole = typed(file, role);
    let mut granted = BTreeSet::new();
    for rule in role.rules.unwrap_or_default() {
        assert!(rule.resource_names.is_none() && rule.non_resource_urls.is_none());
        for group in rule.api_groups.unwrap_or_default() {
            for resource in rule.resources.clone().unwrap_or_default() {
                for verb in &rule.verbs {
                    assert!(group != "*" && resource != "*" && verb != "*", "no wildcards");
                    assert!(granted.insert((group.clone(), resource.clone(), verb.clone())), "{group}/{resource} {verb} granted twice");
                }
            }
        }
    }
    let needed = sluice_kube::rbac::needed();
    let extra: Vec<_> = granted.difference(&needed).collect();
    let missing: Vec<_> = needed.difference(&granted).collect();
    assert!(extra.is_empty(), "granted but never used (least privilege): {extra:?}");
    assert!(missing.is_empty(), "used but not granted: {missing:?}");

    let (file, binding) = find(&docs, "ClusterRoleBinding")[0];
    let binding: ClusterRoleBinding = typed(file, binding);
    let (file, account) = find(&docs, "ServiceAccount")[0];
    let account: ServiceAccount = typed(file, account);
    assert_eq!(binding.role_ref.name, role.metadata.name.unwrap());
    let subject = &binding.subjects.unwrap()[0];
    assert_eq!((Some(&subject.name), subject.namespace.as_ref()), (account.metadata.name.as_ref(), account.metadata.namespace.as_ref()));
}

#[test]
fn the_daemonset_runs_the_configured_agent_with_what_it_needs_of_the_host() {
    let docs = documents(&deploy_dir());
    let (file, map) = find(&docs, "ConfigMap")[0];
    let map: ConfigMap = typed(file, map);
    let yaml = &map.data.unwrap()["agent.yaml"];
    let config = sluice_agent::AgentConfig::parse_for_node(Path::new("agent.yaml"), yaml, Some("node-1"))
        .expect("the ConfigMap is a valid configuration");
    assert!(config.state.is_kubernetes());

    let (file, ds) = find(&docs, "DaemonSet")[0];
    let ds: DaemonSet = typed(file, ds);
    let namespace = ds.metadata.namespace.clone().unwrap();
    assert_eq!(map.metadata.namespace.as_deref(), Some(namespace.as_str()));
    let pod = ds.spec.unwrap().template.spec.unwrap();
    assert_eq!(pod.host_network, Some(true));
    assert_eq!(pod.service_account_name.as_deref(), Some("sluice-agent"));

    // The host paths the agent and the plugin use, and how they are shared.
    let volumes = pod.volumes.unwrap_or_default();
    let host_path = |name: &str| volumes.iter().find(|v| v.name == name).and_then(|v| v.host_path.as_ref()).map(|h| h.path.clone());
    let agent = &pod.containers[0];
    let mounts = agent.volume_mounts.clone().unwrap_or_default();
    let mount = |path: &Path| {
        mounts.iter().find(|m| Path::new(&m.mount_path) == path).unwrap_or_else(|| panic!("nothing is mounted at {}", path.display()))
    };
    let bpffs = mount(&config.bpffs);
    assert_eq!(bpffs.mount_propagation.as_deref(), Some("Bidirectional"), "pins must reach the host");
    assert_eq!(host_path(&bpffs.name).as_deref(), Some("/sys/fs/bpf"));
    assert_eq!(agent.security_context.as_ref().and_then(|s| s.privileged), Some(true), "Bidirectional needs privileged");
    let netns = mount(Path::new("/var/run/netns"));
    assert_eq!(netns.mount_propagation.as_deref(), Some("HostToContainer"));
    let run = mount(config.socket.parent().unwrap());
    assert_eq!(
        host_path(&run.name),
        Some(config.socket.parent().unwrap().display().to_string()),
        "the plugin on the host reaches the socket"
    );
    assert_eq!(host_path(&mount(&config.state_dir).name), Some(config.state_dir.display().to_string()), "state survives the pod");
    let cgroup = mount(config.services.socket_lb_cgroup.as_deref().unwrap());
    assert_eq!(host_path(&cgroup.name).as_deref(), Some("/sys/fs/cgroup"));

    // The init step installs the plugin and names the socket the agent serves.
    let init = &pod.init_containers.unwrap()[0];
    let command = init.command.clone().unwrap();
    assert_eq!(&command[..2], ["sluice-cni", "install"]);
    let socket_arg = command.iter().position(|a| a == "--agent-socket").map(|i| command[i + 1].clone());
    assert_eq!(socket_arg, Some(config.socket.display().to_string()));
    for dir in ["/opt/cni/bin", "/etc/cni/net.d"] {
        let flag = if dir.contains("bin") { "--bin-dir" } else { "--conf-dir" };
        let at = command.iter().position(|a| a == flag).map(|i| command[i + 1].clone()).unwrap();
        let m = init.volume_mounts.as_ref().unwrap().iter().find(|m| m.mount_path == at).unwrap();
        assert_eq!(host_path(&m.name).as_deref(), Some(dir));
    }
    assert_eq!(init.image, agent.image, "one image");

    // Probes on the agent's own endpoint.
    let port = config.metrics_address.expect("probes need the metrics address").port();
    for (probe, path) in [(&agent.readiness_probe, "/readyz"), (&agent.liveness_probe, "/healthz")] {
        let get = probe.as_ref().and_then(|p| p.http_get.as_ref()).unwrap();
        assert_eq!(get.path.as_deref(), Some(path));
        assert_eq!(get.port, k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(i32::from(port)));
        assert_eq!(get.host.as_deref(), Some("127.0.0.1"));
    }
    let args = agent.command.clone().unwrap();
    assert!(args.contains(&"--node-name=$(NODE_NAME)".to_owned()), "{args:?}");
    assert!(args.contains(&"--config=/etc/sluice/agent.yaml".to_owned()));
    assert!(mounts.iter().any(|m| m.mount_path == "/etc/sluice" && m.read_only == Some(true)));

    // The layer-7 proxy: the same configuration, the agent's maps and rules, no privilege.
    let proxy = pod.containers.iter().find(|c| c.name == "proxy").expect("a proxy container");
    assert_eq!(proxy.image, agent.image, "one image");
    let args = proxy.command.clone().unwrap();
    assert_eq!(&args[..2], ["sluice", "proxy"]);
    assert!(args.contains(&"--config=/etc/sluice/agent.yaml".to_owned()) && args.contains(&"--node-name=$(NODE_NAME)".to_owned()));
    let security = proxy.security_context.clone().unwrap();
    assert_eq!(security.privileged, None, "the proxy is not privileged");
    let added = security.capabilities.and_then(|c| c.add).unwrap_or_default();
    assert_eq!(added, ["NET_ADMIN", "BPF"]);
    let proxy_mounts = proxy.volume_mounts.clone().unwrap_or_default();
    for dir in [&config.bpffs, &config.state_dir] {
        let m = proxy_mounts.iter().find(|m| Path::new(&m.mount_path) == dir.as_path());
        let m = m.unwrap_or_else(|| panic!("the proxy needs {}", dir.display()));
        assert_eq!(host_path(&m.name), host_path(&mount(dir).name), "the proxy sees the agent's {}", dir.display());
    }
    let state = proxy_mounts.iter().find(|m| Path::new(&m.mount_path) == config.state_dir.as_path()).unwrap();
    assert_ne!(state.read_only, Some(true), "the proxy writes its acknowledgement and flow socket in the state directory");
}
