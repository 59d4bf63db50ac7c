//! Faults of the agent's process, with the test as the container runtime (real `sluice-cni`
//! calls, retried as a runtime retries): `kill -9` in the middle of 200 CNI calls, a DEL while
//! the agent is down, and CNI GC. Afterwards nothing may be leaked or given twice: addresses,
//! identity holds, veths, routes, map entries, link pins and endpoint records match the pods
//! the runtime holds, exactly, and every one of those pods works.

#![allow(clippy::expect_used, clippy::unwrap_used)] // a test fails loudly on what it did not expect

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::runtime::{result_addresses, routes, stop, tree, veths, Failure, NodeCni, Sandbox};
use common::{privileged, text, TestLab};
use nix::sys::signal::Signal;
use serde_json::Value;
use sluice_lab::state::{LabState, NodeState};

/// The node's underlay address: what "reaches the node" pings.
const NODE_V4: &str = "198.18.0.10";

fn node0(lab: &TestLab) -> NodeState {
    let state = LabState::load(&lab.lab_dir()).expect("lab.json readable").expect("lab.json written by up");
    state.node("node0").expect("node0 in lab.json").clone()
}

/// The agent's endpoints by container ID.
fn endpoints(lab: &TestLab) -> BTreeMap<String, Value> {
    let list = lab.json(&["endpoint", "list", "-o", "json"]);
    list.as_array()
        .expect("endpoint list")
        .iter()
        .map(|e| (e["containerId"].as_str().expect("containerId").to_owned(), e.clone()))
        .collect()
}

fn endpoint_addresses(e: &Value) -> Vec<String> {
    let mut a: Vec<String> = ["ipv4", "ipv6"].iter().filter_map(|f| e[f].as_str().map(str::to_owned)).collect();
    a.sort();
    a
}

/// Entries of a datapath map as `sluice status` reports them.
fn map_entries(lab: &TestLab, map: &str) -> u64 {
    let status = lab.json(&["status", "-o", "json"]);
    let found = status["maps"].as_array().expect("maps").iter().find(|m| m["map"] == map).map(|m| m["entries"].as_u64());
    found.flatten().unwrap_or_else(|| panic!("map {map} in status: {}", status["maps"]))
}

/// Everything the node holds for pods agrees with `live` (the sandboxes the runtime holds),
/// exactly: endpoint records, veths, routes, map entries, link pins, the sandboxes' own
/// interfaces; `gone` sandboxes have no interface left. Returns the endpoints.
fn assert_node_holds_exactly(lab: &TestLab, node: &NodeState, live: &[&Sandbox], gone: &[&Sandbox]) -> BTreeMap<String, Value> {
    let eps = endpoints(lab);
    let want: BTreeSet<&str> = live.iter().map(|s| s.container_id.as_str()).collect();
    let have: BTreeSet<&str> = eps.keys().map(String::as_str).collect();
    assert_eq!(have, want, "the agent records exactly the pods the runtime holds");

    let mut seen = BTreeSet::new();
    for s in live {
        let e = &eps[&s.container_id];
        assert_eq!(e["netns"], s.netns_path.to_str().expect("utf-8"), "endpoint {} is in its sandbox's namespace", s.container_id);
        assert_eq!(e["hostIfname"], s.host_ifname(), "endpoint {} has the interface named after its attachment", s.container_id);
        let addrs = endpoint_addresses(e);
        assert_eq!(addrs.len(), 2, "endpoint {} has an IPv4 and an IPv6 address: {e}", s.container_id);
        for a in &addrs {
            assert!(seen.insert(a.clone()), "address {a} is held twice (again by {})", s.container_id);
        }
        let ifaces = s.interfaces();
        assert_eq!(ifaces, vec![("eth0".to_owned(), addrs.clone())], "sandbox {} has eth0 with its endpoint's addresses", s.netns);
    }
    for s in gone {
        assert_eq!(s.interfaces(), Vec::new(), "sandbox {} has no interface left after its DEL", s.netns);
    }

    let host_ifnames: BTreeSet<String> = eps.values().map(|e| e["hostIfname"].as_str().expect("hostIfname").to_owned()).collect();
    let lxc: BTreeSet<String> = veths(&node.netns).into_iter().filter(|n| n.starts_with("lxc")).collect();
    assert_eq!(lxc, host_ifnames, "the node has a veth for each endpoint and no other");
    // Every interface has the kernel's fe80::/64; the agent's routes are the pods' addresses.
    let pod_routes: BTreeSet<String> =
        routes(&node.netns).into_iter().filter(|(dst, dev)| dev.starts_with("lxc") && dst != "fe80::/64").map(|(dst, _)| dst).collect();
    assert_eq!(pod_routes, seen, "the node routes each endpoint address to a pod, and nothing else");

    assert_eq!(map_entries(lab, "endpoints"), seen.len() as u64, "the endpoints map holds each address once, and nothing else");
    assert_eq!(
        map_entries(lab, "endpoint_ifaces"),
        eps.len() as u64,
        "the endpoint_ifaces map holds each pod's interface, and nothing else"
    );
    let pins: BTreeSet<String> = tree(&node.bpffs.join("links"))
        .into_iter()
        .filter_map(|p| p.split_once('@').map(|(_, ifname)| ifname.to_owned()))
        .filter(|i| i.starts_with("lxc"))
        .collect();
    assert_eq!(pins, host_ifnames, "link pins exist for the endpoints' interfaces only");
    eps
}

