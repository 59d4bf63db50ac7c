//! Map pressure on a running lab node: its `lb_backends` table (fixed capacity) filled with
//! synthetic entries written straight into the pinned map. `sluice status` warns from 90 %
//! and not below; a Service that needs one more backend fails to program with an error naming
//! the map and its capacity, while the services already programmed keep answering; once room
//! is made the new Service is programmed.

#![allow(clippy::expect_used, clippy::unwrap_used)] // a test fails loudly on what it did not expect

mod common;

use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::time::{Duration, Instant};

use common::{privileged, sluice_bin, text, TestLab};

/// Ids far above any the agent gives out (it counts from 1).
const SYNTHETIC: u32 = 0x4000_0000;
const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
const BPF_MAP_DELETE_ELEM: libc::c_long = 3;
const BPF_OBJ_GET: libc::c_long = 7;
const BPF_NOEXIST: u64 = 1;

/// The pinned map at `path`.
fn open_pin(path: &Path) -> OwnedFd {
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
    let mut attr = [0u64; 16];
    attr[0] = c.as_ptr() as u64;
    // SAFETY: bpf(BPF_OBJ_GET) reads the buffer and the path, both alive across the call.
    let fd = unsafe { libc::syscall(libc::SYS_bpf, BPF_OBJ_GET, attr.as_ptr(), std::mem::size_of_val(&attr)) };
    assert!(fd >= 0, "BPF_OBJ_GET {}: {}", path.display(), std::io::Error::last_os_error());
    // SAFETY: a new descriptor the kernel just gave us.
    unsafe { OwnedFd::from_raw_fd(fd as i32) }
}

/// Writes backend `id` (a zero backend) unless it exists; false when the map refuses it.
fn add_backend(map: &OwnedFd, id: u32) -> Result<(), std::io::Error> {
    use std::os::fd::AsRawFd;
    let value = [0u8; 24];
    let mut attr = [0u64; 16];
    attr[0] = map.as_raw_fd() as u64;
    attr[1] = &id as *const u32 as u64;
    attr[2] = value.as_ptr() as u64;
    attr[3] = BPF_NOEXIST;
    // SAFETY: bpf(BPF_MAP_UPDATE_ELEM) reads key and value, both alive across the call.
    let r = unsafe { libc::syscall(libc::SYS_bpf, BPF_MAP_UPDATE_ELEM, attr.as_ptr(), std::mem::size_of_val(&attr)) };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

fn remove_backend(map: &OwnedFd, id: u32) {
    use std::os::fd::AsRawFd;
    let mut attr = [0u64; 16];
    attr[0] = map.as_raw_fd() as u64;
    attr[1] = &id as *const u32 as u64;
    // SAFETY: bpf(BPF_MAP_DELETE_ELEM) reads the key, alive across the call.
    let r = unsafe { libc::syscall(libc::SYS_bpf, BPF_MAP_DELETE_ELEM, attr.as_ptr(), std::mem::size_of_val(&attr)) };
    assert_eq!(r, 0, "deleting synthetic backend {id}: {}", std::io::Error::last_os_error());
}

fn status(lab: &TestLab) -> serde_json::Value {
    lab.json(&["status", "-o", "json"])
}

/// (entries, capacity) of `lb_backends` and the warnings, as status reports them.
fn backends_usage(lab: &TestLab) -> (u64, u64, Vec<String>) {
    let s = status(lab);
    let m = s["maps"].as_array().expect("maps").iter().find(|m| m["map"] == "lb_backends").cloned().expect("lb_backends in status");
    let warnings = s["warnings"].as_array().expect("warnings").iter().map(|w| w.as_str().unwrap().to_owned()).collect();
    (m["entries"].as_u64().unwrap(), m["capacity"].as_u64().unwrap(), warnings)
}

fn answers(lab: &TestLab, target: &str) -> bool {
    let bin = sluice_bin();
    let out = lab.exec("default", "client", &[bin.to_str().unwrap(), "svc-client", target]);
    String::from_utf8_lossy(&out.stdout).contains("\"reply\":\"web-")
}

fn until(what: &str, within: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !f() {
        assert!(Instant::now() < deadline, "{what}: not within {within:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn pod(name: &str, app: &str) -> String {
    let bin = sluice_bin();
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, labels: {{app: {app}}}}}\nspec:\n  nodeName: node0\n  \
         containers: [{{name: s, command: [{bin}, svc-server, --name, {name}], ports: [{{containerPort: 8080}}]}}]\n---\n\
         apiVersion: v1\nkind: Service\nmetadata: {{name: {app}}}\nspec:\n  selector: {{app: {app}}}\n  \
         ports: [{{port: 80, targetPort: 8080}}]\n",
        bin = bin.display()
    )
}

