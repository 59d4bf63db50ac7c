//! Cluster glue: the cluster view the other loops read, and, in cluster mode (etcd), the round
//! that publishes this node's endpoints and identities and routes the other nodes' pod CIDRs.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;

use super::Agent;
use crate::error::AgentError;

impl Agent {
    /// The newest cluster snapshot; an empty unsynced one when the agent has no source. In
    /// cluster mode pods without a status carry the addresses their nodes published.
    pub fn cluster_snapshot(&self) -> sluice_state::ClusterState {
        let snapshot = self.state.as_ref().map(|s| s.snapshot()).unwrap_or_default();
        if self.cluster.is_some() {
            return crate::cluster::view::with_published_endpoints(snapshot);
        }
        snapshot
    }

    /// Whether the agent is ready to serve pods (the readiness probe): its state source, if it
    /// has one, has read everything once. A source that loses its store later keeps the agent
    /// ready: the datapath goes on forwarding with the view it has.
    pub fn readiness(&self) -> Result<(), String> {
        let Some(state) = &self.state else { return Ok(()) };
        if state.snapshot().synced {
            return Ok(());
        }
        let health = state.health();
        Err(format!(
            "the {} state source has not read the cluster yet: {}",
            health.kind,
            health.last_error.unwrap_or_else(|| "no error reported".into())
        ))
    }

    pub fn cluster(&self) -> Option<&Arc<crate::cluster::Cluster>> {
        self.cluster.as_ref()
    }

    /// Cluster mode, one round: publishes this node's endpoints (unless `publish` is false: a
    /// debounce window is open), holds the identities it uses, routes the other nodes' pod
    /// CIDRs. Level-triggered: each step compares what is with what should be, so a missed
    /// change heals on the next round.
    pub async fn sync_cluster(&self, publish: bool) -> Result<(), AgentError> {
        let Some(cluster) = &self.cluster else { return Ok(()) };
        if publish {
            self.publish_endpoints(cluster).await?;
        }
        let held: BTreeSet<u32> = self.identities.list()?.into_iter().filter(|i| i.references > 0).map(|i| i.id).collect();
        cluster.hold_identities(held).await?;
        let snapshot = self.cluster_snapshot();
        if snapshot.synced {
            let nl = sluice_datapath::netlink::Netlink::current()?;
            let mut networks = Vec::new();
            for dev in &self.netdevs {
                let link = nl.link(dev).await?;
                networks.extend(nl.networks(link.index).await?.into_iter().map(|n| (n, link.index)));
            }
            let desired = crate::cluster::routes::desired_routes(&self.config.node_name, snapshot.nodes.values(), &networks);
            let report = crate::cluster::routes::reconcile(&desired).await?;
            for r in &report.added {
                tracing::info!(destination = %r.destination, via = %r.gateway, "route to a node's pods added");
            }
            for r in &report.removed {
                tracing::info!(destination = %r.destination, via = %r.gateway, "route to a vanished node's pods withdrawn");
            }
        }
        cluster.set_health("ready", self.host_routing.mode.as_str()).await?;
        Ok(())
    }

    /// Publishes the node's endpoints as its records have them.
    async fn publish_endpoints(&self, cluster: &crate::cluster::Cluster) -> Result<(), AgentError> {
        let mut endpoints = BTreeMap::new();
        for e in self.endpoints.list()? {
            let (Some(namespace), Some(name)) = (e.pod_namespace.clone(), e.pod_name.clone()) else { continue };
            let ips: Vec<IpAddr> = e.ipv4.map(IpAddr::from).into_iter().chain(e.ipv6.map(IpAddr::from)).collect();
            let record = sluice_state::EndpointRecord {
                namespace: namespace.clone(),
                name: name.clone(),
                node: self.config.node_name.clone(),
                ips,
                identity: e.identity,
            };
            endpoints.insert(sluice_state::Store::key(&namespace, &name), record);
        }
        cluster.publish_endpoints(endpoints).await.map(drop)
    }
}
