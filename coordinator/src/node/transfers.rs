//! Leadership transfers a caller waits on: raft-rs's `transfer_leader` only starts one (and
//! gives up silently after an election timeout), so the driver watches each until leadership
//! is where it was asked to go, or clearly is not.

use std::time::Instant;

use routing::{GroupId, NodeId};

use super::driver::Reply;
use crate::error::RequestError;
use crate::multiraft::MultiRaft;

struct Waiting {
    group: GroupId,
    to: NodeId,
    reply: Reply<()>,
    deadline: Instant,
}

/// The transfers callers wait on.
#[derive(Default)]
pub(super) struct Transfers {
    waiting: Vec<Waiting>,
}

impl Transfers {
    /// Starts moving `group`'s leadership to `to`; `reply` is answered by [`Transfers::check`].
    pub(super) fn start(
        &mut self,
        core: &mut MultiRaft,
        group: GroupId,
        to: NodeId,
        reply: Reply<()>,
        deadline: Instant,
    ) {
        match core.transfer_leader(group, to) {
            Ok(()) => self.waiting.push(Waiting {
                group,
                to,
                reply,
                deadline,
            }),
            Err(error) => {
                let _ = reply.send(Err(error));
            }
        }
        self.check(core, Instant::now());
    }

    /// Answers the transfers that completed (`to` leads) or failed: raft gave up while this
    /// node still leads, another node was elected, the group left, or the deadline passed.
    pub(super) fn check(&mut self, core: &MultiRaft, now: Instant) {
        if self.waiting.is_empty() {
            return;
        }
        let mut still = Vec::with_capacity(self.waiting.len());
        for w in self.waiting.drain(..) {
            let (group, to) = (w.group, w.to);
            let leader = core.leader_of(group);
            let outcome = if !core.has_group(group) {
                Some(Err(RequestError::GroupNotFound { group }))
            } else if leader == Some(to) {
                Some(Ok(()))
            } else if (core.is_leader(group) && core.transferring_to(group).is_none())
                || leader.is_some_and(|l| l != core.id())
                || now >= w.deadline
            {
                Some(Err(RequestError::TransferFailed { group, to }))
            } else {
                None
            };
            match outcome {
                Some(result) => {
                    let _ = w.reply.send(result);
                }
                None => still.push(w),
            }
        }
        self.waiting = still;
    }
}
