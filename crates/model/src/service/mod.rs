//! Kubernetes Services in the model: the address families they use, the defaults the API
//! server fills in, ClusterIP and NodePort allocation ([`alloc`]) and the endpoint slices the
//! endpoint-slice controller would derive from pods ([`derive`]). Pure code: no I/O.

pub mod alloc;
pub mod defaults;
pub mod derive;
mod family;

pub use alloc::{AllocError, Allocator, RangeError, ServiceRanges};
pub use defaults::apply_defaults;
pub use derive::{derive_endpoint_slices, MANAGED_BY_LABEL, SLUICE_CONTROLLER};
pub use family::IpFamily;

/// Label that links an EndpointSlice to its Service (same namespace): consumers find a
/// service's backends by it, so a slice without it belongs to no service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// `spec.clusterIP` of a headless service: no virtual IP, no frontends.
pub const HEADLESS: &str = "None";

/// What `spec.sessionAffinityConfig.clientIP.timeoutSeconds` defaults to (3 hours), as in
/// Kubernetes.
pub const DEFAULT_AFFINITY_TIMEOUT_SECONDS: i32 = 10_800;

/// Longest ClientIP affinity Kubernetes accepts: one day.
pub const MAX_AFFINITY_TIMEOUT_SECONDS: i32 = 86_400;

/// The `namespace/name` key services and slices are stored under.
pub fn object_key(namespace: &str, name: &str) -> String {
    format!("{namespace}/{name}")
}

/// `spec.type`, `ClusterIP` when unset.
pub fn service_type(service: &k8s_openapi::api::core::v1::Service) -> &str {
    service.spec.as_ref().and_then(|s| s.type_.as_deref()).unwrap_or("ClusterIP")
}

/// True for services reachable from outside the cluster, for which `externalTrafficPolicy`
/// means something: NodePort, LoadBalancer, and ClusterIP with external IPs (as Kubernetes'
/// `ExternallyAccessible`).
pub fn is_externally_accessible(service: &k8s_openapi::api::core::v1::Service) -> bool {
    let external_ips = service.spec.as_ref().and_then(|s| s.external_ips.as_ref()).is_some_and(|ips| !ips.is_empty());
    match service_type(service) {
        "NodePort" | "LoadBalancer" => true,
        "ClusterIP" => external_ips,
        _ => false,
    }
}

/// True when the service's ports get node ports: NodePort, and LoadBalancer unless
/// `allocateLoadBalancerNodePorts: false`.
pub fn needs_node_ports(service: &k8s_openapi::api::core::v1::Service) -> bool {
    match service_type(service) {
        "NodePort" => true,
        "LoadBalancer" => service.spec.as_ref().and_then(|s| s.allocate_load_balancer_node_ports) != Some(false),
        _ => false,
    }
}
