//! Table-driven tests of Service and EndpointSlice validation: a valid manifest of each, then
//! one bad manifest per rule, each rejected on the right field.

use super::*;

const SERVICE: &str = "apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec:
  type: NodePort
  selector: {app: web}
  ipFamilyPolicy: PreferDualStack
  ipFamilies: [IPv4, IPv6]
  sessionAffinity: ClientIP
  sessionAffinityConfig: {clientIP: {timeoutSeconds: 600}}
  externalTrafficPolicy: Local
  internalTrafficPolicy: Local
  externalIPs: [192.0.2.10]
  ports:
  - {name: http, port: 80, targetPort: http, nodePort: 30080}
  - {name: dns, port: 53, protocol: UDP, targetPort: 5353}
";

const SLICE: &str = "apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-manual
  labels: {kubernetes.io/service-name: web}
addressType: IPv4
endpoints:
- addresses: [198.19.0.5]
  conditions: {ready: true}
  nodeName: node0
ports: [{name: http, port: 8080, protocol: TCP}]
";

fn parse(text: &str) -> Result<Vec<Object>, ManifestError> {
    parse_manifests("svc.yaml", text)
}

#[test]
fn valid_service_and_slice_parse_with_defaults() {
    let objects = match parse(&format!("{SERVICE}---\n{SLICE}")) {
        Ok(objects) => objects,
        Err(error) => panic!("expected the manifest to parse, got: {error}"),
    };
    let Some(Object::Service(service)) = objects.first() else { panic!("expected a service, got {objects:?}") };
    let spec = service.spec.clone().unwrap_or_default();
    let ports = spec.ports.unwrap_or_default();
    assert_eq!(ports[0].protocol.as_deref(), Some("TCP"), "protocol defaulted");
    assert_eq!(ports[1].protocol.as_deref(), Some("UDP"), "protocol kept");
    assert_eq!(objects.get(1).map(Object::kind), Some(Kind::EndpointSlice), "slice parsed");
    assert_eq!(objects.get(1).and_then(Object::namespace), Some("default"), "slice namespace defaulted");

    let headless = "apiVersion: v1\nkind: Service\nmetadata: {name: db}\nspec: {clusterIP: None, selector: {app: db}}\n";
    assert!(parse(headless).is_ok(), "a headless service needs no ports: {:?}", parse(headless).err());
    let load_balancer = "apiVersion: v1\nkind: Service\nmetadata: {name: lb}\nspec: {type: LoadBalancer, ports: [{port: 80}]}\nstatus: {loadBalancer: {ingress: [{ip: 192.0.2.1}]}}\n";
    assert!(parse(load_balancer).is_ok(), "a load balancer with an ingress IP: {:?}", parse(load_balancer).err());
}

