//! Table-driven tests of NetworkPolicy and Sluice policy validation: valid manifests of each
//! kind, then one bad manifest per rule, each rejected on the right field; and the namespace
//! name label the API server adds.

use super::*;
use crate::policy::{EnforcementMode, Entity, IcmpFamily, PortProtocolName};

const NETPOL: &str = "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web, namespace: shop}
spec:
  podSelector:
    matchLabels: {app: web}
    matchExpressions: [{key: tier, operator: In, values: [front]}, {key: canary, operator: DoesNotExist}]
  policyTypes: [Ingress, Egress]
  ingress:
  - from:
    - podSelector: {matchLabels: {app: client}}
      namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: shop}}
    - ipBlock: {cidr: 10.0.0.0/8, except: [10.1.0.0/16, 10.2.3.4/32]}
    ports: [{port: 80}, {port: http, protocol: TCP}, {port: 8000, endPort: 8080}, {protocol: UDP}]
  egress:
  - to: [{ipBlock: {cidr: 'fd00::/8', except: ['fd00:1::/32']}}]
  - ports: [{port: 53, protocol: UDP}, {port: 53, protocol: SCTP}]
";

const SNP: &str = "apiVersion: sluice.dev/v1
kind: SluiceNetworkPolicy
metadata: {name: web, namespace: shop}
spec:
  endpointSelector: {matchLabels: {app: web, k8s:tier: front}, matchExpressions: [{key: k8s:io.kubernetes.pod.namespace, operator: In, values: [shop]}]}
  enforcementMode: audit
  enableDefaultDeny: {ingress: true, egress: false}
  ingress:
  - fromEndpoints: [{matchLabels: {app: client}}, {}]
    fromEntities: [host, remote-node, world, cluster, all]
    fromCIDR: [192.0.2.0/24]
    fromCIDRSet: [{cidr: 10.0.0.0/8, except: [10.96.0.0/12]}]
    toPorts: [{ports: [{port: '80', protocol: TCP}, {port: 8000, endPort: 8080}, {port: http}, {port: '0', protocol: UDP}]}]
    icmps: [{fields: [{type: 8}, {type: 128, family: IPv6}]}]
  ingressDeny:
  - fromCIDR: ['2001:db8::/32']
  egress:
  - toEndpoints: [{matchLabels: {k8s:io.kubernetes.pod.namespace: kube-system, k8s-app: kube-dns}}]
    toPorts: [{ports: [{port: '53', protocol: ANY}]}]
  egressDeny:
  - toEntities: [world]
    toCIDRSet: [{cidr: '2001:db8::/32'}]
";

const SCNP: &str = "apiVersion: sluice.dev/v1
kind: SluiceClusterwideNetworkPolicy
metadata: {name: no-world}
spec:
  endpointSelector: {}
  egressDeny: [{toEntities: [world]}]
";

fn parse(text: &str) -> Result<Vec<Object>, ManifestError> {
    parse_manifests("policy.yaml", text)
}

fn parsed(text: &str) -> Vec<Object> {
    match parse(text) {
        Ok(objects) => objects,
        Err(error) => panic!("expected the manifest to parse, got: {error}"),
    }
}

