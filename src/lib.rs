//! Pontoon: multi-raft replication over one QUIC endpoint per node.
//!
//! A database embeds Pontoon to replicate its data with many small raft groups at once. Each
//! node holds one QUIC endpoint secured by mutual TLS; every group speaks on its own stream;
//! keys hash to vShards, vShards map to groups; one coordinator per node drives all its groups
//! and makes each cycle's work durable with one fsync.
//!
//! This crate is the facade a database adds: it re-exports the crates whose types an embedder
//! names, and nothing heavier. Data flows through them in this order:
//! - [`routing`]: ids ([`NodeId`], [`GroupId`], [`VShardId`]), key -> vShard hashing and the
//!   [`RoutingTable`] that maps vShards to groups and groups to nodes;
//! - [`certs`]: the cluster CA, node certificates (which carry the node id) and client
//!   certificates (which carry a name and a role, kv or admin);
//! - [`storage`]: the fjall-backed raft log all groups of a node share;
//! - [`transport`]: the QUIC endpoint (one stream per group) and the in-memory network of
//!   tests;
//! - [`coordinator`]: the [`Node`] an embedder starts, with its [`StateMachine`] trait: a
//!   proposal is routed to its group, replicated, persisted and applied there;
//! - [`admin`]: cluster administration over the client protocol (the typed admin protocol,
//!   its role-checked node handler, `RemoteControl` for reshaping a running cluster).
//!
//! The example KV service (`pontoon-service`) and the `pontoon` command line
//! (`pontoon-cli`) are crates of their own, so a database that adds `pontoon` compiles
//! neither. Start with `examples/kv.rs`, or run `cargo run --release -- demo`.
#![warn(missing_docs)]
#![warn(unreachable_pub)]

pub use admin;
pub use certs;
pub use coordinator;
pub use coordinator::{
    ClientSession, Committed, GroupStateMachine, Node, NodeConfig, NodeEvent, NodeStopped, Outcome,
    Position, RaftConfig, RequestError, SessionCommand, StateMachine, StateMachineError,
    StateMachineFactory, StateMachines,
};
pub use routing;
pub use routing::{GroupId, NodeId, RoutingTable, VShardId};
pub use rustls;
pub use storage;
pub use transport;
