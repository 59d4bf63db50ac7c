//! Cluster-pool IPAM for one node: pod addresses come from the node's pod CIDRs (at most one
//! IPv4, one IPv6), are held per CNI attachment (container id + interface name) and recorded in
//! the agent database, so a restart never hands an address out twice.

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use redb::{ReadableTable, Table, TableDefinition, WriteTransaction};
use serde::{Deserialize, Serialize};

use crate::db::{AgentDb, DbError, RedbResultExt};

/// One CNI attachment: the unit that holds addresses. An ADD retried for the same owner gets
/// the same addresses back.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Owner {
    /// The container (sandbox) id the runtime passed as `CNI_CONTAINERID`.
    pub container_id: String,
    /// The interface inside the pod, `CNI_IFNAME`.
    pub ifname: String,
}

/// The addresses held by one owner: one per configured family.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Allocation {
    /// The IPv4 address, when the node has an IPv4 pod CIDR.
    pub ipv4: Option<Ipv4Addr>,
    /// The IPv6 address, when the node has an IPv6 pod CIDR.
    pub ipv6: Option<Ipv6Addr>,
}

/// Errors of the node IPAM.
#[derive(Debug, thiserror::Error)]
pub enum IpamError {
    /// Neither an IPv4 nor an IPv6 pod CIDR was given.
    #[error("no pod CIDR configured for this node")]
    NoPool,
    /// The pod CIDR has no allocatable address once the reserved ones are set aside
    /// (IPv4 /31 and /32, IPv6 /127 and /128).
    #[error("pod CIDR {cidr} has no allocatable address")]
    EmptyPool {
        /// The CIDR as configured.
        cidr: IpNet,
    },
    /// Every allocatable address of the pool is held.
    #[error("pod CIDR {cidr} is exhausted")]
    Exhausted {
        /// The exhausted CIDR.
        cidr: IpNet,
    },
    /// The agent database failed.
    #[error(transparent)]
    Db(#[from] DbError),
}

/// The node's address allocator.
///
/// Never handed out: the network address, the first address (`.1` / `::1`, kept for the node
/// side) and the IPv4 broadcast address. For IPv6 only the first 65536 addresses of the prefix
/// are scanned (all of it when the prefix is /112 or longer): a /64 cannot be walked, and 65534
/// pods is far beyond what a node runs. Allocation is round robin from a persisted cursor, so
/// an address just released is not reused at once (a late packet or a stale ipcache entry
/// elsewhere in the cluster would otherwise reach the new pod).
#[derive(Debug)]
pub struct Ipam {
    db: Arc<AgentDb>,
    v4: Option<Pool<u32>>,
    v6: Option<Pool<u128>>,
}

/// Owner key as stored: (container id, interface name).
type OwnerKey<'a> = (&'a str, &'a str);

/// owner -> the addresses it holds (IPv4 as u32, IPv6 as u128).
const OWNERS: TableDefinition<OwnerKey, (Option<u32>, Option<u128>)> = TableDefinition::new("ipam_owners");
/// IPv4 address -> its owner. Written in the same transaction as `OWNERS`, so an address
/// present here is taken, whatever the pool configuration is now.
const IPV4_ADDRS: TableDefinition<u32, OwnerKey> = TableDefinition::new("ipam_ipv4");
/// IPv6 address -> its owner.
const IPV6_ADDRS: TableDefinition<u128, OwnerKey> = TableDefinition::new("ipam_ipv6");
/// family name -> last address handed out in that family: the round-robin cursor.
const CURSORS: TableDefinition<&str, u128> = TableDefinition::new("ipam_cursor");

/// The allocatable range of one pod CIDR, as integers.
#[derive(Debug, Clone, Copy)]
struct Pool<K: 'static> {
    cidr: IpNet,
    /// First allocatable address.
    first: K,
    /// Last allocatable address (inclusive: an IPv6 pool may end at the top of the space).
    last: K,
}

/// Address integers of one family (u32 for IPv4, u128 for IPv6): one scan serves both.
trait AddrInt:
    'static + redb::Key + for<'a> redb::Value<SelfType<'a> = Self> + Copy + Ord + std::fmt::Debug + Into<u128> + TryFrom<u128>
{
    /// The family's address -> owner table.
    const ADDRS: TableDefinition<'static, Self, OwnerKey<'static>>;
    /// The family's key in `CURSORS`.
    const CURSOR_KEY: &'static str;

    fn succ(self) -> Option<Self>;
}

