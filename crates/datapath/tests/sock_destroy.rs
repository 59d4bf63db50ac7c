//! SOCK_DESTROY of the connections to a removed backend: real sockets on loopback, each test on
//! a thread in a fresh network namespace, so only the sockets it made can match.

#![allow(clippy::expect_used, clippy::unwrap_used)] // a test fails loudly on what it did not expect

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use sluice_datapath::sock_destroy::destroy_sockets_to;

const TCP: u8 = 6;
const UDP: u8 = 17;
/// How long a destroyed socket may take to report it; the abort is synchronous, so this only
/// bounds a failure.
const PROMPTLY: Duration = Duration::from_secs(2);

macro_rules! privileged {
    () => {
        if !sluice_datapath::testing::require_root(module_path!()) {
            return;
        }
    };
}

fn tool(name: &str) -> PathBuf {
    let path = std::env::var("PATH").unwrap_or_default();
    let found = path.split(':').chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"]).map(|dir| Path::new(dir).join(name)).find(|p| p.exists());
    found.unwrap_or_else(|| panic!("{name} not found: install iproute2"))
}

/// Moves the test thread into a fresh network namespace with loopback up; returns the path
/// of that namespace (the thread's own, under /proc).
fn fresh_netns() -> PathBuf {
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).expect("a private netns for the test thread");
    // A child forked from this thread starts in its namespace.
    let status = Command::new(tool("ip")).args(["link", "set", "lo", "up"]).status().expect("running ip");
    assert!(status.success(), "ip link set lo up must succeed");
    PathBuf::from(format!("/proc/self/task/{}/ns/net", nix::unistd::gettid()))
}

/// A connection from a client to `listener`: (client, accepted server side).
fn connect(listener: &TcpListener) -> (TcpStream, TcpStream) {
    let client = TcpStream::connect(listener.local_addr().unwrap()).expect("connect");
    let (server, _) = listener.accept().expect("accept");
    (client, server)
}

/// True when the client's next read fails or sees EOF within PROMPTLY, as a destroyed socket's does.
fn is_closed(client: &mut TcpStream) -> bool {
    client.set_read_timeout(Some(PROMPTLY)).unwrap();
    let mut byte = [0u8; 1];
    match client.read(&mut byte) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => !matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut),
    }
}

/// True when a byte written by the client comes back through `server`.
fn still_works(client: &mut TcpStream, server: &mut TcpStream) -> bool {
    client.set_read_timeout(Some(PROMPTLY)).unwrap();
    server.set_read_timeout(Some(PROMPTLY)).unwrap();
    let mut byte = [0u8; 1];
    client.write_all(b"x").is_ok()
        && server.read_exact(&mut byte).is_ok()
        && server.write_all(&byte).is_ok()
        && client.read_exact(&mut byte).is_ok()
        && byte == *b"x"
}

/// Two clients of the backend, one of a second backend of the other family and one of an
/// unrelated listener: destroying the backend's connections aborts exactly its two clients.
fn destroys_only_the_backends_clients(netns: Option<&Path>, backend: &str, other_family: &str) {
    let backend = TcpListener::bind(backend).expect("backend listener");
    let other_family = TcpListener::bind(other_family).expect("listener of the other family");
    let unrelated = TcpListener::bind(SocketAddr::new(backend.local_addr().unwrap().ip(), 0)).expect("unrelated listener");
    let (mut a, _a_server) = connect(&backend);
    let (mut b, _b_server) = connect(&backend);
    let (mut c, mut c_server) = connect(&other_family);
    let (mut d, mut d_server) = connect(&unrelated);

    let destroyed = destroy_sockets_to(netns, backend.local_addr().unwrap(), TCP).expect("destroying sockets to the backend");

    assert_eq!(destroyed, 2, "the two clients of the backend, not the accepted server sides, must be destroyed");
    assert!(is_closed(&mut a), "the first client must see its connection aborted");
    assert!(is_closed(&mut b), "the second client must see its connection aborted");
    assert!(still_works(&mut c, &mut c_server), "the connection to the other family's listener must still work");
    assert!(still_works(&mut d, &mut d_server), "the connection to the unrelated listener must still work");
}

