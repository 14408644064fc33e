//! The example key-value service behind `pontoon node` and `pontoon kv`: a client protocol on
//! the node's own QUIC endpoint, under its own ALPN (`pontoon-client/1`), for clients holding a
//! certificate of the same cluster CA.
//!
//! One bidirectional stream per request: the client writes one length-prefixed prost
//! [`Request`] and finishes its side; the node answers with one [`Reply`]. A node that does not
//! lead the key's group answers `NotLeader` with the leader's client address, and the client
//! follows it.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use routing::{GroupId, NodeId};
use transport::wire::{FrameDecoder, decode_body, encode_frame};

use crate::kv::{KvCommand, KvResponse, KvStateMachine};
use crate::{Node, ProposeError};

/// How long the client waits for a node to answer before trying elsewhere.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// Largest request or reply frame.
pub const MAX_MESSAGE_BYTES: usize = 4 * 1024 * 1024;

/// A client request.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Request {
    /// 1 put, 2 get, 3 delete, 4 status.
    #[prost(uint32, tag = "1")]
    pub op: u32,
    /// The key (put, get, delete).
    #[prost(bytes = "vec", tag = "2")]
    pub key: Vec<u8>,
    /// The value (put).
    #[prost(bytes = "vec", tag = "3")]
    pub value: Vec<u8>,
}

/// The node's answer.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Reply {
    /// 1 ok, 2 not leader, 3 error.
    #[prost(uint32, tag = "1")]
    pub outcome: u32,
    /// The value (get) or previous value (put, delete), when there is one.
    #[prost(bytes = "vec", optional, tag = "2")]
    pub value: Option<Vec<u8>>,
    /// Not leader: the leader's client address, when known.
    #[prost(string, optional, tag = "3")]
    pub leader_addr: Option<String>,
    /// Error text, or the status as JSON.
    #[prost(string, tag = "4")]
    pub message: String,
}

/// Request op codes.
pub mod op {
    /// Put a key.
    pub const PUT: u32 = 1;
    /// Read a key, linearizably.
    pub const GET: u32 = 2;
    /// Delete a key.
    pub const DELETE: u32 = 3;
    /// The node's status as JSON.
    pub const STATUS: u32 = 4;
}

/// Reply outcomes.
pub mod outcome {
    /// Done.
    pub const OK: u32 = 1;
    /// Ask the leader instead.
    pub const NOT_LEADER: u32 = 2;
    /// Failed; see the message.
    pub const ERROR: u32 = 3;
}

/// Encodes one message as a length-prefixed frame.
///
/// # Errors
/// When the message exceeds [`MAX_MESSAGE_BYTES`].
pub fn encode<M: prost::Message>(message: &M) -> Result<Vec<u8>, transport::WireError> {
    let mut out = BytesMut::new();
    encode_frame(message, MAX_MESSAGE_BYTES, &mut out)?;
    Ok(out.to_vec())
}

/// Decodes exactly one frame from a finished stream's bytes.
///
/// # Errors
/// Malformed, truncated or oversized input.
pub fn decode<M: prost::Message + Default>(
    what: &'static str,
    bytes: &[u8],
) -> Result<M, transport::WireError> {
    let mut decoder = FrameDecoder::new(MAX_MESSAGE_BYTES);
    decoder.extend(bytes);
    let frame = decoder
        .next_frame()?
        .ok_or(transport::WireError::Truncated {
            buffered: bytes.len(),
        })?;
    if decoder.buffered() != 0 {
        return Err(transport::WireError::Malformed {
            what,
            reason: "bytes after the frame".into(),
        });
    }
    decode_body(what, frame)
}

/// What the service needs to answer clients.
#[derive(Clone)]
pub struct KvService {
    node: Node,
    state: KvStateMachine,
    /// Where each node serves clients (its QUIC address), for `NotLeader` redirects.
    client_addrs: Arc<BTreeMap<NodeId, SocketAddr>>,
}

impl KvService {
    /// A service answering for `node`, reading from `state` (the clone given to the node).
    #[must_use]
    pub fn new(
        node: Node,
        state: KvStateMachine,
        client_addrs: BTreeMap<NodeId, SocketAddr>,
    ) -> Self {
        Self {
            node,
            state,
            client_addrs: Arc::new(client_addrs),
        }
    }

