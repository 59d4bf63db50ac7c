//! The layer-7 rules the proxy enforces: the agent's `ProxyRules` file read and compiled (regexes
//! anchored once per load), the per-request verdict over both directions, and the poller that
//! swaps in each new generation of the file. Pure apart from the file reads.

use std::collections::HashSet;
use std::fs;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use http::header::HeaderName;
use http::HeaderMap;
use regex::Regex;
use serde::Serialize;
use sluice_policy::l7::{HttpRule, L7Grant, ProxiedPort, ProxyRules};
use thiserror::Error;

/// How often the rules file is checked for a new version.
pub const POLL_INTERVAL: Duration = Duration::from_millis(10);

/// Failures reading the rules file.
#[derive(Debug, Error)]
pub enum RulesError {
    /// The file exists but could not be read.
    #[error("reading rules file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The file is not a `ProxyRules` document.
    #[error("parsing rules file {path}: {source}")]
    Parse {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
}

/// The direction of a policy that applies to a proxied connection, seen from the local endpoint
/// that holds the grant.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum Direction {
    /// The server (original destination) is a local endpoint with ingress grants.
    Ingress,
    /// The client is a local endpoint with egress grants.
    Egress,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Ingress => "ingress",
            Direction::Egress => "egress",
        }
    }
}

/// The two ends of a proxied connection with their security identities. An identity of `None`
/// could not be looked up: it matches only grants for any peer (identity 0).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Peers {
    pub client: SocketAddr,
    pub server: SocketAddr,
    pub client_identity: Option<u32>,
    pub server_identity: Option<u32>,
}

/// What the verdict reads of a request.
#[derive(Clone, Copy, Debug)]
pub struct RequestView<'a> {
    pub method: &'a str,
    /// The path without its query.
    pub path: &'a str,
    /// Host header or authority, port removed.
    pub host: Option<&'a str>,
    pub headers: &'a HeaderMap,
}

/// The verdict on one request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    /// The directions whose grants apply to the connection (empty: none, denied).
    pub directions: Vec<Direction>,
    pub allowed: bool,
}

/// One `HttpRule` with its regexes compiled and anchored.
#[derive(Debug)]
struct CompiledHttpRule {
    method: Option<Regex>,
    path: Option<Regex>,
    host: Option<Regex>,
    headers: Vec<(HeaderName, Option<String>)>,
}

/// One grant, its invalid HTTP rules left out (so they allow nothing).
#[derive(Debug)]
struct CompiledGrant {
    identity: u32,
    port: u16,
    http: Vec<CompiledHttpRule>,
}

#[derive(Debug)]
struct CompiledEndpoint {
    ips: HashSet<IpAddr>,
    ingress: Vec<CompiledGrant>,
    egress: Vec<CompiledGrant>,
    /// Per port, which peers each direction sends through the proxy (absent: all of them).
    ingress_proxied: Vec<ProxiedPort>,
    egress_proxied: Vec<ProxiedPort>,
}

/// A rules file compiled for matching. The empty value (generation 0) denies everything.
#[derive(Debug, Default)]
pub struct CompiledRules {
    generation: u64,
    endpoints: Vec<CompiledEndpoint>,
}

// === impl CompiledRules ===

