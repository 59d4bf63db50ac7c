//! Security identities: one number per distinct label set (namespace labels + pod labels),
//! persisted in the agent database. Policy is compiled to maps keyed by these numbers, so a
//! label set keeps its number for as long as any endpoint holds it.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use redb::{ReadableTable, TableDefinition, WriteTransaction};

use crate::db::{AgentDb, DbError, RedbResultExt};

/// A label set: key -> value. Keys may carry a source prefix (`k8s:app`).
pub type Labels = BTreeMap<String, String>;

/// Identity of traffic whose source is not known.
pub const RESERVED_UNKNOWN: u32 = 0;
/// The local node (host network namespace).
pub const RESERVED_HOST: u32 = 1;
/// Anything outside the cluster.
pub const RESERVED_WORLD: u32 = 2;
/// Pods not managed by Sluice (host-network or another CNI).
pub const RESERVED_UNMANAGED: u32 = 3;
/// The agent's health-check endpoint.
pub const RESERVED_HEALTH: u32 = 4;
/// Endpoints whose labels are not yet known.
pub const RESERVED_INIT: u32 = 5;
/// Other nodes of the cluster.
pub const RESERVED_REMOTE_NODE: u32 = 6;
/// The Kubernetes API server.
pub const RESERVED_KUBE_APISERVER: u32 = 7;
/// Ingress proxies.
pub const RESERVED_INGRESS: u32 = 8;
/// First number handed out for a label set.
pub const FIRST_DYNAMIC: u32 = 256;
/// Largest identity: it travels in 24 bits (overlay VNI, packet mark).
pub const MAX_IDENTITY: u32 = 0x00FF_FFFF;

/// Label source prefix of reserved identities; not accepted in label sets.
pub const RESERVED_SOURCE: &str = "reserved:";

const RESERVED: [(u32, &str); 9] = [
    (RESERVED_UNKNOWN, "unknown"),
    (RESERVED_HOST, "host"),
    (RESERVED_WORLD, "world"),
    (RESERVED_UNMANAGED, "unmanaged"),
    (RESERVED_HEALTH, "health"),
    (RESERVED_INIT, "init"),
    (RESERVED_REMOTE_NODE, "remote-node"),
    (RESERVED_KUBE_APISERVER, "kube-apiserver"),
    (RESERVED_INGRESS, "ingress"),
];

/// Errors of identity allocation.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// A label would make the canonical form ambiguous: an empty key, a key containing `=` or
    /// `,`, or a value containing `,`.
    #[error("label {key:?}={value:?} cannot be part of an identity: keys must be non-empty without '=' or ',', values without ','")]
    InvalidLabel {
        /// The label key.
        key: String,
        /// The label value.
        value: String,
    },
    /// A label uses the `reserved:` source; reserved identities are the constants of this
    /// module, not allocated.
    #[error("label {key:?} uses the reserved source; use the reserved identity constants")]
    ReservedLabel {
        /// The label key.
        key: String,
    },
    /// Every number up to [`MAX_IDENTITY`] has been handed out.
    #[error("security identities exhausted (maximum {MAX_IDENTITY})")]
    Exhausted,
    /// A stored label set does not parse: the database was changed outside the agent.
    #[error("stored labels of identity {id} are corrupt: {labels:?}")]
    Corrupt {
        /// The identity.
        id: u32,
        /// The stored canonical string.
        labels: String,
    },
    /// The agent database failed.
    #[error(transparent)]
    Db(#[from] DbError),
    /// The cluster's allocator (etcd) could not number a label set.
    #[error("cluster identity allocation: {0}")]
    Cluster(#[source] sluice_state::StoreError),
    /// The cluster's allocator (the Kubernetes API) could not number a label set.
    #[error("cluster identity allocation: {0}")]
    Kubernetes(#[source] sluice_kube::cluster::KubeError),
}

/// Where numbers for label sets new to this node come from when not from the node's own
/// counter: the cluster's allocator, so one label set has one number on every node.
pub trait Numbering: Send + Sync {
    /// The cluster-wide number of `labels` (`canonical` is their canonical form).
    fn number(&self, canonical: &str, labels: &Labels) -> Result<u32, IdentityError>;
}

/// One allocated identity, as listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The number.
    pub id: u32,
    /// The label set it stands for.
    pub labels: Labels,
    /// How many owners (endpoints) hold it; 0 means [`Identities::gc`] will free it.
    pub references: u64,
}

/// The node's identity allocator.
///
/// Numbers below [`FIRST_DYNAMIC`] are reserved (host, world, ...). Endpoints hold an identity
/// with [`Identities::acquire`] and let go with [`Identities::release`]; identities nobody
/// holds are freed by [`Identities::gc`], which the caller runs when it chooses (so a pod
/// replaced right away keeps its number). A freed number is never handed out again within the
/// life of the database, so a stale policy entry cannot match a newer label set. Allocation is
/// node-local: numbers agree across nodes only if one allocator serves them all.
pub struct Identities {
    db: Arc<AgentDb>,
    /// `None`: the node's own counter numbers label sets (node-local numbers).
    numbering: Option<Arc<dyn Numbering>>,
}

impl std::fmt::Debug for Identities {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identities").field("cluster_numbering", &self.numbering.is_some()).finish()
    }
}

