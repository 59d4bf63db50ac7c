//! Layer-7 policy end to end: a real HTTP server (busybox httpd) behind a SluiceNetworkPolicy
//! with HTTP rules, and a real HTTP client (curl) in pods on the server's node and on another
//! node, over IPv4 and IPv6. Allowed requests get the server's answer; every other request on
//! the port gets `403 Forbidden` from the node's proxy (never a silent drop); a peer the rule
//! does not name is dropped at layer 3/4 as before. Then a long download through the proxy
//! that neither both agents' restarts nor the proxy's own restart break, the new proxy
//! enforcing the same rules at once; and the client's side, with an egress rule.

#![allow(clippy::expect_used, clippy::unwrap_used)] // a test fails loudly on what it did not expect

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{privileged, TestLab};

const SNP: &str = "apiVersion: sluice.dev/v1\nkind: SluiceNetworkPolicy\n";
/// The file the long download fetches: 24 MiB at 4 MiB/s, about six seconds.
const BIG_BYTES: usize = 24 << 20;

/// The pods: the server `web` on node0; clients `near` (node0) and `far` (node1) labelled
/// `app: client`; `stranger` (node1) labelled `app: other`.
fn manifest(docroot: &Path) -> String {
    let busybox = which("busybox");
    let pod = |name: &str, node: usize, app: &str, command: &str| {
        format!(
            "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: shop, labels: {{app: {app}}}}}\n\
             spec:\n  nodeName: node{node}\n  containers:\n  - name: main\n    command: {command}\n"
        )
    };
    let idle = "[sleep, infinity]";
    [
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: shop}\n".to_owned(),
        pod("web", 0, "web", &format!("[{busybox}, httpd, -f, -p, '[::]:80', -h, {}]", docroot.display())),
        pod("near", 0, "client", idle),
        pod("far", 1, "client", idle),
        pod("stranger", 1, "other", idle),
    ]
    .concat()
}

fn which(cmd: &str) -> String {
    let out = std::process::Command::new("sh").args(["-c", &format!("command -v {cmd}")]).output().expect("sh");
    let path = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert!(!path.is_empty(), "{cmd} is needed (scripts/install-deps.sh installs it)");
    path
}

/// `curl` from a pod: (status code, body); status 0 when no HTTP answer came.
fn request(lab: &TestLab, pod: &str, method: &str, url: &str) -> (u16, String) {
    let out = lab.exec("shop", pod, &["curl", "-g", "-s", "-X", method, "--max-time", "3", "-w", "\n%{http_code}", url]);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = stdout.rsplit_once('\n').unwrap_or(("", stdout.as_str()));
    (code.trim().parse().unwrap_or(0), body.to_owned())
}

