//! The Sluice agent API: request and response types, and a client that speaks HTTP/1.1 with
//! JSON bodies over the agent's unix socket.
//!
//! The agent, the CNI plugin and the CLI all use this crate, so there is one definition of every
//! message. Routes are listed in [`paths`].
//!
//! ```no_run
//! # async fn demo() -> Result<(), sluice_api::ClientError> {
//! let client = sluice_api::Client::new("/run/sluice/agent.sock");
//! let status: sluice_api::Status = client.get(sluice_api::paths::STATUS).await?;
//! println!("host routing: {}", status.host_routing.mode);
//! # Ok(()) }
//! ```

mod client;
pub mod firewall;
mod flows;
mod policy;
mod types;

pub use client::{Client, ClientError};
pub use firewall::{FirewallReport, PreflightResponse};
pub use flows::{Flow, FlowFilter, FlowMessage, FlowPeer, FlowsResponse, HttpFlow, LostEvents};
pub use policy::{
    EndpointPolicyResponse, PolicyDirection, PolicyEntry, PolicyEntryKey, PolicyMatchedEntry, PolicyMode, PolicyRef, PolicyRuleRef,
    PolicyTrace, PolicyTraceIpBlock, PolicyTracePeer, PolicyTraceResponse, PolicyTraceSide, PolicyVerdict,
};
pub use types::*;

/// The first byte of a connection that hands the agent a descriptor (SCM_RIGHTS attached to
/// this byte) before its HTTP request, as the CNI plugin does with a pod's network namespace.
/// No HTTP request starts with a NUL byte, so the agent tells the two apart by peeking.
pub const FD_PREAMBLE: u8 = 0;

/// The HTTP paths the agent serves.
pub mod paths {
    /// `GET` → [`crate::Status`].
    pub const STATUS: &str = "/v1/status";
    /// The status without map pressure: cheap enough to poll.
    pub const STATUS_BRIEF: &str = "/v1/status?maps=false";
    /// `GET` → `Vec<`[`crate::Endpoint`]`>`.
    pub const ENDPOINTS: &str = "/v1/endpoints";
    /// `POST` [`crate::CniRequest`] → [`crate::CniAddResult`].
    pub const CNI_ADD: &str = "/v1/cni/add";
    /// `POST` [`crate::CniRequest`] → `{}`; succeeds when the attachment is already gone.
    pub const CNI_DEL: &str = "/v1/cni/del";
    /// `POST` [`crate::CniRequest`] → `{}` when the attachment is as the agent programmed it.
    pub const CNI_CHECK: &str = "/v1/cni/check";
    /// `POST` [`crate::CniGcRequest`] → [`crate::CniGcResult`].
    pub const CNI_GC: &str = "/v1/cni/gc";
    /// `GET` → `{}` when the agent can add pods.
    pub const CNI_STATUS: &str = "/v1/cni/status";
    /// `GET` with a [`crate::FlowFilter`] query → [`crate::FlowsResponse`] (recent flows).
    pub const FLOWS: &str = "/v1/flows";
    /// `GET` with a [`crate::FlowFilter`] query → newline-delimited [`crate::FlowMessage`]s as
    /// flows happen, until the client goes away.
    pub const FLOWS_FOLLOW: &str = "/v1/flows/follow";
    /// `GET` → the node's metrics in Prometheus text format.
    pub const METRICS: &str = "/v1/metrics";
    /// `GET` → the node's events (Kubernetes Event objects), oldest first.
    pub const EVENTS: &str = "/v1/events";
    /// `GET` → newline-delimited Kubernetes Events as they are recorded.
    pub const EVENTS_FOLLOW: &str = "/v1/events/follow";
    /// `GET` → [`crate::PreflightResponse`]: the host firewall audit of the agent's namespace,
    /// now.
    pub const PREFLIGHT: &str = "/v1/preflight";
    /// `GET`: the service frontends as programmed in the datapath, with their backends.
    pub const SERVICES: &str = "/v1/services";
    /// `GET ?src=IP&dst=IP&proto=N&port=N` → [`crate::PolicyTraceResponse`]: this node's
    /// explanation of a connection's policy verdict (the sides that are pods on this node).
    pub const POLICY_TRACE: &str = "/v1/policy/trace";
    /// `GET ?pod=NAMESPACE/NAME` → [`crate::EndpointPolicyResponse`]: the compiled policy entries
    /// of a pod on this node.
    pub const POLICY_ENDPOINT: &str = "/v1/policy/endpoint";
}
