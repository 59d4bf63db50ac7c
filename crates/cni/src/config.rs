//! The network configuration the runtime writes on stdin. It is decoded in two steps — JSON,
//! then fields — so the runtime gets the specification's distinct codes: 6 for bytes that are
//! not JSON, 7 for a configuration that is wrong, 1 for a version this plugin does not speak.

use std::path::PathBuf;

use serde::Deserialize;
use sluice_api::CniAttachment;

use crate::error::CniError;

/// Where the node agent listens unless the configuration says otherwise.
pub const DEFAULT_AGENT_SOCKET: &str = "/run/sluice/agent.sock";

/// The CNI versions this plugin speaks, oldest first (the order is used for "at least" checks).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum CniVersion {
    V0_4_0,
    V1_0_0,
    V1_1_0,
}

/// A validated network configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct NetConf {
    pub cni_version: CniVersion,
    pub name: String,
    pub plugin_type: String,
    /// The node agent's API socket.
    pub agent_socket: PathBuf,
    /// MTU for the pod interface; the agent's default when absent.
    pub mtu: Option<u32>,
    /// GC only: the attachments the runtime still knows; all others may be released.
    pub valid_attachments: Option<Vec<CniAttachment>>,
}

/// The wire form, before validation. Fields this plugin does not use (`prevResult`,
/// `runtimeConfig`, `args`, ...) are accepted and ignored.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawNetConf {
    cni_version: Option<String>,
    name: Option<String>,
    #[serde(rename = "type")]
    plugin_type: Option<String>,
    agent_socket: Option<PathBuf>,
    mtu: Option<u32>,
    #[serde(rename = "cni.dev/valid-attachments")]
    valid_attachments: Option<Vec<RawAttachment>>,
    /// The name libcni also sets, from before the specification settled on `valid-attachments`.
    #[serde(rename = "cni.dev/attachments")]
    attachments: Option<Vec<RawAttachment>>,
}

#[derive(Debug, Deserialize)]
struct RawAttachment {
    #[serde(rename = "containerID")]
    container_id: String,
    ifname: String,
}

// === impl CniVersion ===

impl CniVersion {
    /// Every version this plugin speaks, for VERSION.
    pub const SUPPORTED: [CniVersion; 3] = [Self::V0_4_0, Self::V1_0_0, Self::V1_1_0];
    /// The version this plugin implements.
    pub const CURRENT: CniVersion = Self::V1_1_0;

    pub fn parse(version: &str) -> Option<Self> {
        Self::SUPPORTED.into_iter().find(|v| v.as_str() == version)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::V0_4_0 => "0.4.0",
            Self::V1_0_0 => "1.0.0",
            Self::V1_1_0 => "1.1.0",
        }
    }
}

// === impl NetConf ===

impl NetConf {
    pub fn parse(stdin: &[u8]) -> Result<Self, CniError> {
        // Decoding into a map first separates "not a JSON object" (6) from "wrong fields" (7).
        let object: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(stdin).map_err(CniError::Decode)?;
        let raw: RawNetConf =
            serde_json::from_value(serde_json::Value::Object(object)).map_err(|e| invalid("a field has the wrong type", &e.to_string()))?;

        let version = raw.cni_version.ok_or_else(|| invalid("missing field cniVersion", ""))?;
        let cni_version = CniVersion::parse(&version)
            .ok_or_else(|| CniError::IncompatibleVersion { details: format!("supported versions: {}", supported_list()), version })?;
        let name = raw.name.ok_or_else(|| invalid("missing field name", ""))?;
        validate_name(&name)?;
        let plugin_type = raw.plugin_type.filter(|t| !t.is_empty()).ok_or_else(|| invalid("missing field type", ""))?;
        if raw.mtu == Some(0) {
            return Err(invalid("mtu must be greater than zero", ""));
        }
        let valid_attachments = raw
            .valid_attachments
            .or(raw.attachments)
            .map(|list| list.into_iter().map(|a| CniAttachment { container_id: a.container_id, ifname: a.ifname }).collect());
        Ok(Self {
            cni_version,
            name,
            plugin_type,
            agent_socket: raw.agent_socket.unwrap_or_else(|| PathBuf::from(DEFAULT_AGENT_SOCKET)),
            mtu: raw.mtu,
            valid_attachments,
        })
    }
}

/// The version to tag an error with: the configuration's when it is one this plugin speaks,
/// even if the rest of the configuration is broken; otherwise the current version.
pub fn reply_version(stdin: &[u8]) -> CniVersion {
    serde_json::from_slice::<serde_json::Value>(stdin)
        .ok()
        .and_then(|v| v.get("cniVersion").and_then(|v| v.as_str()).and_then(CniVersion::parse))
        .unwrap_or(CniVersion::CURRENT)
}

