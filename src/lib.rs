//! Pontoon: multi-raft replication over one QUIC endpoint per node.
//!
//! This facade re-exports the crates whose types a database author names.

pub use certs;
pub use coordinator;
pub use routing;
pub use storage;
pub use transport;
