//! Faults of the agent's state: a damaged database, a state directory that is read-only or
//! full (small tmpfs mounts on test directories, unmounted afterwards), and a pin directory on
//! which no bpffs can be mounted. The agent must fail with an error that names the path and
//! says what to do, leave nothing half-made (no files, links or pins), and never start afresh
//! over a database it cannot read: the file is kept as it was.

#![allow(clippy::expect_used, clippy::unwrap_used)] // a test fails loudly on what it did not expect

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::runtime::{alive, error_code, stop, tree, veths, NodeCni, Sandbox};
use common::{privileged, sluice_bin, text, TestLab, TWO_PODS};
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sys::signal::Signal;
use sluice_lab::state::{LabState, NodeState};

fn node0(lab: &TestLab) -> NodeState {
    let state = LabState::load(&lab.lab_dir()).expect("lab.json readable").expect("lab.json written by up");
    state.node("node0").expect("node0 in lab.json").clone()
}

/// A tmpfs mounted on a test directory; unmounted when dropped (lazily, should a process still
/// hold a file there).
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path, options: &str, flags: MsFlags) -> Self {
        std::fs::create_dir_all(at).expect("mount point");
        mount(Some("tmpfs"), at, Some("tmpfs"), flags, Some(options)).unwrap_or_else(|e| panic!("mounting tmpfs on {}: {e}", at.display()));
        Self(at.to_path_buf())
    }

    /// Makes the mount read-only (no file on it may be open for writing).
    fn remount_read_only(&self, options: &str) {
        mount(None::<&str>, &self.0, None::<&str>, MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY, Some(options))
            .unwrap_or_else(|e| panic!("remounting {} read-only: {e}", self.0.display()));
    }

    /// Writes a file until the file system has no space left.
    fn fill(&self) -> PathBuf {
        let filler = self.0.join("filler");
        let mut f = std::fs::File::create(&filler).expect("filler file");
        let block = vec![0x5a_u8; 64 * 1024];
        while f.write_all(&block).is_ok() {}
        let small = vec![0x5a_u8; 512];
        while f.write_all(&small).is_ok() {}
        let _ = f.sync_all();
        filler
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        if let Err(e) = umount2(&self.0, MntFlags::MNT_DETACH) {
            eprintln!("unmounting {}: {e}", self.0.display());
        }
    }
}

/// The node's agent configuration with `stateDir`, `bpffs` and `socket` replaced.
fn config_with(node: &NodeState, dir: &Path, state_dir: &Path, bpffs: &Path, socket: &Path) -> PathBuf {
    let yaml = std::fs::read_to_string(node.dir.join("agent.yaml")).expect("the node's agent.yaml");
    let replaced: Vec<String> = yaml
        .lines()
        .map(|l| match l.split_once(':').map(|(k, _)| k) {
            Some("stateDir") => format!("stateDir: {}", state_dir.display()),
            Some("bpffs") => format!("bpffs: {}", bpffs.display()),
            Some("socket") => format!("socket: {}", socket.display()),
            Some("metricsAddress") => String::new(),
            _ => l.to_owned(),
        })
        .collect();
    let path = dir.join("agent.yaml");
    std::fs::write(&path, replaced.join("\n")).expect("write agent.yaml");
    path
}