// === cases ===

#[test]
fn tcp_ipv4_clients_of_a_backend_are_aborted_in_the_callers_netns() {
    privileged!();
    fresh_netns();
    destroys_only_the_backends_clients(None, "127.0.0.1:0", "[::1]:0");
}

#[test]
fn tcp_ipv6_clients_of_a_backend_are_aborted_in_a_given_netns() {
    privileged!();
    let netns = fresh_netns();
    destroys_only_the_backends_clients(Some(&netns), "[::1]:0", "127.0.0.1:0");
}

#[test]
fn tcp_ipv4_clients_on_dual_stack_sockets_are_aborted() {
    privileged!();
    fresh_netns();
    let backend = TcpListener::bind("127.0.0.1:0").expect("backend listener");
    let port = backend.local_addr().unwrap().port();
    // An IPv6 socket connected to an IPv4-mapped address, as a dual-stack pod would make.
    let mut client = TcpStream::connect(format!("[::ffff:127.0.0.1]:{port}")).expect("connect over a mapped address");
    let _server = backend.accept().expect("accept");

    let destroyed = destroy_sockets_to(None, backend.local_addr().unwrap(), TCP).expect("destroying sockets to the backend");

    assert_eq!(destroyed, 1, "the dual-stack client must be destroyed");
    assert!(is_closed(&mut client), "the dual-stack client must see its connection aborted");
}

#[test]
fn udp_connected_sockets_to_a_backend_are_aborted() {
    privileged!();
    let netns = fresh_netns();
    let backend = UdpSocket::bind("127.0.0.1:0").expect("backend socket");
    let unrelated = UdpSocket::bind("127.0.0.1:0").expect("unrelated socket");
    let client = UdpSocket::bind("127.0.0.1:0").expect("client socket");
    client.connect(backend.local_addr().unwrap()).expect("connect to the backend");
    let other = UdpSocket::bind("127.0.0.1:0").expect("other client socket");
    other.connect(unrelated.local_addr().unwrap()).expect("connect to the unrelated socket");

    let destroyed = destroy_sockets_to(Some(&netns), backend.local_addr().unwrap(), UDP).expect("destroying sockets to the backend");

    assert_eq!(destroyed, 1, "only the client connected to the backend must be destroyed");
    client.set_read_timeout(Some(PROMPTLY)).unwrap();
    let aborted = client.recv(&mut [0u8; 1]).map_err(|e| e.raw_os_error());
    assert_eq!(aborted, Err(Some(libc::ECONNABORTED)), "the backend's client must see ECONNABORTED");
    other.send(b"x").expect("the other client can still send");
    unrelated.set_read_timeout(Some(PROMPTLY)).unwrap();
    assert_eq!(unrelated.recv(&mut [0u8; 1]).ok(), Some(1), "the other client's datagram must arrive");
}

#[test]
fn nothing_to_destroy_is_zero() {
    privileged!();
    let netns = fresh_netns();
    let listener = TcpListener::bind("127.0.0.1:0").expect("listener");
    let (_client, _server) = connect(&listener);
    let nobody: SocketAddr = "127.0.0.1:9".parse().unwrap();
    for (netns, protocol) in [(None, TCP), (None, UDP), (Some(netns.as_path()), TCP), (Some(netns.as_path()), UDP)] {
        let destroyed = destroy_sockets_to(netns, nobody, protocol).expect("destroying no sockets succeeds");
        assert_eq!(destroyed, 0, "no socket is connected to {nobody} (protocol {protocol}, netns {netns:?})");
    }
    // The listener matched by port alone must not be touched: its remote end is the wildcard.
    let destroyed = destroy_sockets_to(None, "0.0.0.0:0".parse().unwrap(), TCP).expect("destroying to the wildcard");
    assert_eq!(destroyed, 0, "listeners have no remote end and must not be destroyed");
}

#[test]
fn a_protocol_other_than_tcp_or_udp_is_refused() {
    let refused = destroy_sockets_to(None, "127.0.0.1:80".parse().unwrap(), 132);
    assert!(refused.is_err(), "SCTP (132) is not supported and must be refused");
}
