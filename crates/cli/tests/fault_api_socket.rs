//! Faults of the API socket, against a real lab agent: the socket is root-only; malformed and
//! oversized requests are refused with a clear status and the agent answers the next client;
//! connections that send nothing are closed after the header timeout while others are served,
//! and one that never leaves does not keep the agent from stopping; hundreds of concurrent
//! clients leave a normal client answered promptly and the agent's memory and descriptors
//! bounded; clients that hang up before their answer leave it running. The limits are
//! `sluice_agent::serve`'s constants.

#![allow(clippy::expect_used, clippy::unwrap_used)] // a test fails loudly on what it did not expect

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{privileged, TestLab};
use sluice_agent::serve::{BODY_READ_TIMEOUT, HEADER_READ_TIMEOUT, MAX_BODY_BYTES, MAX_CONNECTIONS, MAX_HEADER_BYTES, SHUTDOWN_GRACE};
use sluice_lab::state::LabState;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

/// The lab's one agent: its socket and process.
struct Agent {
    socket: PathBuf,
    pid: i32,
}

fn agent_of(lab: &TestLab) -> Agent {
    let state = LabState::load(&lab.lab_dir()).expect("lab.json readable").expect("lab.json written by up");
    let node = state.node("node0").expect("node0 in lab.json");
    Agent { socket: node.socket.clone(), pid: node.agent_pid.expect("the lab records its agent's pid") }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("tokio runtime")
}

/// Whether the process exists and is not a zombie.
fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| stat.rsplit_once(") ").map(|(_, rest)| !rest.starts_with('Z')))
        .unwrap_or(false)
}

/// Resident memory of a process, in KiB.
fn rss_kib(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("agent status readable");
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).expect("VmRSS line");
    line.split_whitespace().nth(1).and_then(|n| n.parse().ok()).expect("VmRSS in kB")
}

/// Descriptors the process holds open.
fn open_fds(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).expect("agent fd directory readable").count()
}

/// Time of one `GET /v1/status?maps=false` through the real client, or why it failed.
async fn status(socket: &Path) -> Result<Duration, String> {
    let started = Instant::now();
    let client = sluice_api::Client::new(socket);
    match client.get::<serde_json::Value>(sluice_api::paths::STATUS_BRIEF).await {
        Ok(_) => Ok(started.elapsed()),
        Err(e) => Err(e.to_string()),
    }
}

/// Waits until the agent answers `status` within `within`; panics with what it saw otherwise.
async fn answered_within(socket: &Path, within: Duration, what: &str) -> Duration {
    match tokio::time::timeout(within, status(socket)).await {
        Ok(Ok(took)) => took,
        Ok(Err(e)) => panic!("{what}: the agent refused a normal client: {e}"),
        Err(_) => panic!("{what}: a normal client got no answer within {within:?}"),
    }
}

/// Sends `request` on a fresh connection (a write the agent cut short is not an error: it may
/// refuse before reading everything) and reads until the agent closes or `wait` passes.
/// Returns the bytes read and whether the agent closed the connection.
async fn exchange(socket: &Path, request: &[u8], wait: Duration) -> (Vec<u8>, bool) {
    let mut stream = UnixStream::connect(socket).await.expect("connect to the agent socket");
    let (mut reader, mut writer) = stream.split();
    let write = async {
        let _ = writer.write_all(request).await;
    };
    let read = async {
        let mut answer = Vec::new();
        let mut buf = [0u8; 8192];
        let closed = loop {
            match reader.read(&mut buf).await {
                Ok(0) | Err(_) => break true,
                Ok(n) => answer.extend_from_slice(&buf[..n]),
            }
        };
        (answer, closed)
    };
    let (_, outcome) = tokio::join!(write, tokio::time::timeout(wait, read));
    outcome.unwrap_or_default()
}

/// The status code of an HTTP/1.1 answer.
fn status_code(answer: &[u8]) -> Option<u16> {
    let text = String::from_utf8_lossy(answer);
    let line = text.lines().next()?;
    line.strip_prefix("HTTP/1.1 ")?.get(..3)?.parse().ok()
}

fn body_of(answer: &[u8]) -> String {
    let text = String::from_utf8_lossy(answer);
    text.split_once("\r\n\r\n").map(|(_, body)| body.to_string()).unwrap_or_default()
}

