//! [`EtcdStore`]: an etcd client as writers use it. `load` reads the whole prefix at one
//! revision; `update` runs a closure on it and writes back only what changed, in transactions
//! guarded by that revision, so two writers never lose each other's changes.

use std::time::Duration;

use etcd_client::{
    Certificate, Client, Compare, CompareOp, ConnectOptions, GetOptions, GetResponse, Identity, KvClient, TlsOptions, Txn, TxnOp,
    TxnResponse,
};

use super::keys::{self, Keys};
use super::{EtcdConfig, EtcdError};
use crate::{Store, StoreError};

/// How long connecting (and the first request that proves it) may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one request may wait for its answer; a cluster that is down fails requests after this.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Operations per transaction: under etcd's default `--max-txn-ops` of 128, so any etcd takes it.
pub const MAX_TXN_OPS: usize = 100;
/// How often `update` re-reads and retries when other writers got in between.
pub const UPDATE_ATTEMPTS: u32 = 20;
/// The largest answer the client accepts (a full read of a big cluster is one message).
const MAX_MESSAGE_BYTES: usize = 512 << 20;

/// An etcd cluster as writers use it; cheap to clone (clones share the connection).
#[derive(Clone)]
pub struct EtcdStore {
    config: EtcdConfig,
    keys: Keys,
    endpoints: String,
    client: Client,
    kv: KvClient,
}

// === impl EtcdStore ===

impl EtcdStore {
    /// Connects to the cluster and proves it answers (one read of a single key).
    pub async fn connect(config: &EtcdConfig) -> Result<Self, EtcdError> {
        if config.endpoints.is_empty() {
            return Err(EtcdError::NoEndpoints);
        }
        let endpoints = config.endpoints_text();
        let mut options = ConnectOptions::new()
            .with_connect_timeout(CONNECT_TIMEOUT)
            .with_timeout(REQUEST_TIMEOUT)
            // Pings on idle connections too, so a watch on a vanished server ends instead of
            // waiting forever.
            .with_keep_alive(Duration::from_secs(5), Duration::from_secs(5))
            .with_keep_alive_while_idle(true);
        if let Some(tls) = tls_options(config, &endpoints)? {
            options = options.with_tls(tls);
        }
        let connecting = Client::connect(&config.endpoints, Some(options));
        let client = match tokio::time::timeout(CONNECT_TIMEOUT, connecting).await {
            Ok(Ok(client)) => client,
            Ok(Err(source)) => return Err(EtcdError::Client { endpoints, action: "connecting".into(), source }),
            Err(_) => return Err(EtcdError::Timeout { endpoints, action: "connecting".into(), waited: CONNECT_TIMEOUT }),
        };
        let kv = client.kv_client().max_decoding_message_size(MAX_MESSAGE_BYTES).max_encoding_message_size(MAX_MESSAGE_BYTES);
        let store = Self { keys: Keys::new(&config.prefix), config: config.clone(), endpoints, client, kv };
        // The channel connects lazily: one small read shows the cluster is there and accepts us.
        let probe =
            store.get(store.keys.root().to_string(), Some(GetOptions::new().with_keys_only().with_limit(1)), "connecting (first read)");
        match tokio::time::timeout(CONNECT_TIMEOUT, probe).await {
            Ok(Ok(_)) => Ok(store),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(EtcdError::Timeout {
                endpoints: store.endpoints.clone(),
                action: "connecting (first read)".into(),
                waited: CONNECT_TIMEOUT,
            }),
        }
    }

    pub fn config(&self) -> &EtcdConfig {
        &self.config
    }

    /// The key layout under the configured prefix.
    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    /// The underlying client, for what this type does not wrap (compaction, status).
    pub fn client(&self) -> Client {
        self.client.clone()
    }

    /// Every object, node, endpoint and identity; `generation` is the revision read at.
    pub async fn load(&self) -> Result<Store, StoreError> {
        Ok(self.read_all().await?)
    }

    /// Runs `f` on the current objects and writes what it changed under `objects/`; returns
    /// `f`'s answer and the revision after the write (the revision read at when nothing
    /// changed). Changes `f` makes to nodes, endpoints or identities are ignored: their owners
    /// write those.
    ///
    /// Each write is guarded by the revision `f` saw: when another writer changed an object in
    /// between, `f` runs again on the new state (so it must have no side effects), at most
    /// [`UPDATE_ATTEMPTS`] times. A change of more than [`MAX_TXN_OPS`] keys is written in
    /// several transactions, each guarded by the revision the previous one produced: readers may
    /// see it half applied for a moment, but no writer's change is lost. When `f` fails nothing
    /// is written.
    pub async fn update<T>(&self, mut f: impl FnMut(&mut Store) -> Result<T, StoreError>) -> Result<(T, u64), StoreError> {
        for _ in 0..UPDATE_ATTEMPTS {
            let old = self.read_all().await?;
            let read_at = old.generation;
            let mut new = old.clone();
            let out = f(&mut new)?;
            let ops: Vec<TxnOp> = keys::object_changes(&self.keys, &old, &new)?
                .into_iter()
                .map(|(key, value)| match value {
                    Some(value) => TxnOp::put(key, value, None),
                    None => TxnOp::delete(key, None),
                })
                .collect();
            if ops.is_empty() {
                return Ok((out, read_at));
            }
            if let Some(revision) = self.write_guarded(ops, read_at).await? {
                return Ok((out, revision));
            }
        }
        Err(EtcdError::Contention { endpoints: self.endpoints.clone(), action: "updating objects".into(), attempts: UPDATE_ATTEMPTS }
            .into())
    }

