//! The CNI_* environment variables: which operation the runtime asks for and which attachment it
//! names. Validation follows the CNI specification (and libcni's checks) so a bad call fails here
//! with code 4 instead of reaching the agent.

use crate::error::CniError;

/// The operations of the CNI specification (CNI_COMMAND).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Add,
    Del,
    Check,
    Status,
    Gc,
    Version,
}

/// One attachment as the runtime names it: the variables of ADD, DEL and CHECK.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attachment {
    /// CNI_CONTAINERID.
    pub container_id: String,
    /// CNI_NETNS; empty only on DEL, where the runtime may not know it any more.
    pub netns: String,
    /// CNI_IFNAME.
    pub ifname: String,
    /// The Kubernetes keys of CNI_ARGS.
    pub args: PodArgs,
}

/// The CNI_ARGS keys this plugin understands; the rest are ignored.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodArgs {
    /// K8S_POD_NAMESPACE.
    pub pod_namespace: Option<String>,
    /// K8S_POD_NAME.
    pub pod_name: Option<String>,
}

/// Linux IFNAMSIZ less the terminating NUL.
const MAX_IFNAME_LEN: usize = 15;

// === impl Command ===

impl Command {
    /// Reads CNI_COMMAND.
    pub fn from_env(vars: &dyn Fn(&str) -> Option<String>) -> Result<Self, CniError> {
        let value = required(vars, "CNI_COMMAND")?;
        match value.as_str() {
            "ADD" => Ok(Self::Add),
            "DEL" => Ok(Self::Del),
            "CHECK" => Ok(Self::Check),
            "STATUS" => Ok(Self::Status),
            "GC" => Ok(Self::Gc),
            "VERSION" => Ok(Self::Version),
            _ => Err(CniError::UnknownCommand(value)),
        }
    }
}

// === impl Attachment ===

impl Attachment {
    /// Reads and validates the variables `command` requires. CNI_NETNS is required for ADD and
    /// CHECK only: on DEL the namespace may already be gone.
    pub fn from_env(command: Command, vars: &dyn Fn(&str) -> Option<String>) -> Result<Self, CniError> {
        let container_id = required(vars, "CNI_CONTAINERID")?;
        validate_container_id(&container_id)?;
        let netns = match command {
            Command::Del => vars("CNI_NETNS").unwrap_or_default(),
            _ => required(vars, "CNI_NETNS")?,
        };
        let ifname = required(vars, "CNI_IFNAME")?;
        validate_ifname(&ifname)?;
        let args = PodArgs::parse(&vars("CNI_ARGS").unwrap_or_default())?;
        Ok(Self { container_id, netns, ifname, args })
    }
}

// === impl PodArgs ===

impl PodArgs {
    /// Parses `KEY=VALUE;KEY=VALUE`. Unknown keys are ignored, as runtimes pass keys meant for
    /// other plugins; a segment without `=` is an error, as in libcni.
    pub fn parse(cni_args: &str) -> Result<Self, CniError> {
        let mut args = Self::default();
        for pair in cni_args.split(';').filter(|pair| !pair.is_empty()) {
            let Some((key, value)) = pair.split_once('=') else {
                return Err(CniError::InvalidEnv { var: "CNI_ARGS", reason: format!("invalid pair {pair:?}") });
            };
            let value = (!value.is_empty()).then(|| value.to_string());
            match key {
                "K8S_POD_NAMESPACE" => args.pod_namespace = value,
                "K8S_POD_NAME" => args.pod_name = value,
                _ => {}
            }
        }
        Ok(args)
    }
}

/// An absent and an empty variable are the same to the runtime: not given.
fn required(vars: &dyn Fn(&str) -> Option<String>, var: &'static str) -> Result<String, CniError> {
    vars(var).filter(|value| !value.is_empty()).ok_or(CniError::MissingEnv { var })
}

