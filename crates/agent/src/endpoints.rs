//! The endpoint records: one per attachment (container ID + interface name), persisted in the
//! agent's database. They are the desired state the reconciler programs into the datapath.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use redb::{ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use sluice_datapath::{EndpointEntry, Mac};

use crate::db::{AgentDb, DbError, RedbResultExt};
use crate::ipam::Owner;

/// key: "container_id/ifname"; value: the record as JSON (records grow fields; JSON keeps
/// old databases readable).
const ENDPOINTS: TableDefinition<&str, &str> = TableDefinition::new("endpoints");

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EndpointRecord {
    pub id: u32,
    pub container_id: String,
    pub ifname: String,
    pub netns: String,
    pub pod_namespace: Option<String>,
    pub pod_name: Option<String>,
    pub ipv4: Option<Ipv4Addr>,
    pub ipv6: Option<Ipv6Addr>,
    pub mac: Mac,
    pub host_ifname: String,
    pub host_ifindex: u32,
    pub host_mac: Mac,
    pub identity: u32,
    pub labels: BTreeMap<String, String>,
    pub mtu: u32,
}

// === impl EndpointRecord ===

impl EndpointRecord {
    pub fn owner(&self) -> Owner {
        Owner::new(self.container_id.clone(), self.ifname.clone())
    }

    pub fn key(&self) -> String {
        record_key(&self.owner())
    }

    /// The datapath's view of this endpoint.
    pub fn entry(&self) -> EndpointEntry {
        EndpointEntry {
            endpoint_id: self.id,
            host_ifindex: self.host_ifindex,
            host_ifname: self.host_ifname.clone(),
            identity: self.identity,
            ipv4: self.ipv4,
            ipv6: self.ipv6,
            mac: self.mac,
            node_mac: self.host_mac,
        }
    }

    pub fn to_api(&self) -> sluice_api::Endpoint {
        sluice_api::Endpoint {
            id: self.id,
            container_id: self.container_id.clone(),
            ifname: self.ifname.clone(),
            netns: self.netns.clone(),
            pod_namespace: self.pod_namespace.clone(),
            pod_name: self.pod_name.clone(),
            ipv4: self.ipv4,
            ipv6: self.ipv6,
            mac: self.mac.to_string(),
            host_ifname: self.host_ifname.clone(),
            host_ifindex: self.host_ifindex,
            host_mac: self.host_mac.to_string(),
            identity: self.identity,
            labels: self.labels.clone(),
        }
    }
}

pub fn record_key(owner: &Owner) -> String {
    format!("{}/{}", owner.container_id, owner.ifname)
}

/// Why a record could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum EndpointStoreError {
    #[error(transparent)]
    Db(#[from] DbError),
    /// A stored record does not decode: the database was written by an incompatible version.
    #[error("endpoint record {key} is corrupt: {source}")]
    Corrupt {
        key: String,
        #[source]
        source: serde_json::Error,
    },
}

/// The endpoint table.
#[derive(Debug, Clone)]
pub struct EndpointStore {
    db: Arc<AgentDb>,
}

// === impl EndpointStore ===

impl EndpointStore {
    pub fn new(db: Arc<AgentDb>) -> Result<Self, EndpointStoreError> {
        db.write(|tx| {
            tx.open_table(ENDPOINTS).db()?;
            Ok::<_, EndpointStoreError>(())
        })?;
        Ok(Self { db })
    }

    pub fn list(&self) -> Result<Vec<EndpointRecord>, EndpointStoreError> {
        self.db.read(|tx| {
            let table = tx.open_table(ENDPOINTS).db()?;
            let mut out = Vec::new();
            for row in table.iter().db()? {
                let (k, v) = row.db()?;
                out.push(decode(k.value(), v.value())?);
            }
            out.sort_by_key(|r| r.id);
            Ok(out)
        })
    }

    pub fn get(&self, owner: &Owner) -> Result<Option<EndpointRecord>, EndpointStoreError> {
        let key = record_key(owner);
        self.db.read(|tx| {
            let table = tx.open_table(ENDPOINTS).db()?;
            let value = table.get(key.as_str()).db()?;
            value.map(|v| decode(&key, v.value())).transpose()
        })
    }

    pub fn put(&self, record: &EndpointRecord) -> Result<(), EndpointStoreError> {
        let key = record.key();
        let json = serde_json::to_string(record).map_err(|source| EndpointStoreError::Corrupt { key: key.clone(), source })?;
        self.db.write(|tx| {
            tx.open_table(ENDPOINTS).db()?.insert(key.as_str(), json.as_str()).db()?;
            Ok(())
        })
    }

    pub fn delete(&self, owner: &Owner) -> Result<bool, EndpointStoreError> {
        let key = record_key(owner);
        self.db.write(|tx| {
            let removed = tx.open_table(ENDPOINTS).db()?.remove(key.as_str()).db()?.is_some();
            Ok(removed)
        })
    }

    /// The smallest endpoint number no record uses (numbers start at 1).
    pub fn next_id(&self) -> Result<u32, EndpointStoreError> {
        let used: std::collections::BTreeSet<u32> = self.list()?.iter().map(|r| r.id).collect();
        Ok((1..).find(|i| !used.contains(i)).unwrap_or(u32::MAX))
    }
}

fn decode(key: &str, json: &str) -> Result<EndpointRecord, EndpointStoreError> {
    serde_json::from_str(json).map_err(|source| EndpointStoreError::Corrupt { key: key.to_owned(), source })
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn record(id: u32, cid: &str) -> EndpointRecord {
        EndpointRecord {
            id,
            container_id: cid.into(),
            ifname: "eth0".into(),
            netns: format!("/run/netns/{cid}"),
            pod_namespace: Some("default".into()),
            pod_name: Some(cid.into()),
            ipv4: Some(Ipv4Addr::new(198, 19, 0, id as u8 + 1)),
            ipv6: None,
            mac: Mac([2, 0, 0, 0, 0, id as u8]),
            host_ifname: format!("lxc{id}"),
            host_ifindex: 100 + id,
            host_mac: Mac([2, 0, 0, 0, 1, id as u8]),
            identity: 256,
            labels: BTreeMap::new(),
            mtu: 1500,
        }
    }

    #[test]
    fn records_persist_and_ids_are_reused_only_when_free() {
        let dir = tempfile::tempdir().unwrap();
        let db = Arc::new(AgentDb::open(dir.path()).unwrap());
        let store = EndpointStore::new(db).unwrap();
        assert_eq!(store.next_id().unwrap(), 1);
        store.put(&record(1, "a")).unwrap();
        store.put(&record(2, "b")).unwrap();
        assert_eq!(store.next_id().unwrap(), 3);
        assert!(store.delete(&Owner::new("a", "eth0")).unwrap());
        assert!(!store.delete(&Owner::new("a", "eth0")).unwrap(), "second delete finds nothing");
        assert_eq!(store.next_id().unwrap(), 1);
        let got = store.get(&Owner::new("b", "eth0")).unwrap().expect("b is stored");
        assert_eq!(got, record(2, "b"));
        assert_eq!(store.list().unwrap().len(), 1);
    }
}