/// canonical label string -> identity.
const BY_LABELS: TableDefinition<&str, u32> = TableDefinition::new("identity_by_labels");
/// identity -> canonical label string.
const LABELS: TableDefinition<u32, &str> = TableDefinition::new("identity_labels");
/// identity -> number of owners holding it; no row means none.
const REFS: TableDefinition<u32, u64> = TableDefinition::new("identity_refs");
/// owner key (an endpoint) -> the identity it holds.
const OWNERS: TableDefinition<&str, u32> = TableDefinition::new("identity_owners");
/// `NEXT_KEY` -> next number to hand out; only grows, so numbers are never reused.
const META: TableDefinition<&str, u32> = TableDefinition::new("identity_meta");
const NEXT_KEY: &str = "next";

/// The canonical form of a label set: `k=v` pairs sorted by key, joined by `,`. Labels that
/// would make it ambiguous are rejected, so distinct label sets never share a string.
pub fn canonical_labels(labels: &Labels) -> Result<String, IdentityError> {
    let mut out = String::new();
    for (key, value) in labels {
        if key.starts_with(RESERVED_SOURCE) {
            return Err(IdentityError::ReservedLabel { key: key.clone() });
        }
        if key.is_empty() || key.contains(['=', ',']) || value.contains(',') {
            return Err(IdentityError::InvalidLabel { key: key.clone(), value: value.clone() });
        }
        if !out.is_empty() {
            out.push(',');
        }
        out.push_str(key);
        out.push('=');
        out.push_str(value);
    }
    Ok(out)
}

/// Inverse of [`canonical_labels`]; `None` if `s` is not a canonical string.
fn parse_canonical(s: &str) -> Option<Labels> {
    if s.is_empty() {
        return Some(Labels::new());
    }
    s.split(',')
        .map(|pair| {
            let (k, v) = pair.split_once('=')?;
            (!k.is_empty()).then(|| (k.to_owned(), v.to_owned()))
        })
        .collect()
}

/// The name of a reserved identity (`host`, `world`, ...), if `id` is one.
pub fn reserved_name(id: u32) -> Option<&'static str> {
    RESERVED.iter().find(|(n, _)| *n == id).map(|(_, name)| *name)
}

// === impl Identities ===

impl Identities {
    /// The allocator over the agent database.
    pub fn new(db: Arc<AgentDb>) -> Result<Self, IdentityError> {
        // Create the tables up front so read-only calls find them on a fresh database.
        db.write(|txn| -> Result<(), IdentityError> {
            txn.open_table(BY_LABELS).db()?;
            txn.open_table(LABELS).db()?;
            txn.open_table(REFS).db()?;
            txn.open_table(OWNERS).db()?;
            txn.open_table(META).db()?;
            Ok(())
        })?;
        Ok(Self { db, numbering: None })
    }

    /// The allocator, numbering new label sets by `numbering` (the cluster's allocator).
    pub fn with_numbering(db: Arc<AgentDb>, numbering: Arc<dyn Numbering>) -> Result<Self, IdentityError> {
        Ok(Self { numbering: Some(numbering), ..Self::new(db)? })
    }

