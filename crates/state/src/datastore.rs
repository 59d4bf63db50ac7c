//! What writers (the CLI and the lab) hold: the local store or an etcd cluster, read whole and
//! updated all-or-nothing either way. An etcd cluster may be reachable only from inside a
//! network namespace (a lab's control-plane host): each request then runs on a short-lived
//! thread that enters that namespace first, so the caller's own sockets stay where they are.

use std::path::PathBuf;

use crate::etcd::{EtcdConfig, EtcdStore};
use crate::{LocalStore, Store, StoreError};

/// A store that can be read and updated.
#[derive(Debug, Clone)]
pub enum Datastore {
    Local(LocalStore),
    Etcd(EtcdAccess),
}

/// How to reach an etcd cluster: its configuration, and the network namespace to connect from
/// (`None`: the caller's).
#[derive(Debug, Clone)]
pub struct EtcdAccess {
    pub config: EtcdConfig,
    pub netns: Option<PathBuf>,
}

// === impl Datastore ===

impl Datastore {
    /// `local` or `etcd`.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Local(_) => "local",
            Self::Etcd(_) => "etcd",
        }
    }

    /// The local store's file; `None` for etcd.
    pub fn path(&self) -> Option<&std::path::Path> {
        match self {
            Self::Local(s) => Some(s.path()),
            Self::Etcd(_) => None,
        }
    }

    /// Every object; `generation` is the store's revision. Blocks for the request (on a
    /// runtime, it must be a multi-threaded one).
    pub fn load(&self) -> Result<Store, StoreError> {
        match self {
            Self::Local(s) => s.load(),
            Self::Etcd(access) => access.run(|store| Box::pin(async move { store.load().await })),
        }
    }

    /// [`Datastore::update_at`] without the revision.
    pub fn update<T: Send>(&self, f: impl FnMut(&mut Store) -> Result<T, StoreError> + Send) -> Result<T, StoreError> {
        self.update_at(f).map(|(out, _)| out)
    }

    /// Runs `f` on the current objects and writes what it changed, all or nothing; returns
    /// `f`'s answer and the store's revision after the write. On etcd, `f` runs again when
    /// another writer changed the store in between (it must not have side effects). When `f`
    /// fails nothing is written.
    pub fn update_at<T: Send>(&self, mut f: impl FnMut(&mut Store) -> Result<T, StoreError> + Send) -> Result<(T, u64), StoreError> {
        match self {
            Self::Local(s) => s.update(|store| {
                let out = f(store)?;
                Ok((out, store.generation + 1))
            }),
            Self::Etcd(access) => access.run(move |store| Box::pin(async move { store.update(f).await })),
        }
    }
}

type StoreFuture<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = Result<T, StoreError>> + Send + 'a>>;

// === impl EtcdAccess ===

impl EtcdAccess {
    /// Connects (from the namespace, when one is set) and runs `op`. Blocks the calling thread
    /// for the request's duration, so it must run on a multi-threaded runtime.
    fn run<'a, T: Send + 'a>(&'a self, op: impl FnOnce(EtcdStore) -> StoreFuture<'a, T> + Send + 'a) -> Result<T, StoreError> {
        let work = move || -> Result<T, StoreError> {
            if let Some(netns) = &self.netns {
                enter_netns(netns)?;
            }
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|source| StoreError::Io {
                path: PathBuf::from("(etcd client runtime)"),
                action: "starting",
                source,
            })?;
            runtime.block_on(async move {
                let store = EtcdStore::connect(&self.config).await?;
                op(store).await
            })
        };
        let answer = || std::thread::scope(|scope| scope.spawn(work).join());
        let joined = if tokio::runtime::Handle::try_current().is_ok() { tokio::task::block_in_place(answer) } else { answer() };
        joined.unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    }
}

/// Moves the current thread (only) into the network namespace at `path`.
fn enter_netns(path: &std::path::Path) -> Result<(), StoreError> {
    let io = |action, source| StoreError::Io { path: path.into(), action, source };
    let file = std::fs::File::open(path).map_err(|e| io("opening the network namespace", e))?;
    nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWNET).map_err(|e| io("entering the network namespace", e.into()))
}