    /// Serves one authenticated client connection until it closes.
    pub async fn serve(self, connection: quinn::Connection) {
        loop {
            let (mut send, mut recv) = match connection.accept_bi().await {
                Ok(streams) => streams,
                Err(_) => return,
            };
            let service = self.clone();
            tokio::spawn(async move {
                let reply = match recv.read_to_end(MAX_MESSAGE_BYTES + 4).await {
                    Ok(bytes) => match decode::<Request>("client request", &bytes) {
                        Ok(request) => service.answer(request).await,
                        Err(e) => error_reply(format!("malformed request: {e}")),
                    },
                    Err(e) => error_reply(format!("reading the request: {e}")),
                };
                if let Ok(bytes) = encode(&reply) {
                    let _ = send.write_all(&bytes).await;
                }
                let _ = send.finish();
            });
        }
    }

    fn group_of(&self, key: &[u8]) -> GroupId {
        self.node.routing().group_for_key(key)
    }

    async fn answer(&self, request: Request) -> Reply {
        match request.op {
            op::PUT | op::DELETE => {
                let command = if request.op == op::PUT {
                    KvCommand::Put {
                        key: request.key.clone(),
                        value: request.value,
                    }
                } else {
                    KvCommand::Delete {
                        key: request.key.clone(),
                    }
                };
                match self.node.propose(&request.key, command.encode()).await {
                    Ok(bytes) => match KvResponse::decode(&bytes) {
                        Ok(KvResponse::Done { previous }) => Reply {
                            outcome: outcome::OK,
                            value: previous,
                            ..Reply::default()
                        },
                        Ok(other) => error_reply(format!("unexpected response {other:?}")),
                        Err(e) => error_reply(e.to_string()),
                    },
                    Err(e) => self.propose_error(e),
                }
            }
            op::GET => {
                let group = self.group_of(&request.key);
                match self.node.read_index(group).await {
                    Ok(_) => Reply {
                        outcome: outcome::OK,
                        value: self.state.get(group, &request.key),
                        ..Reply::default()
                    },
                    Err(e) => self.propose_error(e),
                }
            }
            op::STATUS => match self.node.status().await {
                Ok(status) => Reply {
                    outcome: outcome::OK,
                    message: serde_json::to_string(&status).unwrap_or_default(),
                    ..Reply::default()
                },
                Err(e) => self.propose_error(e),
            },
            other => error_reply(format!("unknown op {other}")),
        }
    }

    fn propose_error(&self, error: ProposeError) -> Reply {
        match error {
            ProposeError::NotLeader { leader, .. } => Reply {
                outcome: outcome::NOT_LEADER,
                leader_addr: leader
                    .and_then(|l| self.client_addrs.get(&l))
                    .map(ToString::to_string),
                message: error.to_string(),
                ..Reply::default()
            },
            other => error_reply(other.to_string()),
        }
    }
}

fn error_reply(message: String) -> Reply {
    Reply {
        outcome: outcome::ERROR,
        message,
        ..Reply::default()
    }
}

/// Errors of the key-value client.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The client's TLS config could not be built.
    #[error("client certificate: {0}")]
    Certs(#[from] certs::CertError),
    /// QUIC could not connect.
    #[error("connecting to {addr}: {reason}")]
    Connect {
        /// The node.
        addr: SocketAddr,
        /// Why.
        reason: String,
    },
    /// The request or reply could not be exchanged.
    #[error("talking to {addr}: {reason}")]
    Io {
        /// The node.
        addr: SocketAddr,
        /// Why.
        reason: String,
    },
    /// The node answered with an error.
    #[error("{0}")]
    Server(String),
    /// Redirected more often than a leader change explains.
    #[error("gave up after {0} NotLeader redirects")]
    TooManyRedirects(usize),
}

/// A client of the key-value service, authenticated by a client certificate.
pub struct KvClient {
    endpoint: quinn::Endpoint,
    client_config: quinn::ClientConfig,
}

