//! [`EtcdSource`]: the etcd cluster as a [`StateSource`]. One task reads the prefix once, then
//! follows the watch from the next revision, applying each burst of events to its copy and
//! publishing once per burst. A broken connection resumes the watch where it stopped (nothing is
//! read again); only a compacted revision forces a full read.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use etcd_client::{EventType, WatchOptions, WatchResponse, WatchStream};
use tokio::sync::watch;

use super::keys::{self, Keys};
use super::store::header_revision;
use super::{EtcdConfig, EtcdError, EtcdStore};
use crate::snapshot::{ClusterState, SnapshotPublisher, SourceHealth, StateSource};
use crate::Store;

/// The first and the longest wait between attempts to reach the cluster.
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(2);

/// A [`StateSource`] over an etcd prefix; the watching task ends when the source is dropped.
pub struct EtcdSource {
    publisher: Arc<SnapshotPublisher>,
    store: Arc<Mutex<Option<EtcdStore>>>,
    task: tokio::task::JoinHandle<()>,
}

// === impl EtcdSource ===

impl EtcdSource {
    /// Starts connecting and watching. Must be called within a tokio runtime; the first
    /// snapshot is synced once the cluster answered (see [`crate::wait_synced`]).
    pub fn spawn(config: EtcdConfig) -> Self {
        Self::start(config, None)
    }

    /// Starts from a snapshot already held (a cache, a previous source): publishes it and
    /// watches only what changed after its revision. When etcd has compacted that revision away
    /// the source reads everything anew.
    pub fn spawn_resuming(config: EtcdConfig, state: ClusterState) -> Self {
        Self::start(config, Some(state))
    }

    fn start(config: EtcdConfig, resume: Option<ClusterState>) -> Self {
        let publisher = Arc::new(SnapshotPublisher::new("etcd"));
        let store = Arc::new(Mutex::new(None));
        let working = resume.map(|state| {
            publisher.publish(state.clone());
            Working {
                objects: if state.objects.is_compact() {
                    state.objects
                } else {
                    let mut objects = Store::clone(&state.objects);
                    objects.compact();
                    Arc::new(objects)
                },
                revision: state.revision,
            }
        });
        let task = tokio::spawn(run(config, publisher.clone(), store.clone(), working));
        Self { publisher, store, task }
    }

    /// The connection the source uses now, for writers that want to share it (`None` before
    /// the first connection).
    pub fn store(&self) -> Option<EtcdStore> {
        self.store.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }
}

impl Drop for EtcdSource {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl StateSource for EtcdSource {
    fn subscribe(&self) -> watch::Receiver<ClusterState> {
        self.publisher.subscribe()
    }

