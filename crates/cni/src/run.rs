//! One CNI call from start to answer: read the command, validate the configuration and the
//! environment, ask the agent, encode the reply. The agent sits behind the [`Agent`] trait so the
//! whole flow is tested without a running agent; [`SocketAgent`] is the real one.

use std::future::Future;
use std::io;
use std::os::fd::AsFd;
use std::path::Path;

use sluice_api::{paths, Client, ClientError, CniAddResult, CniGcRequest, CniGcResult, CniRequest};

use crate::config::{reply_version, CniVersion, NetConf};
use crate::env::{Attachment, Command};
use crate::error::{code, CniError};
use crate::result;

/// The calls the plugin makes to the node agent.
pub trait Agent {
    fn add(&self, request: &CniRequest) -> Result<CniAddResult, AgentError>;
    fn del(&self, request: &CniRequest) -> Result<(), AgentError>;
    fn check(&self, request: &CniRequest) -> Result<(), AgentError>;
    fn gc(&self, request: &CniGcRequest) -> Result<CniGcResult, AgentError>;
    /// Succeeds when the agent can add pods.
    fn status(&self) -> Result<(), AgentError>;
}

/// Why a call to the agent failed.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The API client failed: unreachable socket, broken connection, refusal or bad answer.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// The single-threaded runtime that drives the call could not be built.
    #[error("failed to start the async runtime")]
    Runtime(#[source] io::Error),
}

/// The agent behind its unix socket, one short-lived runtime per call: the plugin is a
/// short-lived process that makes one call, so nothing else needs async.
#[derive(Debug, Clone)]
pub struct SocketAgent {
    client: Client,
}

/// What the plugin prints on stdout and whether it exits successfully.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// A result or error object; empty when the operation has no output.
    pub stdout: String,
    pub success: bool,
}

/// Runs one CNI call. `vars` looks up environment variables and `connect` opens the agent at a
/// socket path; both are parameters so tests need neither a process environment nor an agent.
pub fn execute(vars: &dyn Fn(&str) -> Option<String>, stdin: &[u8], connect: &dyn Fn(&Path) -> Box<dyn Agent>) -> Reply {
    match dispatch(vars, stdin, connect) {
        Ok(stdout) => Reply { stdout, success: true },
        Err(error) => Reply { stdout: error.to_json(reply_version(stdin).as_str()), success: false },
    }
}

fn dispatch(vars: &dyn Fn(&str) -> Option<String>, stdin: &[u8], connect: &dyn Fn(&Path) -> Box<dyn Agent>) -> Result<String, CniError> {
    let command = Command::from_env(vars)?;
    if command == Command::Version {
        // VERSION is how a runtime finds what this plugin speaks, so it never fails on the
        // configuration: a version it asks in that this plugin speaks is echoed (the
        // specification's "the value of cniVersion specified on input"); none, or one it does
        // not speak, gets the answer in the current version, and the list says what to use.
        return Ok(result::encode_version(reply_version(stdin)));
    }
    let conf = NetConf::parse(stdin)?;
    match command {
        Command::Add => {
            let request = request(&Attachment::from_env(command, vars)?, &conf);
            let added = connect(&conf.agent_socket).add(&request).map_err(from_agent)?;
            Ok(result::encode_add(&added, conf.cni_version))
        }
        Command::Del => {
            let request = request(&Attachment::from_env(command, vars)?, &conf);
            match connect(&conf.agent_socket).del(&request) {
                // DEL must succeed for an attachment that is already gone, so runtimes can retry.
                Err(AgentError::Client(ClientError::Api { status, error })) if error.code == code::UNKNOWN_CONTAINER || status == 404 => {
                    Ok(String::new())
                }
                other => other.map(|()| String::new()).map_err(from_agent),
            }
        }
        Command::Check => {
            let request = request(&Attachment::from_env(command, vars)?, &conf);
            connect(&conf.agent_socket).check(&request).map_err(from_agent)?;
            Ok(String::new())
        }
        Command::Status => {
            require_version(&conf, CniVersion::V1_1_0, "STATUS")?;
            connect(&conf.agent_socket).status().map_err(|error| match error {
                AgentError::Client(e @ (ClientError::Unreachable { .. } | ClientError::Http(_))) => {
                    CniError::PluginNotAvailable { details: e.to_string() }
                }
                other => from_agent(other),
            })?;
            Ok(String::new())
        }
        Command::Gc => {
            require_version(&conf, CniVersion::V1_1_0, "GC")?;
            // Without the list every attachment would look stale; refuse rather than release all.
            let valid_attachments = conf.valid_attachments.clone().ok_or_else(|| CniError::InvalidConfig {
                reason: "GC needs cni.dev/valid-attachments".to_string(),
                details: String::new(),
            })?;
            connect(&conf.agent_socket).gc(&CniGcRequest { valid_attachments }).map_err(from_agent)?;
            Ok(String::new())
        }
        Command::Version => Ok(result::encode_version(reply_version(stdin))),
    }
}

