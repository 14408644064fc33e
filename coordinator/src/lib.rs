//! The coordinator: every raft group of a node, driven as one.
//!
//! A database hands this crate its state machines (a [`StateMachineFactory`] making one
//! [`GroupStateMachine`] per group replica, or one in-memory [`StateMachine`] for all) and
//! calls a [`Node`]. The data flows
//! one way through four layers:
//!
//! - **The handle** ([`Node`]): `propose`, `read_key`, membership and vShard calls. Each one
//!   routes by the node's [`routing::RoutingTable`] to a group and becomes a command for the
//!   driver task, then waits for its answer.
//! - **The driver** (the `node` module): one tokio task that owns the core, the state
//!   machine and the requests in flight. It feeds the core ticks, peer messages (through the
//!   [`transport::Transport`] trait) and requests, persists each cycle's batch on a persister
//!   thread (one fsync for all groups), sends, applies, and answers callers.
//! - **The core** ([`MultiRaft`]): sans-IO, no sockets, clocks or threads. One raft-rs
//!   `RawNode` per group, batched into one `Ready` cycle for all of them, with coalesced
//!   heartbeats and quiescence.
//! - **The system layer** (`replicated`): what every replica applies besides the database's
//!   commands: the meta group's routing table and each group's vShard fences, so vShard
//!   moves are linearizable. [`reshape`] plans cluster changes on top of it.
//!
//! Test and benchmark machinery (a deterministic simulation, a linearizability checker, an
//! in-process cluster) lives in `testkit`, behind the `test-util` feature.
//!
//! Poisoned locks follow one rule everywhere: recover the data and go on (every writer
//! updates its value in one step, so a panicking thread cannot leave it half-written).
//!
//! # The cycle
//!
//! If you know raft-rs's `five_mem_node` example, you know the cycle; here it is batched over
//! every group of the node:
//!
//! 1. **Inputs.** [`MultiRaft::tick`] every tick interval; [`MultiRaft::step`] for what peers
//!    send (coalesced heartbeats are expanded back into per-group messages);
//!    [`MultiRaft::propose`] / [`MultiRaft::read_index`] for requests.
//! 2. **Gather.** [`MultiRaft::poll_cycle`] takes the `Ready` of every group that has one and
//!    returns one [`Cycle`]: one storage batch holding every group's entries and hard state, the
//!    messages that may leave at once (a leader's appends), the committed entries to apply, and
//!    events.
//! 3. **Persist.** The driver commits the batch: one fsync for all groups.
//! 4. **Send.** [`MultiRaft::on_persisted`] releases the messages that had to wait for the fsync
//!    (votes, acks). Heartbeats of all groups bound for one peer leave as one message.
//! 5. **Apply.** The cycle's [`Apply`] items go, batched per group, to each group's
//!    [`GroupStateMachine`] on an apply worker thread (never on the driver's task), in log
//!    order; proposals complete with the state machine's response.
//!
//! ```
//! use pontoon_coordinator::{MultiRaft, RaftConfig};
//! use routing::{GroupId, NodeId};
//! use storage::{LogStore, StoreOptions};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let dir = tempfile::tempdir()?;
//! let store = LogStore::open(dir.path(), StoreOptions::default())?;
//! let mut core = MultiRaft::new(NodeId(1), RaftConfig::default(), store)?;
//! // A single-voter group elects itself.
//! core.create_group(GroupId(7), &[NodeId(1)])?;
//! core.campaign(GroupId(7))?;
//! while core.run_cycle()?.is_some() {}
//! core.propose(GroupId(7), b"set x=1".to_vec(), 42)?;
//! let mut acknowledged = false;
//! while let Some(output) = core.run_cycle()? {
//!     for apply in output.applies {
//!         if let pontoon_coordinator::Apply::Command { proposal: Some(42), data, .. } = apply {
//!             assert_eq!(data, b"set x=1");
//!             acknowledged = true;
//!         }
//!     }
//! }
//! assert!(acknowledged);
//! # Ok(()) }
//! ```
#![warn(missing_docs)]
#![warn(unreachable_pub)]

mod apply;
mod conf_change;
mod config;
mod error;
mod group_state_machine;
mod lock;
mod logging;
pub mod metrics;
mod multiraft;
mod node;
mod outbox;
mod proposal_batch;
mod replicated;
pub mod reshape;
mod state_machine;
#[cfg(feature = "test-util")]
pub mod testkit;

pub use conf_change::ConfChangeDecodeError;
pub use config::{ConfigError, RaftConfig};
pub use error::{BusyReason, CoordinatorError, Outcome, RequestError};
pub use group_state_machine::{
    Committed, GroupStateMachine, Position, StateMachineFactory, StateMachines,
};
pub use multiraft::admission::Refusal;
pub use multiraft::{
    Apply, CoordinatorStats, Cycle, CycleId, CycleOutput, Event, GroupCounts, GroupStatus,
    MultiRaft, Role, SnapshotCheck, Token,
};
pub use node::{
    ClientSession, Drained, KeyRead, LatencyQuantiles, Node, NodeConfig, NodeError, NodeEvent,
    NodeStatus, NodeStopped, SessionCommand, StageLatencies,
};
pub use state_machine::{StateMachine, StateMachineError, VShardScope};
