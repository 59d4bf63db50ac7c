//! Support for privileged tests in every crate: a test that needs root fails under CI
//! (`CI=true`) when it cannot run, and says it was skipped otherwise.

/// True when the caller may go on with a privileged test.
///
/// # Panics
/// Under CI when not root: a privileged test that cannot run must not pass silently there.
pub fn require_root(test: &str) -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    if std::env::var("CI").map(|v| v == "true" || v == "1").unwrap_or(false) {
        panic!("{test} needs root and CI=true is set: run the suite as root");
    }
    eprintln!("SKIPPED {test}: needs root (run the suite as root; under CI=true this fails)");
    false
}

/// A private bpffs on a new directory under the system's temporary directory, unmounted and
/// removed when dropped: a test that fails before its datapath exists (a program the verifier
/// refuses) leaves no mount behind.
pub struct BpffsDir {
    path: std::path::PathBuf,
}

impl BpffsDir {
    /// # Panics
    /// When the directory cannot be made or no bpffs mounted on it (the test cannot run).
    #[allow(clippy::expect_used)] // test support: a failure here is the test's failure
    pub fn new() -> Self {
        static COUNTER: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let path = std::env::temp_dir().join(format!("sluice-bpffs-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&path).expect("a directory for the test's bpffs");
        let dir = BpffsDir { path };
        crate::ensure_bpffs(&dir.path).expect("a bpffs on the test's directory");
        dir
    }

    pub fn path(&self) -> &std::path::Path {
        &self.path
    }
}

impl Default for BpffsDir {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for BpffsDir {
    fn drop(&mut self) {
        let _ = crate::unmount_bpffs(&self.path);
        let _ = std::fs::remove_dir(&self.path);
    }
}
