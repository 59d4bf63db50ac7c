//! Parser of `nft -j list ruleset` into a [`Ruleset`]: tables of the ip, ip6 and inet
//! families (others never see routed IP traffic the same way and are skipped), base chains
//! with their hooks, and rules rendered back to nft syntax with the matches that matter.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;

use ipnet::IpNet;
use serde_json::{Map, Value};

use crate::iptables::{range_nets, target_action};
use crate::model::{
    Action, AddrMatch, AddrTypeMatch, Backend, Chain, Direction, Family, Hook, IfaceMatch, IfacePattern, Matches, NatKind, Policy,
    ProtoMatch, Rule, RuleKind, Ruleset, Source,
};

/// Why `nft -j list ruleset` output could not be read.
#[derive(Debug, thiserror::Error)]
pub enum NftError {
    /// The input is not JSON.
    #[error("not JSON: {0}")]
    Json(#[source] serde_json::Error),
    /// The JSON is not an nftables document (no top-level `nftables` array).
    #[error("not nft JSON: the top level has no `nftables` array")]
    NotNftables,
    /// An object of the document lacks a field it must have.
    #[error("nftables[{index}] ({kind}) has no `{field}`")]
    MissingField { index: usize, kind: &'static str, field: &'static str },
    /// A rule of a chain the document does not list.
    #[error("nftables[{index}]: rule in {family} table {table} names chain `{chain}`, which is not listed")]
    UnknownChain { index: usize, family: &'static str, table: String, chain: String },
}

/// Tables iptables-nft creates; a table of one of these names whose base chains are named
/// after their hooks in upper case (`FORWARD`) is iptables-nft's even without `xt` rules.
const IPTABLES_TABLES: &[&str] = &["filter", "nat", "mangle", "raw", "security"];

/// Parses the output of `nft -j list ruleset` (or `nft -j list table ...`).
pub fn parse(json: &str) -> Result<Ruleset, NftError> {
    let document: Value = serde_json::from_str(json).map_err(NftError::Json)?;
    parse_value(&document)
}

/// Parses an already decoded `nft -j` document.
pub fn parse_value(document: &Value) -> Result<Ruleset, NftError> {
    let items = document.get("nftables").and_then(Value::as_array).ok_or(NftError::NotNftables)?;
    let mut doc = Document::default();
    let mut rules = Vec::new();
    for (index, item) in items.iter().enumerate() {
        let Some(object) = item.as_object() else {
            continue;
        };
        for (kind, body) in object {
            match kind.as_str() {
                "chain" => doc.chain(index, body)?,
                "set" | "map" => doc.set(index, body)?,
                "rule" => rules.push((index, body)),
                _ => {} // metainfo, table, flowtable, counter, ... carry nothing we classify.
            }
        }
    }
    let mut positions: HashMap<(Family, String, String), usize> = HashMap::new();
    let mut ruleset = Ruleset::default();
    let mut xt_tables: HashSet<(Family, String)> = HashSet::new();
    for (index, body) in rules {
        let Some(rule) = doc.rule(index, body, &mut xt_tables)? else {
            continue;
        };
        let position = positions.entry((rule.family, rule.table.clone(), rule.chain.clone())).or_insert(0);
        *position += 1;
        ruleset.rules.push(Rule { position: *position, ..rule });
    }
    ruleset.chains = doc.chains;
    mark_iptables_nft(&mut ruleset, &xt_tables);
    Ok(ruleset)
}

/// Sets and chains gathered before rules are read, so rules can resolve `@set` and check
/// their chain.
#[derive(Default)]
struct Document {
    chains: Vec<Chain>,
    /// (family, table, name) of every chain, for the check of each rule's chain: a scan of
    /// `chains` per rule is quadratic on kube-proxy's tens of thousands of chains.
    chain_names: HashSet<(Family, String, String)>,
    /// Elements of named sets and maps, by (family, table, name).
    sets: HashMap<(Family, String, String), Vec<Value>>,
}

fn family_of(name: &str) -> Option<Family> {
    match name {
        "ip" => Some(Family::Ipv4),
        "ip6" => Some(Family::Ipv6),
        "inet" => Some(Family::Inet),
        _ => None,
    }
}

fn field<'a>(body: &'a Value, index: usize, kind: &'static str, name: &'static str) -> Result<&'a Value, NftError> {
    body.get(name).ok_or(NftError::MissingField { index, kind, field: name })
}

