//! [`SimControl`]: the reshaping plans inside the simulation.

use raft::eraftpb::ConfChangeV2;
use routing::{GroupId, META_GROUP, NodeId, RoutingTable, VShardId};

use super::SimCluster;
use crate::replicated::Frame;
use crate::{GroupStatus, RequestError, StateMachine, Token};

/// [`crate::reshape::ClusterControl`] inside the simulation: a reshaping plan's requests go
/// through the same cores and network as the workload's, and every wait is a simulation step,
/// so faults hit the plan between any two of its steps and a seed replays it exactly.
///
/// Poll the plan's future once per [`SimCluster::step`] (with a no-op waker): each `await`
/// of a request yields until the step that completes it.
pub struct SimControl<S: StateMachine> {
    cluster: std::rc::Rc<std::cell::RefCell<SimCluster<S>>>,
    /// How many steps a request may wait for its outcome.
    wait_steps: u64,
}

impl<S: StateMachine> SimControl<S> {
    /// Control over `cluster`; a request gives up after `wait_steps` steps (a timeout).
    pub fn new(cluster: std::rc::Rc<std::cell::RefCell<SimCluster<S>>>, wait_steps: u64) -> Self {
        Self {
            cluster,
            wait_steps,
        }
    }

    /// Waits for the outcome of `issued`. A request its node forgot (the node crashed) fails
    /// with `lost`: outcome unknown for a proposal raft may hold, not applied for a read.
    async fn wait(
        &self,
        group: GroupId,
        issued: Result<Token, RequestError>,
        lost: RequestError,
    ) -> Result<Vec<u8>, RequestError> {
        let token = issued?;
        self.cluster.borrow_mut().reserve(token);
        for _ in 0..self.wait_steps {
            {
                let mut cluster = self.cluster.borrow_mut();
                if let Some(done) = cluster.take_completion(token) {
                    return done.result;
                }
                if !cluster.is_pending(token) {
                    cluster.forget(token);
                    return Err(lost);
                }
            }
            YieldOnce::default().await;
        }
        self.cluster.borrow_mut().forget(token);
        Err(RequestError::Timeout { group })
    }
}

/// A future that is pending once: the harness steps the simulation before polling again.
#[derive(Default)]
struct YieldOnce(bool);

impl std::future::Future for YieldOnce {
    type Output = ();
    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<()> {
        if self.0 {
            return std::task::Poll::Ready(());
        }
        self.0 = true;
        cx.waker().wake_by_ref();
        std::task::Poll::Pending
    }
}

impl<S: StateMachine> crate::reshape::ClusterControl for SimControl<S> {
    async fn table(&self, node: NodeId) -> Option<RoutingTable> {
        self.cluster.borrow().table(node).cloned()
    }

    async fn change_routing(
        &self,
        node: NodeId,
        change: routing::RoutingChange,
        expected_version: u64,
    ) -> Result<RoutingTable, RequestError> {
        let frame = Frame::Routing(change.encode(expected_version)).encode();
        let issued = self
            .cluster
            .borrow_mut()
            .propose_frame(node, META_GROUP, frame);
        let lost = RequestError::StoppedInFlight { group: META_GROUP };
        let bytes = self.wait(META_GROUP, issued, lost).await?;
        RoutingTable::decode(&bytes).map_err(|e| RequestError::Refused {
            group: META_GROUP,
            reason: e.to_string(),
        })
    }

    async fn status(&self, node: NodeId, group: GroupId) -> Option<GroupStatus> {
        self.cluster.borrow().status(node, group)
    }

    async fn change_membership(
        &self,
        node: NodeId,
        group: GroupId,
        change: ConfChangeV2,
    ) -> Result<(), RequestError> {
        let issued = self
            .cluster
            .borrow_mut()
            .propose_conf_change(node, group, &change);
        let lost = RequestError::StoppedInFlight { group };
        self.wait(group, issued, lost).await.map(drop)
    }

    async fn transfer_leader(
        &self,
        node: NodeId,
        group: GroupId,
        to: NodeId,
    ) -> Result<(), RequestError> {
        let mut cluster = self.cluster.borrow_mut();
        match cluster.core_mut(node) {
            Some(core) => core.transfer_leader(group, to),
            None => Err(RequestError::ShuttingDown),
        }
    }

    async fn vshard_step(
        &self,
        node: NodeId,
        group: GroupId,
        vshard: VShardId,
        step: crate::reshape::VShardStep,
    ) -> Result<(), RequestError> {
        let frame = step.frame(vshard).encode();
        let issued = self.cluster.borrow_mut().propose_frame(node, group, frame);
        let lost = RequestError::StoppedInFlight { group };
        self.wait(group, issued, lost).await.map(drop)
    }

    async fn export_vshard(
        &self,
        node: NodeId,
        group: GroupId,
        vshard: VShardId,
    ) -> Result<Vec<u8>, RequestError> {
        let issued = self.cluster.borrow_mut().export_vshard(node, group, vshard);
        self.wait(group, issued, RequestError::ShuttingDown).await
    }

    async fn pause(&self) {
        let steps = self.cluster.borrow().config.tick_every;
        for _ in 0..steps {
            YieldOnce::default().await;
        }
    }

    fn contact_points(&self) -> Vec<NodeId> {
        let cluster = self.cluster.borrow();
        cluster
            .node_ids()
            .into_iter()
            .filter(|n| cluster.is_up(*n))
            .collect()
    }
}
