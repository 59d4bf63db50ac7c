//! Why a benchmark could not complete. A benchmark fails loudly: a missing tool, a tool that
//! failed, or a configuration that is not what it claims ends the run with the reason.

/// Why a benchmark could not complete.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// Building or using a Sluice lab failed.
    #[error("lab: {0}")]
    Lab(#[from] sluice_lab::LabError),
    /// Namespaces, links or addresses could not be made.
    #[error(transparent)]
    Datapath(#[from] sluice_datapath::DatapathError),
    /// A lab agent did not answer.
    #[error("agent API: {0}")]
    Api(#[from] sluice_api::ClientError),
    /// The lab did not behave as the benchmark requires (a sanity check failed).
    #[error("check failed: {0}")]
    Check(String),
    /// A tool the benchmark runs is not installed.
    #[error("{tool} not found: install the Debian package {package}")]
    MissingTool { tool: String, package: &'static str },
    /// A tool ran but failed, timed out or printed what the benchmark cannot read.
    #[error("{tool}: {message}")]
    Tool { tool: String, message: String },
    /// The options name something that does not exist (`--only`).
    #[error("{0}")]
    Invalid(String),
    /// The PNG chart could not be drawn.
    #[error("drawing the chart: {0}")]
    Chart(String),
    #[error("{action}: {source}")]
    Io {
        action: String,
        #[source]
        source: std::io::Error,
    },
}

impl BenchError {
    pub(crate) fn io(action: impl Into<String>, source: impl Into<std::io::Error>) -> Self {
        Self::Io { action: action.into(), source: source.into() }
    }

    pub(crate) fn tool(tool: impl Into<String>, message: impl Into<String>) -> Self {
        Self::Tool { tool: tool.into(), message: message.into() }
    }
}
