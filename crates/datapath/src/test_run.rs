//! BPF_PROG_TEST_RUN: run a loaded program on a packet built in memory and read back the
//! verdict and the packet it left. aya does not wrap this command, so it is issued here.

use std::os::fd::{AsFd, AsRawFd};

use aya::programs::tc::SchedClassifier;

use crate::DatapathError;

/// Result of one run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TestRun {
    /// The program's return value (a tc verdict).
    pub verdict: u32,
    /// The packet after the program ran.
    pub packet: Vec<u8>,
}

/// The `test` member of `union bpf_attr` (include/uapi/linux/bpf.h).
#[repr(C)]
#[derive(Default)]
struct TestAttr {
    prog_fd: u32,
    retval: u32,
    data_size_in: u32,
    data_size_out: u32,
    data_in: u64,
    data_out: u64,
    repeat: u32,
    duration: u32,
    ctx_size_in: u32,
    ctx_size_out: u32,
    ctx_in: u64,
    ctx_out: u64,
    flags: u32,
    cpu: u32,
    batch_size: u32,
    _pad: u32,
}

const BPF_PROG_TEST_RUN: libc::c_long = 10;

/// Runs `prog` once on `packet` (an Ethernet frame). The skb's device is the loopback device
/// of the calling thread's namespace, so `skb->ifindex` is 1.
pub fn run(prog: &SchedClassifier, packet: &[u8]) -> Result<TestRun, DatapathError> {
    let fd = prog.fd().map_err(|source| DatapathError::Program {
        program: "test run",
        action: "getting its fd".into(),
        source: Box::new(source),
    })?;
    run_fd(fd.as_fd().as_raw_fd(), packet)
}

/// As [`run`], for an XDP program (the verdict is an XDP action).
pub fn run_xdp(prog: &aya::programs::Xdp, packet: &[u8]) -> Result<TestRun, DatapathError> {
    let fd = prog.fd().map_err(|source| DatapathError::Program {
        program: "test run",
        action: "getting its fd".into(),
        source: Box::new(source),
    })?;
    run_fd(fd.as_fd().as_raw_fd(), packet)
}

fn run_fd(fd: i32, packet: &[u8]) -> Result<TestRun, DatapathError> {
    let mut out = vec![0u8; packet.len() + 256];
    let mut attr = TestAttr {
        prog_fd: fd as u32,
        data_size_in: packet.len() as u32,
        data_size_out: out.len() as u32,
        data_in: packet.as_ptr() as u64,
        data_out: out.as_mut_ptr() as u64,
        repeat: 1,
        ..Default::default()
    };
    // SAFETY: attr is a valid bpf_attr prefix for BPF_PROG_TEST_RUN; the input and output
    // buffers outlive the call and their sizes are given.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, BPF_PROG_TEST_RUN, &mut attr as *mut TestAttr, std::mem::size_of::<TestAttr>()) };
    if rc < 0 {
        return Err(DatapathError::os("BPF_PROG_TEST_RUN", std::io::Error::last_os_error()));
    }
    out.truncate(attr.data_size_out as usize);
    Ok(TestRun { verdict: attr.retval, packet: out })
}
