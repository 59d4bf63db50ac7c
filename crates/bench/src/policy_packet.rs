//! What policy costs a packet in the datapath: the from-pod program is run in the kernel with
//! BPF_PROG_TEST_RUN, many times back to back on one established TCP segment, and the kernel's
//! mean time per run is read, for each way the sender's egress policy can answer. The datapath
//! is loaded on a private bpffs in legacy host routing (so the program leaves the packet as it
//! found it and every run sees the same bytes); nothing is attached, no packet leaves. The
//! cases with ipBlock rules show what the lookup by address adds, and the ones without show
//! that an endpoint without them pays nothing for it.

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use serde::Serialize;
use sluice_abi::{policy_endpoint, policy_entry, policy_key};
use sluice_datapath::{BpfDatapath, DatapathTables, EndpointEntry, HostRouting, Mac, PolicyTables};

use crate::{BenchError, Summary};

/// The sender: the test run's skb arrives on ifindex 1 (loopback), which this endpoint claims.
const SENDER: u32 = 1;
const RECEIVER: u32 = 2;
const SENDER_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0a];
const NODE_MAC: [u8; 6] = [0x02, 0, 0, 0, 0xee, 0x0a];
const SENDER_IP: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 10);
const RECEIVER_IP: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 11);
const SENDER_IDENTITY: u32 = 300;
const RECEIVER_IDENTITY: u32 = 301;
/// The port the sender's policy allows by identity, the one it allows by address (an ipBlock
/// holding the receiver), and one nothing allows.
const ALLOWED_PORT: u16 = 80;
const DENIED_PORT: u16 = 81;
const BLOCK_PORT: u16 = 82;
/// The ipBlock's prefix (holding both pods) and its identity.
const BLOCK: &str = "198.19.0.0/24";
const BLOCK_IDENTITY: u32 = 1 << 24;
const TC_ACT_OK: u32 = 0;
const TC_ACT_SHOT: u32 = 2;

/// One way the policy answers, and what it cost.
#[derive(Debug, Clone, Serialize)]
pub struct PacketCost {
    pub case: String,
    /// ns per packet over the samples.
    pub ns: Summary,
}

/// How a case programs the sender's policy and which packet it sends.
struct Case {
    name: &'static str,
    /// `None`: no policy selects the sender.
    egress_mode: Option<u8>,
    /// `policy_endpoint.flags`: whether the sender's egress has ipBlock rules.
    flags: u32,
    port: u16,
    want: u32,
}

fn cases() -> Vec<Case> {
    let enforce = Some(sluice_abi::SLUICE_POLICY_MODE_ENFORCE as u8);
    let blocks = sluice_abi::SLUICE_POLICY_F_EGRESS_BY_ADDRESS;
    let case = |name, egress_mode, flags, port, want| Case { name, egress_mode, flags, port, want };
    vec![
        case("no policy selects the sender", None, 0, ALLOWED_PORT, TC_ACT_OK),
        case("no ipBlock rule; allowed by the peer's identity", enforce, 0, ALLOWED_PORT, TC_ACT_OK),
        case("no ipBlock rule; denied by default", enforce, 0, DENIED_PORT, TC_ACT_SHOT),
        case("ipBlock rules; allowed by the peer's identity", enforce, blocks, ALLOWED_PORT, TC_ACT_OK),
        case("ipBlock rules; allowed by the peer's address", enforce, blocks, BLOCK_PORT, TC_ACT_OK),
        case("ipBlock rules; denied by default (both lookups miss)", enforce, blocks, DENIED_PORT, TC_ACT_SHOT),
    ]
}

/// Times every case `samples` times (cases interleaved), each sample the mean of `repeat` runs.
pub fn per_packet(samples: usize, repeat: u32) -> Result<Vec<PacketCost>, BenchError> {
    let dir = tempfile::tempdir().map_err(|e| BenchError::io("temporary directory", e))?;
    sluice_datapath::ensure_bpffs(dir.path())?;
    let result = (|| {
        let mut dp = BpfDatapath::load(dir.path(), HostRouting::Legacy)?;
        endpoints(&mut dp)?;
        let cases = cases();
        let mut times: Vec<Vec<f64>> = vec![Vec::new(); cases.len()];
        for _ in 0..samples.max(1) {
            for (case, out) in cases.iter().zip(times.iter_mut()) {
                out.push(time(&mut dp, case, repeat)?.as_nanos() as f64);
            }
        }
        cases
            .iter()
            .zip(times)
            .map(|(case, t)| {
                let ns = Summary::of(&t).ok_or_else(|| BenchError::Check("no samples".into()))?;
                Ok(PacketCost { case: case.name.to_owned(), ns })
            })
            .collect()
    })();
    let _ = sluice_datapath::unmount_bpffs(dir.path());
    result
}