    fn health(&self) -> SourceHealth {
        self.publisher.health()
    }
}

/// The task's copy of the cluster and the revision it is complete up to.
struct Working {
    objects: Arc<Store>,
    revision: u64,
}

/// Why a watch ended.
enum WatchEnd {
    /// The revision to resume from is gone: read everything again.
    Compacted,
    /// The connection or the stream failed: connect again and resume.
    Failed(EtcdError),
}

async fn run(config: EtcdConfig, publisher: Arc<SnapshotPublisher>, shared: Arc<Mutex<Option<EtcdStore>>>, mut working: Option<Working>) {
    let keys = Keys::new(&config.prefix);
    let mut backoff = BACKOFF_MIN;
    loop {
        let store = match EtcdStore::connect(&config).await {
            Ok(store) => store,
            Err(e) => {
                fail(&publisher, &e, &mut backoff).await;
                continue;
            }
        };
        *shared.lock().unwrap_or_else(PoisonError::into_inner) = Some(store.clone());
        let current = match working.take() {
            Some(w) => w,
            None => match full_sync(&store, &publisher).await {
                Ok(w) => w,
                Err(e) => {
                    fail(&publisher, &e, &mut backoff).await;
                    continue;
                }
            },
        };
        let mut current = current;
        match follow(&store, &keys, &publisher, &mut current, &mut backoff).await {
            WatchEnd::Compacted => {
                tracing::info!(revision = current.revision, "etcd compacted past the watched revision; reading everything again");
                // `working` stays empty: the next round reads everything.
            }
            WatchEnd::Failed(e) => {
                working = Some(current);
                fail(&publisher, &e, &mut backoff).await;
            }
        }
    }
}

async fn fail(publisher: &SnapshotPublisher, error: &EtcdError, backoff: &mut Duration) {
    tracing::warn!(error = %error, retry_in = ?*backoff, "etcd state source");
    publisher.set_connected(false, Some(error.to_string()));
    tokio::time::sleep(*backoff).await;
    *backoff = (*backoff * 2).min(BACKOFF_MAX);
}

/// Reads the whole prefix and publishes it as a synced snapshot.
async fn full_sync(store: &EtcdStore, publisher: &SnapshotPublisher) -> Result<Working, EtcdError> {
    // Compact as it is read: an agent never holds every whole Service and slice at once.
    let objects = store.read_all_into(Store::compacting()).await?;
    let revision = objects.generation;
    let objects = Arc::new(objects);
    // Health first: a reader woken by the snapshot sees the health that goes with it.
    publisher.count_full_sync();
    publisher.set_connected(true, None);
    publisher.publish(ClusterState { revision, synced: true, objects: objects.clone() });
    Ok(Working { objects, revision })
}

/// Watches from `current.revision + 1` until the watch ends, keeping `current` up to date.
async fn follow(store: &EtcdStore, keys: &Keys, publisher: &SnapshotPublisher, current: &mut Working, backoff: &mut Duration) -> WatchEnd {
    let root = keys.root().to_string();
    let options = WatchOptions::new()
        .with_range(keys::prefix_end(&root))
        .with_start_revision(i64::try_from(current.revision.saturating_add(1)).unwrap_or(i64::MAX))
        .with_prev_key()
        .with_progress_notify();
    let mut client = store.client().watch_client().max_decoding_message_size(512 << 20);
    let mut stream = match client.watch(root.clone(), Some(options)).await {
        Ok(stream) => stream,
        Err(e) => return WatchEnd::Failed(store.error(format!("watching {root}"), e)),
    };
    loop {
        let first = match next(store, &root, &mut stream).await {
            Ok(Some(response)) => response,
            Ok(None) => {
                return WatchEnd::Failed(EtcdError::WatchCancelled {
                    endpoints: store.endpoints().to_string(),
                    prefix: root,
                    reason: "the server ended the stream".into(),
                })
            }
            Err(end) => return end,
        };
        if first.created() {
            publisher.set_connected(true, None);
            *backoff = BACKOFF_MIN;
        }
        // Apply whatever else is already waiting too, then publish once: a burst of writes
        // costs the readers one snapshot.
        let mut changed = apply(keys, current, &first);
        let mut end = None;
        loop {
            match tokio::time::timeout(Duration::ZERO, next(store, &root, &mut stream)).await {
                Ok(Ok(Some(response))) => changed |= apply(keys, current, &response),
                Ok(Ok(None)) => {
                    end = Some(WatchEnd::Failed(EtcdError::WatchCancelled {
                        endpoints: store.endpoints().to_string(),
                        prefix: root.clone(),
                        reason: "the server ended the stream".into(),
                    }));
                    break;
                }
                Ok(Err(e)) => {
                    end = Some(e);
                    break;
                }
                Err(_) => break,
            }
        }
        if changed {
            let mut objects = current.objects.clone();
            Arc::make_mut(&mut objects).generation = current.revision;
            current.objects = objects.clone();
            publisher.publish(ClusterState { revision: current.revision, synced: true, objects });
        }
        if let Some(end) = end {
            return end;
        }
    }
}

/// The next response; compaction and cancellation end the watch.
async fn next(store: &EtcdStore, root: &str, stream: &mut WatchStream) -> Result<Option<WatchResponse>, WatchEnd> {
    let response = match stream.message().await {
        Ok(Some(response)) => response,
        Ok(None) => return Ok(None),
        Err(e) => {
            // etcd reports a compacted start revision either in the response or as an error.
            if e.to_string().contains("compacted") {
                return Err(WatchEnd::Compacted);
            }
            return Err(WatchEnd::Failed(store.error(format!("watching {root}"), e)));
        }
    };
    if response.compact_revision() > 0 {
        return Err(WatchEnd::Compacted);
    }
    if response.canceled() {
        let reason = response.cancel_reason().to_string();
        return Err(WatchEnd::Failed(EtcdError::WatchCancelled {
            endpoints: store.endpoints().to_string(),
            prefix: root.to_string(),
            reason,
        }));
    }
    Ok(Some(response))
}

/// Applies one response's events; true when there were any. The revision becomes that of the
/// newest event (a catching-up watcher's header may already name later revisions whose events
/// come in the next response) or, for an empty progress report, the header's.
fn apply(keys: &Keys, current: &mut Working, response: &WatchResponse) -> bool {
    let events = response.events();
    if events.is_empty() {
        if !response.created() {
            current.revision = current.revision.max(header_revision(response.header()));
        }
        return false;
    }
    let objects = Arc::make_mut(&mut current.objects);
    for event in events {
        let Some(kv) = event.kv() else { continue };
        match event.event_type() {
            EventType::Put => {
                if let Err(e) = keys::apply_put(keys, objects, kv.key(), kv.value()) {
                    tracing::warn!(error = %e, "skipping a value that does not decode");
                }
            }
            EventType::Delete => keys::apply_delete(keys, objects, kv.key()),
        }
        current.revision = current.revision.max(u64::try_from(kv.mod_revision()).unwrap_or(0));
    }
    true
}
