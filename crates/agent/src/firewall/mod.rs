//! The host firewall audit: reads the netfilter state of the namespace the agent runs in
//! (iptables-legacy, iptables-nft and native nftables) and classifies every rule against eBPF
//! host routing with `sluice-netfilter`. Used at start to decide whether host routing may be
//! `bpf`, by `sluice preflight`, and by the guard that watches for new rules afterwards.
//!
//! The rules are read with the tools' own dump commands (`iptables-save`, `nft -j list
//! ruleset`), as kube-proxy does: their output is the stable interface of both backends.

pub mod api;
pub mod watch;

use std::process::Command;

use ipnet::IpNet;
use sluice_netfilter::classify::{Context, Report};
use sluice_netfilter::model::{Family, Ruleset};

/// One dump source and how to read it.
struct Source {
    command: &'static str,
    args: &'static [&'static str],
    kind: Kind,
}

enum Kind {
    IptablesSave(Family),
    NftJson,
}

const SOURCES: &[Source] = &[
    Source { command: "iptables-legacy-save", args: &[], kind: Kind::IptablesSave(Family::Ipv4) },
    Source { command: "ip6tables-legacy-save", args: &[], kind: Kind::IptablesSave(Family::Ipv6) },
    Source { command: "iptables-nft-save", args: &[], kind: Kind::IptablesSave(Family::Ipv4) },
    Source { command: "ip6tables-nft-save", args: &[], kind: Kind::IptablesSave(Family::Ipv6) },
    Source { command: "nft", args: &["-j", "list", "ruleset"], kind: Kind::NftJson },
];

/// The sources that only iptables-legacy can change (no netlink notification tells of them).
pub const LEGACY_SOURCES: &[&str] = &["iptables-legacy-save", "ip6tables-legacy-save"];

/// Why the audit could not read a source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceProblem {
    pub source: String,
    pub problem: String,
}

/// An audit's outcome: the classified rules and the sources that could not be read.
#[derive(Debug)]
pub struct Audit {
    pub report: Report,
    pub problems: Vec<SourceProblem>,
    pub sources_read: Vec<String>,
}

/// What the audit needs to know of the node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditContext {
    pub pod_cidrs: Vec<IpNet>,
    pub devices: Vec<String>,
}

/// Whether the calling thread's network namespace has any iptables-legacy table (IPv4 or
/// IPv6), as the kernel lists them in `/proc/net/ip{,6}_tables_names` (what `iptables-legacy-save`
/// reads too). A kernel without legacy iptables has neither file: none.
pub fn legacy_tables_present() -> bool {
    ["/proc/thread-self/net/ip_tables_names", "/proc/thread-self/net/ip6_tables_names"]
        .iter()
        .any(|path| std::fs::read_to_string(path).is_ok_and(|names| !names.trim().is_empty()))
}

/// Reads every available source (`only`: restrict to these commands) and classifies the rules.
/// A tool that is not installed is skipped silently: that backend cannot hold rules.
pub fn audit(ctx: &AuditContext, only: Option<&[&str]>) -> Audit {
    let mut parts = Vec::new();
    let mut problems = Vec::new();
    let mut sources_read = Vec::new();
    for source in SOURCES.iter().filter(|s| only.is_none_or(|o| o.contains(&s.command))) {
        let output = match Command::new(source.command).args(source.args).output() {
            Ok(o) => o,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => {
                problems.push(SourceProblem { source: source.command.into(), problem: e.to_string() });
                continue;
            }
        };
        if !output.status.success() {
            let err = String::from_utf8_lossy(&output.stderr).trim().to_owned();
            // A kernel without that backend's modules reports it here; it cannot hold rules.
            if err.contains("not supported") || err.contains("Protocol not supported") || err.contains("does not exist") {
                continue;
            }
            problems.push(SourceProblem { source: source.command.into(), problem: err });
            continue;
        }
        let text = String::from_utf8_lossy(&output.stdout);
        let parsed = match &source.kind {
            Kind::IptablesSave(family) => sluice_netfilter::iptables::parse(&text, *family).map_err(|e| e.to_string()),
            Kind::NftJson => sluice_netfilter::nft::parse(&text).map_err(|e| e.to_string()),
        };
        match parsed {
            Ok(r) => {
                parts.push(r);
                sources_read.push(source.command.to_owned());
            }
            Err(e) => problems.push(SourceProblem { source: source.command.into(), problem: e }),
        }
    }
    let ruleset = Ruleset::merge(parts);
    let context = Context::new(ctx.pod_cidrs.clone(), ctx.devices.clone());
    Audit { report: Report::new(&ruleset, &context), problems, sources_read }
}

/// One line naming a bypassed rule: `ip filter FORWARD #1: -A FORWARD -s ... -j DROP (reason)`.
pub fn describe(v: &sluice_netfilter::classify::Verdict) -> String {
    format!("{:?} {} {} #{}: {} ({})", v.rule.backend, v.rule.table, v.rule.chain, v.rule.position, v.rule.text, v.reason)
}