impl AddrInt for u32 {
    const ADDRS: TableDefinition<'static, Self, OwnerKey<'static>> = IPV4_ADDRS;
    const CURSOR_KEY: &'static str = "ipv4";

    fn succ(self) -> Option<Self> {
        self.checked_add(1)
    }
}

impl AddrInt for u128 {
    const ADDRS: TableDefinition<'static, Self, OwnerKey<'static>> = IPV6_ADDRS;
    const CURSOR_KEY: &'static str = "ipv6";

    fn succ(self) -> Option<Self> {
        self.checked_add(1)
    }
}

// === impl Pool ===

/// Addresses of an IPv6 pool that are scanned when the prefix is shorter than /112.
const IPV6_SCAN_WINDOW: u128 = 1 << 16;

impl Pool<u32> {
    fn ipv4(net: Ipv4Net) -> Result<Self, IpamError> {
        let net = net.trunc();
        let cidr = IpNet::V4(net);
        let network = u32::from(net.network());
        let broadcast = u32::from(net.broadcast());
        // Skip the network address and .1; stop before broadcast.
        let (Some(first), Some(last)) = (network.checked_add(2), broadcast.checked_sub(1)) else {
            return Err(IpamError::EmptyPool { cidr });
        };
        if net.prefix_len() >= 31 || first > last {
            return Err(IpamError::EmptyPool { cidr });
        }
        Ok(Self { cidr, first, last })
    }
}

impl Pool<u128> {
    fn ipv6(net: Ipv6Net) -> Result<Self, IpamError> {
        let net = net.trunc();
        let cidr = IpNet::V6(net);
        let network = u128::from(net.network());
        let host_bits = 128 - u32::from(net.prefix_len());
        let size = if host_bits < 16 { 1u128 << host_bits } else { IPV6_SCAN_WINDOW };
        // No broadcast in IPv6: the window ends at its last address. `network + size - 1`
        // cannot overflow because the prefix contains the whole window.
        let last = network + (size - 1);
        match network.checked_add(2) {
            Some(first) if first <= last => Ok(Self { cidr, first, last }),
            _ => Err(IpamError::EmptyPool { cidr }),
        }
    }
}

impl<K: AddrInt> Pool<K> {
    fn contains(&self, addr: K) -> bool {
        self.first <= addr && addr <= self.last
    }

    /// Takes the next free address after the cursor (wrapping once), records it for `owner`
    /// and moves the cursor, all inside `txn`.
    fn take(&self, txn: &WriteTransaction, owner: OwnerKey) -> Result<K, IpamError> {
        let mut addrs = txn.open_table(K::ADDRS).db()?;
        let mut cursors = txn.open_table(CURSORS).db()?;
        let cursor = cursors.get(K::CURSOR_KEY).db()?.and_then(|c| K::try_from(c.value()).ok()).filter(|c| self.contains(*c));
        let start = match cursor.and_then(AddrInt::succ) {
            Some(next) if next <= self.last => next,
            _ => self.first,
        };
        let mut found = first_free(&addrs, start, self.last)?;
        if found.is_none() && start > self.first {
            // Wrap once. `start` itself was just seen taken, so this finds only [first, start).
            found = first_free(&addrs, self.first, start)?;
        }
        let addr = found.ok_or(IpamError::Exhausted { cidr: self.cidr })?;
        addrs.insert(addr, owner).db()?;
        cursors.insert(K::CURSOR_KEY, addr.into()).db()?;
        Ok(addr)
    }
}

/// First address in `[from, to]` with no entry in `addrs`.
fn first_free<K: AddrInt>(addrs: &Table<K, OwnerKey>, from: K, to: K) -> Result<Option<K>, DbError> {
    let mut candidate = from;
    for entry in addrs.range(from..=to).db()? {
        let (taken, _) = entry.db()?;
        if taken.value() != candidate {
            // Keys come sorted and start at `from`, so a gap means `candidate` is free.
            return Ok(Some(candidate));
        }
        match candidate.succ() {
            Some(next) if next <= to => candidate = next,
            _ => return Ok(None),
        }
    }
    Ok(Some(candidate))
}

