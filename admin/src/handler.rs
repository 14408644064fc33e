//! [`AdminService`]: the node side of the admin protocol. The service that hosts the client
//! protocol hands it each [`AdminRequest`] with the [`Caller`] of the connection; it checks
//! the caller's role, runs the operation on the [`Node`], and writes one audit event per
//! operation that changes the cluster or exports its data, allowed or refused.
//!
//! Audit events go to the `tracing` target [`AUDIT_TARGET`] with the fields `client`, `role`,
//! `operation`, `arguments` and `outcome`, so an operator can route them to their own sink.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use coordinator::{Node, RequestError};
use routing::{GroupId, NodeId, RoutingChange, VShardId};

use crate::caller::Caller;
use crate::proto::admin_request::Body;
use crate::proto::admin_request::vshard_step::Step;
use crate::proto::{Address, AdminReply, AdminRequest, Empty, GroupStatusMsg, admin_reply};
use crate::wire::{Failure, RemoteError};

/// The `tracing` target of audit events.
pub const AUDIT_TARGET: &str = "pontoon::audit";

/// Answers admin requests for one node. Cheap to clone.
#[derive(Clone)]
pub struct AdminService {
    node: Node,
    /// Where each node serves clients by this node's configuration, for `NotLeader` redirects;
    /// members the routing table gives an address to are found there.
    client_addrs: Arc<BTreeMap<NodeId, SocketAddr>>,
}

impl AdminService {
    /// A service answering for `node`; `client_addrs` are the addresses its configuration
    /// names (the routing table's win).
    #[must_use]
    pub fn new(node: Node, client_addrs: BTreeMap<NodeId, SocketAddr>) -> Self {
        Self {
            node,
            client_addrs: Arc::new(client_addrs),
        }
    }

    /// The node it answers for.
    #[must_use]
    pub fn node(&self) -> &Node {
        &self.node
    }

    /// Answers `request` from `caller`: the reply, or the failure with the leader's address
    /// filled in for `NotLeader`.
    ///
    /// # Errors
    /// A [`Failure`] for the caller: `Forbidden` when its role does not allow the operation
    /// (nothing happened), `BadRequest` for a request it cannot read, else the coordinator's
    /// error.
    pub async fn answer(
        &self,
        caller: &Caller,
        request: AdminRequest,
    ) -> Result<AdminReply, Failure> {
        let operation = request.operation();
        let audited = !request.is_read_only();
        let arguments = if audited {
            request.arguments()
        } else {
            String::new()
        };
        if let Err(refusal) = permit(caller, &request) {
            if audited {
                audit(caller, operation, &arguments, &refusal.to_string(), false);
            }
            return Err(Failure::from_error(&refusal));
        }
        let result = self.run(request).await;
        if audited {
            let outcome = match &result {
                Ok(_) => "ok".to_string(),
                Err(e) => e.to_string(),
            };
            audit(caller, operation, &arguments, &outcome, true);
        }
        result
            .map(|body| AdminReply { body: Some(body) })
            .map_err(|e| self.failure(&e))
    }

    /// The failure that carries `error`, with the leader's client address for `NotLeader`.
    #[must_use]
    pub fn failure(&self, error: &RemoteError) -> Failure {
        let mut failure = Failure::from_error(error);
        if let RemoteError::Propose(RequestError::NotLeader {
            leader: Some(leader),
            ..
        }) = error
        {
            failure.leader_addr = self.address_of(*leader);
        }
        failure
    }

    /// Where `node` is reached: the routing table's address for it, else this node's config.
    #[must_use]
    pub fn address_of(&self, node: NodeId) -> Option<String> {
        let table = self.node.routing();
        table
            .members()
            .find(|(n, a)| *n == node && !a.is_empty())
            .map(|(_, a)| a.to_string())
            .or_else(|| self.client_addrs.get(&node).map(ToString::to_string))
    }

    /// Every address this node knows: its config's, overridden by the routing table's.
    fn addresses(&self) -> Vec<Address> {
        let mut all: BTreeMap<u64, String> = self
            .client_addrs
            .iter()
            .map(|(n, a)| (n.get(), a.to_string()))
            .collect();
        for (node, addr) in self.node.routing().members() {
            if !addr.is_empty() {
                all.insert(node.get(), addr.to_string());
            }
        }
        all.into_iter()
            .map(|(node, addr)| Address { node, addr })
            .collect()
    }

