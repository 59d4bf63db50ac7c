//! The batching policy, property by property, then random churn checked against the
//! invariants after every plan.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::*;
use crate::labels::validate_dns1123_subdomain;

const NODE: &str = "node-a";

fn batcher(max: usize) -> Batcher {
    Batcher::new(NODE, max).unwrap()
}

fn addresses(n: u32) -> Vec<IpAddr> {
    vec![IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + n)), IpAddr::V6(Ipv6Addr::from(0xfd00_u128 << 112 | u128::from(n)))]
}

fn pod(namespace: &str, name: &str, identity: u32, n: u32) -> DesiredEndpoint {
    DesiredEndpoint { namespace: namespace.into(), name: name.into(), identity, addresses: addresses(n) }
}

/// `count` pods of one namespace and identity, named `<prefix>-<i>`.
fn pods(namespace: &str, prefix: &str, identity: u32, count: u32) -> Vec<DesiredEndpoint> {
    (0..count).map(|i| pod(namespace, &format!("{prefix}-{i}"), identity, i)).collect()
}

/// Plans and applies; also checks the invariants and that planning again is a no-op.
fn step(batcher: &Batcher, slices: &[SluiceEndpointSlice], desired: &[DesiredEndpoint]) -> (Plan, Vec<SluiceEndpointSlice>) {
    let plan = batcher.plan(slices, desired).unwrap();
    let after = plan.apply(slices);
    check_invariants(batcher, &after, desired);
    let again = batcher.plan(&after, desired).unwrap();
    assert!(again.is_empty(), "planning from the plan's own result must write nothing, got {again:?}");
    (plan, after)
}

/// Every desired endpoint in exactly one slice of its group with its addresses, nothing
/// else; no slice empty or over size; names valid, unique and the writer's.
fn check_invariants(batcher: &Batcher, slices: &[SluiceEndpointSlice], desired: &[DesiredEndpoint]) {
    let mut seen: BTreeMap<(String, String), (u32, Vec<IpAddr>)> = BTreeMap::new();
    let mut names = BTreeSet::new();
    for slice in slices {
        assert!(!slice.endpoints.is_empty(), "slice {} is empty and should have been deleted", slice.name);
        assert!(slice.endpoints.len() <= batcher.max_per_slice(), "slice {} holds {} endpoints", slice.name, slice.endpoints.len());
        assert_eq!(slice.node, NODE, "slice {} belongs to the writer", slice.name);
        assert!(validate_dns1123_subdomain(&slice.name).is_ok(), "slice name {:?} is a DNS-1123 subdomain", slice.name);
        assert!(names.insert((slice.namespace.clone(), slice.name.clone())), "slice name {} is unique", slice.name);
        for endpoint in &slice.endpoints {
            let previous = seen.insert((slice.namespace.clone(), endpoint.name.clone()), (slice.identity, endpoint.addresses.clone()));
            assert!(previous.is_none(), "{}/{} is in two slices", slice.namespace, endpoint.name);
        }
    }
    let wanted: BTreeMap<(String, String), (u32, Vec<IpAddr>)> =
        desired.iter().map(|d| ((d.namespace.clone(), d.name.clone()), (d.identity, d.addresses.clone()))).collect();
    assert_eq!(seen, wanted, "the slices publish exactly the desired endpoints, each under its identity");
}

/// Which slice (namespace, name) holds each endpoint.
fn homes(slices: &[SluiceEndpointSlice]) -> BTreeMap<(String, String), String> {
    slices.iter().flat_map(|s| s.endpoints.iter().map(move |e| ((s.namespace.clone(), e.name.clone()), s.name.clone()))).collect()
}

#[test]
fn a_burst_of_250_pod_starts_is_three_writes_of_at_most_100() {
    let desired = pods("shop", "web", 7, 250);
    let (plan, after) = step(&batcher(100), &[], &desired);
    assert_eq!(plan.len(), 3, "250 endpoints at 100 per slice are three slices");
    assert!(plan.writes.iter().all(|w| matches!(w, SliceWrite::Create(_))), "all three are creations");
    let sizes: Vec<usize> = after.iter().map(|s| s.endpoints.len()).collect();
    assert_eq!(sizes, vec![100, 100, 50]);
    let names: Vec<&str> = after.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, vec!["node-a-7-0", "node-a-7-1", "node-a-7-2"], "names are deterministic");
}

