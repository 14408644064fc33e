//! Pontoon cluster administration: the admin protocol that reshapes a live cluster, the node
//! side that answers it, and the client side that drives it.
//!
//! How a request flows:
//! 1. A tool (`pontoon cluster`, a test, an operator's script) builds a typed
//!    [`AdminRequest`] (one `oneof` body per operation: routing table, routing change, group
//!    and node status, membership change, leader transfer, vShard release/acquire/purge,
//!    export) and sends it in the client protocol's envelope ([`wire::ClientRequest`]) with a
//!    [`NodeClient`], usually through [`RemoteControl`], which runs the coordinator's
//!    reshaping plans against remote nodes.
//! 2. On the node, the service that hosts the client protocol (the example KV service, or a
//!    database's own) reads the [`Caller`] from the connection's verified certificate and
//!    hands the request to [`AdminService::answer`].
//! 3. [`AdminService`] checks the caller's role ([`certs::ClientRole`]): kv clients may read
//!    the cluster's shape, only admin clients may change it, node certificates may do nothing
//!    here. It runs the operation on the [`coordinator::Node`] and writes one audit event
//!    (target [`AUDIT_TARGET`]) per operation that changes the cluster, allowed or refused.
//! 4. A failure comes back as a typed [`wire::Failure`] that mirrors the coordinator's error
//!    (or says `Forbidden` / `BadRequest`), so the caller knows whether the operation may have
//!    taken effect ([`RemoteError::may_have_taken_effect`]). [`NodeClient::call`] is the one
//!    place that follows `NotLeader` redirects and resends what certainly did not take effect.
#![warn(missing_docs)]
#![warn(unreachable_pub)]

pub mod caller;
pub mod client;
pub mod handler;
pub mod proto;
pub mod remote;
pub mod wire;

pub use caller::Caller;
pub use client::{
    CONNECT_TIMEOUT, ClientError, IDLE_TIMEOUT, KEEP_ALIVE, NodeClient, REQUEST_TIMEOUT, Retries,
};
pub use handler::{AUDIT_TARGET, AdminService};
pub use proto::{AdminReply, AdminRequest};
pub use remote::{ClusterView, GroupView, MemberView, NoContact, RemoteControl};
pub use wire::{ClientReply, ClientRequest, Failure, MAX_MESSAGE_BYTES, RemoteError};
