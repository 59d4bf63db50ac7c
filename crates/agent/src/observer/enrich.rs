//! Naming the ends of a flow: local endpoints by address (and by host ifindex for frames that
//! carry no address the endpoint owns, such as a spoofing pod's), with their identity.

use std::collections::HashMap;
use std::net::IpAddr;

use sluice_api::{Flow, FlowPeer};

#[derive(Debug, Clone, PartialEq, Eq)]
struct Named {
    namespace: String,
    pod: String,
    identity: u32,
}

/// What the observer knows about the node's endpoints.
#[derive(Debug, Clone, Default)]
pub struct Enrichment {
    by_ip: HashMap<IpAddr, Named>,
    by_ifindex: HashMap<u32, Named>,
    /// Policy rule cookies -> the policies behind them: the policy programmer's own table,
    /// filled as each cookie is handed out, before an entry carrying it is written, so a flow
    /// that entry decides is named at once.
    policy_rules: Option<crate::policy::program::RuleNames>,
}

impl Enrichment {
    pub fn insert(&mut self, ip: IpAddr, host_ifindex: u32, namespace: &str, pod: &str, identity: u32) {
        let named = Named { namespace: namespace.to_owned(), pod: pod.to_owned(), identity };
        self.by_ip.insert(ip, named.clone());
        self.by_ifindex.insert(host_ifindex, named);
    }

    pub fn set_policy_rules(&mut self, rules: crate::policy::program::RuleNames) {
        self.policy_rules = Some(rules);
    }

    pub fn apply(&self, flow: &mut Flow) {
        if let Some(cookie) = flow.policy_rule {
            let named = self.policy_rules.as_ref().and_then(|r| r.read().ok()?.get(&cookie).cloned());
            flow.policy = Some(match named {
                Some(names) => names,
                None if cookie == 0 => "default deny: selected by a policy, no rule allows it".into(),
                None => format!("policy rule {cookie}"),
            });
        }
        let (src, dst) = (flow.source.ip, flow.destination.ip);
        name(&mut flow.source, src.and_then(|ip| self.by_ip.get(&ip)));
        name(&mut flow.destination, dst.and_then(|ip| self.by_ip.get(&ip)));
        // A packet a pod sent, whatever source address it claims, came from that pod.
        if flow.point == "from-pod" && flow.source.pod.is_none() {
            if let Some(n) = self.by_ifindex.get(&flow.ifindex) {
                flow.source.namespace = Some(n.namespace.clone());
                flow.source.pod = Some(n.pod.clone());
                flow.source.identity = Some(n.identity);
            }
        }
    }
}

fn name(peer: &mut FlowPeer, named: Option<&Named>) {
    if let Some(n) = named {
        peer.namespace = Some(n.namespace.clone());
        peer.pod = Some(n.pod.clone());
        peer.identity = Some(n.identity);
    }
}
