//! The counters the checks read to prove a configuration is what it claims: the node's IPv4
//! forwarding counter, Sluice's own redirect counter, the packet counters of kube-proxy's
//! jumps, and the interface counters of the direct pair.

use std::path::Path;

use crate::process::in_netns;
use crate::BenchError;

/// IpForwDatagrams of the namespace at `netns`: datagrams its IP stack forwarded.
pub async fn ip_forwarded(netns: &Path) -> Result<u64, BenchError> {
    let snmp = in_netns(netns, || read("/proc/thread-self/net/snmp")).await?;
    snmp_counter(&snmp, "Ip:", "ForwDatagrams")
        .ok_or_else(|| BenchError::Check(format!("no Ip ForwDatagrams in /proc/net/snmp of {}", netns.display())))
}

/// (received, sent) packets of interface `ifname` in the namespace at `netns`.
pub async fn link_packets(netns: &Path, ifname: &str) -> Result<(u64, u64), BenchError> {
    let dev = in_netns(netns, || read("/proc/thread-self/net/dev")).await?;
    dev_packets(&dev, ifname).ok_or_else(|| BenchError::Check(format!("no interface {ifname} in {}", netns.display())))
}

/// Packets the node's datapath forwarded for `reason` ("local endpoint": delivered straight to
/// a pod with `bpf_redirect_peer`; "fib redirect": handed to a link), from the agent's status.
pub async fn sluice_forwards(socket: &Path, reason: &str) -> Result<u64, BenchError> {
    let status: sluice_api::Status = sluice_api::Client::new(socket).get(sluice_api::paths::STATUS).await?;
    status
        .forwards
        .iter()
        .find(|f| f.reason == reason)
        .map(|f| f.packets)
        .ok_or_else(|| BenchError::Check(format!("the agent's status lists no \"{reason}\" forwards")))
}

/// Packets the node's datapath dropped by policy (ingress and egress).
pub async fn sluice_policy_drops(socket: &Path) -> Result<u64, BenchError> {
    let status: sluice_api::Status = sluice_api::Client::new(socket).get(sluice_api::paths::STATUS).await?;
    Ok(status.drops.iter().filter(|d| d.reason.starts_with("policy denied")).map(|d| d.packets).sum())
}

/// CPU time (user + system) process `pid` has used, in ms. /proc/PID/stat counts in USER_HZ,
/// which Linux fixes at 100 for user space.
pub fn process_cpu_ms(pid: i32) -> Result<u64, BenchError> {
    let stat = read(&format!("/proc/{pid}/stat"))?;
    cpu_ticks(&stat).map(|ticks| ticks * 10).ok_or_else(|| BenchError::Check(format!("unreadable /proc/{pid}/stat")))
}

/// utime + stime: fields 14 and 15 of /proc/PID/stat, counted after the command name.
fn cpu_ticks(stat: &str) -> Option<u64> {
    let (_, rest) = stat.rsplit_once(") ")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state).
    Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
}

/// (busy, all) CPU time of the whole machine in USER_HZ ticks (1/100 s), from the `cpu` line
/// of /proc/stat. Busy is user, nice, system, irq and softirq; idle, iowait and steal (time
/// the hypervisor gave to others) are not. Guest time is already inside user.
pub fn machine_cpu_ticks() -> Result<(u64, u64), BenchError> {
    let stat = read("/proc/stat")?;
    cpu_line_ticks(&stat).ok_or_else(|| BenchError::Check("no cpu line in /proc/stat".into()))
}

fn cpu_line_ticks(stat: &str) -> Option<(u64, u64)> {
    let line = stat.lines().find_map(|l| l.strip_prefix("cpu "))?;
    let v: Vec<u64> = line.split_whitespace().map(|f| f.parse().ok()).collect::<Option<_>>()?;
    // user nice system idle iowait irq softirq steal [guest guest_nice]
    let busy = v.first()? + v.get(1)? + v.get(2)? + v.get(5)? + v.get(6)?;
    let all = v.iter().take(8).sum();
    Some((busy, all))
}

fn read(path: &str) -> Result<String, BenchError> {
    std::fs::read_to_string(path).map_err(|e| BenchError::io(format!("reading {path}"), e))
}

/// A counter of /proc/net/snmp, where each protocol has a line of names then a line of values.
fn snmp_counter(snmp: &str, protocol: &str, name: &str) -> Option<u64> {
    let mut lines = snmp.lines().filter(|l| l.starts_with(protocol));
    let (names, values) = (lines.next()?, lines.next()?);
    let index = names.split_whitespace().position(|n| n == name)?;
    values.split_whitespace().nth(index)?.parse().ok()
}

/// (rx packets, tx packets) of an interface in /proc/net/dev.
fn dev_packets(dev: &str, ifname: &str) -> Option<(u64, u64)> {
    let line = dev.lines().find_map(|l| l.trim_start().strip_prefix(ifname)?.strip_prefix(':'))?;
    let fields: Vec<u64> = line.split_whitespace().filter_map(|f| f.parse().ok()).collect();
    // rx: bytes packets errs drop fifo frame compressed multicast; tx: bytes packets ...
    Some((*fields.get(1)?, *fields.get(9)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn busy_cpu_is_user_nice_system_irq_softirq() {
        let stat = "cpu  100 5 50 1000 7 3 2 9 4 0\ncpu0 50 2 25 500 3 1 1 4 2 0\nintr 1 2 3\n";
        assert_eq!(cpu_line_ticks(stat), Some((100 + 5 + 50 + 3 + 2, 100 + 5 + 50 + 1000 + 7 + 3 + 2 + 9)));
        assert_eq!(cpu_line_ticks("cpu0 1 2 3\n"), None, "only the machine-wide line counts");
    }

    #[test]
    fn forwarded_datagrams_come_from_the_ip_lines() {
        let snmp =
            "Ip: Forwarding DefaultTTL InReceives InHdrErrors InAddrErrors ForwDatagrams\nIp: 1 64 100 0 0 42\nIcmp: InMsgs\nIcmp: 3\n";
        assert_eq!(snmp_counter(snmp, "Ip:", "ForwDatagrams"), Some(42));
        assert_eq!(snmp_counter(snmp, "Ip:", "Missing"), None);
    }

    #[test]
    fn cpu_time_is_user_plus_system() {
        let stat = "1234 (sluice agent) S 1 1234 1234 0 -1 4194560 500 0 0 0 70 30 0 0 20 0 4 0 100 0 0";
        assert_eq!(cpu_ticks(stat), Some(100), "70 user + 30 system ticks");
    }

    #[test]
    fn interface_packets_are_the_second_and_tenth_numbers() {
        let dev = "Inter-|   Receive |  Transmit\n face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed\n    lo: 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0\n  eth0: 1000 7 0 0 0 0 0 0 2000 9 0 0 0 0 0 0\n";
        assert_eq!(dev_packets(dev, "eth0"), Some((7, 9)));
        assert_eq!(dev_packets(dev, "eth1"), None);
    }
}
