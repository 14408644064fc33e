//! [`NodeClient`]: the client side of the client protocol. It keeps one QUIC connection per
//! node, shared by every concurrent call and redialled once (by one caller, the others
//! waiting for it) when it is lost, and opens one stream per request, so a request costs one
//! round trip, not a TLS handshake. [`NodeClient::call`] is the one place that follows
//! `NotLeader` redirects and resends what its error class allows ([`Retries`]); the KV client
//! and the admin tools use it.
//!
//! Connections are sized for loaded machines: keep-alives every [`KEEP_ALIVE`] and an idle
//! timeout of [`IDLE_TIMEOUT`], so a node (or this client) stalled for several seconds by a
//! busy CPU keeps its connection; a dial that gets no handshake within [`CONNECT_TIMEOUT`]
//! fails as not sent.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use coordinator::RequestError;
use routing::NodeId;

use crate::wire::{ClientReply, ClientRequest, MAX_MESSAGE_BYTES, RemoteError, decode, encode};

/// How long a dial may take to complete its handshake before it fails as not sent.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// After a dial that got no handshake within [`CONNECT_TIMEOUT`], dials to that address fail
/// at once (as not sent) for this long: a node that is down costs a caller one connect
/// timeout, not one per request or per redirect to it.
pub const UNREACHABLE_FOR: Duration = Duration::from_secs(5);

/// How long a connection may hear nothing before it counts as lost (QUIC idle timeout). Far
/// above [`KEEP_ALIVE`]: a CPU stall of several seconds on either side must not end it.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// How often an idle connection proves it is alive.
pub const KEEP_ALIVE: Duration = Duration::from_secs(2);

/// The longest one request may take, answer included. A node answers within its own request
/// timeout (10 s by default); this bounds the rest.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// How many `NotLeader` redirects and safe retries [`NodeClient::call`] makes.
const MAX_REDIRECTS: usize = 8;

/// Errors of the client.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The client's TLS config could not be built.
    #[error("client certificate: {0}")]
    Certs(#[from] certs::CertError),
    /// QUIC could not connect: the request was not sent.
    #[error("connecting to {addr}: {reason}")]
    Connect {
        /// The node.
        addr: SocketAddr,
        /// Why.
        reason: String,
    },
    /// The request or reply could not be exchanged: the request may or may not have taken
    /// effect.
    #[error("talking to {addr}: {reason}")]
    Io {
        /// The node.
        addr: SocketAddr,
        /// Why.
        reason: String,
    },
    /// The request cannot be sent at all (too large): it did not take effect.
    #[error("the request cannot be sent: {0}")]
    Unsendable(String),
    /// The node answered with a typed failure: the same error an in-process caller gets, or a
    /// refusal of the protocol (`Forbidden`, `BadRequest`).
    #[error("{0}")]
    Remote(RemoteError),
    /// The node answered something this client did not ask for (another kind of body).
    #[error("unexpected reply: {0}")]
    Unexpected(String),
    /// Redirected (or retried) more often than a leader change explains.
    #[error("gave up after {0} NotLeader redirects and retries")]
    TooManyRedirects(usize),
}

impl ClientError {
    /// Whether the request may have taken effect (see [`RemoteError::may_have_taken_effect`]).
    #[must_use]
    pub fn may_have_taken_effect(&self) -> bool {
        match self {
            ClientError::Io { .. } | ClientError::Unexpected(_) => true,
            ClientError::Remote(e) => e.may_have_taken_effect(),
            _ => false,
        }
    }
}

/// Which failures [`NodeClient::call_with`] may send again, by what they say about the
/// request's outcome.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Retries {
    /// Only failures that certainly did not take effect (`NotLeader`, `ProposalDropped`,
    /// `StaleRouting`); an outcome-unknown failure is returned, since sending the request
    /// again could apply it twice. For writes.
    #[default]
    DidNotTakeEffect,
    /// Outcome-unknown failures too (a lost connection, a `Timeout`): applying the request
    /// twice changes nothing. For reads.
    Idempotent,
}

