//! Starting processes the way a container runtime does: inside a network namespace and a
//! cgroup, chosen before exec so that not one instruction of the program runs elsewhere.

use std::fs::File;
use std::io::Write;
use std::os::fd::AsFd;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;

use nix::sched::{setns, CloneFlags};

use crate::LabError;

/// Arranges for `cmd` to start in the namespace at `netns` and in cgroup `cgroup` (if given).
/// Files are opened now; the child only calls setns(2) and write(2), which are safe after fork.
pub fn enter_on_exec(cmd: &mut Command, netns: &Path, cgroup: Option<&Path>, new_session: bool) -> Result<(), LabError> {
    let ns = File::open(netns).map_err(|e| LabError::io(format!("opening netns {}", netns.display()), e))?;
    let procs = match cgroup {
        Some(dir) => Some(
            std::fs::OpenOptions::new()
                .write(true)
                .open(dir.join("cgroup.procs"))
                .map_err(|e| LabError::io(format!("opening {}/cgroup.procs", dir.display()), e))?,
        ),
        None => None,
    };
    // SAFETY: the closure runs between fork and exec; it calls only setns(2), write(2) and
    // setsid(2) on descriptors opened before the fork, and allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            if let Some(mut p) = procs.as_ref() {
                // "0" moves the writing process: the child itself.
                p.write_all(b"0")?;
            }
            setns(ns.as_fd(), CloneFlags::CLONE_NEWNET).map_err(std::io::Error::from)?;
            if new_session {
                nix::unistd::setsid().map_err(std::io::Error::from)?;
            }
            Ok(())
        });
    }
    Ok(())
}

/// Whether a process exists (and is not a zombie of ours).
pub fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat.rsplit_once(") ").map(|(_, rest)| !rest.starts_with('Z')).unwrap_or(false),
        Err(_) => false,
    }
}

/// SIGTERM to a process group, then SIGKILL after `grace`, then wait until it is gone.
pub fn stop_group(pgid: i32, grace: std::time::Duration) {
    use nix::sys::signal::{killpg, Signal};
    use nix::unistd::Pid;
    if !alive(pgid) {
        return;
    }
    let _ = killpg(Pid::from_raw(pgid), Signal::SIGTERM);
    let deadline = std::time::Instant::now() + grace;
    while alive(pgid) && std::time::Instant::now() < deadline {
        reap(pgid);
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    if alive(pgid) {
        let _ = killpg(Pid::from_raw(pgid), Signal::SIGKILL);
        let hard = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while alive(pgid) && std::time::Instant::now() < hard {
            reap(pgid);
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
    reap(pgid);
}

/// Collects the exit status if `pid` is our child (otherwise init does).
fn reap(pid: i32) {
    let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid), Some(nix::sys::wait::WaitPidFlag::WNOHANG));
}
