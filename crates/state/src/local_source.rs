//! The local store as a state source: one task watches the file's stamp (`stat`, no read) and
//! parses it once per change, for every consumer in the agent at once.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::snapshot::{ClusterState, SnapshotPublisher, SourceHealth, StateSource};
use crate::LocalStore;

/// How often the file's stamp is looked at.
pub const DEFAULT_POLL: Duration = Duration::from_millis(50);

/// A [`StateSource`] over a [`LocalStore`]; the watching task ends when the source is dropped.
pub struct LocalSource {
    publisher: Arc<SnapshotPublisher>,
    task: tokio::task::JoinHandle<()>,
}

// === impl LocalSource ===

impl LocalSource {
    /// Reads the store once now (so the first snapshot is synced when the file is readable) and
    /// starts watching it. Must be called within a tokio runtime.
    pub fn spawn(store: LocalStore, poll: Duration) -> Self {
        let publisher = Arc::new(SnapshotPublisher::new("local"));
        let mut seen = None;
        refresh(&store, &publisher, &mut seen);
        let task = tokio::spawn({
            let publisher = publisher.clone();
            async move {
                let mut tick = tokio::time::interval(poll);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tick.tick().await;
                    refresh(&store, &publisher, &mut seen);
                }
            }
        });
        Self { publisher, task }
    }
}

fn refresh(store: &LocalStore, publisher: &SnapshotPublisher, seen: &mut Option<Option<crate::StoreStamp>>) {
    let stamp = store.stamp();
    if seen.as_ref() == Some(&stamp) {
        return;
    }
    match store.load_compact() {
        Ok(objects) => {
            // Generation 0 is an absent or never-written file: still a complete (empty) view.
            let revision = objects.generation;
            publisher.publish(ClusterState { revision, synced: true, objects: Arc::new(objects) });
            publisher.set_connected(true, None);
            *seen = Some(stamp);
        }
        Err(e) => publisher.set_connected(false, Some(e.to_string())),
    }
}

impl Drop for LocalSource {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl StateSource for LocalSource {
    fn subscribe(&self) -> watch::Receiver<ClusterState> {
        self.publisher.subscribe()
    }

    fn health(&self) -> SourceHealth {
        self.publisher.health()
    }
}