impl KvClient {
    /// A client presenting `identity`.
    ///
    /// # Errors
    /// A TLS config or socket that cannot be made.
    pub fn new(identity: &certs::ClientIdentity) -> Result<Self, ClientError> {
        let tls = identity.client_config(&[certs::CLIENT_ALPN])?;
        let quic = quinn::crypto::rustls::QuicClientConfig::try_from(tls)
            .map_err(|e| ClientError::Server(format!("TLS config unusable for QUIC: {e}")))?;
        let mut client_config = quinn::ClientConfig::new(Arc::new(quic));
        // A dead node must not hold a request for quinn's default 30 s: give up on it quickly
        // and let `call` go back to a node that answered.
        let mut transport = quinn::TransportConfig::default();
        let idle = quinn::IdleTimeout::try_from(CONNECT_TIMEOUT)
            .map_err(|e| ClientError::Server(format!("idle timeout: {e}")))?;
        transport.max_idle_timeout(Some(idle));
        client_config.transport_config(Arc::new(transport));
        let bind = SocketAddr::from(([0, 0, 0, 0], 0));
        let endpoint = quinn::Endpoint::client(bind).map_err(|e| ClientError::Connect {
            addr: bind,
            reason: e.to_string(),
        })?;
        Ok(Self {
            endpoint,
            client_config,
        })
    }

    /// Sends `request` to the node at `addr`, following `NotLeader` redirects.
    ///
    /// # Errors
    /// [`ClientError`].
    pub async fn call(
        &self,
        first: SocketAddr,
        node_hint: Option<NodeId>,
        request: Request,
    ) -> Result<Reply, ClientError> {
        let (mut addr, mut server) = (first, node_hint);
        for _ in 0..8 {
            let reply = match self.call_once(addr, server, &request).await {
                Ok(reply) => reply,
                // A redirect to a node that does not answer (it may just have died): go back
                // to the node we were given, which will know the new leader soon.
                Err(ClientError::Connect { .. }) if addr != first => {
                    (addr, server) = (first, node_hint);
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
                Err(e) => return Err(e),
            };
            match (
                reply.outcome,
                reply.leader_addr.as_deref().map(str::parse::<SocketAddr>),
            ) {
                (outcome::NOT_LEADER, Some(Ok(leader))) if leader != addr => {
                    addr = leader;
                    server = None;
                }
                (outcome::NOT_LEADER, _) => tokio::time::sleep(Duration::from_millis(200)).await,
                (outcome::ERROR, _) => return Err(ClientError::Server(reply.message)),
                _ => return Ok(reply),
            }
        }
        Err(ClientError::TooManyRedirects(8))
    }

    async fn call_once(
        &self,
        addr: SocketAddr,
        node: Option<NodeId>,
        request: &Request,
    ) -> Result<Reply, ClientError> {
        let io = |reason: String| ClientError::Io { addr, reason };
        // The server name proves which node answered when the caller knows it; otherwise any
        // node of the cluster will do, so we accept the generic name every node holds.
        let server_name = node.map_or_else(
            || certs::CLUSTER_SERVER_NAME.to_string(),
            certs::node_server_name,
        );
        let connection = self
            .endpoint
            .connect_with(self.client_config.clone(), addr, &server_name)
            .map_err(|e| ClientError::Connect {
                addr,
                reason: e.to_string(),
            })?
            .await
            .map_err(|e| ClientError::Connect {
                addr,
                reason: e.to_string(),
            })?;
        let (mut send, mut recv) = connection.open_bi().await.map_err(|e| io(e.to_string()))?;
        let bytes = encode(request).map_err(|e| io(e.to_string()))?;
        send.write_all(&bytes)
            .await
            .map_err(|e| io(e.to_string()))?;
        send.finish().map_err(|e| io(e.to_string()))?;
        let reply = recv
            .read_to_end(MAX_MESSAGE_BYTES + 4)
            .await
            .map_err(|e| io(e.to_string()))?;
        let reply = decode::<Reply>("reply", &reply).map_err(|e| io(e.to_string()))?;
        connection.close(0u32.into(), b"done");
        Ok(reply)
    }
}
