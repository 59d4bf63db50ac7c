//! Compiles the C datapath under `bpf/` with clang into BPF objects that the crate embeds, so
//! nodes need no compiler. One object per attach point; see bpf/README.md.

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

const OBJECTS: &[&str] = &["from_pod", "from_netdev", "to_pod", "probe", "guard", "sock_lb", "xdp_netdev"];

fn main() {
    let bpf = manifest_dir().join("../../bpf");
    let out = PathBuf::from(env::var("OUT_DIR").unwrap_or_else(|_| ".".into()));
    println!("cargo:rerun-if-changed={}", bpf.display());
    for dir in ["abi", "lib"] {
        println!("cargo:rerun-if-changed={}", bpf.join(dir).display());
    }
    let clang = env::var("CLANG").unwrap_or_else(|_| "clang".into());
    let arch_include = multiarch_include();
    for name in OBJECTS {
        let src = bpf.join(format!("{name}.c"));
        println!("cargo:rerun-if-changed={}", src.display());
        let obj = out.join(format!("{name}.o"));
        let mut cmd = Command::new(&clang);
        cmd.args(["-O2", "-g", "-Wall", "-Werror", "-target", "bpf"]).arg("-I").arg(&bpf);
        if let Some(dir) = &arch_include {
            cmd.arg("-I").arg(dir);
        }
        cmd.arg("-c").arg(&src).arg("-o").arg(&obj);
        match cmd.status() {
            Ok(s) if s.success() => {}
            Ok(s) => panic!("clang failed ({s}) compiling {}", src.display()),
            Err(e) => panic!("cannot run {clang}: {e}; install clang (apt-get install clang libbpf-dev)"),
        }
    }
}

/// Debian keeps `asm/types.h` in a multiarch directory that `-target bpf` does not search.
fn multiarch_include() -> Option<PathBuf> {
    let arch = env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_else(|_| "x86_64".into());
    let dir = PathBuf::from(format!("/usr/include/{arch}-linux-gnu"));
    Path::new(&dir).join("asm").exists().then_some(dir)
}

/// The package directory cargo runs this script for. Read at run time: a build script compiled
/// for another checkout of the same sources (a shared target directory) must not use that
/// checkout's path.
fn manifest_dir() -> PathBuf {
    PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").to_string()))
}
