//! What the agent reports: status, endpoints, metrics, recent flows and events, and the names
//! it gives the observer so flows read as pods rather than addresses.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::sync::Arc;

use super::Agent;
use crate::endpoints::EndpointRecord;
use crate::error::AgentError;
use crate::events::Events;
use crate::metrics::Snapshot;
use crate::observer::{Enrichment, Observer};

impl Agent {
    /// Tells the observer the names of the node's endpoints.
    pub(super) fn refresh_enrichment(&self) {
        let Ok(records) = self.endpoints.list() else { return };
        let mut e = Enrichment::default();
        for r in &records {
            let (ns, pod) = (r.pod_namespace.as_deref().unwrap_or(""), r.pod_name.as_deref().unwrap_or(&r.container_id));
            for ip in [r.ipv4.map(IpAddr::from), r.ipv6.map(IpAddr::from)].into_iter().flatten() {
                e.insert(ip, r.host_ifindex, ns, pod, r.identity);
            }
        }
        if let Some(rules) = self.policies.as_ref().and_then(|p| p.rule_names()) {
            e.set_policy_rules(rules);
        }
        self.observer.set_enrichment(e);
    }

    pub fn observer(&self) -> &Arc<Observer> {
        &self.observer
    }

    pub fn events(&self) -> &Arc<Events> {
        &self.events
    }

    /// Datapath losses by reason, named as the API names them.
    fn datapath_losses(&self) -> Result<Vec<sluice_api::LostEvents>, AgentError> {
        let losses = self.with_datapath(|dp| dp.event_losses())?;
        Ok(sluice_abi::EVENT_LOSSES
            .iter()
            .map(|l| sluice_api::LostEvents {
                count: losses.get(*l as usize).copied().unwrap_or(0),
                reason: sluice_abi::event_loss_name(*l).into(),
            })
            .collect())
    }

    pub fn flows(&self, filter: &sluice_api::FlowFilter) -> Result<sluice_api::FlowsResponse, AgentError> {
        Ok(sluice_api::FlowsResponse { flows: self.observer.recent(filter), lost: self.datapath_losses()? })
    }

    pub fn metrics_text(&self) -> Result<String, AgentError> {
        let (drops, fwd, maps) = self.with_datapath(|dp| Ok((dp.drop_counters()?, dp.forward_counters()?, dp.map_pressure())))?;
        let directions = ["from-pod", "from-netdev", "to-pod"];
        let reasons = sluice_abi::sluice_drop_reason::SLUICE_DROP_REASON_MAX as usize;
        let kinds = sluice_abi::sluice_forward_kind::SLUICE_FWD_KIND_MAX as usize;
        let mut snapshot = Snapshot::default();
        for (p, direction) in directions.iter().enumerate() {
            for r in sluice_abi::DROP_REASONS {
                let c = drops.get(p * reasons + r as usize).copied().unwrap_or_default();
                snapshot.drops.push((sluice_abi::drop_reason_name(r).into(), (*direction).into(), c.packets, c.bytes));
            }
            for k in sluice_abi::FORWARD_KINDS {
                let c = fwd.get(p * kinds + k as usize).copied().unwrap_or_default();
                snapshot.forwarded.push((sluice_abi::forward_kind_name(k).into(), (*direction).into(), c.packets, c.bytes));
            }
        }
        snapshot.maps = maps.into_iter().map(|m| (m.map.to_owned(), m.entries as u64, m.capacity as u64)).collect();
        snapshot.events_lost = self.datapath_losses()?.into_iter().map(|l| (l.reason, l.count)).collect();
        snapshot.flows_observed = self.observer.decoded();
        snapshot.l7_requests = self.observer.l7_requests();
        let records = self.endpoints.list()?;
        snapshot.endpoints = records.len() as u64;
        snapshot.identities = records.iter().map(|r| r.identity).collect::<BTreeSet<_>>().len() as u64;
        crate::metrics::render(&self.metrics, snapshot)
            .map_err(|_| AgentError::InvalidRequest { code: 999, message: "metrics could not be encoded".into() })
    }

    pub fn endpoints(&self) -> Result<Vec<sluice_api::Endpoint>, AgentError> {
        Ok(self.endpoints.list()?.iter().map(EndpointRecord::to_api).collect())
    }

