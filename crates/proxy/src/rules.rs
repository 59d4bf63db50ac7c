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
use sluice_policy::l7::{HttpRule, L7Grant, ProxyRules};
use thiserror::Error;

/// How often the rules file is checked for a new version.
pub const POLL_INTERVAL: Duration = Duration::from_millis(100);

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
            let grants = match direction {
                Direction::Egress => &endpoint.egress,
                Direction::Ingress => &endpoint.ingress,
            };
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