// === impl Allocation ===

impl Allocation {
    fn from_row((ipv4, ipv6): (Option<u32>, Option<u128>)) -> Self {
        Self { ipv4: ipv4.map(Ipv4Addr::from), ipv6: ipv6.map(Ipv6Addr::from) }
    }

    fn to_row(self) -> (Option<u32>, Option<u128>) {
        (self.ipv4.map(u32::from), self.ipv6.map(u128::from))
    }
}

// === impl Owner ===

impl Owner {
    /// A new owner from the CNI container id and interface name.
    pub fn new(container_id: impl Into<String>, ifname: impl Into<String>) -> Self {
        Self { container_id: container_id.into(), ifname: ifname.into() }
    }

    fn key(&self) -> OwnerKey<'_> {
        (self.container_id.as_str(), self.ifname.as_str())
    }

    fn from_key((container_id, ifname): OwnerKey) -> Self {
        Self::new(container_id, ifname)
    }
}

// === impl Ipam ===

impl Ipam {
    /// An allocator over the node's pod CIDRs (host bits of the CIDRs are ignored). Allocations
    /// already in the database are kept even when the CIDRs changed: see
    /// [`Ipam::list_outside_pool`].
    pub fn new(db: Arc<AgentDb>, v4: Option<Ipv4Net>, v6: Option<Ipv6Net>) -> Result<Self, IpamError> {
        if v4.is_none() && v6.is_none() {
            return Err(IpamError::NoPool);
        }
        let v4 = v4.map(Pool::ipv4).transpose()?;
        let v6 = v6.map(Pool::ipv6).transpose()?;
        // Create the tables up front so read-only calls find them on a fresh database.
        db.write(|txn| -> Result<(), IpamError> {
            txn.open_table(OWNERS).db()?;
            txn.open_table(IPV4_ADDRS).db()?;
            txn.open_table(IPV6_ADDRS).db()?;
            txn.open_table(CURSORS).db()?;
            Ok(())
        })?;
        Ok(Self { db, v4, v6 })
    }

    /// The IPv4 pod CIDR, if any.
    pub fn ipv4_cidr(&self) -> Option<IpNet> {
        self.v4.map(|p| p.cidr)
    }

    /// The IPv6 pod CIDR, if any.
    pub fn ipv6_cidr(&self) -> Option<IpNet> {
        self.v6.map(|p| p.cidr)
    }

    /// Addresses for `owner`: one per configured family. Idempotent: an owner that already
    /// holds addresses gets exactly those back, even if the pools changed since. When one
    /// family is exhausted nothing is allocated in the other either.
    pub fn allocate(&self, owner: &Owner) -> Result<Allocation, IpamError> {
        self.db.write(|txn| {
            let mut owners = txn.open_table(OWNERS).db()?;
            if let Some(held) = owners.get(owner.key()).db()? {
                return Ok(Allocation::from_row(held.value()));
            }
            let ipv4 = match &self.v4 {
                Some(pool) => Some(Ipv4Addr::from(pool.take(txn, owner.key())?)),
                None => None,
            };
            let ipv6 = match &self.v6 {
                Some(pool) => Some(Ipv6Addr::from(pool.take(txn, owner.key())?)),
                None => None,
            };
            let allocation = Allocation { ipv4, ipv6 };
            owners.insert(owner.key(), allocation.to_row()).db()?;
            Ok(allocation)
        })
    }

    /// The addresses `owner` holds, if any.
    pub fn get(&self, owner: &Owner) -> Result<Option<Allocation>, IpamError> {
        self.db.read(|txn| {
            let owners = txn.open_table(OWNERS).db()?;
            let held = owners.get(owner.key()).db()?;
            Ok(held.map(|row| Allocation::from_row(row.value())))
        })
    }

    /// Returns `owner`'s addresses to the pool. `None` when it held nothing (a DEL retried).
    pub fn release(&self, owner: &Owner) -> Result<Option<Allocation>, IpamError> {
        self.db.write(|txn| remove_owner(txn, owner.key()))
    }

