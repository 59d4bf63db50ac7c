//! Two small tools the service tests and the demo run inside lab pods (hidden commands): a
//! server that answers with its name and the peer it sees, over TCP (then echoes) and UDP, and
//! a client that reports the reply, the peer address the socket API shows (getpeername for TCP,
//! the datagram's source for UDP) and how a failure happened. No Debian tool reports both.

use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv6Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::process::ExitCode;
use std::time::{Duration, Instant};

/// Serves `name` on TCP and UDP on each of `ports`, IPv4 and IPv6, until killed.
pub fn server(name: &str, ports: &[u16]) -> anyhow::Result<ExitCode> {
    let mut threads = Vec::new();
    for port in ports.iter().copied() {
        let tcp = TcpListener::bind((Ipv6Addr::UNSPECIFIED, port))?; // dual stack: v4-mapped too
        let udp = UdpSocket::bind((Ipv6Addr::UNSPECIFIED, port))?;
        let name = name.to_string();
        threads.push(std::thread::spawn(move || serve(&name, tcp, udp)));
    }
    for t in threads {
        let _ = t.join();
    }
    Ok(ExitCode::SUCCESS)
}

/// Probes every target at once; prints `{"tcp:10.0.0.1:80": true, ...}`.
pub fn probe(targets: &[String], timeout: Duration) -> anyhow::Result<ExitCode> {
    let mut handles = Vec::new();
    for t in targets {
        let (proto, addr) = t.split_once(':').ok_or_else(|| anyhow::anyhow!("target {t:?}: expected tcp:ADDR:PORT or udp:ADDR:PORT"))?;
        let addr: SocketAddr = addr.parse().map_err(|e| anyhow::anyhow!("target {t:?}: {e}"))?;
        let udp = match proto {
            "tcp" => false,
            "udp" => true,
            other => anyhow::bail!("target {t:?}: protocol {other:?} is not tcp or udp"),
        };
        let t = t.clone();
        handles.push(std::thread::spawn(move || {
            (t, if udp { udp_exchange(addr, timeout).is_ok() } else { tcp_exchange(addr, timeout).is_ok() })
        }));
    }
    let mut out = serde_json::Map::new();
    for h in handles {
        if let Ok((t, ok)) = h.join() {
            out.insert(t, ok.into());
        }
    }
    println!("{}", serde_json::Value::Object(out));
    Ok(ExitCode::SUCCESS)
}

fn serve(name: &str, tcp: TcpListener, udp: UdpSocket) {
    let udp_name = name.to_string();
    std::thread::spawn(move || {
        let mut buf = [0u8; 1500];
        while let Ok((_, peer)) = udp.recv_from(&mut buf) {
            let _ = udp.send_to(format!("{udp_name} {}\n", unmap(peer)).as_bytes(), peer);
        }
    });
    for conn in tcp.incoming() {
        let Ok(mut conn) = conn else { continue };
        let name = name.to_string();
        std::thread::spawn(move || {
            let peer = conn.peer_addr().map(|p| unmap(p).to_string()).unwrap_or_default();
            if conn.write_all(format!("{name} {peer}\n").as_bytes()).is_err() {
                return;
            }
            if let Ok(mut reader) = conn.try_clone() {
                let _ = std::io::copy(&mut reader, &mut conn);
            }
        });
    }
}

fn unmap(a: SocketAddr) -> SocketAddr {
    match a {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(v4.into(), v6.port()),
            None => a,
        },
        a => a,
    }
}

/// One exchange with `target`; prints `{"reply": "...", "peer": "...", "millis": N}` or
/// `{"error": "refused|timeout|...", "millis": N}` (exit 1).
pub fn client(target: SocketAddr, udp: bool, timeout: Duration) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    let result = if udp { udp_exchange(target, timeout) } else { tcp_exchange(target, timeout) };
    let millis = started.elapsed().as_millis() as u64;
    match result {
        Ok((reply, peer)) => {
            println!("{}", serde_json::json!({"reply": reply.trim_end(), "peer": peer.to_string(), "millis": millis}));
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            let kind = match e.kind() {
                std::io::ErrorKind::ConnectionRefused => "refused".to_string(),
                std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock => "timeout".to_string(),
                _ => e.to_string(),
            };
            println!("{}", serde_json::json!({"error": kind, "millis": millis}));
            Ok(ExitCode::FAILURE)
        }
    }
}

/// Holds a TCP connection to `target`: prints the server's greeting as JSON, then sends a
/// line every `every` and prints `{"echo": n}` for each echo, until the connection fails;
/// then prints `{"closed": "..."}` and exits 1. Tests watch it across backend removals and
/// agent restarts.
pub fn hold(target: SocketAddr, every: Duration, timeout: Duration) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    let closed = |why: String| {
        println!("{}", serde_json::json!({"closed": why, "millis": started.elapsed().as_millis() as u64}));
        Ok(ExitCode::FAILURE)
    };
    let conn = match TcpStream::connect_timeout(&target, timeout) {
        Ok(c) => c,
        Err(e) => return closed(e.to_string()),
    };
    conn.set_read_timeout(Some(timeout))?;
    let peer = conn.peer_addr()?;
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut writer = conn;
    let mut line = String::new();
    if let Err(e) = reader.read_line(&mut line) {
        return closed(e.to_string());
    }
    println!("{}", serde_json::json!({"reply": line.trim_end(), "peer": peer.to_string()}));
    for n in 1u64.. {
        line.clear();
        let result = writer.write_all(format!("ping {n}\n").as_bytes()).and_then(|_| reader.read_line(&mut line));
        match result {
            Ok(0) => return closed("eof".into()),
            Ok(_) => println!("{}", serde_json::json!({"echo": n})),
            Err(e) => return closed(e.to_string()),
        }
        std::thread::sleep(every);
    }
    Ok(ExitCode::SUCCESS)
}

fn tcp_exchange(target: SocketAddr, timeout: Duration) -> std::io::Result<(String, SocketAddr)> {
    let conn = TcpStream::connect_timeout(&target, timeout)?;
    conn.set_read_timeout(Some(timeout))?;
    let peer = conn.peer_addr()?;
    let mut line = String::new();
    BufReader::new(&conn).read_line(&mut line)?;
    Ok((line, peer))
}

fn udp_exchange(target: SocketAddr, timeout: Duration) -> std::io::Result<(String, SocketAddr)> {
    let bind: SocketAddr = if target.is_ipv4() { (std::net::Ipv4Addr::UNSPECIFIED, 0).into() } else { (Ipv6Addr::UNSPECIFIED, 0).into() };
    let sock = UdpSocket::bind(bind)?;
    sock.set_read_timeout(Some(timeout))?;
    sock.send_to(b"hello\n", target)?; // unconnected: sendmsg and recvmsg are translated
    let mut buf = [0u8; 1500];
    let (n, from) = sock.recv_from(&mut buf)?;
    Ok((String::from_utf8_lossy(&buf[..n]).into_owned(), from))
}
