//! The endpoint lifecycle behind the CNI calls: ADD, DEL, CHECK and GC. Each call is all or
//! nothing: a failed ADD undoes what it did, so no address, interface or identity leaks; DEL
//! and GC release in the reverse order of ADD.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use ipnet::IpNet;
use sha2::{Digest, Sha256};
use sluice_api::{CniAddResult, CniAttachment, CniGcRequest, CniGcResult, CniInterface, CniIpConfig, CniRequest, CniRoute};
use sluice_datapath::plumb::{PlumbRequest, GATEWAY_V4, GATEWAY_V6};

use super::{with_tables, Agent};
use crate::endpoints::{record_key, EndpointRecord};
use crate::error::AgentError;
use crate::ipam::Owner;

/// The host-side interface name of an attachment: "lxc" and 11 hex digits of a hash of the
/// attachment, unique on the node and stable across retries.
pub fn host_ifname(owner: &Owner) -> String {
    let digest = Sha256::digest(record_key(owner).as_bytes());
    format!("lxc{}", &hex::encode(digest)[..11])
}

/// Whether `name` is made as [`host_ifname`] makes names: "lxc" and 11 lowercase hex digits.
pub fn is_host_ifname(name: &str) -> bool {
    name.len() == 14 && name.starts_with("lxc") && name[3..].bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

// === impl Agent ===

impl Agent {
    pub async fn cni_add(&self, req: CniRequest) -> Result<CniAddResult, AgentError> {
        self.cni_add_in(req, None).await
    }

    /// ADD with the pod's network namespace handed over as an open descriptor (see
    /// [`passed_netns`]); without one, `req.netns` is opened by path.
    pub async fn cni_add_in(&self, mut req: CniRequest, netns: Option<Arc<OwnedFd>>) -> Result<CniAddResult, AgentError> {
        let started = Instant::now();
        let runtime_path = req.netns.clone();
        if let Some(fd) = &netns {
            req.netns = passed_netns(fd)?;
        }
        validate_attachment(&req, true)?;
        let _one = self.cni_lock.lock().await;
        let owner = Owner::new(req.container_id.clone(), req.ifname.clone());
        // Before anything that a failure would roll back: the rollback releases whatever the
        // attachment holds, which for a refused repeat is the working pod's.
        self.refuse_existing(&owner).await?;
        let mut undo = Undo::default();
        let result = match self.add_locked(&req, &runtime_path, &owner, &mut undo).await {
            Ok(record) => {
                // The pod's policy is in place before ADD returns, so before its processes run.
                if let Err(e) = self.sync_policies_blocking(true) {
                    tracing::warn!(attachment = %record_key(&owner), "programming policy for the new endpoint: {e}");
                }
                Ok(add_result(&record))
            }
            Err(e) => {
                tracing::warn!(attachment = %record_key(&owner), "ADD failed, rolling back: {e}");
                self.roll_back(&owner, &undo).await;
                Err(e)
            }
        };
        self.refresh_enrichment();
        self.endpoint_changes.notify_one();
        self.metrics.cni_add_seconds.observe(started.elapsed().as_secs_f64());
        result
    }

    /// A second ADD of an attachment that exists is refused and changes nothing (CNI
    /// specification: "If an interface of the requested name already exists in the container,
    /// the CNI plugin MUST return with an error"); the runtime DELs it first. A record whose
    /// interface is gone describes no pod any more (its namespace was deleted, or an ADD was cut
    /// short): it is released, as resync would, and the ADD goes ahead.
    async fn refuse_existing(&self, owner: &Owner) -> Result<(), AgentError> {
        let Some(old) = self.endpoints.get(owner)? else { return Ok(()) };
        if self.plumber.host_ifindex(&old.host_ifname).await?.is_some() {
            return Err(AgentError::AttachmentExists { key: old.key(), host_ifname: old.host_ifname, netns: old.netns });
        }
        tracing::info!(attachment = %old.key(), "interface {} is gone, releasing the endpoint before adding it again", old.host_ifname);
        self.destroy(&old).await
    }

    /// `req.netns` is where the namespace is opened; `runtime_path` what the record keeps (the
    /// runtime's path, shown to users and handed back in results).
    async fn add_locked(&self, req: &CniRequest, runtime_path: &str, owner: &Owner, undo: &mut Undo) -> Result<EndpointRecord, AgentError> {
        let host_ifname = host_ifname(owner);
        undo.host_ifname = Some(host_ifname.clone());
        let t = Instant::now();
        let labels = self.label_set(req).await?;
        let alloc = self.ipam.allocate(owner)?;
        tracing::debug!(ms = t.elapsed().as_secs_f64() * 1000.0, "ADD: labels and addresses");
        let plumb = PlumbRequest {
            netns: req.netns.clone().into(),
            ifname: req.ifname.clone(),
            host_ifname,
            ipv4: alloc.ipv4,
            ipv6: alloc.ipv6,
            mtu: req.mtu.unwrap_or(self.config.mtu),
        };
        let t = Instant::now();
        let plumbed = self.plumber.create_pair(&plumb).await?;
        tracing::debug!(ms = t.elapsed().as_secs_f64() * 1000.0, "ADD: pair created");
        let mut record = EndpointRecord {
            id: self.endpoints.next_id()?,
            container_id: req.container_id.clone(),
            ifname: req.ifname.clone(),
            netns: runtime_path.to_string(),
            pod_namespace: req.pod_namespace.clone(),
            pod_name: req.pod_name.clone(),
            ipv4: alloc.ipv4,
            ipv6: alloc.ipv6,
            mac: plumbed.pod_mac,
            host_ifname: plumb.host_ifname.clone(),
            host_ifindex: plumbed.host_ifindex,
            host_mac: plumbed.host_mac,
            identity: 0,
            labels,
            mtu: plumb.mtu,
        };
        // Identity, record and map entries first, so the program finds the endpoint from its
        // first packet; then the program is attached while the interface is configured (the
        // attach waits for an RCU grace period; doing both at once hides it).
        record.identity = self.identities.acquire(&record.labels, &record.key())?;
        self.endpoints.put(&record)?;
        let entry = record.entry();
        undo.entry = Some(entry.clone());
        self.with_datapath(|dp| dp.upsert_endpoint(&entry))?;
        let t = Instant::now();
        let tables = self.datapath.clone();
        let ifname = entry.host_ifname.clone();
        let attach = tokio::task::spawn_blocking(move || with_tables(&tables, |dp| dp.attach_endpoint(&ifname)));
        let configured = self.plumber.configure_pair(&plumb).await;
        let attached = attach.await.map_err(|source| AgentError::TaskFailed { task: "attaching from-pod", source })?;
        configured?;
        attached?;
        tracing::debug!(ms = t.elapsed().as_secs_f64() * 1000.0, "ADD: configured and attached");
        Ok(record)
    }

    /// Undoes a failed ADD completely, whatever step it reached: the attachment ends up with
    /// no record, interface, map entry, identity or address, as after DEL.
    async fn roll_back(&self, owner: &Owner, undo: &Undo) {
        let key = record_key(owner);
        if let Some(entry) = &undo.entry {
            if let Err(e) = self.with_datapath(|dp| {
                dp.detach_endpoint(&entry.host_ifname)?;
                dp.remove_endpoint(entry)
            }) {
                tracing::error!(attachment = %key, "rollback: removing datapath entries failed: {e}");
            }
        }
        if let Some(ifname) = &undo.host_ifname {
            if let Err(e) = self.with_datapath(|dp| dp.detach_endpoint(ifname)) {
                tracing::error!(attachment = %key, "rollback: detaching from {ifname} failed: {e}");
            }
            if let Err(e) = self.plumber.unplumb(ifname).await {
                tracing::error!(attachment = %key, "rollback: removing interface {ifname} failed: {e}");
            }
        }
        if let Err(e) = self.identities.release(&key) {
            tracing::error!(attachment = %key, "rollback: releasing identity failed: {e}");
        }
        if let Err(e) = self.endpoints.delete(owner) {
            tracing::error!(attachment = %key, "rollback: deleting record failed: {e}");
        }
        self.release_addresses(owner);
    }

    pub async fn cni_del(&self, req: CniRequest) -> Result<(), AgentError> {
        let started = Instant::now();
        let result = self.del(req).await;
        self.refresh_enrichment();
        self.endpoint_changes.notify_one();
        self.metrics.cni_del_seconds.observe(started.elapsed().as_secs_f64());
        result
    }

    async fn del(&self, req: CniRequest) -> Result<(), AgentError> {
        validate_attachment(&req, false)?;
        let _one = self.cni_lock.lock().await;
        let owner = Owner::new(req.container_id.clone(), req.ifname.clone());
        match self.endpoints.get(&owner)? {
            Some(record) => self.destroy(&record).await,
            None => {
                // Nothing recorded; make sure nothing is held either (idempotent DEL). An ADD cut
                // short before its record was written (the agent was killed) may have left the
                // interface: its name follows from the attachment.
                let ifname = host_ifname(&owner);
                self.with_datapath(|dp| dp.detach_endpoint(&ifname))?;
                if self.plumber.unplumb(&ifname).await? {
                    tracing::info!(attachment = %record_key(&owner), "DEL removed interface {ifname}, left by an ADD that was cut short");
                }
                self.identities.release(&record_key(&owner))?;
                self.ipam.release(&owner)?;
                Ok(())
            }
        }
    }

    pub async fn cni_check(&self, req: CniRequest) -> Result<(), AgentError> {
        self.cni_check_in(req, None).await
    }

    /// CHECK with the pod's network namespace handed over as a descriptor, as for ADD.
    pub async fn cni_check_in(&self, mut req: CniRequest, netns: Option<Arc<OwnedFd>>) -> Result<(), AgentError> {
        if let Some(fd) = &netns {
            req.netns = passed_netns(fd)?;
        }
        validate_attachment(&req, true)?;
        let _one = self.cni_lock.lock().await;
        let owner = Owner::new(req.container_id.clone(), req.ifname.clone());
        let record = self.endpoints.get(&owner)?.ok_or_else(|| AgentError::UnknownAttachment(record_key(&owner)))?;
        let plumb = PlumbRequest {
            netns: req.netns.clone().into(),
            ifname: record.ifname.clone(),
            host_ifname: record.host_ifname.clone(),
            ipv4: record.ipv4,
            ipv6: record.ipv6,
            mtu: record.mtu,
        };
        self.plumber.check(&plumb).await.map_err(|reason| AgentError::CheckFailed { key: record.key(), reason })?;
        let programmed = self.with_datapath(|dp| dp.programmed_ifindexes())?;
        if !programmed.iter().any(|(i, info)| *i == record.host_ifindex && *info == record.entry().info()) {
            return Err(AgentError::CheckFailed { key: record.key(), reason: "datapath entry missing or stale".into() });
        }
        Ok(())
    }

    pub async fn cni_gc(&self, req: CniGcRequest) -> Result<CniGcResult, AgentError> {
        let _one = self.cni_lock.lock().await;
        let valid: BTreeSet<Owner> = req.valid_attachments.iter().map(|a| Owner::new(a.container_id.clone(), a.ifname.clone())).collect();
        let mut released = Vec::new();
        for record in self.endpoints.list()? {
            if !valid.contains(&record.owner()) {
                if let Err(e) = self.destroy(&record).await {
                    tracing::warn!(endpoint = record.id, "GC could not release the endpoint: {e}");
                    continue;
                }
                released.push(CniAttachment { container_id: record.container_id.clone(), ifname: record.ifname.clone() });
            }
        }
        for owner in self.ipam.release_all_except(&valid)? {
            let _ = self.identities.release(&record_key(&owner));
            released.push(CniAttachment { container_id: owner.container_id, ifname: owner.ifname });
        }
        // What no record holds at all, valid or not: an ADD cut short left it.
        let kept = self.endpoints.list()?;
        for owner in self.release_unrecorded(&kept).await? {
            released.push(CniAttachment { container_id: owner.container_id, ifname: owner.ifname });
        }
        self.identities.gc()?;
        Ok(CniGcResult { released })
    }

    /// Removes an endpoint: program and entries first (nothing forwards to it any more), then
    /// the interface, and the address last so it cannot be handed out while still in use.
    pub(super) async fn destroy(&self, record: &EndpointRecord) -> Result<(), AgentError> {
        let entry = record.entry();
        self.with_datapath(|dp| {
            dp.detach_endpoint(&entry.host_ifname)?;
            dp.remove_endpoint(&entry)
        })?;
        self.plumber.unplumb(&record.host_ifname).await?;
        self.identities.release(&record.key())?;
        self.endpoints.delete(&record.owner())?;
        self.ipam.release(&record.owner())?;
        Ok(())
    }

    fn release_addresses(&self, owner: &Owner) {
        if let Err(e) = self.ipam.release(owner) {
            tracing::error!(attachment = %record_key(owner), "releasing addresses failed: {e}");
        }
    }

    /// The pod's label set from the cluster view. A pod not in the view is waited for (the
    /// runtime may have been told of it before this agent); in cluster mode it then fails with
    /// "try again later", on one machine it gets the labels of its namespace alone.
    async fn label_set(&self, req: &CniRequest) -> Result<BTreeMap<String, String>, AgentError> {
        let (Some(ns), Some(name)) = (&req.pod_namespace, &req.pod_name) else { return Ok(BTreeMap::new()) };
        let Some(state) = &self.state else {
            return Ok(sluice_model::LabelSet::for_pod(&BTreeMap::new(), ns, &sluice_model::labels::namespace_labels(ns, None))
                .as_map()
                .clone());
        };
        let mut rx = state.subscribe();
        let cluster = self.config.state.is_cluster();
        let waited = if cluster {
            std::time::Duration::from_secs(self.config.state.pod_wait_seconds)
        } else {
            std::time::Duration::from_millis(200)
        };
        let key = sluice_state::Store::pod_key(ns, name);
        if let Some(snapshot) = sluice_state::wait_for(&mut rx, waited, |s| s.synced && s.pods.contains_key(&key)).await {
            if let Some(set) = snapshot.pod_label_set(ns, name) {
                return Ok(set.as_map().clone());
            }
        }
        if cluster {
            let health = state.health();
            return Err(AgentError::PodUnknown {
                namespace: ns.clone(),
                name: name.clone(),
                waited,
                source_kind: health.kind,
                connected: health.connected,
            });
        }
        let snapshot = state.snapshot();
        let ns_labels = sluice_model::labels::namespace_labels(ns, snapshot.namespaces.get(ns).and_then(|n| n.metadata.labels.as_ref()));
        Ok(sluice_model::LabelSet::for_pod(&BTreeMap::new(), ns, &ns_labels).as_map().clone())
    }
}

/// What a failed ADD must undo.
#[derive(Default)]
struct Undo {
    host_ifname: Option<String>,
    entry: Option<sluice_datapath::EndpointEntry>,
}

/// The path through which this process reaches a namespace handed over as a descriptor
/// (`/proc/self/fd/<n>`, valid while the descriptor is held, whatever mount namespace the
/// runtime's path lives in); refused unless the descriptor is a network namespace.
pub fn passed_netns(fd: &OwnedFd) -> Result<String, AgentError> {
    if !is_network_namespace(fd) {
        let target = std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd())).map(|t| t.to_string_lossy().into_owned());
        return Err(AgentError::InvalidRequest {
            code: 4,
            message: format!(
                "the descriptor handed over with the request is not a network namespace (it is {:?})",
                target.unwrap_or_default()
            ),
        });
    }
    Ok(format!("/proc/self/fd/{}", fd.as_raw_fd()))
}

