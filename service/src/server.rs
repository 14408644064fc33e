//! [`KvService`]: the node side of the client protocol for the example KV service. `pontoon
//! node` hands it every client connection the transport accepts; it reads the caller once
//! from the connection's certificate, then answers one request per stream: key-value requests
//! itself, admin requests through [`AdminService`], which checks the caller's role per
//! operation. A peer that is not a client (a node certificate) is refused every request.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use admin::wire::{ClientReply, ClientRequest, Failure, RemoteError, client_request};
use admin::{AdminService, Caller};
use coordinator::{Node, RequestError};
use prost::Message as _;
use routing::NodeId;

use crate::kv::{KvCommand, KvResponse, KvStateMachine};
use crate::proto::{KvReply, KvRequest, kv_reply, kv_request};
use crate::session_budget::SessionBudget;
use coordinator::SessionCommand;

/// How often a GET reads again when the key's vShard left the group while it was reading.
const READ_ATTEMPTS: usize = 4;

/// What the service needs to answer clients. Cheap to clone.
#[derive(Clone)]
pub struct KvService {
    admin: AdminService,
    state: KvStateMachine,
    sessions: Arc<SessionBudget>,
}

impl KvService {
    /// A service answering for `node`, reading from `state` (the clone given to the node);
    /// `client_addrs` are where the nodes of its configuration serve clients (for redirects).
    #[must_use]
    pub fn new(
        node: Node,
        state: KvStateMachine,
        client_addrs: BTreeMap<NodeId, SocketAddr>,
    ) -> Self {
        Self {
            admin: AdminService::new(node, client_addrs),
            state,
            sessions: Arc::default(),
        }
    }

    /// The same service with another per-client session budget (see [`SessionBudget`]).
    #[must_use]
    pub fn with_session_budget(mut self, budget: SessionBudget) -> Self {
        self.sessions = Arc::new(budget);
        self
    }

    fn node(&self) -> &Node {
        self.admin.node()
    }

    /// Serves one authenticated client connection until it closes. Requests are read through
    /// the transport's budgets (concurrent requests and bytes in flight per client and for all
    /// clients, a read timeout): a client that stalls or floods is refused, never buffered.
    pub async fn serve(self, client: transport::ClientConnection) {
        let caller = Caller::of(&client.connection);
        if let Caller::Refused { who, reason } = &caller {
            tracing::warn!(peer = %who, %reason, "refusing a peer on the client protocol");
        }
        loop {
            let incoming = match client.accept_request().await {
                Ok(incoming) => incoming,
                Err(_) => return,
            };
            let (service, caller) = (self.clone(), caller.clone());
            tokio::spawn(async move {
                let request = match incoming.read().await {
                    Ok(request) => request,
                    // Refused by a budget or the read timeout: the transport reset the stream
                    // and counted it; nothing was decoded.
                    Err(e) => {
                        tracing::debug!(error = %e, "client request refused");
                        return;
                    }
                };
                let mut send = request.reply;
                let mut reply =
                    match admin::wire::decode::<ClientRequest>("client request", &request.body) {
                        Ok(decoded) => service.answer(&caller, decoded).await,
                        Err(e) => bad_request(format!("malformed request: {e}")),
                    };
                reply.node = service.node().id().get();
                // A reply too large for a frame (a huge vShard export) still gets an answer.
                let bytes = admin::wire::encode(&reply).or_else(|e| {
                    admin::wire::encode(&bad_request(format!("the reply cannot be sent: {e}")))
                });
                if let Ok(bytes) = bytes {
                    let _ = send.write_all(&bytes).await;
                }
                let _ = send.finish();
            });
        }
    }

    /// Answers one request of `caller`.
    pub async fn answer(&self, caller: &Caller, request: ClientRequest) -> ClientReply {
        match request.body {
            Some(client_request::Body::Admin(request)) => {
                match self.admin.answer(caller, request).await {
                    Ok(reply) => ClientReply::admin(reply),
                    Err(failure) => ClientReply::failure(failure),
                }
            }
            Some(client_request::Body::App(bytes)) => {
                if let Caller::Refused { reason, .. } = caller {
                    return ClientReply::failure(Failure::from_error(&RemoteError::Forbidden {
                        caller: caller.describe(),
                        operation: "read or write keys".into(),
                        reason: reason.clone(),
                    }));
                }
                match KvRequest::decode(bytes.as_slice()) {
                    Ok(request) => match self.kv(caller, request).await {
                        Ok(reply) => ClientReply::app(reply.encode_to_vec()),
                        Err(failure) => ClientReply::failure(failure),
                    },
                    Err(e) => bad_request(format!("malformed key-value request: {e}")),
                }
            }
            None => bad_request("a request without a body".into()),
        }
    }