impl Retries {
    /// Whether a request that failed with `error` may be sent again.
    #[must_use]
    pub fn allow(self, error: &ClientError) -> bool {
        match error {
            ClientError::Io { .. } => self == Retries::Idempotent,
            ClientError::Remote(e) if e.may_have_taken_effect() => self == Retries::Idempotent,
            _ => false,
        }
    }
}

/// The pause before the `attempt`-th resend of an outcome-unknown failure: doubling from
/// 100 ms up to 2 s, with up to half of it random, so clients that failed together do not
/// come back together.
fn backoff(attempt: u32) -> Duration {
    let base = Duration::from_millis(100).saturating_mul(1 << attempt.min(5));
    let base = base.min(Duration::from_secs(2));
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let half = u32::try_from(base.as_millis() / 2).unwrap_or(1).max(1);
    base / 2 + Duration::from_millis(u64::from(nanos % half))
}

/// What [`NodeClient::call`] does after a reply.
enum Next {
    Done(ClientReply),
    Redirect(SocketAddr, Option<NodeId>),
    Wait(Duration),
    Fail(RemoteError),
}

/// Reads a reply the way every caller must: done, redirected to the leader, safe to resend,
/// or failed.
fn next_step(reply: ClientReply, asked: SocketAddr) -> Next {
    let Some(failure) = reply.failed() else {
        return Next::Done(reply);
    };
    match failure.to_error() {
        RemoteError::Propose(RequestError::NotLeader { leader, .. }) => {
            match failure.leader_addr.as_deref().map(str::parse::<SocketAddr>) {
                Some(Ok(addr)) if addr != asked => Next::Redirect(addr, leader),
                // No leader known yet, or it names the node just asked: an election is under
                // way; ask again after a moment.
                _ => Next::Wait(Duration::from_millis(200)),
            }
        }
        // It did not take effect (leadership changed under it, or it was routed by a table
        // that just changed): sending it again is safe.
        RemoteError::Propose(
            RequestError::ProposalDropped { .. } | RequestError::StaleRouting { .. },
        ) => Next::Wait(Duration::from_millis(50)),
        // Refused before raft saw it: the node does not hear enough peers yet (it just
        // started, or they are restarting). Safe to resend once they are back.
        RemoteError::Propose(RequestError::QuorumUnreachable { .. }) => {
            Next::Wait(Duration::from_millis(200))
        }
        other => Next::Fail(other),
    }
}

/// Where a node is reached: its address and the server name its certificate must hold.
type Key = (SocketAddr, String);

/// The connection to one node. Its lock is held while dialling, so concurrent callers that
/// find no live connection wait for one dial instead of making one each.
type Slot = Arc<tokio::sync::Mutex<Option<quinn::Connection>>>;

/// A client of the nodes' client protocol, authenticated by a client certificate.
pub struct NodeClient {
    endpoint: quinn::Endpoint,
    client_config: quinn::ClientConfig,
    /// One connection slot per node.
    connections: Mutex<HashMap<Key, Slot>>,
    /// Addresses whose last dial got no handshake, and when it gave up
    /// ([`UNREACHABLE_FOR`]).
    unreachable: Mutex<HashMap<SocketAddr, Instant>>,
}

impl NodeClient {
    /// A client presenting `identity`.
    ///
    /// # Errors
    /// A TLS config or socket that cannot be made.
    pub fn new(identity: &certs::ClientIdentity) -> Result<Self, ClientError> {
        let tls = identity.client_config(&[certs::CLIENT_ALPN])?;
        Self::with_tls(tls)
    }

