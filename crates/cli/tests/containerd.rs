//! Privileged test: a real container runtime on Sluice. Debian's containerd runs two containers
//! with `ctr run --cni` on a one-node lab; they talk over IPv4 and IPv6 through Sluice's
//! datapath, the agent lists them as endpoints, and their removal runs CNI DEL and frees their
//! addresses.
//!
//! Where things run, and why:
//! - containerd runs inside the lab node's network namespace, as it runs in a node's host
//!   namespace, with its own root, state, sockets and configuration in a temporary directory.
//! - `ctr run --cni` is containerd's CRI-less path: `ctr` itself calls the CNI plugins through
//!   go-cni, which reads the fixed paths `/etc/cni/net.d` and `/opt/cni/bin`, and libcni keeps
//!   its result cache in `/var/lib/cni`; the shims and runc keep their sockets and state in
//!   `/run/containerd` whatever `--state` says. containerd therefore gets a mount namespace of
//!   its own in which the test's directories are mounted over those four paths, and every `ctr`
//!   joins it. The machine's own directories are never written to; where one is missing, an
//!   empty one is made to mount on and removed afterwards.
//! - Containers live in the node's cgroup subtree (`<node>/containers/<id>`), containerd and
//!   its shims in `<node>/runtime`, so cleanup can find every process by cgroup.
//!
//! The image is built here from the machine's static busybox as an OCI archive and imported:
//! nothing is pulled.

#![allow(clippy::expect_used, clippy::unwrap_used)] // a test fails loudly on what it did not expect

mod common;

use std::ffi::{CStr, CString};
use std::fs::File;
use std::io::Write;
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use nix::mount::{mount, MsFlags};
use nix::sched::{setns, unshare, CloneFlags};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use sluice_api::{Endpoint, Flow};
use sluice_lab::state::{LabState, NodeState};

use common::{privileged, text, TestLab};

/// The containerd namespace the test's containers live in; `ctr` names CNI attachments
/// `<namespace>-<container id>`.
const NAMESPACE: &str = "sluice";
/// The image the test builds and imports.
const IMAGE: &str = "localhost/sluice/busybox:test";
/// What the server container's web server answers.
const PAGE: &str = "hello from a containerd container on sluice\n";
/// The paths containerd's CRI-less CNI path and its shims use, whatever the configuration says.
const CNI_CONF_DIR: &str = "/etc/cni/net.d";
const CNI_BIN_DIR: &str = "/opt/cni/bin";
const CNI_CACHE_DIR: &str = "/var/lib/cni";
const RUNTIME_STATE_DIR: &str = "/run/containerd";

