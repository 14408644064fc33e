//! Pontoon: multi-raft replication over one QUIC endpoint per node.
//!
//! A database embeds Pontoon to replicate its data with many small raft groups at once. Each
//! node holds one QUIC endpoint secured by mutual TLS; every group speaks on its own stream;
//! keys hash to vShards, vShards map to groups; one coordinator per node drives all its groups
//! and makes each cycle's work durable with one fsync.
//!
//! This facade re-exports the crates whose types a database author names:
//! [`routing`] (ids, key hashing, the routing table), [`certs`] (cluster CA and node
//! certificates), [`storage`] (the log store), [`transport`] (QUIC and the in-memory network)
//! and [`coordinator`] (the [`Node`] API and the [`StateMachine`] trait). [`kv`] is a small
//! replicated key-value state machine to copy from; [`service`] serves it to clients over
//! the node's QUIC endpoint, and [`cluster`] reshapes a running cluster through that service.
//!
//! Start with `examples/kv.rs`, or run `cargo run --release -- demo`.
#![warn(missing_docs)]

mod client;
pub mod cluster;
pub mod kv;
pub mod service;

pub use certs;
pub use coordinator;
pub use coordinator::{
    Node, NodeConfig, RaftConfig, RequestError, StateMachine, StateMachineError,
};
pub use routing;
pub use routing::{GroupId, NodeId, RoutingTable, VShardId};
pub use rustls;
pub use storage;
pub use transport;
