//! The plugin's one error type. Every failure the runtime can see is a [`CniError`], which knows
//! its CNI error code (specification section "Error") and renders the error object the runtime
//! reads from stdout.

use std::io;

use serde::Serialize;

/// Error codes the CNI specification reserves (1-99); 100 and above are plugin-specific.
pub mod code {
    /// Incompatible CNI version.
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    /// Container unknown or does not exist.
    pub const UNKNOWN_CONTAINER: u32 = 3;
    /// Invalid necessary environment variables, like CNI_COMMAND or CNI_CONTAINERID.
    pub const INVALID_ENV: u32 = 4;
    /// I/O failure, like failing to read stdin.
    pub const IO_FAILURE: u32 = 5;
    /// Failed to decode content, like malformed JSON.
    pub const DECODE_FAILURE: u32 = 6;
    /// Invalid network configuration.
    pub const INVALID_CONFIG: u32 = 7;
    /// Try again later: a transient condition such as an agent that is not up yet.
    pub const TRY_AGAIN_LATER: u32 = 11;
    /// STATUS: the plugin is not available, ADD will fail.
    pub const PLUGIN_NOT_AVAILABLE: u32 = 50;
    /// Plugin-specific: the agent answered with something this plugin cannot read. The agent API
    /// client uses the same number for error bodies it cannot decode.
    pub const UNEXPECTED_AGENT_ANSWER: u32 = 999;
}

/// Why a CNI call failed.
#[derive(Debug, thiserror::Error)]
pub enum CniError {
    /// The network configuration asks for a CNI version this plugin does not speak, or an
    /// operation that version does not have.
    #[error("incompatible CNI version {version:?}")]
    IncompatibleVersion { version: String, details: String },
    /// CNI_COMMAND is not one of the operations of the specification.
    #[error("unknown CNI_COMMAND {0:?}")]
    UnknownCommand(String),
    /// A required CNI_* environment variable is absent or empty.
    #[error("missing environment variable {var}")]
    MissingEnv { var: &'static str },
    /// A CNI_* environment variable is present but malformed.
    #[error("invalid environment variable {var}: {reason}")]
    InvalidEnv { var: &'static str, reason: String },
    /// Reading stdin failed.
    #[error("failed to read the network configuration from stdin")]
    Stdin(#[source] io::Error),
    /// The async runtime for the agent call could not start.
    #[error("failed to start the runtime for the agent call")]
    Runtime(#[source] io::Error),
    /// Stdin is not a JSON object.
    #[error("failed to decode the network configuration")]
    Decode(#[source] serde_json::Error),
    /// The network configuration is JSON but not a valid configuration for this plugin.
    #[error("invalid network configuration: {reason}")]
    InvalidConfig { reason: String, details: String },
    /// The agent's socket could not be reached: the agent is not running or not ready yet.
    #[error("sluice agent unreachable, try again later")]
    AgentUnreachable { details: String },
    /// STATUS could not reach the agent, so ADD would fail.
    #[error("plugin not available: sluice agent unreachable")]
    PluginNotAvailable { details: String },
    /// The agent refused the call; its CNI code, message and details are passed through.
    #[error("{message}")]
    Agent { code: u32, message: String, details: String },
    /// The agent answered with a body this plugin cannot decode.
    #[error("unexpected answer from the sluice agent")]
    UnexpectedAgentAnswer { details: String },
}

/// The error object of the CNI specification, as printed on stdout.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct ErrorObject<'a> {
    cni_version: &'a str,
    code: u32,
    msg: String,
    details: String,
}

// === impl CniError ===

impl CniError {
    /// The CNI error code the runtime sees.
    pub fn code(&self) -> u32 {
        match self {
            Self::IncompatibleVersion { .. } => code::INCOMPATIBLE_VERSION,
            Self::UnknownCommand(_) | Self::MissingEnv { .. } | Self::InvalidEnv { .. } => code::INVALID_ENV,
            Self::Stdin(_) | Self::Runtime(_) => code::IO_FAILURE,
            Self::Decode(_) => code::DECODE_FAILURE,
            Self::InvalidConfig { .. } => code::INVALID_CONFIG,
            Self::AgentUnreachable { .. } => code::TRY_AGAIN_LATER,
            Self::PluginNotAvailable { .. } => code::PLUGIN_NOT_AVAILABLE,
            Self::Agent { code, .. } => *code,
            Self::UnexpectedAgentAnswer { .. } => code::UNEXPECTED_AGENT_ANSWER,
        }
    }

    /// Longer text for a person: the underlying cause where there is one.
    pub fn details(&self) -> String {
        match self {
            Self::IncompatibleVersion { details, .. }
            | Self::InvalidConfig { details, .. }
            | Self::AgentUnreachable { details }
            | Self::PluginNotAvailable { details }
            | Self::Agent { details, .. }
            | Self::UnexpectedAgentAnswer { details } => details.clone(),
            Self::Stdin(e) | Self::Runtime(e) => e.to_string(),
            Self::Decode(e) => e.to_string(),
            Self::UnknownCommand(_) | Self::MissingEnv { .. } | Self::InvalidEnv { .. } => String::new(),
        }
    }

    /// The error object for stdout, tagged with the CNI version of the call.
    pub fn to_json(&self, cni_version: &str) -> String {
        let object = ErrorObject { cni_version, code: self.code(), msg: self.to_string(), details: self.details() };
        // A struct of strings and a number always serialises; fall back to a fixed text anyway so
        // the runtime still gets an error object.
        serde_json::to_string(&object)
            .unwrap_or_else(|_| format!(r#"{{"cniVersion":"{cni_version}","code":{},"msg":"error","details":""}}"#, self.code()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_object_has_the_spec_shape() {
        let cases: Vec<(CniError, u32, &str)> = vec![
            (CniError::MissingEnv { var: "CNI_IFNAME" }, 4, "missing environment variable CNI_IFNAME"),
            (CniError::UnknownCommand("FOO".into()), 4, "unknown CNI_COMMAND \"FOO\""),
            (CniError::Agent { code: 3, message: "no such container".into(), details: "abc".into() }, 3, "no such container"),
            (CniError::AgentUnreachable { details: "x".into() }, 11, "sluice agent unreachable, try again later"),
        ];
        for (error, want_code, want_msg) in cases {
            let json: serde_json::Value = serde_json::from_str(&error.to_json("1.0.0")).unwrap();
            let object = json.as_object().unwrap();
            let mut keys: Vec<&str> = object.keys().map(String::as_str).collect();
            keys.sort_unstable();
            assert_eq!(keys, ["cniVersion", "code", "details", "msg"], "keys of {error:?}");
            assert_eq!(json["cniVersion"], "1.0.0", "cniVersion of {error:?}");
            assert_eq!(json["code"], want_code, "code of {error:?}");
            assert_eq!(json["msg"], want_msg, "msg of {error:?}");
        }
    }

    #[test]
    fn agent_details_pass_through() {
        let error = CniError::Agent { code: 7, message: "bad".into(), details: "the detail".into() };
        let json: serde_json::Value = serde_json::from_str(&error.to_json("1.1.0")).unwrap();
        assert_eq!(json["details"], "the detail", "agent details are passed through");
    }
}