#[test]
fn containerd_runs_containers_on_sluice_and_del_frees_their_addresses() {
    if !privileged("containerd_runs_containers_on_sluice_and_del_frees_their_addresses") || !runtime_available() {
        return;
    }
    let busybox = static_busybox().expect("checked by runtime_available");
    let lab = TestLab::up("ctd", &[]);
    let state = LabState::load(&lab.lab_dir()).expect("lab.json readable").expect("lab.json written by up");
    let node = state.node("node0").expect("node0 in lab.json").clone();
    let runtime = Containerd::start(&node);

    // === the image: built here, imported, nothing pulled ===
    let archive = runtime.dir.path().join("busybox.oci.tar");
    std::fs::write(&archive, oci_archive(&std::fs::read(&busybox).expect("read busybox"))).expect("write image archive");
    let out = runtime.ctr(&["images", "import", "--snapshotter", "native", archive.to_str().unwrap()]); // see run_container
    assert!(out.status.success(), "ctr images import failed: {}\n{}", text(&out), runtime.log());
    let images = runtime.ctr(&["images", "ls", "-q"]);
    assert!(String::from_utf8_lossy(&images.stdout).lines().any(|l| l == IMAGE), "{IMAGE} is listed after import: {}", text(&images));

    // === two containers with `ctr run --cni` ===
    let mut server = runtime.run_container("server", &["httpd", "-f", "-p", "8080", "-h", "/www"]);
    let mut client = runtime.run_container("client", &["sleep", "3600"]);
    let server_pid = runtime.wait_running("server");
    let client_pid = runtime.wait_running("client");

    // The agent lists both as endpoints, with the attachment and namespace ctr gave.
    let listed = endpoints(&lab);
    assert_eq!(listed.len(), 2, "the agent holds one endpoint per container: {listed:?}");
    let server_ep = endpoint_of(&listed, "server");
    let client_ep = endpoint_of(&listed, "client");
    for (ep, pid) in [(&server_ep, server_pid), (&client_ep, client_pid)] {
        assert_eq!(ep.ifname, "eth0", "ctr attaches eth0: {ep:?}");
        assert_eq!(ep.netns, format!("/proc/{pid}/ns/net"), "the endpoint is the task's network namespace: {ep:?}");
        assert!(ep.ipv4.is_some() && ep.ipv6.is_some(), "dual stack: an IPv4 and an IPv6 address: {ep:?}");
    }
    let (server_v4, server_v6) = (server_ep.ipv4.unwrap().to_string(), server_ep.ipv6.unwrap().to_string());
    let (client_v4, client_v6) = (client_ep.ipv4.unwrap().to_string(), client_ep.ipv6.unwrap().to_string());
    assert_ne!(server_v4, client_v4, "two containers, two IPv4 addresses");
    assert_ne!(server_v6, client_v6, "two containers, two IPv6 addresses");
    let host_ifnames = [server_ep.host_ifname.clone(), client_ep.host_ifname.clone()];
    for name in &host_ifnames {
        assert!(node_links(&lab).contains(name), "the host side {name} of a container's veth is in the node's namespace");
    }

    // What the container sees is what the agent recorded.
    let addrs = runtime.exec("client", &["ip", "addr", "show", "dev", "eth0"]);
    assert!(addrs.status.success(), "ip addr in the client: {}", text(&addrs));
    let addrs = String::from_utf8_lossy(&addrs.stdout);
    assert!(addrs.contains(&format!("inet {client_v4}/32")), "the client's eth0 has {client_v4}/32: {addrs}");
    assert!(addrs.contains(&format!("inet6 {client_v6}/128")), "the client's eth0 has {client_v6}/128: {addrs}");

    // === they talk, over IPv4 and IPv6, through Sluice ===
    for url in [format!("http://{server_v4}:8080/"), format!("http://[{server_v6}]:8080/")] {
        // `timeout`, not wget's own -T: busybox 1.35's wget crashes with -T.
        // Until the page arrives, not only until wget succeeds: on a loaded machine `ctr task
        // exec` can lose the output of a process that exits at once (seen once in CI: wget
        // succeeded, ctr printed nothing).
        let fetch = ["timeout", "5", "wget", "-q", "-O", "-", url.as_str()];
        let out = runtime.exec_until("client", &fetch, Duration::from_secs(15), |out| {
            out.status.success() && String::from_utf8_lossy(&out.stdout) == PAGE
        });
        assert!(out.status.success(), "the client fetches {url} from the server: {}", text(&out));
        assert_eq!(String::from_utf8_lossy(&out.stdout), PAGE, "the server's page over {url}");
    }
    for (ping, target) in [("ping", &client_v4), ("ping6", &client_v6)] {
        let out = runtime.exec("server", &[ping, "-c", "1", "-W", "5", target]);
        assert!(out.status.success(), "the server pings the client at {target}: {}", text(&out));
    }
    for (server_ip, client_ip) in [(&server_v4, &client_v4), (&server_v6, &client_v6)] {
        let flows = observed(&lab, server_ip);
        let syn = flows.iter().find(|f| {
            f.protocol == "TCP"
                && f.tcp_flags.as_deref() == Some("SYN")
                && f.source.ip.map(|i| i.to_string()).as_deref() == Some(client_ip.as_str())
                && f.destination.ip.map(|i| i.to_string()).as_deref() == Some(server_ip.as_str())
                && f.destination.port == Some(8080)
        });
        let syn = syn.unwrap_or_else(|| panic!("the datapath saw the client's SYN to {server_ip}:8080; flows: {flows:?}"));
        assert_eq!(syn.verdict, "FORWARDED", "the SYN to {server_ip} was forwarded: {syn:?}");
        assert_eq!(syn.point, "from-pod", "seen where the client's veth enters the node: {syn:?}");
        assert_eq!(syn.source.pod.as_deref(), Some(format!("{NAMESPACE}-client").as_str()), "named by its attachment: {syn:?}");
    }
    assert_eq!(cni_metric(&lab, "sluice_cni_add_duration_seconds_count"), 2.0, "the agent served two CNI ADDs");
    assert_eq!(cni_metric(&lab, "sluice_cni_del_duration_seconds_count"), 0.0, "and no DEL yet");

    // === removal: the task is killed, `ctr run --rm` runs DEL and removes the container ===
    for (id, run) in [("server", &mut server), ("client", &mut client)] {
        let out = runtime.ctr(&["tasks", "kill", "--signal", "SIGKILL", id]);
        assert!(out.status.success(), "ctr tasks kill {id}: {}", text(&out));
        let status = run.wait_exit(Duration::from_secs(20));
        assert!(status.is_some(), "ctr run {id} returns once its task is killed\n{}", run.log());
    }
    assert_eq!(cni_metric(&lab, "sluice_cni_del_duration_seconds_count"), 2.0, "the agent served two CNI DELs");
    let containers = runtime.ctr(&["containers", "ls", "-q"]);
    assert!(containers.status.success(), "ctr containers ls: {}", text(&containers));
    assert_eq!(String::from_utf8_lossy(&containers.stdout).trim(), "", "--rm removed both containers");
    assert_eq!(endpoints(&lab), Vec::<Endpoint>::new(), "no endpoint is left");
    let status = lab.json(&["status", "-o", "json"]);
    for map in ["endpoints", "endpoint_ifaces"] {
        let entries = status["maps"].as_array().expect("maps").iter().find(|m| m["map"] == map).map(|m| m["entries"].clone());
        assert_eq!(entries, Some(serde_json::json!(0)), "the datapath's {map} map is empty: {}", status["maps"]);
    }
    let links = node_links(&lab);
    for name in &host_ifnames {
        assert!(!links.contains(name), "the host side {name} is gone from the node: {links}");
    }
    let cached = std::fs::read_dir(runtime.dir.path().join("cni-cache/results")).map(|d| d.count()).unwrap_or(0);
    assert_eq!(cached, 0, "libcni dropped its cached results with the DELs");

    // The addresses are free: stop the agent and read its IPAM from its database.
    let pod_cidrs: Vec<ipnet::IpNet> = serde_json::from_value(status["podCidrs"].clone()).expect("podCidrs");
    let agent_pid = node.agent_pid.expect("the lab records its agent's pid");
    stop(agent_pid);
    let db = std::sync::Arc::new(sluice_agent::db::AgentDb::open(&node.dir.join("state")).expect("the stopped agent's database opens"));
    let v4 = pod_cidrs.iter().find_map(|c| if let ipnet::IpNet::V4(n) = c { Some(*n) } else { None });
    let v6 = pod_cidrs.iter().find_map(|c| if let ipnet::IpNet::V6(n) = c { Some(*n) } else { None });
    let ipam = sluice_agent::ipam::Ipam::new(db, v4, v6).expect("IPAM view");
    let held = ipam.list().expect("IPAM list");
    assert!(held.is_empty(), "the IPAM holds no address after both DELs: {held:?}");
}

