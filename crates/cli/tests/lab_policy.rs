//! Network policy end to end: the upstream 9x9 scenarios of the engine's tests
//! (crates/policy/tests) in one two-node lab, with real pods x/a..z/c spread over both nodes
//! and every pair probed over TCP 80, TCP 81 and UDP 80, IPv4 and IPv6. Also ipBlock from the
//! external client, ipBlocks over pod addresses (the upstream CIDR tests: egress to a server in
//! a block, except, an excepted address allowed by another policy, ingress with ports, a block
//! holding one of two pods that share an identity) against a SluiceNetworkPolicy whose CIDR
//! rules keep Cilium's meaning, a Sluice deny rule over an allow, audit mode, label changes
//! taking effect without re-applying policies, an established connection cut by a new policy,
//! and what `policy trace`, `policy get`, `observe` and the drop counters say.

#![allow(clippy::expect_used, clippy::unwrap_used)] // a test fails loudly on what it did not expect

mod common;

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::process::{Child, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{privileged, sluice_bin, text, TestLab};

const NAMESPACES: [&str; 3] = ["x", "y", "z"];
const PODS: [&str; 3] = ["a", "b", "c"];
/// What every source probes at every other pod: (protocol, port), each over both families.
const SERVICES: [(&str, u16); 3] = [("tcp", 80), ("tcp", 81), ("udp", 80)];
/// The lab's external client on the underlay.
const EXTERNAL_V4: &str = "198.18.0.250";
/// How long a store change may take to show in the datapath (the agent programs within
/// ~200 ms; a denied probe takes the probe timeout to tell).
const CONVERGE: Duration = Duration::from_secs(3);

/// The lab's pod address pools: every pod of every node is in them.
const POD_POOL_V4: &str = sluice_lab::names::POD_POOL_V4;
const POD_POOL_V6: &str = sluice_lab::names::POD_POOL_V6;

const NP: &str = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\n";
const SNP: &str = "apiVersion: sluice.dev/v1\nkind: SluiceNetworkPolicy\n";

/// Every connection allowed.
const ALL: &str = "
x/a ... ... ...
x/b ... ... ...
x/c ... ... ...
y/a ... ... ...
y/b ... ... ...
y/c ... ... ...
z/a ... ... ...
z/b ... ... ...
z/c ... ... ...
";

/// Column x/a denied, the rest open.
const XA_CLOSED: &str = "
x/a X.. ... ...
x/b X.. ... ...
x/c X.. ... ...
y/a X.. ... ...
y/b X.. ... ...
y/c X.. ... ...
z/a X.. ... ...
z/b X.. ... ...
z/c X.. ... ...
";

/// Column x/a allows only the listed rows; the rest of the grid is open.
fn only_to_xa(allowed: &[&str]) -> String {
    let mut out = String::new();
    for key in pod_keys() {
        let cell = if allowed.contains(&key.as_str()) { '.' } else { 'X' };
        out.push_str(&format!("{key} {cell}.. ... ...\n"));
    }
    out
}

/// Row x/a as given, the rest open.
fn from_xa(row: &str) -> String {
    let mut out = String::new();
    for key in pod_keys() {
        out.push_str(&format!("{key} {}\n", if key == "x/a" { row } else { "... ... ..." }));
    }
    out
}

/// The same grid for TCP 80, TCP 81 and UDP 80.
fn same(grid: &str) -> [String; 3] {
    [grid.to_owned(), grid.to_owned(), grid.to_owned()]
}

fn pod_keys() -> Vec<String> {
    NAMESPACES.iter().flat_map(|ns| PODS.iter().map(move |p| format!("{ns}/{p}"))).collect()
}

fn np(body: &str) -> String {
    format!("{NP}{body}")
}

fn snp(body: &str) -> String {
    format!("{SNP}{body}")
}

// === the cluster ===

/// Namespaces x, y, z labelled `ns`; pods a, b, c in each labelled `pod`, alternating over
/// node0 and node1 (x/a node0, x/b node1, x/c node0, y/a node1, ...), serving 80 and 81 on
/// TCP and UDP with named container ports. `pod_labels` and `ns_labels` override the labels
/// of one pod or namespace (the label-change scenarios).
fn cluster_manifest(pod_labels: &[(&str, &str)], ns_labels: &[(&str, &str)]) -> String {
    let bin = sluice_bin();
    let bin = bin.display();
    let mut out = String::new();
    for ns in NAMESPACES {
        let labels = ns_labels.iter().find(|(n, _)| *n == ns).map_or(format!("{{ns: {ns}}}"), |(_, l)| (*l).to_owned());
        out.push_str(&format!("---\napiVersion: v1\nkind: Namespace\nmetadata: {{name: {ns}, labels: {labels}}}\n"));
    }
    for (i, key) in pod_keys().iter().enumerate() {
        let (ns, pod) = key.split_once('/').unwrap();
        let labels = pod_labels.iter().find(|(k, _)| k == key).map_or(format!("{{pod: {pod}}}"), |(_, l)| (*l).to_owned());
        out.push_str(&format!(
            "---
apiVersion: v1
kind: Pod
metadata: {{name: {pod}, namespace: {ns}, labels: {labels}}}
spec:
  nodeName: node{node}
  containers:
  - name: serve
    command: [{bin}, svc-server, --name, {ns}-{pod}, --port, '80', --port, '81']
    ports:
    - {{name: serve-80-tcp, containerPort: 80}}
    - {{name: serve-81-tcp, containerPort: 81}}
    - {{name: serve-80-udp, containerPort: 80, protocol: UDP}}
    - {{name: serve-81-udp, containerPort: 81, protocol: UDP}}
",
            node = i % 2
        ));
    }
    out
}

/// The lab with the scenario cluster, and each pod's (IPv4, IPv6) in x/a..z/c order.
struct Cluster {
    lab: TestLab,
    ips: Vec<(String, String)>,
}

/// Reachability seen by probes: `[service][v6][from][to]`, the diagonal left false.
type Observed = [[[[bool; 9]; 9]; 2]; 3];

impl Cluster {
    fn up() -> Self {
        let lab = TestLab::up("pol", &["--nodes", "2"]);
        lab.apply_ok(&cluster_manifest(&[], &[]));
        let ips = pod_keys()
            .iter()
            .map(|k| {
                let (ns, pod) = k.split_once('/').unwrap();
                lab.pod_ips(ns, pod)
            })
            .collect();
        Cluster { lab, ips }
    }

    fn addr(&self, index: usize, v6: bool, port: u16) -> String {
        let (v4, v6addr) = &self.ips[index];
        if v6 {
            format!("[{v6addr}]:{port}")
        } else {
            format!("{v4}:{port}")
        }
    }

    /// One `svc-probe` per source pod, all nine at once.
    fn observe(&self) -> Observed {
        let bin = sluice_bin();
        let bin = bin.to_str().unwrap();
        let rows: Vec<serde_json::Value> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..9)
                .map(|from| {
                    s.spawn(move || {
                        let mut targets = Vec::new();
                        for to in (0..9).filter(|to| *to != from) {
                            for (proto, port) in SERVICES {
                                for v6 in [false, true] {
                                    targets.push(format!("{proto}:{}", self.addr(to, v6, port)));
                                }
                            }
                        }
                        let key = &pod_keys()[from];
                        let (ns, pod) = key.split_once('/').unwrap();
                        let argv: Vec<&str> =
                            [bin, "svc-probe", "--timeout", "700ms"].into_iter().chain(targets.iter().map(String::as_str)).collect();
                        let out = self.lab.exec(ns, pod, &argv);
                        assert!(out.status.success(), "svc-probe in {key}: {}", text(&out));
                        serde_json::from_slice::<serde_json::Value>(&out.stdout)
                            .unwrap_or_else(|e| panic!("svc-probe in {key} printed invalid JSON ({e}): {}", text(&out)))
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let mut seen = [[[[false; 9]; 9]; 2]; 3];
        for (from, row) in rows.iter().enumerate() {
            for to in (0..9).filter(|to| *to != from) {
                for (s, (proto, port)) in SERVICES.iter().enumerate() {
                    for v6 in [false, true] {
                        let target = format!("{proto}:{}", self.addr(to, v6, *port));
                        seen[s][usize::from(v6)][from][to] =
                            row[&target].as_bool().unwrap_or_else(|| panic!("svc-probe from {} reports {target}: {row}", pod_keys()[from]));
                    }
                }
            }
        }
        seen
    }

    /// Probes until every grid matches `expected` (TCP 80, TCP 81, UDP 80) or [`CONVERGE`]
    /// passes; panics with expected and observed grids side by side.
    fn expect(&self, scenario: &str, expected: &[String; 3]) {
        let want: Vec<Vec<char>> = expected.iter().map(|g| parse(g)).collect();
        for (g, cells) in want.iter().enumerate() {
            assert_eq!(cells.len(), 81, "{scenario}: expected grid {} has 81 cells", g);
        }
        let started = Instant::now();
        loop {
            let seen = self.observe();
            let mismatches: Vec<String> = (0..3)
                .flat_map(|s| [false, true].map(move |v6| (s, v6)))
                .filter(|(s, v6)| differs(&want[*s], &seen[*s][usize::from(*v6)]))
                .map(|(s, v6)| {
                    let (proto, port) = SERVICES[s];
                    let family = if v6 { "IPv6" } else { "IPv4" };
                    format!("{scenario}: {proto}/{port} {family}\n{}", side_by_side(&want[s], &seen[s][usize::from(v6)]))
                })
                .collect();
            if mismatches.is_empty() {
                eprintln!("{scenario}: as expected after {:?}", started.elapsed());
                return;
            }
            assert!(
                started.elapsed() < CONVERGE,
                "{} grid(s) differ after {:?}:\n{}",
                mismatches.len(),
                started.elapsed(),
                mismatches.join("\n")
            );
        }
    }

    /// `ipBlock` peers for pod `index`'s IPv4 /32 and IPv6 /128.
    fn host_blocks(&self, index: usize) -> String {
        let (v4, v6) = &self.ips[index];
        format!("{{ipBlock: {{cidr: {v4}/32}}}}, {{ipBlock: {{cidr: '{v6}/128'}}}}")
    }

    /// `ipBlock` peers over the pod pools of both families, except pod `index`'s addresses.
    fn pools_except(&self, index: usize) -> String {
        let (v4, v6) = &self.ips[index];
        format!("{{ipBlock: {{cidr: {POD_POOL_V4}, except: [{v4}/32]}}}}, {{ipBlock: {{cidr: '{POD_POOL_V6}', except: ['{v6}/128']}}}}")
    }

    fn apply(&self, yaml: &str) {
        self.lab.apply_ok(yaml);
    }

    /// Deletes what `yaml` names (policies only: the cluster stays).
    fn delete(&self, yaml: &str) {
        let mut f = tempfile::Builder::new().suffix(".yaml").tempfile().unwrap();
        std::io::Write::write_all(&mut f, yaml.as_bytes()).unwrap();
        let out = self.lab.run(&["delete", "-f", f.path().to_str().unwrap()]);
        assert!(out.status.success(), "delete failed: {}", text(&out));
    }

    /// `svc-probe` from the external client: target -> reached.
    fn probe_external(&self, targets: &[String]) -> serde_json::Value {
        let bin = sluice_bin();
        let argv: Vec<&str> =
            [bin.to_str().unwrap(), "svc-probe", "--timeout", "700ms"].into_iter().chain(targets.iter().map(String::as_str)).collect();
        let out = self.lab.run(&[&["exec", "--external", "--"], argv.as_slice()].concat());
        assert!(out.status.success(), "svc-probe in the external client: {}", text(&out));
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("invalid JSON ({e}): {}", text(&out)))
    }

    fn stdout(&self, args: &[&str]) -> String {
        let out = self.lab.run(args);
        assert!(out.status.success(), "sluice {args:?}: {}", text(&out));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `observe -o json` flows matching `args`.
    fn flows(&self, args: &[&str]) -> Vec<serde_json::Value> {
        let out = self.stdout(&[&["observe", "-o", "json"], args].concat());
        out.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("observe printed invalid JSON ({e}): {l}"))).collect()
    }
}

/// The cells of a grid in the engine tests' format: each line starting with a pod key
/// contributes the '.' and 'X' after it.
fn parse(grid: &str) -> Vec<char> {
    grid.lines()
        .filter_map(|l| l.trim().split_once(' ').filter(|(k, _)| k.contains('/')))
        .flat_map(|(_, cells)| cells.chars().filter(|c| matches!(c, '.' | 'X')).collect::<Vec<_>>())
        .collect()
}

/// Whether observed differs from expected off the diagonal (a pod's traffic to itself stays
/// in its network namespace and never meets the datapath).
fn differs(want: &[char], seen: &[[bool; 9]; 9]) -> bool {
    (0..9).any(|from| (0..9).any(|to| from != to && (want[from * 9 + to] == '.') != seen[from][to]))
}

fn side_by_side(want: &[char], seen: &[[bool; 9]; 9]) -> String {
    let header = "     xa xb xc ya yb yc za zb zc";
    let mut out = format!("expected{}   observed\n{header}   {header}\n", " ".repeat(header.len() - 5));
    for (from, key) in pod_keys().iter().enumerate() {
        let row =
            |cell: &dyn Fn(usize) -> char| (0..9).map(|to| format!(" {} ", if to == from { '-' } else { cell(to) })).collect::<String>();
        let expected = row(&|to| want[from * 9 + to]);
        let observed = row(&|to| if seen[from][to] { '.' } else { 'X' });
        let mark = if expected == observed { "" } else { "   <-" };
        out.push_str(&format!("{key} {expected}   {key} {observed}{mark}\n"));
    }
    out
}

// === a held connection ===

/// A held connection's client, stopped when the scenario ends, even on failure.
struct Held(Child);

impl Drop for Held {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `svc-client --hold` in a pod, its stdout lines on a channel with the time they came.
fn hold(lab: &TestLab, ns: &str, pod: &str, target: &str) -> (Held, mpsc::Receiver<(Instant, String)>) {
    let bin = sluice_bin();
    let mut child = lab
        .cmd(&["exec", pod, "-n", ns, "--", bin.to_str().unwrap(), "svc-client", target, "--hold"])
        .stdout(Stdio::piped())
        .stdin(Stdio::null())
        .spawn()
        .expect("spawn svc-client --hold");
    let (tx, rx) = mpsc::channel();
    let out = child.stdout.take().expect("stdout");
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines() {
            let Ok(line) = line else { break };
            if tx.send((Instant::now(), line)).is_err() {
                break;
            }
        }
    });
    (Held(child), rx)
}

/// Lines until `for_` passes or the client reports the connection closed.
fn collect(rx: &mpsc::Receiver<(Instant, String)>, for_: Duration) -> Vec<(Instant, String)> {
    let end = Instant::now() + for_;
    let mut out = Vec::new();
    while let Some(left) = end.checked_duration_since(Instant::now()) {
        match rx.recv_timeout(left) {
            Ok((at, line)) => {
                let closed = line.contains("closed");
                out.push((at, line));
                if closed {
                    break;
                }
            }
            Err(_) => break,
        }
    }
    out
}

// === scenarios ===

/// A scenario: its policies (removed afterwards) and what it checks.
struct Scenario {
    name: &'static str,
    policies: String,
    run: Check,
}

/// What a scenario does with the cluster (applies its policies, probes, asserts).
type Check = Box<dyn Fn(&Cluster, &Scenario)>;

/// Applies the policies and expects the grids.
fn grids(name: &'static str, policies: String, expected: [String; 3]) -> Scenario {
    Scenario {
        name,
        policies,
        run: Box::new(move |c, s| {
            if !s.policies.is_empty() {
                c.apply(&s.policies);
            }
            c.expect(s.name, &expected);
        }),
    }
}

fn custom(name: &'static str, policies: String, run: impl Fn(&Cluster, &Scenario) + 'static) -> Scenario {
    Scenario { name, policies, run: Box::new(run) }
}

fn scenarios() -> Vec<Scenario> {
    let deny_all_x = np("metadata: {name: deny-all, namespace: x}\nspec:\n  podSelector: {}\n");
    let x_closed = "
x/a XXX ... ...
x/b XXX ... ...
x/c XXX ... ...
y/a XXX ... ...
y/b XXX ... ...
y/c XXX ... ...
z/a XXX ... ...
z/b XXX ... ...
z/c XXX ... ...
";
    let xa_ingress_on = |ports: &str| {
        np(&format!(
            "metadata: {{name: ports, namespace: x}}\nspec:\n  podSelector: {{matchLabels: {{pod: a}}}}\n  ingress: [{{ports: {ports}}}]\n"
        ))
    };
    vec![
        grids("no policy", String::new(), same(ALL)),
        custom("deny-all ingress in x", deny_all_x, move |c, s| {
            c.apply(&s.policies);
            c.expect(s.name, &same(x_closed));
            explain_deny_all(c);
        }),
        grids(
            "allow from the same namespace only",
            np("metadata: {name: same-ns, namespace: x}\nspec:\n  podSelector: {}\n  ingress: [{from: [{podSelector: {}}]}]\n"),
            same(
                "
x/a ... ... ...
x/b ... ... ...
x/c ... ... ...
y/a XXX ... ...
y/b XXX ... ...
y/c XXX ... ...
z/a XXX ... ...
z/b XXX ... ...
z/c XXX ... ...
",
            ),
        ),
        grids(
            "podSelector is confined to the policy namespace",
            np("metadata: {name: from-b, namespace: x}\nspec:\n  podSelector: {matchLabels: {pod: a}}\n  ingress: [{from: [{podSelector: {matchLabels: {pod: b}}}]}]\n"),
            same(&only_to_xa(&["x/b"])),
        ),
        grids(
            "namespaceSelector and podSelector in one peer: AND",
            np(r#"
metadata: {name: from-y-b, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress:
  - from:
    - namespaceSelector: {matchLabels: {ns: y}}
      podSelector: {matchLabels: {pod: b}}
"#),
            same(&only_to_xa(&["y/b"])),
        ),
        grids(
            "namespaceSelector and podSelector as two peers: OR",
            np(r#"
metadata: {name: from-y-or-b, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress:
  - from:
    - namespaceSelector: {matchLabels: {ns: y}}
    - podSelector: {matchLabels: {pod: b}}
"#),
            same(&only_to_xa(&["x/b", "y/a", "y/b", "y/c"])),
        ),
        grids(
            "namespaceSelector matchExpressions NotIn",
            np(r#"
metadata: {name: not-from-y, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress:
  - from:
    - namespaceSelector:
        matchExpressions:
        - {key: ns, operator: NotIn, values: [y]}
        - {key: team, operator: DoesNotExist}
"#),
            same(&only_to_xa(&["x/a", "x/b", "x/c", "z/a", "z/b", "z/c"])),
        ),
        grids("port 80 by number (TCP by default)", xa_ingress_on("[{port: 80}]"), [ALL.into(), XA_CLOSED.into(), XA_CLOSED.into()]),
        grids("port by name (serve-80-tcp)", xa_ingress_on("[{port: serve-80-tcp}]"), [ALL.into(), XA_CLOSED.into(), XA_CLOSED.into()]),
        grids(
            "ports by name on two protocols (serve-81-tcp, UDP serve-80-udp)",
            xa_ingress_on("[{port: serve-81-tcp}, {protocol: UDP, port: serve-80-udp}]"),
            [XA_CLOSED.into(), ALL.into(), ALL.into()],
        ),
        grids("a TCP port named after a UDP container port resolves nowhere", xa_ingress_on("[{port: serve-80-udp}]"), same(XA_CLOSED)),
        grids("endPort 80-81", xa_ingress_on("[{port: 80, endPort: 81}]"), [ALL.into(), ALL.into(), XA_CLOSED.into()]),
        grids(
            "egress deny-all in y",
            np("metadata: {name: deny-egress, namespace: y}\nspec:\n  podSelector: {}\n  policyTypes: [Egress]\n"),
            same(
                "
x/a ... ... ...
x/b ... ... ...
x/c ... ... ...
y/a XXX XXX XXX
y/b XXX XXX XXX
y/c XXX XXX XXX
z/a ... ... ...
z/b ... ... ...
z/c ... ... ...
",
            ),
        ),
        grids(
            "egress from y allowed to z only",
            np("metadata: {name: to-z, namespace: y}\nspec:\n  podSelector: {}\n  policyTypes: [Egress]\n  egress: [{to: [{namespaceSelector: {matchLabels: {ns: z}}}]}]\n"),
            same(
                "
x/a ... ... ...
x/b ... ... ...
x/c ... ... ...
y/a XXX XXX ...
y/b XXX XXX ...
y/c XXX XXX ...
z/a ... ... ...
z/b ... ... ...
z/c ... ... ...
",
            ),
        ),
        custom(
            "a pod label change takes effect without re-applying the policy",
            np("metadata: {name: from-pod, namespace: x}\nspec:\n  podSelector: {matchLabels: {pod: a}}\n  ingress: [{from: [{podSelector: {matchLabels: {pod: b}}}]}]\n"),
            |c, s| {
                c.apply(&s.policies);
                c.expect(&format!("{}: before", s.name), &same(&only_to_xa(&["x/b"])));
                c.apply(&cluster_manifest(&[("x/c", "{pod: b}")], &[]));
                c.expect(&format!("{}: x/c relabelled pod=b", s.name), &same(&only_to_xa(&["x/b", "x/c"])));
            },
        ),
        custom(
            "a namespace label change takes effect without re-applying the policy",
            np("metadata: {name: from-blue, namespace: x}\nspec:\n  podSelector: {}\n  ingress: [{from: [{namespaceSelector: {matchLabels: {team: blue}}}]}]\n"),
            move |c, s| {
                c.apply(&s.policies);
                c.expect(&format!("{}: no blue namespace", s.name), &same(x_closed));
                c.apply(&cluster_manifest(&[], &[("z", "{ns: z, team: blue}")]));
                let z_open = "
x/a XXX ... ...
x/b XXX ... ...
x/c XXX ... ...
y/a XXX ... ...
y/b XXX ... ...
y/c XXX ... ...
z/a ... ... ...
z/b ... ... ...
z/c ... ... ...
";
                c.expect(&format!("{}: z labelled team=blue", s.name), &same(z_open));
            },
        ),
        custom(
            "ipBlock: the external client in the block, then in except",
            np(&format!("metadata: {{name: from-external, namespace: x}}\nspec:\n  podSelector: {{matchLabels: {{pod: a}}}}\n  ingress: [{{from: [{{ipBlock: {{cidr: {EXTERNAL_V4}/32}}}}]}}]\n")),
            ip_block,
        ),
        custom("ipBlock egress to one server's addresses", xa_egress("to-server", "[{to: [{ipBlock: {cidr: 192.0.2.0/24}}]}]"), |c, s| {
            // "should allow egress access to server in CIDR block": x/a reaches y/b only.
            c.apply(&xa_egress("to-server", &format!("[{{to: [{}]}}]", c.host_blocks(4))));
            c.expect(s.name, &same(&from_xa("XXX X.X XXX")));
        }),
        custom(
            "ipBlock except, and the excepted address allowed by another policy",
            format!(
                "{}---\n{}",
                xa_egress("all-but-server", "[{to: [{ipBlock: {cidr: 192.0.2.0/24}}]}]"),
                xa_egress("to-server", "[{to: [{ipBlock: {cidr: 192.0.2.0/24}}]}]")
            ),
            ip_block_except,
        ),
        custom(
            "ipBlock ingress from pod addresses, except one, on one port",
            xa_ingress_np("from-pods", "[{from: [{ipBlock: {cidr: 192.0.2.0/24}}]}]"),
            |c, s| {
                c.apply(&xa_ingress_np("from-pods", &format!("[{{from: [{}], ports: [{{port: 80}}]}}]", c.pools_except(4))));
                let tcp80 = only_to_xa(&["x/a", "x/b", "x/c", "y/a", "y/c", "z/a", "z/b", "z/c"]);
                c.expect(s.name, &[tcp80, XA_CLOSED.into(), XA_CLOSED.into()]);
            },
        ),
        custom(
            "ipBlock holding one of two pods that share an identity",
            xa_egress("to-xb", "[{to: [{ipBlock: {cidr: 192.0.2.0/24}}]}]"),
            |c, s| {
                // x/c relabelled pod=b shares x/b's identity; the block holds x/b's addresses only.
                c.apply(&cluster_manifest(&[("x/c", "{pod: b}")], &[]));
                c.apply(&xa_egress("to-xb", &format!("[{{to: [{}]}}]", c.host_blocks(1))));
                let started = Instant::now();
                let (xb, xc) = loop {
                    let ids = (peer_identity(c, 1), peer_identity(c, 2));
                    if (ids.0.is_some() && ids.0 == ids.1) || started.elapsed() > CONVERGE {
                        break ids;
                    }
                    std::thread::sleep(Duration::from_millis(100));
                };
                assert!(xb.is_some() && xb == xc, "x/b and x/c resolve to one identity on x/a's node: {xb:?} and {xc:?}");
                c.expect(s.name, &same(&from_xa("X.X XXX XXX")));
            },
        ),
        custom(
            "SluiceNetworkPolicy CIDR rules keep Cilium's meaning; a NetworkPolicy ipBlock does not",
            format!("{}---\n{}", sluice_cidrs(), np_ip_blocks()),
            sluice_cidr_semantics,
        ),
        custom(
            "SluiceNetworkPolicy ingressDeny wins over an allow",
            format!(
                "{}---\n{}",
                np("metadata: {name: allow-all-to-a, namespace: x}\nspec:\n  podSelector: {matchLabels: {pod: a}}\n  ingress: [{}]\n"),
                snp("metadata: {name: deny-from-y, namespace: x}\nspec:\n  endpointSelector: {matchLabels: {pod: a}}\n  ingressDeny: [{fromEndpoints: [{matchLabels: {k8s:io.kubernetes.pod.namespace: y}}]}]\n"),
            ),
            deny_wins,
        ),
        custom(
            "SluiceNetworkPolicy enforcementMode audit",
            snp("metadata: {name: audit-deny-all, namespace: x}\nspec:\n  endpointSelector: {}\n  enforcementMode: audit\n  ingress: [{}]\n"),
            audit,
        ),
        custom(
            "an established connection is cut by a policy that denies it",
            np("metadata: {name: only-x, namespace: x}\nspec:\n  podSelector: {matchLabels: {pod: a}}\n  ingress: [{from: [{podSelector: {}}]}]\n"),
            established,
        ),
    ]
}

/// A NetworkPolicy in x selecting pod a with only Egress and the given rules (a YAML flow list).
fn xa_egress(name: &str, egress: &str) -> String {
    np(&format!(
        "metadata: {{name: {name}, namespace: x}}\nspec:\n  podSelector: {{matchLabels: {{pod: a}}}}\n  policyTypes: [Egress]\n  egress: {egress}\n"
    ))
}

/// A NetworkPolicy in x selecting pod a with the given ingress rules (a YAML flow list).
fn xa_ingress_np(name: &str, ingress: &str) -> String {
    np(&format!("metadata: {{name: {name}, namespace: x}}\nspec:\n  podSelector: {{matchLabels: {{pod: a}}}}\n  ingress: {ingress}\n"))
}

/// "should enforce except clause while egress access to server in CIDR block" and "should
/// ensure an IP overlapping both IPBlock.CIDR and IPBlock.Except is allowed".
fn ip_block_except(c: &Cluster, s: &Scenario) {
    c.apply(&xa_egress("all-but-server", &format!("[{{to: [{}]}}]", c.pools_except(1))));
    c.expect(&format!("{}: every pod but x/b", s.name), &same(&from_xa(".X. ... ...")));
    let trace = c.stdout(&["policy", "trace", "--from", "x/a", "--to", "x/b", "--port", "80"]);
    assert!(trace.contains("Verdict: DENIED"), "trace x/a -> x/b is denied: {trace}");
    assert!(trace.contains(&format!("in ipBlock {}/32", c.ips[1].0)), "trace names x/b's except as its ipBlock prefix: {trace}");
    let trace = c.stdout(&["policy", "trace", "--from", "x/a", "--to", "y/b", "--port", "80"]);
    assert!(trace.contains("Verdict: ALLOWED"), "trace x/a -> y/b is allowed: {trace}");
    assert!(trace.contains("entry by address"), "trace x/a -> y/b shows the entry by address: {trace}");
    let get = c.stdout(&["policy", "get", "x/a"]);
    assert!(get.contains(&format!("address in {POD_POOL_V4}")), "policy get x/a lists the entry by address: {get}");

    c.apply(&xa_egress("to-server", &format!("[{{to: [{}]}}]", c.host_blocks(1))));
    c.expect(&format!("{}: x/b allowed by a second policy", s.name), &same(&from_xa("... ... ...")));
}

/// A SluiceNetworkPolicy letting into x/a the pod pools and the underlay by CIDR.
fn sluice_cidrs() -> String {
    snp(&format!(
        "metadata: {{name: from-cidrs, namespace: x}}\nspec:\n  endpointSelector: {{matchLabels: {{pod: a}}}}\n  \
         ingress: [{{fromCIDRSet: [{{cidr: {POD_POOL_V4}}}, {{cidr: '{POD_POOL_V6}'}}, {{cidr: 198.18.0.0/16}}]}}]\n"
    ))
}

/// The same blocks as a NetworkPolicy's ipBlocks.
fn np_ip_blocks() -> String {
    xa_ingress_np(
        "from-blocks",
        &format!("[{{from: [{{ipBlock: {{cidr: {POD_POOL_V4}}}}}, {{ipBlock: {{cidr: '{POD_POOL_V6}'}}}}, {{ipBlock: {{cidr: 198.18.0.0/16}}}}]}}]"),
    )
}

/// The SluiceNetworkPolicy's CIDRs let the external client into x/a, not the pods (their
/// addresses resolve to their identities); the NetworkPolicy's ipBlocks let the pods in too.
fn sluice_cidr_semantics(c: &Cluster, s: &Scenario) {
    c.apply(&sluice_cidrs());
    c.expect(&format!("{}: SluiceNetworkPolicy", s.name), &same(XA_CLOSED));
    let xa = format!("tcp:{}", c.addr(0, false, 80));
    let seen = c.probe_external(std::slice::from_ref(&xa));
    assert_eq!(seen[&xa].as_bool(), Some(true), "the external client ({EXTERNAL_V4}) is in the Sluice CIDR 198.18.0.0/16: {seen}");
    c.apply(&np_ip_blocks());
    c.expect(&format!("{}: and the same blocks in a NetworkPolicy", s.name), &same(ALL));
}

/// The identity x/a's node gives pod `index` (x/a..z/c order), as `policy trace` says it.
fn peer_identity(c: &Cluster, index: usize) -> Option<u64> {
    let to = &pod_keys()[index];
    let trace = c.stdout(&["policy", "trace", "--from", "x/a", "--to", to, "--port", "80"]);
    let peer = format!("peer {}: identity ", c.ips[index].0);
    let line = trace.lines().find(|l| l.contains(&peer))?;
    let after = line.split(&peer).nth(1)?;
    after.split(|ch: char| !ch.is_ascii_digit()).next()?.parse().ok()
}

/// Under deny-all in x: trace, get, observe and the drop counters explain the drop.
fn explain_deny_all(c: &Cluster) {
    for v6 in [false, true] {
        let six: &[&str] = if v6 { &["-6"] } else { &[] };
        let denied = c.stdout(&[&["policy", "trace", "--from", "y/a", "--to", "x/a", "--port", "80"], six].concat());
        assert!(denied.contains("Verdict: DENIED"), "trace y/a -> x/a (v6 {v6}) is denied: {denied}");
        assert!(denied.contains("NetworkPolicy x/deny-all"), "trace y/a -> x/a (v6 {v6}) names the policy: {denied}");
        let allowed = c.stdout(&[&["policy", "trace", "--from", "y/a", "--to", "z/a", "--port", "80"], six].concat());
        assert!(allowed.contains("Verdict: ALLOWED"), "trace y/a -> z/a (v6 {v6}) is allowed: {allowed}");
        assert!(!allowed.contains("deny-all"), "no policy selects z/a, so trace y/a -> z/a names none: {allowed}");
    }
    let get = c.stdout(&["policy", "get", "x/a"]);
    assert!(get.contains("NetworkPolicy x/deny-all"), "policy get x/a lists the policy: {get}");
    assert!(get.contains("default deny"), "policy get x/a shows ingress default deny: {get}");

    let drops = c.flows(&["--verdict", "DROPPED", "--to-pod", "x/a"]);
    let policy_drops: Vec<&serde_json::Value> = drops.iter().filter(|f| f["dropReason"] == "policy denied ingress").collect();
    assert!(!policy_drops.is_empty(), "observe shows drops to x/a with reason \"policy denied ingress\": {drops:?}");
    for f in &policy_drops {
        assert!(f["policy"].as_str().is_some_and(|p| !p.is_empty()), "a policy drop says which policy or default deny dropped it: {f}");
        assert!(f["peerIdentity"].as_u64().is_some_and(|i| i > 0), "a policy drop carries the peer identity: {f}");
    }
    let sources: BTreeSet<String> = policy_drops
        .iter()
        .map(|f| format!("{}/{}", f["source"]["namespace"].as_str().unwrap_or("?"), f["source"]["pod"].as_str().unwrap_or("?")))
        .collect();
    assert!(sources.contains("y/a"), "drops from y/a (node1: cross-node) are seen: {sources:?}");
    assert!(sources.contains("y/b"), "drops from y/b (node0: same node as x/a) are seen: {sources:?}");

    let metrics = c.stdout(&["metrics", "--node", "node0"]);
    let dropped: u64 = metrics
        .lines()
        .filter(|l| l.starts_with("sluice_drop_packets_total{reason=\"policy denied ingress\""))
        .filter_map(|l| l.rsplit_once(' ').and_then(|(_, v)| v.parse::<u64>().ok()))
        .sum();
    assert!(dropped > 0, "node0 (x/a, x/c) counts \"policy denied ingress\" drops: {metrics}");
}

fn ip_block(c: &Cluster, s: &Scenario) {
    let xa_v4 = |proto: &str| format!("{proto}:{}", c.addr(0, false, 80));
    let xa_v6 = format!("tcp:{}", c.addr(0, true, 80));
    let xb = format!("tcp:{}", c.addr(1, false, 80));
    let before = c.probe_external(&[xa_v4("tcp"), xa_v6.clone()]);
    assert_eq!(
        (before[&xa_v4("tcp")].as_bool(), before[&xa_v6].as_bool()),
        (Some(true), Some(true)),
        "without policy the external client reaches x/a over both families: {before}"
    );

    c.apply(&s.policies);
    c.expect(&format!("{}: pods", s.name), &same(XA_CLOSED));
    let seen = c.probe_external(&[xa_v4("tcp"), xa_v4("udp"), xa_v6.clone()]);
    assert_eq!(seen[&xa_v4("tcp")].as_bool(), Some(true), "{EXTERNAL_V4}/32 lets the external client reach x/a on TCP: {seen}");
    assert_eq!(seen[&xa_v4("udp")].as_bool(), Some(true), "{EXTERNAL_V4}/32 lets the external client reach x/a on UDP: {seen}");
    assert_eq!(seen[&xa_v6].as_bool(), Some(false), "the external client's IPv6 address is not in the block: {seen}");

    let except = np(&format!(
        "metadata: {{name: from-external, namespace: x}}\nspec:\n  podSelector: {{matchLabels: {{pod: a}}}}\n  ingress: [{{from: [{{ipBlock: {{cidr: 198.18.0.0/16, except: [{EXTERNAL_V4}/32]}}}}]}}]\n"
    ));
    c.apply(&except);
    let started = Instant::now();
    let seen = loop {
        let seen = c.probe_external(&[xa_v4("tcp"), xb.clone()]);
        if seen[&xa_v4("tcp")] == false || started.elapsed() > CONVERGE {
            break seen;
        }
    };
    assert_eq!(seen[&xa_v4("tcp")].as_bool(), Some(false), "with {EXTERNAL_V4}/32 in except, the external client is denied: {seen}");
    assert_eq!(seen[&xb].as_bool(), Some(true), "x/b, which no policy selects, still answers the external client: {seen}");
    c.expect(&format!("{}: pods, with except", s.name), &same(XA_CLOSED));
}

fn deny_wins(c: &Cluster, s: &Scenario) {
    let applied = unix_nanos();
    c.apply(&s.policies);
    c.expect(s.name, &same(&only_to_xa(&["x/b", "x/c", "z/a", "z/b", "z/c"])));
    let trace = c.stdout(&["policy", "trace", "--from", "y/b", "--to", "x/a", "--port", "80"]);
    assert!(trace.contains("Verdict: DENIED"), "trace y/b -> x/a is denied: {trace}");
    assert!(trace.contains("x/deny-from-y"), "trace names the deny policy: {trace}");
    let trace = c.stdout(&["policy", "trace", "--from", "z/b", "--to", "x/a", "--port", "81", "--proto", "udp"]);
    assert!(trace.contains("Verdict: ALLOWED"), "trace z/b -> x/a udp/81 is allowed: {trace}");
    assert!(trace.contains("x/allow-all-to-a"), "trace names the allowing policy: {trace}");
    let drops: Vec<_> = c
        .flows(&["--verdict", "DROPPED", "--to-pod", "x/a", "--namespace", "y"])
        .into_iter()
        .filter(|f| f["timeUnixNanos"].as_u64() > Some(applied))
        .collect();
    let policies: BTreeSet<&str> =
        drops.iter().filter(|f| f["dropReason"] == "policy denied ingress").filter_map(|f| f["policy"].as_str()).collect();
    assert!(!policies.is_empty(), "observe shows policy drops from y to x/a: {:?}", &drops[..drops.len().min(3)]);
    for p in policies {
        assert_eq!(
            p, "SluiceNetworkPolicy x/deny-from-y (ingress rule 0)",
            "a drop names the deny rule behind it, not the allow it overrode"
        );
    }
}

/// Now as the flows' clock reads it.
fn unix_nanos() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64
}

fn audit(c: &Cluster, s: &Scenario) {
    let applied = unix_nanos();
    c.apply(&s.policies);
    // Nothing changes in the grid, so wait for the agent to take the policy.
    let started = Instant::now();
    let get = loop {
        let get = c.stdout(&["policy", "get", "x/a"]);
        if get.contains("audit-deny-all") || started.elapsed() > CONVERGE {
            break get;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(get.contains("SluiceNetworkPolicy x/audit-deny-all"), "policy get x/a lists the audit policy: {get}");
    assert!(get.contains("audit"), "policy get x/a shows the audit mode: {get}");
    c.expect(s.name, &same(ALL));
    let started = Instant::now();
    let audited = loop {
        let flows: Vec<_> = c
            .flows(&["--verdict", "AUDIT", "--type", "policy-verdict", "--namespace", "x"])
            .into_iter()
            .filter(|f| f["timeUnixNanos"].as_u64() > Some(applied))
            .collect();
        if !flows.is_empty() || started.elapsed() > CONVERGE {
            break flows;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(!audited.is_empty(), "observe shows AUDIT policy-verdict flows into x");
    for f in &audited {
        assert_eq!((f["verdict"].as_str(), f["eventType"].as_str()), (Some("AUDIT"), Some("policy-verdict")), "an audit flow: {f}");
        assert_eq!(f["destination"]["namespace"], "x", "audited traffic is ingress into x: {f}");
    }
    let drops = c.flows(&["--verdict", "DROPPED", "--namespace", "x"]);
    let policy_drops: Vec<_> = drops
        .iter()
        .filter(|f| f["timeUnixNanos"].as_u64() > Some(applied) && f["dropReason"].as_str().is_some_and(|r| r.starts_with("policy")))
        .take(3)
        .collect();
    assert!(policy_drops.is_empty(), "audit mode drops nothing: {policy_drops:?}");
}

fn established(c: &Cluster, s: &Scenario) {
    let target = c.addr(0, false, 80);
    // y/a (node1) is denied by the policy; x/c (node0, same node as x/a) stays allowed.
    let (_denied, denied_lines) = hold(&c.lab, "y", "a", &target);
    let (_kept, kept_lines) = hold(&c.lab, "x", "c", &target);
    for (who, lines) in [("y/a", &denied_lines), ("x/c", &kept_lines)] {
        let first = collect(lines, Duration::from_secs(1));
        assert!(
            first.iter().filter(|(_, l)| l.contains("echo")).count() >= 3,
            "{who} -> x/a: the held connection works before the policy: {first:?}"
        );
    }
    c.apply(&s.policies);
    let applied = Instant::now();
    let after = collect(&denied_lines, Duration::from_secs(6));
    let last_echo = after.iter().filter(|(_, l)| l.contains("echo")).map(|(t, _)| t.duration_since(applied)).max();
    let closed = after.iter().find(|(_, l)| l.contains("closed")).map(|(t, l)| (t.duration_since(applied), l));
    assert!(
        last_echo.is_none_or(|t| t < CONVERGE),
        "y/a -> x/a: echoes stop within {CONVERGE:?} of the policy (last {last_echo:?} after): {after:?}"
    );
    assert!(closed.is_some(), "y/a -> x/a: the held connection fails once denied: {after:?}");
    let kept_after = collect(&kept_lines, Duration::from_millis(500));
    assert!(kept_after.iter().filter(|(_, l)| l.contains("echo")).count() >= 2, "x/c -> x/a (allowed) keeps working: {kept_after:?}");
    assert!(!kept_after.iter().any(|(_, l)| l.contains("closed")), "x/c -> x/a (allowed) is not closed: {kept_after:?}");
    eprintln!("{}: y/a's last echo {last_echo:?} after the policy, closed {:?} after", s.name, closed.map(|(t, _)| t));
}

#[test]
fn upstream_scenarios_over_real_pods_on_two_nodes() {
    if !privileged(module_path!()) {
        return;
    }
    let started = Instant::now();
    let cluster = Cluster::up();
    let baseline = cluster_manifest(&[], &[]);
    let mut failures = Vec::new();
    for s in scenarios() {
        let began = Instant::now();
        if let Err(e) = catch_unwind(AssertUnwindSafe(|| (s.run)(&cluster, &s))) {
            let message =
                e.downcast_ref::<String>().cloned().or_else(|| e.downcast_ref::<&str>().map(|m| m.to_string())).unwrap_or_default();
            failures.push(format!("=== {} ===\n{message}", s.name));
        }
        eprintln!("scenario {:?}: {:?}", s.name, began.elapsed());
        // Back to the open cluster: the scenario's policies gone, labels as they were.
        if !s.policies.is_empty() {
            cluster.delete(&s.policies);
        }
        cluster.apply(&baseline);
        if let Err(e) = catch_unwind(AssertUnwindSafe(|| cluster.expect(&format!("open again after {:?}", s.name), &same(ALL)))) {
            let message = e.downcast_ref::<String>().cloned().unwrap_or_default();
            failures.push(format!("=== reset after {} ===\n{message}", s.name));
            break;
        }
    }
    eprintln!("all scenarios: {:?}", started.elapsed());
    assert!(failures.is_empty(), "{} scenario(s) failed:\n{}", failures.len(), failures.join("\n"));
}
