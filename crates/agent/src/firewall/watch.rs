//! The guard's eyes: after host routing is activated, new or changed netfilter rules are
//! noticed within two seconds. nftables (and iptables-nft, which is nftables underneath) tell
//! of every change on the nfnetlink NFNLGRP_NFTABLES multicast group (subscribed through the
//! datapath crate, the only one that talks to the kernel); iptables-legacy tells
//! nobody, so its tables are audited every second while the namespace has any.

use std::time::Duration;

use sluice_datapath::nfnetlink::NftablesNotifications;

/// Watches for rules pod traffic would skip, from now on, in a thread of its own: a change
/// notified by nf_tables triggers a full audit at once; iptables-legacy is audited every
/// second. Each newly bypassed rule becomes a `BypassedRuleDetected` event naming it; a
/// bypassed rule that goes away, `BypassedRuleRemoved`.
pub fn spawn_guard(ctx: super::AuditContext, events: std::sync::Arc<crate::events::Events>) {
    use crate::events::Reason;
    use std::collections::BTreeMap;
    let key = |v: &sluice_netfilter::classify::Verdict| {
        format!("{:?}|{:?}|{}|{}|{}", v.rule.backend, v.rule.family, v.rule.table, v.rule.chain, v.rule.text)
    };
    let bypassed =
        move |audit: &super::Audit| -> BTreeMap<String, String> { audit.report.bypassed().map(|v| (key(v), super::describe(v))).collect() };
    let spawned = std::thread::Builder::new().name("firewall-guard".into()).spawn(move || {
        let notifications = match NftablesNotifications::subscribe() {
            Ok(n) => Some(n),
            Err(e) => {
                tracing::warn!("no nf_tables notifications ({e}); auditing every source every second");
                None
            }
        };
        let mut known = bypassed(&super::audit(&ctx, None));
        let mut legacy_known: BTreeMap<String, String> =
            known.iter().filter(|(k, _)| k.starts_with("IptablesLegacy")).map(|(k, v)| (k.clone(), v.clone())).collect();
        loop {
            let changed = match &notifications {
                Some(n) => n.wait(Duration::from_secs(1)),
                None => {
                    std::thread::sleep(Duration::from_secs(1));
                    true
                }
            };
            // A notification means nftables changed: audit everything. Otherwise only the
            // legacy tables, which nobody announces — and only when there are any: with no
            // legacy table in the namespace (none instantiated, the usual case on an nftables
            // node) and none known, nothing can have changed, and no program is started.
            if !changed && legacy_known.is_empty() && !super::legacy_tables_present() {
                continue;
            }
            let (now, scope): (BTreeMap<String, String>, &BTreeMap<String, String>) = if changed {
                (bypassed(&super::audit(&ctx, None)), &known)
            } else {
                (bypassed(&super::audit(&ctx, Some(super::LEGACY_SOURCES))), &legacy_known)
            };
            for (k, text) in &now {
                if !scope.contains_key(k) {
                    let _ = events
                        .record(Reason::BypassedRuleDetected, format!("new rule that pod traffic skips under eBPF host routing: {text}"));
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
pub fn enforce(
    cgroup: &std::path::Path,
    events: std::sync::Arc<crate::events::Events>,
) -> Result<sluice_datapath::Guard, sluice_datapath::DatapathError> {
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
