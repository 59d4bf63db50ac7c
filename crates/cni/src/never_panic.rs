//! The plugin never panics on what the runtime hands it: a network configuration of any shape
//! on stdin (random bytes, real configurations cut short or with fields of the wrong type,
//! numbers past their width, nesting too deep) and CNI_* variables of any value or none. Every
//! call ends in a result or a CNI error object with a code and a message, as the specification
//! says. Bounded by a case count, a few seconds in all (`PROPTEST_CASES` for a longer run).

use std::path::Path;

use hyper::StatusCode;
use proptest::prelude::*;
use serde_json::{json, Value};
use sluice_api::{ApiError, ClientError, CniAddResult, CniGcRequest, CniGcResult, CniRequest};
use sluice_fuzz::{bytes, json};

use crate::run::{execute, Agent, AgentError};

/// Configurations as runtimes write them: libcni's for each version, with prevResult,
/// runtimeConfig, the GC list under both names, an agent socket and an MTU.
const CONFIGS: &[&str] = &[
    r#"{"cniVersion":"1.1.0","name":"sluice","type":"sluice-cni","agentSocket":"/run/sluice/labs/a/node0/agent.sock","mtu":1500}"#,
    r#"{"cniVersion":"1.0.0","name":"k8s-pod-network","type":"sluice-cni","runtimeConfig":{"portMappings":[{"hostPort":8080,"containerPort":80,"protocol":"tcp"}]},
        "args":{"cni":{"ips":["10.0.0.1"]}},"prevResult":{"cniVersion":"1.0.0","interfaces":[{"name":"eth0","sandbox":"/var/run/netns/p"}],
        "ips":[{"address":"10.244.1.5/32","gateway":"169.254.1.1","interface":0}],"routes":[{"dst":"0.0.0.0/0"}],"dns":{}}}"#,
    r#"{"cniVersion":"0.4.0","name":"sluice","type":"sluice-cni","prevResult":{"cniVersion":"0.4.0","ips":[{"version":"4","address":"10.244.1.5/32"}]}}"#,
    r#"{"cniVersion":"1.1.0","name":"sluice","type":"sluice-cni","cni.dev/valid-attachments":[{"containerID":"c1","ifname":"eth0"},{"containerID":"c2","ifname":"net1"}]}"#,
    r#"{"cniVersion":"1.1.0","name":"sluice","type":"sluice-cni","cni.dev/attachments":[{"containerID":"c1","ifname":"eth0"}]}"#,
];

/// Keys and values of CNI configurations, to rename members and mangle strings with.
const CONFIG_TOKENS: &[&str] = &[
    "cniVersion",
    "name",
    "type",
    "agentSocket",
    "mtu",
    "prevResult",
    "runtimeConfig",
    "cni.dev/valid-attachments",
    "cni.dev/attachments",
    "containerID",
    "ifname",
    "0.3.1",
    "0.4.0",
    "1.0.0",
    "1.1.0",
    "2.0.0",
    "-",
    "_",
];

/// Words of CNI_ARGS and the other variables.
const ENV_TOKENS: &[&str] =
    &[";", "=", "K8S_POD_NAMESPACE=", "K8S_POD_NAME=", "IgnoreUnknown=1", "K8S_POD_INFRA_CONTAINER_ID=", "eth0", "/"];

/// The values a well-behaved runtime sets.
const ENV: &[(&str, &str)] = &[
    ("CNI_CONTAINERID", "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"),
    ("CNI_NETNS", "/var/run/netns/cni-1234"),
    ("CNI_IFNAME", "eth0"),
    ("CNI_ARGS", "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0;K8S_POD_INFRA_CONTAINER_ID=0123"),
    ("CNI_PATH", "/opt/cni/bin"),
];

const COMMANDS: &[&str] = &["ADD", "DEL", "CHECK", "STATUS", "GC", "VERSION"];

/// An agent that answers every call the same way: the ADD result below, or a refusal.
#[derive(Debug, Clone)]
struct FakeAgent {
    refusal: Option<(u16, u32)>,
}

impl FakeAgent {
    fn answer<T>(&self, ok: T) -> Result<T, AgentError> {
        match self.refusal {
            None => Ok(ok),
            Some((status, code)) => Err(AgentError::Client(ClientError::Api {
                status: StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
                error: ApiError { code, message: "refused".into(), details: String::new() },
            })),
        }
    }
}