// === what the test needs on the machine ===

/// containerd, ctr, the runc shim and a static busybox; under CI their absence fails the test.
fn runtime_available() -> bool {
    let missing: Vec<&str> =
        ["containerd", "ctr", "containerd-shim-runc-v2", "runc"].into_iter().filter(|b| find_on_path(b).is_none()).collect();
    let busybox = static_busybox();
    if missing.is_empty() && busybox.is_some() {
        return true;
    }
    let what = format!("missing {missing:?}{}", if busybox.is_none() { ", no static busybox" } else { "" });
    let ci = std::env::var("CI").map(|v| v == "true" || v == "1").unwrap_or(false);
    assert!(!ci, "CI needs Debian's containerd and busybox-static (scripts/install-deps.sh): {what}");
    eprintln!("SKIPPED containerd test: {what} (Debian packages containerd, busybox-static; under CI=true this fails)");
    false
}

/// The caller's PATH with the sbin directories added (runc lives in /usr/sbin); the runtime and
/// ctr run with it, so the binaries found here are the ones they use.
fn search_path() -> std::ffi::OsString {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let dirs = std::env::split_paths(&path).chain(["/usr/sbin".into(), "/sbin".into()]);
    std::env::join_paths(dirs).expect("PATH entries without ':'")
}

fn find_on_path(name: &str) -> Option<PathBuf> {
    std::env::split_paths(&search_path()).map(|d| d.join(name)).find(|p| p.is_file())
}