fn str_field<'a>(body: &'a Value, index: usize, kind: &'static str, name: &'static str) -> Result<&'a str, NftError> {
    field(body, index, kind, name)?.as_str().ok_or(NftError::MissingField { index, kind, field: name })
}

// === impl Document ===

impl Document {
    fn chain(&mut self, index: usize, body: &Value) -> Result<(), NftError> {
        let Some(family) = family_of(str_field(body, index, "chain", "family")?) else {
            return Ok(());
        };
        let table = str_field(body, index, "chain", "table")?;
        let name = str_field(body, index, "chain", "name")?;
        // A hook this crate does not know (egress, ...) leaves the chain as a regular one.
        let hook = body.get("hook").and_then(Value::as_str).and_then(Hook::from_nft);
        let policy = hook.map(|_| match body.get("policy").and_then(Value::as_str) {
            Some("drop") => Policy::Drop,
            _ => Policy::Accept,
        });
        let devices = match body.get("dev") {
            Some(Value::String(dev)) => vec![dev.clone()],
            Some(Value::Array(devs)) => devs.iter().filter_map(Value::as_str).map(str::to_string).collect(),
            _ => Vec::new(),
        };
        self.chain_names.insert((family, table.to_string(), name.to_string()));
        self.chains.push(Chain {
            family,
            backend: Backend::Nftables,
            source: Source::NftJson,
            table: table.to_string(),
            name: name.to_string(),
            hook,
            policy,
            devices,
        });
        Ok(())
    }

    fn set(&mut self, index: usize, body: &Value) -> Result<(), NftError> {
        let Some(family) = family_of(str_field(body, index, "set", "family")?) else {
            return Ok(());
        };
        let table = str_field(body, index, "set", "table")?;
        let name = str_field(body, index, "set", "name")?;
        let elements = body.get("elem").and_then(Value::as_array).cloned().unwrap_or_default();
        self.sets.insert((family, table.to_string(), name.to_string()), elements);
        Ok(())
    }

    fn rule(&self, index: usize, body: &Value, xt_tables: &mut HashSet<(Family, String)>) -> Result<Option<Rule>, NftError> {
        let family_name = str_field(body, index, "rule", "family")?;
        let Some(family) = family_of(family_name) else {
            return Ok(None);
        };
        let table = str_field(body, index, "rule", "table")?;
        let chain = str_field(body, index, "rule", "chain")?;
        if !self.chain_names.contains(&(family, table.to_string(), chain.to_string())) {
            return Err(NftError::UnknownChain { index, family: family.nft_name(), table: table.to_string(), chain: chain.to_string() });
        }
        let exprs = field(body, index, "rule", "expr")?.as_array().ok_or(NftError::MissingField { index, kind: "rule", field: "expr" })?;
        let scope = Scope { doc: self, family, table };
        let mut matches = Matches::default();
        let mut actions = Vec::new();
        let mut words = Vec::new();
        for statement in exprs {
            let Some((kind, inner)) = single(statement) else {
                continue;
            };
            if kind == "xt" {
                xt_tables.insert((family, table.to_string()));
            }
            words.push(render_statement(kind, inner));
            scope.statement(kind, inner, &mut matches, &mut actions);
        }
        if let Some(comment) = body.get("comment").and_then(Value::as_str) {
            words.push(format!("comment {}", quote(comment)));
            matches.comment = Some(comment.to_string());
        }
        Ok(Some(Rule {
            family,
            backend: Backend::Nftables,
            source: Source::NftJson,
            table: table.to_string(),
            chain: chain.to_string(),
            position: 0,
            handle: body.get("handle").and_then(Value::as_u64),
            kind: RuleKind::Rule,
            text: words.join(" "),
            matches,
            actions,
        }))
    }
}

