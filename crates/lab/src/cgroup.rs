//! cgroup v2 for the lab: find where the unified hierarchy is mounted (it may be a hybrid
//! layout, so never assume /sys/fs/cgroup), and make, join and remove the lab's subtrees.

use std::path::{Path, PathBuf};

use crate::LabError;

/// The cgroup2 mount point, read from /proc/self/mountinfo.
pub fn cgroup2_root() -> Result<PathBuf, LabError> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").map_err(|e| LabError::io("reading /proc/self/mountinfo", e))?;
    parse_cgroup2_root(&info).ok_or(LabError::NoCgroup2)
}

fn parse_cgroup2_root(mountinfo: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|line| {
        // fields: id parent major:minor root mountpoint options ... - fstype source superopts
        let (left, right) = line.split_once(" - ")?;
        let fstype = right.split_whitespace().next()?;
        (fstype == "cgroup2").then(|| left.split_whitespace().nth(4).map(PathBuf::from)).flatten()
    })
}

/// The lab's cgroup directory.
pub fn lab_cgroup(root: &Path, lab: &str) -> PathBuf {
    root.join("sluice").join(lab)
}

pub fn create(dir: &Path) -> Result<(), LabError> {
    std::fs::create_dir_all(dir).map_err(|e| LabError::io(format!("creating cgroup {}", dir.display()), e))
}

/// Removes a cgroup subtree, deepest first. A cgroup with live processes cannot be removed;
/// the caller stops them first.
pub fn remove_tree(dir: &Path) -> Result<(), LabError> {
    if !dir.exists() {
        return Ok(());
    }
    let entries = std::fs::read_dir(dir).map_err(|e| LabError::io(format!("reading cgroup {}", dir.display()), e))?;
    for entry in entries.flatten() {
        if entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
            remove_tree(&entry.path())?;
        }
    }
    match std::fs::remove_dir(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(LabError::io(format!("removing cgroup {}", dir.display()), e)),
    }
}

/// Pids in a cgroup (not its children).
pub fn procs(dir: &Path) -> Vec<i32> {
    std::fs::read_to_string(dir.join("cgroup.procs")).map(|s| s.lines().filter_map(|l| l.trim().parse().ok()).collect()).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_cgroup2_in_a_hybrid_layout() {
        let info = "25 30 0:22 / /sys/fs/cgroup rw - tmpfs tmpfs rw\n\
                    26 25 0:23 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n\
                    27 25 0:24 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu\n";
        assert_eq!(parse_cgroup2_root(info), Some(PathBuf::from("/sys/fs/cgroup/unified")));
    }

    #[test]
    fn finds_cgroup2_in_a_unified_layout() {
        let info = "35 24 0:30 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n";
        assert_eq!(parse_cgroup2_root(info), Some(PathBuf::from("/sys/fs/cgroup")));
    }

    #[test]
    fn no_cgroup2_is_none() {
        assert_eq!(parse_cgroup2_root("25 30 0:22 / /sys/fs/cgroup rw - tmpfs tmpfs rw\n"), None);
    }
}