/// Whether `fd` is a namespace file (on nsfs, however it was reached: `/proc/<pid>/ns/net` or a
/// bind mount of one) of a network namespace (`NS_GET_NSTYPE`).
fn is_network_namespace(fd: &OwnedFd) -> bool {
    const NSFS_MAGIC: i64 = 0x6e73_6673;
    /// `_IO(0xb7, 0x3)` in linux/nsfs.h.
    const NS_GET_NSTYPE: libc::c_ulong = 0xb703;
    // SAFETY: fstatfs writes into the struct it is given; the descriptor is open.
    let mut fs: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::fstatfs(fd.as_raw_fd(), &mut fs) } != 0 || fs.f_type as i64 != NSFS_MAGIC {
        return false;
    }
    // SAFETY: NS_GET_NSTYPE takes no argument and only reads the descriptor.
    let kind = unsafe { libc::ioctl(fd.as_raw_fd(), NS_GET_NSTYPE as _) };
    kind == libc::CLONE_NEWNET
}

/// The CNI specification's rules for container IDs and interface names, checked again here
/// because the API is not only for the plugin.
fn validate_attachment(req: &CniRequest, need_netns: bool) -> Result<(), AgentError> {
    let bad = |code, message: String| Err(AgentError::InvalidRequest { code, message });
    let cid = &req.container_id;
    if cid.is_empty()
        || !cid.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
        || !cid.chars().all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
    {
        return bad(4, format!("invalid container ID {cid:?}"));
    }
    let ifname = &req.ifname;
    if ifname.is_empty()
        || ifname.len() > 15
        || ifname == "."
        || ifname == ".."
        || ifname.chars().any(|c| c == '/' || c == ':' || c.is_whitespace())
    {
        return bad(4, format!("invalid interface name {ifname:?}"));
    }
    if let Some(mtu) = req.mtu {
        if !(1280..=65535).contains(&mtu) {
            return bad(7, format!("MTU {mtu} is outside 1280..=65535 (IPv6 needs at least 1280)"));
        }
    }
    if need_netns {
        if req.netns.is_empty() {
            return bad(4, "CNI_NETNS is required".into());
        }
        if !Path::new(&req.netns).exists() {
            return bad(4, format!("network namespace {} does not exist", req.netns));
        }
    }
    Ok(())
}

