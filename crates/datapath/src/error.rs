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

    pub(crate) fn netlink(action: impl Into<String>, source: rtnetlink::Error) -> Self {
        Self::Netlink { action: action.into(), source: Box::new(source) }
    }
}