#[test]
fn valid_policies_parse() {
    let objects = parsed(&format!("{NETPOL}---\n{SNP}---\n{SCNP}"));
    let kinds: Vec<(Kind, Option<&str>)> = objects.iter().map(|o| (o.kind(), o.namespace())).collect();
    assert_eq!(
        kinds,
        [(Kind::NetworkPolicy, Some("shop")), (Kind::SluiceNetworkPolicy, Some("shop")), (Kind::SluiceClusterwideNetworkPolicy, None)],
        "three kinds, the cluster-wide one without a namespace"
    );
    let Some(Object::SluiceNetworkPolicy(snp)) = objects.get(1) else { panic!("expected a SluiceNetworkPolicy, got {objects:?}") };
    let spec = snp.spec.clone().unwrap_or_default();
    assert_eq!(spec.enforcement_mode, Some(EnforcementMode::Audit), "enforcement mode read");
    let ingress = spec.ingress.unwrap_or_default();
    assert_eq!(ingress[0].from_entities.as_deref().map(<[Entity]>::len), Some(5), "every entity read");
    let ports = ingress[0].to_ports.clone().unwrap_or_default()[0].ports.clone().unwrap_or_default();
    assert_eq!(ports[1].port.as_deref(), Some("8000"), "a bare port number is read as its string");
    assert_eq!(ports[0].protocol, Some(PortProtocolName::Tcp), "protocol read");
    let icmp = ingress[0].icmps.clone().unwrap_or_default()[0].fields.clone().unwrap_or_default();
    assert_eq!(icmp[1].family, Some(IcmpFamily::IPv6), "ICMP family read");

    let defaulted = parsed(&SNP.replace("namespace: shop}", "}"));
    assert_eq!(defaulted[0].namespace(), Some("default"), "namespace defaulted");
    let empty_netpol = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: deny-all}\nspec: {podSelector: {}}\n";
    assert!(parse(empty_netpol).is_ok(), "an empty podSelector (deny all ingress): {:?}", parse(empty_netpol).err());
}

#[test]
fn policies_serialize_as_themselves() {
    let objects = parsed(SNP);
    let json = serde_json::to_value(&objects[0]).unwrap_or_default();
    assert_eq!(json["apiVersion"], "sluice.dev/v1", "apiVersion written");
    assert_eq!(json["kind"], "SluiceNetworkPolicy", "kind written");
    assert_eq!(json["spec"]["ingress"][0]["fromCIDRSet"][0]["cidr"], "10.0.0.0/8", "fields in their manifest spelling");
    let Object::SluiceNetworkPolicy(snp) = &objects[0] else { panic!("expected a SluiceNetworkPolicy") };
    let back: crate::policy::SluiceNetworkPolicy = match serde_json::from_value(json) {
        Ok(back) => back,
        Err(error) => panic!("expected the JSON form to read back: {error}"),
    };
    assert_eq!(&back, snp, "round trip through JSON");
}