    /// The number `canonical` gets when it is new here: asked of the cluster before the local
    /// write transaction opens (a network call never holds the database).
    fn cluster_number(&self, canonical: &str, labels: &Labels) -> Result<Option<u32>, IdentityError> {
        let Some(numbering) = &self.numbering else { return Ok(None) };
        let known = self.db.read(|txn| Ok::<_, IdentityError>(txn.open_table(BY_LABELS).db()?.get(canonical).db()?.map(|g| g.value())))?;
        if known.is_some() {
            return Ok(None);
        }
        numbering.number(canonical, labels).map(Some)
    }

    /// The identity of `labels`, allocated if new. It is not held: an identity only allocated
    /// is freed by the next [`Identities::gc`]. Endpoints use [`Identities::acquire`].
    pub fn allocate(&self, labels: &Labels) -> Result<u32, IdentityError> {
        let canonical = canonical_labels(labels)?;
        let given = self.cluster_number(&canonical, labels)?;
        self.db.write(|txn| get_or_create(txn, &canonical, given))
    }

    /// The identity of `labels`, held by `owner_key` (an endpoint) until released. Idempotent
    /// per owner; an owner whose labels changed moves from its old identity to the new one.
    pub fn acquire(&self, labels: &Labels, owner_key: &str) -> Result<u32, IdentityError> {
        let canonical = canonical_labels(labels)?;
        let given = self.cluster_number(&canonical, labels)?;
        self.db.write(|txn| {
            let id = get_or_create(txn, &canonical, given)?;
            let previous = txn.open_table(OWNERS).db()?.insert(owner_key, id).db()?.map(|g| g.value());
            match previous {
                Some(old) if old == id => {}
                Some(old) => {
                    drop_reference(txn, old)?;
                    add_reference(txn, id)?;
                }
                None => add_reference(txn, id)?,
            }
            Ok(id)
        })
    }

    /// Lets go of the identity `owner_key` holds and returns it; `None` if it held none.
    pub fn release(&self, owner_key: &str) -> Result<Option<u32>, IdentityError> {
        self.db.write(|txn| {
            let held = txn.open_table(OWNERS).db()?.remove(owner_key).db()?.map(|g| g.value());
            if let Some(id) = held {
                drop_reference(txn, id)?;
            }
            Ok(held)
        })
    }

    /// Lets go of every hold whose owner is not in `kept` (holds an ADD cut short left, as
    /// resync and CNI GC find them) in one transaction, and returns the owners released.
    pub fn release_all_except(&self, kept: &BTreeSet<String>) -> Result<Vec<String>, IdentityError> {
        self.db.write(|txn| {
            let stale: Vec<(String, u32)> = {
                let owners = txn.open_table(OWNERS).db()?;
                let mut stale = Vec::new();
                for row in owners.iter().db()? {
                    let (owner, id) = row.db()?;
                    if !kept.contains(owner.value()) {
                        stale.push((owner.value().to_owned(), id.value()));
                    }
                }
                stale
            };
            let mut owners = txn.open_table(OWNERS).db()?;
            for (owner, id) in &stale {
                owners.remove(owner.as_str()).db()?;
                drop_reference(txn, *id)?;
            }
            Ok(stale.into_iter().map(|(owner, _)| owner).collect())
        })
    }

    /// Frees every identity no owner holds and returns the freed numbers. The numbers are not
    /// reused; the same labels get a new number when allocated again.
    pub fn gc(&self) -> Result<Vec<u32>, IdentityError> {
        self.db.write(|txn| {
            let unreferenced: Vec<(u32, String)> = {
                let labels = txn.open_table(LABELS).db()?;
                let refs = txn.open_table(REFS).db()?;
                let mut out = Vec::new();
                for row in labels.iter().db()? {
                    let (id, canonical) = row.db()?;
                    if refs.get(id.value()).db()?.is_none() {
                        out.push((id.value(), canonical.value().to_owned()));
                    }
                }
                out
            };
            let mut labels = txn.open_table(LABELS).db()?;
            let mut by_labels = txn.open_table(BY_LABELS).db()?;
            for (id, canonical) in &unreferenced {
                labels.remove(*id).db()?;
                by_labels.remove(canonical.as_str()).db()?;
            }
            Ok(unreferenced.into_iter().map(|(id, _)| id).collect())
        })
    }