    /// A client presenting whatever certificate `tls` holds (a test presents a node's, to
    /// prove that nodes are refused).
    ///
    /// # Errors
    /// A TLS config or socket that cannot be made.
    pub fn with_tls(tls: rustls::ClientConfig) -> Result<Self, ClientError> {
        let quic = quinn::crypto::rustls::QuicClientConfig::try_from(tls)
            .map_err(|e| ClientError::Unsendable(format!("TLS config unusable for QUIC: {e}")))?;
        let mut client_config = quinn::ClientConfig::new(Arc::new(quic));
        // Keep-alives hold a connection open between requests, so it is reused rather than
        // timed out; the idle timeout is many keep-alives long, so a stalled CPU on either
        // side does not end a connection that is fine (the node's own idle timeout, the
        // shorter of the two wins, is 30 s by default).
        let mut transport = quinn::TransportConfig::default();
        let idle = quinn::IdleTimeout::try_from(IDLE_TIMEOUT)
            .map_err(|e| ClientError::Unsendable(format!("idle timeout: {e}")))?;
        transport.max_idle_timeout(Some(idle));
        transport.keep_alive_interval(Some(KEEP_ALIVE));
        client_config.transport_config(Arc::new(transport));
        let bind = SocketAddr::from(([0, 0, 0, 0], 0));
        let endpoint = quinn::Endpoint::client(bind).map_err(|e| ClientError::Connect {
            addr: bind,
            reason: e.to_string(),
        })?;
        Ok(Self {
            endpoint,
            client_config,
            connections: Mutex::new(HashMap::new()),
            unreachable: Mutex::new(HashMap::new()),
        })
    }

    /// Sends `request` to the node at `first`, following `NotLeader` redirects and sending it
    /// again when it certainly did not take effect (`ProposalDropped`, `StaleRouting`), and
    /// returns the first reply that is not a failure. An outcome-unknown failure is returned
    /// as it is: see [`NodeClient::call_with`] for requests that may be applied twice.
    ///
    /// # Errors
    /// [`ClientError`]; [`ClientError::Remote`] carries the node's typed failure.
    pub async fn call(
        &self,
        first: SocketAddr,
        node_hint: Option<NodeId>,
        request: &ClientRequest,
    ) -> Result<ClientReply, ClientError> {
        self.call_with(first, node_hint, request, Retries::DidNotTakeEffect)
            .await
    }