#[test]
fn bad_network_policies_name_the_field() {
    let np = |spec: &str| format!("apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: np}}\nspec: {spec}\n");
    let ingress = |rule: &str| np(&format!("{{podSelector: {{}}, ingress: [{rule}]}}"));
    let port = |port: &str| ingress(&format!("{{ports: [{port}]}}"));
    // (case, manifest, fragment the message must contain)
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "policy type value",
            np("{podSelector: {}, policyTypes: [Ingres]}"),
            "spec.policyTypes[0]: \"Ingres\" is not supported: must be one of Ingress, Egress",
        ),
        (
            "duplicate policy type",
            np("{podSelector: {}, policyTypes: [Egress, Egress]}"),
            "spec.policyTypes[1]: duplicate policy type \"Egress\"",
        ),
        (
            "three policy types",
            np("{podSelector: {}, policyTypes: [Ingress, Egress, Ingress]}"),
            "spec.policyTypes: may not specify more than two",
        ),
        (
            "podSelector label value",
            np("{podSelector: {matchLabels: {app: -web}}}"),
            "spec.podSelector.matchLabels[\"app\"]: \"-web\" is invalid",
        ),
        (
            "podSelector label key",
            np("{podSelector: {matchLabels: {'a/b/c': x}}}"),
            "spec.podSelector.matchLabels: key \"a/b/c\" is invalid",
        ),
        (
            "In without values",
            np("{podSelector: {matchExpressions: [{key: app, operator: In}]}}"),
            "spec.podSelector.matchExpressions[0].values: must be specified when `operator` is 'In' or 'NotIn'",
        ),
        (
            "NotIn with empty values",
            np("{podSelector: {matchExpressions: [{key: app, operator: NotIn, values: []}]}}"),
            "spec.podSelector.matchExpressions[0].values: must be specified",
        ),
        (
            "Exists with values",
            np("{podSelector: {matchExpressions: [{key: app, operator: Exists, values: [a]}]}}"),
            "spec.podSelector.matchExpressions[0].values: may not be specified when `operator` is 'Exists' or 'DoesNotExist'",
        ),
        (
            "DoesNotExist with values",
            np("{podSelector: {matchExpressions: [{key: app, operator: DoesNotExist, values: [a]}]}}"),
            "spec.podSelector.matchExpressions[0].values: may not be specified",
        ),
        (
            "unknown operator",
            np("{podSelector: {matchExpressions: [{key: app, operator: Gt, values: ['1']}]}}"),
            "spec.podSelector.matchExpressions[0].operator: \"Gt\" is not a valid label selector operator",
        ),
        (
            "expression key",
            np("{podSelector: {matchExpressions: [{key: -app, operator: Exists}]}}"),
            "spec.podSelector.matchExpressions[0].key: \"-app\" is invalid",
        ),
        (
            "expression value",
            np("{podSelector: {matchExpressions: [{key: app, operator: In, values: [ok, 'no way']}]}}"),
            "spec.podSelector.matchExpressions[0].values[1]: \"no way\" is invalid",
        ),
        ("empty peer", ingress("{from: [{}]}"), "spec.ingress[0].from[0]: must specify a peer"),
        (
            "ipBlock with podSelector",
            ingress("{from: [{podSelector: {}, ipBlock: {cidr: 10.0.0.0/8}}]}"),
            "spec.ingress[0].from[0]: may not specify both ipBlock and another peer",
        ),
        (
            "ipBlock with namespaceSelector",
            np("{podSelector: {}, egress: [{to: [{namespaceSelector: {}, ipBlock: {cidr: 10.0.0.0/8}}]}]}"),
            "spec.egress[0].to[0]: may not specify both ipBlock",
        ),
        (
            "namespaceSelector value",
            ingress("{from: [{namespaceSelector: {matchLabels: {team: 'a b'}}}]}"),
            "spec.ingress[0].from[0].namespaceSelector.matchLabels[\"team\"]: \"a b\" is invalid",
        ),
        (
            "ipBlock cidr",
            ingress("{from: [{ipBlock: {cidr: 10.0.0.0}}]}"),
            "spec.ingress[0].from[0].ipBlock.cidr: \"10.0.0.0\" is invalid: must be a valid CIDR",
        ),
        (
            "ipBlock cidr missing",
            ingress("{from: [{ipBlock: {cidr: ''}}]}"),
            "spec.ingress[0].from[0].ipBlock.cidr: required value is missing",
        ),
        (
            "except syntax",
            ingress("{from: [{ipBlock: {cidr: 10.0.0.0/8, except: [10.1.0.0/33]}}]}"),
            "spec.ingress[0].from[0].ipBlock.except[0]: \"10.1.0.0/33\" is invalid: must be a valid CIDR",
        ),
        (
            "except outside",
            ingress("{from: [{ipBlock: {cidr: 10.0.0.0/8, except: [10.1.0.0/16, 11.0.0.0/16]}}]}"),
            "spec.ingress[0].from[0].ipBlock.except[1]: \"11.0.0.0/16\" is invalid: must be a strict subset of cidr",
        ),
        (
            "except equal",
            ingress("{from: [{ipBlock: {cidr: 10.0.0.0/8, except: [10.0.0.0/8]}}]}"),
            "spec.ingress[0].from[0].ipBlock.except[0]: \"10.0.0.0/8\" is invalid: must be a strict subset",
        ),
        (
            "except of the other family",
            ingress("{from: [{ipBlock: {cidr: 10.0.0.0/8, except: ['fd00::/16']}}]}"),
            "spec.ingress[0].from[0].ipBlock.except[0]: \"fd00::/16\" is invalid: must be of the same IP family",
        ),
        (
            "protocol",
            port("{port: 80, protocol: ICMP}"),
            "spec.ingress[0].ports[0].protocol: \"ICMP\" is not supported: must be one of TCP, UDP, SCTP",
        ),
        ("port zero", port("{port: 0}"), "spec.ingress[0].ports[0].port: 0 is invalid: must be between 1 and 65535"),
        ("port too big", port("{port: 65536}"), "spec.ingress[0].ports[0].port: 65536 is invalid"),
        (
            "port name too long",
            port("{port: a-very-long-port-name}"),
            "spec.ingress[0].ports[0].port: \"a-very-long-port-name\" is invalid: must be no more than 15",
        ),
        (
            "port name without a letter",
            port("{port: '8080'}"),
            "spec.ingress[0].ports[0].port: \"8080\" is invalid: must contain at least one letter",
        ),
        (
            "port name uppercase",
            port("{port: HTTP}"),
            "spec.ingress[0].ports[0].port: \"HTTP\" is invalid: must contain only alpha-numeric",
        ),
        (
            "port name double hyphen",
            port("{port: a--b}"),
            "spec.ingress[0].ports[0].port: \"a--b\" is invalid: must not contain consecutive hyphens",
        ),
        (
            "port name leading hyphen",
            port("{port: -http}"),
            "spec.ingress[0].ports[0].port: \"-http\" is invalid: must not begin or end with a hyphen",
        ),
        (
            "endPort with a named port",
            port("{port: http, endPort: 90}"),
            "spec.ingress[0].ports[0].endPort: may not be specified when `port` is non-numeric",
        ),
        (
            "endPort without port",
            port("{endPort: 90}"),
            "spec.ingress[0].ports[0].endPort: may not be specified when `port` is not specified",
        ),
        (
            "endPort below port",
            port("{port: 90, endPort: 80}"),
            "spec.ingress[0].ports[0].endPort: 80 is invalid: must be greater than or equal to `port` (90)",
        ),
        ("endPort too big", port("{port: 90, endPort: 70000}"), "spec.ingress[0].ports[0].endPort: 70000 is invalid"),
        (
            "egress port",
            np("{podSelector: {}, egress: [{ports: [{port: 53, protocol: udp}]}]}"),
            "spec.egress[0].ports[0].protocol: \"udp\" is not supported",
        ),
        ("unknown field", np("{podSelector: {}, ingress: [{form: []}]}"), "spec.ingress[0].form: unknown field"),
        (
            "wrong apiVersion",
            NETPOL.replace("networking.k8s.io/v1", "extensions/v1beta1"),
            "NetworkPolicy must have apiVersion \"networking.k8s.io/v1\"",
        ),
    ];
    expect_errors(cases);
}

