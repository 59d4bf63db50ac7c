//! The service tables (`lb_*` maps) and the socket-LB programs. [`ServiceTables`] is what the
//! agent's service programmer writes through; [`ServiceMaps`] implements it on the pinned maps
//! (opened from the loaded from-pod object), [`crate::fake::FakeDatapath`] in memory.
//! [`SocketLb`] attaches `bpf/sock_lb.c`'s eight cgroup hooks to the node's cgroup.

use std::fs::File;
use std::path::{Path, PathBuf};

use aya::maps::{HashMap, MapData};
use aya::programs::cgroup_sock_addr::CgroupSockAddrLink;
use aya::programs::{CgroupAttachMode, CgroupSockAddr};
use aya::{Ebpf, EbpfLoader};
use sluice_abi::{ct_entry, ct_key, lb_backend, lb_frontend, lb_frontend_key, lb_maglev_chunk, lb_maglev_key, lb_slot_key};

use crate::loader::{ignore_missing, take_map};
use crate::{DatapathError, MapPressure};

/// Writes and reads of the service tables. Missing entries on removal are not errors.
pub trait ServiceTables: Send {
    fn frontends(&self) -> Result<Vec<(lb_frontend_key, lb_frontend)>, DatapathError>;
    fn upsert_frontend(&mut self, key: &lb_frontend_key, value: &lb_frontend) -> Result<(), DatapathError>;
    fn remove_frontend(&mut self, key: &lb_frontend_key) -> Result<(), DatapathError>;
    fn backends(&self) -> Result<Vec<(u32, lb_backend)>, DatapathError>;
    fn upsert_backend(&mut self, id: u32, value: &lb_backend) -> Result<(), DatapathError>;
    fn remove_backend(&mut self, id: u32) -> Result<(), DatapathError>;
    fn slots(&self) -> Result<Vec<(lb_slot_key, u32)>, DatapathError>;
    fn upsert_slot(&mut self, key: &lb_slot_key, backend_id: u32) -> Result<(), DatapathError>;
    fn remove_slot(&mut self, key: &lb_slot_key) -> Result<(), DatapathError>;
    fn maglev_keys(&self) -> Result<Vec<lb_maglev_key>, DatapathError>;
    fn upsert_maglev(&mut self, key: &lb_maglev_key, chunk: &lb_maglev_chunk) -> Result<(), DatapathError>;
    fn remove_maglev(&mut self, key: &lb_maglev_key) -> Result<(), DatapathError>;
    /// Every conntrack entry (for garbage collection and status).
    fn conntrack(&self) -> Result<Vec<(ct_key, ct_entry)>, DatapathError>;
    fn remove_conntrack(&mut self, key: &ct_key) -> Result<(), DatapathError>;
    /// Entries in use and capacity of the service maps.
    fn service_pressure(&self) -> Vec<MapPressure>;
}

macro_rules! pod_wrapper {
    ($($name:ident($ty:ty),)+) => {$(
        #[repr(transparent)]
        #[derive(Clone, Copy)]
        pub(crate) struct $name(pub(crate) $ty);
        // SAFETY: a plain C struct from the ABI header: integers and byte arrays with explicit
        // padding, so every bit pattern is valid and no byte is uninitialised.
        unsafe impl aya::Pod for $name {}
    )+};
}

pod_wrapper! {
    FrontendKey(lb_frontend_key),
    Frontend(lb_frontend),
    Backend(lb_backend),
    SlotKey(lb_slot_key),
    MaglevKey(lb_maglev_key),
    MaglevChunk(lb_maglev_chunk),
    CtKey(ct_key),
    CtEntry(ct_entry),
}

/// Handles to the pinned service maps.
pub struct ServiceMaps {
    frontends: HashMap<MapData, FrontendKey, Frontend>,
    backends: HashMap<MapData, u32, Backend>,
    slots: HashMap<MapData, SlotKey, u32>,
    maglev: HashMap<MapData, MaglevKey, MaglevChunk>,
    conntrack: HashMap<MapData, CtKey, CtEntry>, // an LRU hash; aya reads both kinds the same way
    conntrack_capacity: usize,
}

// === impl ServiceMaps ===

