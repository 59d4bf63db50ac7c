//! The agent's errors and the CNI error code each one maps to on the API.

use crate::db::DbError;
use crate::endpoints::EndpointStoreError;
use crate::identity::IdentityError;
use crate::ipam::IpamError;

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The request itself is wrong (CNI code 7, "invalid network config"; 4 for variables).
    #[error("{message}")]
    InvalidRequest { code: u32, message: String },
    /// The attachment is not known to this agent (CNI code 3).
    #[error("unknown attachment {0}")]
    UnknownAttachment(String),
    /// ADD of an attachment that exists and works: refused, the attachment is left as it is
    /// (plugin-specific CNI code 100).
    #[error("attachment {key} exists (interface {host_ifname} to {netns}); DEL it before adding it again")]
    AttachmentExists { key: String, host_ifname: String, netns: String },
    /// The attachment exists but is not as the agent programmed it (CHECK).
    #[error("attachment {key} is not as programmed: {reason}")]
    CheckFailed { key: String, reason: String },
    #[error("IPAM: {0}")]
    Ipam(#[from] IpamError),
    #[error("identity allocation: {0}")]
    Identity(#[from] IdentityError),
    #[error("endpoint store: {0}")]
    Endpoints(#[from] EndpointStoreError),
    #[error("database: {0}")]
    Db(#[from] DbError),
    #[error("events: {0}")]
    Events(#[from] crate::events::EventError),
    #[error("datapath: {0}")]
    Datapath(#[from] sluice_datapath::DatapathError),
    #[error("state source: {0}")]
    State(#[from] sluice_state::StoreError),
    /// A read or write of the Kubernetes API failed.
    #[error("kubernetes: {0}")]
    Kubernetes(#[from] sluice_kube::cluster::KubeError),
    /// Cluster mode: the pod is not in the agent's view of the cluster (yet); the runtime
    /// should try again later (CNI code 11).
    #[error("pod {namespace}/{name} is unknown to the agent after waiting {waited:?} for the {source_kind} state source (connected: {connected}); try again later")]
    PodUnknown { namespace: String, name: String, waited: std::time::Duration, source_kind: String, connected: bool },
    #[error("configuration: {0}")]
    Config(#[from] crate::config::ConfigError),
    /// Start-up could not complete.
    #[error("{action}: {source}")]
    Startup {
        action: String,
        #[source]
        source: std::io::Error,
    },
    /// The pin directory could not be made a bpffs: none is mounted there and the agent could
    /// not mount one (no CAP_SYS_ADMIN, no bpffs in the kernel, a path that cannot be created).
    #[error(
        "cannot make {path} the pin directory (a bpffs): {source}; mount a bpffs there before starting the agent \
         (mount -t bpf bpf {path}), or let the agent mount its own: it needs CAP_SYS_ADMIN and a kernel with bpffs"
    )]
    PinDirectory {
        path: std::path::PathBuf,
        #[source]
        source: sluice_datapath::DatapathError,
    },
    /// A blocking task of the agent panicked.
    #[error("{task} did not complete: {source}")]
    TaskFailed {
        task: &'static str,
        #[source]
        source: tokio::task::JoinError,
    },
    /// Services could not be programmed into the datapath.
    #[error("programming services: {0}")]
    Services(#[from] crate::services::program::ProgramError),
    /// Policy could not be compiled or programmed.
    #[error("policy: {0}")]
    Policy(String),
    /// A request named something that does not exist or is malformed.
    #[error("{0}")]
    BadRequest(String),
    /// `hostRouting: bpf` was asked for and the kernel cannot do it.
    #[error("host routing bpf was requested but is unavailable: {0}")]
    HostRoutingUnavailable(String),
    /// The node's endpoint slices cannot be planned.
    #[error("endpoint slices: {0}")]
    EndpointSlices(#[from] sluice_model::endpoint_slices::BatchError),
}

impl AgentError {
    /// The CNI specification's error code for this error.
    pub fn cni_code(&self) -> u32 {
        match self {
            AgentError::InvalidRequest { code, .. } => *code,
            AgentError::UnknownAttachment(_) => 3,
            // The specification reserves no code for it; 100 and up are the plugin's own.
            AgentError::AttachmentExists { .. } => 100,
            AgentError::Ipam(IpamError::Exhausted { .. }) => 11,
            AgentError::State(_) => 11,
            AgentError::PodUnknown { .. } => 11,
            // The state directory is full or read-only: nothing was kept, and the call works
            // again once the disk does.
            _ if self.database().is_some_and(DbError::is_transient) => 11,
            _ => 999,
        }
    }

    /// The agent database's error behind this one, if that is what failed.
    pub fn database(&self) -> Option<&DbError> {
        match self {
            AgentError::Db(e)
            | AgentError::Ipam(IpamError::Db(e))
            | AgentError::Identity(IdentityError::Db(e))
            | AgentError::Endpoints(EndpointStoreError::Db(e))
            | AgentError::Events(crate::events::EventError::Db(e)) => Some(e),
            _ => None,
        }
    }

    pub fn to_api(&self) -> sluice_api::ApiError {
        let mut details = String::new();
        let mut source = std::error::Error::source(self);
        while let Some(s) = source {
            if !details.is_empty() {
                details.push_str(": ");
            }
            details.push_str(&s.to_string());
            source = s.source();
        }
        sluice_api::ApiError { code: self.cni_code(), message: self.to_string(), details }
    }
}