#[test]
fn bad_sluice_policies_name_the_field() {
    let snp = |spec: &str| format!("apiVersion: sluice.dev/v1\nkind: SluiceNetworkPolicy\nmetadata: {{name: p}}\nspec: {spec}\n");
    let scnp =
        |spec: &str| format!("apiVersion: sluice.dev/v1\nkind: SluiceClusterwideNetworkPolicy\nmetadata: {{name: p}}\nspec: {spec}\n");
    let ingress = |rule: &str| snp(&format!("{{endpointSelector: {{}}, ingress: [{rule}]}}"));
    let egress_deny = |rule: &str| scnp(&format!("{{endpointSelector: {{}}, egressDeny: [{{}}, {rule}]}}"));
    let port = |port: &str| ingress(&format!("{{toPorts: [{{ports: [{port}]}}]}}"));
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "no spec",
            "apiVersion: sluice.dev/v1\nkind: SluiceNetworkPolicy\nmetadata: {name: p}\n".into(),
            "spec: required value is missing",
        ),
        ("no endpointSelector", snp("{ingress: [{}]}"), "spec.endpointSelector: required value is missing"),
        ("cluster-wide without endpointSelector", scnp("{}"), "spec.endpointSelector: required value is missing"),
        ("name", SCNP.replace("no-world", "No_World"), "metadata.name: \"No_World\" is invalid"),
        (
            "selector key",
            snp("{endpointSelector: {matchLabels: {'k8s:': web}}}"),
            "spec.endpointSelector.matchLabels: key \"k8s:\" is invalid",
        ),
        (
            "selector key with another source",
            snp("{endpointSelector: {matchLabels: {'any:app': web}}}"),
            "spec.endpointSelector.matchLabels: key \"any:app\" is invalid",
        ),
        (
            "selector value",
            snp("{endpointSelector: {matchLabels: {app: 'w b'}}}"),
            "spec.endpointSelector.matchLabels[\"app\"]: \"w b\" is invalid",
        ),
        (
            "selector In without values",
            snp("{endpointSelector: {matchExpressions: [{key: 'k8s:app', operator: In}]}}"),
            "spec.endpointSelector.matchExpressions[0].values: must be specified",
        ),
        (
            "selector Exists with values",
            ingress("{fromEndpoints: [{}, {matchExpressions: [{key: app, operator: Exists, values: [x]}]}]}"),
            "spec.ingress[0].fromEndpoints[1].matchExpressions[0].values: may not be specified",
        ),
        ("enforcement mode", snp("{endpointSelector: {}, enforcementMode: block}"), "spec.enforcementMode: unknown variant `block`"),
        (
            "enableDefaultDeny field",
            snp("{endpointSelector: {}, enableDefaultDeny: {ingres: true}}"),
            "spec.enableDefaultDeny.ingres: unknown field `ingres`",
        ),
        ("unknown spec field", snp("{endpointSelector: {}, ingres: []}"), "spec.ingres: unknown field `ingres`"),
        ("unknown rule field", ingress("{toEndpoints: [{}]}"), "spec.ingress[0].toEndpoints: unknown field `toEndpoints`"),
        (
            "unknown field in a selector",
            ingress("{fromEndpoints: [{matchLabel: {app: a}}]}"),
            "spec.ingress[0].fromEndpoints[0].matchLabel: unknown field",
        ),
        ("unknown entity", ingress("{fromEntities: [host, moon]}"), "spec.ingress[0].fromEntities[1]: unknown variant `moon`"),
        (
            "bad CIDR",
            ingress("{fromCIDR: [10.0.0.0/8, 10.0.0.0/40]}"),
            "spec.ingress[0].fromCIDR[1]: \"10.0.0.0/40\" is invalid: must be a valid CIDR",
        ),
        ("bad egress CIDR", egress_deny("{toCIDR: [nope]}"), "spec.egressDeny[1].toCIDR[0]: \"nope\" is invalid"),
        ("CIDR set cidr", ingress("{fromCIDRSet: [{cidr: 10.0.0.1}]}"), "spec.ingress[0].fromCIDRSet[0].cidr: \"10.0.0.1\" is invalid"),
        (
            "CIDR set missing cidr",
            ingress("{fromCIDRSet: [{except: [10.0.0.0/16]}]}"),
            "spec.ingress[0].fromCIDRSet[0]: missing field `cidr`",
        ),
        (
            "except not inside",
            egress_deny("{toCIDRSet: [{cidr: 10.0.0.0/16, except: [10.0.0.0/8]}]}"),
            "spec.egressDeny[1].toCIDRSet[0].except[0]: \"10.0.0.0/8\" is invalid: must be a strict subset of cidr",
        ),
        (
            "except other family",
            ingress("{fromCIDRSet: [{cidr: 10.0.0.0/8, except: ['::/0']}]}"),
            "spec.ingress[0].fromCIDRSet[0].except[0]: \"::/0\" is invalid: must be of the same IP family",
        ),
        (
            "port too big",
            port("{port: '65536'}"),
            "spec.ingress[0].toPorts[0].ports[0].port: 65536 is invalid: must be between 0 and 65535",
        ),
        ("port negative", port("{port: -1}"), "spec.ingress[0].toPorts[0].ports[0].port: -1 is invalid: must be between 0 and 65535"),
        (
            "port not a number",
            port("{port: 80a}"),
            "spec.ingress[0].toPorts[0].ports[0].port: \"80a\" is invalid: must be a port number or a port name",
        ),
        ("port name", port("{port: Web_Port}"), "spec.ingress[0].toPorts[0].ports[0].port: \"Web_Port\" is invalid"),
        (
            "named port with endPort",
            port("{port: http, endPort: 90}"),
            "spec.ingress[0].toPorts[0].ports[0].endPort: may not be specified with a named port (\"http\")",
        ),
        (
            "endPort without port",
            port("{endPort: 90}"),
            "spec.ingress[0].toPorts[0].ports[0].endPort: may not be specified without a port number",
        ),
        (
            "endPort below port",
            port("{port: '90', endPort: 80}"),
            "spec.ingress[0].toPorts[0].ports[0].endPort: 80 is invalid: must be greater than or equal to port (90)",
        ),
        ("endPort too big", port("{port: '90', endPort: 65536}"), "spec.ingress[0].toPorts[0].ports[0].endPort: 65536 is invalid"),
        ("protocol", port("{port: '80', protocol: ICMP}"), "spec.ingress[0].toPorts[0].ports[0].protocol: unknown variant `ICMP`"),
        ("toPorts without ports", ingress("{toPorts: [{}]}"), "spec.ingress[0].toPorts[0].ports: required value is missing"),
        ("icmp without fields", ingress("{icmps: [{fields: []}]}"), "spec.ingress[0].icmps[0].fields: required value is missing"),
        (
            "icmp type missing",
            ingress("{icmps: [{fields: [{family: IPv4}]}]}"),
            "spec.ingress[0].icmps[0].fields[0].type: required value is missing",
        ),
        (
            "icmp type too big",
            egress_deny("{icmps: [{fields: [{type: 8}, {type: 256}]}]}"),
            "spec.egressDeny[1].icmps[0].fields[1].type: 256 is invalid: must be between 0 and 255",
        ),
        (
            "icmp family",
            ingress("{icmps: [{fields: [{type: 8, family: IPv5}]}]}"),
            "spec.ingress[0].icmps[0].fields[0].family: unknown variant `IPv5`",
        ),
        (
            "http rules in a deny rule",
            egress_deny("{toPorts: [{ports: [{port: '80', protocol: TCP}], rules: {http: [{}]}}]}"),
            "spec.egressDeny[1].toPorts[0].rules: layer-7 rules are allowed only in allow rules",
        ),
        (
            "http rules in an audit policy",
            snp("{endpointSelector: {}, enforcementMode: audit, ingress: [{toPorts: [{ports: [{port: '80', protocol: TCP}], rules: {http: [{}]}}]}]}"),
            "spec.ingress[0].toPorts[0].rules: layer-7 rules are not supported with enforcementMode: audit",
        ),
        (
            "http rules on protocol ANY",
            ingress("{toPorts: [{ports: [{port: '80'}], rules: {http: [{}]}}]}"),
            "spec.ingress[0].toPorts[0].ports[0].protocol: must be TCP on a port with layer-7 rules",
        ),
        (
            "http rules on every port",
            ingress("{toPorts: [{ports: [{port: '0', protocol: TCP}], rules: {http: [{}]}}]}"),
            "spec.ingress[0].toPorts[0].ports[0].port: must be a port number from 1 to 65535",
        ),
        (
            "http rules on a named port",
            ingress("{toPorts: [{ports: [{port: http, protocol: TCP}], rules: {http: [{}]}}]}"),
            "spec.ingress[0].toPorts[0].ports[0].port: must be a port number from 1 to 65535",
        ),
        (
            "http rules on a range",
            ingress("{toPorts: [{ports: [{port: '80', endPort: 90, protocol: TCP}], rules: {http: [{}]}}]}"),
            "spec.ingress[0].toPorts[0].ports[0].endPort: may not be specified on a port with layer-7 rules",
        ),
        (
            "empty rules",
            ingress("{toPorts: [{ports: [{port: '80', protocol: TCP}], rules: {}}]}"),
            "spec.ingress[0].toPorts[0].rules.http: required value is missing",
        ),
        (
            "bad path expression",
            ingress("{toPorts: [{ports: [{port: '80', protocol: TCP}], rules: {http: [{method: GET}, {path: '/a/(b'}]}}]}"),
            "spec.ingress[0].toPorts[0].rules.http[1].path: \"/a/(b\" is invalid: must be a valid regular expression: error: unclosed group",
        ),
        (
            "bad header",
            ingress("{toPorts: [{ports: [{port: '80', protocol: TCP}], rules: {http: [{headers: ['X-Ok', 'bad name: 1']}]}}]}"),
            "spec.ingress[0].toPorts[0].rules.http[0].headers[1]: \"bad name: 1\" is invalid: must be a header name",
        ),
        (
            "unknown http field",
            ingress("{toPorts: [{ports: [{port: '80', protocol: TCP}], rules: {http: [{verb: GET}]}}]}"),
            "unknown field `verb`",
        ),
        (
            "wrong apiVersion",
            SCNP.replace("sluice.dev/v1", "cilium.io/v2"),
            "SluiceClusterwideNetworkPolicy must have apiVersion \"sluice.dev/v1\"",
        ),
    ];
    expect_errors(cases);
}