#[test]
fn one_pod_start_among_10000_is_one_write() {
    let batcher = batcher(100);
    let mut desired = Vec::new();
    for (i, namespace) in ["shop", "bank", "blog"].into_iter().enumerate() {
        for identity in 0..7u32 {
            // Group sizes that are not multiples of 100, so most groups have room.
            let count = 400 + 37 * identity + 11 * i as u32;
            desired.extend(pods(namespace, &format!("app{identity}"), 100 + identity, count));
        }
    }
    desired.truncate(10_000);
    let (_, slices) = step(&batcher, &[], &desired);

    desired.push(pod("bank", "late-starter", 103, 99_999));
    let (plan, after) = step(&batcher, &slices, &desired);
    assert_eq!(plan.len(), 1, "one pod start touches one slice: {:?}", plan.writes.iter().map(SliceWrite::key).collect::<Vec<_>>());
    assert!(
        matches!(&plan.writes[0], SliceWrite::Update(s) if s.identity == 103 && s.namespace == "bank"),
        "the pod joins its group's slice with room"
    );
    let before = homes(&slices);
    let now = homes(&after);
    assert!(before.iter().all(|(pod, slice)| now.get(pod) == Some(slice)), "no other endpoint moved");
}

#[test]
fn a_slice_never_exceeds_its_size_even_when_the_size_shrinks() {
    let desired = pods("shop", "web", 7, 30);
    let (_, slices) = step(&batcher(50), &[], &desired);
    assert_eq!(slices.len(), 1);
    let (plan, after) = step(&batcher(10), &slices, &desired);
    assert_eq!(after.len(), 3, "30 endpoints at 10 per slice");
    assert_eq!(plan.len(), 3, "the slice is trimmed and two are created");
    assert_eq!(after[0].endpoints, slices[0].endpoints[..10], "the first ten stay where they were");
}

#[test]
fn an_identity_change_moves_the_endpoint_in_one_plan() {
    let batcher = batcher(100);
    let mut desired = pods("shop", "web", 7, 5);
    desired.extend(pods("shop", "db", 9, 5));
    let (_, slices) = step(&batcher, &[], &desired);

    desired[2].identity = 9;
    let (plan, after) = step(&batcher, &slices, &desired);
    assert_eq!(plan.len(), 2, "one removal and one addition, in the same plan: {plan:?}");
    let removed = plan.writes.iter().any(|w| match w {
        SliceWrite::Update(s) => s.identity == 7 && s.endpoints.iter().all(|e| e.name != "web-2"),
        _ => false,
    });
    let added = plan.writes.iter().any(|w| match w {
        SliceWrite::Update(s) => s.identity == 9 && s.endpoints.iter().any(|e| e.name == "web-2"),
        _ => false,
    });
    assert!(removed, "the plan removes web-2 from identity 7's slice");
    assert!(added, "the same plan adds web-2 to identity 9's slice");
    assert_eq!(homes(&after).get(&("shop".into(), "web-2".into())).map(String::as_str), Some("node-a-9-0"));
}

#[test]
fn a_deleted_pod_leaves_its_slice_and_the_others_stay() {
    let batcher = batcher(100);
    let mut desired = pods("shop", "web", 7, 5);
    let (_, slices) = step(&batcher, &[], &desired);
    desired.remove(1);
    let (plan, after) = step(&batcher, &slices, &desired);
    assert_eq!(plan.len(), 1, "one slice updated");
    let names: Vec<&str> = after[0].endpoints.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(names, vec!["web-0", "web-2", "web-3", "web-4"]);
}

#[test]
fn an_empty_slice_is_deleted() {
    let batcher = batcher(100);
    let mut desired = pods("shop", "web", 7, 3);
    desired.extend(pods("shop", "db", 9, 2));
    let (_, slices) = step(&batcher, &[], &desired);
    desired.retain(|d| d.identity != 9);
    let (plan, after) = step(&batcher, &slices, &desired);
    assert_eq!(plan.writes, vec![SliceWrite::Delete { namespace: "shop".into(), name: "node-a-9-0".into() }]);
    assert_eq!(after.len(), 1);
    let (plan, after) = step(&batcher, &after, &[]);
    assert_eq!(plan.len(), 1, "the last slice goes too");
    assert!(after.is_empty());
}

#[test]
fn an_emptied_slice_is_refilled_rather_than_deleted_and_recreated() {
    let batcher = batcher(100);
    let desired = pods("shop", "web", 7, 3);
    let (_, slices) = step(&batcher, &[], &desired);
    let replacement = pods("shop", "web2", 7, 2);
    let (plan, after) = step(&batcher, &slices, &replacement);
    assert_eq!(plan.len(), 1, "one update: {plan:?}");
    assert!(matches!(&plan.writes[0], SliceWrite::Update(s) if s.name == "node-a-7-0"));
    assert_eq!(after.len(), 1);
}