/// Marks the chains and rules of tables iptables-nft wrote: any rule carrying an `xt`
/// expression, or the iptables table and chain names (a table with only native-looking rules).
fn mark_iptables_nft(ruleset: &mut Ruleset, xt_tables: &HashSet<(Family, String)>) {
    let mut compat: HashSet<(Family, String)> = xt_tables.clone();
    let tables: HashSet<(Family, &str)> = ruleset.chains.iter().map(|c| (c.family, c.table.as_str())).collect();
    for (family, table) in tables {
        if family == Family::Inet || !IPTABLES_TABLES.contains(&table) {
            continue;
        }
        let mut base = ruleset
            .chains
            .iter()
            .filter(|c| c.family == family && c.table == table)
            .filter_map(|c| c.hook.map(|hook| c.name == hook.name()));
        let first = base.next();
        if first == Some(true) && base.all(|named_after_hook| named_after_hook) {
            compat.insert((family, table.to_string()));
        }
    }
    let is_compat = |family: Family, table: &str| compat.contains(&(family, table.to_string()));
    for chain in &mut ruleset.chains {
        if is_compat(chain.family, &chain.table) {
            chain.backend = Backend::IptablesNft;
        }
    }
    for rule in &mut ruleset.rules {
        if is_compat(rule.family, &rule.table) {
            rule.backend = Backend::IptablesNft;
        }
    }
}

/// The one key and value of a JSON object like `{"match": {...}}`.
fn single(value: &Value) -> Option<(&str, &Value)> {
    let object = value.as_object()?;
    if object.len() != 1 {
        return None;
    }
    object.iter().next().map(|(k, v)| (k.as_str(), v))
}

/// Where a rule lives, to resolve `@set` references.
struct Scope<'a> {
    doc: &'a Document,
    family: Family,
    table: &'a str,
}

