//! The node's layer-7 proxy (work in progress).
