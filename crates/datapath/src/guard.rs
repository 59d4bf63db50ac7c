//! The netfilter guard: with host routing, pod traffic skips the node's netfilter, so under
//! `guard: enforce` the agent refuses iptables-legacy table installs made from its own cgroup.
//! `bpf/guard.c` runs at every setsockopt there; this module attaches it and reads what it saw.

use std::ffi::OsString;
use std::fs::{self, File};
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};

use aya::maps::{MapData, PerCpuArray, RingBuf};
use aya::programs::cgroup_sockopt::CgroupSockoptLink;
use aya::programs::{CgroupAttachMode, CgroupSockopt, ProgramError};
use aya::{Ebpf, EbpfLoader};
use sluice_abi::sluice_guard_counter as Counter;

use crate::loader::take_map;
use crate::DatapathError;

const PROGRAM: &str = "guard_setsockopt";

/// A refused table install, as `guard_setsockopt` reported it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuardEvent {
    /// CLOCK_MONOTONIC nanoseconds (`bpf_ktime_get_ns`).
    pub time_ns: u64,
    /// Process id (thread group id) of the caller.
    pub pid: u32,
    /// `SLUICE_SOL_IP` (iptables) or `SLUICE_SOL_IPV6` (ip6tables).
    pub level: u32,
    /// `SLUICE_IPT_SO_SET_REPLACE`.
    pub optname: u32,
    /// The caller's command name, at most 15 bytes (`ip6tables-legacy` shows as `ip6tables-legac`).
    pub comm: String,
}

/// The guard program attached to one cgroup v2 directory; dropping it detaches the program.
pub struct Guard {
    cgroup: PathBuf,
    // Dropped first: the attachment goes before the program and maps it refers to.
    _link: CgroupSockoptLink,
    counters: PerCpuArray<MapData, u64>,
    events: Option<RingBuf<MapData>>,
    _ebpf: Ebpf,
}

// === impl Guard ===

impl Guard {
    /// The compiled guard object, embedded at build time.
    pub const OBJECT: &'static [u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/guard.o"));

    /// Loads the guard and attaches it to `cgroup_dir`, a directory of the cgroup v2 hierarchy:
    /// it then sees every setsockopt of every process in that cgroup and its descendants.
    pub fn attach(cgroup_dir: &Path) -> Result<Guard, DatapathError> {
        let cgroup = open_cgroup2(cgroup_dir)?;
        // No kernel BTF: the program uses no CO-RE relocations. Its maps are not pinned: they
        // belong to this attachment and go with it.
        let mut ebpf = EbpfLoader::new()
            .btf(None)
            .load(Self::OBJECT)
            .map_err(|source| DatapathError::Load { object: "guard", source: Box::new(source) })?;
        let err = |action: String| move |source| DatapathError::Program { program: PROGRAM, action, source: Box::new(source) };
        let prog: &mut CgroupSockopt = ebpf
            .program_mut(PROGRAM)
            .ok_or(ProgramError::UnexpectedProgramType)
            .map_err(err("finding it in its object".into()))?
            .try_into()
            .map_err(err("expecting a cgroup sockopt program".into()))?;
        prog.load().map_err(err("verifying".into()))?;
        // The default mode: a bpf_link on a cgroup always runs alongside programs attached
        // there or above (the kernel refuses the multi flag on links, which imply it).
        let id = prog
            .attach(&cgroup, CgroupAttachMode::default())
            .map_err(err(format!("attaching to cgroup {} (setsockopt)", cgroup_dir.display())))?;
        let link = prog.take_link(id).map_err(err(format!("taking the link on cgroup {}", cgroup_dir.display())))?;
        let counters = take_map(&mut ebpf, "guard_counters", PerCpuArray::try_from)?;
        let events = take_map(&mut ebpf, "guard_events", RingBuf::try_from)?;
        Ok(Guard { cgroup: cgroup_dir.to_path_buf(), _link: link, counters, events: Some(events), _ebpf: ebpf })
    }

    /// The cgroup the guard is attached to.
    pub fn cgroup(&self) -> &Path {
        &self.cgroup
    }

    /// The ring buffer of refusals (records for [`decode_guard_event`]); once: the reader owns it.
    pub fn take_events(&mut self) -> Option<RingBuf<MapData>> {
        self.events.take()
    }

    /// Table installs refused since the guard was attached, summed over CPUs.
    pub fn blocked(&self) -> Result<u64, DatapathError> {
        self.counter(Counter::SLUICE_GUARD_BLOCKED)
    }