impl CompiledRules {
    /// Compiles `rules`; returns the rules and a warning for each HTTP rule left out because a
    /// regex or header name in it is invalid.
    pub fn compile(rules: &ProxyRules) -> (CompiledRules, Vec<String>) {
        let mut warnings = Vec::new();
        let mut grants = |endpoint: &str, direction: &str, grants: &[L7Grant]| -> Vec<CompiledGrant> {
            grants
                .iter()
                .map(|g| CompiledGrant {
                    identity: g.identity,
                    port: g.port,
                    http: g
                        .http
                        .iter()
                        .filter_map(|rule| match CompiledHttpRule::compile(rule) {
                            Ok(r) => Some(r),
                            Err(e) => {
                                warnings.push(format!(
                                    "endpoint {endpoint}, {direction} grant of {} on port {}: HTTP rule {rule:?} skipped, it allows nothing: {e}",
                                    g.policy, g.port
                                ));
                                None
                            }
                        })
                        .collect(),
                })
                .collect()
        };
        let endpoints = rules
            .endpoints
            .iter()
            .map(|e| CompiledEndpoint {
                ips: e.ips.iter().copied().collect(),
                ingress: grants(&e.key, "ingress", &e.ingress),
                egress: grants(&e.key, "egress", &e.egress),
                ingress_proxied: e.ingress_proxied.clone(),
                egress_proxied: e.egress_proxied.clone(),
            })
            .collect();
        (CompiledRules { generation: rules.generation, endpoints }, warnings)
    }

    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The HTTP rules of `direction` for the connection, or `None` when no grant of that
    /// direction applies to it.
    fn applicable(&self, peers: &Peers, direction: Direction) -> Option<Vec<&CompiledHttpRule>> {
        let (local, peer_identity) = match direction {
            Direction::Egress => (peers.client.ip(), peers.server_identity),
            Direction::Ingress => (peers.server.ip(), peers.client_identity),
        };
        let port = peers.server.port();
        let mut found = false;
        let mut rules = Vec::new();
        for endpoint in self.endpoints.iter().filter(|e| e.ips.contains(&canonical(local))) {
            let (grants, proxied) = match direction {
                Direction::Egress => (&endpoint.egress, &endpoint.egress_proxied),
                Direction::Ingress => (&endpoint.ingress, &endpoint.ingress_proxied),
            };
            // This direction lets the peer through whole: the other one sent it here.
            if proxied.iter().find(|p| p.port == port).is_some_and(|p| !p.proxies(peer_identity)) {
                continue;
            }
            for grant in grants {
                let identity_matches = grant.identity == sluice_abi::SLUICE_IDENTITY_ANY || Some(grant.identity) == peer_identity;
                if grant.port == port && identity_matches {
                    found = true;
                    rules.extend(grant.http.iter());
                }
            }
        }
        found.then_some(rules)
    }

    /// The verdict on `request` over the connection `peers`: allowed iff every direction that
    /// applies has an HTTP rule matching it, and at least one direction applies.
    pub fn decide(&self, peers: &Peers, request: &RequestView<'_>) -> Decision {
        let mut directions = Vec::new();
        let mut allowed = true;
        for direction in [Direction::Egress, Direction::Ingress] {
            if let Some(rules) = self.applicable(peers, direction) {
                directions.push(direction);
                allowed &= rules.iter().any(|r| r.matches(request));
            }
        }
        // No direction: the datapath sent a connection the rules know nothing of; fail closed.
        let allowed = allowed && !directions.is_empty();
        Decision { directions, allowed }
    }
}

/// IPv4-mapped IPv6 addresses (a v6 socket's view of a v4 peer) as the IPv4 the rules list.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

// === impl CompiledHttpRule ===

/// Why an HTTP rule could not be compiled.
#[derive(Debug, Error)]
enum CompileError {
    #[error("invalid {field} regex {pattern:?}: {source}")]
    Regex {
        field: &'static str,
        pattern: String,
        #[source]
        source: regex::Error,
    },
    #[error("invalid header name {name:?}")]
    HeaderName { name: String },
}

