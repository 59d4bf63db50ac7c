//! The batching plan: which slices to create, update and delete so that the desired
//! endpoints are published, touching as few slices as possible. Level-triggered: the plan
//! depends only on what is and what is wanted, so it also heals a store left half-written
//! (an endpoint in two slices, a slice over the size limit) and a plan computed from its own
//! result is empty.

use std::collections::{BTreeMap, BTreeSet};

use super::{DesiredEndpoint, SliceEndpoint, SluiceEndpointSlice};
use crate::labels::validate_dns1123_subdomain;

/// Computes the writes for one writer (one node's agent).
///
/// Policy, in order:
/// 1. Stability: an endpoint whose namespace and identity did not change stays in the slice
///    it is in (its addresses are updated in place), so a pod start touches one slice.
/// 2. Endpoints that left or changed identity leave their slice; slices left empty and not
///    refilled by step 3 are deleted.
/// 3. Endpoints not yet in a slice of their group fill the group's slices that have room,
///    emptiest first (the emptiest has the most room, so a burst touches the fewest slices),
///    then new slices of at most `max_per_slice` endpoints.
///
/// Slices are never compacted: moving unchanged endpoints would cost writes and watch
/// events for no reader's benefit. A group only gets a new slice when all its slices are
/// full, so a group never holds more slices than its largest size needed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batcher {
    node: String,
    max_per_slice: usize,
}

/// A write to the datastore: one slice object created, replaced or deleted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SliceWrite {
    /// A slice that does not exist yet (its name is free in its namespace).
    Create(SluiceEndpointSlice),
    /// An existing slice replaced by this content.
    Update(SluiceEndpointSlice),
    /// An existing slice that has no endpoint left.
    Delete { namespace: String, name: String },
}

/// The writes that take the store from the slices given to [`Batcher::plan`] to the desired
/// endpoints, ordered by namespace and slice name.
///
/// The caller must apply one plan atomically (one etcd transaction, guarded by the
/// revisions it read): when a pod changes identity, its removal from the old slice and its
/// addition to the new one are two writes of the same plan, and only applying them together
/// ensures no reader ever sees the pod in two slices or in none.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    pub writes: Vec<SliceWrite>,
}

/// What makes a plan impossible to compute; each names the object at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BatchError {
    /// The configured slice size is zero.
    #[error("the maximum number of endpoints per slice must be at least 1")]
    ZeroSliceSize,
    /// The writer's node name cannot prefix a slice name.
    #[error("node name {node:?} cannot name endpoint slices: {reason}")]
    NodeName { node: String, reason: String },
    /// An existing slice handed in belongs to another writer.
    #[error("endpoint slice {namespace}/{name} is written by node {owner:?}, not by {writer:?}")]
    ForeignSlice { namespace: String, name: String, owner: String, writer: String },
    /// Two existing slices handed in have the same namespace and name.
    #[error("endpoint slice {namespace}/{name} is given twice")]
    DuplicateSlice { namespace: String, name: String },
    /// A desired endpoint is given twice.
    #[error("endpoint {namespace}/{name} is desired twice")]
    DuplicateEndpoint { namespace: String, name: String },
}

// === impl Batcher ===

impl Batcher {
    /// A batcher writing as `node`, with at most `max_per_slice` endpoints per slice.
    pub fn new(node: impl Into<String>, max_per_slice: usize) -> Result<Self, BatchError> {
        let node = node.into();
        if max_per_slice == 0 {
            return Err(BatchError::ZeroSliceSize);
        }
        // The longest name this writer can generate must still be a valid object name.
        let longest = format!("{node}-{}-{}", u32::MAX, usize::MAX);
        validate_dns1123_subdomain(&node)
            .and_then(|()| validate_dns1123_subdomain(&longest))
            .map_err(|reason| BatchError::NodeName { node: node.clone(), reason })?;
        Ok(Self { node, max_per_slice })
    }

    pub fn node(&self) -> &str {
        &self.node
    }

