//! BPF_PROG_TEST_RUN: run a loaded program on a packet built in memory and read back the
//! verdict and the packet it left, or time it over many runs. aya does not wrap this command,
//! so it is issued here.

use std::net::IpAddr;
use std::os::fd::{AsFd, AsRawFd};
use std::time::Duration;

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
    run_fd(fd.as_fd().as_raw_fd(), packet, 1).map(|(run, _)| run)
}

/// Runs `prog` `repeat` times back to back on one skb built from `packet` and returns the
/// verdict of the last run and the kernel's mean time per run (whole nanoseconds). The skb is
/// not rebuilt between runs: a program that rewrites the packet sees its own rewrite next time.
pub fn time(prog: &SchedClassifier, packet: &[u8], repeat: u32) -> Result<(u32, Duration), DatapathError> {
    let fd = prog.fd().map_err(|source| DatapathError::Program {
        program: "test run",
        action: "getting its fd".into(),
        source: Box::new(source),
    })?;
    run_fd(fd.as_fd().as_raw_fd(), packet, repeat.max(1)).map(|(run, mean)| (run.verdict, mean))
}

/// As [`run`], for an XDP program (the verdict is an XDP action).
pub fn run_xdp(prog: &aya::programs::Xdp, packet: &[u8]) -> Result<TestRun, DatapathError> {
    let fd = prog.fd().map_err(|source| DatapathError::Program {
        program: "test run",
        action: "getting its fd".into(),
        source: Box::new(source),
    })?;
    run_fd(fd.as_fd().as_raw_fd(), packet, 1).map(|(run, _)| run)
}

fn run_fd(fd: i32, packet: &[u8], repeat: u32) -> Result<(TestRun, Duration), DatapathError> {
    let mut out = vec![0u8; packet.len() + 256];
    let mut attr = TestAttr {
        prog_fd: fd as u32,
        data_size_in: packet.len() as u32,
        data_size_out: out.len() as u32,
        data_in: packet.as_ptr() as u64,
        data_out: out.as_mut_ptr() as u64,
        repeat,
        ..Default::default()
    };
    // SAFETY: attr is a valid bpf_attr prefix for BPF_PROG_TEST_RUN; the input and output
    // buffers outlive the call and their sizes are given.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, BPF_PROG_TEST_RUN, &mut attr as *mut TestAttr, std::mem::size_of::<TestAttr>()) };
    if rc < 0 {
        return Err(DatapathError::os("BPF_PROG_TEST_RUN", std::io::Error::last_os_error()));
    }
    out.truncate(attr.data_size_out as usize);
    Ok((TestRun { verdict: attr.retval, packet: out }, Duration::from_nanos(u64::from(attr.duration))))
}

/// An Ethernet frame with a TCP segment (no options, no payload, checksums zero: the datapath
/// does not verify them) over IPv4 or IPv6; `None` when the addresses' families differ.
pub fn tcp_frame(src_mac: [u8; 6], dst_mac: [u8; 6], src: IpAddr, dst: IpAddr, sport: u16, dport: u16, flags: u8) -> Option<Vec<u8>> {
    let mut tcp = [0u8; 20];
    tcp[0..2].copy_from_slice(&sport.to_be_bytes());
    tcp[2..4].copy_from_slice(&dport.to_be_bytes());
    tcp[12] = 0x50;
    tcp[13] = flags;
    let mut p = Vec::with_capacity(14 + 40 + tcp.len());
    p.extend_from_slice(&dst_mac);
    p.extend_from_slice(&src_mac);
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            p.extend_from_slice(&0x0800u16.to_be_bytes());
            p.extend_from_slice(&[0x45, 0]);
            p.extend_from_slice(&(20 + tcp.len() as u16).to_be_bytes());
            p.extend_from_slice(&[0, 0, 0x40, 0, 64, 6, 0, 0]);
            p.extend_from_slice(&s.octets());
            p.extend_from_slice(&d.octets());
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            p.extend_from_slice(&0x86ddu16.to_be_bytes());
            p.extend_from_slice(&[0x60, 0, 0, 0]);
            p.extend_from_slice(&(tcp.len() as u16).to_be_bytes());
            p.extend_from_slice(&[6, 64]);
            p.extend_from_slice(&s.octets());
            p.extend_from_slice(&d.octets());
        }
        _ => return None,
    }
    p.extend_from_slice(&tcp);
    Some(p)
}