/// The lines of the node's agent log (the running agent's life) that say it released what a
/// call cut short had left.
fn cleanup_lines(node: &NodeState) -> Vec<String> {
    let log = std::fs::read_to_string(node.dir.join("agent.log")).unwrap_or_default();
    let words = ["cut short", "no endpoint holds", "releasing the endpoint"];
    log.lines().filter(|l| words.iter().any(|w| l.contains(w))).map(without_colours).collect()
}

/// A log line without its terminal colour sequences.
fn without_colours(line: &str) -> String {
    let mut out = String::new();
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            chars.by_ref().find(|c| *c == 'm');
        } else {
            out.push(c);
        }
    }
    out
}

/// Stops the agent and reads its database: the attachments the IPAM holds (with their
/// addresses) and the identity references.
fn stop_and_read_database(lab: &TestLab, node: &NodeState) -> (BTreeMap<String, Vec<String>>, u64) {
    let pid = node0(lab).agent_pid.expect("the lab records its agent's pid");
    stop(pid, Signal::SIGTERM);
    let db = Arc::new(sluice_agent::db::AgentDb::open(&node.dir.join("state")).expect("the stopped agent's database opens"));
    let ipam = sluice_agent::ipam::Ipam::new(db.clone(), Some("198.19.0.0/24".parse().unwrap()), Some("2001:2::/64".parse().unwrap()))
        .expect("IPAM view");
    let held = ipam
        .list()
        .expect("IPAM list")
        .into_iter()
        .map(|(owner, a)| {
            let mut addrs: Vec<String> = [a.ipv4.map(|v| v.to_string()), a.ipv6.map(|v| v.to_string())].into_iter().flatten().collect();
            addrs.sort();
            (owner.container_id, addrs)
        })
        .collect();
    let references =
        sluice_agent::identity::Identities::new(db).expect("identity view").list().expect("identities").iter().map(|i| i.references).sum();
    (held, references)
}

fn assert_database_matches(held: &BTreeMap<String, Vec<String>>, references: u64, eps: &BTreeMap<String, Value>) {
    let want: BTreeMap<String, Vec<String>> = eps.iter().map(|(c, e)| (c.clone(), endpoint_addresses(e))).collect();
    assert_eq!(held, &want, "the IPAM holds exactly the endpoints' addresses: nothing leaked, nothing given twice");
    assert_eq!(references, eps.len() as u64, "one identity reference per endpoint, none left by a cut-short call");
}

