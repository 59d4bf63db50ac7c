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