impl Agent for FakeAgent {
    fn add(&self, _: &CniRequest) -> Result<CniAddResult, AgentError> {
        let result = serde_json::from_value(json!({
            "interfaces": [{"name": "lxc1", "mac": "aa:00:00:00:00:01", "mtu": 1500},
                           {"name": "eth0", "mac": "aa:00:00:00:00:02", "mtu": 1500, "sandbox": "/var/run/netns/cni-1234"}],
            "ips": [{"address": "198.19.0.5/32", "gateway": "169.254.1.1", "interface": 1},
                    {"address": "fd00::5/128", "gateway": "fe80::1", "interface": 1}],
            "routes": [{"dst": "0.0.0.0/0", "gw": "169.254.1.1"}, {"dst": "::/0", "gw": "fe80::1"}]
        }))
        .map_err(ClientError::Decode)?;
        self.answer(result)
    }
    fn del(&self, _: &CniRequest) -> Result<(), AgentError> {
        self.answer(())
    }
    fn check(&self, _: &CniRequest) -> Result<(), AgentError> {
        self.answer(())
    }
    fn gc(&self, _: &CniGcRequest) -> Result<CniGcResult, AgentError> {
        self.answer(CniGcResult { released: vec![] })
    }
    fn status(&self) -> Result<(), AgentError> {
        self.answer(())
    }
}

fn stdin() -> BoxedStrategy<Vec<u8>> {
    let seeds: Vec<Vec<u8>> = CONFIGS.iter().map(|c| c.as_bytes().to_vec()).collect();
    prop_oneof![
        1 => bytes::random(256),
        2 => bytes::mutated(seeds.clone(), CONFIG_TOKENS),
        4 => json::mutated(&seeds, CONFIG_TOKENS),
        1 => proptest::sample::select(seeds),
    ]
    .boxed()
}

/// One variable: the runtime's value, that value mutated, anything at all, or unset.
fn variable(good: &'static str) -> BoxedStrategy<Option<String>> {
    prop_oneof![
        3 => Just(Some(good.to_string())),
        3 => bytes::mutated_text(vec![good.as_bytes().to_vec()], ENV_TOKENS).prop_map(Some),
        1 => any::<String>().prop_map(Some),
        1 => Just(None),
    ]
    .boxed()
}

/// CNI_COMMAND and the variables of [`ENV`], each chosen by [`variable`].
fn environment() -> BoxedStrategy<Vec<(&'static str, Option<String>)>> {
    let command = prop_oneof![4 => proptest::sample::select(COMMANDS).prop_map(|c| Some(c.to_string())), 1 => variable("ADD")];
    let others: Vec<BoxedStrategy<(&'static str, Option<String>)>> =
        ENV.iter().map(|&(name, good)| variable(good).prop_map(move |v| (name, v)).boxed()).collect();
    (command, others)
        .prop_map(|(command, mut vars)| {
            vars.push(("CNI_COMMAND", command));
            vars
        })
        .boxed()
}

fn refusal() -> impl Strategy<Value = Option<(u16, u32)>> {
    prop_oneof![Just(None), (any::<u16>(), any::<u32>()).prop_map(Some)]
}

/// What the specification asks of the plugin's output.
fn check_reply(reply: &crate::run::Reply) -> Result<(), TestCaseError> {
    if reply.success && reply.stdout.is_empty() {
        return Ok(()); // DEL, CHECK, STATUS and GC print nothing on success
    }
    let out: Value =
        serde_json::from_str(&reply.stdout).map_err(|e| TestCaseError::fail(format!("stdout is not JSON ({e}): {:?}", reply.stdout)))?;
    prop_assert!(out["cniVersion"].is_string(), "every answer names its version: {}", out);
    if !reply.success {
        prop_assert!(out["code"].is_u64(), "an error has a numeric code: {}", out);
        prop_assert!(out["msg"].as_str().is_some_and(|m| !m.is_empty()), "an error has a message: {}", out);
    }
    Ok(())
}

proptest! {
    #![proptest_config(sluice_fuzz::config(10000))]

    #[test]
    fn cni_calls_never_panic(stdin in stdin(), vars in environment(), refusal in refusal()) {
        let lookup = |key: &str| vars.iter().find(|(k, _)| *k == key).and_then(|(_, v)| v.clone());
        let agent = FakeAgent { refusal };
        let reply = execute(&lookup, &stdin, &move |_: &Path| Box::new(agent.clone()) as Box<dyn Agent>);
        check_reply(&reply)?;
    }
}