    /// The label set of `id`: `{"reserved:<name>": ""}` for a reserved identity, `None` for a
    /// number not allocated (or freed).
    pub fn lookup(&self, id: u32) -> Result<Option<Labels>, IdentityError> {
        if let Some(name) = reserved_name(id) {
            return Ok(Some(Labels::from([(format!("{RESERVED_SOURCE}{name}"), String::new())])));
        }
        self.db.read(|txn| {
            let labels = txn.open_table(LABELS).db()?;
            let Some(canonical) = labels.get(id).db()? else {
                return Ok(None);
            };
            let canonical = canonical.value();
            parse_canonical(canonical).map(Some).ok_or_else(|| IdentityError::Corrupt { id, labels: canonical.to_owned() })
        })
    }

    /// Every allocated (non-reserved) identity, ordered by number.
    pub fn list(&self) -> Result<Vec<Identity>, IdentityError> {
        self.db.read(|txn| {
            let labels = txn.open_table(LABELS).db()?;
            let refs = txn.open_table(REFS).db()?;
            let mut out = Vec::new();
            for row in labels.iter().db()? {
                let (id, canonical) = row.db()?;
                let (id, canonical) = (id.value(), canonical.value());
                let labels = parse_canonical(canonical).ok_or_else(|| IdentityError::Corrupt { id, labels: canonical.to_owned() })?;
                let references = refs.get(id).db()?.map_or(0, |r| r.value());
                out.push(Identity { id, labels, references });
            }
            Ok(out)
        })
    }
}

/// The identity of `canonical`, creating it if absent with `given` (the cluster's number) or
/// else the node counter's next number.
fn get_or_create(txn: &WriteTransaction, canonical: &str, given: Option<u32>) -> Result<u32, IdentityError> {
    let mut by_labels = txn.open_table(BY_LABELS).db()?;
    if let Some(id) = by_labels.get(canonical).db()? {
        return Ok(id.value());
    }
    if let Some(id) = given {
        by_labels.insert(canonical, id).db()?;
        txn.open_table(LABELS).db()?.insert(id, canonical).db()?;
        return Ok(id);
    }
    let mut meta = txn.open_table(META).db()?;
    let id = meta.get(NEXT_KEY).db()?.map_or(FIRST_DYNAMIC, |n| n.value()).max(FIRST_DYNAMIC);
    if id > MAX_IDENTITY {
        return Err(IdentityError::Exhausted);
    }
    meta.insert(NEXT_KEY, id + 1).db()?;
    by_labels.insert(canonical, id).db()?;
    txn.open_table(LABELS).db()?.insert(id, canonical).db()?;
    Ok(id)
}

/// Counts one more owner of `id`.
fn add_reference(txn: &WriteTransaction, id: u32) -> Result<(), IdentityError> {
    let mut refs = txn.open_table(REFS).db()?;
    let current = refs.get(id).db()?.map_or(0, |r| r.value());
    refs.insert(id, current.saturating_add(1)).db()?;
    Ok(())
}

