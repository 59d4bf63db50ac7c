//! The seam between a state source and the agent: a source publishes consistent snapshots of
//! the cluster (cheap to clone, each with a monotonic revision) into a watch channel; the agent
//! reads the newest one, waits for the first full sync, and wakes on change. Every source — the
//! local file, etcd, the Kubernetes API — is a task that feeds one [`SnapshotPublisher`].

use std::ops::Deref;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;

use crate::{Store, StoreError};

/// One consistent view of the cluster's objects.
#[derive(Debug, Clone, Default)]
pub struct ClusterState {
    /// Grows with every change the source saw: the local store's generation, etcd's revision.
    pub revision: u64,
    /// False until the source has read everything once; an unsynced snapshot may be partial.
    pub synced: bool,
    pub objects: Arc<Store>,
}

impl Deref for ClusterState {
    type Target = Store;
    fn deref(&self) -> &Store {
        &self.objects
    }
}

/// How a source is doing, for status and metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SourceHealth {
    /// `local` or `etcd`.
    pub kind: String,
    /// Whether the source reaches its store now.
    pub connected: bool,
    /// The last failure, kept until the next success.
    pub last_error: Option<String>,
    /// How many times the source read everything anew (start, compaction, reconnect).
    pub full_syncs: u64,
}

/// Where the agent's view of the cluster comes from.
pub trait StateSource: Send + Sync {
    /// A receiver of snapshots: `borrow()` is the newest, `changed()` wakes on the next.
    fn subscribe(&self) -> watch::Receiver<ClusterState>;

    /// How the source is doing.
    fn health(&self) -> SourceHealth;

    /// The newest snapshot.
    fn snapshot(&self) -> ClusterState {
        self.subscribe().borrow().clone()
    }
}

/// Waits until `rx` holds a snapshot that satisfies `ready`, at most `timeout`.
pub async fn wait_for(
    rx: &mut watch::Receiver<ClusterState>,
    timeout: Duration,
    mut ready: impl FnMut(&ClusterState) -> bool,
) -> Option<ClusterState> {
    let wait = async {
        loop {
            {
                let now = rx.borrow_and_update();
                if ready(&now) {
                    return Some(now.clone());
                }
            }
            if rx.changed().await.is_err() {
                return None;
            }
        }
    };
    tokio::time::timeout(timeout, wait).await.ok().flatten()
}

/// Waits for the source's first full sync.
pub async fn wait_synced(source: &dyn StateSource, timeout: Duration) -> Result<ClusterState, StoreError> {
    let mut rx = source.subscribe();
    wait_for(&mut rx, timeout, |s| s.synced).await.ok_or_else(|| {
        let health = source.health();
        StoreError::NotSynced {
            kind: health.kind,
            waited: timeout,
            last_error: health.last_error.unwrap_or_else(|| "no error reported".into()),
        }
    })
}

/// The sending half every source uses: publishes snapshots and keeps the source's health.
pub struct SnapshotPublisher {
    tx: watch::Sender<ClusterState>,
    health: Mutex<SourceHealth>,
}

// === impl SnapshotPublisher ===

impl SnapshotPublisher {
    pub fn new(kind: &str) -> Self {
        let (tx, _) = watch::channel(ClusterState::default());
        Self { tx, health: Mutex::new(SourceHealth { kind: kind.into(), ..Default::default() }) }
    }

    /// Publishes a snapshot; a revision that does not move forward is ignored, so readers never
    /// go back in time. Snapshots are compact ([`Store::compact`]): services and endpoint
    /// slices as views, whatever the source read.
    pub fn publish(&self, mut state: ClusterState) {
        if !state.objects.is_compact() {
            Arc::make_mut(&mut state.objects).compact();
        }
        self.tx.send_if_modified(|current| {
            if state.revision < current.revision || (state.revision == current.revision && state.synced == current.synced) {
                return false;
            }
            *current = state;
            true
        });
    }

    /// The newest published snapshot.
    pub fn current(&self) -> ClusterState {
        self.tx.borrow().clone()
    }

    pub fn set_connected(&self, connected: bool, error: Option<String>) {
        let mut h = self.health.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        h.connected = connected;
        if error.is_some() || connected {
            h.last_error = error;
        }
    }

    pub fn count_full_sync(&self) {
        self.health.lock().unwrap_or_else(std::sync::PoisonError::into_inner).full_syncs += 1;
    }
}

impl StateSource for SnapshotPublisher {
    fn subscribe(&self) -> watch::Receiver<ClusterState> {
        self.tx.subscribe()
    }

    fn health(&self) -> SourceHealth {
        self.health.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }
}
