//! Generates the Rust view of `bpf/abi/sluice_abi.h` with bindgen. Only the ABI's own items are
//! allowed through, so kernel uapi types the header includes do not leak into the crate.

use std::env;
use std::path::PathBuf;

fn main() {
    let root = manifest_dir().join("../../bpf");
    let header = root.join("abi/sluice_abi.h");
    println!("cargo:rerun-if-changed={}", header.display());
    let out = PathBuf::from(env::var("OUT_DIR").unwrap_or_else(|_| ".".into())).join("abi.rs");
    let bindings = bindgen::Builder::default()
        .header(header.display().to_string())
        .allowlist_type("endpoint_key|endpoint_info|traffic_counter|datapath_event|flow_key|flow_state|event_budget|guard_event|lb_.*|ct_key|ct_entry|ipcache_.*|policy_.*|sluice_.*")
        .allowlist_var("SLUICE_.*")
        .rustified_enum("sluice_.*")
        .derive_default(true)
        .derive_partialeq(true)
        .derive_eq(true)
        .layout_tests(true)
        .generate();
    match bindings {
        Ok(b) => {
            if let Err(e) = b.write_to_file(&out) {
                panic!("writing {}: {e}", out.display());
            }
        }
        Err(e) => panic!("bindgen could not read {}: {e} (is libclang-dev installed?)", header.display()),
    }
}

/// The package directory cargo runs this script for. Read at run time: a build script compiled
/// for another checkout of the same sources (a shared target directory) must not use that
/// checkout's path.
fn manifest_dir() -> PathBuf {
    PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").to_string()))
}
