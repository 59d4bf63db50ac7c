//! Policy glue: runs a round of the policy loop for this node's endpoints, and exposes the
//! loop's last snapshot to the policy questions of the API and to flow enrichment.

use std::sync::Arc;

use super::Agent;
use crate::error::AgentError;

impl Agent {
    /// One round of the policy loop: compiles and programs this node's policy tables when the
    /// store or the local endpoints changed (or `force`).
    pub async fn sync_policies(self: &Arc<Self>, force: bool) -> Result<Option<crate::policy::program::PolicyReport>, AgentError> {
        let agent = self.clone();
        tokio::task::spawn_blocking(move || agent.sync_policies_blocking(force))
            .await
            .map_err(|source| AgentError::TaskFailed { task: "policy sync", source })?
    }

    pub(super) fn sync_policies_blocking(&self, force: bool) -> Result<Option<crate::policy::program::PolicyReport>, AgentError> {
        let Some(policies) = self.policies.clone() else { return Ok(None) };
        let local: Vec<crate::policy::program::LocalEndpoint> = self
            .endpoints
            .list()?
            .into_iter()
            .filter_map(|e| {
                let ips = e.ipv4.map(std::net::IpAddr::from).into_iter().chain(e.ipv6.map(std::net::IpAddr::from)).collect();
                Some(crate::policy::program::LocalEndpoint { id: e.id, pod: format!("{}/{}", e.pod_namespace?, e.pod_name?), ips })
            })
            .collect();
        let report = {
            let mut guard = self.datapath.lock().unwrap_or_else(|p| p.into_inner());
            policies
                .sync(guard.as_mut(), &self.identities, &self.cluster_snapshot(), local, force)
                .map_err(|e| AgentError::Policy(e.to_string()))?
        };
        if report.as_ref().is_some_and(|r| r.entries_written > 0) {
            self.refresh_enrichment();
        }
        Ok(report)
    }

    /// The policy loop's last inputs and tables.
    pub fn policy_snapshot(&self) -> Option<Arc<crate::policy::sync::PolicySnapshot>> {
        self.policies.as_ref().map(|p| p.snapshot())
    }

    /// Names the policies behind a flow's rule cookie.
    pub fn describe_policy_rule(&self, cookie: u32) -> Option<String> {
        self.policies.as_ref()?.describe_rule(cookie)
    }
}