#[test]
fn an_address_change_touches_only_its_slice() {
    let batcher = batcher(10);
    let mut desired = pods("shop", "web", 7, 25);
    let (_, slices) = step(&batcher, &[], &desired);
    desired[13].addresses = addresses(4242);
    let (plan, after) = step(&batcher, &slices, &desired);
    assert_eq!(plan.len(), 1);
    assert_eq!(homes(&slices), homes(&after), "nothing moved");
}

#[test]
fn new_endpoints_fill_the_emptiest_slice_with_room_first() {
    let batcher = batcher(10);
    let mut desired = pods("shop", "web", 7, 30);
    let (_, slices) = step(&batcher, &[], &desired);
    // Leave 9, 4 and 7 endpoints in the three slices.
    let gone: Vec<String> =
        [1, 6, 3].into_iter().zip(&slices).flat_map(|(count, slice)| slice.endpoints[..count].iter().map(|e| e.name.clone())).collect();
    desired.retain(|d| !gone.contains(&d.name));
    let (_, slices) = step(&batcher, &slices, &desired);
    let sizes: Vec<usize> = slices.iter().map(|s| s.endpoints.len()).collect();
    assert_eq!(sizes, vec![9, 4, 7]);

    desired.extend(pods("shop", "new", 7, 5));
    let (plan, after) = step(&batcher, &slices, &desired);
    assert_eq!(plan.len(), 1, "five fit in the emptiest slice");
    let sizes: Vec<usize> = after.iter().map(|s| s.endpoints.len()).collect();
    assert_eq!(sizes, vec![9, 9, 7]);
}

#[test]
fn new_names_skip_names_already_taken() {
    let batcher = batcher(2);
    let squatter = SluiceEndpointSlice {
        name: "node-a-7-0".into(),
        namespace: "shop".into(),
        identity: 9,
        node: NODE.into(),
        endpoints: vec![SliceEndpoint { name: "db-0".into(), addresses: addresses(1) }],
    };
    let mut desired = vec![pod("shop", "db-0", 9, 1)];
    desired.extend(pods("shop", "web", 7, 3));
    let (plan, _) = step(&batcher, &[squatter], &desired);
    let created: Vec<&str> = plan.writes.iter().map(|w| w.key().1).collect();
    assert_eq!(created, vec!["node-a-7-1", "node-a-7-2"]);
}

#[test]
fn the_same_pod_name_in_two_namespaces_is_two_endpoints() {
    let desired = vec![pod("shop", "web", 7, 1), pod("bank", "web", 7, 2)];
    let (plan, after) = step(&batcher(100), &[], &desired);
    assert_eq!(plan.len(), 2, "one slice per namespace");
    assert_eq!(after.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(), vec!["node-a-7-0", "node-a-7-0"]);
}

#[test]
fn an_endpoint_found_in_two_slices_is_kept_in_one() {
    let batcher = batcher(100);
    let desired = pods("shop", "web", 7, 2);
    let (_, mut slices) = step(&batcher, &[], &desired);
    let mut copy = slices[0].clone();
    copy.name = "node-a-7-9".into();
    copy.endpoints.truncate(1);
    slices.push(copy);
    let (plan, _) = step(&batcher, &slices, &desired);
    assert_eq!(plan.writes, vec![SliceWrite::Delete { namespace: "shop".into(), name: "node-a-7-9".into() }]);
}

#[test]
fn wrong_inputs_are_refused_with_what_is_wrong() {
    assert_eq!(Batcher::new(NODE, 0), Err(BatchError::ZeroSliceSize));
    assert!(matches!(Batcher::new("Node_A", 100), Err(BatchError::NodeName { .. })), "not a DNS-1123 subdomain");
    assert!(matches!(Batcher::new("a".repeat(230), 100), Err(BatchError::NodeName { .. })), "too long to prefix slice names");

    let batcher = batcher(100);
    let duplicate = vec![pod("shop", "web", 7, 1), pod("shop", "web", 8, 2)];
    let err = batcher.plan(&[], &duplicate).unwrap_err();
    assert_eq!(err.to_string(), "endpoint shop/web is desired twice");

    let (_, slices) = step(&batcher, &[], &pods("shop", "web", 7, 1));
    let other = Batcher::new("node-b", 100).unwrap();
    let err = other.plan(&slices, &[]).unwrap_err();
    assert_eq!(err.to_string(), "endpoint slice shop/node-a-7-0 is written by node \"node-a\", not by \"node-b\"");

    let twice = vec![slices[0].clone(), slices[0].clone()];
    assert!(matches!(batcher.plan(&twice, &[]), Err(BatchError::DuplicateSlice { .. })));
}

