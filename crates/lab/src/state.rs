//! The lab's own records (what it created, so `down` can remove exactly that) and the pods'
//! runtime records (netns, shim process, cgroup). Kubernetes-shaped objects live in the local
//! store beside them; these files hold only what a container runtime would know.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use sluice_model::ServiceRanges;

use crate::LabError;

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LabState {
    pub name: String,
    pub host_routing: String,
    pub bridge: Option<String>,
    pub cgroup: Option<PathBuf>,
    pub nodes: Vec<NodeState>,
    /// The external client's namespace, once made.
    #[serde(default)]
    pub external_netns: Option<String>,
    /// Pods by `namespace/name`.
    #[serde(default)]
    pub pods: BTreeMap<String, PodRuntime>,
    /// Where services get cluster IPs: at most one CIDR per family, chosen at `up`. Labs
    /// made before services existed get the defaults.
    #[serde(default = "default_service_cidrs")]
    pub service_cidrs: Vec<IpNet>,
    /// Node ports of NodePort and LoadBalancer services, `FIRST-LAST`.
    #[serde(default = "default_node_port_range")]
    pub node_port_range: String,
    /// The lab's etcd server when it runs on etcd; `None`: the local store file.
    #[serde(default)]
    pub etcd: Option<EtcdState>,
}

/// A lab's etcd server: where it runs and how clients reach it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EtcdState {
    /// The control-plane host's namespace, where etcd listens on the underlay.
    pub netns: String,
    pub pid: Option<i32>,
    /// What the CLI uses (a client certificate of its own).
    pub client: sluice_state::etcd::EtcdConfig,
}

impl LabState {
    /// Where the lab's objects are: its etcd, reached from the control-plane namespace, or its
    /// store file.
    pub fn datastore(&self, names: &crate::names::LabNames) -> sluice_state::Datastore {
        match &self.etcd {
            Some(etcd) => sluice_state::Datastore::Etcd(sluice_state::EtcdAccess {
                config: etcd.client.clone(),
                netns: Some(sluice_datapath::netns::named_netns_path(&etcd.netns)),
            }),
            None => sluice_state::Datastore::Local(sluice_state::LocalStore::new(names.dir().join("store.json"))),
        }
    }
}

fn default_service_cidrs() -> Vec<IpNet> {
    ServiceRanges::default().cidrs
}

fn default_node_port_range() -> String {
    let ports = ServiceRanges::default().node_ports;
    format!("{}-{}", ports.start(), ports.end())
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeState {
    pub name: String,
    pub index: usize,
    pub netns: String,
    pub uplink_root_side: String,
    pub dir: PathBuf,
    pub socket: PathBuf,
    pub bpffs: PathBuf,
    pub cgroup: PathBuf,
    pub agent_pid: Option<i32>,
    /// The node's layer-7 proxy.
    #[serde(default)]
    pub proxy_pid: Option<i32>,
    /// Proxies replaced by a restart that still finish their connections.
    #[serde(default)]
    pub draining_proxy_pids: Vec<i32>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodRuntime {
    pub uid: String,
    pub container_id: String,
    pub node: String,
    pub netns: String,
    pub netns_path: PathBuf,
    pub cgroup: PathBuf,
    pub shim_pid: Option<i32>,
    pub dir: PathBuf,
    /// How long CNI ADD took, plugin start to result, as the runtime saw it.
    #[serde(default)]
    pub cni_add_micros: Option<u64>,
}

// === impl LabState ===

impl LabState {
    pub fn path(lab_dir: &Path) -> PathBuf {
        lab_dir.join("lab.json")
    }

    pub fn load(lab_dir: &Path) -> Result<Option<Self>, LabError> {
        match std::fs::read(Self::path(lab_dir)) {
            Ok(bytes) => {
                serde_json::from_slice(&bytes).map(Some).map_err(|e| LabError::io(format!("reading {}", Self::path(lab_dir).display()), e))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(LabError::io(format!("reading {}", Self::path(lab_dir).display()), e)),
        }
    }

    /// Written after every step of `up` and every pod change, so a failure part way leaves a
    /// record of what exists for `down` to remove.
    pub fn save(&self, lab_dir: &Path) -> Result<(), LabError> {
        std::fs::create_dir_all(lab_dir).map_err(|e| LabError::io(format!("creating {}", lab_dir.display()), e))?;
        let path = Self::path(lab_dir);
        let tmp = path.with_extension("tmp");
        let bytes = serde_json::to_vec_pretty(self).map_err(|e| LabError::io("encoding lab state", e))?;
        std::fs::write(&tmp, bytes).map_err(|e| LabError::io(format!("writing {}", tmp.display()), e))?;
        std::fs::rename(&tmp, &path).map_err(|e| LabError::io(format!("writing {}", path.display()), e))
    }

    pub fn node(&self, name: &str) -> Option<&NodeState> {
        self.nodes.iter().find(|n| n.name == name)
    }

    /// The lab's service ranges, as `up` recorded them.
    pub fn service_ranges(&self) -> Result<ServiceRanges, LabError> {
        let invalid = |e: sluice_model::service::RangeError| LabError::Invalid(format!("lab.json: {e}"));
        let node_ports = ServiceRanges::parse_node_ports(&self.node_port_range).map_err(invalid)?;
        ServiceRanges::new(self.service_cidrs.clone(), node_ports).map_err(invalid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lab_files_without_service_ranges_get_the_defaults() {
        let old = br#"{"name": "x", "hostRouting": "auto", "bridge": null, "cgroup": null, "nodes": []}"#;
        let state: LabState = serde_json::from_slice(old).unwrap();
        assert_eq!(state.service_ranges().unwrap(), ServiceRanges::default(), "defaults for an old lab.json");
    }
}