fn expect_errors(cases: Vec<(&str, String, &str)>) {
    for (case, text, fragment) in cases {
        let message = match parse(&text) {
            Ok(objects) => panic!("{case}: expected an error, parsed {} object(s)", objects.len()),
            Err(error) => error.to_string(),
        };
        assert!(message.contains(fragment), "{case}: expected {fragment:?} in {message:?}");
    }
}

#[test]
fn http_rules_are_accepted() {
    let text = SCNP.replace(
        "egressDeny: [{toEntities: [world]}]",
        "egress: [{toPorts: [{ports: [{port: '8080', protocol: TCP}], rules: {http: [{method: 'GET|HEAD', path: '/api/v[12]/.*', host: 'api\\.example\\.test', headers: ['X-Token', 'X-Env: prod']}]}}]}]",
    );
    assert!(parse(&text).is_ok(), "a full HTTP rule: {:?}", parse(&text).err());
}

#[test]
fn toports_and_icmps_in_one_rule_are_allowed() {
    let text = SCNP
        .replace("egressDeny: [{toEntities: [world]}]", "ingress: [{toPorts: [{ports: [{port: '443'}]}], icmps: [{fields: [{type: 0}]}]}]");
    assert!(parse(&text).is_ok(), "ports and ICMP together: {:?}", parse(&text).err());
}

#[test]
fn namespaces_carry_their_name_label() {
    let objects =
        parsed("apiVersion: v1\nkind: Namespace\nmetadata: {name: shop, labels: {team: a, kubernetes.io/metadata.name: other}}\n");
    let labels = objects[0].labels();
    assert_eq!(
        labels.get("kubernetes.io/metadata.name").map(String::as_str),
        Some("shop"),
        "the name label is the namespace's name, whatever was written"
    );
    assert_eq!(labels.get("team").map(String::as_str), Some("a"), "other labels kept");
    let bare = parsed("apiVersion: v1\nkind: Namespace\nmetadata: {name: bare}\n");
    assert_eq!(
        bare[0].labels().get("kubernetes.io/metadata.name").map(String::as_str),
        Some("bare"),
        "a namespace without labels gets the name label"
    );
}