impl CompiledHttpRule {
    fn compile(rule: &HttpRule) -> Result<Self, CompileError> {
        // The rules say "matched whole": anchor so `/public` does not match `/publicity`.
        let anchored = |field: &'static str, pattern: &Option<String>| -> Result<Option<Regex>, CompileError> {
            pattern
                .as_ref()
                .map(|p| Regex::new(&format!("^(?:{p})$")).map_err(|source| CompileError::Regex { field, pattern: p.clone(), source }))
                .transpose()
        };
        let headers = rule
            .headers
            .iter()
            .map(|h| {
                HeaderName::from_bytes(h.name.to_ascii_lowercase().as_bytes())
                    .map(|name| (name, h.value.clone()))
                    .map_err(|_| CompileError::HeaderName { name: h.name.clone() })
            })
            .collect::<Result<_, _>>()?;
        Ok(CompiledHttpRule {
            method: anchored("method", &rule.method)?,
            path: anchored("path", &rule.path)?,
            host: anchored("host", &rule.host)?,
            headers,
        })
    }

    fn matches(&self, request: &RequestView<'_>) -> bool {
        let field = |re: &Option<Regex>, value: Option<&str>| match (re, value) {
            (None, _) => true,
            (Some(re), Some(v)) => re.is_match(v),
            // A host rule cannot match a request that names no host.
            (Some(_), None) => false,
        };
        field(&self.method, Some(request.method))
            && field(&self.path, Some(request.path))
            && field(&self.host, request.host)
            && self.headers.iter().all(|(name, value)| {
                let mut values = request.headers.get_all(name).iter().peekable();
                match value {
                    None => values.peek().is_some(),
                    Some(want) => values.any(|v| v.as_bytes() == want.as_bytes()),
                }
            })
    }
}

/// The host a request names, port removed: `[::1]:8080` is `[::1]`, `web:80` is `web`.
pub fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        return host.find(']').map_or(host, |end| &host[..=end]);
    }
    host.split_once(':').map_or(host, |(h, _)| h)
}

// === rules file ===

/// Reads and parses the rules file; `Ok(None)` when it does not exist.
pub fn read_rules(path: &Path) -> Result<Option<ProxyRules>, RulesError> {
    let text = match fs::read(path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(RulesError::Read { path: path.to_owned(), source }),
    };
    serde_json::from_slice(&text).map(Some).map_err(|source| RulesError::Parse { path: path.to_owned(), source })
}

/// The rules in force, swapped whole when a new generation is loaded; readers take an `Arc`
/// so a request is judged by one generation throughout.
#[derive(Debug, Default)]
pub struct RulesStore {
    current: RwLock<Arc<CompiledRules>>,
}

impl RulesStore {
    pub fn new(rules: CompiledRules) -> Self {
        RulesStore { current: RwLock::new(Arc::new(rules)) }
    }

    pub fn current(&self) -> Arc<CompiledRules> {
        // A poisoned lock still holds a whole Arc: a writer only ever replaces it.
        self.current.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn replace(&self, rules: CompiledRules) {
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(rules);
    }
}

/// What identifies one version of the file without reading it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct FileStamp {
    ino: u64,
    mtime: Option<SystemTime>,
    len: u64,
}

fn stamp(path: &Path) -> Option<FileStamp> {
    fs::metadata(path).ok().map(|m| FileStamp { ino: m.ino(), mtime: m.modified().ok(), len: m.len() })
}

/// Loads the rules file into `store` when it changed: keeps the previous rules (and says why)
/// when it cannot be read or parsed, and when it vanished (the agent replaces it by rename, so
/// a missing file later on is not a policy).
pub struct RulesWatcher {
    path: PathBuf,
    store: Arc<RulesStore>,
    last: Option<FileStamp>,
    /// The generation last loaded from the file.
    loaded: Option<u64>,
}

/// Writes `generation` to the acknowledgement file beside the rules, atomically.
fn acknowledge(rules: &std::path::Path, generation: u64) -> std::io::Result<()> {
    let ack = sluice_policy::l7::loaded_path(rules);
    let staged = ack.with_extension("loaded.new");
    std::fs::write(&staged, generation.to_string())?;
    std::fs::rename(&staged, &ack)
}

impl RulesWatcher {
    /// Loads the file once (a missing file is no rules) and returns the watcher.
    pub fn load(path: PathBuf, store: Arc<RulesStore>) -> RulesWatcher {
        let mut watcher = RulesWatcher { path, store, last: None, loaded: None };
        watcher.last = stamp(&watcher.path);
        watcher.reload(true);
        watcher
    }

    /// Checks the file once; reloads it when its metadata changed.
    pub fn poll(&mut self) {
        let now = stamp(&self.path);
        if now == self.last {
            return;
        }
        self.last = now;
        if now.is_none() {
            tracing::warn!(file = %self.path.display(), "rules file removed; keeping the rules in force");
            return;
        }
        self.reload(false);
    }