fn request(attachment: &Attachment, conf: &NetConf) -> CniRequest {
    CniRequest {
        container_id: attachment.container_id.clone(),
        ifname: attachment.ifname.clone(),
        netns: attachment.netns.clone(),
        pod_namespace: attachment.args.pod_namespace.clone(),
        pod_name: attachment.args.pod_name.clone(),
        mtu: conf.mtu,
    }
}

/// STATUS and GC exist since 1.1.0; a configuration of an older version must not use them.
fn require_version(conf: &NetConf, at_least: CniVersion, operation: &str) -> Result<(), CniError> {
    if conf.cni_version >= at_least {
        Ok(())
    } else {
        Err(CniError::IncompatibleVersion {
            version: conf.cni_version.as_str().to_string(),
            details: format!("{operation} needs cniVersion {} or later", at_least.as_str()),
        })
    }
}

/// Agent failures as the runtime should see them: an agent that is not there is transient (11);
/// its own refusals already carry CNI codes and pass through.
fn from_agent(error: AgentError) -> CniError {
    match error {
        AgentError::Client(e @ (ClientError::Unreachable { .. } | ClientError::Http(_))) => {
            CniError::AgentUnreachable { details: e.to_string() }
        }
        AgentError::Client(ClientError::Api { error, .. }) => {
            CniError::Agent { code: error.code, message: error.message, details: error.details }
        }
        AgentError::Client(e @ ClientError::Decode(_)) => CniError::UnexpectedAgentAnswer { details: e.to_string() },
        // The connection broke while handing over the namespace: as transient as a broken call.
        AgentError::Client(e @ ClientError::PassFd(_)) => CniError::AgentUnreachable { details: e.to_string() },
        AgentError::Runtime(e) => CniError::Runtime(e),
    }
}

/// Opens the pod's network namespace (`CNI_NETNS`) in this process's mount namespace, the
/// runtime's, to hand it to the agent. A path that does not open is sent as it is, and the
/// agent, the one validator of requests, says what is wrong with it (code 4) — or, when the
/// agent is down, the runtime hears "try again later" (code 11) as for any call.
fn open_netns(request: &CniRequest) -> Option<std::fs::File> {
    std::fs::File::open(&request.netns).ok()
}

// === impl SocketAgent ===

impl SocketAgent {
    pub fn new(socket: &Path) -> Self {
        Self { client: Client::new(socket) }
    }

    fn block_on<T>(&self, call: impl Future<Output = Result<T, ClientError>>) -> Result<T, AgentError> {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(AgentError::Runtime)?;
        Ok(runtime.block_on(call)?)
    }
}

impl Agent for SocketAgent {
    /// Hands the agent the pod's network namespace as an open descriptor: the path is the
    /// runtime's, resolvable in this process's mount namespace but not always in the agent's
    /// (an agent in a DaemonSet pod sees another `/run/netns`).
    fn add(&self, request: &CniRequest) -> Result<CniAddResult, AgentError> {
        match open_netns(request) {
            Some(netns) => self.block_on(self.client.post_with_fd(paths::CNI_ADD, request, netns.as_fd())),
            None => self.block_on(self.client.post(paths::CNI_ADD, request)),
        }
    }

    fn del(&self, request: &CniRequest) -> Result<(), AgentError> {
        self.block_on(self.client.post::<_, serde_json::Value>(paths::CNI_DEL, request)).map(drop)
    }