/// Retries until the answer's status is `want` (a policy takes a moment to be programmed).
fn request_until(lab: &TestLab, pod: &str, method: &str, url: &str, want: u16) -> (u16, String) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let answer = request(lab, pod, method, url);
        if answer.0 == want || Instant::now() > deadline {
            return answer;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn urls(lab: &TestLab, path: &str) -> [String; 2] {
    let (v4, v6) = lab.pod_ips("shop", "web");
    [format!("http://{v4}{path}"), format!("http://[{v6}]{path}")]
}

#[test]
fn http_rules_allow_what_they_name_and_the_proxy_answers_403_to_the_rest() {
    if !privileged("http_rules_allow_what_they_name_and_the_proxy_answers_403_to_the_rest") {
        return;
    }
    let docroot = tempfile::tempdir().unwrap();
    for (dir, file, body) in [("public", "hello.txt", "hello from web\n"), ("admin", "secret.txt", "the secret\n")] {
        std::fs::create_dir_all(docroot.path().join(dir)).unwrap();
        std::fs::write(docroot.path().join(dir).join(file), body).unwrap();
    }
    let big: Vec<u8> = (0..BIG_BYTES).map(|i| (i % 251) as u8).collect();
    std::fs::write(docroot.path().join("public/big.bin"), &big).unwrap();
    let lab = TestLab::up("l7", &["--nodes", "2"]);
    lab.apply_ok(&manifest(docroot.path()));

    // Without policy the server answers everything itself.
    for url in urls(&lab, "/admin/secret.txt") {
        let (code, body) = request_until(&lab, "far", "GET", &url, 200);
        assert_eq!((code, body.as_str()), (200, "the secret\n"), "no policy yet: GET {url} from far");
    }

    lab.apply_ok(&format!(
        "{SNP}metadata: {{name: web-http, namespace: shop}}\nspec:\n  endpointSelector: {{matchLabels: {{app: web}}}}\n  ingress:\n  \
         - fromEndpoints: [{{matchLabels: {{app: client}}}}]\n    toPorts:\n    - ports: [{{port: '80', protocol: TCP}}]\n      \
         rules: {{http: [{{method: GET, path: '/public/.*'}}]}}\n"
    ));
    for client in ["near", "far"] {
        for (public, admin) in urls(&lab, "/public/hello.txt").into_iter().zip(urls(&lab, "/admin/secret.txt")) {
            let (code, body) = request_until(&lab, client, "GET", &admin, 403);
            assert_eq!(code, 403, "{client}: GET {admin} is outside the rule: the proxy answers 403 (body {body:?})");
            assert_eq!(body, "Access denied\n", "{client}: the 403 comes from the proxy");
            let (code, body) = request(&lab, client, "GET", &public);
            assert_eq!((code, body.as_str()), (200, "hello from web\n"), "{client}: GET {public} is allowed and forwarded");
            let (code, _) = request(&lab, client, "POST", &public);
            assert_eq!(code, 403, "{client}: POST {public}: the rule allows only GET");
        }
    }
    for url in urls(&lab, "/public/hello.txt") {
        let out = lab.exec("shop", "stranger", &["curl", "-g", "-s", "--max-time", "2", &url]);
        // curl's 28: the operation timed out (a drop), not 7 (refused) nor a missing curl.
        assert_eq!(out.status.code(), Some(28), "stranger is no peer of the rule: dropped at layer 3/4: {}", common::text(&out));
    }
    // A path a server would resolve past the rule is refused, not judged.
    for url in urls(&lab, "/public/../admin/secret.txt") {
        let out = lab.exec("shop", "near", &["curl", "-g", "-s", "--path-as-is", "--max-time", "3", "-w", "\n%{http_code}", &url]);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(stdout.ends_with("\n400"), "{url}: dot-segments get 400 from the proxy: {stdout:?}");
    }

    // policy trace says the connection goes through the proxy, and by which HTTP rules.
    let trace = lab.json(&["policy", "trace", "--from", "shop/far", "--to", "shop/web", "--port", "80", "-o", "json"]);
    let side =
        &trace["nodes"].as_array().unwrap().iter().find(|n| n["trace"]["ingress"].is_object()).expect("node0 answers")["trace"]["ingress"];
    assert!(side["reason"].as_str().unwrap_or_default().contains("through the layer-7 proxy"), "{side}");
    assert_eq!(side["http"], serde_json::json!(["SluiceNetworkPolicy shop/web-http: method GET, path /public/.*"]), "{side}");

    // The proxy's requests are flows of node0, with method, path, status and verdict.
    let out = lab.run(&["observe", "--node", "node0", "--type", "l7", "--http-path", "/admin", "-o", "json"]);
    assert!(out.status.success(), "observe: {}", common::text(&out));
    let flows: Vec<serde_json::Value> =
        String::from_utf8_lossy(&out.stdout).lines().map(|l| serde_json::from_str(l).expect("one JSON flow per line")).collect();
    let denied = flows.iter().find(|f| f["http"]["method"] == "GET" && f["http"]["status"] == 403);
    let denied = denied.unwrap_or_else(|| panic!("a denied GET /admin/... among the layer-7 flows: {flows:?}"));
    assert_eq!(denied["verdict"], "DROPPED", "{denied}");
    assert_eq!(denied["http"]["path"], "/admin/secret.txt", "{denied}");
    assert_eq!(denied["destination"]["pod"], "web", "the local server is named: {denied}");
    assert_eq!(denied["http"]["directions"], serde_json::json!(["ingress"]), "{denied}");
    assert!(flows.iter().all(|f| f["http"]["path"].as_str().is_some_and(|p| p.starts_with("/admin"))), "--http-path filters: {flows:?}");
    let metrics = lab.run(&["metrics", "--node", "node0"]);
    let metrics = String::from_utf8_lossy(&metrics.stdout);
    assert!(metrics.contains(r#"sluice_l7_requests_total{verdict="DROPPED",status="4xx"}"#), "denied requests are counted: {metrics}");
    assert!(metrics.contains(r#"sluice_l7_requests_total{verdict="FORWARDED",status="2xx"}"#), "forwarded requests are counted");

    // A long download through node0's proxy keeps flowing while both agents and then the
    // proxy itself restart: the proxy is a process of its own, the maps stay pinned, and a
    // replaced proxy closes only its listeners and finishes its connections.
    let [big_v4, _] = urls(&lab, "/public/big.bin");
    let download = lab
        .cmd(&[
            "exec",
            "far",
            "-n",
            "shop",
            "--",
            "curl",
            "-s",
            "--limit-rate",
            "4M",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code} %{size_download}",
            &big_v4,
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(800));
    for node in ["node0", "node1"] {
        let out = lab.run(&["restart-agent", "--node", node]);
        assert!(out.status.success(), "restart-agent {node}: {}", common::text(&out));
    }
    let out = lab.run(&["restart-proxy", "--node", "node0"]);
    assert!(out.status.success(), "restart-proxy: {}", common::text(&out));
    // The new proxy takes new connections at once and enforces the rules the agent left.
    for (public, admin) in urls(&lab, "/public/hello.txt").into_iter().zip(urls(&lab, "/admin/secret.txt")) {
        assert_eq!(request(&lab, "near", "GET", &public).0, 200, "during the old proxy's drain: GET {public}");
        assert_eq!(request(&lab, "near", "GET", &admin).0, 403, "during the old proxy's drain: GET {admin}");
    }
    let out = download.wait_with_output().unwrap();
    let summary = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "the download survives the agents' and the proxy's restarts (curl: {summary})");
    assert_eq!(summary, format!("200 {BIG_BYTES}"), "all of it arrived");

    // The client's side: egress rules, enforced by the client's own node's proxy.
    let out = lab.run(&["delete", "sluicenetworkpolicy", "web-http", "-n", "shop"]);
    assert!(out.status.success(), "delete: {}", common::text(&out));
    lab.apply_ok(&format!(
        "{SNP}metadata: {{name: client-http, namespace: shop}}\nspec:\n  endpointSelector: {{matchLabels: {{app: client}}}}\n  egress:\n  \
         - toEndpoints: [{{matchLabels: {{app: web}}}}]\n    toPorts:\n    - ports: [{{port: '80', protocol: TCP}}]\n      \
         rules: {{http: [{{method: GET, path: '/admin/.*', headers: ['X-Role: admin']}}]}}\n"
    ));
    for client in ["near", "far"] {
        for (public, admin) in urls(&lab, "/public/hello.txt").into_iter().zip(urls(&lab, "/admin/secret.txt")) {
            let (code, body) = request_until(&lab, client, "GET", &public, 403);
            assert_eq!((code, body.as_str()), (403, "Access denied\n"), "{client}: egress rule: GET {public} is outside it");
            let (code, _) = request(&lab, client, "GET", &admin);
            assert_eq!(code, 403, "{client}: GET {admin} without the header the rule asks for");
            let out = lab.exec("shop", client, &["curl", "-g", "-s", "--max-time", "3", "-H", "X-Role: admin", &admin]);
            assert_eq!(String::from_utf8_lossy(&out.stdout), "the secret\n", "{client}: GET {admin} with X-Role: admin is allowed");
        }
    }
}