    /// The status; without map pressure (`maps` false) it does not iterate the maps.
    pub fn status_with(&self, maps: bool) -> Result<sluice_api::Status, AgentError> {
        let endpoint_count = self.endpoints.list()?.len();
        let (attached, counters, fwd) =
            self.with_datapath(|dp| Ok((dp.attached_endpoints()?, dp.drop_counters()?, dp.forward_counters()?)))?;
        let mut programs = vec![sluice_api::AttachedProgram {
            program: "from_pod".into(),
            interface: "pod veths (host side)".into(),
            attach: "tcx/ingress".into(),
            count: attached.len(),
        }];
        for dev in &self.netdevs {
            programs.push(sluice_api::AttachedProgram {
                program: "from_netdev".into(),
                interface: dev.clone(),
                attach: "tcx/ingress".into(),
                count: 1,
            });
        }
        let mut xdp_counts = Vec::new();
        if let Some(x) = &self.xdp {
            let x = x.lock().unwrap_or_else(|p| p.into_inner());
            for (dev, mode) in x.attachments() {
                programs.push(sluice_api::AttachedProgram {
                    program: "xdp_netdev".into(),
                    interface: dev,
                    attach: format!("xdp/{}", mode.as_str()),
                    count: 1,
                });
            }
            xdp_counts = x.counters()?;
        }
        // Totals over both observation points.
        let total = |v: &[sluice_datapath::CounterValue], stride: usize, i: usize| {
            let mut t = sluice_datapath::CounterValue::default();
            for p in 0..sluice_abi::sluice_obs_point::SLUICE_POINT_MAX as usize {
                let c = v.get(p * stride + i).copied().unwrap_or_default();
                t.packets += c.packets;
                t.bytes += c.bytes;
            }
            t
        };
        let reasons = sluice_abi::sluice_drop_reason::SLUICE_DROP_REASON_MAX as usize;
        let kinds = sluice_abi::sluice_forward_kind::SLUICE_FWD_KIND_MAX as usize;
        let drops = sluice_abi::DROP_REASONS
            .iter()
            .map(|r| {
                let c = total(&counters, reasons, *r as usize);
                sluice_api::DropCount { reason: sluice_abi::drop_reason_name(*r).into(), packets: c.packets, bytes: c.bytes }
            })
            .collect();
        let mut drops: Vec<sluice_api::DropCount> = drops;
        let mut forwards: Vec<sluice_api::DropCount> = sluice_abi::FORWARD_KINDS
            .iter()
            .map(|k| {
                let c = total(&fwd, kinds, *k as usize);
                sluice_api::DropCount { reason: sluice_abi::forward_kind_name(*k).into(), packets: c.packets, bytes: c.bytes }
            })
            .collect();
        if let Some(c) = xdp_counts.get(sluice_abi::sluice_xdp_counter::SLUICE_XDP_FORWARDED as usize) {
            forwards.push(sluice_api::DropCount { reason: "xdp forward".into(), packets: c.packets, bytes: c.bytes });
        }
        if let Some(c) = xdp_counts.get(sluice_abi::sluice_xdp_counter::SLUICE_XDP_DROPPED_NO_FRONTEND as usize) {
            drops.push(sluice_api::DropCount { reason: "xdp: NodePort without frontend".into(), packets: c.packets, bytes: c.bytes });
        }
        let map_usage: Vec<_> = if maps { self.with_datapath(|dp| Ok(dp.map_pressure()))? } else { Vec::new() }
            .into_iter()
            .map(|m| sluice_api::MapUsage { map: m.map.into(), entries: m.entries, capacity: m.capacity })
            .collect();
        Ok(sluice_api::Status {
            node_name: self.config.node_name.clone(),
            healthy: true,
            version: env!("CARGO_PKG_VERSION").into(),
            host_routing: sluice_api::HostRoutingStatus {
                mode: self.host_routing.mode.as_str().into(),
                requested: self.config.host_routing.as_str().into(),
                reason: self.host_routing.reason.clone(),
            },
            endpoint_count,
            pod_cidrs: self.config.pod_cidrs.clone(),
            programs,
            drops,
            forwards,
            uptime_seconds: self.started.elapsed().as_secs(),
            warnings: map_usage.iter().filter_map(sluice_api::MapUsage::warning).collect(),
            maps: map_usage,
            services: self.services.as_ref().map(|s| {
                let st = s.stats();
                sluice_api::ServicesStatus {
                    socket_lb: self.socket_lb.clone(),
                    frontends: st.frontends,
                    last_program_micros: st.last_program_micros,
                    last_error: st.last_error,
                    conntrack_collected: st.conntrack_collected,
                    sockets_destroyed: st.sockets_destroyed,
                    store_generation: st.store_generation,
                    last_recomputed: st.last_recomputed,
                }
            }),
        })
    }
}