    /// Every owner and its addresses, ordered by owner.
    pub fn list(&self) -> Result<Vec<(Owner, Allocation)>, IpamError> {
        self.db.read(|txn| {
            let owners = txn.open_table(OWNERS).db()?;
            let mut out = Vec::new();
            for row in owners.iter().db()? {
                let (owner, allocation) = row.db()?;
                out.push((Owner::from_key(owner.value()), Allocation::from_row(allocation.value())));
            }
            Ok(out)
        })
    }

    /// Releases every owner not in `valid` (CNI GC, reconcile at start-up) in one transaction
    /// and returns the owners released.
    pub fn release_all_except(&self, valid: &BTreeSet<Owner>) -> Result<Vec<Owner>, IpamError> {
        self.db.write(|txn| {
            let stale: Vec<Owner> = {
                let owners = txn.open_table(OWNERS).db()?;
                let mut stale = Vec::new();
                for row in owners.iter().db()? {
                    let owner = Owner::from_key(row.db()?.0.value());
                    if !valid.contains(&owner) {
                        stale.push(owner);
                    }
                }
                stale
            };
            for owner in &stale {
                remove_owner(txn, owner.key())?;
            }
            Ok(stale)
        })
    }

    /// Allocations holding an address the current pools would not hand out (the CIDRs changed
    /// across a restart, or a family was removed). They stay reserved until released; the
    /// caller decides whether to recreate those endpoints.
    pub fn list_outside_pool(&self) -> Result<Vec<(Owner, Allocation)>, IpamError> {
        let outside = |allocation: &Allocation| {
            let v4_out = allocation.ipv4.is_some_and(|a| !self.v4.is_some_and(|p| p.contains(u32::from(a))));
            let v6_out = allocation.ipv6.is_some_and(|a| !self.v6.is_some_and(|p| p.contains(u128::from(a))));
            v4_out || v6_out
        };
        let mut all = self.list()?;
        all.retain(|(_, allocation)| outside(allocation));
        Ok(all)
    }
}

/// Removes `owner`'s row and its address entries inside `txn`.
fn remove_owner(txn: &WriteTransaction, owner: OwnerKey) -> Result<Option<Allocation>, IpamError> {
    let removed = txn.open_table(OWNERS).db()?.remove(owner).db()?.map(|row| row.value());
    let Some(row) = removed else { return Ok(None) };
    let allocation = Allocation::from_row(row);
    if let Some(addr) = row.0 {
        remove_addr(&mut txn.open_table(IPV4_ADDRS).db()?, addr, owner)?;
    }
    if let Some(addr) = row.1 {
        remove_addr(&mut txn.open_table(IPV6_ADDRS).db()?, addr, owner)?;
    }
    Ok(Some(allocation))
}

