//! The netfilter guard in the kernel: a throwaway cgroup under the cgroup2 mount carries the
//! guard, and child processes that join it try to install iptables rules. Every child runs in a
//! network namespace of its own (`unshare --net`, or unshare(2) before exec), so no rule of the
//! node is ever touched; the namespace dies with the child.

#![allow(clippy::expect_used, clippy::unwrap_used)] // a test fails loudly on what it did not expect

use std::ffi::{CStr, CString};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use sluice_abi::{SLUICE_IPT_SO_SET_REPLACE, SLUICE_SOL_IP, SLUICE_SOL_IPV6};
use sluice_datapath::testing::require_root;
use sluice_datapath::{cgroup2_mount, decode_guard_event, Guard, GuardEvent};

const IPT_SO_SET_ADD_COUNTERS: i32 = 65;

// === harness ===

/// A cgroup made for one test, removed on drop (its processes must have exited by then).
struct ThrowawayCgroup {
    path: PathBuf,
}

impl ThrowawayCgroup {
    fn new(test: &str) -> Self {
        let root = cgroup2_mount().expect("a cgroup2 mount");
        let path = root.join(format!("sluice-guard-{test}-{}", std::process::id()));
        if path.exists() {
            let _ = std::fs::remove_dir(&path); // left over by a killed run
        }
        std::fs::create_dir(&path).unwrap_or_else(|e| panic!("creating cgroup {}: {e}", path.display()));
        Self { path }
    }
}

impl Drop for ThrowawayCgroup {
    fn drop(&mut self) {
        // A reaped child can take a moment to leave the cgroup: retry while it is busy.
        for _ in 0..50 {
            match std::fs::remove_dir(&self.path) {
                Ok(()) => return,
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) => std::thread::sleep(Duration::from_millis(20)),
                Err(e) => {
                    eprintln!("removing cgroup {}: {e}", self.path.display());
                    return;
                }
            }
        }
        eprintln!("cgroup {} still busy; left behind", self.path.display());
    }
}

fn procs_file(cgroup: &Path) -> CString {
    CString::new(cgroup.join("cgroup.procs").as_os_str().as_bytes()).unwrap()
}