fn endpoints(dp: &mut BpfDatapath) -> Result<(), BenchError> {
    for (id, ifindex, ip, identity, mac) in
        [(SENDER, 1, SENDER_IP, SENDER_IDENTITY, SENDER_MAC), (RECEIVER, 77, RECEIVER_IP, RECEIVER_IDENTITY, [0x02, 0, 0, 0, 0, 0x0b])]
    {
        dp.upsert_endpoint(&EndpointEntry {
            endpoint_id: id,
            host_ifindex: ifindex,
            host_ifname: format!("lxc{id}"),
            identity,
            ipv4: Some(ip),
            ipv6: None,
            mac: Mac(mac),
            node_mac: Mac(NODE_MAC),
        })?;
        dp.upsert_ipcache(ipnet::IpNet::from(IpAddr::V4(ip)), identity)?;
    }
    // The sender's egress allows the receiver's identity on tcp/ALLOWED_PORT and, by address,
    // the block on tcp/BLOCK_PORT.
    let egress = sluice_abi::SLUICE_POLICY_EGRESS as u8;
    let by_address = egress | sluice_abi::SLUICE_POLICY_BY_ADDRESS as u8;
    let block: ipnet::IpNet = BLOCK.parse().map_err(|e| BenchError::Check(format!("{BLOCK}: {e}")))?;
    dp.upsert_ipblock(block, BLOCK_IDENTITY)?;
    for (direction, identity, port) in [(egress, RECEIVER_IDENTITY, ALLOWED_PORT), (by_address, BLOCK_IDENTITY, BLOCK_PORT)] {
        let key = policy_key {
            prefixlen: sluice_abi::SLUICE_POLICY_FULL_BITS,
            endpoint_id: SENDER,
            identity,
            direction,
            revision: 0,
            pad: 0,
            proto: 6,
            port: port.to_be(),
            pad2: [0; 2],
        };
        dp.upsert_policy_entry(&key, &policy_entry { verdict: sluice_abi::SLUICE_POLICY_ALLOW as u8, pad: 0, proxy_port: 0, rule: 1 })?;
    }
    Ok(())
}

/// Programs the case, checks its verdict once (which also makes the flow established for an
/// allowed case), then times it.
fn time(dp: &mut BpfDatapath, case: &Case, repeat: u32) -> Result<Duration, BenchError> {
    match case.egress_mode {
        None => dp.remove_policy_endpoint(SENDER)?,
        Some(mode) => dp.upsert_policy_endpoint(
            SENDER,
            &policy_endpoint {
                ingress_mode: sluice_abi::SLUICE_POLICY_MODE_NONE as u8,
                egress_mode: mode,
                revision: 0,
                flags: case.flags as u8,
            },
        )?,
    }
    const ACK: u8 = 0x10;
    let packet = sluice_datapath::test_run::tcp_frame(SENDER_MAC, NODE_MAC, SENDER_IP.into(), RECEIVER_IP.into(), 40000, case.port, ACK)
        .ok_or_else(|| BenchError::Check("a test packet of one family".into()))?;
    let prog = dp.from_pod_program()?;
    let (verdict, _) = sluice_datapath::test_run::time(prog, &packet, 1)?;
    if verdict != case.want {
        return Err(BenchError::Check(format!("{}: the program answered {verdict}, expected {}", case.name, case.want)));
    }
    let (verdict, mean) = sluice_datapath::test_run::time(prog, &packet, repeat)?;
    if verdict != case.want {
        return Err(BenchError::Check(format!("{}: the timed runs answered {verdict}, expected {}", case.name, case.want)));
    }
    Ok(mean)
}
