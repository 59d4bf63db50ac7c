//! The pods the scale benchmark starts and stops: where each lives, its address, its workload
//! (namespace and identity), and the order and pace of the three phases (scale-up, churn,
//! teardown). Everything is computed from a pod's node and slot, so the simulated nodes can
//! check what they read without asking anyone.

use std::net::{IpAddr, Ipv4Addr};

use serde::{Deserialize, Serialize};

/// Address slots per node: a node's pods live in its /24 of 10.0.0.0/8.
pub const SLOTS: u32 = 256;
/// Most pods per node: each may be replaced once by the churn, in the slots above.
pub const MAX_PODS_PER_NODE: usize = 120;
/// Most nodes: one /24 each in 10.0.0.0/8.
pub const MAX_NODES: usize = 65_536;
/// Distinct workloads (deployments) in the cluster; a node's groups are consecutive ones.
const WORKLOADS: u32 = 200;
const FIRST_ADDRESS: u32 = 0x0a00_0000;

/// How the scale-up phase's pods arrive on the nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Arrival {
    /// Each node's pods start together, nodes one after the other (nodes joining a cluster
    /// with pending pods, a node-by-node rollout): the burst a debounce window batches.
    NodeBurst,
    /// Pods start one at a time, round-robin over the nodes (a scale-up of deployments
    /// spread over every node): each start stands alone.
    Spread,
}

/// The shape of the pod population.
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    pub nodes: usize,
    pub pods_per_node: usize,
    /// Distinct workloads (namespace and identity) among a node's pods.
    pub groups_per_node: usize,
}

/// One pod: everything its endpoint record says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pod {
    pub index: u32,
    pub namespace: String,
    pub name: String,
    pub identity: u32,
    pub address: IpAddr,
}

impl Shape {
    /// The index space: `nodes × SLOTS`.
    pub fn indices(&self) -> usize {
        self.nodes * SLOTS as usize
    }

    /// Pod `slot` of `node`. Slots `0..pods_per_node` are the first pods; slot
    /// `pods_per_node + s` replaces slot `s` in the churn, in the same workload.
    pub fn pod(&self, node: u32, slot: u32) -> Pod {
        let group = (slot % self.pods_per_node as u32) % self.groups_per_node as u32;
        let workload = (node * self.groups_per_node as u32 + group) % WORKLOADS;
        let index = node * SLOTS + slot;
        Pod {
            index,
            namespace: format!("team-{}", workload % 20),
            name: format!("w{workload}-{node}-{slot}"),
            identity: 256 + workload,
            address: IpAddr::V4(Ipv4Addr::from(FIRST_ADDRESS + index)),
        }
    }

    /// The pod index an address belongs to, if it is one of the benchmark's.
    pub fn index_of(&self, address: IpAddr) -> Option<usize> {
        let IpAddr::V4(v4) = address else { return None };
        let index = u32::from(v4).checked_sub(FIRST_ADDRESS)? as usize;
        (index < self.indices()).then_some(index)
    }

    /// The node's pod CIDR.
    pub fn node_cidr(&self, node: u32) -> ipnet::IpNet {
        ipnet::IpNet::V4(ipnet::Ipv4Net::new(Ipv4Addr::from(FIRST_ADDRESS + node * SLOTS), 24).unwrap_or_default())
    }
}

/// What a phase asks of one node at one moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    Start {
        node: u32,
        slot: u32,
    },
    Stop {
        node: u32,
        slot: u32,
    },
    /// Stop the pod in `old` and start its replacement in `new`, as a rolling restart does.
    Replace {
        node: u32,
        old: u32,
        new: u32,
    },
}

/// The scale-up: every node's first pods, in arrival order, grouped into batches that happen
/// at the same moment.
pub fn scale_up(shape: &Shape, arrival: Arrival) -> Vec<Vec<Step>> {
    let (n, p) = (shape.nodes as u32, shape.pods_per_node as u32);
    match arrival {
        Arrival::NodeBurst => (0..n).map(|node| (0..p).map(|slot| Step::Start { node, slot }).collect()).collect(),
        Arrival::Spread => (0..p).flat_map(|slot| (0..n).map(move |node| vec![Step::Start { node, slot }])).collect(),
    }
}

/// The churn: `percent` of each node's pods replaced one at a time, round-robin over nodes.
pub fn churn(shape: &Shape, percent: usize) -> Vec<Vec<Step>> {
    let (n, p) = (shape.nodes as u32, shape.pods_per_node as u32);
    let per_node = (shape.pods_per_node * percent).div_ceil(100) as u32;
    (0..per_node.min(p)).flat_map(|slot| (0..n).map(move |node| vec![Step::Replace { node, old: slot, new: p + slot }])).collect()
}

/// The teardown: each node stops all its pods at once (a node drained), nodes one after the
/// other. `churned` first slots per node were replaced in the churn.
pub fn teardown(shape: &Shape, churned: u32) -> Vec<Vec<Step>> {
    let (n, p) = (shape.nodes as u32, shape.pods_per_node as u32);
    (0..n).map(|node| (0..p).map(|slot| Step::Stop { node, slot: if slot < churned { p + slot } else { slot } }).collect()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHAPE: Shape = Shape { nodes: 3, pods_per_node: 20, groups_per_node: 4 };

    #[test]
    fn addresses_map_back_to_their_pods_and_stay_in_the_node_cidr() {
        for node in 0..3 {
            for slot in [0, 19, 20, 39] {
                let pod = SHAPE.pod(node, slot);
                assert_eq!(SHAPE.index_of(pod.address), Some(pod.index as usize));
                assert!(SHAPE.node_cidr(node).contains(&pod.address), "{pod:?}");
            }
        }
        assert_eq!(SHAPE.index_of("10.3.0.0".parse().unwrap()), None, "beyond the last node");
        assert_eq!(SHAPE.index_of("192.0.2.1".parse().unwrap()), None);
    }

    #[test]
    fn a_node_has_its_groups_and_a_replacement_keeps_its_workload() {
        let identities: std::collections::BTreeSet<u32> = (0..20).map(|s| SHAPE.pod(1, s).identity).collect();
        assert_eq!(identities.len(), 4, "four workloads on the node");
        assert_eq!(SHAPE.pod(1, 3).identity, SHAPE.pod(1, 23).identity, "slot 23 replaces slot 3");
        assert_ne!(SHAPE.pod(1, 3).name, SHAPE.pod(1, 23).name);
    }

    #[test]
    fn phases_start_replace_and_stop_every_pod_once() {
        for arrival in [Arrival::NodeBurst, Arrival::Spread] {
            let up: Vec<Step> = scale_up(&SHAPE, arrival).concat();
            assert_eq!(up.len(), 60, "{arrival:?}");
        }
        assert_eq!(scale_up(&SHAPE, Arrival::NodeBurst).len(), 3, "one burst per node");
        let churn = churn(&SHAPE, 10).concat();
        assert_eq!(churn.len(), 6, "two of twenty per node");
        let down = teardown(&SHAPE, 2).concat();
        assert_eq!(down.len(), 60);
        assert!(down.contains(&Step::Stop { node: 0, slot: 20 }) && !down.contains(&Step::Stop { node: 0, slot: 0 }));
    }
}
