//! The rules of the node's layer-7 proxy: taken from each round's compiled tables (the grants
//! of local endpoints) and written atomically to a file the proxy watches. A round first writes
//! the old rules and the new together and waits until the proxy acknowledges them, then
//! programs the maps that redirect connections to it, then writes the new rules alone: no
//! request is judged by rules that do not yet, or no longer, cover it. The proxy keeps the last
//! version it read, so it enforces the same rules while the agent restarts.

use std::io::Write;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use sluice_policy::l7::{ProxyEndpoint, ProxyRules};
use sluice_policy::{ClusterView, Compiled};

/// Writes the proxy's rules file when what it says changes.
#[derive(Debug)]
pub struct ProxyRulesWriter {
    path: PathBuf,
    /// The endpoints last written (or found at start); `None`: unknown, write on the next round.
    last: Option<Vec<ProxyEndpoint>>,
    /// The generation last written, found or acknowledged.
    generation: u64,
}

// === impl ProxyRulesWriter ===

impl ProxyRulesWriter {
    /// Continues from the file a previous agent left, so generations keep growing.
    /// Continues from the file a previous agent left, so generations keep growing, and above
    /// the one the proxy last acknowledged too: a rules file lost or unreadable must not let an
    /// old acknowledgement pass for a new version.
    pub fn new(path: PathBuf) -> Self {
        let found = std::fs::read(&path).ok().and_then(|b| serde_json::from_slice::<ProxyRules>(&b).ok());
        let acknowledged =
            std::fs::read_to_string(sluice_policy::l7::loaded_path(&path)).ok().and_then(|t| t.trim().parse::<u64>().ok()).unwrap_or(0);
        let generation = found.as_ref().map_or(0, |f| f.generation).max(acknowledged);
        Self { path, last: found.map(|f| f.endpoints), generation }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes the rules of `compiled` if they differ from the last written; the generation
    /// written, if any.
    pub fn write(&mut self, compiled: &Compiled, view: &ClusterView) -> std::io::Result<Option<u64>> {
        self.write_endpoints(rules_of(compiled, view))
    }

    /// Writes the last rules and those of `compiled` together (before the maps change), if
    /// that differs from the last written; the generation written, if any.
    pub fn write_union(&mut self, compiled: &Compiled, view: &ClusterView) -> std::io::Result<Option<u64>> {
        let mut endpoints = self.last.clone().unwrap_or_default();
        for new in rules_of(compiled, view) {
            match endpoints.iter_mut().find(|e| e.key == new.key) {
                Some(old) => {
                    for ip in new.ips {
                        if !old.ips.contains(&ip) {
                            old.ips.push(ip);
                        }
                    }
                    for (mine, theirs) in [(&mut old.ingress, new.ingress), (&mut old.egress, new.egress)] {
                        for grant in theirs {
                            if !mine.contains(&grant) {
                                mine.push(grant);
                            }
                        }
                    }
                    // While the maps change either decision may be in force: a peer is judged
                    // where either version sends it through the proxy.
                    for (mine, theirs) in [(&mut old.ingress_proxied, new.ingress_proxied), (&mut old.egress_proxied, new.egress_proxied)] {
                        for port in theirs {
                            match mine.iter_mut().find(|p| p.port == port.port) {
                                Some(p) => {
                                    p.proxied.extend(port.proxied.iter().filter(|i| !p.proxied.contains(i)).copied().collect::<Vec<_>>());
                                    p.plain.retain(|i| !p.proxied.contains(i));
                                    p.others |= port.others;
                                }
                                None => mine.push(port),
                            }
                        }
                    }
                }
                None => endpoints.push(new),
            }
        }
        endpoints.sort_by(|a, b| a.key.cmp(&b.key));
        self.write_endpoints(endpoints)
    }

    fn write_endpoints(&mut self, endpoints: Vec<ProxyEndpoint>) -> std::io::Result<Option<u64>> {
        if self.last.as_ref() == Some(&endpoints) {
            return Ok(None);
        }
        let generation = self.generation + 1;
        let rules = ProxyRules { generation, endpoints };
        write_atomically(&self.path, &serde_json::to_vec_pretty(&rules).map_err(std::io::Error::other)?)?;
        self.generation = generation;
        self.last = Some(rules.endpoints);
        Ok(Some(generation))
    }

    /// Waits until the proxy has loaded `generation` (or a later one), at most `timeout`;
    /// whether it did. A proxy that is not running never does: connections its rules cover
    /// are dropped by the datapath until it runs.
    pub fn wait_loaded(&self, generation: u64, timeout: Duration) -> bool {
        let ack = sluice_policy::l7::loaded_path(&self.path);
        let deadline = Instant::now() + timeout;
        loop {
            let loaded = std::fs::read_to_string(&ack).ok().and_then(|t| t.trim().parse::<u64>().ok());
            if loaded.is_some_and(|g| g >= generation) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }
}

/// The local endpoints with layer-7 grants, in key order.
fn rules_of(compiled: &Compiled, view: &ClusterView) -> Vec<ProxyEndpoint> {
    compiled
        .endpoints
        .iter()
        .filter(|(_, p)| !p.ingress.layer7.is_empty() || !p.egress.layer7.is_empty())
        .map(|(key, p)| ProxyEndpoint {
            key: key.clone(),
            ips: view.endpoints.iter().find(|e| e.local && &e.key == key).map(|e| e.ips.clone()).unwrap_or_default(),
            ingress: p.ingress.layer7.clone(),
            egress: p.egress.layer7.clone(),
            ingress_proxied: p.ingress.proxied.clone(),
            egress_proxied: p.egress.proxied.clone(),
        })
        .collect()
}

/// Write to a temporary file beside `path`, flush it to disk, rename it over `path`: a reader
/// sees the old file or the new one, never a part.
fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or_else(|| Path::new("."));
    // Root's only, as the proxy makes it: it holds the flow socket too.
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
    let staged = path.with_extension("json.new");
    let mut file = std::fs::File::create(&staged)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    std::fs::rename(&staged, path)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use sluice_policy::l7::L7Grant;
    use sluice_policy::{DirectionTable, EndpointPolicy, EndpointView, HttpRule};

    fn compiled_with(grant: Option<L7Grant>) -> (Compiled, ClusterView) {
        let mut compiled = Compiled::default();
        let ingress = DirectionTable { layer7: grant.into_iter().collect(), ..Default::default() };
        compiled.endpoints.insert("x/web".into(), EndpointPolicy { ingress, ..Default::default() });
        compiled.endpoints.insert("x/other".into(), EndpointPolicy::default());
        let view = ClusterView {
            endpoints: vec![EndpointView {
                key: "x/web".into(),
                namespace: "x".into(),
                labels: Default::default(),
                identity: 300,
                ips: vec!["10.0.0.5".parse().unwrap(), "fd00::5".parse().unwrap()],
                local: true,
                named_ports: Default::default(),
            }],
            ..Default::default()
        };
        (compiled, view)
    }

    fn grant(path: &str) -> L7Grant {
        L7Grant { identity: 0, port: 80, http: vec![HttpRule { path: Some(path.into()), ..Default::default() }], policy: "p".into() }
    }

    #[test]
    fn a_change_is_written_with_a_new_generation_and_an_unchanged_round_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("proxy/rules.json");
        let mut writer = ProxyRulesWriter::new(path.clone());
        let (compiled, view) = compiled_with(Some(grant("/a")));
        assert_eq!(writer.write(&compiled, &view).unwrap(), Some(1), "the first rules are written");
        let first: ProxyRules = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        assert_eq!(first.generation, 1);
        assert_eq!(first.endpoints.len(), 1, "only the endpoint with grants: {first:?}");
        assert_eq!(first.endpoints[0].ips.len(), 2, "with both its addresses");
        assert_eq!(writer.write(&compiled, &view).unwrap(), None, "the same rules again: nothing written");

        // A change: first the old and the new grants together, then the new alone.
        let (changed, view) = compiled_with(Some(grant("/b")));
        assert_eq!(writer.write_union(&changed, &view).unwrap(), Some(2));
        let union: ProxyRules = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        assert_eq!(union.endpoints[0].ingress.len(), 2, "both grants while the maps change: {union:?}");
        assert_eq!(writer.write(&changed, &view).unwrap(), Some(3));
        // A new agent continues the generations of the file it finds.
        let mut restarted = ProxyRulesWriter::new(path.clone());
        let (none, view) = compiled_with(None);
        assert_eq!(restarted.write(&none, &view).unwrap(), Some(4), "generations keep growing across agents");
        let last: ProxyRules = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        assert!(last.endpoints.is_empty(), "no grants left: {last:?}");
    }

    #[test]
    fn a_lost_rules_file_does_not_reuse_acknowledged_generations() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rules.json");
        std::fs::write(sluice_policy::l7::loaded_path(&path), "7").unwrap();
        let mut writer = ProxyRulesWriter::new(path.clone());
        let (none, view) = compiled_with(None);
        assert_eq!(writer.write(&none, &view).unwrap(), Some(8), "above the acknowledged 7, and written even though empty");
    }

    #[test]
    fn waiting_for_the_proxy_ends_with_its_acknowledgement_or_the_timeout() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rules.json");
        let writer = ProxyRulesWriter::new(path.clone());
        assert!(!writer.wait_loaded(1, Duration::from_millis(20)), "no proxy: the wait times out");
        std::fs::write(sluice_policy::l7::loaded_path(&path), "5").unwrap();
        assert!(writer.wait_loaded(5, Duration::from_millis(20)), "generation 5 acknowledged");
        assert!(writer.wait_loaded(4, Duration::from_millis(20)), "a later generation acknowledges an earlier one");
        assert!(!writer.wait_loaded(6, Duration::from_millis(20)), "6 is not acknowledged yet");
    }
}
