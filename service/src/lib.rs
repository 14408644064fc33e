//! The example replicated key-value service on Pontoon: what `pontoon node` serves, `pontoon
//! kv` talks to, and the demo and fault tests run; a model for a database's own service.
//!
//! How data flows:
//! 1. A client ([`KvClient`]) sends a [`KvRequest`] (put, get, delete, compare-and-set: one
//!    `oneof` body each) inside the client protocol's envelope (`admin::wire`) to any node,
//!    over the node's own QUIC endpoint under the client ALPN, authenticated by its client
//!    certificate.
//! 2. On the node, [`KvService`] reads the caller from the certificate, answers key-value
//!    requests by proposing a [`KvCommand`] to the key's group (reads go through a read
//!    barrier), and hands admin requests to `admin::AdminService`, which checks the caller's
//!    role per operation and audits every change.
//! 3. The group's replicas apply the command to their [`KvStateMachine`] once it is committed;
//!    the leader's answer travels back as a [`KvReply`], or as a typed failure (`NotLeader`
//!    names the leader's address, and `admin::NodeClient::call` follows it).
#![warn(missing_docs)]
#![warn(unreachable_pub)]

pub mod client;
pub mod kv;
pub mod proto;
pub mod server;
pub mod session_budget;

pub use client::KvClient;
pub use kv::{KvCommand, KvResponse, KvStateMachine};
pub use proto::{KvReply, KvRequest};
pub use server::KvService;
pub use session_budget::SessionBudget;
