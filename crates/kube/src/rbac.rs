//! What the agent asks of the API server, as (API group, resource, verb): every watched kind
//! is listed and watched; the writes are the writer's. The ClusterRole in `deploy/` grants
//! exactly this set, and a test compares the two, so the role stays least-privilege as the
//! code changes.

use std::collections::BTreeSet;

/// The writer's requests beyond list and watch.
pub const WRITES: &[(&str, &str, &[&str])] = &[
    // Joining reads the node's own Node (its pod CIDRs, its uid for the owner reference).
    ("", "nodes", &["get"]),
    // The agent's events, posted about its Node.
    ("", "events", &["create"]),
    // The NetworkUnavailable condition, once the agent is ready.
    ("", "nodes/status", &["patch"]),
    // Identity numbering (get, create; a 409 settles races), reuse and collection (patch:
    // the unused mark; delete under a resourceVersion precondition).
    ("sluice.dev", "sluiceidentities", &["get", "create", "patch", "delete"]),
    // The node's SluiceNode, by server-side apply (a patch that may create).
    ("sluice.dev", "sluicenodes", &["create", "patch"]),
    // The node's endpoints, by server-side apply; deleted when the pods are gone.
    ("sluice.dev", "sluiceendpointslices", &["create", "patch", "delete"]),
    ("sluice.dev", "sluiceendpoints", &["create", "patch", "delete"]),
];

/// Every (group, resource, verb) the agent uses.
pub fn needed() -> BTreeSet<(String, String, String)> {
    let mut all = BTreeSet::new();
    for w in crate::source::watched() {
        for verb in ["list", "watch"] {
            all.insert((w.group.clone(), w.resource.clone(), verb.to_owned()));
        }
    }
    for (group, resource, verbs) in WRITES {
        for verb in *verbs {
            all.insert(((*group).to_owned(), (*resource).to_owned(), (*verb).to_owned()));
        }
    }
    all
}