    async fn kv(&self, caller: &Caller, request: KvRequest) -> Result<KvReply, Failure> {
        let command = match request.op {
            Some(kv_request::Op::Get(get)) => return self.get(&get.key).await,
            Some(kv_request::Op::Put(p)) => KvCommand::Put {
                key: p.key,
                value: p.value,
            },
            Some(kv_request::Op::Delete(d)) => KvCommand::Delete { key: d.key },
            Some(kv_request::Op::CompareAndSet(c)) => KvCommand::CompareAndSet {
                key: c.key,
                expected: c.expected,
                value: c.value,
            },
            None => {
                return Err(Failure::bad_request(
                    "a key-value request without an operation",
                ));
            }
        };
        let proposed = match request.session {
            Some(s) => {
                // A session belongs to the certificate that opened it: one client cannot
                // acknowledge (and so drop) another's cached answers by naming its session.
                let client = session_of(caller.name(), s.client);
                if !self.sessions.admit(caller.name(), client, Instant::now()) {
                    let group = self.node().group_for_key(command.key());
                    return Err(self
                        .admin
                        .failure(&RemoteError::Propose(RequestError::Refused {
                            group,
                            reason: format!(
                                "this client opened {} sessions through this node within their \
                             lifetime; reuse a session instead of opening one per command",
                                self.sessions.per_client()
                            ),
                        })));
                }
                let once = SessionCommand::relayed(client, s.seq, s.acked);
                self.node()
                    .propose_once(&once, command.key(), command.encode())
                    .await
            }
            None => self.node().propose(command.key(), command.encode()).await,
        };
        let bytes = proposed.map_err(|e| self.kv_failure(&e))?;
        let outcome = match KvResponse::decode(&bytes) {
            Ok(KvResponse::Done { previous }) => {
                kv_reply::Outcome::Done(kv_reply::Value { value: previous })
            }
            Ok(KvResponse::Mismatch { current }) => {
                kv_reply::Outcome::Mismatch(kv_reply::Value { value: current })
            }
            Ok(KvResponse::Rejected) => {
                return Err(Failure::bad_request(
                    "the state machine rejected the command",
                ));
            }
            Err(e) => return Err(Failure::bad_request(e.to_string())),
        };
        Ok(KvReply {
            outcome: Some(outcome),
        })
    }

    /// The failure for a key-value request's error: a group this node holds no replica of
    /// (the cluster changed shape) is a redirect to a node that holds one, which the client
    /// follows like any `NotLeader`.
    fn kv_failure(&self, error: &RequestError) -> Failure {
        if let RequestError::GroupNotFound { group } = error {
            let node = self.node();
            let table = node.routing();
            let replicas = table.replicas(*group).unwrap_or_default();
            // The leader if known and up, else a replica that is up: a redirect to a node
            // that is down costs the client its whole connect timeout. With none up, any.
            let up = |r: &NodeId| *r != node.id() && !node.is_peer_down(*r);
            let replica = table
                .leader_hint(*group)
                .filter(up)
                .or_else(|| replicas.iter().copied().find(up))
                .or_else(|| replicas.iter().copied().find(|r| *r != node.id()));
            if let Some(replica) = replica {
                return self
                    .admin
                    .failure(&RemoteError::Propose(RequestError::NotLeader {
                        group: *group,
                        leader: Some(replica),
                    }));
            }
        }
        self.admin.failure(&RemoteError::Propose(error.clone()))
    }

    /// A linearizable read that honours vShard moves: the barrier says which group serves the
    /// key, and the value read there counts only if the group still served the key's vShard
    /// after the read (a move may have fenced it in between; then read again on the new table).
    async fn get(&self, key: &[u8]) -> Result<KvReply, Failure> {
        let mut last = None;
        for _ in 0..READ_ATTEMPTS {
            let read = self
                .node()
                .read_key(key)
                .await
                .map_err(|e| self.kv_failure(&e))?;
            let value = self.state.get(read.group, key);
            if self.node().serves(read.group, read.vshard) {
                return Ok(KvReply {
                    outcome: Some(kv_reply::Outcome::Value(kv_reply::Value { value })),
                });
            }
            last = Some(RequestError::StaleRouting {
                vshard: read.vshard,
                group: read.group,
                table_version: self.node().routing().version(),
            });
        }
        Err(last.map_or_else(
            || Failure::bad_request("no read attempt"),
            |e| self.kv_failure(&e),
        ))
    }
}

fn bad_request(reason: String) -> ClientReply {
    ClientReply::failure(Failure::bad_request(reason))
}

/// The session id a client's `session` has in the groups: its own id mixed with the client's
/// certificate name, the same on every node (so a retry on another node finds it), and owned
/// by that certificate in the groups' session quotas.
fn session_of(client: &str, session: u64) -> u64 {
    coordinator::ClientSession::relayed_id(client.as_bytes(), session)
}