    fn check(&self, request: &CniRequest) -> Result<(), AgentError> {
        let answer = match open_netns(request) {
            Some(netns) => self.block_on(self.client.post_with_fd::<_, serde_json::Value>(paths::CNI_CHECK, request, netns.as_fd())),
            None => self.block_on(self.client.post::<_, serde_json::Value>(paths::CNI_CHECK, request)),
        };
        answer.map(drop)
    }

    fn gc(&self, request: &CniGcRequest) -> Result<CniGcResult, AgentError> {
        self.block_on(self.client.post(paths::CNI_GC, request))
    }

    fn status(&self) -> Result<(), AgentError> {
        self.block_on(self.client.get::<serde_json::Value>(paths::CNI_STATUS)).map(drop)
    }
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;
    use std::path::PathBuf;
    use std::rc::Rc;

    use hyper::StatusCode;
    use serde_json::{json, Value};
    use sluice_api::ApiError;

    use super::*;

    /// How the fake agent answers every call.
    #[derive(Debug, Clone, Copy)]
    enum Answer {
        Ok,
        Refuse { status: StatusCode, code: u32 },
    }

    /// Records each call as (operation, request JSON) and answers as told.
    #[derive(Clone)]
    struct FakeAgent {
        answer: Answer,
        calls: Rc<RefCell<Vec<(&'static str, Value)>>>,
    }

    impl FakeAgent {
        fn new(answer: Answer) -> Self {
            Self { answer, calls: Rc::default() }
        }

        fn answer<T>(&self, op: &'static str, request: Value, ok: T) -> Result<T, AgentError> {
            self.calls.borrow_mut().push((op, request));
            match self.answer {
                Answer::Ok => Ok(ok),
                Answer::Refuse { status, code } => Err(AgentError::Client(ClientError::Api {
                    status,
                    error: ApiError { code, message: format!("agent says no ({code})"), details: "why".into() },
                })),
            }
        }

        fn calls(&self) -> Vec<(&'static str, Value)> {
            self.calls.borrow().clone()
        }
    }

    impl Agent for FakeAgent {
        fn add(&self, request: &CniRequest) -> Result<CniAddResult, AgentError> {
            let result = serde_json::from_value(json!({
                "interfaces": [
                    {"name": "lxc1", "mac": "aa:00:00:00:00:01", "mtu": 1500},
                    {"name": "eth0", "mac": "aa:00:00:00:00:02", "mtu": 1500, "sandbox": "/run/netns/p"}
                ],
                "ips": [{"address": "198.19.0.5/24", "gateway": "169.254.1.1", "interface": 1}],
                "routes": [{"dst": "0.0.0.0/0", "gw": "169.254.1.1"}]
            }))
            .unwrap();
            self.answer("add", serde_json::to_value(request).unwrap(), result)
        }
        fn del(&self, request: &CniRequest) -> Result<(), AgentError> {
            self.answer("del", serde_json::to_value(request).unwrap(), ())
        }
        fn check(&self, request: &CniRequest) -> Result<(), AgentError> {
            self.answer("check", serde_json::to_value(request).unwrap(), ())
        }
        fn gc(&self, request: &CniGcRequest) -> Result<CniGcResult, AgentError> {
            self.answer("gc", serde_json::to_value(request).unwrap(), CniGcResult { released: vec![] })
        }
        fn status(&self) -> Result<(), AgentError> {
            self.answer("status", Value::Null, ())
        }
    }

    const CONF: &str = r#"{"cniVersion":"1.1.0","name":"sluice","type":"sluice-cni","mtu":1450,
        "cni.dev/valid-attachments":[{"containerID":"c1","ifname":"eth0"}]}"#;

    fn vars(command: &str) -> impl Fn(&str) -> Option<String> {
        let command = command.to_string();
        move |key| {
            let value = match key {
                "CNI_COMMAND" => command.as_str(),
                "CNI_CONTAINERID" => "c1",
                "CNI_NETNS" => "/run/netns/p",
                "CNI_IFNAME" => "eth0",
                "CNI_ARGS" => "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0",
                _ => return None,
            };
            Some(value.to_string())
        }
    }