    fn reload(&mut self, first: bool) {
        match read_rules(&self.path) {
            Ok(None) if first => tracing::info!(file = %self.path.display(), "no rules file yet: every request is denied"),
            Ok(None) => {}
            Ok(Some(rules)) => {
                if self.loaded == Some(rules.generation) {
                    return;
                }
                self.loaded = Some(rules.generation);
                let (compiled, warnings) = CompiledRules::compile(&rules);
                for w in warnings {
                    tracing::warn!(file = %self.path.display(), "{w}");
                }
                tracing::info!(generation = rules.generation, endpoints = rules.endpoints.len(), "rules loaded");
                self.store.replace(compiled);
                // The agent waits for this before it sends connections these rules cover here.
                if let Err(e) = acknowledge(&self.path, rules.generation) {
                    tracing::warn!(file = %self.path.display(), "acknowledging generation {}: {e}", rules.generation);
                }
            }
            Err(e) => tracing::warn!("{e}; keeping the rules of generation {}", self.store.current().generation()),
        }
    }

    /// Polls every [`POLL_INTERVAL`] until `shutdown` completes.
    pub async fn run(mut self, shutdown: impl std::future::Future<Output = ()>) {
        tokio::pin!(shutdown);
        let mut tick = tokio::time::interval(POLL_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = &mut shutdown => return,
                _ = tick.tick() => self.poll(),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;
    use sluice_policy::l7::{HeaderMatch, ProxyEndpoint};

    const CLIENT: &str = "10.244.0.5:40000";
    const SERVER: &str = "10.244.1.7:80";
    const CLIENT_ID: u32 = 1001;
    const SERVER_ID: u32 = 2002;

    fn rule(method: Option<&str>, path: Option<&str>) -> HttpRule {
        HttpRule { method: method.map(Into::into), path: path.map(Into::into), ..Default::default() }
    }

    fn grant(identity: u32, port: u16, http: Vec<HttpRule>) -> L7Grant {
        L7Grant { identity, port, http, policy: "SluiceNetworkPolicy shop/web".into() }
    }

    /// The server endpoint with `ingress` grants, the client endpoint with `egress` grants.
    fn rules(ingress: Vec<L7Grant>, egress: Vec<L7Grant>) -> CompiledRules {
        let file = ProxyRules {
            generation: 1,
            endpoints: vec![
                ProxyEndpoint {
                    key: "shop/web".into(),
                    ips: vec!["10.244.1.7".parse().unwrap()],
                    ingress,
                    egress: vec![],
                    ..Default::default()
                },
                ProxyEndpoint {
                    key: "shop/client".into(),
                    ips: vec!["10.244.0.5".parse().unwrap()],
                    ingress: vec![],
                    egress,
                    ..Default::default()
                },
            ],
        };
        let (compiled, warnings) = CompiledRules::compile(&file);
        assert!(warnings.is_empty(), "fixture rules compile: {warnings:?}");
        compiled
    }

    fn peers() -> Peers {
        Peers {
            client: CLIENT.parse().unwrap(),
            server: SERVER.parse().unwrap(),
            client_identity: Some(CLIENT_ID),
            server_identity: Some(SERVER_ID),
        }
    }

    struct Req {
        method: &'static str,
        path: &'static str,
        host: Option<&'static str>,
        headers: HeaderMap,
    }

    fn req(method: &'static str, path: &'static str) -> Req {
        Req { method, path, host: Some("web"), headers: HeaderMap::new() }
    }

    fn allowed(rules: &CompiledRules, r: &Req) -> bool {
        rules.decide(&peers(), &RequestView { method: r.method, path: r.path, host: r.host, headers: &r.headers }).allowed
    }

    #[test]
    fn method_and_path_match_whole() {
        let r = rules(vec![grant(0, 80, vec![rule(Some("GET|HEAD"), Some("/public"))])], vec![]);
        assert!(allowed(&r, &req("GET", "/public")), "GET /public is allowed");
        assert!(allowed(&r, &req("HEAD", "/public")), "alternation covers HEAD");
        assert!(!allowed(&r, &req("POST", "/public")), "POST is not in GET|HEAD");
        assert!(!allowed(&r, &req("GETX", "/public")), "the method regex is anchored at the end");
        assert!(!allowed(&r, &req("GET", "/publicity")), "/public must not match /publicity");
        assert!(!allowed(&r, &req("GET", "/x/public")), "/public must not match /x/public");
    }

    #[test]
    fn path_regex_with_wildcard() {
        let r = rules(vec![grant(0, 80, vec![rule(None, Some("/api/v[0-9]+/.*"))])], vec![]);
        assert!(allowed(&r, &req("DELETE", "/api/v2/items/3")), "an absent method matches any");
        assert!(!allowed(&r, &req("GET", "/api/vx/items")), "v[0-9]+ needs a digit");
    }

    #[test]
    fn host_rule_and_port_removal() {
        let r = rules(vec![grant(0, 80, vec![HttpRule { host: Some("web\\.shop\\.svc".into()), ..Default::default() }])], vec![]);
        let mut q = req("GET", "/");
        q.host = Some(strip_port("web.shop.svc:80"));
        assert!(allowed(&r, &q), "the Host header's port is removed before matching");
        q.host = Some("web.shop.svc.evil");
        assert!(!allowed(&r, &q), "the host regex is anchored");
        q.host = None;
        assert!(!allowed(&r, &q), "a host rule does not match a request without a host");
        assert_eq!(strip_port("[fd00::7]:8080"), "[fd00::7]");
        assert_eq!(strip_port("[fd00::7]"), "[fd00::7]");
        assert_eq!(strip_port("web"), "web");
    }

    #[test]
    fn headers_presence_and_exact_value() {
        let headers =
            vec![HeaderMatch { name: "X-Token".into(), value: None }, HeaderMatch { name: "x-role".into(), value: Some("admin".into()) }];
        let r = rules(vec![grant(0, 80, vec![HttpRule { headers, ..Default::default() }])], vec![]);
        let mut q = req("GET", "/");
        assert!(!allowed(&r, &q), "required headers missing");
        q.headers.insert("x-token", HeaderValue::from_static(""));
        q.headers.append("x-role", HeaderValue::from_static("reader"));
        assert!(!allowed(&r, &q), "x-role has no value equal to admin");
        q.headers.append("x-role", HeaderValue::from_static("admin"));
        assert!(allowed(&r, &q), "one of x-role's values is admin, x-token is present (names case-insensitive)");
        q.headers.remove("x-role");
        q.headers.insert("x-role", HeaderValue::from_static("Admin"));
        assert!(!allowed(&r, &q), "values compare exactly");
    }

    #[test]
    fn empty_rule_allows_everything_and_query_is_not_in_the_path() {
        let r = rules(vec![grant(0, 80, vec![HttpRule::default()])], vec![]);
        assert!(allowed(&r, &req("PATCH", "/anything")), "an empty rule matches every request");
        let uri: &'static http::Uri = Box::leak(Box::new("/public?x=1".parse().unwrap()));
        let r = rules(vec![grant(0, 80, vec![rule(None, Some("/public"))])], vec![]);
        assert!(allowed(&r, &Req { method: "GET", path: uri.path(), host: None, headers: HeaderMap::new() }), "the query is not matched");
    }

    #[test]
    fn union_over_grants_of_the_port() {
        let r = rules(
            vec![
                grant(0, 80, vec![rule(Some("GET"), None)]),
                grant(CLIENT_ID, 80, vec![rule(Some("POST"), None)]),
                grant(0, 8080, vec![rule(Some("PUT"), None)]),
            ],
            vec![],
        );
        assert!(allowed(&r, &req("GET", "/")), "first grant");
        assert!(allowed(&r, &req("POST", "/")), "second grant, same port");
        assert!(!allowed(&r, &req("PUT", "/")), "a grant on another port is not in the union");
    }

    #[test]
    fn identity_zero_or_exact() {
        let exact = rules(vec![grant(CLIENT_ID, 80, vec![HttpRule::default()])], vec![]);
        assert!(allowed(&exact, &req("GET", "/")), "the client's identity matches the grant");
        let other = rules(vec![grant(CLIENT_ID + 1, 80, vec![HttpRule::default()])], vec![]);
        let d = other.decide(&peers(), &RequestView { method: "GET", path: "/", host: None, headers: &HeaderMap::new() });
        assert!(d.directions.is_empty(), "a grant for another identity does not apply");
        assert!(!d.allowed, "and nothing else applies: denied");
        let mut unknown = peers();
        unknown.client_identity = None;
        let any = rules(vec![grant(0, 80, vec![HttpRule::default()])], vec![]);
        let view = RequestView { method: "GET", path: "/", host: None, headers: &HeaderMap::new() };
        assert!(any.decide(&unknown, &view).allowed, "identity 0 applies even when the identity is unknown");
        assert!(!exact.decide(&unknown, &view).allowed, "an exact grant does not apply to an unknown identity");
    }

    #[test]
    fn egress_uses_the_server_identity() {
        let r = rules(vec![], vec![grant(SERVER_ID, 80, vec![rule(Some("GET"), None)])]);
        let view = RequestView { method: "GET", path: "/", host: None, headers: &HeaderMap::new() };
        let d = r.decide(&peers(), &view);
        assert_eq!(d.directions, vec![Direction::Egress]);
        assert!(d.allowed, "egress grant for the server's identity allows GET");
        let r = rules(vec![], vec![grant(CLIENT_ID, 80, vec![rule(Some("GET"), None)])]);
        assert!(r.decide(&peers(), &view).directions.is_empty(), "egress grants match the server's identity, not the client's");
    }

    #[test]
    fn both_directions_must_allow() {
        let r = rules(vec![grant(0, 80, vec![rule(None, Some("/a|/b"))])], vec![grant(0, 80, vec![rule(None, Some("/b|/c"))])]);
        let d = r.decide(&peers(), &RequestView { method: "GET", path: "/b", host: None, headers: &HeaderMap::new() });
        assert_eq!(d.directions, vec![Direction::Egress, Direction::Ingress]);
        assert!(d.allowed, "/b passes both");
        assert!(!allowed(&r, &req("GET", "/a")), "/a passes ingress only");
        assert!(!allowed(&r, &req("GET", "/c")), "/c passes egress only");
    }

    #[test]
    fn no_direction_denies() {
        let r = CompiledRules::default();
        let d = r.decide(&peers(), &RequestView { method: "GET", path: "/", host: None, headers: &HeaderMap::new() });
        assert!(d.directions.is_empty() && !d.allowed, "no rules: fail closed");
    }

    #[test]
    fn a_direction_that_lets_the_peer_through_whole_does_not_judge_it() {
        use sluice_policy::l7::ProxiedPort;
        // The server's ingress has HTTP rules for any peer but lets CLIENT_ID through whole
        // on 80; the client's egress HTTP rules sent the connection here.
        let server_ep = ProxyEndpoint {
            key: "shop/web".into(),
            ips: vec!["10.244.1.7".parse().unwrap()],
            ingress: vec![grant(0, 80, vec![rule(Some("GET"), Some("/only"))])],
            ingress_proxied: vec![ProxiedPort { port: 80, proxied: vec![], plain: vec![CLIENT_ID], others: true }],
            ..Default::default()
        };
        let client_ep = ProxyEndpoint {
            key: "shop/client".into(),
            ips: vec!["10.244.0.5".parse().unwrap()],
            egress: vec![grant(SERVER_ID, 80, vec![rule(Some("POST"), None)])],
            ..Default::default()
        };
        let (r, _) = CompiledRules::compile(&ProxyRules { generation: 1, endpoints: vec![server_ep, client_ep] });
        let headers = HeaderMap::new();
        let post = RequestView { method: "POST", path: "/anything", host: None, headers: &headers };
        let d = r.decide(&peers(), &post);
        assert_eq!(d.directions, vec![Direction::Egress], "the ingress side lets this client through whole");
        assert!(d.allowed, "the egress rules alone judge it");
    }

    #[test]
    fn invalid_regex_allows_nothing() {
        let file = ProxyRules {
            generation: 3,
            endpoints: vec![ProxyEndpoint {
                key: "shop/web".into(),
                ips: vec!["10.244.1.7".parse().unwrap()],
                ingress: vec![grant(0, 80, vec![rule(None, Some("/("))]), grant(0, 80, vec![rule(Some("GET"), Some("/ok"))])],
                egress: vec![],
                ..Default::default()
            }],
        };
        let (r, warnings) = CompiledRules::compile(&file);
        assert_eq!(warnings.len(), 1, "one warning for the invalid rule: {warnings:?}");
        assert!(
            warnings[0].contains("shop/web") && warnings[0].contains("/("),
            "the warning names the endpoint and pattern: {}",
            warnings[0]
        );
        assert!(!allowed(&r, &req("GET", "/(")), "the invalid rule allows nothing");
        assert!(!allowed(&r, &req("POST", "/x")), "nor anything else");
        assert!(allowed(&r, &req("GET", "/ok")), "the valid rule of the other grant still applies");
    }

    #[test]
    fn v4_mapped_addresses_match_v4_ips() {
        let r = rules(vec![grant(0, 80, vec![HttpRule::default()])], vec![]);
        let mut p = peers();
        p.server = "[::ffff:10.244.1.7]:80".parse().unwrap();
        assert!(r.decide(&p, &RequestView { method: "GET", path: "/", host: None, headers: &HeaderMap::new() }).allowed);
    }

    fn write_atomically(dir: &Path, name: &str, text: &str) {
        let tmp = dir.join(".tmp");
        fs::write(&tmp, text).unwrap();
        fs::rename(&tmp, dir.join(name)).unwrap();
    }

    fn file(generation: u64) -> String {
        serde_json::to_string(&ProxyRules { generation, endpoints: vec![] }).unwrap()
    }

    #[tokio::test]
    async fn reload_on_change_and_keep_on_corruption() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rules.json");
        let store = Arc::new(RulesStore::default());
        let watcher = RulesWatcher::load(path.clone(), store.clone());
        assert_eq!(store.current().generation(), 0, "a missing file is no rules");
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(watcher.run(async move {
            let _ = stopped.await;
        }));

        async fn wait_for(store: &RulesStore, generation: u64) -> bool {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(1);
            while tokio::time::Instant::now() < deadline {
                if store.current().generation() == generation {
                    return true;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            false
        }

        write_atomically(dir.path(), "rules.json", &file(5));
        assert!(wait_for(&store, 5).await, "generation 5 is loaded within 1 s");
        write_atomically(dir.path(), "rules.json", &file(6));
        assert!(wait_for(&store, 6).await, "generation 6 replaces it within 1 s");
        let ack = std::fs::read_to_string(dir.path().join("rules.loaded")).unwrap_or_default();
        assert_eq!(ack, "6", "the loaded generation is acknowledged for the agent");
        write_atomically(dir.path(), "rules.json", "{\"generation\": 7, \"endpoints\": [");
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert_eq!(store.current().generation(), 6, "a corrupt file leaves the previous rules in force");
        write_atomically(dir.path(), "rules.json", &file(8));
        assert!(wait_for(&store, 8).await, "a good file after a corrupt one is loaded");
        let _ = stop.send(());
        task.await.unwrap();
    }

    #[test]
    fn load_reads_an_existing_file() {
        let dir = tempfile::tempdir().unwrap();
        write_atomically(dir.path(), "rules.json", &file(9));
        let store = Arc::new(RulesStore::default());
        let _watcher = RulesWatcher::load(dir.path().join("rules.json"), store.clone());
        assert_eq!(store.current().generation(), 9);
        assert!(matches!(read_rules(&dir.path().join("missing.json")), Ok(None)), "missing is not an error");
        write_atomically(dir.path(), "bad.json", "{}");
        assert!(
            matches!(read_rules(&dir.path().join("bad.json")), Err(RulesError::Parse { .. })),
            "a document without generation is a parse error"
        );
    }
}