    /// Writes `ops` in transactions of at most [`MAX_TXN_OPS`], each committed only if no object
    /// changed since `guard` (the previous chunk's revision for the later ones). `None` when a
    /// guard failed: the caller reads again and recomputes what is left to write.
    async fn write_guarded(&self, ops: Vec<TxnOp>, mut guard: u64) -> Result<Option<u64>, EtcdError> {
        let objects = self.keys.objects();
        let marker = self.keys.objects_written();
        let mut ops = ops.into_iter().peekable();
        while ops.peek().is_some() {
            // One op of each chunk is the marker: a deletion leaves no key for the range compare
            // to see, the marker's revision shows it.
            let mut chunk: Vec<TxnOp> = ops.by_ref().take(MAX_TXN_OPS - 1).collect();
            chunk.push(TxnOp::put(marker.clone(), guard.to_string(), None));
            let below = i64::try_from(guard.saturating_add(1)).unwrap_or(i64::MAX);
            let txn = Txn::new()
                .when([
                    Compare::mod_revision(objects.clone(), CompareOp::Less, below).with_range(keys::prefix_end(&objects)),
                    Compare::mod_revision(marker.clone(), CompareOp::Less, below),
                ])
                .and_then(chunk);
            let response = self.txn(txn, "writing objects").await?;
            if !response.succeeded() {
                return Ok(None);
            }
            guard = header_revision(response.header());
        }
        Ok(Some(guard))
    }

    /// Everything under the prefix, decoded; `generation` is the revision read at. Values that
    /// do not decode are logged and skipped, so one bad key does not stop every reader.
    pub(crate) async fn read_all(&self) -> Result<Store, EtcdError> {
        self.read_all_into(Store::default()).await
    }

    /// Everything under the root put into `store` (a [`Store::compacting`] one keeps services
    /// and endpoint slices as views only), with the revision read at.
    pub(crate) async fn read_all_into(&self, mut store: Store) -> Result<Store, EtcdError> {
        let root = self.keys.root().to_string();
        let end = keys::prefix_end(&root);
        let mut response = self.get(root, Some(GetOptions::new().with_range(end)), "reading everything").await?;
        store.generation = header_revision(response.header());
        for kv in response.take_kvs() {
            if let Err(e) = keys::apply_put(&self.keys, &mut store, kv.key(), kv.value()) {
                tracing::warn!(error = %e, "skipping a value that does not decode");
            }
        }
        Ok(store)
    }

    // === requests with context ===

    pub(crate) fn endpoints(&self) -> &str {
        &self.endpoints
    }

    pub(crate) fn error(&self, action: impl Into<String>, source: etcd_client::Error) -> EtcdError {
        EtcdError::Client { endpoints: self.endpoints.clone(), action: action.into(), source }
    }

    pub(crate) async fn get(&self, key: impl Into<Vec<u8>>, options: Option<GetOptions>, action: &str) -> Result<GetResponse, EtcdError> {
        let mut kv = self.kv.clone();
        kv.get(key, options).await.map_err(|e| self.error(action, e))
    }

    /// Every key-value that starts with `prefix`.
    pub(crate) async fn get_prefix(&self, prefix: &str, action: &str) -> Result<GetResponse, EtcdError> {
        self.get(prefix.to_string(), Some(GetOptions::new().with_range(keys::prefix_end(prefix))), action).await
    }

    pub(crate) async fn txn(&self, txn: Txn, action: &str) -> Result<TxnResponse, EtcdError> {
        let mut kv = self.kv.clone();
        kv.txn(txn).await.map_err(|e| self.error(action, e))
    }
}

impl std::fmt::Debug for EtcdStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdStore").field("endpoints", &self.endpoints).field("prefix", &self.config.prefix).finish()
    }
}

/// The revision a response was answered at (0 when it carries no header).
pub(crate) fn header_revision(header: Option<&etcd_client::ResponseHeader>) -> u64 {
    header.map(|h| u64::try_from(h.revision()).unwrap_or(0)).unwrap_or(0)
}

fn tls_options(config: &EtcdConfig, endpoints: &str) -> Result<Option<TlsOptions>, EtcdError> {
    let read = |what: &'static str, path: &std::path::Path| {
        std::fs::read(path).map_err(|source| EtcdError::TlsFile {
            endpoints: endpoints.to_string(),
            what,
            path: path.to_path_buf(),
            source,
        })
    };
    let identity = match (&config.cert_file, &config.key_file) {
        (Some(cert), Some(key)) => Some(Identity::from_pem(read("client certificate", cert)?, read("client key", key)?)),
        (None, None) => None,
        _ => return Err(EtcdError::TlsIncomplete { endpoints: endpoints.to_string() }),
    };
    if config.ca_file.is_none() && identity.is_none() {
        return Ok(None);
    }
    let mut tls = TlsOptions::new();
    if let Some(ca) = &config.ca_file {
        tls = tls.ca_certificate(Certificate::from_pem(read("CA certificate", ca)?));
    }
    if let Some(identity) = identity {
        tls = tls.identity(identity);
    }
    Ok(Some(tls))
}