    fn run_fake(command: &str, conf: &str, agent: &FakeAgent) -> Reply {
        let agent = agent.clone();
        execute(&vars(command), conf.as_bytes(), &move |_| Box::new(agent.clone()))
    }

    fn error_of(reply: &Reply) -> Value {
        assert!(!reply.success, "expected a failure, got {reply:?}");
        serde_json::from_str(&reply.stdout).unwrap()
    }

    #[test]
    fn add_sends_the_attachment_and_prints_the_result() {
        let agent = FakeAgent::new(Answer::Ok);
        let reply = run_fake("ADD", CONF, &agent);
        assert!(reply.success, "ADD succeeds: {reply:?}");
        let out: Value = serde_json::from_str(&reply.stdout).unwrap();
        assert_eq!(out["cniVersion"], "1.1.0", "result version");
        assert_eq!(out["ips"][0]["address"], "198.19.0.5/24", "result address");
        let want = json!({"containerId": "c1", "ifname": "eth0", "netns": "/run/netns/p",
            "podNamespace": "default", "podName": "web-0", "mtu": 1450});
        assert_eq!(agent.calls(), vec![("add", want)], "request sent to the agent");
    }

    #[test]
    fn operations_without_output_print_nothing() {
        for command in ["DEL", "CHECK", "STATUS", "GC"] {
            let agent = FakeAgent::new(Answer::Ok);
            let reply = run_fake(command, CONF, &agent);
            assert_eq!(reply, Reply { stdout: String::new(), success: true }, "{command} prints nothing");
            assert_eq!(agent.calls().len(), 1, "{command} calls the agent once");
        }
    }

    #[test]
    fn gc_sends_the_valid_attachments() {
        let agent = FakeAgent::new(Answer::Ok);
        run_fake("GC", CONF, &agent);
        let want = json!({"validAttachments": [{"containerId": "c1", "ifname": "eth0"}]});
        assert_eq!(agent.calls(), vec![("gc", want)], "GC request");
    }