/// The machine's busybox, if it is statically linked (the image has no C library).
fn static_busybox() -> Option<PathBuf> {
    let path = find_on_path("busybox")?;
    is_static_elf(&std::fs::read(&path).ok()?).then_some(path)
}

/// A 64-bit little-endian ELF executable without a PT_INTERP header needs no dynamic loader.
fn is_static_elf(bytes: &[u8]) -> bool {
    let u16_at = |at: usize| bytes.get(at..at + 2).map(|b| u16::from_le_bytes([b[0], b[1]]) as usize);
    let u32_at = |at: usize| bytes.get(at..at + 4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]));
    let u64_at = |at: usize| bytes.get(at..at + 8).map(|b| u64::from_le_bytes(b.try_into().unwrap()) as usize);
    if bytes.get(..6) != Some(b"\x7fELF\x02\x01") {
        return false;
    }
    let (Some(phoff), Some(phentsize), Some(phnum)) = (u64_at(32), u16_at(54), u16_at(56)) else { return false };
    (0..phnum).all(|i| u32_at(phoff + i * phentsize).is_some_and(|kind| kind != 3))
}

// === the image ===

/// An OCI image layout archive of one layer: the static busybox, its applets as symlinks, and
/// the page the server serves.
fn oci_archive(busybox: &[u8]) -> Vec<u8> {
    let mut layer = Tar::default();
    for dir in ["bin/", "dev/", "etc/", "proc/", "sys/", "www/"] {
        layer.dir(dir, 0o755);
    }
    layer.dir("tmp/", 0o1777);
    layer.file("bin/busybox", 0o755, busybox);
    for applet in ["sh", "httpd", "wget", "timeout", "ping", "ping6", "sleep", "ip", "cat"] {
        layer.symlink(&format!("bin/{applet}"), "busybox");
    }
    layer.file("www/index.html", 0o644, PAGE.as_bytes());
    let layer = layer.finish();

    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    };
    let config = serde_json::json!({
        "architecture": arch,
        "os": "linux",
        "config": {"Env": ["PATH=/bin"], "Cmd": ["/bin/sh"]},
        "rootfs": {"type": "layers", "diff_ids": [digest(&layer)]},
    });
    let config = serde_json::to_vec(&config).unwrap();
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": digest(&config), "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": digest(&layer), "size": layer.len()}],
    });
    let manifest = serde_json::to_vec(&manifest).unwrap();
    let index = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": digest(&manifest),
            "size": manifest.len(),
            "annotations": {"io.containerd.image.name": IMAGE, "org.opencontainers.image.ref.name": "test"},
        }],
    });

    let mut archive = Tar::default();
    archive.file("oci-layout", 0o644, br#"{"imageLayoutVersion":"1.0.0"}"#);
    archive.file("index.json", 0o644, &serde_json::to_vec(&index).unwrap());
    archive.dir("blobs/", 0o755);
    archive.dir("blobs/sha256/", 0o755);
    for blob in [&layer, &config, &manifest] {
        archive.file(&format!("blobs/sha256/{}", &digest(blob)["sha256:".len()..]), 0o644, blob);
    }
    archive.finish()
}

/// `sha256:<hex>` of a blob, by coreutils' sha256sum (test plumbing).
fn digest(bytes: &[u8]) -> String {
    let mut child = Command::new("sha256sum").stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().expect("sha256sum");
    let mut stdin = child.stdin.take().expect("stdin");
    let input = bytes.to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&input));
    let out = child.wait_with_output().expect("sha256sum output");
    writer.join().expect("writer").expect("write to sha256sum");
    let hex = String::from_utf8_lossy(&out.stdout).split_whitespace().next().unwrap_or_default().to_owned();
    assert!(out.status.success() && hex.len() == 64, "sha256sum: {}", text(&out));
    format!("sha256:{hex}")
}

/// A ustar archive writer: enough for an image layer (files, directories, symlinks owned by
/// root, a fixed time) and for the layout archive around it.
#[derive(Default)]
struct Tar(Vec<u8>);

impl Tar {
    fn dir(&mut self, path: &str, mode: u32) {
        self.entry(path, b'5', mode, &[], "");
    }

    fn file(&mut self, path: &str, mode: u32, data: &[u8]) {
        self.entry(path, b'0', mode, data, "");
    }

    fn symlink(&mut self, path: &str, target: &str) {
        self.entry(path, b'2', 0o777, &[], target);
    }