fn add_result(record: &EndpointRecord) -> CniAddResult {
    let mut ips = Vec::new();
    let mut routes = Vec::new();
    if let Some(v4) = record.ipv4 {
        ips.push(CniIpConfig { address: IpNet::from(IpAddr::V4(v4)), gateway: IpAddr::V4(GATEWAY_V4), interface: 1 });
        routes.push(CniRoute { dst: IpNet::V4(ipnet::Ipv4Net::default()), gw: IpAddr::V4(GATEWAY_V4) });
    }
    if let Some(v6) = record.ipv6 {
        ips.push(CniIpConfig { address: IpNet::from(IpAddr::V6(v6)), gateway: IpAddr::V6(GATEWAY_V6), interface: 1 });
        routes.push(CniRoute { dst: IpNet::V6(ipnet::Ipv6Net::default()), gw: IpAddr::V6(GATEWAY_V6) });
    }
    CniAddResult {
        interfaces: vec![
            CniInterface { name: record.host_ifname.clone(), mac: record.host_mac.to_string(), mtu: record.mtu, sandbox: None },
            CniInterface { name: record.ifname.clone(), mac: record.mac.to_string(), mtu: record.mtu, sandbox: Some(record.netns.clone()) },
        ],
        ips,
        routes,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_network_namespace_is_taken_as_one() {
        let own: OwnedFd = std::fs::File::open("/proc/self/ns/net").unwrap().into();
        let path = passed_netns(&own).unwrap();
        assert_eq!(path, format!("/proc/self/fd/{}", own.as_raw_fd()));
        let same = std::fs::metadata(&path).unwrap();
        let net = std::fs::metadata("/proc/self/ns/net").unwrap();
        assert_eq!(
            (std::os::unix::fs::MetadataExt::ino(&same)),
            std::os::unix::fs::MetadataExt::ino(&net),
            "the path reaches the namespace"
        );

        for other in ["/dev/null", "/proc/self/ns/mnt"] {
            let fd: OwnedFd = std::fs::File::open(other).unwrap().into();
            let error = passed_netns(&fd).unwrap_err();
            assert!(
                matches!(&error, AgentError::InvalidRequest { code: 4, message } if message.contains("not a network namespace")),
                "{other}: {error}"
            );
        }
    }
}
