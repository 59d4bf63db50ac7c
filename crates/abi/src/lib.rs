//! The datapath ABI as Rust types, generated at build time from `bpf/abi/sluice_abi.h`.
//!
//! The header is the single source of truth; nothing here is typed by hand except the names of
//! drop reasons and forward kinds, which a test checks against the generated enums.
//!
//! ```
//! let key = sluice_abi::endpoint_key { family: sluice_abi::SLUICE_AF_INET as u8, ..Default::default() };
//! assert_eq!(std::mem::size_of_val(&key), 20);
//! ```

#![allow(non_camel_case_types, non_upper_case_globals, clippy::all)]
mod generated {
    #![allow(non_camel_case_types, non_upper_case_globals, dead_code, clippy::all)]
    include!(concat!(env!("OUT_DIR"), "/abi.rs"));
}

pub use generated::*;

mod names;
pub use names::{drop_reason_name, event_loss_name, forward_kind_name, DROP_REASONS, EVENT_LOSSES, FORWARD_KINDS};