    /// Refusals that made no event because the ring buffer was full.
    pub fn events_lost(&self) -> Result<u64, DatapathError> {
        self.counter(Counter::SLUICE_GUARD_EVENTS_LOST)
    }

    fn counter(&self, which: Counter) -> Result<u64, DatapathError> {
        let values = self
            .counters
            .get(&(which as u32), 0)
            .map_err(|source| DatapathError::Map { map: "guard_counters", source: Box::new(source) })?;
        Ok(values.iter().sum())
    }
}

/// Decodes one record of the guard's ring buffer; `None` when it is shorter than a
/// `struct guard_event`.
pub fn decode_guard_event(record: &[u8]) -> Option<GuardEvent> {
    if record.len() < std::mem::size_of::<sluice_abi::guard_event>() {
        return None;
    }
    // SAFETY: the length is checked above, read_unaligned needs no alignment, and guard_event
    // is integers and bytes only, for which every bit pattern is a valid value.
    let ev: sluice_abi::guard_event = unsafe { std::ptr::read_unaligned(record.as_ptr().cast()) };
    let comm = ev.comm.iter().position(|&b| b == 0).map_or(&ev.comm[..], |end| &ev.comm[..end]);
    Some(GuardEvent {
        time_ns: ev.timestamp_ns,
        pid: ev.pid,
        level: ev.level,
        optname: ev.optname,
        comm: String::from_utf8_lossy(comm).into_owned(),
    })
}

/// Where the cgroup v2 hierarchy is mounted, from `/proc/self/mountinfo` (a hybrid node has
/// it at `/sys/fs/cgroup/unified`, a unified one at `/sys/fs/cgroup`).
pub fn cgroup2_mount() -> Result<PathBuf, DatapathError> {
    let path = "/proc/self/mountinfo";
    let text = fs::read_to_string(path).map_err(|e| DatapathError::os(format!("reading {path}"), e))?;
    cgroup2_mount_in(&text).ok_or_else(|| {
        DatapathError::os(
            "finding the cgroup2 mount",
            std::io::Error::new(std::io::ErrorKind::NotFound, "no cgroup2 filesystem in /proc/self/mountinfo"),
        )
    })
}

/// The first cgroup2 mount point in a mountinfo text. Fields: id, parent, dev, root, mount
/// point, options, optional fields up to "-", then the filesystem type.
fn cgroup2_mount_in(mountinfo: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|line| {
        let (mount, fs) = line.split_once(" - ")?;
        if fs.split(' ').next()? != "cgroup2" {
            return None;
        }
        let mount_point = mount.split(' ').nth(4)?;
        Some(PathBuf::from(unescape_mountinfo(mount_point)))
    })
}

/// mountinfo writes space, tab, newline and backslash in paths as three octal digits (`\040`).
fn unescape_mountinfo(field: &str) -> OsString {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes.get(i + 1..i + 4).filter(|d| bytes[i] == b'\\' && d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match octal {
            Some(d) => {
                out.push((d[0] - b'0') << 6 | (d[1] - b'0') << 3 | (d[2] - b'0'));
                i += 4;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    OsString::from_vec(out)
}

/// Opens `dir` and checks it is on cgroup2: a cgroup v1 directory would only be refused by
/// the kernel with EBADF.
fn open_cgroup2(dir: &Path) -> Result<File, DatapathError> {
    let file = File::open(dir).map_err(|e| DatapathError::os(format!("opening cgroup {}", dir.display()), e))?;
    let fs = nix::sys::statfs::fstatfs(&file).map_err(|e| DatapathError::os(format!("statfs of {}", dir.display()), e))?;
    if fs.filesystem_type() != nix::sys::statfs::CGROUP2_SUPER_MAGIC {
        return Err(DatapathError::os(
            format!("attaching the guard to {}", dir.display()),
            std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a cgroup v2 directory (see cgroup2_mount)"),
        ));
    }
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_cgroup2_mount_of_a_hybrid_layout() {
        let mountinfo = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime shared:9 - cgroup2 cgroup2 rw
";
        assert_eq!(cgroup2_mount_in(mountinfo), Some(PathBuf::from("/sys/fs/cgroup/unified")), "the cgroup2 line, optional fields skipped");
    }

    #[test]
    fn unescapes_mount_points() {
        let mountinfo = "41 31 0:38 / /mnt/my\\040cgroups rw - cgroup2 none rw\n";
        assert_eq!(cgroup2_mount_in(mountinfo), Some(PathBuf::from("/mnt/my cgroups")), "\\040 is a space");
    }

    #[test]
    fn no_cgroup2_mount() {
        assert_eq!(cgroup2_mount_in("32 31 0:29 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu\n"), None, "cgroup v1 only");
    }
}