fn supported_list() -> String {
    CniVersion::SUPPORTED.map(CniVersion::as_str).join(", ")
}

/// Network names follow the container ID rule: alphanumeric first, then `_`, `.`, `-` too.
fn validate_name(name: &str) -> Result<(), CniError> {
    let mut chars = name.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric());
    if first_ok && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')) {
        Ok(())
    } else {
        Err(invalid(
            &format!("invalid network name {name:?}"),
            "a network name starts with a letter or digit and contains only letters, digits, '_', '.' and '-'",
        ))
    }
}

fn invalid(reason: &str, details: &str) -> CniError {
    CniError::InvalidConfig { reason: reason.to_string(), details: details.to_string() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_configurations_get_their_codes() {
        let cases: [(&str, &str, u32, &str); 13] = [
            ("not json", "{", 6, ""),
            ("empty stdin", "", 6, ""),
            ("array", "[]", 6, ""),
            ("missing cniVersion", r#"{"name":"sluice","type":"sluice-cni"}"#, 7, "cniVersion"),
            ("missing name", r#"{"cniVersion":"1.1.0","type":"sluice-cni"}"#, 7, "name"),
            ("missing type", r#"{"cniVersion":"1.1.0","name":"sluice"}"#, 7, "type"),
            ("empty type", r#"{"cniVersion":"1.1.0","name":"sluice","type":""}"#, 7, "type"),
            ("bad name", r#"{"cniVersion":"1.1.0","name":"-x","type":"sluice-cni"}"#, 7, "name"),
            ("mtu string", r#"{"cniVersion":"1.1.0","name":"s","type":"t","mtu":"big"}"#, 7, ""),
            ("mtu zero", r#"{"cniVersion":"1.1.0","name":"s","type":"t","mtu":0}"#, 7, "mtu"),
            ("old version", r#"{"cniVersion":"0.3.1","name":"s","type":"t"}"#, 1, "0.3.1"),
            ("future version", r#"{"cniVersion":"2.0.0","name":"s","type":"t"}"#, 1, "2.0.0"),
            ("version not a string", r#"{"cniVersion":1,"name":"s","type":"t"}"#, 7, ""),
        ];
        for (what, input, code, mentions) in cases {
            let error = NetConf::parse(input.as_bytes()).unwrap_err();
            assert_eq!(error.code(), code, "{what}: {error}");
            assert!(error.to_string().contains(mentions), "{what}: message mentions {mentions:?}: {error}");
        }
    }

    #[test]
    fn supported_versions_parse() {
        for version in ["0.4.0", "1.0.0", "1.1.0"] {
            let input = format!(r#"{{"cniVersion":"{version}","name":"sluice","type":"sluice-cni"}}"#);
            let conf = NetConf::parse(input.as_bytes()).unwrap();
            assert_eq!(conf.cni_version.as_str(), version, "version {version}");
        }
    }

    #[test]
    fn full_configuration_parses() {
        let input = r#"{"cniVersion":"1.1.0","name":"sluice","type":"sluice-cni","agentSocket":"/tmp/a.sock",
            "mtu":1450,"prevResult":{"cniVersion":"1.1.0"},"runtimeConfig":{},
            "cni.dev/valid-attachments":[{"containerID":"c1","ifname":"eth0"}]}"#;
        let conf = NetConf::parse(input.as_bytes()).unwrap();
        assert_eq!(conf.agent_socket, PathBuf::from("/tmp/a.sock"), "agent socket");
        assert_eq!(conf.mtu, Some(1450), "mtu");
        assert_eq!(conf.name, "sluice", "name");
        assert_eq!(conf.plugin_type, "sluice-cni", "type");
        let want = vec![CniAttachment { container_id: "c1".into(), ifname: "eth0".into() }];
        assert_eq!(conf.valid_attachments, Some(want), "valid attachments");
    }

    #[test]
    fn defaults_apply() {
        let conf = NetConf::parse(br#"{"cniVersion":"1.0.0","name":"sluice","type":"sluice-cni"}"#).unwrap();
        assert_eq!(conf.agent_socket, PathBuf::from(DEFAULT_AGENT_SOCKET), "default agent socket");
        assert_eq!(conf.mtu, None, "no mtu");
        assert_eq!(conf.valid_attachments, None, "no attachments");
    }

    #[test]
    fn reply_version_is_best_effort() {
        let cases = [
            (r#"{"cniVersion":"0.4.0"}"#, "0.4.0"),
            (r#"{"cniVersion":"1.0.0","mtu":"x"}"#, "1.0.0"),
            (r#"{"cniVersion":"9.9.9"}"#, "1.1.0"),
            ("garbage", "1.1.0"),
        ];
        for (input, want) in cases {
            assert_eq!(reply_version(input.as_bytes()).as_str(), want, "reply version for {input}");
        }
    }
}
