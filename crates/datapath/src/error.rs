//! Errors of the datapath crate. Syscall failures keep their source and say what was being done.
//! Library errors are boxed: aya's are large, and every Result of this crate would carry them.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum DatapathError {
    /// A BPF object could not be loaded; the verifier log is in the source.
    #[error("loading BPF object {object}: {source}")]
    Load {
        object: &'static str,
        #[source]
        source: Box<aya::EbpfError>,
    },
    /// A program was rejected by the verifier or could not be attached.
    #[error("program {program}: {action}: {source}")]
    Program {
        program: &'static str,
        action: String,
        #[source]
        source: Box<aya::programs::ProgramError>,
    },
    /// A map is missing from an object or has another shape than the ABI says.
    #[error("map {map}: {source}")]
    Map {
        map: &'static str,
        #[source]
        source: Box<aya::maps::MapError>,
    },
    /// A map of fixed capacity has no room for another key: every entry is in use. What it
    /// holds is unchanged; an existing key can still be rewritten.
    #[error("map {map} is full: all {capacity} entries are in use, nothing new can be written until entries are removed")]
    MapFull { map: &'static str, capacity: usize },
    /// A link pin could not be created, opened or removed.
    #[error("link pin {path}: {message}")]
    LinkPin { path: PathBuf, message: String },
    /// A netlink request failed.
    #[error("netlink: {action}: {source}")]
    Netlink {
        action: String,
        #[source]
        source: Box<rtnetlink::Error>,
    },
    /// A named interface does not exist.
    #[error("interface {0} not found")]
    NoSuchInterface(String),
    /// A system call outside netlink and bpf failed (netns, mount, sysctl, ...).
    #[error("{action}: {source}")]
    Os {
        action: String,
        #[source]
        source: std::io::Error,
    },
}

impl DatapathError {
    pub(crate) fn os(action: impl Into<String>, source: impl Into<std::io::Error>) -> Self {
        Self::Os { action: action.into(), source: source.into() }
    }

    /// The error of a write to `map`: a full map (hash maps answer E2BIG, LPM tries ENOSPC) says
    /// so with its capacity; anything else is kept as it came.
    pub(crate) fn map_write(map: &'static str, capacity: u32) -> impl Fn(aya::maps::MapError) -> Self {
        move |source| match &source {
            aya::maps::MapError::SyscallError(e) if matches!(e.io_error.raw_os_error(), Some(libc::E2BIG | libc::ENOSPC)) => {
                Self::MapFull { map, capacity: capacity as usize }
            }
            _ => Self::Map { map, source: Box::new(source) },
        }
    }

    pub(crate) fn netlink(action: impl Into<String>, source: rtnetlink::Error) -> Self {
        Self::Netlink { action: action.into(), source: Box::new(source) }
    }
}