fn cluster_ip(lab: &TestLab, name: &str) -> String {
    let svc = lab.json(&["get", "services", name, "-o", "json"]);
    let svc = if svc["items"].is_array() { svc["items"][0].clone() } else { svc };
    svc["spec"]["clusterIP"].as_str().expect("clusterIP").to_owned()
}

#[test]
fn a_full_backend_table_is_warned_before_refused_and_named_when_it_refuses() {
    if !privileged(module_path!()) {
        return;
    }
    let lab = TestLab::up("mp", &["--nodes", "1"]);
    lab.apply_ok(&format!(
        "{}---\napiVersion: v1\nkind: Pod\nmetadata: {{name: client}}\nspec:\n  nodeName: node0\n  containers: [{{name: c, command: [sleep, infinity]}}]\n",
        pod("web-1", "web")
    ));
    let web = format!("{}:80", cluster_ip(&lab, "web"));
    until("the web service answers", Duration::from_secs(20), || answers(&lab, &web));

    let map = open_pin(&lab.lab_dir().join("nodes/node0/bpf/lb_backends"));
    let (programmed, capacity, warnings) = backends_usage(&lab);
    assert_eq!(capacity, 65536, "lb_backends holds SLUICE_MAX_BACKENDS");
    assert!(programmed >= 1, "the web backend is programmed");
    assert!(!warnings.iter().any(|w| w.contains("lb_backends")), "no warning when nearly empty: {warnings:?}");

    // 89 %: no warning yet. 90 %: warned, before the map refuses anything.
    let mut next = SYNTHETIC;
    let fill_to = |n: u64, next: &mut u32| {
        let (now, _, _) = backends_usage(&lab);
        for _ in now..n {
            add_backend(&map, *next).expect("room below capacity");
            *next += 1;
        }
    };
    fill_to(capacity * 89 / 100, &mut next);
    let (n, _, warnings) = backends_usage(&lab);
    assert!(!warnings.iter().any(|w| w.contains("lb_backends")), "no warning at {n} of {capacity}: {warnings:?}");
    fill_to(capacity * 90 / 100 + 1, &mut next);
    let (n, _, warnings) = backends_usage(&lab);
    assert!(
        warnings.iter().any(|w| w.starts_with("map lb_backends is nearly full") && w.contains(&format!("{n} of {capacity}"))),
        "warned at {n} of {capacity}: {warnings:?}"
    );
    let shown = lab.run(&["status"]);
    assert!(String::from_utf8_lossy(&shown.stdout).contains("WARNING: map lb_backends is nearly full"), "{}", text(&shown));

    // Full, then a Service that needs one more backend.
    while add_backend(&map, next).is_ok() {
        next += 1;
    }
    let (n, _, warnings) = backends_usage(&lab);
    assert_eq!(n, capacity, "filled to capacity");
    assert!(warnings.iter().any(|w| w.starts_with("map lb_backends is full")), "{warnings:?}");
    lab.apply_ok(&pod("web-2", "other"));
    let expected = format!("map lb_backends is full: all {capacity} entries are in use");
    // The round that failed says so in status and in the agent's log. The next round, which
    // finds nothing changed, clears lastError although the Service is still not programmed
    // (the error is seen for about a second): the log is what keeps it.
    let log = lab.lab_dir().join("nodes/node0/agent.log");
    let mut in_status = false;
    until("the agent names the full map", Duration::from_secs(20), || {
        in_status |= status(&lab)["services"]["lastError"].as_str().is_some_and(|e| e.contains(&expected));
        std::fs::read_to_string(&log).unwrap_or_default().contains(&format!("programming services: {expected}"))
    });
    eprintln!("lastError seen in status: {in_status}");
    assert!(answers(&lab, &web), "the service programmed before keeps answering");
    let other = format!("{}:80", cluster_ip(&lab, "other"));
    assert!(!answers(&lab, &other), "the new service is not half programmed");
    let (n, _, _) = backends_usage(&lab);
    assert_eq!(n, capacity, "nothing removed to make room");

    // Room again, and the Service touched (a port name added) so the next round programs it
    // rather than the periodic full resync.
    for id in (next - 1000)..next {
        remove_backend(&map, id);
    }
    lab.apply_ok(&pod("web-2", "other").replace("ports: [{port: 80,", "ports: [{name: http, port: 80,"));
    until("the new service answers once there is room", Duration::from_secs(10), || answers(&lab, &other));
    let s = status(&lab);
    assert!(s["services"]["lastError"].is_null(), "error cleared: {}", s["services"]);
    assert!(answers(&lab, &web), "the first service still answers");
}