    fn entry(&mut self, path: &str, kind: u8, mode: u32, data: &[u8], link: &str) {
        assert!(path.len() < 100 && link.len() < 100, "short names only: {path} -> {link}");
        let mut header = [0u8; 512];
        header[..path.len()].copy_from_slice(path.as_bytes());
        octal(&mut header[100..108], u64::from(mode));
        octal(&mut header[108..116], 0);
        octal(&mut header[116..124], 0);
        octal(&mut header[124..136], data.len() as u64);
        octal(&mut header[136..148], 1_700_000_000);
        header[148..156].fill(b' ');
        header[156] = kind;
        header[157..157 + link.len()].copy_from_slice(link.as_bytes());
        header[257..263].copy_from_slice(b"ustar\0");
        header[263..265].copy_from_slice(b"00");
        let sum: u64 = header.iter().map(|b| u64::from(*b)).sum();
        header[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
        self.0.extend_from_slice(&header);
        self.0.extend_from_slice(data);
        self.0.resize(self.0.len().next_multiple_of(512), 0);
    }

    fn finish(mut self) -> Vec<u8> {
        self.0.extend_from_slice(&[0u8; 1024]);
        self.0
    }
}

/// A NUL-terminated octal number filling the field.
fn octal(field: &mut [u8], value: u64) {
    let digits = format!("{value:0width$o}\0", width = field.len() - 1);
    field.copy_from_slice(digits.as_bytes());
}

// === containerd ===

/// containerd for one test, started in the lab node's network namespace and a mount namespace
/// of its own. Dropping it stops containerd, its shims and the containers, removes the cgroups
/// runc made and the directories made to mount on, then the temporary directory.
struct Containerd {
    child: Child,
    /// Root, state, sockets, configuration, CNI directories, logs.
    dir: tempfile::TempDir,
    node_netns: PathBuf,
    /// containerd and its shims (cgroup v2).
    runtime_cgroup: PathBuf,
    /// The containers' cgroups below the node's, relative to the cgroup root (runc makes them
    /// in every hierarchy, v1 ones included on a hybrid layout).
    containers_cgroup: PathBuf,
    /// The lab's cgroup relative to the cgroup root: the lab makes it in v2 only, so in a v1
    /// hierarchy everything below it is runc's.
    lab_cgroup: PathBuf,
    /// Dropped after the processes above are gone (fields drop after `drop`), when nothing is
    /// mounted on them any more.
    _mount_points: Vec<HostDir>,
}

static EXEC_IDS: AtomicUsize = AtomicUsize::new(0);

impl Containerd {
    fn start(node: &NodeState) -> Self {
        let dir = tempfile::Builder::new().prefix("sluice-containerd-").tempdir().expect("temp dir");
        let d = dir.path();
        for sub in ["root", "state", "opt", "cni-conf", "cni-bin", "cni-cache"] {
            std::fs::create_dir(d.join(sub)).expect("runtime directory");
        }
        let config = format!(
            r#"version = 2
root = "{d}/root"
state = "{d}/state"
# The CRI plugin is not used (ctr runs the containers); the snapshotters that need a
# particular file system stay out of the way.
disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper"]

[grpc]
  address = "{d}/containerd.sock"

[ttrpc]
  address = "{d}/containerd.sock.ttrpc"

[plugins."io.containerd.internal.v1.opt"]
  path = "{d}/opt"
"#,
            d = d.display()
        );
        std::fs::write(d.join("config.toml"), config).expect("containerd config");
        // What a node's installer writes: the plugin in the CNI bin directory, a network list
        // naming it. containerd 1.6 speaks CNI up to 1.0.0.
        std::os::unix::fs::symlink(common::sluice_bin().with_file_name("sluice-cni"), d.join("cni-bin/sluice-cni")).expect("plugin link");
        let conflist = serde_json::json!({
            "cniVersion": "1.0.0",
            "name": "sluice",
            "plugins": [{"type": "sluice-cni", "agentSocket": node.socket}],
        });
        std::fs::write(d.join("cni-conf/10-sluice.conflist"), serde_json::to_vec_pretty(&conflist).unwrap()).expect("CNI config");

        let mount_points = [CNI_CONF_DIR, CNI_BIN_DIR, CNI_CACHE_DIR, RUNTIME_STATE_DIR].into_iter().map(HostDir::ensure).collect();
        let cgroup_root = sluice_lab::cgroup::cgroup2_root().expect("cgroup v2 mount");
        let runtime_cgroup = node.cgroup.join("runtime");
        std::fs::create_dir_all(&runtime_cgroup).expect("runtime cgroup");
        let node_cgroup = node.cgroup.strip_prefix(&cgroup_root).expect("the node's cgroup is below the cgroup root");
        let containers_cgroup = node_cgroup.join("containers");
        let lab_cgroup = node_cgroup.parent().expect("the node's cgroup is in the lab's").to_path_buf();
        let node_netns = Path::new("/run/netns").join(&node.netns);

        let mut cmd = Command::new(find_on_path("containerd").expect("containerd"));
        cmd.arg("--config").arg(d.join("config.toml")).env("PATH", search_path());
        let log = File::create(d.join("containerd.log")).expect("containerd log");
        cmd.stdin(Stdio::null()).stdout(log.try_clone().expect("log")).stderr(log);
        let binds = [("cni-conf", CNI_CONF_DIR), ("cni-bin", CNI_BIN_DIR), ("cni-cache", CNI_CACHE_DIR)]
            .map(|(from, onto)| (cstring(&d.join(from)), cstring(Path::new(onto))));
        let run_dir = cstring(Path::new(RUNTIME_STATE_DIR));
        let netns = File::open(&node_netns).expect("open the node's netns");
        let mut procs = std::fs::OpenOptions::new().write(true).open(runtime_cgroup.join("cgroup.procs")).expect("cgroup.procs");
        // SAFETY: the closure runs between fork and exec; it only makes system calls (write,
        // setns, unshare, mount, setsid) on descriptors and C strings made before the fork, and
        // allocates nothing.
        unsafe {
            cmd.pre_exec(move || {
                procs.write_all(b"0")?;
                setns(netns.as_fd(), CloneFlags::CLONE_NEWNET)?;
                unshare(CloneFlags::CLONE_NEWNS)?;
                // Slave: the machine's mounts (netns files, bpffs) still reach us and their
                // removal too; ours never reach the machine.
                mount(None::<&CStr>, c"/", None::<&CStr>, MsFlags::MS_REC | MsFlags::MS_SLAVE, None::<&CStr>)?;
                mount(Some(c"tmpfs"), run_dir.as_c_str(), Some(c"tmpfs"), MsFlags::empty(), Some(c"mode=0711"))?;
                for (from, onto) in &binds {
                    mount(Some(from.as_c_str()), onto.as_c_str(), None::<&CStr>, MsFlags::MS_BIND, None::<&CStr>)?;
                }
                nix::unistd::setsid()?;
                Ok(())
            });
        }
        let child = cmd.spawn().expect("start containerd");
        let runtime = Containerd { child, dir, node_netns, runtime_cgroup, containers_cgroup, lab_cgroup, _mount_points: mount_points };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let out = runtime.ctr(&["version"]);
            if out.status.success() {
                break;
            }
            assert!(Instant::now() < deadline, "containerd did not answer within 20 s: {}\n{}", text(&out), runtime.log());
            std::thread::sleep(Duration::from_millis(100));
        }
        runtime
    }