/// Moves the calling process into the cgroup whose `cgroup.procs` is `procs`. Runs between
/// fork and exec, so it makes raw system calls and allocates nothing.
fn join_cgroup(procs: &CStr) -> io::Result<()> {
    // SAFETY: `procs` is a NUL-terminated path; the descriptor is closed below.
    let fd = unsafe { libc::open(procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: writes one byte from a static buffer to the descriptor opened above. "0" is the
    // writing process.
    let written = unsafe { libc::write(fd, b"0".as_ptr().cast(), 1) };
    let err = io::Error::last_os_error();
    // SAFETY: fd is open and ours.
    unsafe { libc::close(fd) };
    if written == 1 {
        Ok(())
    } else {
        Err(err)
    }
}

/// The path of a tool from util-linux or iptables; /usr/sbin may be missing from PATH.
fn tool(name: &str) -> PathBuf {
    let path = std::env::var("PATH").unwrap_or_default();
    let found = path.split(':').chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"]).map(|dir| Path::new(dir).join(name)).find(|p| p.exists());
    found.unwrap_or_else(|| panic!("{name} not found: install util-linux and iptables (apt-get install iptables)"))
}

/// Runs `program args` in a fresh network namespace (`unshare --net` execs it in the same
/// process: the pid is the program's), inside `cgroup` when given. Returns the pid and output.
fn run_in_netns(cgroup: Option<&Path>, program: &str, args: &[&str]) -> (u32, Output) {
    let mut cmd = Command::new(tool("unshare"));
    cmd.arg("--net").arg(tool(program)).args(args);
    if let Some(cgroup) = cgroup {
        let procs = procs_file(cgroup);
        // SAFETY: the hook only makes raw system calls (open, write, close).
        unsafe { cmd.pre_exec(move || join_cgroup(&procs)) };
    }
    let child = cmd.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped()).spawn().expect("spawning unshare");
    let pid = child.id();
    (pid, child.wait_with_output().expect("waiting for the child"))
}

fn drain(events: &mut aya::maps::RingBuf<aya::maps::MapData>) -> Vec<GuardEvent> {
    let mut out = Vec::new();
    while let Some(record) = events.next() {
        out.push(decode_guard_event(&record).expect("a whole guard_event record"));
    }
    out
}

const APPEND_RULE: &[&str] = &["-w", "-A", "FORWARD", "-j", "ACCEPT"];

/// Checks that `program` fails inside the guarded cgroup and succeeds outside it, and returns
/// the one event the refusal produced.
fn refused_install(test: &str, program: &str) -> (u32, GuardEvent) {
    let cgroup = ThrowawayCgroup::new(test);
    let mut guard = Guard::attach(&cgroup.path).expect("attaching the guard");
    let mut events = guard.take_events().expect("the events ring buffer");

    let (pid, inside) = run_in_netns(Some(&cgroup.path), program, APPEND_RULE);
    let stderr = String::from_utf8_lossy(&inside.stderr);
    assert!(!inside.status.success(), "{program} in the guarded cgroup must fail, got {:?}", inside.status);
    // strerror(EPERM); libiptc words some paths as "Permission denied (you must be root)".
    let lower = stderr.to_lowercase();
    assert!(lower.contains("not permitted") || lower.contains("permission denied"), "{program} must report EPERM, stderr: {stderr}");

    let (_, outside) = run_in_netns(None, program, APPEND_RULE);
    assert!(outside.status.success(), "{program} outside the cgroup must succeed, stderr: {}", String::from_utf8_lossy(&outside.stderr));

    let seen = drain(&mut events);
    assert_eq!(seen.len(), 1, "one refused install, one event: {seen:?}");
    assert_eq!(guard.blocked().expect("reading guard_counters"), 1, "one refusal counted");
    assert_eq!(guard.events_lost().expect("reading guard_counters"), 0, "no event lost");
    (pid, seen.into_iter().next().unwrap())
}

// === tests ===

#[test]
fn refuses_iptables_legacy_installs_from_its_cgroup() {
    if !require_root("refuses_iptables_legacy_installs_from_its_cgroup") {
        return;
    }
    let (pid, ev) = refused_install("v4", "iptables-legacy");
    assert_eq!(ev.pid, pid, "the event names the refused process");
    assert!(ev.comm == "iptables-legacy" || ev.comm == "iptables", "comm of the caller, got {:?}", ev.comm);
    assert_eq!(ev.level, SLUICE_SOL_IP, "SOL_IP");
    assert_eq!(ev.optname, SLUICE_IPT_SO_SET_REPLACE, "IPT_SO_SET_REPLACE");
    assert!(ev.time_ns > 0, "a monotonic timestamp");
}

#[test]
fn refuses_ip6tables_legacy_installs_from_its_cgroup() {
    if !require_root("refuses_ip6tables_legacy_installs_from_its_cgroup") {
        return;
    }
    let (pid, ev) = refused_install("v6", "ip6tables-legacy");
    assert_eq!(ev.pid, pid, "the event names the refused process");
    assert!(ev.comm.starts_with("ip6tables"), "comm of the caller (15 bytes at most), got {:?}", ev.comm);
    assert_eq!(ev.level, SLUICE_SOL_IPV6, "SOL_IPV6");
    assert_eq!(ev.optname, SLUICE_IPT_SO_SET_REPLACE, "IP6T_SO_SET_REPLACE");
}

/// One setsockopt made by a child in the guarded cgroup and a fresh network namespace.
struct SockoptCase {
    what: &'static str,
    family: i32,
    kind: i32,
    protocol: i32,
    level: i32,
    optname: i32,
    optlen: usize,
    /// SO_RCVBUF value written at the start of the buffer; checked with getsockopt after.
    rcvbuf: Option<i32>,
    /// The errno the call must end with: EPERM from the guard, anything else from the kernel.
    errno: Option<i32>,
}

/// The child's errno from setsockopt, or EDOM when SO_RCVBUF did not take the value (the
/// call did not reach the kernel with the caller's buffer). The work runs in the pre_exec
/// hook; its error comes back from spawn.
fn setsockopt_in(cgroup: &Path, case: &SockoptCase) -> io::Result<()> {
    let procs = procs_file(cgroup);
    let mut buf = vec![0u8; case.optlen];
    if let Some(v) = case.rcvbuf {
        buf[..4].copy_from_slice(&v.to_ne_bytes());
    }
    let (family, kind, protocol, level, optname, rcvbuf) = (case.family, case.kind, case.protocol, case.level, case.optname, case.rcvbuf);
    let mut cmd = Command::new(tool("true"));
    // SAFETY: the hook only makes raw system calls on memory allocated before the fork.
    unsafe {
        cmd.pre_exec(move || {
            join_cgroup(&procs)?;
            if libc::unshare(libc::CLONE_NEWNET) != 0 {
                return Err(io::Error::last_os_error());
            }
            let fd = libc::socket(family, kind, protocol);
            if fd < 0 {
                return Err(io::Error::last_os_error());
            }
            if libc::setsockopt(fd, level, optname, buf.as_ptr().cast(), buf.len() as libc::socklen_t) != 0 {
                return Err(io::Error::last_os_error());
            }
            if let Some(want) = rcvbuf {
                let mut got: i32 = 0;
                let mut len = std::mem::size_of::<i32>() as libc::socklen_t;
                if libc::getsockopt(fd, libc::SOL_SOCKET, libc::SO_RCVBUF, (&mut got as *mut i32).cast(), &mut len) != 0 {
                    return Err(io::Error::last_os_error());
                }
                if got != 2 * want {
                    // The kernel doubles SO_RCVBUF for its bookkeeping.
                    return Err(io::Error::from_raw_os_error(libc::EDOM));
                }
            }
            Ok(())
        })
    };
    cmd.spawn()?.wait().map(|_| ())
}

#[test]
fn passes_every_other_socket_option_with_the_callers_buffer() {
    if !require_root("passes_every_other_socket_option_with_the_callers_buffer") {
        return;
    }
    let cgroup = ThrowawayCgroup::new("sockopts");
    let mut guard = Guard::attach(&cgroup.path).expect("attaching the guard");
    let mut events = guard.take_events().expect("the events ring buffer");
    let raw4 = (libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_RAW);
    let raw6 = (libc::AF_INET6, libc::SOCK_RAW, libc::IPPROTO_RAW);
    let udp = (libc::AF_INET, libc::SOCK_DGRAM, 0);
    let case = |what, (family, kind, protocol): (i32, i32, i32), level, optname, optlen, rcvbuf, errno| SockoptCase {
        what,
        family,
        kind,
        protocol,
        level,
        optname,
        optlen,
        rcvbuf,
        errno,
    };
    let cases = [
        // Zeroed ipt_replace: refused before netfilter reads it (it would say EINVAL).
        case("IPv4 table install", raw4, libc::SOL_IP, SLUICE_IPT_SO_SET_REPLACE as i32, 128, None, Some(libc::EPERM)),
        case("IPv6 table install", raw6, libc::SOL_IPV6, SLUICE_IPT_SO_SET_REPLACE as i32, 128, None, Some(libc::EPERM)),
        // Zeroed xt_counters_info: netfilter itself answers (num_counters 0 is invalid).
        case("IPv4 counter update", raw4, libc::SOL_IP, IPT_SO_SET_ADD_COUNTERS, 128, None, Some(libc::EINVAL)),
        case("IPv6 counter update", raw6, libc::SOL_IPV6, IPT_SO_SET_ADD_COUNTERS, 128, None, Some(libc::EINVAL)),
        case("SO_RCVBUF, 4 bytes", udp, libc::SOL_SOCKET, libc::SO_RCVBUF, 4, Some(40_000), None),
        // Past a page the program holds a truncated copy: the kernel must use the caller's.
        case("SO_RCVBUF, 3 pages", udp, libc::SOL_SOCKET, libc::SO_RCVBUF, 3 * 4096, Some(50_000), None),
    ];
    for c in &cases {
        let result = setsockopt_in(&cgroup.path, c);
        let errno = result.as_ref().err().map(|e| e.raw_os_error());
        assert_eq!(errno, c.errno.map(Some), "{}: expected errno {:?}, got {result:?}", c.what, c.errno);
    }
    let refused = cases.iter().filter(|c| c.errno == Some(libc::EPERM)).count() as u64;
    assert_eq!(guard.blocked().expect("reading guard_counters"), refused, "each refusal counted once");
    let seen = drain(&mut events);
    let levels: Vec<u32> = seen.iter().map(|e| e.level).collect();
    assert_eq!(levels, vec![SLUICE_SOL_IP, SLUICE_SOL_IPV6], "one event per refusal, in order: {seen:?}");
}

#[test]
fn detaches_when_dropped() {
    if !require_root("detaches_when_dropped") {
        return;
    }
    let cgroup = ThrowawayCgroup::new("drop");
    let guard = Guard::attach(&cgroup.path).expect("attaching the guard");
    let (_, guarded) = run_in_netns(Some(&cgroup.path), "iptables-legacy", APPEND_RULE);
    assert!(!guarded.status.success(), "refused while the guard is attached");
    drop(guard);
    // Closing the link fd detaches the program, unless a child that another test is forking
    // holds a copy of it until its exec (bpf fds are close-on-exec): allow a moment for that.
    let mut after = run_in_netns(Some(&cgroup.path), "iptables-legacy", APPEND_RULE).1;
    for _ in 0..50 {
        if after.status.success() {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
        after = run_in_netns(Some(&cgroup.path), "iptables-legacy", APPEND_RULE).1;
    }
    assert!(after.status.success(), "allowed once the guard is dropped, stderr: {}", String::from_utf8_lossy(&after.stderr));
}

#[test]
fn runs_alongside_other_programs_on_the_cgroup() {
    if !require_root("runs_alongside_other_programs_on_the_cgroup") {
        return;
    }
    let cgroup = ThrowawayCgroup::new("multi");
    let first = Guard::attach(&cgroup.path).expect("attaching the first guard");
    let second = Guard::attach(&cgroup.path).expect("a second attachment on the same cgroup (a restarted agent)");
    let (_, out) = run_in_netns(Some(&cgroup.path), "iptables-legacy", APPEND_RULE);
    assert!(!out.status.success(), "refused with two guards attached");
    assert_eq!(first.blocked().expect("reading guard_counters"), 1, "the first guard ran");
    assert_eq!(second.blocked().expect("reading guard_counters"), 1, "the second guard ran too");
}

#[test]
fn refuses_a_directory_outside_cgroup_v2() {
    // Checked before anything is loaded: no root needed.
    let dir = tempfile::tempdir().expect("a temporary directory");
    let err = Guard::attach(dir.path()).err().expect("a tmp directory is no cgroup");
    assert!(err.to_string().contains("not a cgroup v2 directory"), "says why, got: {err}");
}

#[test]
fn decodes_a_guard_event_record() {
    let mut record = Vec::new();
    record.extend_from_slice(&123_456_789u64.to_ne_bytes());
    record.extend_from_slice(&4242u32.to_ne_bytes());
    record.extend_from_slice(&SLUICE_SOL_IPV6.to_ne_bytes());
    record.extend_from_slice(&SLUICE_IPT_SO_SET_REPLACE.to_ne_bytes());
    record.extend_from_slice(b"ip6tables-legac\0");
    record.extend_from_slice(&0u32.to_ne_bytes());
    let want = GuardEvent {
        time_ns: 123_456_789,
        pid: 4242,
        level: SLUICE_SOL_IPV6,
        optname: SLUICE_IPT_SO_SET_REPLACE,
        comm: "ip6tables-legac".into(),
    };
    assert_eq!(decode_guard_event(&record), Some(want), "fields at the offsets of struct guard_event");
    assert_eq!(decode_guard_event(&record[..39]), None, "a truncated record is refused");
}
