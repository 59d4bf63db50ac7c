//! The defaults the API server fills into a Service, so what Sluice stores and shows is what
//! `kubectl get -o yaml` would show. Allocation (IPs, node ports, families) is separate: it
//! needs the lab's ranges and the other services.

use k8s_openapi::api::core::v1::{ClientIPConfig, Service, SessionAffinityConfig};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::{is_externally_accessible, DEFAULT_AFFINITY_TIMEOUT_SECONDS, HEADLESS};

/// Fills in `type`, each port's `protocol` and `targetPort`, `sessionAffinity` (and its
/// timeout for ClientIP), the traffic policies, and `clusterIP`/`clusterIPs` from each other.
pub fn apply_defaults(service: &mut Service) {
    let external = is_externally_accessible(service);
    let spec = service.spec.get_or_insert_with(Default::default);
    spec.type_.get_or_insert_with(|| "ClusterIP".to_owned());
    for port in spec.ports.iter_mut().flatten() {
        port.protocol.get_or_insert_with(|| "TCP".to_owned());
        port.target_port.get_or_insert(IntOrString::Int(port.port));
        if port.node_port == Some(0) {
            port.node_port = None;
        }
    }
    let affinity = spec.session_affinity.get_or_insert_with(|| "None".to_owned());
    if affinity == "ClientIP" {
        let config = spec.session_affinity_config.get_or_insert_with(SessionAffinityConfig::default);
        let client_ip = config.client_ip.get_or_insert_with(ClientIPConfig::default);
        client_ip.timeout_seconds.get_or_insert(DEFAULT_AFFINITY_TIMEOUT_SECONDS);
    }
    spec.internal_traffic_policy.get_or_insert_with(|| "Cluster".to_owned());
    if external {
        spec.external_traffic_policy.get_or_insert_with(|| "Cluster".to_owned());
    }
    match (&spec.cluster_ip, &spec.cluster_ips) {
        (Some(ip), None) if !ip.is_empty() => spec.cluster_ips = Some(vec![ip.clone()]),
        (None, Some(ips)) if !ips.is_empty() => spec.cluster_ip = Some(ips[0].clone()),
        _ => {}
    }
    if spec.cluster_ip.as_deref() == Some("") {
        spec.cluster_ip = None;
    }
    if spec.cluster_ip.as_deref() == Some(HEADLESS) {
        spec.cluster_ips = Some(vec![HEADLESS.to_owned()]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{ServicePort, ServiceSpec};

    #[test]
    fn defaults_match_the_api_server() {
        let mut service = Service {
            spec: Some(ServiceSpec {
                type_: Some("NodePort".into()),
                session_affinity: Some("ClientIP".into()),
                cluster_ip: Some("198.18.128.9".into()),
                ports: Some(vec![ServicePort { port: 80, ..Default::default() }]),
                ..Default::default()
            }),
            ..Default::default()
        };
        apply_defaults(&mut service);
        let spec = service.spec.unwrap_or_default();
        let port = &spec.ports.unwrap_or_default()[0];
        assert_eq!(port.protocol.as_deref(), Some("TCP"), "protocol defaults to TCP");
        assert_eq!(port.target_port, Some(IntOrString::Int(80)), "targetPort defaults to port");
        let timeout = spec.session_affinity_config.and_then(|c| c.client_ip).and_then(|c| c.timeout_seconds);
        assert_eq!(timeout, Some(10_800), "ClientIP timeout defaults to 3 hours");
        assert_eq!(spec.external_traffic_policy.as_deref(), Some("Cluster"), "NodePort gets externalTrafficPolicy");
        assert_eq!(spec.internal_traffic_policy.as_deref(), Some("Cluster"), "internalTrafficPolicy");
        assert_eq!(spec.cluster_ips, Some(vec!["198.18.128.9".to_owned()]), "clusterIPs from clusterIP");
    }
}