#[test]
fn slices_serialize_in_camel_case_with_addresses_as_text() {
    let (_, slices) = step(&batcher(100), &[], &[pod("shop", "web", 7, 1)]);
    let json = serde_json::to_value(&slices[0]).unwrap();
    let expected = serde_json::json!({
        "name": "node-a-7-0",
        "namespace": "shop",
        "identity": 7,
        "node": "node-a",
        "endpoints": [{"name": "web", "addresses": ["10.0.0.1", "fd00::1"]}],
    });
    assert_eq!(json, expected);
    let back: SluiceEndpointSlice = serde_json::from_value(json).unwrap();
    assert_eq!(back, slices[0]);
}

/// xorshift64*: deterministic, so a failure replays from its seed.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n
    }
}

#[test]
fn random_churn_keeps_every_invariant_and_touches_only_changed_slices() {
    for seed in [1u64, 0xdead_beef, 42_424_242] {
        let mut rng = Rng(seed);
        let batcher = batcher(1 + rng.below(12) as usize);
        let namespaces = ["shop", "bank", "blog"];
        let mut pods: BTreeMap<(String, String), DesiredEndpoint> = BTreeMap::new();
        let mut slices: Vec<SluiceEndpointSlice> = Vec::new();
        let mut next = 0u32;
        for round in 0..300 {
            // A debounced batch of 1 to 8 changes.
            let mut changed: BTreeSet<(String, String)> = BTreeSet::new();
            for _ in 0..1 + rng.below(8) {
                let keys: Vec<(String, String)> = pods.keys().cloned().collect();
                let pick = |rng: &mut Rng| keys.get(rng.below(keys.len().max(1) as u64) as usize).cloned();
                match rng.below(10) {
                    0..=3 => {
                        next += 1;
                        let namespace = namespaces[rng.below(3) as usize];
                        let added = pod(namespace, &format!("p{next}"), 1 + rng.below(4) as u32, next);
                        changed.insert((added.namespace.clone(), added.name.clone()));
                        pods.insert((added.namespace.clone(), added.name.clone()), added);
                    }
                    4..=6 => {
                        if let Some(key) = pick(&mut rng) {
                            pods.remove(&key);
                            changed.insert(key);
                        }
                    }
                    7..=8 => {
                        if let Some(key) = pick(&mut rng) {
                            let identity = 1 + rng.below(4) as u32;
                            if let Some(p) = pods.get_mut(&key) {
                                p.identity = identity;
                            }
                            changed.insert(key);
                        }
                    }
                    _ => {
                        if let Some(key) = pick(&mut rng) {
                            let n = rng.below(1 << 20) as u32;
                            if let Some(p) = pods.get_mut(&key) {
                                p.addresses = addresses(n);
                            }
                            changed.insert(key);
                        }
                    }
                }
            }
            let desired: Vec<DesiredEndpoint> = pods.values().cloned().collect();
            let (plan, after) = step(&batcher, &slices, &desired);

            // Stability: unchanged endpoints stay in their slice.
            let (before, now) = (homes(&slices), homes(&after));
            for (key, home) in &before {
                if !changed.contains(key) {
                    assert_eq!(now.get(key), Some(home), "seed {seed} round {round}: unchanged {key:?} moved");
                }
            }
            // Minimality: every slice written holds or held a changed endpoint.
            let old: BTreeMap<(&str, &str), &SluiceEndpointSlice> =
                slices.iter().map(|s| ((s.namespace.as_str(), s.name.as_str()), s)).collect();
            for write in &plan.writes {
                let (namespace, name) = write.key();
                let mut touched = old.get(&(namespace, name)).map(|s| s.endpoints.clone()).unwrap_or_default();
                if let SliceWrite::Create(s) | SliceWrite::Update(s) = write {
                    touched.extend(s.endpoints.iter().cloned());
                }
                assert!(
                    touched.iter().any(|e| changed.contains(&(namespace.to_owned(), e.name.clone()))),
                    "seed {seed} round {round}: slice {namespace}/{name} written without a changed endpoint"
                );
            }
            slices = after;
        }
    }
}
