//! The reconciler: makes the datapath's tables equal to the endpoint records, whatever woke it.
//! Level-triggered — it computes the difference between what should be and what is, writes
//! only that difference, and removes what no record claims (leaks from a crash, a pod deleted
//! while the agent was away). It runs at start and every `resyncSeconds`; CNI calls program
//! their own endpoint directly and the next pass verifies it.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use sluice_datapath::{DatapathError, DatapathTables, EndpointEntry};

/// What one pass changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReconcileReport {
    pub upserted: usize,
    pub removed_addresses: usize,
    pub removed_interfaces: usize,
    pub attached: usize,
    pub detached: usize,
}

impl ReconcileReport {
    pub fn changed(&self) -> bool {
        *self != ReconcileReport::default()
    }
}

/// Brings `tables` to `desired`. With `reattach_all`, the from-pod program is attached anew on
/// every endpoint (at start, so that an upgraded agent's programs replace the old ones).
pub fn reconcile(desired: &[EndpointEntry], tables: &mut dyn DatapathTables, reattach_all: bool) -> Result<ReconcileReport, DatapathError> {
    let mut report = ReconcileReport::default();
    let programmed_addrs: BTreeMap<IpAddr, _> = tables.programmed_addresses()?.into_iter().collect();
    let programmed_ifaces: BTreeMap<u32, _> = tables.programmed_ifindexes()?.into_iter().collect();

    let mut want_addrs = BTreeSet::new();
    let mut want_ifaces = BTreeSet::new();
    for entry in desired {
        let info = entry.info();
        let addrs: Vec<IpAddr> = [entry.ipv4.map(IpAddr::from), entry.ipv6.map(IpAddr::from)].into_iter().flatten().collect();
        let current =
            addrs.iter().all(|a| programmed_addrs.get(a) == Some(&info)) && programmed_ifaces.get(&entry.host_ifindex) == Some(&info);
        if !current {
            tables.upsert_endpoint(entry)?;
            report.upserted += 1;
        }
        want_addrs.extend(addrs);
        want_ifaces.insert(entry.host_ifindex);
    }
    for addr in programmed_addrs.keys().filter(|a| !want_addrs.contains(a)) {
        tables.remove_address(*addr)?;
        report.removed_addresses += 1;
    }
    for ifindex in programmed_ifaces.keys().filter(|i| !want_ifaces.contains(i)) {
        tables.remove_ifindex(*ifindex)?;
        report.removed_interfaces += 1;
    }

    let attached: BTreeSet<String> = tables.attached_endpoints()?.into_iter().collect();
    let want_attached: BTreeSet<&str> = desired.iter().map(|e| e.host_ifname.as_str()).collect();
    for entry in desired {
        if reattach_all || !attached.contains(&entry.host_ifname) {
            tables.attach_endpoint(&entry.host_ifname)?;
            report.attached += 1;
        }
    }
    for ifname in attached.iter().filter(|i| !want_attached.contains(i.as_str())) {
        tables.detach_endpoint(ifname)?;
        report.detached += 1;
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_datapath::fake::FakeDatapath;
    use sluice_datapath::Mac;
    use std::net::{Ipv4Addr, Ipv6Addr};

    fn entry(id: u32) -> EndpointEntry {
        EndpointEntry {
            endpoint_id: id,
            host_ifindex: 100 + id,
            host_ifname: format!("lxc{id}"),
            identity: 256,
            ipv4: Some(Ipv4Addr::new(198, 19, 0, id as u8)),
            ipv6: Some(Ipv6Addr::new(0x2001, 2, 0, 0, 0, 0, 0, id as u16)),
            mac: Mac([2, 0, 0, 0, 0, id as u8]),
            node_mac: Mac([2, 0, 0, 0, 1, id as u8]),
        }
    }

    #[test]
    fn empty_datapath_gets_every_endpoint_and_attachment() {
        let mut dp = FakeDatapath::default();
        let desired = vec![entry(1), entry(2)];
        let report = reconcile(&desired, &mut dp, false).unwrap();
        assert_eq!(report.upserted, 2);
        assert_eq!(report.attached, 2);
        assert_eq!(dp.addresses.len(), 4, "two addresses per endpoint");
        assert_eq!(dp.ifindexes.len(), 2);
        assert!(dp.attached.contains("lxc1") && dp.attached.contains("lxc2"));
    }

    #[test]
    fn converged_state_writes_nothing() {
        let mut dp = FakeDatapath::default();
        let desired = vec![entry(1), entry(2)];
        reconcile(&desired, &mut dp, false).unwrap();
        let writes = dp.writes;
        let report = reconcile(&desired, &mut dp, false).unwrap();
        assert!(!report.changed(), "second pass must find nothing to do: {report:?}");
        assert_eq!(dp.writes, writes, "second pass must not write");
    }

    #[test]
    fn leaked_entries_and_attachments_are_pruned() {
        let mut dp = FakeDatapath::default();
        reconcile(&[entry(1), entry(2), entry(3)], &mut dp, false).unwrap();
        let report = reconcile(&[entry(2)], &mut dp, false).unwrap();
        assert_eq!(report.removed_addresses, 4);
        assert_eq!(report.removed_interfaces, 2);
        assert_eq!(report.detached, 2);
        assert_eq!(dp.addresses.keys().count(), 2, "only endpoint 2's addresses remain");
        assert_eq!(dp.attached.iter().cloned().collect::<Vec<_>>(), vec!["lxc2".to_string()]);
    }

    #[test]
    fn changed_identity_is_rewritten() {
        let mut dp = FakeDatapath::default();
        reconcile(&[entry(1)], &mut dp, false).unwrap();
        let mut changed = entry(1);
        changed.identity = 300;
        let report = reconcile(&[changed], &mut dp, false).unwrap();
        assert_eq!(report.upserted, 1, "a value change must be written");
        assert_eq!(dp.ifindexes[&101].identity, 300);
    }

    #[test]
    fn moved_address_is_rewritten_not_left_pointing_at_the_old_interface() {
        let mut dp = FakeDatapath::default();
        reconcile(&[entry(1)], &mut dp, false).unwrap();
        let mut moved = entry(1);
        moved.host_ifindex = 999;
        reconcile(&[moved], &mut dp, false).unwrap();
        assert_eq!(dp.addresses[&IpAddr::from(Ipv4Addr::new(198, 19, 0, 1))].ifindex, 999);
        assert!(!dp.ifindexes.contains_key(&101), "the old interface entry must be removed");
    }

    #[test]
    fn restart_reattaches_everything_when_asked() {
        let mut dp = FakeDatapath::default();
        reconcile(&[entry(1), entry(2)], &mut dp, false).unwrap();
        let report = reconcile(&[entry(1), entry(2)], &mut dp, true).unwrap();
        assert_eq!(report.attached, 2, "start-up pass re-attaches the new programs");
        assert_eq!(report.upserted, 0, "but rewrites no map entry");
    }
}
