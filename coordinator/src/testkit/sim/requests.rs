//! The client side of the simulation: how a test proposes, reads, changes membership and
//! collects outcomes. Each request is handed to a node's core under a fresh token through the
//! same pending-requests map a [`crate::Node`] uses; its outcome comes back as a [`Completion`].
//!
//! Apart from the stepping in `cycle.rs`: nothing here moves time or messages.

use raft::eraftpb::ConfChangeV2;
use routing::{GroupId, NodeId, VShardId};

use super::{Completion, SimCluster};
use crate::node::pending::Request;
use crate::replicated::Frame;
use crate::{RequestError, StateMachine, Token};

impl<S: StateMachine> SimCluster<S> {
    /// Hands `request` to `node`'s core under a fresh token.
    fn submit(
        &mut self,
        node: NodeId,
        group: GroupId,
        request: Request,
    ) -> Result<Token, RequestError> {
        let token = self.next_token;
        self.next_token += 1;
        let Some(Some(n)) = self.nodes.get_mut(&node) else {
            return Err(RequestError::ShuttingDown);
        };
        n.pending
            .submit(&mut n.core, token, group, request, ())
            .map(|()| token)
            .map_err(|((), error)| error)
    }

    /// Proposes `data` to `group` on `node`; the outcome arrives as a [`Completion`].
    ///
    /// # Errors
    /// What [`MultiRaft::propose`] says at once (not leader, unknown group), or
    /// [`RequestError::ShuttingDown`] when the node is down.
    pub fn propose(
        &mut self,
        node: NodeId,
        group: GroupId,
        data: Vec<u8>,
    ) -> Result<Token, RequestError> {
        self.propose_frame(node, group, Frame::encode_user(None, data, None))
    }

    /// [`SimCluster::propose`] for command `seq` of client session `client`, which has every
    /// answer up to `acked`: however often it is proposed, it applies once (see
    /// [`crate::ClientSession`]). The log carries the virtual time as the proposer's clock.
    ///
    /// # Errors
    /// As [`SimCluster::propose`].
    pub fn propose_in_session(
        &mut self,
        node: NodeId,
        group: GroupId,
        data: Vec<u8>,
        (client, seq, acked): (u64, u64, u64),
    ) -> Result<Token, RequestError> {
        let tag = crate::replicated::SessionTag {
            client,
            seq,
            acked,
            time_ms: self.now,
        };
        self.propose_frame(node, group, Frame::encode_user(None, data, Some(tag)))
    }

    /// Proposes `data` for `key` on `node`, routed by the table `node` has applied: the
    /// command carries the key's vShard, so a group the vShard left refuses it with
    /// [`RequestError::StaleRouting`]. Returns the token and the group it went to.
    ///
    /// # Errors
    /// As [`SimCluster::propose`].
    pub fn propose_key(
        &mut self,
        node: NodeId,
        key: &[u8],
        data: Vec<u8>,
    ) -> Result<(Token, GroupId), RequestError> {
        let (group, vshard) = self.route(node, key)?;
        self.propose_frame(node, group, Frame::encode_user(Some(vshard), data, None))
            .map(|t| (t, group))
    }

    /// A linearizable read of `key` on `node`, routed by its table: completes once the node
    /// may serve it from its state machine, or with [`RequestError::StaleRouting`] when its
    /// replica no longer serves the key's vShard at that point.
    ///
    /// # Errors
    /// As [`SimCluster::propose`].
    pub fn read_key(&mut self, node: NodeId, key: &[u8]) -> Result<(Token, GroupId), RequestError> {
        let (group, vshard) = self.route(node, key)?;
        let read = Request::Read {
            vshard: Some(vshard),
        };
        self.submit(node, group, read).map(|t| (t, group))
    }

    fn route(&self, node: NodeId, key: &[u8]) -> Result<(GroupId, VShardId), RequestError> {
        let table = self.table(node).ok_or(RequestError::ShuttingDown)?;
        let vshard = table.vshard_of_key(key);
        let group = table
            .group_of_vshard(vshard)
            .map_err(|_| RequestError::ShuttingDown)?;
        Ok((group, vshard))
    }

    pub(crate) fn propose_frame(
        &mut self,
        node: NodeId,
        group: GroupId,
        framed: Vec<u8>,
    ) -> Result<Token, RequestError> {
        self.submit(node, group, Request::Propose(framed))
    }

    /// Keeps `token`'s outcome out of [`SimCluster::take_completions`]: it is for
    /// [`SimCluster::take_completion`] (a reshaping plan's own request).
    pub(crate) fn reserve(&mut self, token: Token) {
        self.reserved.insert(token);
    }

    /// The outcome of a reserved request, once there is one.
    pub(crate) fn take_completion(&mut self, token: Token) -> Option<Completion> {
        let done = self.reserved_done.remove(&token);
        if done.is_some() {
            self.reserved.remove(&token);
        }
        done
    }

    /// Whether `token` still waits for an outcome.
    pub(crate) fn is_pending(&self, token: Token) -> bool {
        self.reserved_done.contains_key(&token) || self.running().any(|n| n.pending.contains(token))
    }

    /// Gives up on a reserved request.
    pub(crate) fn forget(&mut self, token: Token) {
        self.reserved.remove(&token);
        self.reserved_done.remove(&token);
        for node in self.nodes.values_mut().flatten() {
            node.pending.forget(token);
        }
    }

    /// Exports `vshard` from `node`'s replica of `group` after a read barrier; the data
    /// arrives as a [`Completion`].
    pub(crate) fn export_vshard(
        &mut self,
        node: NodeId,
        group: GroupId,
        vshard: VShardId,
    ) -> Result<Token, RequestError> {
        self.submit(node, group, Request::Export(vshard))
    }

    /// Starts a linearizable read of `group` on `node`; a [`Completion`] follows once the
    /// node's state machine may serve it.
    ///
    /// # Errors
    /// As [`SimCluster::propose`].
    pub fn read_index(&mut self, node: NodeId, group: GroupId) -> Result<Token, RequestError> {
        self.submit(node, group, Request::Read { vshard: None })
    }

    /// Requests still waiting for an outcome.
    pub fn pending_requests(&self) -> usize {
        self.running().map(|n| n.pending.len()).sum()
    }

    /// Takes the outcomes gathered so far.
    pub fn take_completions(&mut self) -> Vec<Completion> {
        std::mem::take(&mut self.completions)
    }

    /// Proposes a membership change of `group` on `node`; the outcome arrives as a
    /// [`Completion`] (empty response) once the change is applied there.
    ///
    /// # Errors
    /// As [`MultiRaft::propose_conf_change`], or [`RequestError::ShuttingDown`] when the node
    /// is down.
    pub fn propose_conf_change(
        &mut self,
        node: NodeId,
        group: GroupId,
        change: &ConfChangeV2,
    ) -> Result<Token, RequestError> {
        self.submit(node, group, Request::ConfChange(change.clone()))
    }
}