    /// `ctr` in the node's network namespace and containerd's mount namespace, as a node's
    /// runtime client runs; the CNI plugin it starts runs there too.
    fn ctr_command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(find_on_path("ctr").expect("ctr"));
        cmd.arg("--address").arg(self.dir.path().join("containerd.sock")).args(["--namespace", NAMESPACE]).args(args);
        cmd.env("PATH", search_path());
        let netns = File::open(&self.node_netns).expect("open the node's netns");
        let mntns = File::open(format!("/proc/{}/ns/mnt", self.child.id())).expect("containerd's mount namespace");
        // SAFETY: between fork and exec only setns(2) on descriptors opened before the fork.
        unsafe {
            cmd.pre_exec(move || {
                setns(netns.as_fd(), CloneFlags::CLONE_NEWNET)?;
                setns(mntns.as_fd(), CloneFlags::CLONE_NEWNS)?;
                Ok(())
            });
        }
        cmd
    }

    fn ctr(&self, args: &[&str]) -> Output {
        output_within(self.ctr_command(args), Duration::from_secs(60))
    }

    /// `ctr run --rm --cni`, in the foreground as a node's runtime would hold it: it calls ADD
    /// before the task starts, and DEL and the container's removal once the task has exited.
    fn run_container(&self, id: &str, argv: &[&str]) -> Running {
        let cgroup = Path::new("/").join(&self.containers_cgroup).join(id);
        // The native snapshotter works on any file system (overlayfs cannot stack its upper
        // directory on overlayfs, as in many CI containers); the network path is the same.
        let mut args = vec!["run", "--rm", "--cni", "--snapshotter", "native", "--cgroup", cgroup.to_str().unwrap(), IMAGE, id];
        args.extend_from_slice(argv);
        let mut cmd = self.ctr_command(&args);
        let log_path = self.dir.path().join(format!("ctr-run-{id}.log"));
        let log = File::create(&log_path).expect("ctr run log");
        cmd.stdin(Stdio::null()).stdout(log.try_clone().expect("log")).stderr(log);
        Running { child: cmd.spawn().expect("ctr run"), log: log_path }
    }

    /// Waits until the container's task runs; returns its pid.
    fn wait_running(&self, id: &str) -> u32 {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let tasks = self.ctr(&["tasks", "ls"]);
            let listing = String::from_utf8_lossy(&tasks.stdout).to_string();
            let pid = listing.lines().find_map(|l| match l.split_whitespace().collect::<Vec<_>>()[..] {
                [task, pid, "RUNNING"] if task == id => pid.parse().ok(),
                _ => None,
            });
            if let Some(pid) = pid {
                return pid;
            }
            assert!(Instant::now() < deadline, "task {id} is not running after 30 s: {}\n{}", text(&tasks), self.log());
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn exec(&self, id: &str, argv: &[&str]) -> Output {
        let exec_id = format!("exec{}", EXEC_IDS.fetch_add(1, Ordering::SeqCst));
        self.ctr(&[&["tasks", "exec", "--exec-id", &exec_id, id], argv].concat())
    }

    /// Runs `argv` in the container until `done` says its output is what is wanted, at most
    /// `within`; returns the last output.
    fn exec_until(&self, id: &str, argv: &[&str], within: Duration, done: impl Fn(&Output) -> bool) -> Output {
        let deadline = Instant::now() + within;
        loop {
            let out = self.exec(id, argv);
            if done(&out) || Instant::now() > deadline {
                return out;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn log(&self) -> String {
        let log = std::fs::read_to_string(self.dir.path().join("containerd.log")).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(30).collect();
        format!("containerd log (last lines):\n{}", tail.into_iter().rev().collect::<Vec<_>>().join("\n"))
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        // containerd first, gently; then whatever is left in its cgroup (shims) and in the
        // containers' cgroups, by pid.
        let _ = kill(Pid::from_raw(self.child.id() as i32), Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline && matches!(self.child.try_wait(), Ok(None)) {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let mut trees = vec![self.runtime_cgroup.clone()];
        let mut v1_labs = Vec::new();
        for (mount_point, version) in cgroup_mounts() {
            if version == 2 {
                trees.push(mount_point.join(&self.containers_cgroup));
            } else {
                trees.push(mount_point.join(&self.lab_cgroup));
                v1_labs.push(mount_point.join(&self.lab_cgroup));
            }
        }
        for tree in &trees {
            kill_cgroup_tree(tree);
        }
        for tree in &trees {
            remove_cgroup_tree(tree);
        }
        for lab in &v1_labs {
            if let Some(parent) = lab.parent() {
                let _ = std::fs::remove_dir(parent); // `<v1 mount>/sluice`, unless another lab's runc uses it
            }
        }
    }
}

/// A foreground `ctr run`.
struct Running {
    child: Child,
    log: PathBuf,
}

impl Running {
    fn wait_exit(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    fn log(&self) -> String {
        format!("ctr run output:\n{}", std::fs::read_to_string(&self.log).unwrap_or_default())
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A directory the runtime's mount namespace mounts over. When the machine lacks it, an empty
/// one (and missing parents) is made and removed again on drop; an existing one is left as it
/// is, its contents hidden from the runtime only.
struct HostDir {
    created: Vec<PathBuf>,
}

impl HostDir {
    fn ensure(path: &str) -> Self {
        let mut created = Vec::new();
        let mut missing: Vec<&Path> = Path::new(path).ancestors().take_while(|p| !p.exists()).collect();
        missing.reverse();
        for dir in missing {
            std::fs::create_dir(dir).unwrap_or_else(|e| panic!("creating {} to mount on: {e}", dir.display()));
            created.push(dir.to_path_buf());
        }
        HostDir { created }
    }
}

impl Drop for HostDir {
    fn drop(&mut self) {
        for dir in self.created.iter().rev() {
            if let Err(e) = std::fs::remove_dir(dir) {
                eprintln!("could not remove {} made for the test: {e}", dir.display());
            }
        }
    }
}

// === helpers ===

fn cstring(path: &Path) -> CString {
    CString::new(path.as_os_str().as_bytes()).expect("a path without NUL")
}

/// Runs `cmd` to completion, killing it after `within`.
fn output_within(mut cmd: Command, within: Duration) -> Output {
    cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let child = cmd.spawn().unwrap_or_else(|e| panic!("spawning {cmd:?}: {e}"));
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(within) {
        Ok(out) => out.expect("collect output"),
        Err(_) => {
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
            panic!("{cmd:?} did not finish within {} s", within.as_secs());
        }
    }
}

/// Every cgroup mount: (mount point, 1 or 2).
fn cgroup_mounts() -> Vec<(PathBuf, u8)> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    info.lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let version = match right.split_whitespace().next()? {
                "cgroup2" => 2,
                "cgroup" => 1,
                _ => return None,
            };
            Some((PathBuf::from(left.split_whitespace().nth(4)?), version))
        })
        .collect()
}

fn cgroup_tree_pids(dir: &Path) -> Vec<i32> {
    let mut pids: Vec<i32> = std::fs::read_to_string(dir.join("cgroup.procs"))
        .map(|s| s.lines().filter_map(|l| l.trim().parse().ok()).collect())
        .unwrap_or_default();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            pids.extend(cgroup_tree_pids(&entry.path()));
        }
    }
    pids
}

/// SIGKILL to every process in a cgroup subtree until it is empty (5 s at most).
fn kill_cgroup_tree(dir: &Path) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let pids = cgroup_tree_pids(dir);
        if pids.is_empty() || Instant::now() > deadline {
            if !pids.is_empty() {
                eprintln!("processes {pids:?} in {} survived SIGKILL", dir.display());
            }
            return;
        }
        for pid in pids {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Removes a cgroup subtree, deepest first (cgroup directories go with rmdir).
fn remove_cgroup_tree(dir: &Path) {
    if !dir.is_dir() {
        return;
    }
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            remove_cgroup_tree(&entry.path());
        }
    }
    if let Err(e) = std::fs::remove_dir(dir) {
        eprintln!("could not remove cgroup {}: {e}", dir.display());
    }
}

/// SIGTERM to a process that is not our child, and wait until it is gone.
fn stop(pid: i32) {
    let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
    let deadline = Instant::now() + Duration::from_secs(20);
    while alive(pid) {
        assert!(Instant::now() < deadline, "process {pid} did not stop within 20 s");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn alive(pid: i32) -> bool {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    stat.rsplit_once(") ").is_some_and(|(_, rest)| !rest.starts_with('Z'))
}

fn endpoints(lab: &TestLab) -> Vec<Endpoint> {
    serde_json::from_value(lab.json(&["endpoint", "list", "-o", "json"])).expect("endpoint list -o json is a list of endpoints")
}

fn endpoint_of(endpoints: &[Endpoint], id: &str) -> Endpoint {
    let attachment = format!("{NAMESPACE}-{id}");
    let found = endpoints.iter().find(|e| e.container_id == attachment).cloned();
    found.unwrap_or_else(|| panic!("an endpoint for container {id} (attachment {attachment}): {endpoints:?}"))
}

/// Link names in the node's namespace.
fn node_links(lab: &TestLab) -> String {
    let out = lab.in_node("node0", &["ip", "-o", "link", "show"]);
    assert!(out.status.success(), "ip link in the node: {}", text(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Flows the node's observer kept that involve `ip`.
fn observed(lab: &TestLab, ip: &str) -> Vec<Flow> {
    let out = lab.run(&["observe", "--ip", ip, "--last", "1000", "-o", "json"]);
    assert!(out.status.success(), "observe: {}", text(&out));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("observe -o json printed a line that is not a flow ({e}): {l}")))
        .collect()
}

fn cni_metric(lab: &TestLab, name: &str) -> f64 {
    let out = lab.run(&["metrics"]);
    assert!(out.status.success(), "metrics: {}", text(&out));
    let body = String::from_utf8_lossy(&out.stdout);
    let value = body.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok());
    value.unwrap_or_else(|| panic!("metric {name} in the agent's metrics: {body}"))
}
