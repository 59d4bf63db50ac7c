//! The listener path: connections that did not come through the datapath are
//! closed, shutdown ends `serve`, and start-up errors name what failed.

// A failed expect is a failed test, and its message says what was expected.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::time::Duration;

use sluice_proxy::{Proxy, ProxyConfig, ProxyError, UpstreamMode};
use tokio::io::AsyncReadExt;

fn config(port: u16, dir: &std::path::Path) -> ProxyConfig {
    ProxyConfig { port, rules_path: dir.join("rules.json"), bpffs: None, upstream: UpstreamMode::Plain, flows_socket: None }
}

#[tokio::test]
async fn loopback_connections_are_closed_and_shutdown_stops_serving() {
    if !sluice_datapath::testing::require_root("loopback_connections_are_closed_and_shutdown_stops_serving") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let proxy = Proxy::bind(config(0, dir.path())).unwrap();
    let addr = proxy.local_addrs()[0];
    assert!(addr.is_ipv4() && addr.ip().is_loopback(), "the first listener is on 127.0.0.1: {addr}");
    let stats = proxy.stats();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(proxy.serve(async move {
        let _ = stopped.await;
    }));

    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut buf = [0u8; 1];
    let read = tokio::time::timeout(Duration::from_secs(2), stream.read(&mut buf)).await.expect("the proxy closes the connection at once");
    assert!(matches!(read, Ok(0) | Err(_)), "a connection to the listener's own address is closed: {read:?}");
    assert_eq!(stats.snapshot().connections_not_redirected, 1);
    assert_eq!(stats.snapshot().connections, 0, "it was never served");

    stop.send(()).unwrap();
    let result = tokio::time::timeout(Duration::from_secs(2), serving).await.expect("serve returns after shutdown").unwrap();
    assert!(result.is_ok(), "serve ends cleanly: {result:?}");
}

#[tokio::test]
async fn a_taken_port_is_named_in_the_error() {
    if !sluice_datapath::testing::require_root("a_taken_port_is_named_in_the_error") {
        return;
    }
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    let err = Proxy::bind(config(port, dir.path())).err().expect("the port is taken");
    assert!(matches!(err, ProxyError::Bind { .. }), "a bind error: {err:?}");
    let message = err.to_string();
    assert!(message.starts_with(&format!("bind 127.0.0.1:{port}: ")), "the error names the address: {message}");
}