/// Each sandbox reaches the next one over IPv4 and IPv6, and the node.
fn assert_pods_work(live: &[&Sandbox], eps: &BTreeMap<String, Value>) {
    for (i, s) in live.iter().enumerate() {
        let next = &eps[&live[(i + 1) % live.len()].container_id];
        for target in [next["ipv4"].as_str().expect("ipv4"), next["ipv6"].as_str().expect("ipv6"), NODE_V4] {
            let out = s.ping(target);
            assert!(out.status.success(), "sandbox {} reaches {target}: {}", s.netns, text(&out));
        }
    }
}

/// `kill -9` of the agent while 100 ADDs and 100 DELs are under way; the agent is started
/// again and the runtime retries. Every pod the runtime holds works, and nothing else is held.
#[test]
fn kill_9_amid_200_cni_calls_leaks_nothing() {
    if !privileged("kill_9_amid_200_cni_calls_leaks_nothing") {
        return;
    }
    let lab = TestLab::up("k9", &[]);
    let node = node0(&lab);
    let cni = NodeCni::of(&node);
    let sandboxes: Arc<Vec<Sandbox>> = Arc::new((0..200).map(|i| Sandbox::create(&lab.name, i)).collect());
    let (old, new) = (0..100, 100..200);

    // The pods the DELs will remove, added while the agent is healthy.
    let first: Vec<usize> = old.clone().collect();
    std::thread::scope(|scope| {
        for chunk in first.chunks(25) {
            let (cni, sandboxes) = (cni.clone(), sandboxes.clone());
            scope.spawn(move || {
                for &i in chunk {
                    let out = cni.call("ADD", &sandboxes[i]);
                    assert!(out.status.success(), "ADD of sandbox {i} with a healthy agent: {}", text(&out));
                }
            });
        }
    });

    // 200 calls at once; the agent is killed while they are served.
    let done = Arc::new(AtomicUsize::new(0));
    let deadline = Instant::now() + Duration::from_secs(180);
    let mut calls = Vec::new();
    for i in old.clone().chain(new.clone()) {
        let (cni, sandboxes, done) = (cni.clone(), sandboxes.clone(), done.clone());
        let adding = new.contains(&i);
        calls.push(std::thread::spawn(move || {
            let (result, failures) = if adding {
                let (r, f) = cni.add_retrying(&sandboxes[i], deadline);
                (r.map(Some), f)
            } else {
                let (r, f) = cni.del_retrying(&sandboxes[i], deadline);
                (r.map(|()| None), f)
            };
            done.fetch_add(1, Ordering::SeqCst);
            (i, result, failures)
        }));
    }
    // Killed five times as the calls progress, started again after half a second each time.
    let mut kills = Vec::new();
    let mut found = Vec::new();
    for threshold in [30, 60, 90, 120, 150] {
        while done.load(Ordering::SeqCst) < threshold {
            assert!(Instant::now() < deadline, "the agent served {threshold} of the 200 calls in time");
            std::thread::sleep(Duration::from_millis(5));
        }
        found.extend(cleanup_lines(&node));
        stop(node0(&lab).agent_pid.expect("the lab records its agent's pid"), Signal::SIGKILL);
        kills.push(done.load(Ordering::SeqCst));
        std::thread::sleep(Duration::from_millis(500));
        let out = lab.run(&["restart-agent"]);
        assert!(out.status.success(), "the agent starts again after kill -9: {}", text(&out));
    }

    let mut failures: Vec<Failure> = Vec::new();
    let mut results: BTreeMap<usize, Value> = BTreeMap::new();
    for call in calls {
        let (i, result, f) = call.join().expect("a runtime thread");
        failures.extend(f);
        match result {
            Ok(Some(added)) => {
                results.insert(i, added);
            }
            Ok(None) => {}
            Err(e) => panic!("the runtime's retries of sandbox {i} converge: {e}"),
        }
    }
    eprintln!("killed with {kills:?} of 200 calls completed; {} calls failed and were retried", failures.len());
    assert!(kills.iter().all(|&k| k < 200), "calls were under way at every kill: {kills:?}");
    assert!(!failures.is_empty(), "the kill made calls fail");
    for f in &failures {
        assert_eq!(f.code, Some(11), "a call that failed while the agent was away says try again later: {f:?}");
    }

    let live: Vec<&Sandbox> = new.clone().map(|i| &sandboxes[i]).collect();
    let gone: Vec<&Sandbox> = old.clone().map(|i| &sandboxes[i]).collect();
    let eps = assert_node_holds_exactly(&lab, &node, &live, &gone);
    for (i, added) in &results {
        let e = &eps[&sandboxes[*i].container_id];
        assert_eq!(result_addresses(added), endpoint_addresses(e), "the runtime was told the addresses sandbox {i} has");
    }
    assert_pods_work(&live, &eps);
    // What the restarted agents found the killed ones had left (for the record of the run).
    found.extend(cleanup_lines(&node));
    eprintln!("{} things left by killed calls were released:", found.len());
    for line in &found {
        eprintln!("  {line}");
    }
    let (held, references) = stop_and_read_database(&lab, &node);
    assert_database_matches(&held, references, &eps);
}

