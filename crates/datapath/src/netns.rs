//! Network namespaces: entering one on the current thread for a few synchronous calls (netlink
//! sockets and sysctl files bind to the namespace they are opened in), and named namespaces
//! under /run/netns as `ip netns` makes them, for the lab.

use std::fs::File;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{setns, unshare, CloneFlags};

use crate::DatapathError;

/// Where named namespaces live, as for iproute2.
pub const NETNS_RUN_DIR: &str = "/run/netns";

/// Restores the thread's original network namespace when dropped.
pub struct NetnsGuard {
    original: File,
}

// === impl NetnsGuard ===

impl NetnsGuard {
    /// Moves the calling thread into the namespace at `path`. Hold the guard only across
    /// synchronous code: an `.await` could resume on another thread.
    pub fn enter(path: &Path) -> Result<Self, DatapathError> {
        let original = File::open("/proc/thread-self/ns/net").map_err(|e| DatapathError::os("opening current netns", e))?;
        let target = File::open(path).map_err(|e| DatapathError::os(format!("opening netns {}", path.display()), e))?;
        setns(target.as_fd(), CloneFlags::CLONE_NEWNET).map_err(|e| DatapathError::os(format!("entering netns {}", path.display()), e))?;
        Ok(Self { original })
    }
}

impl Drop for NetnsGuard {
    fn drop(&mut self) {
        if let Err(e) = setns(self.original.as_fd(), CloneFlags::CLONE_NEWNET) {
            // Continuing in the wrong namespace would program the wrong node; stop instead.
            tracing::error!("cannot return to the original network namespace: {e}");
            std::process::abort();
        }
    }
}

/// Path of a named namespace.
pub fn named_netns_path(name: &str) -> PathBuf {
    Path::new(NETNS_RUN_DIR).join(name)
}

/// Creates a named namespace (`ip netns add NAME`): a new namespace bind-mounted on
/// /run/netns/NAME so it outlives the thread that made it. Fails when it exists.
pub fn create_named_netns(name: &str) -> Result<PathBuf, DatapathError> {
    std::fs::create_dir_all(NETNS_RUN_DIR).map_err(|e| DatapathError::os(format!("creating {NETNS_RUN_DIR}"), e))?;
    share_run_dir()?;
    let path = named_netns_path(name);
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&path)
        .map_err(|e| DatapathError::os(format!("creating {}", path.display()), e))?;
    let target = path.clone();
    // A fresh thread, so unshare() changes nothing but that thread.
    let made = std::thread::spawn(move || -> Result<(), DatapathError> {
        unshare(CloneFlags::CLONE_NEWNET).map_err(|e| DatapathError::os("unshare(CLONE_NEWNET)", e))?;
        mount(Some("/proc/thread-self/ns/net"), &target, None::<&str>, MsFlags::MS_BIND, None::<&str>)
            .map_err(|e| DatapathError::os(format!("bind-mounting netns on {}", target.display()), e))
    })
    .join();
    let result = match made {
        Ok(r) => r,
        Err(_) => Err(DatapathError::os("creating netns", std::io::Error::other("thread panicked"))),
    };
    if let Err(e) = result {
        let _ = std::fs::remove_file(&path);
        return Err(e);
    }
    Ok(path)
}

/// Makes /run/netns a shared mount point before a namespace is bound in it, as `ip netns add`
/// does (make it shared; when it is not a mount point, bind it on itself first). Without this,
/// a namespace bound while /run/netns is a plain directory sits on the parent mount; when
/// `ip netns` (or anything) later bind-mounts /run/netns on itself, the binding is copied
/// over it, and deleting the namespace unmounts the copy only: the file stays busy and the
/// namespace leaks. On a fresh machine /run/netns starts as a plain directory.
fn share_run_dir() -> Result<(), DatapathError> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one_at_a_time = LOCK.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let share = || mount(None::<&str>, NETNS_RUN_DIR, Some("none"), MsFlags::MS_SHARED | MsFlags::MS_REC, None::<&str>);
    match share() {
        Ok(()) => return Ok(()),
        Err(nix::errno::Errno::EINVAL) => {}
        Err(e) => return Err(DatapathError::os(format!("making {NETNS_RUN_DIR} a shared mount"), e)),
    }
    mount(Some(NETNS_RUN_DIR), NETNS_RUN_DIR, Some("none"), MsFlags::MS_BIND | MsFlags::MS_REC, None::<&str>)
        .map_err(|e| DatapathError::os(format!("bind-mounting {NETNS_RUN_DIR} on itself"), e))?;
    share().map_err(|e| DatapathError::os(format!("making {NETNS_RUN_DIR} a shared mount"), e))
}

/// Deletes a named namespace (`ip netns del NAME`); the namespace itself goes when its last
/// process leaves. Succeeds when it does not exist.
pub fn delete_named_netns(name: &str) -> Result<(), DatapathError> {
    let path = named_netns_path(name);
    if !path.exists() {
        return Ok(());
    }
    match umount2(&path, MntFlags::MNT_DETACH) {
        Ok(()) | Err(nix::errno::Errno::EINVAL) => {}
        Err(e) => return Err(DatapathError::os(format!("unmounting {}", path.display()), e)),
    }
    std::fs::remove_file(&path).map_err(|e| DatapathError::os(format!("removing {}", path.display()), e))
}

/// Writes a sysctl of the current thread's network namespace (`net/ipv4/ip_forward`, ...).
pub fn write_sysctl(key: &str, value: &str) -> Result<(), DatapathError> {
    let path = Path::new("/proc/sys").join(key);
    std::fs::write(&path, value).map_err(|e| DatapathError::os(format!("writing {}", path.display()), e))
}