/// Frees `addr` if `owner` holds it; an entry of another owner is left alone.
fn remove_addr<K: AddrInt>(addrs: &mut Table<K, OwnerKey>, addr: K, owner: OwnerKey) -> Result<(), DbError> {
    let held_by_owner = addrs.get(addr).db()?.is_some_and(|held| held.value() == owner);
    if held_by_owner {
        addrs.remove(addr).db()?;
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;
    use std::collections::HashSet;
    use std::path::Path;

    fn open(dir: &Path) -> Arc<AgentDb> {
        Arc::new(AgentDb::open(dir).unwrap())
    }

    fn v4(s: &str) -> Ipv4Net {
        s.parse().unwrap()
    }

    fn v6(s: &str) -> Ipv6Net {
        s.parse().unwrap()
    }

    fn owner(i: usize) -> Owner {
        Owner::new(format!("container-{i}"), "eth0")
    }

    fn dual(db: Arc<AgentDb>) -> Ipam {
        Ipam::new(db, Some(v4("10.0.1.0/24")), Some(v6("fd00:1::/64"))).unwrap()
    }

    #[test]
    fn first_allocation_skips_network_and_first_address() {
        let dir = tempfile::tempdir().unwrap();
        let ipam = dual(open(dir.path()));
        let a = ipam.allocate(&owner(0)).unwrap();
        assert_eq!(a.ipv4, Some("10.0.1.2".parse().unwrap()), "first IPv4 is .2");
        assert_eq!(a.ipv6, Some("fd00:1::2".parse().unwrap()), "first IPv6 is ::2");
    }

    #[test]
    fn allocate_is_idempotent_per_owner() {
        let dir = tempfile::tempdir().unwrap();
        let ipam = dual(open(dir.path()));
        let first = ipam.allocate(&owner(1)).unwrap();
        let again = ipam.allocate(&owner(1)).unwrap();
        assert_eq!(first, again, "a retried ADD gets the same addresses");
        assert_eq!(ipam.list().unwrap().len(), 1, "a retried ADD holds one allocation");
        let other_if = ipam.allocate(&Owner::new("container-1", "net1")).unwrap();
        assert_ne!(other_if, first, "another interface of the same container is another owner");
    }

    #[test]
    fn single_family_pools() {
        let dir = tempfile::tempdir().unwrap();
        let db = open(dir.path());
        let only4 = Ipam::new(db.clone(), Some(v4("10.0.0.0/24")), None).unwrap();
        let a = only4.allocate(&owner(0)).unwrap();
        assert!(a.ipv4.is_some() && a.ipv6.is_none(), "IPv4-only pool gives only IPv4: {a:?}");
        drop(only4);
        let only6 = Ipam::new(db, None, Some(v6("fd00::/120"))).unwrap();
        let b = only6.allocate(&owner(1)).unwrap();
        assert!(b.ipv4.is_none() && b.ipv6.is_some(), "IPv6-only pool gives only IPv6: {b:?}");
    }

    #[test]
    fn no_pool_and_empty_pools_are_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let db = open(dir.path());
        let none = Ipam::new(db.clone(), None, None);
        assert!(matches!(none, Err(IpamError::NoPool)), "no CIDR at all is an error");
        for cidr in ["10.0.0.0/31", "10.0.0.7/32"] {
            let r = Ipam::new(db.clone(), Some(v4(cidr)), None);
            assert!(matches!(r, Err(IpamError::EmptyPool { .. })), "{cidr} has no usable address");
        }
        for cidr in ["fd00::/127", "fd00::/128", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff/128"] {
            let r = Ipam::new(db.clone(), None, Some(v6(cidr)));
            assert!(matches!(r, Err(IpamError::EmptyPool { .. })), "{cidr} has no usable address");
        }
        let smallest = Ipam::new(db, Some(v4("10.0.0.0/30")), Some(v6("fd00::/126"))).unwrap();
        let a = smallest.allocate(&owner(0)).unwrap();
        assert_eq!(a.ipv4, Some("10.0.0.2".parse().unwrap()), "a /30 has exactly .2");
        assert_eq!(a.ipv6, Some("fd00::2".parse().unwrap()), "a /126 starts at ::2");
    }

    #[test]
    fn host_bits_of_the_cidr_are_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let ipam = Ipam::new(open(dir.path()), Some(v4("10.0.1.77/24")), None).unwrap();
        assert_eq!(ipam.ipv4_cidr(), Some("10.0.1.0/24".parse().unwrap()), "CIDR is truncated");
        let a = ipam.allocate(&owner(0)).unwrap();
        assert_eq!(a.ipv4, Some("10.0.1.2".parse().unwrap()), "allocation starts at the network");
    }

    #[test]
    fn no_duplicates_across_200_owners() {
        let dir = tempfile::tempdir().unwrap();
        let ipam = dual(open(dir.path()));
        let mut seen4 = HashSet::new();
        let mut seen6 = HashSet::new();
        for i in 0..200 {
            let a = ipam.allocate(&owner(i)).unwrap();
            let ip4 = a.ipv4.unwrap();
            let ip6 = a.ipv6.unwrap();
            assert!(seen4.insert(ip4), "IPv4 {ip4} handed out twice");
            assert!(seen6.insert(ip6), "IPv6 {ip6} handed out twice");
            assert!(ip4 != "10.0.1.0".parse::<Ipv4Addr>().unwrap(), "network address handed out");
            assert!(ip4 != "10.0.1.1".parse::<Ipv4Addr>().unwrap(), ".1 handed out");
            assert!(ip4 != "10.0.1.255".parse::<Ipv4Addr>().unwrap(), "broadcast handed out");
        }
        assert_eq!(ipam.list().unwrap().len(), 200, "200 owners are listed");
    }

    #[test]
    fn ipv4_slash29_has_five_addresses() {
        let dir = tempfile::tempdir().unwrap();
        let ipam = Ipam::new(open(dir.path()), Some(v4("10.9.0.8/29")), None).unwrap();
        let got: Vec<Ipv4Addr> = (0..5).map(|i| ipam.allocate(&owner(i)).unwrap().ipv4.unwrap()).collect();
        let want: Vec<Ipv4Addr> =
            ["10.9.0.10", "10.9.0.11", "10.9.0.12", "10.9.0.13", "10.9.0.14"].iter().map(|s| s.parse().unwrap()).collect();
        assert_eq!(got, want, "a /29 yields .2 to .6 of the block, in order");
        match ipam.allocate(&owner(5)) {
            Err(IpamError::Exhausted { cidr }) => {
                assert_eq!(cidr, "10.9.0.8/29".parse::<IpNet>().unwrap(), "error names the CIDR");
            }
            other => panic!("sixth allocation of a /29 must be Exhausted, got {other:?}"),
        }
        let msg = ipam.allocate(&owner(5)).unwrap_err().to_string();
        assert!(msg.contains("10.9.0.8/29"), "message names the CIDR: {msg}");
        assert!(ipam.get(&owner(5)).unwrap().is_none(), "a failed allocation holds nothing");
    }

    #[test]
    fn ipv6_slash125_has_six_addresses() {
        let dir = tempfile::tempdir().unwrap();
        let ipam = Ipam::new(open(dir.path()), None, Some(v6("fd00:9::/125"))).unwrap();
        let got: Vec<Ipv6Addr> = (0..6).map(|i| ipam.allocate(&owner(i)).unwrap().ipv6.unwrap()).collect();
        let want: Vec<Ipv6Addr> = (2..8).map(|i| Ipv6Addr::new(0xfd00, 9, 0, 0, 0, 0, 0, i)).collect();
        assert_eq!(got, want, "a /125 yields ::2 to ::7 (no broadcast in IPv6)");
        let err = ipam.allocate(&owner(6)).unwrap_err();
        assert!(matches!(err, IpamError::Exhausted { .. }), "seventh allocation: {err:?}");
    }

    #[test]
    fn ipv6_scans_only_first_65536_addresses() {
        let dir = tempfile::tempdir().unwrap();
        let ipam = Ipam::new(open(dir.path()), None, Some(v6("fd00::/64"))).unwrap();
        let pool = ipam.v6.unwrap();
        assert_eq!(pool.first, u128::from("fd00::2".parse::<Ipv6Addr>().unwrap()), "first");
        assert_eq!(pool.last, u128::from("fd00::ffff".parse::<Ipv6Addr>().unwrap()), "last");
        let top = Ipam::new(open(&dir.path().join("top")), None, Some(v6("ffff:ffff:ffff:ffff::/64")));
        let top = top.unwrap().v6.unwrap();
        assert_eq!(top.last, u128::from("ffff:ffff:ffff:ffff::ffff".parse::<Ipv6Addr>().unwrap()), "window of the top /64");
        let whole = Ipam::new(open(&dir.path().join("whole")), None, Some(v6("ffff:ffff:ffff:ffff:ffff:ffff:ffff:0/112")));
        assert_eq!(whole.unwrap().v6.unwrap().last, u128::MAX, "a /112 is scanned whole");
    }

    #[test]
    fn pool_at_the_top_of_the_address_space() {
        let dir = tempfile::tempdir().unwrap();
        let ipam =
            Ipam::new(open(dir.path()), Some(v4("255.255.255.248/29")), Some(v6("ffff:ffff:ffff:ffff:ffff:ffff:ffff:fffc/126"))).unwrap();
        let a = ipam.allocate(&owner(0)).unwrap();
        let b = ipam.allocate(&owner(1)).unwrap();
        assert_eq!(b.ipv6, Some(Ipv6Addr::from(u128::MAX)), "the last IPv6 address is usable");
        let err = ipam.allocate(&owner(2)).unwrap_err();
        assert!(matches!(err, IpamError::Exhausted { .. }), "cursor at the top wraps: {err:?}");
        ipam.release(&owner(0)).unwrap();
        let c = ipam.allocate(&owner(3)).unwrap();
        assert_eq!(c.ipv6, a.ipv6, "after the top, the scan wraps to the freed address");
        assert_eq!(c.ipv4, Some("255.255.255.252".parse().unwrap()), "IPv4 continues in order");
    }

    #[test]
    fn dual_stack_exhaustion_is_atomic() {
        let dir = tempfile::tempdir().unwrap();
        let ipam = Ipam::new(open(dir.path()), Some(v4("10.0.0.0/24")), Some(v6("fd00::/126"))).unwrap();
        ipam.allocate(&owner(0)).unwrap();
        ipam.allocate(&owner(1)).unwrap();
        let err = ipam.allocate(&owner(2)).unwrap_err();
        assert!(matches!(err, IpamError::Exhausted { cidr: IpNet::V6(_) }), "IPv6 pool is the exhausted one: {err:?}");
        assert!(ipam.get(&owner(2)).unwrap().is_none(), "nothing held after a failed ADD");
        ipam.release(&owner(0)).unwrap();
        let a = ipam.allocate(&owner(2)).unwrap();
        assert_eq!(a.ipv4, Some("10.0.0.4".parse().unwrap()), "the IPv4 taken by the failed ADD was rolled back, and the cursor with it");
    }

    #[test]
    fn release_is_idempotent_and_returns_addresses() {
        let dir = tempfile::tempdir().unwrap();
        let ipam = dual(open(dir.path()));
        let a = ipam.allocate(&owner(0)).unwrap();
        assert_eq!(ipam.release(&owner(0)).unwrap(), Some(a), "release returns what was held");
        assert_eq!(ipam.release(&owner(0)).unwrap(), None, "second release holds nothing");
        assert_eq!(ipam.release(&owner(9)).unwrap(), None, "unknown owner holds nothing");
        assert!(ipam.list().unwrap().is_empty(), "nothing listed after release");
    }

    #[test]
    fn released_address_is_not_reused_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let ipam = Ipam::new(open(dir.path()), Some(v4("10.0.0.0/29")), None).unwrap();
        let ip = |o: usize| ipam.allocate(&owner(o)).unwrap().ipv4.unwrap().octets()[3];
        assert_eq!((ip(0), ip(1)), (2, 3), "in order from .2");
        ipam.release(&owner(0)).unwrap();
        assert_eq!(ip(2), 4, "released .2 is skipped: next after the cursor");
        assert_eq!(ip(3), 5, "cursor moves on");
        assert_eq!(ip(4), 6, "cursor reaches the last usable address");
        assert_eq!(ip(5), 2, "the scan wraps to the released .2 at the end");
        ipam.release(&owner(3)).unwrap();
        assert_eq!(ip(6), 5, "after wrapping the cursor finds the gap at .5");
        let err = ipam.allocate(&owner(7)).unwrap_err();
        assert!(matches!(err, IpamError::Exhausted { .. }), "pool full again: {err:?}");
    }

    #[test]
    fn allocations_and_cursor_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let before = {
            let ipam = dual(open(dir.path()));
            for i in 0..3 {
                ipam.allocate(&owner(i)).unwrap();
            }
            ipam.release(&owner(2)).unwrap();
            ipam.list().unwrap()
        };
        let ipam = dual(open(dir.path()));
        assert_eq!(ipam.list().unwrap(), before, "allocations are read back after reopen");
        assert_eq!(ipam.allocate(&owner(1)).unwrap(), before[1].1, "retried ADD after restart returns the stored addresses");
        let next = ipam.allocate(&owner(5)).unwrap();
        assert_eq!(next.ipv4, Some("10.0.1.5".parse().unwrap()), "cursor persisted: .4 released before restart is not reused");
        assert_eq!(next.ipv6, Some("fd00:1::5".parse().unwrap()), "IPv6 cursor persisted");
    }

    #[test]
    fn release_all_except_keeps_only_valid() {
        let dir = tempfile::tempdir().unwrap();
        let ipam = dual(open(dir.path()));
        let held: Vec<Allocation> = (0..5).map(|i| ipam.allocate(&owner(i)).unwrap()).collect();
        let valid: BTreeSet<Owner> = [owner(1), owner(3), owner(42)].into_iter().collect();
        let released = ipam.release_all_except(&valid).unwrap();
        assert_eq!(released, vec![owner(0), owner(2), owner(4)], "stale owners are released");
        let left: Vec<Owner> = ipam.list().unwrap().into_iter().map(|(o, _)| o).collect();
        assert_eq!(left, vec![owner(1), owner(3)], "valid owners keep their addresses");
        assert_eq!(ipam.get(&owner(3)).unwrap(), Some(held[3]), "kept addresses unchanged");
        assert!(ipam.release_all_except(&valid).unwrap().is_empty(), "a second GC releases nothing");
        // The released addresses are free again: a small pool proves it.
        let dir2 = tempfile::tempdir().unwrap();
        let small = Ipam::new(open(dir2.path()), Some(v4("10.0.0.0/29")), None).unwrap();
        for i in 0..5 {
            small.allocate(&owner(i)).unwrap();
        }
        small.release_all_except(&BTreeSet::new()).unwrap();
        for i in 10..15 {
            small.allocate(&owner(i)).unwrap();
        }
        assert_eq!(small.list().unwrap().len(), 5, "all five addresses were freed by GC");
    }

    #[test]
    fn changed_cidr_reports_allocations_outside_pool() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = {
            let ipam = Ipam::new(open(dir.path()), Some(v4("10.0.0.0/24")), Some(v6("fd00::/64"))).unwrap();
            (ipam.allocate(&owner(0)).unwrap(), ipam.allocate(&owner(1)).unwrap())
        };
        // Same IPv4 CIDR, IPv6 removed: both allocations hold an IPv6 no pool hands out.
        let ipam = Ipam::new(open(dir.path()), Some(v4("10.0.0.0/24")), None).unwrap();
        let outside = ipam.list_outside_pool().unwrap();
        assert_eq!(outside, vec![(owner(0), a), (owner(1), b)], "IPv6 family removed");
        drop(ipam);
        // IPv4 moved to another block: everything is outside.
        let ipam = Ipam::new(open(dir.path()), Some(v4("10.1.0.0/24")), Some(v6("fd00::/64"))).unwrap();
        assert_eq!(ipam.list_outside_pool().unwrap().len(), 2, "IPv4 CIDR moved");
        drop(ipam);
        // Narrowed so .3 (owner 1) becomes the broadcast of 10.0.0.0/30.
        let ipam = Ipam::new(open(dir.path()), Some(v4("10.0.0.0/30")), Some(v6("fd00::/64"))).unwrap();
        assert_eq!(ipam.list_outside_pool().unwrap(), vec![(owner(1), b)], "now the broadcast");
        let err = ipam.allocate(&owner(2)).unwrap_err();
        assert!(matches!(err, IpamError::Exhausted { .. }), "the held .2 is still reserved under the new CIDR: {err:?}");
        drop(ipam);
        let ipam = Ipam::new(open(dir.path()), Some(v4("10.0.0.0/24")), Some(v6("fd00::/64"))).unwrap();
        assert!(ipam.list_outside_pool().unwrap().is_empty(), "original CIDRs: all inside");
    }

    #[test]
    fn shared_db_concurrent_allocations_are_unique() {
        let dir = tempfile::tempdir().unwrap();
        let ipam = Arc::new(dual(open(dir.path())));
        let handles: Vec<_> = (0..4)
            .map(|t| {
                let ipam = ipam.clone();
                std::thread::spawn(move || (0..10).map(|i| ipam.allocate(&owner(t * 100 + i)).unwrap()).collect::<Vec<_>>())
            })
            .collect();
        let mut seen = HashSet::new();
        for h in handles {
            for a in h.join().unwrap() {
                assert!(seen.insert(a.ipv4.unwrap()), "IPv4 handed out twice under concurrency");
            }
        }
        assert_eq!(seen.len(), 40, "forty distinct addresses");
    }

    #[test]
    fn owner_and_allocation_serde() {
        let o = Owner::new("abc", "eth0");
        let json = serde_json::to_string(&o).unwrap();
        assert_eq!(json, r#"{"container_id":"abc","ifname":"eth0"}"#, "owner JSON shape");
        let a = Allocation { ipv4: Some("10.0.0.2".parse().unwrap()), ipv6: None };
        let back: Allocation = serde_json::from_str(&serde_json::to_string(&a).unwrap()).unwrap();
        assert_eq!(back, a, "allocation round-trips through JSON");
    }
}