    #[test]
    fn gc_without_valid_attachments_is_refused() {
        let agent = FakeAgent::new(Answer::Ok);
        let reply = run_fake("GC", r#"{"cniVersion":"1.1.0","name":"sluice","type":"sluice-cni"}"#, &agent);
        assert_eq!(error_of(&reply)["code"], 7, "GC without attachments");
        assert!(agent.calls().is_empty(), "the agent is not asked to release everything");
    }

    #[test]
    fn status_and_gc_need_version_1_1_0() {
        for command in ["STATUS", "GC"] {
            for version in ["0.4.0", "1.0.0"] {
                let conf = format!(r#"{{"cniVersion":"{version}","name":"sluice","type":"sluice-cni"}}"#);
                let reply = run_fake(command, &conf, &FakeAgent::new(Answer::Ok));
                let error = error_of(&reply);
                assert_eq!(error["code"], 1, "{command} with {version}");
                assert_eq!(error["cniVersion"], version, "{command} with {version}: error version");
            }
        }
    }

    #[test]
    fn del_of_an_unknown_attachment_succeeds() {
        let cases = [
            (StatusCode::NOT_FOUND, 3, true),
            (StatusCode::NOT_FOUND, 999, true),
            (StatusCode::CONFLICT, 3, true),
            (StatusCode::INTERNAL_SERVER_ERROR, 5, false),
            (StatusCode::SERVICE_UNAVAILABLE, 11, false),
        ];
        for (status, code, success) in cases {
            let reply = run_fake("DEL", CONF, &FakeAgent::new(Answer::Refuse { status, code }));
            if success {
                assert_eq!(reply, Reply { stdout: String::new(), success: true }, "DEL with {status} code {code}");
            } else {
                assert_eq!(error_of(&reply)["code"], code, "DEL with {status} code {code}");
            }
        }
    }

    #[test]
    fn agent_refusals_pass_through() {
        for command in ["ADD", "CHECK", "STATUS", "GC"] {
            let agent = FakeAgent::new(Answer::Refuse { status: StatusCode::BAD_REQUEST, code: 7 });
            let error = error_of(&run_fake(command, CONF, &agent));
            assert_eq!(error["code"], 7, "{command}: code");
            assert_eq!(error["msg"], "agent says no (7)", "{command}: msg");
            assert_eq!(error["details"], "why", "{command}: details");
        }
    }

    #[test]
    fn unreachable_agent_is_try_again_later() {
        // A real socket path where nothing listens: the real client, the real connect error.
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("agent.sock");
        let conf = json!({"cniVersion": "1.1.0", "name": "sluice", "type": "sluice-cni",
            "agentSocket": socket, "cni.dev/valid-attachments": []})
        .to_string();
        let cases = [("ADD", 11), ("DEL", 11), ("CHECK", 11), ("GC", 11), ("STATUS", 50)];
        for (command, code) in cases {
            let connected: Rc<RefCell<Vec<PathBuf>>> = Rc::default();
            let seen = connected.clone();
            let reply = execute(&vars(command), conf.as_bytes(), &move |path| {
                seen.borrow_mut().push(path.to_path_buf());
                Box::new(SocketAgent::new(path))
            });
            let error = error_of(&reply);
            assert_eq!(error["code"], code, "{command}: code");
            assert!(error["details"].as_str().unwrap().contains("agent.sock"), "{command}: details name the socket");
            assert_eq!(*connected.borrow(), vec![socket.clone()], "{command}: connects to the configured socket");
        }
    }

    #[test]
    fn version_answers_in_the_version_asked_and_needs_no_agent() {
        // (stdin, the answer's cniVersion): a supported version is echoed; anything else gets the
        // current one, never an error, since VERSION is how a runtime learns what to ask for.
        let cases = [
            (r#"{"cniVersion":"0.4.0"}"#, "0.4.0"),
            (r#"{"cniVersion":"1.0.0"}"#, "1.0.0"),
            (r#"{"cniVersion":"1.1.0"}"#, "1.1.0"),
            (r#"{"cniVersion":"1.0.0","name":"sluice","type":"sluice-cni"}"#, "1.0.0"),
            (r#"{"cniVersion":"0.3.1"}"#, "1.1.0"),
            (r#"{"cniVersion":"9.9.9"}"#, "1.1.0"),
            (r#"{"cniVersion":1}"#, "1.1.0"),
            ("{}", "1.1.0"),
            ("", "1.1.0"),
            ("not json", "1.1.0"),
        ];
        for (stdin, version) in cases {
            let reply = execute(&vars("VERSION"), stdin.as_bytes(), &|_| panic!("VERSION must not call the agent"));
            assert!(reply.success, "VERSION with stdin {stdin:?} succeeds: {reply:?}");
            let out: Value = serde_json::from_str(&reply.stdout).unwrap();
            assert_eq!(out["cniVersion"], version, "VERSION with stdin {stdin:?}: cniVersion");
            assert_eq!(out["supportedVersions"], json!(["0.4.0", "1.0.0", "1.1.0"]), "VERSION with stdin {stdin:?}: supported versions");
        }
    }

    #[test]
    fn validation_errors_stop_before_the_agent() {
        // (command, stdin, variable removed, code, error cniVersion)
        let cases = [
            ("ADD", "{", None, 6, "1.1.0"),
            ("ADD", r#"{"cniVersion":"0.4.0","name":"sluice"}"#, None, 7, "0.4.0"),
            ("ADD", r#"{"cniVersion":"0.3.1","name":"sluice","type":"t"}"#, None, 1, "1.1.0"),
            ("ADD", r#"{"cniVersion":"1.0.0","name":"sluice","type":"t"}"#, Some("CNI_NETNS"), 4, "1.0.0"),
            ("BOGUS", CONF, None, 4, "1.1.0"),
        ];
        for (command, stdin, removed, code, version) in cases {
            let agent = FakeAgent::new(Answer::Ok);
            let base = vars(command);
            let lookup = move |key: &str| {
                if Some(key) == removed {
                    None
                } else {
                    base(key)
                }
            };
            let fake = agent.clone();
            let reply = execute(&lookup, stdin.as_bytes(), &move |_| Box::new(fake.clone()));
            let error = error_of(&reply);
            assert_eq!(error["code"], code, "{command} {stdin} without {removed:?}");
            assert_eq!(error["cniVersion"], version, "{command} {stdin}: error version");
            assert!(agent.calls().is_empty(), "{command} {stdin}: agent not called");
        }
    }
}