/// Counts one owner less of `id`; the last one removes the row, which makes `id` collectable.
fn drop_reference(txn: &WriteTransaction, id: u32) -> Result<(), IdentityError> {
    let mut refs = txn.open_table(REFS).db()?;
    let current = refs.get(id).db()?.map_or(0, |r| r.value());
    if current <= 1 {
        refs.remove(id).db()?;
    } else {
        refs.insert(id, current - 1).db()?;
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;
    use std::path::Path;

    fn open(dir: &Path) -> Identities {
        Identities::new(Arc::new(AgentDb::open(dir).unwrap())).unwrap()
    }

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn web() -> Labels {
        labels(&[("k8s:io.kubernetes.pod.namespace", "default"), ("k8s:app", "web")])
    }

    fn db_app() -> Labels {
        labels(&[("k8s:io.kubernetes.pod.namespace", "default"), ("k8s:app", "db")])
    }

    #[test]
    fn canonical_form_is_sorted_pairs() {
        let c = canonical_labels(&labels(&[("b", "2"), ("a", "1"), ("c", "x=y")])).unwrap();
        assert_eq!(c, "a=1,b=2,c=x=y", "sorted k=v joined by ','");
        assert_eq!(canonical_labels(&Labels::new()).unwrap(), "", "empty set is the empty string");
        assert_eq!(parse_canonical("a=1,b=2,c=x=y"), Some(labels(&[("a", "1"), ("b", "2"), ("c", "x=y")])), "canonical form parses back");
        assert_eq!(parse_canonical("a"), None, "a pair without '=' is not canonical");
    }

    #[test]
    fn ambiguous_and_reserved_labels_are_rejected() {
        for bad in [labels(&[("a", "1,b=2")]), labels(&[("a,b", "1")]), labels(&[("a=b", "1")]), labels(&[("", "1")])] {
            let err = canonical_labels(&bad).unwrap_err();
            assert!(matches!(err, IdentityError::InvalidLabel { .. }), "{bad:?} is rejected: {err:?}");
        }
        let err = canonical_labels(&labels(&[("reserved:host", "")])).unwrap_err();
        assert!(matches!(err, IdentityError::ReservedLabel { .. }), "reserved source: {err:?}");
    }

    #[test]
    fn same_labels_same_id_different_labels_different_id() {
        let dir = tempfile::tempdir().unwrap();
        let ids = open(dir.path());
        let a = ids.allocate(&web()).unwrap();
        assert_eq!(a, FIRST_DYNAMIC, "first dynamic identity is 256");
        assert_eq!(ids.allocate(&web()).unwrap(), a, "same label set gets the same identity");
        let b = ids.allocate(&db_app()).unwrap();
        assert_ne!(a, b, "different label sets get different identities");
        assert_eq!(b, FIRST_DYNAMIC + 1, "numbers are handed out in sequence");
        assert_eq!(ids.lookup(a).unwrap(), Some(web()), "lookup returns the label set");
        assert_eq!(ids.lookup(9999).unwrap(), None, "unknown number has no labels");
    }

    #[test]
    fn reserved_identities_look_up_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let ids = open(dir.path());
        assert_eq!(ids.lookup(RESERVED_HOST).unwrap(), Some(labels(&[("reserved:host", "")])), "host identity");
        assert_eq!(reserved_name(RESERVED_WORLD), Some("world"), "world name");
        assert_eq!(reserved_name(RESERVED_REMOTE_NODE), Some("remote-node"), "remote-node");
        assert_eq!(reserved_name(FIRST_DYNAMIC), None, "dynamic numbers are not reserved");
        assert!(ids.list().unwrap().is_empty(), "reserved identities are not listed");
    }

    #[test]
    fn identities_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = {
            let ids = open(dir.path());
            (ids.acquire(&web(), "ep-1").unwrap(), ids.allocate(&db_app()).unwrap())
        };
        let ids = open(dir.path());
        assert_eq!(ids.allocate(&web()).unwrap(), a, "same id for the same labels after reopen");
        assert_eq!(ids.allocate(&db_app()).unwrap(), b, "second label set too");
        let c = ids.allocate(&labels(&[("k8s:app", "new")])).unwrap();
        assert_eq!(c, b + 1, "the counter continues after reopen");
        assert_eq!(ids.release("ep-1").unwrap(), Some(a), "the reference survived the reopen");
    }

    #[test]
    fn refcount_release_and_gc() {
        let dir = tempfile::tempdir().unwrap();
        let ids = open(dir.path());
        let a = ids.acquire(&web(), "ep-1").unwrap();
        assert_eq!(ids.acquire(&web(), "ep-2").unwrap(), a, "second endpoint shares the identity");
        assert_eq!(ids.acquire(&web(), "ep-2").unwrap(), a, "re-acquire is idempotent");
        assert_eq!(ids.list().unwrap()[0].references, 2, "two owners, not three");

        assert_eq!(ids.release("ep-1").unwrap(), Some(a), "release returns the identity held");
        assert_eq!(ids.release("ep-1").unwrap(), None, "second release holds nothing");
        assert!(ids.gc().unwrap().is_empty(), "an identity still held is not freed");
        assert_eq!(ids.lookup(a).unwrap(), Some(web()), "held identity still resolves");

        ids.release("ep-2").unwrap();
        assert_eq!(ids.list().unwrap()[0].references, 0, "no owner left");
        assert_eq!(ids.gc().unwrap(), vec![a], "unheld identity is freed by gc");
        assert_eq!(ids.lookup(a).unwrap(), None, "freed identity no longer resolves");
        assert!(ids.list().unwrap().is_empty(), "freed identity is not listed");

        let again = ids.acquire(&web(), "ep-3").unwrap();
        assert!(again > a, "a freed number is not reused: got {again} after {a}");
    }

    #[test]
    fn holds_of_unrecorded_owners_are_released() {
        let dir = tempfile::tempdir().unwrap();
        let ids = open(dir.path());
        let a = ids.acquire(&web(), "kept").unwrap();
        ids.acquire(&web(), "cut-short").unwrap();
        let b = ids.acquire(&db_app(), "also-cut-short").unwrap();
        let kept: BTreeSet<String> = ["kept".to_string(), "never-held".to_string()].into();
        assert_eq!(ids.release_all_except(&kept).unwrap(), vec!["also-cut-short".to_string(), "cut-short".to_string()]);
        let refs: Vec<(u32, u64)> = ids.list().unwrap().iter().map(|i| (i.id, i.references)).collect();
        assert_eq!(refs, vec![(a, 1), (b, 0)], "the kept owner still holds its identity, the others none");
        assert!(ids.release_all_except(&kept).unwrap().is_empty(), "a second pass releases nothing");
        assert_eq!(ids.release("kept").unwrap(), Some(a), "the kept hold is intact");
    }

    #[test]
    fn allocate_without_acquire_is_collectable() {
        let dir = tempfile::tempdir().unwrap();
        let ids = open(dir.path());
        let a = ids.allocate(&web()).unwrap();
        let b = ids.acquire(&db_app(), "ep-1").unwrap();
        assert_eq!(ids.gc().unwrap(), vec![a], "only the unheld identity is freed");
        assert_eq!(ids.lookup(b).unwrap(), Some(db_app()), "held identity kept");
    }

    #[test]
    fn owner_moving_to_new_labels_moves_its_reference() {
        let dir = tempfile::tempdir().unwrap();
        let ids = open(dir.path());
        let a = ids.acquire(&web(), "ep-1").unwrap();
        let b = ids.acquire(&db_app(), "ep-1").unwrap();
        assert_ne!(a, b, "new labels, new identity");
        let refs: Vec<(u32, u64)> = ids.list().unwrap().iter().map(|i| (i.id, i.references)).collect();
        assert_eq!(refs, vec![(a, 0), (b, 1)], "the reference moved from the old to the new");
        assert_eq!(ids.release("ep-1").unwrap(), Some(b), "the owner holds the new identity");
    }

    #[test]
    fn counter_never_hands_out_reserved_or_beyond_max() {
        let dir = tempfile::tempdir().unwrap();
        let db = Arc::new(AgentDb::open(dir.path()).unwrap());
        let ids = Identities::new(db.clone()).unwrap();
        db.write(|txn| -> Result<(), DbError> {
            txn.open_table(META).db()?.insert(NEXT_KEY, MAX_IDENTITY).db()?;
            Ok(())
        })
        .unwrap();
        assert_eq!(ids.allocate(&web()).unwrap(), MAX_IDENTITY, "the maximum itself is usable");
        let err = ids.allocate(&db_app()).unwrap_err();
        assert!(matches!(err, IdentityError::Exhausted), "beyond the maximum: {err:?}");
        assert_eq!(ids.allocate(&web()).unwrap(), MAX_IDENTITY, "existing sets still resolve");
        db.write(|txn| -> Result<(), DbError> {
            txn.open_table(META).db()?.insert(NEXT_KEY, RESERVED_HOST).db()?;
            Ok(())
        })
        .unwrap();
        assert_eq!(ids.allocate(&db_app()).unwrap(), FIRST_DYNAMIC, "never below 256");
    }
}
