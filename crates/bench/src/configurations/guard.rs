//! Cleanup that happens also on failure. A configuration's teardown is recorded before the first
//! thing is made; dropped without an explicit `run` (an error, a panic, Ctrl-C dropping the run),
//! the guard tears it down on a thread of its own, since Drop cannot await.

use std::path::Path;

use sluice_datapath::netns;

use super::classic;
use crate::BenchError;

/// What to remove. Every step skips what is already gone, so a half-built configuration is
/// removed as well as a complete one.
#[derive(Debug, Clone)]
pub enum Teardown {
    /// Named network namespaces (their links go with them).
    Namespaces(Vec<String>),
    /// A Sluice lab, removed with `Lab::down`.
    Lab(String),
    /// The classic node: CNI DEL for its pods, then its namespaces and IPAM directory.
    Classic(classic::Made),
}

/// Runs a [`Teardown`] exactly once: explicitly, or when dropped.
pub struct Guard(Option<Teardown>);

// === impl Teardown ===

impl Teardown {
    pub async fn run(self) -> Result<(), BenchError> {
        match self {
            Teardown::Namespaces(names) => delete_namespaces(&names),
            Teardown::Lab(name) => match sluice_lab::Lab::down(&name, &mut |_| {}).await {
                Ok(()) | Err(sluice_lab::LabError::NotUp(_)) => Ok(()),
                Err(e) => Err(e.into()),
            },
            Teardown::Classic(made) => classic::remove(made).await,
        }
    }
}

pub fn delete_namespaces(names: &[String]) -> Result<(), BenchError> {
    let mut first = None;
    for name in names {
        if let Err(e) = netns::delete_named_netns(name) {
            first.get_or_insert(e);
        }
    }
    first.map_or(Ok(()), |e| Err(e.into()))
}

pub fn remove_dir(dir: &Path) -> Result<(), BenchError> {
    match std::fs::remove_dir_all(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(BenchError::io(format!("removing {}", dir.display()), e)),
        _ => Ok(()),
    }
}

// === impl Guard ===

impl Guard {
    pub fn new(teardown: Teardown) -> Self {
        Self(Some(teardown))
    }

    /// Tears down now.
    pub async fn run(mut self) -> Result<(), BenchError> {
        match self.0.take() {
            Some(t) => t.run().await,
            None => Ok(()),
        }
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        let Some(teardown) = self.0.take() else { return };
        let what = format!("{teardown:?}");
        // A fresh runtime on a fresh thread: this may run inside an async context, where
        // blocking on the current runtime is not allowed.
        let done = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build();
            match runtime {
                Ok(rt) => rt.block_on(teardown.run()),
                Err(e) => Err(BenchError::io("starting a cleanup runtime", e)),
            }
        })
        .join();
        match done {
            Ok(Ok(())) => {}
            Ok(Err(e)) => eprintln!("cleanup of {what} failed: {e}"),
            Err(_) => eprintln!("cleanup of {what} panicked"),
        }
    }
}