    /// [`NodeClient::call`], resending also what `retries` allows: with
    /// [`Retries::Idempotent`], a lost connection or a `Timeout` is sent again (after a backoff
    /// with jitter, on a redialled connection), within the same bound on attempts.
    /// A redirect to a node that gives no handshake sends the request back to `first`; if
    /// that redirects to the same node again, the call ends with its
    /// [`ClientError::Connect`] (not sent): try another node.
    ///
    /// # Errors
    /// As [`NodeClient::call`].
    pub async fn call_with(
        &self,
        first: SocketAddr,
        node_hint: Option<NodeId>,
        request: &ClientRequest,
        retries: Retries,
    ) -> Result<ClientReply, ClientError> {
        let (mut addr, mut server) = (first, node_hint);
        let mut resent = 0;
        // A redirect target that did not answer, and how it failed.
        let mut unreachable: Option<ClientError> = None;
        for _ in 0..MAX_REDIRECTS {
            let reply = match self.request(addr, server, request).await {
                Ok(reply) => reply,
                // A redirect to a node that does not answer (it may just have died): go back
                // to the node we were given, which will know the new leader soon.
                Err(e @ ClientError::Connect { .. }) if addr != first => {
                    unreachable = Some(e);
                    (addr, server) = (first, node_hint);
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
                Err(e) if retries.allow(&e) => {
                    tracing::debug!(%addr, error = %e, "resending an idempotent request");
                    tokio::time::sleep(backoff(resent)).await;
                    resent += 1;
                    continue;
                }
                Err(e) => return Err(e),
            };
            match next_step(reply, addr) {
                Next::Done(reply) => return Ok(reply),
                // Sent to the same node that just did not answer: another dial would cost the
                // connect timeout again. The request was never delivered; the caller may try
                // another node.
                Next::Redirect(leader, _) if matches!(&unreachable, Some(ClientError::Connect { addr, .. }) if *addr == leader) => {
                    if let Some(e) = unreachable.take() {
                        return Err(e);
                    }
                }
                Next::Redirect(leader, id) => (addr, server) = (leader, id),
                Next::Wait(pause) => tokio::time::sleep(pause).await,
                Next::Fail(e) => {
                    let error = ClientError::Remote(e);
                    if !retries.allow(&error) {
                        return Err(error);
                    }
                    tokio::time::sleep(backoff(resent)).await;
                    resent += 1;
                }
            }
        }
        Err(ClientError::TooManyRedirects(MAX_REDIRECTS))
    }

    /// Sends `request` to the node at `addr` only (no redirects) and returns its reply,
    /// failure or not. With `node`, the node's certificate must name it.
    ///
    /// # Errors
    /// [`ClientError::Connect`] (not sent), [`ClientError::Io`] (outcome unknown),
    /// [`ClientError::Unsendable`].
    pub async fn request(
        &self,
        addr: SocketAddr,
        node: Option<NodeId>,
        request: &ClientRequest,
    ) -> Result<ClientReply, ClientError> {
        let bytes = encode(request).map_err(|e| ClientError::Unsendable(e.to_string()))?;
        match tokio::time::timeout(REQUEST_TIMEOUT, self.exchange(addr, node, &bytes)).await {
            Ok(reply) => reply,
            Err(_) => Err(ClientError::Io {
                addr,
                reason: format!("no reply within {REQUEST_TIMEOUT:?}"),
            }),
        }
    }

    async fn exchange(
        &self,
        addr: SocketAddr,
        node: Option<NodeId>,
        request: &[u8],
    ) -> Result<ClientReply, ClientError> {
        let io = |reason: String| ClientError::Io { addr, reason };
        // The server name proves which node answered when the caller knows it; otherwise any
        // node of the cluster will do, so we accept the generic name every node holds.
        let server_name = node.map_or_else(
            || certs::CLUSTER_SERVER_NAME.to_string(),
            certs::node_server_name,
        );
        let key = (addr, server_name);
        let connection = self.connection(&key, None).await?;
        let (mut send, mut recv) = match connection.open_bi().await {
            Ok(streams) => streams,
            // The shared connection was lost since; nothing was sent on it yet, so one fresh
            // connection (dialled once, whoever notices first) may safely carry the request.
            Err(_) => {
                let lost = connection.stable_id();
                let fresh = self.connection(&key, Some(lost)).await?;
                fresh.open_bi().await.map_err(|e| ClientError::Connect {
                    addr,
                    reason: e.to_string(),
                })?
            }
        };
        send.write_all(request)
            .await
            .map_err(|e| io(e.to_string()))?;
        send.finish().map_err(|e| io(e.to_string()))?;
        let reply = recv
            .read_to_end(MAX_MESSAGE_BYTES + 4)
            .await
            .map_err(|e| io(e.to_string()))?;
        decode::<ClientReply>("reply", &reply).map_err(|e| io(e.to_string()))
    }

    /// The live connection to `key`, dialled if there is none or if it is the one (by
    /// `stable_id`) a caller just found lost. Concurrent callers share one dial.
    async fn connection(
        &self,
        key: &Key,
        lost: Option<usize>,
    ) -> Result<quinn::Connection, ClientError> {
        let slot = self
            .connections
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(key.clone())
            .or_default()
            .clone();
        let mut held = slot.lock().await;
        if let Some(connection) = held.as_ref()
            && connection.close_reason().is_none()
            && Some(connection.stable_id()) != lost
        {
            return Ok(connection.clone());
        }
        let connection = self.dial(key).await?;
        *held = Some(connection.clone());
        Ok(connection)
    }

    async fn dial(&self, key: &Key) -> Result<quinn::Connection, ClientError> {
        let addr = key.0;
        let connect = |reason: String| ClientError::Connect { addr, reason };
        let silent_since = self
            .unreachable
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&addr)
            .copied();
        if let Some(since) = silent_since.filter(|t| t.elapsed() < UNREACHABLE_FOR) {
            return Err(connect(format!(
                "gave no handshake to a dial {:?} ago; not dialled again for {UNREACHABLE_FOR:?}",
                since.elapsed()
            )));
        }
        let connecting = self
            .endpoint
            .connect_with(self.client_config.clone(), addr, &key.1)
            .map_err(|e| connect(e.to_string()))?;
        let dialled = tokio::time::timeout(CONNECT_TIMEOUT, connecting).await;
        let mut unreachable = self
            .unreachable
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        match dialled {
            Ok(connection) => {
                unreachable.remove(&addr);
                connection.map_err(|e| connect(e.to_string()))
            }
            Err(_) => {
                unreachable.insert(addr, Instant::now());
                Err(connect(format!("no handshake within {CONNECT_TIMEOUT:?}")))
            }
        }
    }