/// A DEL that arrives while the agent is down fails with "try again later" and succeeds once
/// the agent is back; CNI GC then releases exactly what the runtime does not list.
#[test]
fn del_while_the_agent_is_down_and_gc_release_exactly_the_rest() {
    if !privileged("del_while_the_agent_is_down_and_gc_release_exactly_the_rest") {
        return;
    }
    let lab = TestLab::up("dgc", &[]);
    let node = node0(&lab);
    let cni = NodeCni::of(&node);
    let sandboxes: Vec<Sandbox> = (0..6).map(|i| Sandbox::create(&lab.name, i)).collect();
    for s in &sandboxes {
        let out = cni.call("ADD", s);
        assert!(out.status.success(), "ADD of {}: {}", s.container_id, text(&out));
    }
    let before = endpoints(&lab);

    stop(node.agent_pid.expect("agent pid"), Signal::SIGTERM);
    let out = cni.call("DEL", &sandboxes[0]);
    assert!(!out.status.success(), "DEL while the agent is down fails: {}", text(&out));
    assert_eq!(common::runtime::error_code(&out), Some(11), "and says try again later: {}", text(&out));
    let peer = before[&sandboxes[1].container_id]["ipv4"].as_str().expect("ipv4").to_owned();
    let ping = sandboxes[0].ping(&peer);
    assert!(ping.status.success(), "with the agent down the pinned datapath still forwards: {}", text(&ping));

    let out = lab.run(&["restart-agent"]);
    assert!(out.status.success(), "the agent starts again: {}", text(&out));
    let out = cni.call("DEL", &sandboxes[0]);
    assert!(out.status.success(), "the runtime's retried DEL succeeds: {}", text(&out));
    let all: Vec<&Sandbox> = sandboxes.iter().collect();
    assert_node_holds_exactly(&lab, &node, &all[1..], &all[..1]);

    let interfaces_before: Vec<_> = all[1..4].iter().map(|s| s.interfaces()).collect();
    let valid: Vec<&str> = all[1..4].iter().map(|s| s.container_id.as_str()).chain(["never-added"]).collect();
    let out = cni.gc(&valid);
    assert!(out.status.success(), "GC succeeds: {}", text(&out));
    let eps = assert_node_holds_exactly(&lab, &node, &all[1..4], &[all[0], all[4], all[5]]);
    for (s, was) in all[1..4].iter().zip(&interfaces_before) {
        assert_eq!(&s.interfaces(), was, "GC left the listed sandbox {} as it was", s.container_id);
        assert_eq!(eps[&s.container_id], before[&s.container_id], "and its endpoint record");
    }
    assert_pods_work(&all[1..4], &eps);
    let (held, references) = stop_and_read_database(&lab, &node);
    assert_database_matches(&held, references, &eps);
}
