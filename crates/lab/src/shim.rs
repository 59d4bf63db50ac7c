//! The pod shim (`sluice lab-shim`): the lab's equivalent of a containerd shim. It is started in
//! the pod's namespace and cgroup, starts the pod's command, records that it runs, waits for it
//! and records how it ended, so the lab can report phase and exit code after the CLI is gone.

use std::path::Path;
use std::process::Command;

use serde::{Deserialize, Serialize};

/// What the shim writes to its status file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "camelCase")]
pub enum ShimStatus {
    Running { pid: u32 },
    Exited { code: i32 },
    Failed { error: String },
}

impl ShimStatus {
    pub fn read(path: &Path) -> Option<Self> {
        std::fs::read(path).ok().and_then(|b| serde_json::from_slice(&b).ok())
    }

    fn write(&self, path: &Path) {
        let tmp = path.with_extension("tmp");
        if let Ok(bytes) = serde_json::to_vec(self) {
            if std::fs::write(&tmp, bytes).is_ok() {
                let _ = std::fs::rename(&tmp, path);
            }
        }
    }
}

/// Runs `argv` to completion; returns the exit code for the shim to exit with.
pub fn run(status: &Path, argv: &[String]) -> i32 {
    let Some((program, args)) = argv.split_first() else {
        ShimStatus::Failed { error: "no command".into() }.write(status);
        return 127;
    };
    let mut child = match Command::new(program).args(args).spawn() {
        Ok(c) => c,
        Err(e) => {
            ShimStatus::Failed { error: format!("{program}: {e}") }.write(status);
            return 127;
        }
    };
    ShimStatus::Running { pid: child.id() }.write(status);
    let code = match child.wait() {
        Ok(s) => s.code().unwrap_or_else(|| 128 + std::os::unix::process::ExitStatusExt::signal(&s).unwrap_or(0)),
        Err(_) => 255,
    };
    ShimStatus::Exited { code }.write(status);
    code
}
