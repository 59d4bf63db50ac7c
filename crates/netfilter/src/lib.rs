//! Which of a node's netfilter rules would eBPF host routing silently skip for pod traffic?
//!
//! In Sluice's `bpf` host routing mode, pod traffic is redirected at tc ingress and never passes
//! the node's PREROUTING, FORWARD and POSTROUTING hooks, so an operator's `-A FORWARD -s
//! <pod CIDR> -j DROP` or a DNAT to a pod would stop applying without a word. This crate reads
//! what `iptables-save`, `ip6tables-save` and `nft -j list ruleset` print ([`iptables`],
//! [`nft`]), and sorts every rule into owned by Sluice, harmless, kube-proxy's, or bypassed,
//! with the reason ([`mod@classify`]). Pure code: callers run the tools and hand in their output.
//!
//! ```
//! use sluice_netfilter::{classify::{Class, Context, Report}, iptables, model::Family};
//!
//! let saved = "\
//! *filter
//! :INPUT ACCEPT [0:0]
//! :FORWARD ACCEPT [0:0]
//! :OUTPUT ACCEPT [0:0]
//! -A FORWARD -i docker0 -j DROP
//! -A FORWARD -s 10.244.0.0/16 -j DROP
//! COMMIT
//! ";
//! let ruleset = iptables::parse(saved, Family::Ipv4)?;
//! let ctx = Context::new(vec!["10.244.1.0/24".parse()?], vec!["eth0".into()]);
//! let report = Report::new(&ruleset, &ctx);
//! assert!(!report.clean());
//! let bypassed: Vec<_> = report.bypassed().collect();
//! assert_eq!(bypassed.len(), 1);
//! assert_eq!(bypassed[0].rule.text, "-A FORWARD -s 10.244.0.0/16 -j DROP");
//! assert!(bypassed[0].reason.contains("skips FORWARD, so this DROP would no longer apply"));
//! assert_eq!(report.verdicts[0].class, Class::Harmless); // -i docker0: not pod traffic
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod classify;
pub mod iptables;
pub mod model;
pub mod nft;

pub use classify::{classify, Class, Context, Counts, Report, Verdict};
pub use iptables::IptablesError;
pub use model::{Family, Rule, Ruleset};
pub use nft::NftError;
