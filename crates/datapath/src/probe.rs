//! Kernel feature probes for host routing: loading a program that calls a helper proves the
//! helper exists, so the agent asks the verifier rather than guessing from a version number.

use aya::programs::tc::SchedClassifier;

use crate::loader::Objects;

/// What the probe found, with the reason to show in status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostRoutingProbe {
    pub supported: bool,
    pub reason: String,
}

/// Whether this kernel has bpf_redirect_peer and bpf_redirect_neigh.
pub fn probe_host_routing() -> HostRoutingProbe {
    let mut ebpf = match aya::EbpfLoader::new().btf(None).load(Objects::PROBE) {
        Ok(e) => e,
        Err(e) => return HostRoutingProbe { supported: false, reason: format!("probe object did not load: {e}") },
    };
    for (name, helper) in [("probe_redirect_peer", "bpf_redirect_peer"), ("probe_redirect_neigh", "bpf_redirect_neigh")] {
        let loaded =
            ebpf.program_mut(name).and_then(|p| <&mut SchedClassifier>::try_from(p).ok()).map(|p| p.load().map_err(|e| e.to_string()));
        match loaded {
            Some(Ok(())) => {}
            Some(Err(e)) => return HostRoutingProbe { supported: false, reason: format!("kernel lacks {helper}: {e}") },
            None => return HostRoutingProbe { supported: false, reason: format!("probe program {name} missing") },
        }
    }
    HostRoutingProbe { supported: true, reason: "kernel has bpf_redirect_peer and bpf_redirect_neigh".into() }
}
