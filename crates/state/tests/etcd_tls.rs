//! etcd with mutual TLS from lab certificates: a client with a certificate the CA signed gets
//! in, one without is refused with an error that says where it tried, and unreadable TLS files
//! are named.
#![allow(clippy::expect_used, clippy::unwrap_used)] // a test fails loudly on what it did not expect

mod common;

use std::os::unix::fs::PermissionsExt;

use common::TestEtcd;
use sluice_state::etcd::{EtcdConfig, EtcdStore, Pki, ServerTls};

#[test]
fn pki_writes_keys_for_their_owner_only() {
    let dir = tempfile::tempdir().unwrap();
    let files = Pki::create(dir.path(), &["198.18.0.1".parse().unwrap()], &["agent-1", "cli"]).unwrap();
    for path in [&files.ca.key, &files.server.key, &files.clients["agent-1"].key, &files.clients["cli"].key] {
        let mode = std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{} is private", path.display());
    }
    assert_eq!(files.clients["cli"].cert, dir.path().join("cli.pem"), "client certificates are named after the client");
    assert!(Pki::create(dir.path(), &[], &["../evil"]).is_err(), "a client name must be a plain file name");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_admits_a_signed_client_only() {
    let pki_dir = tempfile::tempdir().unwrap();
    let pki = Pki::create(pki_dir.path(), &[], &["agent-1"]).unwrap();
    let tls = ServerTls {
        cert_file: pki.server.cert.clone(),
        key_file: pki.server.key.clone(),
        ca_file: pki.ca.cert.clone(),
        client_cert_auth: true,
    };
    let Some(etcd) = TestEtcd::start_with(|options, _| options.tls = Some(tls.clone())).await else { return };
    let url = etcd.server.client_url();
    assert!(url.starts_with("https://127.0.0.1:"), "a TLS client URL: {url}");

    let config = pki.client_config("agent-1", vec![url.clone()]).unwrap();
    let store = EtcdStore::connect(&config).await.unwrap();
    store
        .update(|s| {
            s.namespaces.insert("x".into(), common::namespace("x", "1"));
            Ok(())
        })
        .await
        .unwrap();
    assert!(store.load().await.unwrap().namespaces.contains_key("x"), "the client with a certificate reads and writes");

    let mut anonymous = EtcdConfig::new(vec![url.clone()]);
    anonymous.ca_file = Some(pki.ca.cert.clone());
    let err = EtcdStore::connect(&anonymous).await.unwrap_err().to_string();
    eprintln!("without a client certificate: {err}");
    assert!(err.contains(&url), "the refusal names the endpoint: {err}");

    let mut missing = config.clone();
    missing.key_file = Some(pki_dir.path().join("nope-key.pem"));
    let err = EtcdStore::connect(&missing).await.unwrap_err().to_string();
    eprintln!("with a missing key file: {err}");
    assert!(err.contains("nope-key.pem") && err.contains(&url), "an unreadable key is named with the endpoint: {err}");

    let mut half = config.clone();
    half.key_file = None;
    assert!(EtcdStore::connect(&half).await.is_err(), "a certificate without its key is refused");
}