    pub fn max_per_slice(&self) -> usize {
        self.max_per_slice
    }

    /// The writes that publish `desired` given the writer's `existing` slices, as read back
    /// from the datastore. See [`Batcher`] for the policy and [`Plan`] for how to apply it.
    pub fn plan(&self, existing: &[SluiceEndpointSlice], desired: &[DesiredEndpoint]) -> Result<Plan, BatchError> {
        let slices = self.checked(existing)?;
        let wanted = wanted(desired)?;

        // Step 1 and 2: keep what still belongs where it is.
        let mut placed: BTreeSet<(&str, &str)> = BTreeSet::new();
        let mut working: Vec<Working<'_>> = slices
            .iter()
            .map(|&slice| {
                let mut endpoints = Vec::new();
                for endpoint in &slice.endpoints {
                    let key = (slice.namespace.as_str(), endpoint.name.as_str());
                    let Some(want) = wanted.get(&key) else { continue };
                    if want.identity != slice.identity || endpoints.len() == self.max_per_slice || placed.contains(&key) {
                        continue;
                    }
                    placed.insert(key);
                    endpoints.push(SliceEndpoint { name: endpoint.name.clone(), addresses: want.addresses.clone() });
                }
                Working {
                    original: Some(slice),
                    namespace: &slice.namespace,
                    name: slice.name.clone(),
                    identity: slice.identity,
                    endpoints,
                }
            })
            .collect();

        // Step 3: place the rest, group by group, pods in name order.
        let mut pending: BTreeMap<(&str, u32), Vec<&DesiredEndpoint>> = BTreeMap::new();
        for (key, want) in &wanted {
            if !placed.contains(key) {
                pending.entry((want.namespace.as_str(), want.identity)).or_default().push(want);
            }
        }
        let mut names: BTreeSet<(&str, String)> = slices.iter().map(|s| (s.namespace.as_str(), s.name.clone())).collect();
        for ((namespace, identity), pods) in pending {
            let mut rest = pods.into_iter().peekable();
            let mut roomy: Vec<usize> = (0..working.len())
                .filter(|&i| {
                    let w = &working[i];
                    w.namespace == namespace && w.identity == identity && w.endpoints.len() < self.max_per_slice
                })
                .collect();
            roomy.sort_by(|&a, &b| (working[a].endpoints.len(), &working[a].name).cmp(&(working[b].endpoints.len(), &working[b].name)));
            for index in roomy {
                self.fill(&mut working[index], &mut rest);
            }
            while rest.peek().is_some() {
                let name = self.fresh_name(namespace, identity, &names);
                names.insert((namespace, name.clone()));
                let mut new = Working { original: None, namespace, name, identity, endpoints: Vec::new() };
                self.fill(&mut new, &mut rest);
                working.push(new);
            }
        }

        let mut writes: Vec<SliceWrite> = working.into_iter().filter_map(|w| w.into_write(&self.node)).collect();
        writes.sort_by(|a, b| a.key().cmp(&b.key()));
        Ok(Plan { writes })
    }

