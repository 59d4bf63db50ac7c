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
/// sub-directory of /sys/fs/bpf does), mounts a private bpffs instance on it.
pub fn ensure_bpffs(dir: &Path) -> Result<(), DatapathError> {
    std::fs::create_dir_all(dir).map_err(|e| DatapathError::os(format!("creating {}", dir.display()), e))?;
    if is_bpffs(dir) {
        return Ok(());
    }
    mount(Some("bpffs"), dir, Some("bpf"), MsFlags::empty(), Some("mode=0700"))
        .map_err(|e| DatapathError::os(format!("mounting bpffs on {}", dir.display()), e))
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
