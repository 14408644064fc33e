//! [`RemoteControl`]: the coordinator's reshaping plans ([`coordinator::reshape::Reshaper`]) run
//! against remote nodes, over the admin protocol. What `pontoon cluster` runs; reshaping needs
//! a client certificate with the admin role.
//!
//! Nodes are found two ways: the contact points an operator names (`--node ADDR`), each of
//! which says who it is when first asked, and the addresses the nodes themselves know (their
//! configuration's, and the routing table's for members added later). Every request to a node
//! is checked against that node's certificate, so an address that now belongs to another node
//! fails instead of acting on the wrong one.

use std::collections::BTreeMap;
use std::net::{SocketAddr, ToSocketAddrs as _};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use coordinator::reshape::{ClusterControl, VShardStep};
use coordinator::{GroupStatus, Role};
use raft::eraftpb::ConfChangeV2;
use routing::{GroupId, META_GROUP, NodeId, RoutingChange, RoutingTable, VShardId};
use serde::Serialize;

use coordinator::RequestError;

use crate::client::{ClientError, NodeClient};
use crate::proto::admin_request::vshard_step::{Acquire, Step};
use crate::proto::admin_request::{self, Body};
use crate::proto::{AdminRequest, Empty, admin_reply};
use crate::wire::{ClientRequest, RemoteError, client_reply};

/// [`ClusterControl`] over the admin protocol. See the [module docs](self).
pub struct RemoteControl {
    client: NodeClient,
    addresses: Mutex<BTreeMap<NodeId, SocketAddr>>,
    contacts: Vec<NodeId>,
    pause: Duration,
}

/// Why [`RemoteControl::connect`] found no node to talk to.
#[derive(Debug, thiserror::Error)]
#[error("no contact point answered (last: {last})")]
pub struct NoContact {
    last: String,
}

impl RemoteControl {
    /// Asks each of `contact_points` who it is and which addresses it knows; pauses `pause`
    /// between looks while a plan waits.
    ///
    /// # Errors
    /// [`NoContact`] when none answers.
    pub async fn connect(
        client: NodeClient,
        contact_points: &[SocketAddr],
        pause: Duration,
    ) -> Result<Self, NoContact> {
        let mut this = Self {
            client,
            addresses: Mutex::new(BTreeMap::new()),
            contacts: Vec::new(),
            pause,
        };
        let mut last = String::from("no contact point given");
        let request = ClientRequest::admin(AdminRequest::new(Body::Table(Empty {})));
        for addr in contact_points {
            match this.client.request(*addr, None, &request).await {
                Ok(reply) => match (&reply.body, reply.node) {
                    (Some(client_reply::Body::Admin(admin)), node) if node != 0 => {
                        let node = NodeId(node);
                        if let Some(admin_reply::Body::Table(t)) = &admin.body {
                            this.learn_from(&t.addresses);
                        }
                        // The address we reached it at wins over what it says of itself.
                        this.learn(node, *addr);
                        if !this.contacts.contains(&node) {
                            this.contacts.push(node);
                        }
                    }
                    (Some(client_reply::Body::Failure(f)), _) => {
                        last = format!("{addr}: {}", f.to_error());
                    }
                    _ => last = format!("{addr}: unexpected reply"),
                },
                Err(e) => last = e.to_string(),
            }
        }
        if this.contacts.is_empty() {
            return Err(NoContact { last });
        }
        Ok(this)
    }

    /// The client it talks through.
    pub fn client(&self) -> &NodeClient {
        &self.client
    }

    /// Records that `node` is reached at `addr`.
    pub fn learn(&self, node: NodeId, addr: SocketAddr) {
        self.lock().insert(node, addr);
    }

