//! nf_tables change notifications: a netlink socket subscribed to the nfnetlink
//! NFNLGRP_NFTABLES multicast group, on which the kernel announces every nftables (and
//! iptables-nft) ruleset change. The agent's firewall guard waits on it to re-audit at once.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use crate::DatapathError;

/// nfnetlink multicast group of nf_tables changes (linux/netfilter/nfnetlink.h).
const NFNLGRP_NFTABLES: u32 = 7;

/// A subscription to nf_tables change notifications in the calling thread's network namespace.
pub struct NftablesNotifications {
    fd: OwnedFd,
}

// === impl NftablesNotifications ===

impl NftablesNotifications {
    /// Opens the socket and joins the group; fails where the kernel has no nfnetlink (the
    /// caller then has to poll the rulesets instead).
    pub fn subscribe() -> Result<Self, DatapathError> {
        // SAFETY: plain socket(2); the descriptor is owned right away.
        let raw = unsafe { libc::socket(libc::AF_NETLINK, libc::SOCK_RAW | libc::SOCK_CLOEXEC, libc::NETLINK_NETFILTER) };
        if raw < 0 {
            return Err(DatapathError::os("opening an nfnetlink socket", std::io::Error::last_os_error()));
        }
        // SAFETY: raw is a new descriptor nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: sockaddr_nl is plain data; zeroed is a valid value before the fields are set.
        let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        addr.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        addr.nl_groups = 1 << (NFNLGRP_NFTABLES - 1);
        // SAFETY: addr is a valid sockaddr_nl of the size given.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&addr as *const libc::sockaddr_nl).cast(),
                std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        if rc < 0 {
            return Err(DatapathError::os("joining the nfnetlink NFNLGRP_NFTABLES group", std::io::Error::last_os_error()));
        }
        Ok(Self { fd })
    }

    /// Blocks up to `timeout` for a change; true when one came. A tool's change arrives as
    /// several messages, so after the first this lets it settle (200 ms without news, at most
    /// 1 s) and drains the socket: one audit then covers every change so far and sees a
    /// finished state.
    pub fn wait(&self, timeout: Duration) -> bool {
        let millis = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
        let mut pfd = libc::pollfd { fd: self.fd.as_raw_fd(), events: libc::POLLIN, revents: 0 };
        // SAFETY: one valid pollfd.
        let n = unsafe { libc::poll(&mut pfd, 1, millis) };
        if n <= 0 {
            return false;
        }
        let settle_until = Instant::now() + Duration::from_secs(1);
        let mut buf = [0u8; 16384];
        loop {
            loop {
                // SAFETY: reading into a buffer of the size given.
                let r = unsafe { libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT) };
                if r <= 0 {
                    break;
                }
            }
            let mut pfd = libc::pollfd { fd: self.fd.as_raw_fd(), events: libc::POLLIN, revents: 0 };
            // SAFETY: one valid pollfd.
            let more = unsafe { libc::poll(&mut pfd, 1, 200) };
            if more <= 0 || Instant::now() >= settle_until {
                break;
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// In a network namespace of its own (so no rule of the machine is touched and no other
    /// test's change is seen), a table added with `nft` is announced, and silence is not.
    #[test]
    fn announces_an_nftables_change() {
        if !crate::testing::require_root("nfnetlink::announces_an_nftables_change") {
            return;
        }
        // The namespace belongs to this thread only; `nft` forked from it runs there too.
        std::thread::spawn(|| {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).expect("a network namespace of its own");
            let notifications = NftablesNotifications::subscribe().expect("subscribed to NFNLGRP_NFTABLES");
            assert!(!notifications.wait(Duration::from_millis(50)), "no change announced while nothing changes");
            let added = match std::process::Command::new("nft").args(["add", "table", "inet", "sluice_nfnetlink_test"]).status() {
                Ok(status) => status,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    eprintln!("SKIPPED the change half: nft is not installed");
                    return;
                }
                Err(e) => panic!("running nft: {e}"),
            };
            assert!(added.success(), "nft adds a table in the test's namespace");
            assert!(notifications.wait(Duration::from_secs(2)), "the new table is announced");
        })
        .join()
        .expect("the test thread finishes");
    }
}