fn post(path: &str, body: &[u8]) -> Vec<u8> {
    let mut request = format!(
        "POST {path} HTTP/1.1\r\nHost: sluice-agent\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    request.extend_from_slice(body);
    request
}

#[test]
fn malformed_and_oversized_requests_are_refused_and_the_agent_answers_the_next() {
    if !privileged("malformed_and_oversized_requests_are_refused_and_the_agent_answers_the_next") {
        return;
    }
    let lab = TestLab::up("apim", &[]);
    let agent = agent_of(&lab);

    // Root-only: the socket 0600 and its directory 0700, both owned by root.
    let socket_meta = std::fs::metadata(&agent.socket).expect("socket exists");
    assert_eq!(socket_meta.permissions().mode() & 0o777, 0o600, "the API socket is 0600");
    assert_eq!(socket_meta.uid(), 0, "the API socket belongs to root");
    let dir_meta = std::fs::metadata(agent.socket.parent().expect("socket directory")).expect("socket directory exists");
    assert_eq!(dir_meta.permissions().mode() & 0o777, 0o700, "the socket's directory is 0700");
    assert_eq!(dir_meta.uid(), 0, "the socket's directory belongs to root");

    let big_header = format!("GET /v1/status HTTP/1.1\r\nHost: a\r\nX-Padding: {}\r\n\r\n", "a".repeat(MAX_HEADER_BYTES * 4));
    let many_headers = format!("GET /v1/status HTTP/1.1\r\nHost: a\r\n{}\r\n", "X-A: b\r\n".repeat(500));
    let chunk = format!("{:x}\r\n{}\r\n", 64 * 1024, " ".repeat(64 * 1024));
    let chunked = format!(
        "POST /v1/cni/check HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n{}0\r\n\r\n",
        chunk.repeat(MAX_BODY_BYTES / (64 * 1024) + 2)
    );
    // Under the limit, padded with spaces: read whole and decoded (then refused by the CNI check
    // for its namespace path, which proves it was read), never a 413.
    let mut under_limit = br#"{"containerId":"c0ffee","ifname":"eth0","netns":"/proc/1/ns/net"}"#.to_vec();
    under_limit.resize(MAX_BODY_BYTES - 16, b' ');
    // (what, request, expected status, what the body must mention)
    let cases: Vec<(&str, Vec<u8>, u16, &str)> = vec![
        ("binary garbage", b"\x00\xff\x13\x37garbage\r\n\r\n".to_vec(), 400, ""),
        ("a request line without a version", b"GET /v1/status\r\n\r\n".to_vec(), 400, ""),
        ("a header line without a colon", b"GET /v1/status HTTP/1.1\r\nHost: a\r\nno colon here\r\n\r\n".to_vec(), 400, ""),
        (
            "a Content-Length that is not a number",
            b"POST /v1/cni/add HTTP/1.1\r\nHost: a\r\nContent-Length: many\r\n\r\n".to_vec(),
            400,
            "",
        ),
        ("a header block four times the limit", big_header.into_bytes(), 431, ""),
        ("500 headers", many_headers.into_bytes(), 431, ""),
        ("a body of 1 MiB", post("/v1/cni/add", &vec![b' '; 1 << 20]), 413, "larger than"),
        (
            "a Content-Length of 1 TB",
            b"POST /v1/cni/add HTTP/1.1\r\nHost: a\r\nContent-Length: 1000000000000\r\n\r\n{".to_vec(),
            413,
            "larger than",
        ),
        ("a chunked body past the limit", chunked.into_bytes(), 413, "larger than"),
        ("a body that is not JSON", post("/v1/cni/add", b"{\"containerId\": "), 400, ""),
        ("JSON of the wrong shape", post("/v1/cni/add", br#"{"containerId": 5, "ifname": []}"#), 422, ""),
        ("a body just under the limit", post("/v1/cni/check", &under_limit), 400, "network namespace"),
        ("an unknown path", b"GET /v2/everything HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n".to_vec(), 404, ""),
    ];
    let rt = runtime();
    rt.block_on(async {
        for (what, request, want, mentions) in &cases {
            let (answer, closed) = exchange(&agent.socket, request, Duration::from_secs(5)).await;
            assert_eq!(status_code(&answer), Some(*want), "{what}: answer {:?}", String::from_utf8_lossy(&answer[..answer.len().min(300)]));
            assert!(closed, "{what}: the agent closes the connection after refusing");
            assert!(body_of(&answer).contains(mentions), "{what}: the answer mentions {mentions:?}: {}", body_of(&answer));
            answered_within(&agent.socket, Duration::from_secs(2), what).await;
        }
        // A body that never arrives: the head promises 100 bytes, 10 come.
        let started = Instant::now();
        let slow = b"POST /v1/cni/add HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\n{\"contain";
        let (answer, closed) = exchange(&agent.socket, slow, BODY_READ_TIMEOUT + Duration::from_secs(5)).await;
        let took = started.elapsed();
        assert_eq!(status_code(&answer), Some(408), "a body that stops coming is refused: {}", String::from_utf8_lossy(&answer));
        assert!(closed, "and its connection closed");
        assert!(took >= BODY_READ_TIMEOUT - Duration::from_millis(500), "only after the body timeout ({took:?})");
        answered_within(&agent.socket, Duration::from_secs(2), "after a body that never came").await;
    });
    assert!(alive(agent.pid), "the agent is still running");
}

#[test]
fn idle_connections_are_closed_and_other_clients_are_served() {
    if !privileged("idle_connections_are_closed_and_other_clients_are_served") {
        return;
    }
    let lab = TestLab::up("apii", &[]);
    let agent = agent_of(&lab);
    let rt = runtime();
    rt.block_on(async {
        let baseline_fds = open_fds(agent.pid);
        // Below the connection limit: 150 that send nothing and 50 that stop mid-head.
        let opened = Instant::now();
        let mut idle = Vec::new();
        for i in 0..200 {
            let mut stream = UnixStream::connect(&agent.socket).await.expect("connect");
            if i % 4 == 0 {
                stream.write_all(b"GET /v1/status HTTP/1.1\r\nHost: a\r\nX-Slow: ").await.expect("a partial head");
            }
            idle.push(stream);
        }
        // A client with an answered request that then keeps its connection open and quiet.
        let mut kept = UnixStream::connect(&agent.socket).await.expect("connect");
        kept.write_all(b"GET /v1/status?maps=false HTTP/1.1\r\nHost: a\r\n\r\n").await.expect("a request");
        let mut first = vec![0u8; 65536];
        let n = kept.read(&mut first).await.expect("an answer");
        assert_eq!(status_code(&first[..n]), Some(200), "the keep-alive client is answered first");
        idle.push(kept);

        for round in 0..5 {
            let took = answered_within(&agent.socket, Duration::from_secs(2), "while 201 connections idle").await;
            assert!(
                took < Duration::from_secs(1),
                "round {round}: a normal client is answered promptly beside idle connections ({took:?})"
            );
        }
        // Each idle connection is closed by the agent, after the header timeout and not before.
        let deadline = opened + HEADER_READ_TIMEOUT + Duration::from_secs(5);
        for (i, mut stream) in idle.into_iter().enumerate() {
            let mut buf = [0u8; 1024];
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, stream.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => {}
                Ok(Ok(n)) => {
                    // hyper may say why before it closes; then the close follows.
                    assert!(status_code(&buf[..n]).is_some_and(|s| s >= 400), "idle connection {i}: only a refusal: {:?}", &buf[..n]);
                }
                Err(_) => panic!("idle connection {i} still open {:?} after it was opened", opened.elapsed()),
            }
        }
        let closed_after = opened.elapsed();
        assert!(
            closed_after >= HEADER_READ_TIMEOUT - Duration::from_millis(500),
            "idle connections lasted the header timeout ({closed_after:?})"
        );

        // More idle connections than the agent serves at once: the ones past the limit wait in
        // the backlog, and a normal client is still answered once the first ones time out.
        let flood: Vec<UnixStream> = {
            let mut v = Vec::new();
            for _ in 0..MAX_CONNECTIONS + 150 {
                v.push(UnixStream::connect(&agent.socket).await.expect("connect while the agent is saturated"));
            }
            v
        };
        // The agent took no more of them than its limit: each one it accepted is a descriptor.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let fds = open_fds(agent.pid);
        assert!(
            fds <= baseline_fds + MAX_CONNECTIONS + 4,
            "{} connections made the agent hold {fds} descriptors, {baseline_fds} before: more than its limit of {MAX_CONNECTIONS}",
            flood.len()
        );
        let took =
            answered_within(&agent.socket, 2 * HEADER_READ_TIMEOUT + Duration::from_secs(5), "behind a flood of idle connections").await;
        eprintln!("a normal client behind {} idle connections was answered in {took:?}", flood.len());
        assert!(took <= 2 * HEADER_READ_TIMEOUT + Duration::from_secs(2), "answered behind the flood in {took:?}");
        drop(flood);

        // Every descriptor the idle connections took is given back.
        let deadline = Instant::now() + HEADER_READ_TIMEOUT + Duration::from_secs(5);
        while open_fds(agent.pid) > baseline_fds + 4 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let fds = open_fds(agent.pid);
        assert!(fds <= baseline_fds + 4, "the agent holds {fds} descriptors, {baseline_fds} before the idle connections");

        // A client that never leaves (a followed flow stream never ends) does not keep the agent
        // from stopping: open connections get a grace period, then are closed.
        let mut follower = UnixStream::connect(&agent.socket).await.expect("connect");
        follower.write_all(b"GET /v1/flows/follow HTTP/1.1\r\nHost: a\r\n\r\n").await.expect("a follow request");
        let mut head = vec![0u8; 4096];
        let n = follower.read(&mut head).await.expect("the stream's head");
        assert_eq!(status_code(&head[..n]), Some(200), "the follow stream is open");
        let asked = Instant::now();
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(agent.pid), nix::sys::signal::Signal::SIGTERM).expect("SIGTERM the agent");
        while alive(agent.pid) && asked.elapsed() < SHUTDOWN_GRACE + Duration::from_secs(5) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let stopped = asked.elapsed();
        assert!(!alive(agent.pid), "the agent stops with a follow stream open (still running after {stopped:?})");
        eprintln!("the agent stopped {stopped:?} after SIGTERM with a follow stream open");
        assert!(!agent.socket.exists(), "the stopped agent removed its socket");
    });
}

/// What the load clients send beside plain GETs: a chunked body of 4 MiB (no Content-Length, so
/// the agent reads up to its limit before refusing) and a body just under the limit (read whole
/// and decoded).
struct Bodies {
    oversized: Vec<u8>,
    under_limit: Vec<u8>,
}

impl Bodies {
    fn new() -> Self {
        let chunk = format!("{:x}\r\n{}\r\n", 64 * 1024, " ".repeat(64 * 1024));
        let oversized = format!(
            "POST /v1/cni/add HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n{}0\r\n\r\n",
            chunk.repeat(16)
        );
        let mut body = br#"{"containerId":"c0ffee","ifname":"eth0","netns":"/proc/1/ns/net"}"#.to_vec();
        body.resize(MAX_BODY_BYTES - 16, b' ');
        Bodies { oversized: oversized.into_bytes(), under_limit: post("/v1/cni/check", &body) }
    }
}

/// One client's round of requests, mixing what a busy node sends with what a broken one does.
/// Returns [requests answered, requests cut off without an answer].
async fn client_round(socket: &Path, n: usize, bodies: &Bodies) -> [usize; 2] {
    let mut answered = [0usize; 2];
    let status = b"GET /v1/status?maps=false HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n";
    let flows = b"GET /v1/flows?last=10 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n";
    let bad_json = post("/v1/cni/check", b"{\"containerId\":");
    for i in 0..n {
        let request: &[u8] = match i % 5 {
            0 => status,
            1 => &bodies.oversized,
            2 => flows,
            3 => &bodies.under_limit,
            _ => &bad_json,
        };
        let (answer, _) = exchange(socket, request, Duration::from_secs(30)).await;
        answered[usize::from(status_code(&answer).is_none())] += 1;
    }
    answered
}

#[test]
fn hundreds_of_concurrent_clients_leave_the_agent_answering_with_bounded_memory() {
    if !privileged("hundreds_of_concurrent_clients_leave_the_agent_answering_with_bounded_memory") {
        return;
    }
    const CLIENTS: usize = 400;
    const ROUNDS: usize = 20;
    let lab = TestLab::up("apic", &[]);
    let agent = agent_of(&lab);
    let rt = runtime();
    rt.block_on(async {
        // Warm up every path the clients take, so the baseline holds what any first use allocates.
        let bodies = Arc::new(Bodies::new());
        client_round(&agent.socket, 10, &bodies).await;
        let (rss_before, fds_before) = (rss_kib(agent.pid), open_fds(agent.pid));

        let started = Instant::now();
        let mut clients = tokio::task::JoinSet::new();
        for _ in 0..CLIENTS {
            let (socket, bodies) = (agent.socket.clone(), bodies.clone());
            clients.spawn(async move { client_round(&socket, ROUNDS, &bodies).await });
        }
        // A normal client asks every 100 ms while they run, and samples the agent's memory.
        let mut latencies = Vec::new();
        let mut rss_peak = rss_before;
        let mut totals = [0usize; 2];
        let mut add = |done: Result<[usize; 2], tokio::task::JoinError>| {
            let [ok, cut] = done.expect("a client task");
            totals[0] += ok;
            totals[1] += cut;
        };
        while !clients.is_empty() && started.elapsed() < Duration::from_secs(120) {
            let took = answered_within(&agent.socket, Duration::from_secs(10), "beside 400 clients").await;
            latencies.push(took);
            rss_peak = rss_peak.max(rss_kib(agent.pid));
            while let Some(done) = clients.try_join_next() {
                add(done);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        while let Some(done) = clients.join_next().await {
            add(done);
        }
        let elapsed = started.elapsed();
        latencies.sort();
        let (median, worst) = (latencies[latencies.len() / 2], latencies[latencies.len() - 1]);
        let rss_after = rss_kib(agent.pid);
        eprintln!(
            "{CLIENTS} clients x {ROUNDS} requests in {elapsed:?}: {} answered, {} cut; normal client: {} asks, median {median:?}, worst {worst:?}; RSS {rss_before} KiB before, peak {rss_peak} KiB, {rss_after} KiB after",
            totals[0], totals[1], latencies.len()
        );
        assert_eq!(totals[0] + totals[1], CLIENTS * ROUNDS, "every request was made");
        assert_eq!(totals[1], 0, "every request got an answer (none cut off)");
        assert!(latencies.len() >= 3, "the normal client asked while the load ran ({} times)", latencies.len());
        assert!(median < Duration::from_secs(1), "a normal client is answered within 1 s under load, median {median:?}");
        assert!(worst < Duration::from_secs(3), "and always within 3 s, worst {worst:?}");

        // Memory: whatever the clients send, the agent holds per connection it serves at most a
        // body (twice while its chunks are joined into one buffer) and a header block, plus the
        // connection's own buffers and task (64 KiB allowed); 32 MiB for everything else.
        let per_connection_kib = (2 * MAX_BODY_BYTES + MAX_HEADER_BYTES) as u64 / 1024 + 64;
        let bound_kib = MAX_CONNECTIONS as u64 * per_connection_kib + 32 * 1024;
        let grew = rss_peak.saturating_sub(rss_before);
        assert!(grew <= bound_kib, "the agent's RSS grew by {grew} KiB under load, more than the {bound_kib} KiB its limits allow");

        // Descriptors: every connection's is given back.
        let deadline = Instant::now() + Duration::from_secs(10);
        while open_fds(agent.pid) > fds_before + 4 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let fds = open_fds(agent.pid);
        assert!(fds <= fds_before + 4, "the agent holds {fds} descriptors after the load, {fds_before} before");
        answered_within(&agent.socket, Duration::from_secs(2), "after the load").await;
    });
    assert!(alive(agent.pid), "the agent is still running");
}

/// Clients that hang up before their answer: the agent's write to the closed socket fails (a
/// vectored write there raises SIGPIPE, which must not end the agent) and it answers the next
/// client. A CNI plugin killed by its runtime's timeout is such a client.
#[test]
fn clients_that_hang_up_before_their_answer_leave_the_agent_running() {
    if !privileged("clients_that_hang_up_before_their_answer_leave_the_agent_running") {
        return;
    }
    let lab = TestLab::up("hup", &[]);
    let agent = agent_of(&lab);
    let rt = runtime();
    rt.block_on(async {
        for i in 0..200 {
            let mut stream = UnixStream::connect(&agent.socket).await.expect("connect");
            // The metrics answer is several kilobytes: written after the client is gone.
            stream.write_all(b"GET /v1/metrics HTTP/1.1\r\nhost: sluice-agent\r\n\r\n").await.expect("send the request");
            drop(stream);
            if i % 50 == 49 {
                tokio::time::sleep(Duration::from_millis(100)).await;
                assert!(alive(agent.pid), "the agent is alive after {} clients hung up", i + 1);
            }
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(alive(agent.pid), "the agent survives clients that hang up");
        status(&agent.socket).await.expect("and answers the next client");
    });
}