    async fn run(&self, request: AdminRequest) -> Result<admin_reply::Body, RemoteError> {
        let done = |r: Result<(), RequestError>| {
            r.map(|()| admin_reply::Body::Done(Empty {}))
                .map_err(RemoteError::from)
        };
        let Some(body) = request.body else {
            return Err(RemoteError::BadRequest {
                reason: "an admin request without an operation".into(),
            });
        };
        match body {
            Body::Table(_) => Ok(admin_reply::Body::Table(admin_reply::Table {
                table: self.node.routing().encode(),
                addresses: self.addresses(),
            })),
            Body::NodeStatus(_) => {
                let status = self.node.status().await?;
                let json = serde_json::to_string(&status).map_err(|e| RemoteError::BadRequest {
                    reason: format!("the status cannot be written as JSON: {e}"),
                })?;
                Ok(admin_reply::Body::NodeStatus(admin_reply::NodeStatus {
                    json,
                }))
            }
            Body::GroupStatus(query) => self.group_status(query.group.map(GroupId)).await,
            Body::ChangeRouting(c) => {
                let (change, expected) =
                    RoutingChange::decode(&c.change).map_err(|e| RemoteError::BadRequest {
                        reason: format!("malformed routing change: {e}"),
                    })?;
                let table = self.node.propose_routing(&change, expected).await?;
                Ok(admin_reply::Body::Table(admin_reply::Table {
                    table: table.encode(),
                    addresses: Vec::new(),
                }))
            }
            Body::ChangeMembership(m) => {
                let change = m
                    .to_conf_change()
                    .map_err(|reason| RemoteError::BadRequest { reason })?;
                done(
                    self.node
                        .change_membership(GroupId(m.group), change)
                        .await
                        .map(drop),
                )
            }
            Body::TransferLeader(t) => done(
                self.node
                    .transfer_leader(GroupId(t.group), NodeId(t.to))
                    .await,
            ),
            Body::VShardStep(s) => {
                let (group, vshard) = (GroupId(s.group), VShardId(s.vshard));
                match s.step {
                    Some(Step::Release(_)) => done(self.node.release_vshard(group, vshard).await),
                    Some(Step::Acquire(a)) => {
                        done(self.node.acquire_vshard(group, vshard, a.data).await)
                    }
                    Some(Step::Purge(_)) => done(self.node.purge_vshard(group, vshard).await),
                    None => Err(RemoteError::BadRequest {
                        reason: "a vShard step without a step".into(),
                    }),
                }
            }
            Body::ExportVShard(e) => {
                let data = self
                    .node
                    .export_vshard(GroupId(e.group), VShardId(e.vshard))
                    .await?;
                Ok(admin_reply::Body::Export(admin_reply::Export { data }))
            }
        }
    }

    async fn group_status(&self, group: Option<GroupId>) -> Result<admin_reply::Body, RemoteError> {
        let status = self.node.status().await?;
        let statuses: Vec<GroupStatusMsg> = status
            .groups
            .iter()
            .filter(|g| group.is_none_or(|group| g.group == group))
            .map(GroupStatusMsg::from)
            .collect();
        if let Some(group) = group
            && statuses.is_empty()
        {
            return Err(RequestError::GroupNotFound { group }.into());
        }
        Ok(admin_reply::Body::Statuses(admin_reply::Statuses {
            statuses,
        }))
    }
}

/// Whether `caller` may run `request` (see [`crate::caller`] for the rules).
fn permit(caller: &Caller, request: &AdminRequest) -> Result<(), RemoteError> {
    let forbidden = |reason: String| RemoteError::Forbidden {
        caller: caller.describe(),
        operation: request.operation().to_string(),
        reason,
    };
    match caller {
        Caller::Refused { reason, .. } => Err(forbidden(reason.clone())),
        Caller::Client { role, .. } if role.is_admin() || request.is_read_only() => Ok(()),
        Caller::Client { role, .. } => Err(forbidden(format!(
            "role {role} may read and write keys and read the cluster's shape; \
             changing it needs a client certificate issued with --role admin"
        ))),
    }
}

/// One audit event: who asked what, with which arguments, and how it ended.
fn audit(caller: &Caller, operation: &str, arguments: &str, outcome: &str, allowed: bool) {
    let role = caller.role().map_or("none", certs::ClientRole::as_str);
    if allowed {
        tracing::info!(
            target: AUDIT_TARGET,
            client = caller.name(),
            role,
            operation,
            arguments,
            outcome,
            "admin operation"
        );
    } else {
        tracing::warn!(
            target: AUDIT_TARGET,
            client = caller.name(),
            role,
            operation,
            arguments,
            outcome,
            "admin operation refused"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kv_clients_may_only_read_the_shape_and_refused_peers_nothing() {
        let kv = Caller::Client {
            name: "app".into(),
            role: certs::ClientRole::Kv,
        };
        let admin = Caller::Client {
            name: "ops".into(),
            role: certs::ClientRole::Admin,
        };
        let node = Caller::Refused {
            who: "node 2".into(),
            reason: "nodes are not clients".into(),
        };
        let table = AdminRequest::new(Body::Table(Empty {}));
        let transfer = AdminRequest::new(Body::TransferLeader(
            crate::proto::admin_request::TransferLeader { group: 1, to: 2 },
        ));
        assert!(permit(&kv, &table).is_ok());
        assert!(matches!(
            permit(&kv, &transfer),
            Err(RemoteError::Forbidden { operation, .. }) if operation == "transfer leadership"
        ));
        assert!(permit(&admin, &transfer).is_ok());
        assert!(permit(&node, &table).is_err());
        assert!(permit(&node, &transfer).is_err());
    }
}