#[test]
fn bad_services_and_slices_name_the_field() {
    let svc = |spec: &str| format!("apiVersion: v1\nkind: Service\nmetadata: {{name: web}}\nspec: {spec}\n");
    let one_port = |extra: &str| svc(&format!("{{ports: [{{port: 80}}], {extra}}}"));
    let slice = |body: &str| {
        format!("apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: s, labels: {{kubernetes.io/service-name: web}}}}\n{body}\n")
    };
    // (case, manifest, fragment the message must contain)
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "name must start with a letter",
            SERVICE.replace("name: web,", "name: 1web,"),
            "metadata.name: \"1web\" is invalid: a DNS-1035 label",
        ),
        ("ExternalName", svc("{type: ExternalName, externalName: example.com}"), "spec.type: \"ExternalName\" is not supported by Sluice"),
        (
            "unknown type",
            svc("{type: Magic, ports: [{port: 80}]}"),
            "spec.type: \"Magic\" is not supported: must be one of ClusterIP, NodePort, LoadBalancer",
        ),
        ("no spec", "apiVersion: v1\nkind: Service\nmetadata: {name: web}\n".into(), "spec.ports: required value is missing"),
        ("no ports", svc("{ports: []}"), "spec.ports: required value is missing"),
        ("port zero", svc("{ports: [{port: 0}]}"), "spec.ports[0].port: 0 is invalid: must be between 1 and 65535"),
        ("port too big", svc("{ports: [{port: 70000}]}"), "spec.ports[0].port: 70000 is invalid"),
        (
            "protocol",
            svc("{ports: [{port: 80, protocol: ICMP}]}"),
            "spec.ports[0].protocol: \"ICMP\" is not supported: must be one of TCP, UDP, SCTP",
        ),
        ("unnamed second port", svc("{ports: [{name: a, port: 80}, {port: 81}]}"), "spec.ports[1].name: required value is missing"),
        ("port name syntax", svc("{ports: [{name: Http, port: 80}]}"), "spec.ports[0].name: \"Http\" is invalid"),
        (
            "duplicate port name",
            svc("{ports: [{name: a, port: 80}, {name: a, port: 81}]}"),
            "spec.ports[1].name: duplicate port name \"a\"",
        ),
        ("duplicate port", svc("{ports: [{name: a, port: 80}, {name: b, port: 80}]}"), "spec.ports[1].port: duplicate port 80/TCP"),
        ("targetPort number", svc("{ports: [{port: 80, targetPort: 0}]}"), "spec.ports[0].targetPort: 0 is invalid"),
        (
            "targetPort name",
            svc("{ports: [{port: 80, targetPort: http--x}]}"),
            "spec.ports[0].targetPort: \"http--x\" is invalid: must not contain consecutive hyphens",
        ),
        (
            "targetPort name length",
            svc("{ports: [{port: 80, targetPort: a-very-long-port-name}]}"),
            "spec.ports[0].targetPort: \"a-very-long-port-name\" is invalid: must be no more than 15",
        ),
        (
            "nodePort on ClusterIP",
            svc("{ports: [{port: 80, nodePort: 30080}]}"),
            "spec.ports[0].nodePort: may not be used when spec.type is \"ClusterIP\"",
        ),
        ("nodePort range", svc("{type: NodePort, ports: [{port: 80, nodePort: 70000}]}"), "spec.ports[0].nodePort: 70000 is invalid"),
        ("clusterIP syntax", one_port("clusterIP: 10.0.0.300"), "spec.clusterIP: \"10.0.0.300\" is invalid: must be a valid IP address"),
        (
            "clusterIPs[0] differs",
            one_port("clusterIP: 10.0.0.1, clusterIPs: [10.0.0.2]"),
            "spec.clusterIPs[0]: \"10.0.0.2\" must be the same as spec.clusterIP",
        ),
        (
            "clusterIPs same family",
            one_port("ipFamilyPolicy: RequireDualStack, clusterIPs: [10.0.0.1, 10.0.0.2]"),
            "spec.clusterIPs[1]: the two clusterIPs must be of different families",
        ),
        (
            "two clusterIPs single stack",
            one_port("clusterIPs: [10.0.0.1, 'fd00::1']"),
            "spec.ipFamilyPolicy: must be RequireDualStack or PreferDualStack when two clusterIPs",
        ),
        (
            "headless NodePort",
            svc("{type: NodePort, clusterIP: None, ports: [{port: 80}]}"),
            "spec.clusterIP: may not be \"None\" for NodePort services",
        ),
        ("ipFamilies value", one_port("ipFamilies: [IPv5]"), "spec.ipFamilies[0]: \"IPv5\" is not supported: must be one of IPv4, IPv6"),
        (
            "ipFamilies duplicate",
            one_port("ipFamilyPolicy: PreferDualStack, ipFamilies: [IPv4, IPv4]"),
            "spec.ipFamilies[1]: duplicate family \"IPv4\"",
        ),
        (
            "two families single stack",
            one_port("ipFamilyPolicy: SingleStack, ipFamilies: [IPv4, IPv6]"),
            "spec.ipFamilyPolicy: must be RequireDualStack or PreferDualStack when two ipFamilies",
        ),
        ("ipFamilyPolicy value", one_port("ipFamilyPolicy: DualStack"), "spec.ipFamilyPolicy: \"DualStack\" is not supported"),
        (
            "clusterIPs out of family order",
            one_port("ipFamilyPolicy: PreferDualStack, ipFamilies: [IPv6, IPv4], clusterIPs: [10.0.0.1, 'fd00::1']"),
            "spec.clusterIPs[0]: \"10.0.0.1\" is IPv4 but spec.ipFamilies[0] is IPv6",
        ),
        ("externalIPs", one_port("externalIPs: [example.com]"), "spec.externalIPs[0]: \"example.com\" is invalid"),
        (
            "sessionAffinity",
            one_port("sessionAffinity: Cookie"),
            "spec.sessionAffinity: \"Cookie\" is not supported: must be one of None, ClientIP",
        ),
        (
            "affinity timeout",
            one_port("sessionAffinity: ClientIP, sessionAffinityConfig: {clientIP: {timeoutSeconds: 86401}}"),
            "spec.sessionAffinityConfig.clientIP.timeoutSeconds: 86401 is invalid",
        ),
        (
            "affinity config without ClientIP",
            one_port("sessionAffinityConfig: {clientIP: {timeoutSeconds: 60}}"),
            "spec.sessionAffinityConfig: must not be set when spec.sessionAffinity is None",
        ),
        (
            "externalTrafficPolicy on ClusterIP",
            one_port("externalTrafficPolicy: Local"),
            "spec.externalTrafficPolicy: may only be set for externally-accessible services",
        ),
        (
            "externalTrafficPolicy value",
            svc("{type: NodePort, externalTrafficPolicy: Nearest, ports: [{port: 80}]}"),
            "spec.externalTrafficPolicy: \"Nearest\" is not supported",
        ),
        ("internalTrafficPolicy value", one_port("internalTrafficPolicy: Node"), "spec.internalTrafficPolicy: \"Node\" is not supported"),
        ("selector value", one_port("selector: {app: -web}"), "spec.selector[\"app\"]: \"-web\" is invalid"),
        (
            "load balancer ingress IP",
            format!("{}status: {{loadBalancer: {{ingress: [{{ip: nope}}]}}}}\n", svc("{type: LoadBalancer, ports: [{port: 80}]}")),
            "status.loadBalancer.ingress[0].ip: \"nope\" is invalid",
        ),
        (
            "slice without service-name label",
            SLICE.replace("labels: {kubernetes.io/service-name: web}", "labels: {app: web}"),
            "metadata.labels: \"kubernetes.io/service-name\" is required: it names the Service",
        ),
        ("slice FQDN", slice("addressType: FQDN\nendpoints: []"), "addressType: \"FQDN\" is not supported by Sluice"),
        (
            "slice address type",
            slice("addressType: IPv5\nendpoints: []"),
            "addressType: \"IPv5\" is not supported: must be one of IPv4, IPv6",
        ),
        (
            "slice endpoint without address",
            slice("addressType: IPv4\nendpoints: [{addresses: []}]"),
            "endpoints[0].addresses: required value is missing",
        ),
        (
            "slice address of the other family",
            slice("addressType: IPv4\nendpoints: [{addresses: ['fd00::1']}]"),
            "endpoints[0].addresses[0]: \"fd00::1\" is IPv6, but addressType is IPv4",
        ),
        (
            "slice address syntax",
            slice("addressType: IPv6\nendpoints: [{addresses: [nope]}]"),
            "endpoints[0].addresses[0]: \"nope\" is invalid",
        ),
        ("slice port range", slice("addressType: IPv4\nendpoints: []\nports: [{port: 0}]"), "ports[0].port: 0 is invalid"),
        (
            "slice port missing",
            slice("addressType: IPv4\nendpoints: []\nports: [{name: http}]"),
            "ports[0].port: required value is missing",
        ),
        (
            "slice protocol",
            slice("addressType: IPv4\nendpoints: []\nports: [{port: 80, protocol: ICMP}]"),
            "ports[0].protocol: \"ICMP\" is not supported",
        ),
    ];
    for (case, text, fragment) in cases {
        let message = match parse(&text) {
            Ok(objects) => panic!("{case}: expected an error, parsed {} object(s)", objects.len()),
            Err(error) => error.to_string(),
        };
        assert!(message.contains(fragment), "{case}: expected {fragment:?} in {message:?}");
    }
}
