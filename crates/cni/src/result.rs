//! What the plugin prints on success, in the wire format of the configuration's CNI version.
//! The agent answers ADD in one version-neutral shape ([`CniAddResult`]); the differences between
//! versions (0.4.0's `ips[].version`, 1.1.0's interface `mtu`) are applied here only.

use serde::Serialize;
use sluice_api::{CniAddResult, CniInterface, CniIpConfig, CniRoute};

use crate::config::CniVersion;

/// The ADD result object of the CNI specification.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct AddResult<'a> {
    cni_version: &'static str,
    interfaces: Vec<Interface<'a>>,
    ips: Vec<IpConfig<'a>>,
    routes: &'a [CniRoute],
    /// Sluice leaves DNS to the runtime (kubelet writes resolv.conf), so this is always `{}`.
    dns: Dns,
}

#[derive(Debug, Serialize)]
struct Interface<'a> {
    name: &'a str,
    mac: &'a str,
    /// Part of the interface object since 1.1.0 only.
    #[serde(skip_serializing_if = "Option::is_none")]
    mtu: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    sandbox: Option<&'a str>,
}

#[derive(Debug, Serialize)]
struct IpConfig<'a> {
    /// `"4"` or `"6"`; 0.4.0 only, later versions infer it from the address.
    #[serde(skip_serializing_if = "Option::is_none")]
    version: Option<&'static str>,
    #[serde(flatten)]
    ip: &'a CniIpConfig,
}

#[derive(Debug, Default, Serialize)]
struct Dns {}

/// The VERSION answer.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct VersionResult {
    cni_version: &'static str,
    supported_versions: [&'static str; 3],
}

/// Encodes the ADD result for `version`.
pub fn encode_add(result: &CniAddResult, version: CniVersion) -> String {
    let add = AddResult {
        cni_version: version.as_str(),
        interfaces: result.interfaces.iter().map(|i| interface(i, version)).collect(),
        ips: result.ips.iter().map(|ip| ip_config(ip, version)).collect(),
        routes: &result.routes,
        dns: Dns::default(),
    };
    to_json(&add)
}

/// The VERSION answer, written in `version`: every version this plugin speaks.
pub fn encode_version(version: CniVersion) -> String {
    to_json(&VersionResult { cni_version: version.as_str(), supported_versions: CniVersion::SUPPORTED.map(CniVersion::as_str) })
}

fn interface(interface: &CniInterface, version: CniVersion) -> Interface<'_> {
    Interface {
        name: &interface.name,
        mac: &interface.mac,
        mtu: (version >= CniVersion::V1_1_0).then_some(interface.mtu),
        sandbox: interface.sandbox.as_deref(),
    }
}

fn ip_config(ip: &CniIpConfig, version: CniVersion) -> IpConfig<'_> {
    let family = match ip.address {
        ipnet::IpNet::V4(_) => "4",
        ipnet::IpNet::V6(_) => "6",
    };
    IpConfig { version: (version == CniVersion::V0_4_0).then_some(family), ip }
}

/// Structs of strings, numbers and addresses always serialise.
fn to_json<T: Serialize>(value: &T) -> String {
    serde_json::to_string(value).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn sample() -> CniAddResult {
        serde_json::from_value(json!({
            "interfaces": [
                {"name": "lxc1234", "mac": "aa:bb:cc:00:00:01", "mtu": 1500},
                {"name": "eth0", "mac": "aa:bb:cc:00:00:02", "mtu": 1500, "sandbox": "/var/run/netns/pod"}
            ],
            "ips": [
                {"address": "198.19.0.5/24", "gateway": "169.254.1.1", "interface": 1},
                {"address": "fd00:10::5/64", "gateway": "fe80::1", "interface": 1}
            ],
            "routes": [
                {"dst": "0.0.0.0/0", "gw": "169.254.1.1"},
                {"dst": "::/0", "gw": "fe80::1"}
            ]
        }))
        .unwrap()
    }

    #[test]
    fn add_result_per_version() {
        // (version, ips carry "version", interfaces carry "mtu")
        let cases = [(CniVersion::V0_4_0, true, false), (CniVersion::V1_0_0, false, false), (CniVersion::V1_1_0, false, true)];
        for (version, ip_version, mtu) in cases {
            let json: Value = serde_json::from_str(&encode_add(&sample(), version)).unwrap();
            let v = version.as_str();
            assert_eq!(json["cniVersion"], v, "{v}: cniVersion");
            assert_eq!(json["dns"], json!({}), "{v}: dns");
            assert_eq!(json["interfaces"][1]["name"], "eth0", "{v}: pod interface name");
            assert_eq!(json["interfaces"][1]["mac"], "aa:bb:cc:00:00:02", "{v}: pod interface mac");
            assert_eq!(json["interfaces"][1]["sandbox"], "/var/run/netns/pod", "{v}: pod sandbox");
            assert!(json["interfaces"][0].get("sandbox").is_none(), "{v}: host interface has no sandbox");
            assert_eq!(json["interfaces"][1].get("mtu").is_some(), mtu, "{v}: mtu present");
            if mtu {
                assert_eq!(json["interfaces"][1]["mtu"], 1500, "{v}: mtu value");
            }
            assert_eq!(json["ips"][0]["address"], "198.19.0.5/24", "{v}: v4 address");
            assert_eq!(json["ips"][0]["gateway"], "169.254.1.1", "{v}: v4 gateway");
            assert_eq!(json["ips"][0]["interface"], 1, "{v}: v4 interface index");
            assert_eq!(json["ips"][1]["address"], "fd00:10::5/64", "{v}: v6 address");
            if ip_version {
                assert_eq!(json["ips"][0]["version"], "4", "{v}: v4 version");
                assert_eq!(json["ips"][1]["version"], "6", "{v}: v6 version");
            } else {
                assert!(json["ips"][0].get("version").is_none(), "{v}: no ip version field");
            }
            assert_eq!(json["routes"][0], json!({"dst": "0.0.0.0/0", "gw": "169.254.1.1"}), "{v}: v4 route");
            assert_eq!(json["routes"][1], json!({"dst": "::/0", "gw": "fe80::1"}), "{v}: v6 route");
        }
    }

    #[test]
    fn version_answer() {
        for version in CniVersion::SUPPORTED {
            let json: Value = serde_json::from_str(&encode_version(version)).unwrap();
            let want = json!({"cniVersion": version.as_str(), "supportedVersions": ["0.4.0", "1.0.0", "1.1.0"]});
            assert_eq!(json, want, "VERSION answer in {}", version.as_str());
        }
    }
}