/// Alphanumeric first, then alphanumerics, `_`, `.` and `-` (the specification's rule).
fn validate_container_id(id: &str) -> Result<(), CniError> {
    let mut chars = id.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric());
    let rest_ok = chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if first_ok && rest_ok {
        Ok(())
    } else {
        Err(CniError::InvalidEnv {
            var: "CNI_CONTAINERID",
            reason: format!("{id:?} must start with a letter or digit and contain only letters, digits, '_', '.' and '-'"),
        })
    }
}

/// What the kernel accepts as an interface name.
fn validate_ifname(ifname: &str) -> Result<(), CniError> {
    let reason = if ifname.len() > MAX_IFNAME_LEN {
        Some(format!("{ifname:?} is longer than {MAX_IFNAME_LEN} bytes"))
    } else if ifname == "." || ifname == ".." {
        Some(format!("{ifname:?} is not an interface name"))
    } else if ifname.chars().any(|c| c == '/' || c == ':' || c.is_whitespace()) {
        Some(format!("{ifname:?} contains '/', ':' or whitespace"))
    } else {
        None
    };
    match reason {
        Some(reason) => Err(CniError::InvalidEnv { var: "CNI_IFNAME", reason }),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A lookup over fixed pairs, so tests never touch the process environment.
    fn lookup(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let pairs: Vec<(String, String)> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        move |key| pairs.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone())
    }

    const FULL: [(&str, &str); 4] = [
        ("CNI_CONTAINERID", "abc123"),
        ("CNI_NETNS", "/var/run/netns/pod"),
        ("CNI_IFNAME", "eth0"),
        ("CNI_ARGS", "K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0"),
    ];

    #[test]
    fn commands_parse() {
        let cases = [
            ("ADD", Command::Add),
            ("DEL", Command::Del),
            ("CHECK", Command::Check),
            ("STATUS", Command::Status),
            ("GC", Command::Gc),
            ("VERSION", Command::Version),
        ];
        for (value, want) in cases {
            let got = Command::from_env(&lookup(&[("CNI_COMMAND", value)]));
            assert_eq!(got.ok(), Some(want), "CNI_COMMAND={value}");
        }
    }

    #[test]
    fn bad_commands_are_code_4() {
        for value in [None, Some(""), Some("add"), Some("UPDATE")] {
            let pairs: Vec<(&str, &str)> = value.map(|v| ("CNI_COMMAND", v)).into_iter().collect();
            let error = Command::from_env(&lookup(&pairs)).unwrap_err();
            assert_eq!(error.code(), 4, "CNI_COMMAND={value:?}");
            assert!(error.to_string().contains("CNI_COMMAND"), "message names CNI_COMMAND: {error}");
        }
    }

    #[test]
    fn each_missing_variable_is_code_4_naming_it() {
        let cases = [
            (Command::Add, "CNI_CONTAINERID", true),
            (Command::Add, "CNI_NETNS", true),
            (Command::Add, "CNI_IFNAME", true),
            (Command::Check, "CNI_CONTAINERID", true),
            (Command::Check, "CNI_NETNS", true),
            (Command::Check, "CNI_IFNAME", true),
            (Command::Del, "CNI_CONTAINERID", true),
            (Command::Del, "CNI_NETNS", false),
            (Command::Del, "CNI_IFNAME", true),
            (Command::Add, "CNI_ARGS", false),
            (Command::Del, "CNI_ARGS", false),
        ];
        for (command, missing, required) in cases {
            for absent_as_empty in [false, true] {
                let pairs: Vec<(&str, &str)> = FULL
                    .iter()
                    .map(|&(k, v)| if k == missing && absent_as_empty { (k, "") } else { (k, v) })
                    .filter(|&(k, _)| k != missing || absent_as_empty)
                    .collect();
                let got = Attachment::from_env(command, &lookup(&pairs));
                match (required, got) {
                    (true, Ok(_)) => panic!("{command:?} without {missing} must fail"),
                    (true, Err(error)) => {
                        assert_eq!(error.code(), 4, "{command:?} without {missing}");
                        assert!(error.to_string().contains(missing), "{command:?}: message names {missing}: {error}");
                    }
                    (false, Err(error)) => {
                        panic!("{command:?} without {missing} must succeed: {error}")
                    }
                    (false, Ok(_)) => {}
                }
            }
        }
    }

    #[test]
    fn full_environment_parses() {
        let attachment = Attachment::from_env(Command::Add, &lookup(&FULL)).unwrap();
        assert_eq!(attachment.container_id, "abc123", "container id");
        assert_eq!(attachment.netns, "/var/run/netns/pod", "netns");
        assert_eq!(attachment.ifname, "eth0", "ifname");
        assert_eq!(attachment.args.pod_namespace.as_deref(), Some("default"), "pod namespace");
        assert_eq!(attachment.args.pod_name.as_deref(), Some("web-0"), "pod name");
    }

    #[test]
    fn cni_args_parse() {
        let cases: [(&str, Option<&str>, Option<&str>); 7] = [
            ("", None, None),
            ("K8S_POD_NAMESPACE=ns;K8S_POD_NAME=p", Some("ns"), Some("p")),
            ("IgnoreUnknown=1;K8S_POD_NAMESPACE=ns;K8S_POD_NAME=p;K8S_POD_INFRA_CONTAINER_ID=abc", Some("ns"), Some("p")),
            ("K8S_POD_NAME=p;", None, Some("p")),
            ("K8S_POD_NAME=", None, None),
            ("FOO=bar", None, None),
            ("K8S_POD_NAME=a=b", None, Some("a=b")),
        ];
        for (input, namespace, name) in cases {
            let args = PodArgs::parse(input).unwrap();
            assert_eq!(args.pod_namespace.as_deref(), namespace, "namespace of {input:?}");
            assert_eq!(args.pod_name.as_deref(), name, "name of {input:?}");
        }
    }

    #[test]
    fn cni_args_without_equals_is_code_4() {
        let error = PodArgs::parse("K8S_POD_NAME=p;garbage").unwrap_err();
        assert_eq!(error.code(), 4, "pair without '='");
        assert!(error.to_string().contains("CNI_ARGS"), "message names CNI_ARGS: {error}");
    }

    #[test]
    fn container_ids_are_validated() {
        let cases = [
            ("abc", true),
            ("0123abc_def.g-h", true),
            ("-abc", false),
            ("_abc", false),
            (".abc", false),
            ("abc/def", false),
            ("abc def", false),
            ("abc;x", false),
        ];
        for (id, valid) in cases {
            let pairs: Vec<(&str, &str)> = FULL.iter().map(|&(k, v)| if k == "CNI_CONTAINERID" { (k, id) } else { (k, v) }).collect();
            match Attachment::from_env(Command::Add, &lookup(&pairs)) {
                Ok(_) => assert!(valid, "container id {id:?} must be rejected"),
                Err(error) => {
                    assert!(!valid, "container id {id:?} must be accepted: {error}");
                    assert_eq!(error.code(), 4, "code for container id {id:?}");
                    assert!(error.to_string().contains("CNI_CONTAINERID"), "message names the variable: {error}");
                }
            }
        }
    }

    #[test]
    fn interface_names_are_validated() {
        let cases = [
            ("eth0", true),
            ("a23456789012345", true),
            ("a234567890123456", false),
            (".", false),
            ("..", false),
            ("...", true),
            ("eth/0", false),
            ("eth:0", false),
            ("eth 0", false),
            ("eth\t0", false),
        ];
        for (ifname, valid) in cases {
            let pairs: Vec<(&str, &str)> = FULL.iter().map(|&(k, v)| if k == "CNI_IFNAME" { (k, ifname) } else { (k, v) }).collect();
            match Attachment::from_env(Command::Add, &lookup(&pairs)) {
                Ok(_) => assert!(valid, "interface name {ifname:?} must be rejected"),
                Err(error) => {
                    assert!(!valid, "interface name {ifname:?} must be accepted: {error}");
                    assert_eq!(error.code(), 4, "code for interface name {ifname:?}");
                    assert!(error.to_string().contains("CNI_IFNAME"), "message names the variable: {error}");
                }
            }
        }
    }
}
