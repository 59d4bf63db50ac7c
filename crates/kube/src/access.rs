//! How the agent reaches the API server (`state.kubernetes`): a kubeconfig file, or, when none
//! is named, what kube infers — the pod's service account inside a cluster, else
//! `$KUBECONFIG` or `~/.kube/config`.

use std::path::PathBuf;

use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::Client;
use serde::{Deserialize, Serialize};

use crate::cluster::KubeError;

/// The agent's `state.kubernetes`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct KubeAccess {
    /// A kubeconfig file (its current context is used); unset: inferred.
    #[serde(default)]
    pub kubeconfig: Option<PathBuf>,
    /// How long joining waits for the Node's `spec.podCIDRs` (when `podCIDRs` is not set).
    #[serde(default = "default_pod_cidr_wait")]
    pub pod_cidr_wait_seconds: u64,
}

impl Default for KubeAccess {
    fn default() -> Self {
        Self { kubeconfig: None, pod_cidr_wait_seconds: default_pod_cidr_wait() }
    }
}

fn default_pod_cidr_wait() -> u64 {
    60
}

/// A client as `access` says.
pub async fn connect(access: &KubeAccess) -> Result<Client, KubeError> {
    let invalid = |what: String| KubeError::Invalid { action: "connecting to the Kubernetes API".into(), what };
    let config = match &access.kubeconfig {
        Some(path) => {
            let file = Kubeconfig::read_from(path).map_err(|e| invalid(format!("{}: {e}", path.display())))?;
            kube::Config::from_custom_kubeconfig(file, &KubeConfigOptions::default())
                .await
                .map_err(|e| invalid(format!("{}: {e}", path.display())))?
        }
        None => kube::Config::infer().await.map_err(|e| invalid(format!("no kubeconfig named and none found: {e}")))?,
    };
    Client::try_from(config).map_err(|e| invalid(e.to_string()))
}
