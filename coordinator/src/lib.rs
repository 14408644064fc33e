//! The coordinator: every raft group of a node, driven as one.
//!
//! [`MultiRaft`] is the sans-IO core (no sockets, clocks or threads). [`Node`] is its tokio
//! driver and the API a database calls. If you know raft-rs's `five_mem_node` example, you
//! know the cycle; here it is batched over every group of the node:
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
//! 5. **Apply.** The cycle's [`Apply`] items go to the [`StateMachine`] in log order; proposals
//!    complete with the state machine's response.
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

mod conf_change;
mod config;
mod error;
mod lock;
mod logging;
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
pub use error::{CoordinatorError, RequestError};
pub use multiraft::{
    Apply, CoordinatorStats, Cycle, CycleId, CycleOutput, Event, GroupStatus, MultiRaft, Role,
    Token,
};
pub use node::{KeyRead, Node, NodeConfig, NodeError, NodeStatus};
pub use state_machine::{StateMachine, StateMachineError, VShardScope};
