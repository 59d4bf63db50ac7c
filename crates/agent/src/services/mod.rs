//! Service load balancing, the control side: from Kubernetes Services and EndpointSlices to
//! the frontends and backend sets this node programs into the datapath (`desired`), and the
//! Maglev tables that spread External traffic over a set the same way on every node (`maglev`),
//! and the programmer that writes them into the datapath without a half-written moment (`program`).

pub mod desired;
pub mod maglev;
pub mod program;
pub mod sync;
