//! The seam between endpoint management and interface plumbing: the agent asks a [`Plumber`]
//! for veths, the real one does it with netlink, tests use an in-memory one.

use std::future::Future;
use std::pin::Pin;

use sluice_datapath::plumb::{PlumbRequest, Plumbed};
use sluice_datapath::DatapathError;

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

pub trait Plumber: Send + Sync {
    /// Creates the pod's interface pair (nothing up yet); returns its ifindex and MACs.
    fn create_pair<'a>(&'a self, req: &'a PlumbRequest) -> BoxFuture<'a, Result<Plumbed, DatapathError>>;
    /// Addresses and routes on both sides, both ends up.
    fn configure_pair<'a>(&'a self, req: &'a PlumbRequest) -> BoxFuture<'a, Result<(), DatapathError>>;
    /// Removes the pair; `false` when it was already gone.
    fn unplumb<'a>(&'a self, host_ifname: &'a str) -> BoxFuture<'a, Result<bool, DatapathError>>;
    /// Checks the pod side (CNI CHECK).
    fn check<'a>(&'a self, req: &'a PlumbRequest) -> BoxFuture<'a, Result<(), String>>;
    /// The ifindex of a host interface, `None` when it no longer exists.
    fn host_ifindex<'a>(&'a self, host_ifname: &'a str) -> BoxFuture<'a, Result<Option<u32>, DatapathError>>;
    /// The names of the veths on the node side: what resync compares with the records to find
    /// interfaces an ADD cut short left behind.
    fn veths(&self) -> BoxFuture<'_, Result<Vec<String>, DatapathError>>;
}

/// Plumbing with rtnetlink in the agent's network namespace. Lookups share one connection,
/// opened on first use, so a resync pass does not open a socket per endpoint.
#[derive(Default)]
pub struct NetlinkPlumber {
    lookups: std::sync::OnceLock<sluice_datapath::netlink::Netlink>,
}

impl Plumber for NetlinkPlumber {
    fn create_pair<'a>(&'a self, req: &'a PlumbRequest) -> BoxFuture<'a, Result<Plumbed, DatapathError>> {
        Box::pin(sluice_datapath::plumb::create_pair(req))
    }

    fn configure_pair<'a>(&'a self, req: &'a PlumbRequest) -> BoxFuture<'a, Result<(), DatapathError>> {
        Box::pin(sluice_datapath::plumb::configure_pair(req))
    }

    fn unplumb<'a>(&'a self, host_ifname: &'a str) -> BoxFuture<'a, Result<bool, DatapathError>> {
        Box::pin(sluice_datapath::plumb::unplumb_endpoint(host_ifname))
    }

    fn check<'a>(&'a self, req: &'a PlumbRequest) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(sluice_datapath::plumb::check_endpoint(req))
    }

    fn host_ifindex<'a>(&'a self, host_ifname: &'a str) -> BoxFuture<'a, Result<Option<u32>, DatapathError>> {
        Box::pin(async move { Ok(self.lookups()?.link_by_name(host_ifname).await?.map(|l| l.index)) })
    }

    fn veths(&self) -> BoxFuture<'_, Result<Vec<String>, DatapathError>> {
        Box::pin(async move {
            let links = self.lookups()?.links().await?;
            Ok(links.into_iter().filter(|l| l.kind.as_deref() == Some("veth")).map(|l| l.name).collect())
        })
    }
}

impl NetlinkPlumber {
    fn lookups(&self) -> Result<sluice_datapath::netlink::Netlink, DatapathError> {
        match self.lookups.get() {
            Some(nl) => Ok(nl.clone()),
            None => {
                let nl = sluice_datapath::netlink::Netlink::current()?;
                Ok(self.lookups.get_or_init(|| nl).clone())
            }
        }
    }
}
