//! The node's pin directory: a bpffs mount where maps and links outlive the agent process.

use std::path::Path;

use nix::mount::{mount, umount2, MntFlags, MsFlags};

use crate::DatapathError;

const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// Whether `dir` is on a bpffs.
pub fn is_bpffs(dir: &Path) -> bool {
    nix::sys::statfs::statfs(dir).map(|s| s.filesystem_type().0 == BPF_FS_MAGIC).unwrap_or(false)
}

/// Makes `dir` a usable pin directory: creates it and, unless it already lies on a bpffs (as a
/// sub-directory of /sys/fs/bpf does), mounts a private bpffs instance on it. When that fails,
/// the directories this call created are removed again: a failed start leaves nothing behind.
pub fn ensure_bpffs(dir: &Path) -> Result<(), DatapathError> {
    // The outermost directory this call creates, if any.
    let made_from = dir.ancestors().take_while(|a| !a.as_os_str().is_empty() && !a.exists()).last().map(Path::to_path_buf);
    let result = std::fs::create_dir_all(dir).map_err(|e| DatapathError::os(format!("creating {}", dir.display()), e)).and_then(|()| {
        if is_bpffs(dir) {
            return Ok(());
        }
        mount(Some("bpffs"), dir, Some("bpf"), MsFlags::empty(), Some("mode=0700"))
            .map_err(|e| DatapathError::os(format!("mounting bpffs on {}", dir.display()), e))
    });
    if let (Err(_), Some(top)) = (&result, &made_from) {
        // remove_dir only removes empty directories: nothing another process put there is lost.
        for made in dir.ancestors() {
            let _ = std::fs::remove_dir(made);
            if made == top {
                break;
            }
        }
    }
    result
}

/// Unmounts a bpffs mounted by [`ensure_bpffs`]; pins under it go with it. No-op when `dir` is
/// not a mount point of its own.
pub fn unmount_bpffs(dir: &Path) -> Result<(), DatapathError> {
    if !is_bpffs(dir) {
        return Ok(());
    }
    match umount2(dir, MntFlags::MNT_DETACH) {
        Ok(()) | Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => Ok(()),
        Err(e) => Err(DatapathError::os(format!("unmounting {}", dir.display()), e)),
    }
}
