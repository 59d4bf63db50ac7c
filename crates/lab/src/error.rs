//! Errors of the lab. Each says what the lab was doing and, for user input, what to change.

#[derive(Debug, thiserror::Error)]
pub enum LabError {
    /// No lab of that name is running.
    #[error("lab {0:?} is not up (start it with `sluice up`)")]
    NotUp(String),
    /// `sluice up` on a lab that exists.
    #[error("lab {0:?} is already up (remove it with `sluice down` first)")]
    AlreadyUp(String),
    /// Bad input from the user: a manifest, a name, a flag.
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Manifest(#[from] sluice_model::ManifestError),
    /// A pod was not found.
    #[error("pod {namespace}/{name} not found")]
    PodNotFound { namespace: String, name: String },
    /// The CNI plugin failed for a pod.
    #[error("CNI {command} for pod {pod} failed: {message}")]
    Cni { command: &'static str, pod: String, message: String },
    /// A pod did not start in time or its command failed to start.
    #[error("pod {pod} did not start: {message}")]
    PodStart { pod: String, message: String },
    /// An agent did not become ready.
    #[error("agent of {node} not ready after {seconds} s (log: {log})")]
    AgentNotReady { node: String, seconds: u64, log: String },
    /// The machine has no cgroup v2 hierarchy.
    #[error("no cgroup2 mount found in /proc/self/mountinfo")]
    NoCgroup2,
    #[error(transparent)]
    Datapath(#[from] sluice_datapath::DatapathError),
    #[error(transparent)]
    Store(#[from] sluice_state::StoreError),
    #[error("agent API: {0}")]
    Api(#[from] sluice_api::ClientError),
    #[error("{action}: {source}")]
    Io {
        action: String,
        #[source]
        source: std::io::Error,
    },
}

impl LabError {
    pub(crate) fn io(action: impl Into<String>, source: impl Into<std::io::Error>) -> Self {
        Self::Io { action: action.into(), source: source.into() }
    }
}
