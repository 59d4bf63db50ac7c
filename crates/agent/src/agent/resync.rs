//! The resync that heals the datapath from the endpoint records, level-triggered: whatever
//! event was missed, endpoints whose interface vanished are released, interfaces, identity
//! holds and addresses no record holds are freed, and the maps and attachments are made to
//! match the records.

use std::collections::BTreeSet;
use std::time::Instant;

use super::cni::is_host_ifname;
use super::Agent;
use crate::endpoints::{record_key, EndpointRecord};
use crate::error::AgentError;
use crate::ipam::Owner;
use crate::reconciler::{reconcile, ReconcileReport};

impl Agent {
    /// Heals the datapath from the records: endpoints whose interface vanished are released,
    /// addresses no record holds are freed, and the maps and attachments are reconciled.
    pub async fn resync(&self, reattach_all: bool) -> Result<ReconcileReport, AgentError> {
        let started = Instant::now();
        let result = self.resync_locked(reattach_all).await;
        self.refresh_enrichment();
        self.metrics.reconcile_seconds.observe(started.elapsed().as_secs_f64());
        if result.is_err() {
            self.metrics.reconcile_errors.inc();
        }
        result
    }

    async fn resync_locked(&self, reattach_all: bool) -> Result<ReconcileReport, AgentError> {
        let _one = self.cni_lock.lock().await;
        let started = Instant::now();
        let mut desired = Vec::new();
        for mut record in self.endpoints.list()? {
            match self.plumber.host_ifindex(&record.host_ifname).await? {
                None => {
                    tracing::info!(endpoint = record.id, "interface {} is gone, releasing the endpoint", record.host_ifname);
                    if let Err(e) = self.destroy(&record).await {
                        tracing::warn!(endpoint = record.id, "releasing the endpoint failed, will retry: {e}");
                    }
                    continue;
                }
                Some(index) if index != record.host_ifindex => {
                    record.host_ifindex = index;
                    self.endpoints.put(&record)?;
                }
                Some(_) => {}
            }
            desired.push(record);
        }
        self.release_unrecorded(&desired).await?;
        let checked = started.elapsed();
        let entries: Vec<_> = desired.iter().map(|r| r.entry()).collect();
        let report = self.with_datapath(|dp| reconcile(&entries, dp, reattach_all))?;
        tracing::debug!(
            checked_ms = checked.as_secs_f64() * 1000.0,
            total_ms = started.elapsed().as_secs_f64() * 1000.0,
            endpoints = entries.len(),
            "resync"
        );
        if report.changed() {
            tracing::info!(?report, "datapath reconciled");
        }
        Ok(report)
    }

    /// Releases what no endpoint in `records` holds, whatever left it: an ADD cut short before
    /// its record was written (the agent killed mid-way) leaves an interface, an identity hold
    /// and addresses; a DEL cut short leaves addresses. Interfaces are recognised by the name
    /// `host_ifname` gives them. Runs under the CNI lock, so no ADD is half-way. Returns the
    /// attachments whose addresses were released.
    pub(super) async fn release_unrecorded(&self, records: &[EndpointRecord]) -> Result<Vec<Owner>, AgentError> {
        let interfaces: BTreeSet<&str> = records.iter().map(|r| r.host_ifname.as_str()).collect();
        for name in self.plumber.veths().await? {
            if is_host_ifname(&name) && !interfaces.contains(name.as_str()) {
                tracing::info!("removing interface {name}: no endpoint holds it (an ADD was cut short)");
                self.with_datapath(|dp| dp.detach_endpoint(&name))?;
                self.plumber.unplumb(&name).await?;
            }
        }
        let keys: BTreeSet<String> = records.iter().map(|r| r.key()).collect();
        for key in self.identities.release_all_except(&keys)? {
            tracing::info!(attachment = %key, "released an identity hold no endpoint has");
        }
        let owners: BTreeSet<Owner> = records.iter().map(|r| r.owner()).collect();
        let released = self.ipam.release_all_except(&owners)?;
        for owner in &released {
            tracing::info!(attachment = %record_key(owner), "released addresses no endpoint holds");
        }
        Ok(released)
    }
}