    /// The existing slices in namespace and name order, checked to be this writer's.
    fn checked<'a>(&self, existing: &'a [SluiceEndpointSlice]) -> Result<Vec<&'a SluiceEndpointSlice>, BatchError> {
        let mut slices: Vec<&SluiceEndpointSlice> = existing.iter().collect();
        slices.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        for pair in slices.windows(2) {
            if (&pair[0].namespace, &pair[0].name) == (&pair[1].namespace, &pair[1].name) {
                return Err(BatchError::DuplicateSlice { namespace: pair[0].namespace.clone(), name: pair[0].name.clone() });
            }
        }
        if let Some(foreign) = slices.iter().find(|s| s.node != self.node) {
            return Err(BatchError::ForeignSlice {
                namespace: foreign.namespace.clone(),
                name: foreign.name.clone(),
                owner: foreign.node.clone(),
                writer: self.node.clone(),
            });
        }
        Ok(slices)
    }

    fn fill<'d>(&self, slice: &mut Working<'_>, rest: &mut std::iter::Peekable<impl Iterator<Item = &'d DesiredEndpoint>>) {
        while slice.endpoints.len() < self.max_per_slice {
            let Some(want) = rest.next() else { return };
            slice.endpoints.push(SliceEndpoint { name: want.name.clone(), addresses: want.addresses.clone() });
        }
    }

    /// `<node>-<identity>-<n>` with the smallest `n` whose name is free in the namespace,
    /// so names are deterministic and never collide with a slice of the same plan.
    fn fresh_name(&self, namespace: &str, identity: u32, names: &BTreeSet<(&str, String)>) -> String {
        (0usize..)
            .map(|n| format!("{}-{identity}-{n}", self.node))
            .find(|name| !names.contains(&(namespace, name.clone())))
            .unwrap_or_default() // unreachable: the names in use are finite
    }
}

/// The desired endpoints by namespace and pod name, each once.
fn wanted(desired: &[DesiredEndpoint]) -> Result<BTreeMap<(&str, &str), &DesiredEndpoint>, BatchError> {
    let mut wanted = BTreeMap::new();
    for want in desired {
        if wanted.insert((want.namespace.as_str(), want.name.as_str()), want).is_some() {
            return Err(BatchError::DuplicateEndpoint { namespace: want.namespace.clone(), name: want.name.clone() });
        }
    }
    Ok(wanted)
}

/// A slice as the plan leaves it, with what it was.
struct Working<'a> {
    original: Option<&'a SluiceEndpointSlice>,
    namespace: &'a str,
    name: String,
    identity: u32,
    endpoints: Vec<SliceEndpoint>,
}

impl Working<'_> {
    fn into_write(self, node: &str) -> Option<SliceWrite> {
        match self.original {
            Some(original) if self.endpoints.is_empty() => {
                Some(SliceWrite::Delete { namespace: original.namespace.clone(), name: original.name.clone() })
            }
            Some(original) if original.endpoints == self.endpoints => None,
            Some(original) => Some(SliceWrite::Update(SluiceEndpointSlice { endpoints: self.endpoints, ..original.clone() })),
            None if self.endpoints.is_empty() => None,
            None => Some(SliceWrite::Create(SluiceEndpointSlice {
                name: self.name,
                namespace: self.namespace.to_owned(),
                identity: self.identity,
                node: node.to_owned(),
                endpoints: self.endpoints,
            })),
        }
    }
}

// === impl SliceWrite ===

impl SliceWrite {
    /// The namespace and name of the slice written.
    pub fn key(&self) -> (&str, &str) {
        match self {
            SliceWrite::Create(slice) | SliceWrite::Update(slice) => (&slice.namespace, &slice.name),
            SliceWrite::Delete { namespace, name } => (namespace, name),
        }
    }
}

// === impl Plan ===

impl Plan {
    pub fn is_empty(&self) -> bool {
        self.writes.is_empty()
    }

    pub fn len(&self) -> usize {
        self.writes.len()
    }

    /// The slices after the plan is applied to `existing`, in namespace and name order: what
    /// the datastore holds once the transaction commits, for the writer's own cache.
    pub fn apply(&self, existing: &[SluiceEndpointSlice]) -> Vec<SluiceEndpointSlice> {
        let mut slices: BTreeMap<(String, String), SluiceEndpointSlice> =
            existing.iter().map(|s| ((s.namespace.clone(), s.name.clone()), s.clone())).collect();
        for write in &self.writes {
            let (namespace, name) = write.key();
            let key = (namespace.to_owned(), name.to_owned());
            match write {
                SliceWrite::Create(slice) | SliceWrite::Update(slice) => slices.insert(key, slice.clone()),
                SliceWrite::Delete { .. } => slices.remove(&key),
            };
        }
        slices.into_values().collect()
    }
}
