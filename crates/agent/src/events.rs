//! The node's events: host routing enabled, refused or fallen back, a bypassed rule detected, a
//! rule install blocked by the guard, agent restarts, datapath loads. Each is a Kubernetes Event
//! (so a Kubernetes integration can publish it unchanged), persisted in the agent's database
//! with a bounded history, and broadcast to followers.

use std::sync::Arc;

use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, Time};
use redb::{ReadableTable, ReadableTableMetadata, TableDefinition};
use tokio::sync::broadcast;

use crate::db::{AgentDb, DbError, RedbResultExt};

/// key: sequence number; value: the Event as JSON.
const EVENTS: TableDefinition<u64, &str> = TableDefinition::new("events");

/// Why something happened, in Kubernetes' CamelCase reason style.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    AgentStarted,
    DatapathLoaded,
    HostRoutingEnabled,
    HostRoutingForced,
    HostRoutingRefused,
    HostRoutingFallback,
    BypassedRuleDetected,
    BypassedRuleRemoved,
    GuardBlocked,
    GuardEnabled,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::AgentStarted => "AgentStarted",
            Reason::DatapathLoaded => "DatapathLoaded",
            Reason::HostRoutingEnabled => "HostRoutingEnabled",
            Reason::HostRoutingForced => "HostRoutingForced",
            Reason::HostRoutingRefused => "HostRoutingRefused",
            Reason::HostRoutingFallback => "HostRoutingFallback",
            Reason::BypassedRuleDetected => "BypassedRuleDetected",
            Reason::BypassedRuleRemoved => "BypassedRuleRemoved",
            Reason::GuardBlocked => "GuardBlocked",
            Reason::GuardEnabled => "GuardEnabled",
        }
    }

    /// `Normal` or `Warning`.
    fn kind(self) -> &'static str {
        match self {
            Reason::HostRoutingForced
            | Reason::HostRoutingRefused
            | Reason::HostRoutingFallback
            | Reason::BypassedRuleDetected
            | Reason::GuardBlocked => "Warning",
            _ => "Normal",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum EventError {
    #[error(transparent)]
    Db(#[from] DbError),
    /// A stored event does not decode.
    #[error("event {seq} is corrupt: {source}")]
    Corrupt {
        seq: u64,
        #[source]
        source: serde_json::Error,
    },
}

/// The node's event log.
pub struct Events {
    db: Arc<AgentDb>,
    node: String,
    history: usize,
    tx: broadcast::Sender<Event>,
}

impl Events {
    pub fn new(db: Arc<AgentDb>, node: &str, history: usize) -> Result<Self, EventError> {
        db.write(|tx| {
            tx.open_table(EVENTS).db()?;
            Ok::<_, EventError>(())
        })?;
        let (tx, _) = broadcast::channel(256);
        Ok(Self { db, node: node.to_owned(), history: history.max(1), tx })
    }

    /// Records an event about this node and tells followers. Old events beyond the history are
    /// removed in the same transaction.
    pub fn record(&self, reason: Reason, message: impl Into<String>) -> Result<Event, EventError> {
        let message = message.into();
        let now = chrono::Utc::now();
        let history = self.history;
        let node = self.node.clone();
        let event = self.db.write(|tx| {
            let mut table = tx.open_table(EVENTS).db()?;
            let seq = table.last().db()?.map(|(k, _)| k.value() + 1).unwrap_or(1);
            let event = Event {
                metadata: ObjectMeta { name: Some(format!("{node}.{seq:016x}")), namespace: Some("default".into()), ..Default::default() },
                involved_object: ObjectReference {
                    kind: Some("Node".into()),
                    name: Some(node.clone()),
                    api_version: Some("v1".into()),
                    ..Default::default()
                },
                reason: Some(reason.as_str().into()),
                message: Some(message.clone()),
                type_: Some(reason.kind().into()),
                source: Some(EventSource { component: Some("sluice-agent".into()), host: Some(node.clone()) }),
                first_timestamp: Some(Time(now)),
                last_timestamp: Some(Time(now)),
                event_time: Some(MicroTime(now)),
                reporting_component: Some("sluice-agent".into()),
                reporting_instance: Some(node.clone()),
                count: Some(1),
                ..Default::default()
            };
            let json = serde_json::to_string(&event).map_err(|source| EventError::Corrupt { seq, source })?;
            table.insert(seq, json.as_str()).db()?;
            let excess = (table.len().db()? as usize).saturating_sub(history);
            if excess > 0 {
                let old: Vec<u64> = table.iter().db()?.take(excess).filter_map(|r| r.ok().map(|(k, _)| k.value())).collect();
                for k in old {
                    table.remove(k).db()?;
                }
            }
            Ok::<_, EventError>(event)
        })?;
        let level = if reason.kind() == "Warning" { tracing::Level::WARN } else { tracing::Level::INFO };
        if level == tracing::Level::WARN {
            tracing::warn!(reason = reason.as_str(), "{message}");
        } else {
            tracing::info!(reason = reason.as_str(), "{message}");
        }
        let _ = self.tx.send(event.clone());
        Ok(event)
    }

    /// The history, oldest first.
    pub fn list(&self) -> Result<Vec<Event>, EventError> {
        self.db.read(|tx| {
            let table = tx.open_table(EVENTS).db()?;
            let mut out = Vec::new();
            for row in table.iter().db()? {
                let (k, v) = row.db()?;
                out.push(serde_json::from_str(v.value()).map_err(|source| EventError::Corrupt { seq: k.value(), source })?);
            }
            Ok(out)
        })
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.tx.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_persist_in_order_with_a_bounded_history() {
        let dir = tempfile::tempdir().unwrap();
        {
            let db = Arc::new(AgentDb::open(dir.path()).unwrap());
            let events = Events::new(db, "node0", 3).unwrap();
            for i in 0..5 {
                events.record(Reason::BypassedRuleDetected, format!("rule {i}")).unwrap();
            }
            let list = events.list().unwrap();
            assert_eq!(list.len(), 3, "history is bounded");
            assert_eq!(list[0].message.as_deref(), Some("rule 2"), "the oldest are dropped first");
        }
        let db = Arc::new(AgentDb::open(dir.path()).unwrap());
        let events = Events::new(db, "node0", 3).unwrap();
        events.record(Reason::AgentStarted, "again").unwrap();
        let list = events.list().unwrap();
        assert_eq!(list.len(), 3);
        assert_eq!(list[2].reason.as_deref(), Some("AgentStarted"), "events survive a restart and continue in order");
        assert_eq!(list[1].type_.as_deref(), Some("Warning"));
        assert_eq!(list[2].involved_object.kind.as_deref(), Some("Node"));
        assert_eq!(list[2].involved_object.name.as_deref(), Some("node0"));
    }
}