    /// Closes every connection and waits briefly for the nodes to hear it, so they free their
    /// side at once instead of after an idle timeout.
    pub async fn close(&self) {
        let slots: Vec<Slot> = self
            .connections
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .drain()
            .map(|(_, slot)| slot)
            .collect();
        for slot in slots {
            if let Some(connection) = slot.lock().await.take() {
                connection.close(0u32.into(), b"done");
            }
        }
        let _ = tokio::time::timeout(Duration::from_millis(200), self.endpoint.wait_idle()).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::Failure;
    use routing::GroupId;

    fn failed(error: RequestError, leader_addr: Option<&str>) -> ClientReply {
        let mut failure = Failure::from_error(&error.into());
        failure.leader_addr = leader_addr.map(str::to_string);
        ClientReply::failure(failure)
    }

    #[test]
    fn replies_are_followed_resent_or_returned_by_their_outcome() {
        let asked: SocketAddr = ([127, 0, 0, 1], 7001).into();
        let group = GroupId(4);
        let not_leader = |addr| {
            failed(
                RequestError::NotLeader {
                    group,
                    leader: Some(NodeId(2)),
                },
                addr,
            )
        };
        assert!(matches!(
            next_step(not_leader(Some("127.0.0.1:7002")), asked),
            Next::Redirect(a, Some(NodeId(2))) if a.port() == 7002
        ));
        // Naming the node just asked, or an unreadable address, is a wait, not a loop.
        assert!(matches!(
            next_step(not_leader(Some("127.0.0.1:7001")), asked),
            Next::Wait(_)
        ));
        assert!(matches!(
            next_step(not_leader(Some("nonsense")), asked),
            Next::Wait(_)
        ));
        assert!(matches!(
            next_step(failed(RequestError::ProposalDropped { group }, None), asked),
            Next::Wait(_)
        ));
        assert!(matches!(
            next_step(
                failed(RequestError::QuorumUnreachable { group }, None),
                asked
            ),
            Next::Wait(_)
        ));
        assert!(matches!(
            next_step(failed(RequestError::Timeout { group }, None), asked),
            Next::Fail(RemoteError::Propose(RequestError::Timeout { .. }))
        ));
        assert!(matches!(
            next_step(ClientReply::app(vec![]), asked),
            Next::Done(_)
        ));
    }

    #[test]
    fn only_idempotent_requests_are_resent_after_an_outcome_unknown_failure() {
        let addr: SocketAddr = ([127, 0, 0, 1], 7001).into();
        let lost = ClientError::Io {
            addr,
            reason: "connection lost".into(),
        };
        let timeout = ClientError::Remote(RequestError::Timeout { group: GroupId(1) }.into());
        let not_sent = ClientError::Connect {
            addr,
            reason: "timed out".into(),
        };
        let refused = ClientError::Remote(RemoteError::BadRequest {
            reason: "no".into(),
        });
        for error in [&lost, &timeout] {
            assert!(error.may_have_taken_effect());
            assert!(!Retries::DidNotTakeEffect.allow(error), "{error}");
            assert!(Retries::Idempotent.allow(error), "{error}");
        }
        // Not sent, or refused for good: resending is the caller's choice (another node), not
        // a blind loop on this one.
        for error in [&not_sent, &refused] {
            assert!(!Retries::Idempotent.allow(error), "{error}");
        }
    }

    #[test]
    fn backoff_doubles_to_a_cap_with_jitter_below_the_base() {
        for attempt in 0..10 {
            let pause = backoff(attempt);
            let base = Duration::from_millis(100 << attempt.min(5)).min(Duration::from_secs(2));
            assert!(pause >= base / 2 && pause <= base, "{attempt}: {pause:?}");
        }
    }
}