impl ServiceMaps {
    pub(crate) fn take(ebpf: &mut Ebpf, conntrack_capacity: u32) -> Result<Self, DatapathError> {
        Ok(Self {
            frontends: take_map(ebpf, "lb_frontends", HashMap::try_from)?,
            backends: take_map(ebpf, "lb_backends", HashMap::try_from)?,
            slots: take_map(ebpf, "lb_slots", HashMap::try_from)?,
            maglev: take_map(ebpf, "lb_maglev", HashMap::try_from)?,
            conntrack: take_map(ebpf, "lb_ct", HashMap::try_from)?,
            conntrack_capacity: conntrack_capacity as usize,
        })
    }
}

fn map_err(map: &'static str) -> impl Fn(aya::maps::MapError) -> DatapathError {
    move |source| DatapathError::Map { map, source: Box::new(source) }
}

impl ServiceTables for ServiceMaps {
    fn frontends(&self) -> Result<Vec<(lb_frontend_key, lb_frontend)>, DatapathError> {
        self.frontends.iter().map(|r| r.map(|(k, v)| (k.0, v.0)).map_err(map_err("lb_frontends"))).collect()
    }

    fn upsert_frontend(&mut self, key: &lb_frontend_key, value: &lb_frontend) -> Result<(), DatapathError> {
        self.frontends
            .insert(FrontendKey(*key), Frontend(*value), 0)
            .map_err(DatapathError::map_write("lb_frontends", sluice_abi::SLUICE_MAX_FRONTENDS))
    }

    fn remove_frontend(&mut self, key: &lb_frontend_key) -> Result<(), DatapathError> {
        ignore_missing(self.frontends.remove(&FrontendKey(*key)), "lb_frontends")
    }

    fn backends(&self) -> Result<Vec<(u32, lb_backend)>, DatapathError> {
        self.backends.iter().map(|r| r.map(|(k, v)| (k, v.0)).map_err(map_err("lb_backends"))).collect()
    }

    fn upsert_backend(&mut self, id: u32, value: &lb_backend) -> Result<(), DatapathError> {
        self.backends.insert(id, Backend(*value), 0).map_err(DatapathError::map_write("lb_backends", sluice_abi::SLUICE_MAX_BACKENDS))
    }

    fn remove_backend(&mut self, id: u32) -> Result<(), DatapathError> {
        ignore_missing(self.backends.remove(&id), "lb_backends")
    }

    fn slots(&self) -> Result<Vec<(lb_slot_key, u32)>, DatapathError> {
        self.slots.iter().map(|r| r.map(|(k, v)| (k.0, v)).map_err(map_err("lb_slots"))).collect()
    }

    fn upsert_slot(&mut self, key: &lb_slot_key, backend_id: u32) -> Result<(), DatapathError> {
        self.slots.insert(SlotKey(*key), backend_id, 0).map_err(DatapathError::map_write("lb_slots", sluice_abi::SLUICE_MAX_SLOTS))
    }

    fn remove_slot(&mut self, key: &lb_slot_key) -> Result<(), DatapathError> {
        ignore_missing(self.slots.remove(&SlotKey(*key)), "lb_slots")
    }

    fn maglev_keys(&self) -> Result<Vec<lb_maglev_key>, DatapathError> {
        self.maglev.keys().map(|r| r.map(|k| k.0).map_err(map_err("lb_maglev"))).collect()
    }

    fn upsert_maglev(&mut self, key: &lb_maglev_key, chunk: &lb_maglev_chunk) -> Result<(), DatapathError> {
        self.maglev
            .insert(MaglevKey(*key), MaglevChunk(*chunk), 0)
            .map_err(DatapathError::map_write("lb_maglev", sluice_abi::SLUICE_MAX_MAGLEV_CHUNKS))
    }

    fn remove_maglev(&mut self, key: &lb_maglev_key) -> Result<(), DatapathError> {
        ignore_missing(self.maglev.remove(&MaglevKey(*key)), "lb_maglev")
    }