/// Runs `sluice agent` in the node's namespace until it exits (it must, within 60 s); with
/// `without_sys_admin` the agent runs without CAP_SYS_ADMIN, so it cannot mount a bpffs.
fn run_agent(node: &NodeState, config: &Path, without_sys_admin: bool) -> Output {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", &node.netns]);
    if without_sys_admin {
        cmd.args(["setpriv", "--inh-caps", "-sys_admin", "--bounding-set", "-sys_admin", "--"]);
    }
    cmd.arg(sluice_bin()).arg("agent").arg("--config").arg(config).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let child = cmd.spawn().expect("start sluice agent");
    let pid = child.id() as i32;
    let deadline = Instant::now() + Duration::from_secs(60);
    let waiter = std::thread::spawn(move || child.wait_with_output().expect("wait for the agent"));
    while !waiter.is_finished() {
        if Instant::now() > deadline {
            stop(pid, Signal::SIGKILL);
            panic!("the agent did not exit within 60 s on a fault it must refuse");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    waiter.join().expect("the waiting thread")
}

/// The agent refused to start: it failed, and its error names each of `words`.
fn assert_refused(out: &Output, words: &[&str], case: &str) {
    assert!(!out.status.success(), "{case}: the agent must not start: {}", text(out));
    let err = String::from_utf8_lossy(&out.stderr);
    eprintln!("{case}: {}", err.lines().last().unwrap_or_default());
    for w in words {
        assert!(err.contains(w), "{case}: the error must mention {w:?}: {err}");
    }
}

fn pid_of_agent(lab: &TestLab) -> i32 {
    node0(lab).agent_pid.expect("the lab records its agent's pid")
}

fn stop_lab_agent(lab: &TestLab) {
    stop(node0(lab).agent_pid.expect("the lab records its agent's pid"), Signal::SIGTERM);
}

/// Each damage to the database stops the agent with an error naming the file and what to do;
/// the file is kept byte for byte, nothing else is made, and the pods keep forwarding on the
/// pinned datapath. With the good file back the agent starts with every endpoint.
#[test]
fn a_damaged_database_stops_the_agent_and_is_kept() {
    if !privileged("a_damaged_database_stops_the_agent_and_is_kept") {
        return;
    }
    let lab = TestLab::up("dmg", &[]);
    lab.apply_ok(TWO_PODS);
    let (server_v4, _) = lab.pod_ips("demo", "server");
    let node = node0(&lab);
    let state: serde_json::Value = serde_json::from_slice(&std::fs::read(lab.lab_dir().join("lab.json")).unwrap()).unwrap();
    let client_id = state["pods"]["demo/client"]["containerId"].as_str().expect("client's container ID").to_owned();
    stop_lab_agent(&lab);

    let state_dir = node.dir.join("state");
    let db = state_dir.join("agent.db");
    let good = std::fs::read(&db).expect("the agent's database");
    // The database, and what the layer-7 proxy (a process of its own) keeps beside it.
    let made = tree(&state_dir);
    assert!(made.contains(&"agent.db".to_owned()), "{made:?}");
    let pins = tree(&node.bpffs);
    assert!(pins.iter().any(|p| p.starts_with("links/")), "the stopped agent left its link pins: {pins:?}");
    // Every copy of the client's record changed by one character: bit rot in its pages.
    let mut record = good.clone();
    let id = client_id.as_bytes();
    let copies: Vec<usize> = record.windows(id.len()).enumerate().filter(|(_, w)| *w == id).map(|(i, _)| i).collect();
    assert!(!copies.is_empty(), "the client's record is in the database");
    for at in copies {
        record[at] = if record[at] == b'0' { b'1' } else { b'0' };
    }
    let mut header = good.clone();
    header[..16].fill(0);
    let cases = [
        ("a record's bytes changed", record),
        ("truncated to half", good[..good.len() / 2].to_vec()),
        ("truncated to nothing", Vec::new()),
        ("header overwritten", header),
    ];
    for (case, bytes) in cases {
        std::fs::write(&db, &bytes).expect("write the damaged database");
        let out = run_agent(&node, &node.dir.join("agent.yaml"), false);
        assert_refused(&out, &[db.to_str().unwrap(), "damaged", "backup"], case);
        assert_eq!(std::fs::read(&db).expect("the database"), bytes, "{case}: the file is kept as it was");
        assert_eq!(tree(&state_dir), made, "{case}: nothing else is made in the state directory");
        assert_eq!(tree(&node.bpffs), pins, "{case}: no pin is made or removed");
        assert!(!node.socket.exists(), "{case}: no API socket is made");
        let ping = lab.exec("demo", "client", &["ping", "-c", "1", "-W", "2", &server_v4]);
        assert!(ping.status.success(), "{case}: the pods keep forwarding on the pinned datapath: {}", text(&ping));
    }

    std::fs::write(&db, &good).expect("restore the database");
    let out = lab.run(&["restart-agent"]);
    assert!(out.status.success(), "with its database restored the agent starts: {}", text(&out));
    let endpoints = lab.json(&["endpoint", "list", "-o", "json"]);
    assert_eq!(endpoints.as_array().map(Vec::len), Some(2), "and finds both pods: {endpoints}");
    let ping = lab.exec("demo", "client", &["ping", "-c", "1", "-W", "2", &server_v4]);
    assert!(ping.status.success(), "the pods still reach each other: {}", text(&ping));
}

/// A state directory that is read-only (with or without a database) or full stops the start
/// with an error naming the path; nothing is made: no database, no staging file, no pin
/// directory, no socket; an existing database is kept as it was.
#[test]
fn an_unwritable_or_full_state_directory_stops_the_start_and_leaves_nothing() {
    if !privileged("an_unwritable_or_full_state_directory_stops_the_start_and_leaves_nothing") {
        return;
    }
    let lab = TestLab::up("sdir", &[]);
    let node = node0(&lab);
    let dir = tempfile::tempdir().expect("test directory");
    let (pins, socket) = (dir.path().join("pins"), dir.path().join("agent.sock"));

    let ro = dir.path().join("ro");
    let _ro = Tmpfs::mount(&ro, "size=4m", MsFlags::MS_RDONLY);
    let out = run_agent(&node, &config_with(&node, dir.path(), &ro, &pins, &socket), false);
    assert_refused(&out, &[ro.join("agent.db").to_str().unwrap(), "Read-only file system", "writable"], "read-only, no database");
    assert_eq!(tree(&ro), Vec::<String>::new(), "read-only: nothing is made");

    let rodb = dir.path().join("rodb");
    let mount = Tmpfs::mount(&rodb, "size=16m", MsFlags::empty());
    drop(sluice_agent::db::AgentDb::open(&rodb).expect("a database on the tmpfs"));
    let bytes = std::fs::read(rodb.join("agent.db")).expect("the database");
    mount.remount_read_only("size=16m");
    let out = run_agent(&node, &config_with(&node, dir.path(), &rodb, &pins, &socket), false);
    assert_refused(&out, &[rodb.join("agent.db").to_str().unwrap(), "Read-only file system", "writable"], "read-only database");
    assert_eq!(std::fs::read(rodb.join("agent.db")).expect("the database"), bytes, "read-only database: kept as it was");

    let full = dir.path().join("full");
    let full_mount = Tmpfs::mount(&full, "size=2m", MsFlags::empty());
    full_mount.fill();
    let out = run_agent(&node, &config_with(&node, dir.path(), &full, &pins, &socket), false);
    assert_refused(&out, &[full.join("agent.db").to_str().unwrap(), "No space left on device", "free space"], "full");
    assert_eq!(tree(&full), vec!["filler".to_owned()], "full: no database or staging file is left");

    assert!(!pins.exists(), "no pin directory was made by any refused start");
    assert!(!socket.exists(), "no socket was made by any refused start");
}

/// With the state directory full, a CNI ADD that needs to write fails with "try again later"
/// and an error naming the database; nothing of it is left; once space is freed the runtime's
/// retry succeeds on the same agent (the database is opened again after the failed write).
#[test]
fn a_full_state_directory_fails_adds_until_space_is_freed() {
    if !privileged("a_full_state_directory_fails_adds_until_space_is_freed") {
        return;
    }
    let lab = TestLab::up("full", &[]);
    let node = node0(&lab);
    let cni = NodeCni::of(&node);
    let state_dir = node.dir.join("state");
    stop_lab_agent(&lab);
    // The agent starts anew on a small tmpfs over its state directory (the lab has no pod yet).
    let tmpfs = Tmpfs::mount(&state_dir, "size=24m", MsFlags::empty());
    let out = lab.run(&["restart-agent"]);
    assert!(out.status.success(), "the agent starts on the tmpfs: {}", text(&out));
    let sandboxes: Vec<Sandbox> = (0..12).map(|i| Sandbox::create(&lab.name, i)).collect();
    let out = cni.call("ADD", &sandboxes[0]);
    assert!(out.status.success(), "ADD with space left: {}", text(&out));

    let pid_before = pid_of_agent(&lab);
    let filler = tmpfs.fill();
    // A write that reuses pages the database file already has needs no space; one that grows
    // it fails. Within a few ADDs one must.
    let mut added = vec![&sandboxes[0]];
    let mut refused = None;
    for s in &sandboxes[1..] {
        let out = cni.call("ADD", s);
        if out.status.success() {
            added.push(s);
            continue;
        }
        refused = Some((s, out));
        break;
    }
    let (cut, out) = refused.expect("an ADD fails once the state directory is full");
    eprintln!("{} ADD(s) fitted in the database's own pages; then: {}", added.len() - 1, String::from_utf8_lossy(&out.stdout));
    assert_eq!(error_code(&out), Some(11), "the runtime is told to try again later: {}", text(&out));
    let msg = String::from_utf8_lossy(&out.stdout);
    assert!(msg.contains(state_dir.join("agent.db").to_str().unwrap()), "the error names the database: {msg}");
    assert!(msg.contains("No space left on device"), "and says why: {msg}");
    assert!(!veths(&node.netns).contains(&cut.host_ifname()), "the failed ADD left no interface on the node");
    assert_eq!(cut.interfaces(), Vec::new(), "nor in its sandbox");

    std::fs::remove_file(&filler).expect("free the space");
    let endpoints = lab.json(&["endpoint", "list", "-o", "json"]);
    assert_eq!(endpoints.as_array().map(Vec::len), Some(added.len()), "the failed ADD left no endpoint: {endpoints}");
    // The runtime's retry: DEL of the failed attachment, then ADD.
    let deadline = Instant::now() + Duration::from_secs(60);
    let (deleted, failures) = cni.del_retrying(cut, deadline);
    assert!(deleted.is_ok(), "once space is freed the runtime's DEL succeeds: {deleted:?} {failures:?}");
    let (result, failures) = cni.add_retrying(cut, deadline);
    assert!(result.is_ok(), "and its ADD, without a restart: {result:?} {failures:?}");
    assert_eq!(pid_of_agent(&lab), pid_before, "the same agent served it");
    added.push(cut);
    let endpoints = lab.json(&["endpoint", "list", "-o", "json"]);
    assert_eq!(endpoints.as_array().map(Vec::len), Some(added.len()), "every added pod is recorded: {endpoints}");
    let first = endpoints.as_array().unwrap().iter().find(|e| e["containerId"] == sandboxes[0].container_id.as_str()).expect("first pod");
    let ping = cut.ping(first["ipv4"].as_str().expect("ipv4"));
    assert!(ping.status.success(), "the retried pod reaches the first one: {}", text(&ping));

    let pid = pid_of_agent(&lab);
    stop(pid, Signal::SIGTERM);
    assert!(!alive(pid), "the agent is stopped before its state directory is unmounted");
    let db = std::sync::Arc::new(sluice_agent::db::AgentDb::open(&state_dir).expect("the database"));
    let ipam = sluice_agent::ipam::Ipam::new(db, Some("198.19.0.0/24".parse().unwrap()), None).expect("IPAM view");
    let held: Vec<String> = ipam.list().expect("IPAM list").into_iter().map(|(o, _)| o.container_id).collect();
    let mut want: Vec<String> = added.iter().map(|s| s.container_id.clone()).collect();
    want.sort();
    assert_eq!(held, want, "the IPAM holds the added pods' addresses and nothing of the failed attempt");
}

/// A pin directory on which no bpffs can be mounted (here: the agent lacks CAP_SYS_ADMIN)
/// stops the start with an error naming the directory and the way out; the directories and the
/// database the start made are removed again, an existing database is kept as it was.
#[test]
fn a_missing_bpffs_stops_the_start_before_anything_is_made() {
    if !privileged("a_missing_bpffs_stops_the_start_before_anything_is_made") {
        return;
    }
    let lab = TestLab::up("nobpf", &[]);
    let node = node0(&lab);
    let dir = tempfile::tempdir().expect("test directory");
    let (state_dir, pins, socket) = (dir.path().join("var/state"), dir.path().join("pins/node"), dir.path().join("agent.sock"));
    let config = config_with(&node, dir.path(), &state_dir, &pins, &socket);

    let out = run_agent(&node, &config, true);
    assert_refused(&out, &[pins.to_str().unwrap(), "mount -t bpf", "CAP_SYS_ADMIN"], "fresh node");
    assert!(!dir.path().join("pins").exists(), "fresh node: the pin directories the start made are removed");
    assert!(!dir.path().join("var").exists(), "fresh node: the database and state directory the start made are removed");
    assert!(!socket.exists(), "fresh node: no socket");
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    assert!(!mounts.contains(dir.path().to_str().unwrap()), "nothing is mounted under the test directory");

    drop(sluice_agent::db::AgentDb::open(&state_dir).expect("a database of an earlier run"));
    let bytes = std::fs::read(state_dir.join("agent.db")).expect("the database");
    let out = run_agent(&node, &config, true);
    assert_refused(&out, &[pins.to_str().unwrap(), "mount -t bpf"], "existing database");
    assert_eq!(std::fs::read(state_dir.join("agent.db")).expect("the database"), bytes, "existing database: kept as it was");
    assert_eq!(tree(&state_dir), vec!["agent.db".to_owned()], "existing database: nothing else in the state directory");
    assert!(!dir.path().join("pins").exists(), "existing database: no pin directory is left");
}
