//! The XDP program of the node's uplink (`bpf/xdp_netdev.c`): the fast path of NodePort flows
//! SNAT'd to other nodes, and the optional drop of unmatched NodePort traffic. Attached native
//! where the driver allows, generic otherwise; held by the agent (not pinned): while no agent
//! runs, tc carries the same flows.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::Path;

use aya::maps::{MapData, PerCpuArray};
use aya::programs::xdp::XdpLinkId;
use aya::programs::{Xdp, XdpFlags};
use aya::{Ebpf, EbpfLoader};

use crate::{CounterValue, DatapathError};

/// How the program is attached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum XdpMode {
    /// In the driver, before an skb exists.
    Native,
    /// After the skb is made (any device; no speed-up, the same behaviour).
    Generic,
}

impl XdpMode {
    pub fn as_str(self) -> &'static str {
        match self {
            XdpMode::Native => "native",
            XdpMode::Generic => "generic",
        }
    }
}

/// What the agent asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct XdpOptions {
    /// Native if the driver takes it, else generic (`None`); or exactly this mode.
    pub mode: Option<XdpMode>,
    /// Drop packets for the NodePort range of the node's address that no frontend matches.
    pub drop_unmatched: bool,
    pub node_ports: (u16, u16),
    pub node_ipv4: Option<Ipv4Addr>,
    pub node_ipv6: Option<Ipv6Addr>,
}

#[repr(transparent)]
#[derive(Clone, Copy)]
struct Counter(sluice_abi::traffic_counter);
// SAFETY: two u64s.
unsafe impl aya::Pod for Counter {}

const PROGRAM: &str = "xdp_netdev";

/// The loaded program, its attachments and counters.
pub struct XdpNetdev {
    ebpf: Ebpf,
    links: Vec<(String, XdpLinkId, XdpMode)>,
    counters: PerCpuArray<MapData, Counter>,
}

// === impl XdpNetdev ===

impl XdpNetdev {
    pub const OBJECT: &'static [u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/xdp_netdev.o"));

    /// Loads the program against the maps pinned in `pin_dir` (the service tables).
    pub fn load(pin_dir: &Path, opts: &XdpOptions) -> Result<Self, DatapathError> {
        let v4 = opts.node_ipv4.map(|a| u32::from_ne_bytes(a.octets())).unwrap_or(0);
        let v6 = opts.node_ipv6.map(|a| a.octets()).unwrap_or_default();
        let w = |i: usize| u32::from_ne_bytes([v6[i * 4], v6[i * 4 + 1], v6[i * 4 + 2], v6[i * 4 + 3]]);
        let (w0, w1, w2, w3) = (w(0), w(1), w(2), w(3));
        let drop = u32::from(opts.drop_unmatched);
        let (lo, hi) = (u32::from(opts.node_ports.0), u32::from(opts.node_ports.1));
        let mut ebpf = EbpfLoader::new()
            .btf(None)
            .map_pin_path(pin_dir)
            .set_global("CONFIG_NODE_IPV4", &v4, true)
            .set_global("CONFIG_NODE_IPV6_0", &w0, true)
            .set_global("CONFIG_NODE_IPV6_1", &w1, true)
            .set_global("CONFIG_NODE_IPV6_2", &w2, true)
            .set_global("CONFIG_NODE_IPV6_3", &w3, true)
            .set_global("CONFIG_XDP_DROP_UNMATCHED", &drop, true)
            .set_global("CONFIG_NODEPORT_MIN", &lo, true)
            .set_global("CONFIG_NODEPORT_MAX", &hi, true)
            .load(Self::OBJECT)
            .map_err(|source| DatapathError::Load { object: PROGRAM, source: Box::new(source) })?;
        program_mut(&mut ebpf)?.load().map_err(prog_err("verifying"))?;
        let counters = crate::loader::take_map(&mut ebpf, "xdp_counters", PerCpuArray::try_from)?;
        Ok(Self { ebpf, links: Vec::new(), counters })
    }

    /// Attaches to `ifname`: in `mode`, or native with a fall-back to generic.
    pub fn attach(&mut self, ifname: &str, mode: Option<XdpMode>) -> Result<XdpMode, DatapathError> {
        let prog = program_mut(&mut self.ebpf)?;
        let tries: &[XdpMode] = match mode {
            Some(m) => {
                if m == XdpMode::Native {
                    &[XdpMode::Native]
                } else {
                    &[XdpMode::Generic]
                }
            }
            None => &[XdpMode::Native, XdpMode::Generic],
        };
        let mut last = None;
        for m in tries {
            let flags = match m {
                XdpMode::Native => XdpFlags::DRV_MODE,
                XdpMode::Generic => XdpFlags::SKB_MODE,
            };
            match prog.attach(ifname, flags) {
                Ok(id) => {
                    self.links.push((ifname.to_string(), id, *m));
                    return Ok(*m);
                }
                Err(e) => {
                    tracing::debug!(ifname, mode = m.as_str(), "XDP attach refused: {e}");
                    last = Some(e);
                }
            }
        }
        Err(DatapathError::Program {
            program: PROGRAM,
            action: format!("attaching to {ifname}"),
            source: Box::new(last.unwrap_or(aya::programs::ProgramError::UnexpectedProgramType)),
        })
    }

    /// Where the program is attached and how.
    pub fn attachments(&self) -> Vec<(String, XdpMode)> {
        self.links.iter().map(|(i, _, m)| (i.clone(), *m)).collect()
    }

    /// Packets handled in XDP, indexed by `sluice_xdp_counter`, summed over CPUs.
    pub fn counters(&self) -> Result<Vec<CounterValue>, DatapathError> {
        let mut out = Vec::new();
        for values in self.counters.iter() {
            let values = values.map_err(|source| DatapathError::Map { map: "xdp_counters", source: Box::new(source) })?;
            let mut total = CounterValue::default();
            for v in values.iter() {
                total.packets += v.0.packets;
                total.bytes += v.0.bytes;
            }
            out.push(total);
        }
        Ok(out)
    }

    /// The loaded program, for BPF_PROG_RUN tests.
    pub fn program(&self) -> Result<&Xdp, DatapathError> {
        let prog = self.ebpf.program(PROGRAM).ok_or_else(missing)?;
        prog.try_into().map_err(prog_err("expecting an XDP program"))
    }
}

fn program_mut(ebpf: &mut Ebpf) -> Result<&mut Xdp, DatapathError> {
    let prog = ebpf.program_mut(PROGRAM).ok_or_else(missing)?;
    prog.try_into().map_err(prog_err("expecting an XDP program"))
}

fn missing() -> DatapathError {
    DatapathError::Program {
        program: PROGRAM,
        action: "finding it in its object".into(),
        source: Box::new(aya::programs::ProgramError::UnexpectedProgramType),
    }
}

fn prog_err(action: &'static str) -> impl Fn(aya::programs::ProgramError) -> DatapathError {
    move |source| DatapathError::Program { program: PROGRAM, action: action.into(), source: Box::new(source) }
}
