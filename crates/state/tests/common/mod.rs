//! A real etcd for the etcd tests: one member per test on 127.0.0.1 with free ports, its data
//! and log in a temporary directory that goes away with it (the process is stopped first).
//! Without the binary a test returns early, except under CI, where it fails.
#![allow(dead_code, clippy::expect_used, clippy::unwrap_used)] // a test fails loudly on what it did not expect

use std::path::Path;
use std::time::Duration;

use sluice_state::etcd::{EtcdConfig, EtcdServer, EtcdServerOptions, EtcdStore};

/// A running member and the directory it lives in (fields drop in order: the process first).
pub struct TestEtcd {
    pub server: EtcdServer,
    pub dir: tempfile::TempDir,
}

/// True when the `etcd` binary is on PATH. Under `CI=true` its absence fails the test.
pub fn etcd_available() -> bool {
    let found = std::env::var_os("PATH").is_some_and(|p| std::env::split_paths(&p).any(|d| d.join("etcd").is_file()));
    if !found {
        assert!(std::env::var("CI").as_deref() != Ok("true"), "CI needs the etcd binary (Debian package etcd-server)");
        eprintln!("note: no etcd binary on PATH (Debian package etcd-server); skipping this test");
    }
    found
}

impl TestEtcd {
    /// A plain-text member, or `None` (test skipped) without the binary.
    pub async fn start() -> Option<Self> {
        Self::start_with(|_, _| {}).await
    }

    /// A member whose options `adjust` may change (TLS, say) before it starts. A start that
    /// fails is tried again on other ports (a free port may be taken in between).
    pub async fn start_with(adjust: impl Fn(&mut EtcdServerOptions, &Path)) -> Option<Self> {
        if !etcd_available() {
            return None;
        }
        let mut last = None;
        for _ in 0..3 {
            let dir = tempfile::tempdir().expect("a temporary directory");
            let mut options = EtcdServerOptions::local(dir.path()).expect("free ports on 127.0.0.1");
            adjust(&mut options, dir.path());
            match EtcdServer::start(options).await {
                Ok(server) => return Some(Self { server, dir }),
                Err(e) => last = Some(e),
            }
        }
        panic!("etcd did not start: {}", last.map(|e| e.to_string()).unwrap_or_default());
    }

    pub fn config(&self) -> EtcdConfig {
        self.server.client_config()
    }

    /// A new client (its own connection).
    pub async fn store(&self) -> EtcdStore {
        EtcdStore::connect(&self.config()).await.expect("connecting to the test etcd")
    }
}

/// Polls `check` every 50 ms until it holds or `timeout` passes; true when it held.
pub async fn eventually<F, Fut>(timeout: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if check().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A namespace with a label.
pub fn namespace(name: &str, label: &str) -> k8s_openapi::api::core::v1::Namespace {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
    k8s_openapi::api::core::v1::Namespace {
        metadata: ObjectMeta {
            name: Some(name.into()),
            labels: Some([("team".to_string(), label.to_string())].into_iter().collect()),
            ..Default::default()
        },
        ..Default::default()
    }
}