    fn conntrack(&self) -> Result<Vec<(ct_key, ct_entry)>, DatapathError> {
        let mut out = Vec::new();
        for r in self.conntrack.iter() {
            match r {
                Ok((k, v)) => out.push((k.0, v.0)),
                // An entry evicted or collected between next-key and lookup: skip it.
                Err(aya::maps::MapError::KeyNotFound) => continue,
                Err(e) => return Err(map_err("lb_ct")(e)),
            }
        }
        Ok(out)
    }

    fn remove_conntrack(&mut self, key: &ct_key) -> Result<(), DatapathError> {
        ignore_missing(self.conntrack.remove(&CtKey(*key)), "lb_ct")
    }

    fn service_pressure(&self) -> Vec<MapPressure> {
        vec![
            MapPressure {
                map: "lb_frontends",
                entries: self.frontends.keys().count(),
                capacity: sluice_abi::SLUICE_MAX_FRONTENDS as usize,
            },
            MapPressure { map: "lb_backends", entries: self.backends.keys().count(), capacity: sluice_abi::SLUICE_MAX_BACKENDS as usize },
            MapPressure { map: "lb_slots", entries: self.slots.keys().count(), capacity: sluice_abi::SLUICE_MAX_SLOTS as usize },
            MapPressure { map: "lb_maglev", entries: self.maglev.keys().count(), capacity: sluice_abi::SLUICE_MAX_MAGLEV_CHUNKS as usize },
            MapPressure { map: "lb_ct", entries: self.conntrack.keys().count(), capacity: self.conntrack_capacity },
        ]
    }
}

/// The socket-LB programs attached to one cgroup v2 directory: every connect, sendmsg, recvmsg
/// and getpeername of its processes goes through them. Dropping it detaches them; while no
/// agent runs, the per-packet path in tc translates the pods' service traffic instead.
pub struct SocketLb {
    cgroup: PathBuf,
    // Dropped first: the attachments go before the programs and maps they refer to.
    _links: Vec<CgroupSockAddrLink>,
    _ebpf: Ebpf,
}

const SOCK_PROGRAMS: [&str; 8] = [
    "sock_connect4",
    "sock_connect6",
    "sock_sendmsg4",
    "sock_sendmsg6",
    "sock_recvmsg4",
    "sock_recvmsg6",
    "sock_getpeername4",
    "sock_getpeername6",
];

// === impl SocketLb ===

impl SocketLb {
    /// The compiled socket-LB object, embedded at build time.
    pub const OBJECT: &'static [u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/sock_lb.o"));

    /// Loads the hooks against the maps pinned in `pin_dir` and attaches them to `cgroup_dir`.
    pub fn attach(pin_dir: &Path, cgroup_dir: &Path) -> Result<SocketLb, DatapathError> {
        let cgroup =
            File::open(cgroup_dir).map_err(|e| DatapathError::os(format!("opening cgroup {} for socket LB", cgroup_dir.display()), e))?;
        let mut ebpf = EbpfLoader::new()
            .btf(None)
            .map_pin_path(pin_dir)
            .load(Self::OBJECT)
            .map_err(|source| DatapathError::Load { object: "sock_lb", source: Box::new(source) })?;
        let mut links = Vec::new();
        for name in SOCK_PROGRAMS {
            let err = |action: String| move |source| DatapathError::Program { program: name, action, source: Box::new(source) };
            let prog: &mut CgroupSockAddr = ebpf
                .program_mut(name)
                .ok_or_else(|| DatapathError::Program {
                    program: name,
                    action: "finding it in sock_lb.o".into(),
                    source: Box::new(aya::programs::ProgramError::UnexpectedProgramType),
                })?
                .try_into()
                .map_err(err("expecting a cgroup sock_addr program".into()))?;
            prog.load().map_err(err("verifying".into()))?;
            let id =
                prog.attach(&cgroup, CgroupAttachMode::default()).map_err(err(format!("attaching to cgroup {}", cgroup_dir.display())))?;
            links.push(prog.take_link(id).map_err(err("taking its link".into()))?);
        }
        Ok(SocketLb { cgroup: cgroup_dir.to_path_buf(), _links: links, _ebpf: ebpf })
    }

    /// The cgroup the hooks are attached to.
    pub fn cgroup(&self) -> &Path {
        &self.cgroup
    }
}