impl Scope<'_> {
    fn statement(&self, kind: &str, inner: &Value, matches: &mut Matches, actions: &mut Vec<Action>) {
        let action = match kind {
            "match" => {
                if !self.add_match(inner, matches) {
                    matches.other.push(render_statement(kind, inner));
                }
                return;
            }
            "xt" => {
                let name = inner.get("name").and_then(Value::as_str).unwrap_or("?");
                if inner.get("type").and_then(Value::as_str) == Some("target") {
                    target_action(name)
                } else {
                    matches.other.push(format!("xt match {name}"));
                    return;
                }
            }
            // Statements that only narrow what matches.
            "limit" | "quota" | "ct count" | "synproxy" => {
                matches.other.push(render_statement(kind, inner));
                return;
            }
            "counter" => Action::Counter,
            "log" => Action::Log,
            "accept" => Action::Accept,
            "drop" => Action::Drop,
            "reject" => Action::Reject,
            "return" => Action::Return,
            "continue" => Action::Continue,
            "queue" => Action::Queue,
            "jump" | "goto" => {
                let target = inner.get("target").and_then(Value::as_str).unwrap_or_default().to_string();
                if kind == "jump" {
                    Action::Jump(target)
                } else {
                    Action::Goto(target)
                }
            }
            "snat" => Action::Nat(NatKind::Snat),
            "dnat" => Action::Nat(NatKind::Dnat),
            "masquerade" => Action::Nat(NatKind::Masquerade),
            "redirect" => Action::Nat(NatKind::Redirect),
            "vmap" => {
                let mut chains = Vec::new();
                let mut verdicts = Vec::new();
                if let Some(data) = inner.get("data") {
                    let entries = match data.as_str().and_then(|name| name.strip_prefix('@')) {
                        Some(name) => self.set_elements(name).cloned().unwrap_or_default(),
                        None => data.get("set").and_then(Value::as_array).cloned().unwrap_or_default(),
                    };
                    for entry in &entries {
                        if let Some(verdict) = entry.as_array().and_then(|pair| pair.get(1)) {
                            collect_verdicts(verdict, &mut chains, &mut verdicts);
                        }
                    }
                }
                Action::VerdictMap { chains, verdicts }
            }
            "mangle" => {
                let key = inner.get("key").map(render).unwrap_or_default();
                Action::Other(format!("{key} set"))
            }
            other => Action::Other(other.to_string()),
        };
        actions.push(action);
    }

    /// Fills `matches` from a `match` expression it understands; false leaves it to `other`.
    fn add_match(&self, inner: &Value, matches: &mut Matches) -> bool {
        let (Some(left), Some(right)) = (inner.get("left"), inner.get("right")) else {
            return false;
        };
        let negated = match inner.get("op").and_then(Value::as_str) {
            Some("==") | Some("in") => false,
            Some("!=") => true,
            _ => return false,
        };
        let Some((kind, key)) = single(left) else {
            return false;
        };
        match kind {
            "payload" => {
                let protocol = key.get("protocol").and_then(Value::as_str);
                let field = key.get("field").and_then(Value::as_str);
                let family = match protocol {
                    Some("ip") => Family::Ipv4,
                    Some("ip6") => Family::Ipv6,
                    _ => return false,
                };
                match field {
                    Some("saddr") | Some("daddr") => {
                        let Some(nets) = self.addresses(right) else {
                            return false;
                        };
                        if nets.is_empty() || nets.iter().any(|n| n.addr().is_ipv4() != (family == Family::Ipv4)) {
                            return false;
                        }
                        let addr = AddrMatch { nets, negated };
                        if field == Some("saddr") {
                            matches.source.push(addr);
                        } else {
                            matches.destination.push(addr);
                        }
                        true
                    }
                    Some("protocol") | Some("nexthdr") => self.protocol(right, negated, matches),
                    _ => false,
                }
            }
            "meta" => match key.get("key").and_then(Value::as_str) {
                Some(k @ ("iifname" | "oifname" | "iif" | "oif")) => {
                    let Some(names) = self.strings(right) else {
                        return false;
                    };
                    let patterns = names.iter().map(|n| IfacePattern::parse(n)).collect();
                    let iface = IfaceMatch { patterns, negated };
                    if k.starts_with('i') {
                        matches.in_iface.push(iface);
                    } else {
                        matches.out_iface.push(iface);
                    }
                    true
                }
                Some("l4proto") => self.protocol(right, negated, matches),
                _ => false,
            },
            "fib" => {
                if key.get("result").and_then(Value::as_str) != Some("type") {
                    return false;
                }
                let flags: Vec<&str> = match key.get("flags") {
                    Some(Value::Array(flags)) => flags.iter().filter_map(Value::as_str).collect(),
                    Some(Value::String(flag)) => vec![flag.as_str()],
                    _ => return false,
                };
                let direction = if flags.contains(&"daddr") {
                    Direction::Destination
                } else if flags.contains(&"saddr") {
                    Direction::Source
                } else {
                    return false;
                };
                let Some(types) = self.strings(right) else {
                    return false;
                };
                let types = types.iter().map(|t| t.to_ascii_uppercase()).collect();
                matches.addr_type.push(AddrTypeMatch { direction, types, negated });
                true
            }
            _ => false,
        }
    }

    fn protocol(&self, right: &Value, negated: bool, matches: &mut Matches) -> bool {
        let name = match right {
            Value::String(name) => name.clone(),
            Value::Number(number) => number.to_string(),
            _ => return false,
        };
        matches.protocol = Some(ProtoMatch { name, negated });
        true
    }

    fn set_elements(&self, name: &str) -> Option<&Vec<Value>> {
        self.doc.sets.get(&(self.family, self.table.to_string(), name.to_string()))
    }

    /// Addresses, prefixes, ranges, anonymous and named sets of them; None when anything in
    /// it is not an address.
    fn addresses(&self, value: &Value) -> Option<Vec<IpNet>> {
        match value {
            Value::String(text) => match text.strip_prefix('@') {
                Some(name) => {
                    let elements = self.set_elements(name)?;
                    self.address_list(elements)
                }
                None => {
                    let addr: IpAddr = text.parse().ok()?;
                    Some(vec![IpNet::from(addr)])
                }
            },
            Value::Object(object) => {
                if let Some(prefix) = object.get("prefix") {
                    let addr: IpAddr = prefix.get("addr")?.as_str()?.parse().ok()?;
                    let len = u8::try_from(prefix.get("len")?.as_u64()?).ok()?;
                    return IpNet::new(addr, len).ok().map(|net| vec![net.trunc()]);
                }
                if let Some(range) = object.get("range").and_then(Value::as_array) {
                    let start: IpAddr = range.first()?.as_str()?.parse().ok()?;
                    let end: IpAddr = range.get(1)?.as_str()?.parse().ok()?;
                    return range_nets(start, end);
                }
                if let Some(set) = object.get("set").and_then(Value::as_array) {
                    return self.address_list(set);
                }
                if let Some(elem) = object.get("elem") {
                    return self.addresses(elem.get("val")?);
                }
                None
            }
            _ => None,
        }
    }

    fn address_list(&self, values: &[Value]) -> Option<Vec<IpNet>> {
        let mut nets = Vec::new();
        for value in values {
            nets.extend(self.addresses(value)?);
        }
        Some(nets)
    }

    /// A string, or the strings of an anonymous or named set.
    fn strings(&self, value: &Value) -> Option<Vec<String>> {
        match value {
            Value::String(text) => match text.strip_prefix('@') {
                Some(name) => self.string_list(self.set_elements(name)?),
                None => Some(vec![text.clone()]),
            },
            Value::Array(items) => self.string_list(items),
            Value::Object(object) => {
                if let Some(set) = object.get("set").and_then(Value::as_array) {
                    return self.string_list(set);
                }
                self.strings(object.get("elem")?.get("val")?)
            }
            _ => None,
        }
    }

    fn string_list(&self, values: &[Value]) -> Option<Vec<String>> {
        let mut strings = Vec::new();
        for value in values {
            strings.extend(self.strings(value)?);
        }
        Some(strings)
    }
}

