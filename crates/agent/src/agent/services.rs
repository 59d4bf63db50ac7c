//! Services glue: runs a round of the service loop against the datapath, closes connections to
//! removed backends in every pod's namespace, collects expired conntrack entries, and lists
//! the programmed frontends for `sluice service list`.

use std::sync::Arc;

use super::Agent;
use crate::error::AgentError;

impl Agent {
    /// One round of the service loop: programs services when the store changed (or `force`),
    /// then closes established connections to backends that are gone, in every pod's network
    /// namespace and the node's.
    pub async fn sync_services(self: &Arc<Self>, force: bool) -> Result<Option<crate::services::program::ProgramReport>, AgentError> {
        let Some(services) = self.services.clone() else { return Ok(None) };
        let agent = self.clone();
        let snapshot = self.cluster_snapshot();
        let report = tokio::task::spawn_blocking(move || {
            let mut guard = agent.datapath.lock().unwrap_or_else(|p| p.into_inner());
            services.sync(guard.as_mut(), &snapshot, force)
        })
        .await
        .map_err(|source| AgentError::TaskFailed { task: "service sync", source })??;
        if let Some(r) = &report {
            if !r.backends_removed.is_empty() {
                let mut netns: Vec<Option<std::path::PathBuf>> = vec![None];
                netns.extend(self.endpoints.list()?.into_iter().map(|e| Some(std::path::PathBuf::from(e.netns))));
                let removed = r.backends_removed.clone();
                let services = self.services.clone();
                let closed = tokio::task::spawn_blocking(move || services.map(|s| s.close_connections(&removed, &netns)).unwrap_or(0))
                    .await
                    .unwrap_or(0);
                tracing::info!(backends = r.backends_removed.len(), closed, "backends removed; their established connections closed");
            }
        }
        Ok(report)
    }

    /// Removes expired service and policy conntrack entries.
    pub fn collect_conntrack(&self) -> Result<usize, AgentError> {
        let Some(services) = &self.services else { return Ok(0) };
        let mut guard = self.datapath.lock().unwrap_or_else(|p| p.into_inner());
        let mut n = services.collect_conntrack(guard.as_mut())?;
        if let Some(policies) = &self.policies {
            let c = &self.config.services;
            n += policies.collect_conntrack(
                guard.as_mut(),
                c.conntrack_tcp_timeout,
                c.conntrack_tcp_closing_timeout,
                c.conntrack_other_timeout,
            )?;
        }
        Ok(n)
    }

    /// The frontends as programmed, for `sluice service list`.
    pub fn service_list(&self) -> Vec<sluice_api::ServiceFrontend> {
        use crate::services::desired::Scope;
        let Some(services) = &self.services else { return Vec::new() };
        services
            .list()
            .into_iter()
            .map(|f| {
                let flag = |bit: u32| f.flags & bit as u16 != 0;
                let kind = if flag(sluice_abi::SLUICE_LB_F_NODEPORT) {
                    "NodePort"
                } else if flag(sluice_abi::SLUICE_LB_F_EXTERNAL) {
                    "ExternalIP"
                } else {
                    "ClusterIP"
                };
                let mut flags = Vec::new();
                for (bit, name) in [
                    (sluice_abi::SLUICE_LB_F_LOCAL_ONLY, "local-only"),
                    (sluice_abi::SLUICE_LB_F_AFFINITY, "affinity"),
                    (sluice_abi::SLUICE_LB_F_MAGLEV, "maglev"),
                ] {
                    if flag(bit) {
                        flags.push(name.to_string());
                    }
                }
                let mut backends: Vec<sluice_api::ServiceBackend> = f
                    .backends
                    .iter()
                    .map(|((addr, port, _), local)| sluice_api::ServiceBackend {
                        address: *addr,
                        port: *port,
                        state: "active".into(),
                        local: *local,
                    })
                    .collect();
                backends.extend(f.terminating.iter().map(|(addr, port, _)| sluice_api::ServiceBackend {
                    address: *addr,
                    port: *port,
                    state: "terminating".into(),
                    local: false,
                }));
                sluice_api::ServiceFrontend {
                    service: f.service.as_ref().map(|s| format!("{}/{}", s.namespace, s.service)),
                    port_name: f.service.as_ref().map(|s| s.port_name.clone()).filter(|n| !n.is_empty()),
                    address: f.key.addr,
                    port: f.key.port,
                    protocol: f.key.protocol.as_str().into(),
                    kind: kind.into(),
                    scope: match f.key.scope {
                        Scope::External => "external".into(),
                        Scope::Internal => "internal".into(),
                    },
                    flags,
                    backends,
                }
            })
            .collect()
    }
}