    /// Where `node` is reached, when known.
    pub fn address(&self, node: NodeId) -> Option<SocketAddr> {
        self.lock().get(&node).copied()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<NodeId, SocketAddr>> {
        self.addresses
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Learns the addresses a table reply lists (the contact points' own stay as given).
    fn learn_from(&self, listed: &[crate::proto::Address]) {
        let mut addresses = self.lock();
        for a in listed {
            let node = NodeId(a.node);
            if self.contacts.contains(&node) {
                continue;
            }
            if let Some(addr) = resolve(&a.addr) {
                addresses.insert(node, addr);
            }
        }
    }

    fn learn_table(&self, table: &RoutingTable) {
        let mut addresses = self.lock();
        for (node, address) in table.members() {
            if self.contacts.contains(&node) || address.is_empty() {
                continue;
            }
            if let Some(addr) = resolve(address) {
                addresses.insert(node, addr);
            }
        }
    }

    /// Sends `body` to `node` (this node, no redirect: a plan decides where to go next), with
    /// the node's typed error as the error. A refusal of the protocol (`Forbidden`,
    /// `BadRequest`) did not take effect and will not by repeating it: it reads as
    /// [`RequestError::Refused`] of `group`, which also names the group in errors of the
    /// exchange itself.
    async fn ask(
        &self,
        node: NodeId,
        group: GroupId,
        body: Body,
    ) -> Result<admin_reply::Body, RequestError> {
        let Some(addr) = self.address(node) else {
            tracing::debug!(%node, "no address known");
            return Err(RequestError::ShuttingDown);
        };
        let request = ClientRequest::admin(AdminRequest::new(body));
        match self.client.request(addr, Some(node), &request).await {
            Ok(reply) => match reply.body {
                Some(client_reply::Body::Admin(admin)) => {
                    admin.body.ok_or_else(|| RequestError::Refused {
                        group,
                        reason: "an admin reply without a body".into(),
                    })
                }
                Some(client_reply::Body::Failure(f)) => match f.to_error() {
                    RemoteError::Propose(e) => Err(e),
                    // A failure this build cannot name keeps its class.
                    RemoteError::Unrecognised {
                        outcome: coordinator::Outcome::Unknown,
                    } => Err(RequestError::OutcomeUnknown { group }),
                    other => Err(RequestError::Refused {
                        group,
                        reason: other.to_string(),
                    }),
                },
                _ => Err(RequestError::Refused {
                    group,
                    reason: "the node answered with another kind of reply".into(),
                }),
            },
            // Sent, but no answer: it may or may not have taken effect.
            Err(ClientError::Io { reason, .. }) => {
                tracing::debug!(%node, %reason, "no answer");
                Err(RequestError::Timeout { group })
            }
            // Not sendable at all (too large): repeating it will not help.
            Err(ClientError::Unsendable(reason)) => Err(RequestError::Refused { group, reason }),
            Err(e) => {
                tracing::debug!(%node, error = %e, "unreachable");
                Err(RequestError::ShuttingDown)
            }
        }
    }

    /// Every group's status on `node` (`None`: unreachable).
    pub async fn statuses(&self, node: NodeId) -> Option<Vec<GroupStatus>> {
        let body = Body::GroupStatus(admin_request::GroupStatus { group: None });
        match self.ask(node, GroupId(0), body).await.ok()? {
            admin_reply::Body::Statuses(s) => {
                Some(s.statuses.iter().filter_map(|s| s.to_status()).collect())
            }
            _ => None,
        }
    }

    /// The newest routing table the contact points and the members it lists have applied.
    pub async fn newest_table(&self) -> Option<RoutingTable> {
        let mut best: Option<RoutingTable> = None;
        let mut asked = Vec::new();
        let mut queue: Vec<NodeId> = self.contacts.clone();
        while let Some(node) = queue.pop() {
            if asked.contains(&node) {
                continue;
            }
            asked.push(node);
            if let Some(t) = self.table(node).await {
                queue.extend(t.nodes());
                if best.as_ref().is_none_or(|b| t.version() > b.version()) {
                    best = Some(t);
                }
            }
        }
        best
    }

    /// The cluster as its nodes report it: the newest routing table, and each group's leader
    /// and configuration.
    ///
    /// # Errors
    /// When no node answers with a routing table.
    pub async fn view(&self) -> Result<ClusterView, NoContact> {
        let table = self.newest_table().await.ok_or_else(|| NoContact {
            last: "no node returned a routing table".into(),
        })?;
        let mut nodes: Vec<NodeId> = table.nodes().into_iter().collect();
        for c in &self.contacts {
            if !nodes.contains(c) {
                nodes.push(*c);
            }
        }
        let mut leaders: BTreeMap<GroupId, GroupStatus> = BTreeMap::new();
        let mut seen: BTreeMap<GroupId, GroupStatus> = BTreeMap::new();
        let mut unreachable = Vec::new();
        for node in &nodes {
            let Some(statuses) = self.statuses(*node).await else {
                unreachable.push(*node);
                continue;
            };
            for s in statuses {
                if s.role == Role::Leader
                    && s.leader == Some(*node)
                    && leaders.get(&s.group).is_none_or(|l| s.term > l.term)
                {
                    leaders.insert(s.group, s.clone());
                }
                seen.entry(s.group).or_insert(s);
            }
        }
        let mut leads: BTreeMap<NodeId, usize> = BTreeMap::new();
        for s in leaders.values() {
            if let Some(l) = s.leader {
                *leads.entry(l).or_default() += 1;
            }
        }
        let members = table
            .members()
            .map(|(node, address)| MemberView {
                node,
                address: self
                    .address(node)
                    .map_or_else(|| address.to_string(), |a| a.to_string()),
                replicas: table.groups_on_node(node).len(),
                leads: leads.get(&node).copied().unwrap_or(0),
                reachable: !unreachable.contains(&node),
            })
            .collect();
        let group_ids: Vec<GroupId> = table
            .groups()
            .map(|(g, _)| g)
            .chain(std::iter::once(META_GROUP))
            .collect();
        let groups = group_ids
            .into_iter()
            .map(|group| {
                let status = leaders.get(&group).or_else(|| seen.get(&group));
                GroupView {
                    group,
                    vshards: table.vshards_of_group(group).len(),
                    replicas: table
                        .replicas(group)
                        .map(<[NodeId]>::to_vec)
                        .unwrap_or_default(),
                    leader: leaders.get(&group).and_then(|s| s.leader),
                    term: status.map_or(0, |s| s.term),
                    voters: status.map(|s| s.voters.clone()).unwrap_or_default(),
                    learners: status.map(|s| s.learners.clone()).unwrap_or_default(),
                    joint: status.is_some_and(|s| s.joint),
                }
            })
            .collect();
        Ok(ClusterView {
            routing_version: table.version(),
            vshards: table.vshard_count(),
            members,
            groups,
            unreachable,
        })
    }
}

fn resolve(address: &str) -> Option<SocketAddr> {
    address
        .parse()
        .ok()
        .or_else(|| address.to_socket_addrs().ok()?.next())
}

/// The cluster at one moment, for `pontoon cluster status`.
#[derive(Clone, Debug, Serialize)]
pub struct ClusterView {
    /// The newest routing table's version.
    pub routing_version: u64,
    /// Its vShard count.
    pub vshards: u32,
    /// Member nodes.
    pub members: Vec<MemberView>,
    /// Data groups, then the meta group.
    pub groups: Vec<GroupView>,
    /// Nodes that did not answer.
    pub unreachable: Vec<NodeId>,
}

/// One member.
#[derive(Clone, Debug, Serialize)]
pub struct MemberView {
    /// The node.
    pub node: NodeId,
    /// Where it is reached.
    pub address: String,
    /// Replicas of data groups the table places on it.
    pub replicas: usize,
    /// Groups it leads (the meta group included).
    pub leads: usize,
    /// Whether it answered.
    pub reachable: bool,
}

/// One group.
#[derive(Clone, Debug, Serialize)]
pub struct GroupView {
    /// The group ([`META_GROUP`] for the meta group).
    pub group: GroupId,
    /// vShards mapped to it.
    pub vshards: usize,
    /// Replicas by the routing table (empty for the meta group).
    pub replicas: Vec<NodeId>,
    /// Its leader, when one answered.
    pub leader: Option<NodeId>,
    /// The leader's term.
    pub term: u64,
    /// Voters, as its leader (or any replica) reports them.
    pub voters: Vec<NodeId>,
    /// Learners.
    pub learners: Vec<NodeId>,
    /// In a joint configuration.
    pub joint: bool,
}

/// The routing table an answer carries.
fn table_of(reply: admin_reply::Body) -> Result<RoutingTable, String> {
    match reply {
        admin_reply::Body::Table(t) => RoutingTable::decode(&t.table).map_err(|e| e.to_string()),
        _ => Err("the node answered without a routing table".into()),
    }
}

impl ClusterControl for RemoteControl {
    async fn table(&self, node: NodeId) -> Option<RoutingTable> {
        let reply = self
            .ask(node, META_GROUP, Body::Table(Empty {}))
            .await
            .ok()?;
        if let admin_reply::Body::Table(t) = &reply {
            self.learn_from(&t.addresses);
        }
        let table = table_of(reply)
            .inspect_err(|e| tracing::warn!(%node, error = %e, "undecodable routing table"))
            .ok()?;
        self.learn_table(&table);
        Some(table)
    }

    async fn change_routing(
        &self,
        node: NodeId,
        change: RoutingChange,
        expected_version: u64,
    ) -> Result<RoutingTable, RequestError> {
        if let RoutingChange::AddMember { node, address } = &change
            && let Some(addr) = resolve(address)
        {
            self.learn(*node, addr);
        }
        let body = Body::ChangeRouting(admin_request::ChangeRouting {
            change: change.encode(expected_version),
        });
        let reply = self.ask(node, META_GROUP, body).await?;
        let table = table_of(reply).map_err(|e| RequestError::Refused {
            group: META_GROUP,
            reason: format!("undecodable routing table: {e}"),
        })?;
        self.learn_table(&table);
        Ok(table)
    }

    async fn status(&self, node: NodeId, group: GroupId) -> Option<GroupStatus> {
        let body = Body::GroupStatus(admin_request::GroupStatus {
            group: Some(group.get()),
        });
        match self.ask(node, group, body).await.ok()? {
            admin_reply::Body::Statuses(s) => s
                .statuses
                .iter()
                .filter_map(|s| s.to_status())
                .find(|s| s.group == group),
            _ => None,
        }
    }

    async fn change_membership(
        &self,
        node: NodeId,
        group: GroupId,
        change: ConfChangeV2,
    ) -> Result<(), RequestError> {
        let body = Body::ChangeMembership(admin_request::ChangeMembership::new(group, &change));
        self.ask(node, group, body).await.map(drop)
    }

    async fn transfer_leader(
        &self,
        node: NodeId,
        group: GroupId,
        to: NodeId,
    ) -> Result<(), RequestError> {
        let body = Body::TransferLeader(admin_request::TransferLeader {
            group: group.get(),
            to: to.get(),
        });
        self.ask(node, group, body).await.map(drop)
    }

    async fn vshard_step(
        &self,
        node: NodeId,
        group: GroupId,
        vshard: VShardId,
        step: VShardStep,
    ) -> Result<(), RequestError> {
        let step = match step {
            VShardStep::Release => Step::Release(Empty {}),
            VShardStep::Acquire(data) => Step::Acquire(Acquire { data }),
            VShardStep::Purge => Step::Purge(Empty {}),
        };
        let body = Body::VShardStep(admin_request::VShardStep {
            group: group.get(),
            vshard: vshard.get(),
            step: Some(step),
        });
        self.ask(node, group, body).await.map(drop)
    }

    async fn export_vshard(
        &self,
        node: NodeId,
        group: GroupId,
        vshard: VShardId,
    ) -> Result<Vec<u8>, RequestError> {
        let body = Body::ExportVShard(admin_request::ExportVShard {
            group: group.get(),
            vshard: vshard.get(),
        });
        match self.ask(node, group, body).await? {
            admin_reply::Body::Export(e) => Ok(e.data),
            _ => Err(RequestError::Refused {
                group,
                reason: "the node answered without an export".into(),
            }),
        }
    }

    async fn pause(&self) {
        tokio::time::sleep(self.pause).await;
    }

    fn contact_points(&self) -> Vec<NodeId> {
        self.contacts.clone()
    }
}
