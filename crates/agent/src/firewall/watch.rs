//! The guard's eyes: after host routing is activated, new or changed netfilter rules are
//! noticed within two seconds. nftables (and iptables-nft, which is nftables underneath) tell
//! of every change on the nfnetlink NFNLGRP_NFTABLES multicast group; iptables-legacy tells
//! nobody, so its tables are audited every second.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::Duration;

/// nfnetlink multicast group of nf_tables changes (linux/netfilter/nfnetlink.h).
const NFNLGRP_NFTABLES: u32 = 7;

/// Blocks until nf_tables reports a change, then returns; `Err` when the socket cannot be made
/// (the caller then falls back to polling every source).
pub struct NftablesNotifications {
    fd: OwnedFd,
}

impl NftablesNotifications {
    pub fn subscribe() -> std::io::Result<Self> {
        // SAFETY: plain socket(2); the descriptor is owned right away.
        let raw = unsafe { libc::socket(libc::AF_NETLINK, libc::SOCK_RAW | libc::SOCK_CLOEXEC, libc::NETLINK_NETFILTER) };
        if raw < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: raw is a new descriptor nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: sockaddr_nl is plain data; zeroed is a valid value before the fields are set.
        let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        addr.nl_family = libc::AF_NETLINK as u16;
        addr.nl_groups = 1 << (NFNLGRP_NFTABLES - 1);
        // SAFETY: addr is a valid sockaddr_nl of the size given.
        let rc = unsafe {
            libc::bind(fd.as_raw_fd(), (&addr as *const libc::sockaddr_nl).cast(), std::mem::size_of::<libc::sockaddr_nl>() as u32)
        };
        if rc < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Self { fd })
    }

    /// Waits up to `timeout` for a change; true when one came.
    pub fn wait(&self, timeout: Duration) -> bool {
        let mut pfd = libc::pollfd { fd: self.fd.as_raw_fd(), events: libc::POLLIN, revents: 0 };
        // SAFETY: one valid pollfd.
        let n = unsafe { libc::poll(&mut pfd, 1, timeout.as_millis() as i32) };
        if n <= 0 {
            return false;
        }
        // A tool's change arrives as several messages; let it settle (200 ms without news, at
        // most 1 s), then drain: one audit covers every change so far and sees a finished state.
        let settle_until = std::time::Instant::now() + Duration::from_secs(1);
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
            if more <= 0 || std::time::Instant::now() >= settle_until {
                break;
            }
        }
        true
    }
}

/// Watches for rules pod traffic would skip, from now on, in a thread of its own: a change
/// notified by nf_tables triggers a full audit at once; iptables-legacy is audited every
/// second. Each newly bypassed rule becomes a `BypassedRuleDetected` event naming it; a
/// bypassed rule that goes away, `BypassedRuleRemoved`.
pub fn spawn_guard(ctx: super::AuditContext, events: std::sync::Arc<crate::events::Events>) {
    use crate::events::Reason;
    use std::collections::BTreeMap;
    let key = |v: &sluice_netfilter::classify::Verdict| format!("{:?}|{:?}|{}|{}|{}", v.rule.backend, v.rule.family, v.rule.table, v.rule.chain, v.rule.text);
    let bypassed = move |audit: &super::Audit| -> BTreeMap<String, String> {
        audit.report.bypassed().map(|v| (key(v), super::describe(v))).collect()
    };
    let spawned = std::thread::Builder::new().name("firewall-guard".into()).spawn(move || {
        let notifications = match NftablesNotifications::subscribe() {
            Ok(n) => Some(n),
            Err(e) => {
                tracing::warn!("no nf_tables notifications ({e}); auditing every source every second");
                None
            }
        };
        let mut known = bypassed(&super::audit(&ctx, None));
        let mut legacy_known: BTreeMap<String, String> = known.iter().filter(|(k, _)| k.starts_with("IptablesLegacy")).map(|(k, v)| (k.clone(), v.clone())).collect();
        loop {
            let changed = match &notifications {
                Some(n) => n.wait(Duration::from_secs(1)),
                None => {
                    std::thread::sleep(Duration::from_secs(1));
                    true
                }
            };
            // A notification means nftables changed: audit everything. Otherwise only the
            // legacy tables, which nobody announces.
            let (now, scope): (BTreeMap<String, String>, &BTreeMap<String, String>) = if changed {
                (bypassed(&super::audit(&ctx, None)), &known)
            } else {
                (bypassed(&super::audit(&ctx, Some(super::LEGACY_SOURCES))), &legacy_known)
            };
            for (k, text) in &now {
                if !scope.contains_key(k) {
                    let _ = events.record(Reason::BypassedRuleDetected, format!("new rule that pod traffic skips under eBPF host routing: {text}"));
                }
            }
            for (k, text) in scope {
                if !now.contains_key(k) {
                    let _ = events.record(Reason::BypassedRuleRemoved, format!("rule removed: {text}"));
                }
            }
            if changed {
                legacy_known = now.iter().filter(|(k, _)| k.starts_with("IptablesLegacy")).map(|(k, v)| (k.clone(), v.clone())).collect();
                known = now;
            } else {
                known.retain(|k, _| !k.starts_with("IptablesLegacy"));
                known.extend(now.clone());
                legacy_known = now;
            }
        }
    });
    if let Err(e) = spawned {
        tracing::error!("cannot start the firewall guard: {e}");
    }
}

/// `guard: enforce`: attaches the guard program to `cgroup` (refusing iptables-legacy rule
/// installs from its processes) and turns each refusal into a `GuardBlocked` event. The guard
/// lives as long as the returned handle: it is not pinned, so enforcement ends with the agent.
pub fn enforce(cgroup: &std::path::Path, events: std::sync::Arc<crate::events::Events>) -> Result<sluice_datapath::Guard, sluice_datapath::DatapathError> {
    use crate::events::Reason;
    let mut guard = sluice_datapath::Guard::attach(cgroup)?;
    if let Some(ring) = guard.take_events() {
        let cgroup_name = cgroup.display().to_string();
        tokio::spawn(async move {
            // SAFETY: the ring buffer owns its descriptor and moves into the AsyncFd, which keeps
            // it open while registered.
            let mut fd = match unsafe { tokio::io::unix::AsyncFd::register(ring) } {
                Ok(fd) => fd,
                Err(e) => {
                    tracing::error!("cannot watch the guard's events: {e}");
                    return;
                }
            };
            loop {
                let Ok(mut ready) = fd.readable_mut().await else { return };
                let ring = ready.get_inner_mut();
                while let Some(item) = ring.next() {
                    if let Some(ev) = sluice_datapath::decode_guard_event(&item) {
                        let family = if ev.level == sluice_abi::SLUICE_SOL_IPV6 { "ip6tables" } else { "iptables" };
                        let _ = events.record(
                            Reason::GuardBlocked,
                            format!("refused an {family}-legacy rule install by {} (pid {}) in cgroup {cgroup_name}: pod traffic would skip it under eBPF host routing", ev.comm, ev.pid),
                        );
                    }
                }
                ready.clear_ready();
            }
        });
    }
    Ok(guard)
}

/// The default guarded scope: the parent of the agent's own cgroup (the node's subtree).
pub fn default_guard_cgroup() -> Option<std::path::PathBuf> {
    let own = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let rel = own.lines().find_map(|l| l.strip_prefix("0::"))?.trim().to_owned();
    let root = sluice_datapath::cgroup2_mount().ok()?;
    let own_dir = root.join(rel.trim_start_matches('/'));
    own_dir.parent().map(|p| p.to_path_buf()).filter(|p| p.starts_with(&root))
}