/// Chains and verdicts anywhere inside a verdict map entry.
fn collect_verdicts(value: &Value, chains: &mut Vec<String>, verdicts: &mut Vec<String>) {
    match value {
        Value::Object(object) => {
            for (key, inner) in object {
                match key.as_str() {
                    "jump" | "goto" => {
                        if let Some(target) = inner.get("target").and_then(Value::as_str) {
                            chains.push(target.to_string());
                        }
                    }
                    "accept" | "drop" | "reject" | "return" | "continue" | "queue" => verdicts.push(key.clone()),
                    _ => collect_verdicts(inner, chains, verdicts),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|item| collect_verdicts(item, chains, verdicts)),
        _ => {}
    }
}

// === rendering back to nft syntax ===

fn quote(text: &str) -> String {
    format!("\"{}\"", text.replace('\\', "\\\\").replace('"', "\\\""))
}

/// Meta keys nft prints without the `meta` keyword.
fn unqualified_meta(key: &str) -> bool {
    matches!(key, "iif" | "oif" | "iifname" | "oifname" | "iiftype" | "oiftype" | "skuid" | "skgid" | "pkttype" | "iifgroup" | "oifgroup")
}

fn render_statement(kind: &str, inner: &Value) -> String {
    let get = |key: &str| inner.get(key);
    let text = |key: &str| get(key).map(render).unwrap_or_default();
    match kind {
        "match" => {
            let left = text("left");
            let iface = get("left")
                .and_then(|l| l.get("meta"))
                .and_then(|m| m.get("key"))
                .and_then(Value::as_str)
                .is_some_and(|k| matches!(k, "iifname" | "oifname"));
            let right = get("right").map(|r| if iface { render_quoted(r) } else { render(r) }).unwrap_or_default();
            // nft leaves out `==` except after a bitwise expression (`meta mark & 0x4000 == 0`).
            let binop = get("left").and_then(single).is_some_and(|(k, _)| matches!(k, "&" | "|" | "^" | "<<" | ">>"));
            match get("op").and_then(Value::as_str) {
                Some("==") if binop => format!("{left} == {right}"),
                Some("==") | Some("in") | None => format!("{left} {right}"),
                Some(op) => format!("{left} {op} {right}"),
            }
        }
        "counter" => "counter".to_string(),
        "log" => {
            let mut out = String::from("log");
            if let Some(prefix) = get("prefix").and_then(Value::as_str) {
                out.push_str(&format!(" prefix {}", quote(prefix)));
            }
            for key in ["level", "group"] {
                if let Some(value) = get(key) {
                    out.push_str(&format!(" {key} {}", render(value)));
                }
            }
            out
        }
        "accept" | "drop" | "continue" | "return" | "notrack" => kind.to_string(),
        "queue" => match get("num") {
            Some(num) => format!("queue num {}", render(num)),
            None => "queue".to_string(),
        },
        "reject" => match get("type").and_then(Value::as_str) {
            Some(kind) => match get("expr") {
                Some(expr) => format!("reject with {kind} {}", render(expr)),
                None => format!("reject with {kind}"),
            },
            None => "reject".to_string(),
        },
        "jump" | "goto" => format!("{kind} {}", text("target")),
        "snat" | "dnat" => {
            let mut out = kind.to_string();
            if let Some(family) = get("family").and_then(Value::as_str) {
                out.push_str(&format!(" {family}"));
            }
            if let Some(addr) = get("addr") {
                let addr = render(addr);
                match get("port") {
                    Some(port) if addr.contains(':') => out.push_str(&format!(" to [{addr}]:{}", render(port))),
                    Some(port) => out.push_str(&format!(" to {addr}:{}", render(port))),
                    None => out.push_str(&format!(" to {addr}")),
                }
            } else if let Some(port) = get("port") {
                out.push_str(&format!(" to :{}", render(port)));
            }
            if let Some(flags) = get("flags") {
                out.push_str(&format!(" {}", render(flags)));
            }
            out
        }
        "masquerade" | "redirect" => {
            let mut out = kind.to_string();
            if let Some(port) = get("port") {
                out.push_str(&format!(" to :{}", render(port)));
            }
            if let Some(flags) = get("flags") {
                out.push_str(&format!(" {}", render(flags)));
            }
            out
        }
        "mangle" => format!("{} set {}", text("key"), text("value")),
        "vmap" => format!("{} vmap {}", text("key"), text("data")),
        "xt" => format!("xt {} {}", text("type"), text("name")),
        "limit" => {
            let over = if get("inv").and_then(Value::as_bool) == Some(true) { "over " } else { "" };
            format!("limit rate {over}{}/{}", text("rate"), text("per"))
        }
        other => match inner {
            Value::Null => other.to_string(),
            _ => format!("{other} {inner}"),
        },
    }
}

/// Like [`render`], with strings quoted (interface names).
fn render_quoted(value: &Value) -> String {
    match value {
        Value::String(text) if !text.starts_with('@') => quote(text),
        Value::Object(object) if object.contains_key("set") => {
            let items = object.get("set").and_then(Value::as_array).cloned().unwrap_or_default();
            let items: Vec<String> = items.iter().map(render_quoted).collect();
            format!("{{ {} }}", items.join(", "))
        }
        other => render(other),
    }
}

/// An nft expression as nft prints it (best effort; unknown shapes fall back to JSON).
fn render(value: &Value) -> String {
    match value {
        Value::Null => String::new(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => s.clone(),
        Value::Array(items) => items.iter().map(render).collect::<Vec<_>>().join(","),
        Value::Object(object) => match single(value) {
            Some((kind, inner)) => render_object(kind, inner),
            None => render_map(object),
        },
    }
}

fn render_map(object: &Map<String, Value>) -> String {
    Value::Object(object.clone()).to_string()
}

fn render_object(kind: &str, inner: &Value) -> String {
    let get = |key: &str| inner.get(key).map(render).unwrap_or_default();
    match kind {
        "payload" => match inner.get("protocol") {
            Some(_) => format!("{} {}", get("protocol"), get("field")),
            None => format!("@{},{},{}", get("base"), get("offset"), get("len")),
        },
        "meta" => {
            let key = get("key");
            if unqualified_meta(&key) {
                key
            } else {
                format!("meta {key}")
            }
        }
        "ct" => match inner.get("dir") {
            Some(dir) => format!("ct {} {}", render(dir), get("key")),
            None => format!("ct {}", get("key")),
        },
        "fib" => {
            let flags = match inner.get("flags") {
                Some(Value::Array(flags)) => flags.iter().map(render).collect::<Vec<_>>().join(" . "),
                Some(other) => render(other),
                None => String::new(),
            };
            format!("fib {flags} {}", get("result"))
        }
        "prefix" => format!("{}/{}", get("addr"), get("len")),
        "range" => match inner.as_array() {
            Some(bounds) => bounds.iter().map(render).collect::<Vec<_>>().join("-"),
            None => render(inner),
        },
        "set" => {
            let items = inner.as_array().cloned().unwrap_or_default();
            let items: Vec<String> = items
                .iter()
                .map(|item| match item.as_array() {
                    Some(pair) if pair.len() == 2 => {
                        format!("{} : {}", render(&pair[0]), render(&pair[1]))
                    }
                    _ => render(item),
                })
                .collect();
            format!("{{ {} }}", items.join(", "))
        }
        "concat" => match inner.as_array() {
            Some(parts) => parts.iter().map(render).collect::<Vec<_>>().join(" . "),
            None => render(inner),
        },
        "elem" => get("val"),
        "numgen" => {
            let offset = inner.get("offset").and_then(Value::as_u64).unwrap_or(0);
            let mut out = format!("numgen {} mod {}", get("mode"), get("mod"));
            if offset != 0 {
                out.push_str(&format!(" offset {offset}"));
            }
            out
        }
        "jhash" | "symhash" => format!("{kind} mod {}", get("mod")),
        "&" | "|" | "^" | "<<" | ">>" => match inner.as_array() {
            Some(operands) => operands.iter().map(render).collect::<Vec<_>>().join(&format!(" {kind} ")),
            None => render(inner),
        },
        "map" => format!("{} map {}", get("key"), get("data")),
        "accept" | "drop" | "continue" | "return" => kind.to_string(),
        "jump" | "goto" => format!("{kind} {}", get("target")),
        other => format!("{other} {inner}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_and_parses_a_native_rule() {
        let json = r#"{"nftables": [
          {"table": {"family": "inet", "name": "filter", "handle": 1}},
          {"set": {"family": "inet", "name": "blocked", "table": "filter", "type": "ipv4_addr",
                   "handle": 4, "flags": ["interval"],
                   "elem": ["198.51.100.7", {"prefix": {"addr": "203.0.113.0", "len": 24}}]}},
          {"chain": {"family": "inet", "table": "filter", "name": "fwd", "handle": 1, "type": "filter",
                     "hook": "forward", "prio": 0, "policy": "drop"}},
          {"chain": {"family": "inet", "table": "filter", "name": "extra", "handle": 2}},
          {"rule": {"family": "inet", "table": "filter", "chain": "fwd", "handle": 5, "comment": "no metadata",
                    "expr": [
            {"match": {"op": "==", "left": {"meta": {"key": "iifname"}}, "right": {"set": ["lxc*", "eth0"]}}},
            {"match": {"op": "!=", "left": {"payload": {"protocol": "ip", "field": "daddr"}}, "right": "@blocked"}},
            {"match": {"op": "in", "left": {"ct": {"key": "state"}}, "right": ["established", "related"]}},
            {"counter": {"packets": 0, "bytes": 0}},
            {"log": {"prefix": "fwd "}},
            {"drop": null}]}},
          {"rule": {"family": "inet", "table": "filter", "chain": "fwd", "handle": 6, "expr": [
            {"match": {"op": "==", "left": {"fib": {"result": "type", "flags": ["daddr"]}}, "right": "local"}},
            {"vmap": {"key": {"meta": {"key": "iifname"}}, "data": {"set": [["br-1", {"goto": {"target": "extra"}}], ["x", {"drop": null}]]}}}]}},
          {"rule": {"family": "bridge", "table": "t", "chain": "c", "handle": 1, "expr": []}}
        ]}"#;
        let ruleset = parse(json).unwrap();
        assert_eq!(ruleset.chains.len(), 2);
        assert_eq!(ruleset.chains[0].policy, Some(Policy::Drop));
        assert_eq!(ruleset.rules.len(), 2, "bridge family skipped");
        let rule = &ruleset.rules[0];
        assert_eq!(
            rule.text,
            r#"iifname { "lxc*", "eth0" } ip daddr != @blocked ct state established,related counter log prefix "fwd " drop comment "no metadata""#
        );
        assert_eq!(rule.matches.in_iface[0].patterns.len(), 2);
        assert!(rule.matches.destination[0].negated);
        assert_eq!(rule.matches.destination[0].nets.len(), 2, "named set resolved");
        assert_eq!(rule.matches.other, vec!["ct state established,related"]);
        assert_eq!(rule.actions, vec![Action::Counter, Action::Log, Action::Drop]);
        assert_eq!((rule.position, rule.handle), (1, Some(5)));
        let second = &ruleset.rules[1];
        assert_eq!(second.matches.addr_type[0].types, vec!["LOCAL"]);
        assert_eq!(second.actions, vec![Action::VerdictMap { chains: vec!["extra".into()], verdicts: vec!["drop".into()] }]);
        assert_eq!(second.text, "fib daddr type local iifname vmap { br-1 : goto extra, x : drop }");
        assert_eq!(rule.backend, Backend::Nftables);
    }

    #[test]
    fn errors() {
        assert!(matches!(parse("{"), Err(NftError::Json(_))));
        assert!(matches!(parse("{}"), Err(NftError::NotNftables)));
        let missing = r#"{"nftables": [{"chain": {"family": "ip", "table": "t"}}]}"#;
        assert_eq!(parse(missing).unwrap_err().to_string(), "nftables[0] (chain) has no `name`");
        let orphan = r#"{"nftables": [{"rule": {"family": "ip", "table": "t", "chain": "c", "expr": []}}]}"#;
        assert_eq!(parse(orphan).unwrap_err().to_string(), "nftables[0]: rule in ip table t names chain `c`, which is not listed");
    }
}
