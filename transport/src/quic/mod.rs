//! The QUIC transport: one quinn endpoint per node that both accepts and dials, one
//! connection per pair of nodes, one stream per raft group.
//!
//! # Connections: one per pair of nodes
//! Both nodes may dial. The connection dialled by the **lower** NodeId wins:
//! - the higher node adopts every connection the lower one dials, closing any other it had;
//! - the lower node adopts a connection the higher one dialled only when it has none and is
//!   not dialling itself (it closes it otherwise with [`codes::DUPLICATE_CONNECTION`]), and
//!   then says so by opening a header-only [`StreamKind::Control`] stream;
//! - the higher node writes on a connection it dialled only after that confirmation.
//!
//! So a simultaneous dial never loses or reorders a frame: nothing is written on a
//! connection before both sides agree to keep it.
//!
//! # Head-of-line blocking
//! Every peer has one bounded queue ([`TransportConfig::peer_queue_len`],
//! [`TransportConfig::peer_queue_bytes`]) with a bound per stream within it
//! ([`TransportConfig::stream_queue_len`]), and one writer task that owns all the streams
//! toward the peer; `send` never waits. The writer never waits on a stream either: it polls
//! each write once, and a stream out of flow-control credit keeps its frames and is woken by
//! quinn when credit returns. So a stalled group holds only its own frames: its bound fills,
//! `send` refuses its envelopes with [`SendError::QueueFull`], and every other group keeps
//! moving. On the receiving side a fixed number of reader tasks per connection
//! ([`TransportConfig::readers_per_connection`]) share its streams, each stream read by one
//! of them when it has data (`recv.rs`). Heartbeats get a higher stream priority than raft data and
//! snapshots a lower one; so does the peer's forward stream (requests a follower forwards to
//! a leader, and the replies: small, and a caller waits on each), bounded like any stream.
//!
//! # Clients on the same endpoint
//! With [`TransportConfig::accept_clients`] the endpoint also offers
//! [`certs::CLIENT_ALPN`]. The negotiated ALPN, not the certificate, picks the path: a
//! connection on the client ALPN is handed over as a [`ClientConnection`] (see
//! [`QuicTransport::take_client_connections`]), one on the raft ALPN goes to its peer as
//! always and must carry a node certificate.
//!
//! # Budgets against hostile peers and clients
//! Handshakes are budgeted before anyone is known (`accept.rs`: half-open cap, QUIC Retry
//! under load, handshake timeout, no streams granted until the certificate is read); a node
//! id is then admitted or refused (`admission.rs`: the embedder's hook and the revocations);
//! an established, recently active link is never replaced by another dial from the same id;
//! clients have their own caps (`clients.rs`); received frames are counted before they are
//! decoded (`limits.rs`) and unfinished ones are held within a per-connection budget for a
//! bounded time (`recv.rs`).
//!
//! # Where the rest lives
//! Quinn's transport and TLS configs are built from ours in `quinn_config.rs`; what a
//! finished handshake says about the other side (ALPN, certificate chain, NodeId) is read in
//! `handshake.rs`; the per-peer writer is `send.rs`, the readers `recv.rs`.
//!
//! [`codes::DUPLICATE_CONNECTION`]: crate::codes::DUPLICATE_CONNECTION
//! [`StreamKind::Control`]: crate::wire::StreamKind::Control

mod accept;
pub(crate) mod admission;
mod clients;
mod handshake;
mod peer;
mod quinn_config;
mod recv;
mod send;

pub use admission::{PeerAdmission, Revocations};
pub use clients::{ClientConnection, ClientRequest, ClientRequestError, IncomingRequest};

use std::collections::HashMap;
use std::hash::BuildHasherDefault;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock, RwLockReadGuard, Weak};
use std::time::Duration;

use quinn::{Endpoint, VarInt};
use routing::NodeId;
use tokio::sync::{Semaphore, mpsc};
use tracing::{Instrument, info_span};

use crate::budget::ByteBudget;
use crate::codec::{self, codes};
use crate::limits::RepeatedCaps;
use crate::stats::Counters;
use crate::{
    AddressBook, ConfigError, Envelope, GroupFilter, Inbound, NodeTransport, SendError, Transport,
    TransportConfig, TransportFuture, TransportStats,
};

use handshake::peer_chain;
// The accept loop and the dialler reach these through here.
use handshake::{negotiated_alpn, peer_node_id};
use peer::Peer;
use quinn_config::endpoint_configs;
pub use quinn_config::quinn_configs;

/// Why a transport could not start, or refused a change of its TLS settings.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The node identity could not produce TLS configs.
    #[error("TLS config from the node identity: {0}")]
    Certs(#[from] certs::CertError),
    /// rustls' config is unusable by QUIC (it needs TLS 1.3 with an initial cipher suite).
    #[error("TLS config unusable for QUIC: {0}")]
    Quic(String),
    /// `reload_tls` was given another node's identity.
    #[error("the new identity is node {now}, this transport is node {was}")]
    IdentityChanged {
        /// This transport's node id.
        was: NodeId,
        /// The id of the identity offered.
        now: NodeId,
    },
    /// The transport carries no TLS (the in-process network): there is no certificate to
    /// reload. Reload certificates only on a node that runs over QUIC.
    #[error("this transport has no TLS: {transport} cannot reload certificates")]
    NoTls {
        /// Which transport was asked.
        transport: &'static str,
    },
    /// The UDP socket could not be bound.
    #[error("binding {addr}: {source}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
}

/// The endpoint's peers by id (ids we accept ourselves: the Fx hash is enough).
type PeerMap = HashMap<NodeId, Arc<Peer>, BuildHasherDefault<send::FxHasher>>;

/// State shared by the endpoint's tasks.
pub(crate) struct Shared {
    pub(crate) local: NodeId,
    pub(crate) config: TransportConfig,
    pub(crate) endpoint: Endpoint,
    /// What this node dials with; replaced by [`QuicTransport::reload_tls`].
    pub(crate) client_config: RwLock<quinn::ClientConfig>,
    pub(crate) book: AddressBook,
    pub(crate) known_groups: GroupFilter,
    pub(crate) counters: Counters,
    /// Caps on repeated fields, for frames sent and received.
    pub(crate) caps: RepeatedCaps,
    pub(crate) inbound: mpsc::Sender<Inbound>,
    /// Read on every `send`; written only when a peer is first used or at shutdown.
    peers: RwLock<PeerMap>,
    pub(crate) runtime: tokio::runtime::Handle,
    pub(crate) closing: AtomicBool,
    /// Where accepted client connections go; `None` unless `accept_clients`.
    pub(crate) clients: Option<mpsc::Sender<ClientConnection>>,
    /// One permit per incoming connection held or being handshaken
    /// ([`TransportConfig::max_incoming_connections`]).
    admission: Arc<Semaphore>,
    /// The admission hook and the revocations, checked after every handshake.
    pub(crate) gate: admission::Gate,
    /// One permit per client connection held ([`TransportConfig::max_client_connections`]).
    client_slots: Arc<Semaphore>,
    /// Bytes of client requests being read or answered, all clients together
    /// ([`TransportConfig::clients_buffered_bytes`]).
    client_bytes: Arc<Semaphore>,
    /// Each client identity's budget of request bytes
    /// ([`TransportConfig::client_buffered_bytes`]), shared by its connections while any lives.
    client_budgets: Mutex<HashMap<String, Weak<Semaphore>>>,
    /// Bytes all peers' unfinished snapshot transfers hold
    /// ([`TransportConfig::snapshot_receive_bytes_per_node`]); each connection adds its own
    /// budget under it.
    pub(crate) snapshot_bytes: Arc<ByteBudget>,
}

impl Shared {
    /// The request-byte budget of client `name`, shared by all its connections: opening more
    /// connections with one certificate buys no more memory.
    pub(crate) fn client_budget(&self, name: &str) -> Arc<Semaphore> {
        let mut budgets = self
            .client_budgets
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(budget) = budgets.get(name).and_then(Weak::upgrade) {
            return budget;
        }
        // Forget identities with no connection left, before the map could grow past the
        // client connection cap.
        if budgets.len() >= self.config.max_client_connections {
            budgets.retain(|_, budget| budget.strong_count() > 0);
        }
        let budget = Arc::new(Semaphore::new(self.config.client_buffered_bytes));
        budgets.insert(name.to_string(), Arc::downgrade(&budget));
        budget
    }

    /// The peer's state, created (with its connection task) on first use.
    pub(crate) fn peer(self: &Arc<Self>, id: NodeId) -> Arc<Peer> {
        let mut peers = self.peers.write().unwrap_or_else(PoisonError::into_inner);
        peers
            .entry(id)
            .or_insert_with(|| Peer::spawn(self, id))
            .clone()
    }

    /// Drops the peer's state and tasks (closing its connection with `code`): nothing
    /// redials it until it is used again.
    pub(crate) fn forget_with(&self, id: NodeId, code: u32, reason: &[u8]) {
        let peer = self
            .peers
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&id);
        if let Some(peer) = peer {
            peer.stop_with(code, reason);
        }
    }

    /// [`Shared::forget_with`] for a peer that is simply gone.
    pub(crate) fn forget(&self, id: NodeId) {
        self.forget_with(id, codes::SHUTDOWN, b"forgotten");
    }

    /// The admission verdict for a connection whose certificate names `id`.
    pub(crate) fn verdict(&self, conn: &quinn::Connection, id: NodeId) -> admission::Verdict {
        let serial = peer_chain(conn).and_then(|chain| certs::leaf_serial(&chain).ok());
        self.gate.verdict(id, serial.as_deref())
    }

    /// Closes a node connection the gate refused, counts and logs (rate-limited) why.
    pub(crate) fn refuse_node(&self, conn: &quinn::Connection, id: NodeId, v: admission::Verdict) {
        let c = &self.counters;
        let (counter, code, reason): (_, _, &[u8]) = match v {
            admission::Verdict::Revoked => {
                (&c.connections_refused_revoked, codes::REVOKED, b"revoked")
            }
            _ => (
                &c.connections_refused_not_admitted,
                codes::NOT_ADMITTED,
                b"not admitted",
            ),
        };
        Counters::add_all([(&c.connections_refused, 1), (counter, 1)]);
        self.gate.log_refusal(id, v);
        conn.close(VarInt::from_u32(code), reason);
    }

    /// Closes and forgets every peer the gate now refuses.
    fn recheck_peers(&self) {
        let peers: Vec<(NodeId, Option<quinn::Connection>)> = self
            .peers()
            .iter()
            .map(|(id, p)| (*id, p.current()))
            .collect();
        for (id, conn) in peers {
            let v = match &conn {
                Some(conn) => self.verdict(conn, id),
                None => self.gate.verdict(id, None),
            };
            if v != admission::Verdict::Admitted {
                if let Some(conn) = &conn {
                    self.refuse_node(conn, id, v);
                }
                let code = if v == admission::Verdict::Revoked {
                    codes::REVOKED
                } else {
                    codes::NOT_ADMITTED
                };
                self.forget_with(id, code, b"refused");
            }
        }
    }

    fn peers(&self) -> RwLockReadGuard<'_, PeerMap> {
        self.peers.read().unwrap_or_else(PoisonError::into_inner)
    }

    /// Hands an event to the coordinator; waits when its queue is full (backpressure).
    pub(crate) async fn deliver(&self, event: Inbound) {
        // The receiver is gone only when the node is shutting down.
        let _ = self.inbound.send(event).await;
    }

    /// Reports lost messages without ever blocking a writer.
    pub(crate) fn report(&self, event: Inbound) {
        let _ = self.inbound.try_send(event);
    }
}

/// A node's QUIC endpoint carrying raft traffic: one stream per group per peer, a heartbeat
/// stream per peer, snapshots on streams of their own, client connections on their own ALPN.
pub struct QuicTransport {
    shared: Arc<Shared>,
    local_addr: SocketAddr,
    clients: Mutex<Option<mpsc::Receiver<ClientConnection>>>,
}

impl QuicTransport {
    /// Binds `listen` and starts accepting peers. Returns the transport and the channel of
    /// [`Inbound`] events for the coordinator.
    ///
    /// # Errors
    /// [`TransportError`] for an invalid config, an unusable identity, or a failed bind.
    pub async fn bind(
        listen: SocketAddr,
        identity: &certs::NodeIdentity,
        config: TransportConfig,
        peers: AddressBook,
        known_groups: GroupFilter,
    ) -> Result<(Self, mpsc::Receiver<Inbound>), TransportError> {
        config.validate()?;
        let (server, client) =
            endpoint_configs(identity, &config, std::slice::from_ref(identity.ca()))?;
        let bind_error = |source| TransportError::Bind {
            addr: listen,
            source,
        };
        let socket = std::net::UdpSocket::bind(listen).map_err(bind_error)?;
        let endpoint = Endpoint::new(
            quinn_config::endpoint_config(identity)?,
            Some(server),
            socket,
            Arc::new(quinn::TokioRuntime),
        )
        .map_err(bind_error)?;
        let local_addr = endpoint
            .local_addr()
            .map_err(|source| TransportError::Bind {
                addr: listen,
                source,
            })?;
        let (tx, rx) = mpsc::channel(config.inbound_queue_len);
        let config_max_incoming = config.max_incoming_connections;
        let caps = RepeatedCaps::from_config(&config);
        let max_clients = config.max_client_connections;
        let client_bytes = config.clients_buffered_bytes.min(Semaphore::MAX_PERMITS);
        let snapshot_bytes = config.snapshot_receive_bytes_per_node;
        let (clients_tx, clients_rx) = if config.accept_clients {
            let (tx, rx) = mpsc::channel(config.client_queue_len);
            (Some(tx), Some(rx))
        } else {
            (None, None)
        };
        let shared = Arc::new(Shared {
            local: identity.node_id(),
            config,
            endpoint: endpoint.clone(),
            client_config: RwLock::new(client),
            book: peers,
            known_groups,
            counters: Counters::default(),
            caps,
            inbound: tx,
            peers: RwLock::default(),
            runtime: tokio::runtime::Handle::current(),
            closing: AtomicBool::new(false),
            clients: clients_tx,
            admission: Arc::new(Semaphore::new(config_max_incoming)),
            gate: admission::Gate::default(),
            client_slots: Arc::new(Semaphore::new(max_clients)),
            client_bytes: Arc::new(Semaphore::new(client_bytes)),
            client_budgets: Mutex::default(),
            snapshot_bytes: ByteBudget::new(snapshot_bytes),
        });
        let span = info_span!("node", node = %shared.local, %local_addr);
        tokio::spawn(accept::accept_loop(shared.clone()).instrument(span));
        let transport = Self {
            shared,
            local_addr,
            clients: Mutex::new(clients_rx),
        };
        Ok((transport, rx))
    }

    /// The client connections this endpoint accepts (ALPN [`certs::CLIENT_ALPN`]), in the
    /// order their handshakes completed. `Some` once, and only when the config has
    /// [`TransportConfig::accept_clients`]; `None` otherwise or when already taken.
    ///
    /// Take it early and keep draining it: while it holds
    /// [`TransportConfig::client_queue_len`] connections, new clients are closed with
    /// [`codes::CLIENTS_BUSY`](crate::codes::CLIENTS_BUSY).
    #[must_use]
    pub fn take_client_connections(&self) -> Option<mpsc::Receiver<ClientConnection>> {
        self.clients
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
    }

    /// The bound address (useful after binding port 0).
    #[must_use]
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// This node's id, from its certificate.
    #[must_use]
    pub fn node_id(&self) -> NodeId {
        self.shared.local
    }

    /// The quinn endpoint, so the node can serve other ALPNs on the same port.
    #[must_use]
    pub fn endpoint(&self) -> &Endpoint {
        &self.shared.endpoint
    }

    /// Peers with an established connection right now.
    #[must_use]
    pub fn connected_peers(&self) -> Vec<NodeId> {
        let mut up: Vec<NodeId> = self
            .shared
            .peers()
            .values()
            .filter(|p| p.is_connected())
            .map(|p| p.id)
            .collect();
        up.sort_unstable();
        up
    }

    /// Replaces this node's certificate, key and trusted CAs without a restart: new
    /// handshakes, accepted and dialled, use them; established connections carry on (revoke
    /// what must not, with [`QuicTransport::set_revocations`]). `cas` is the whole trusted
    /// bundle: during a CA rollover the old and the new CA, so peers of either are accepted
    /// and dialled. The identity must be this node's (same node id).
    ///
    /// # Errors
    /// [`TransportError::IdentityChanged`] for another node's identity, [`TransportError`]
    /// when the certificates cannot make TLS configs; the old configs then stay.
    pub fn reload_tls(
        &self,
        identity: &certs::NodeIdentity,
        cas: &[rustls::pki_types::CertificateDer<'static>],
    ) -> Result<(), TransportError> {
        if identity.node_id() != self.shared.local {
            return Err(TransportError::IdentityChanged {
                was: self.shared.local,
                now: identity.node_id(),
            });
        }
        let (server, client) = endpoint_configs(identity, &self.shared.config, cas)?;
        self.shared.endpoint.set_server_config(Some(server));
        *self
            .shared
            .client_config
            .write()
            .unwrap_or_else(PoisonError::into_inner) = client;
        Ok(())
    }

    /// Installs the hook that decides which node ids may connect (`None`: all, the default).
    /// It is consulted after every handshake with the id from the peer's certificate: a
    /// connection from an id it refuses is closed with
    /// [`codes::NOT_ADMITTED`](crate::codes::NOT_ADMITTED), counted in
    /// `connections_refused_not_admitted`, logged at most once per 10 s, and leaves no peer
    /// state (nothing redials it). Peers already known that it refuses are closed and
    /// forgotten now; call [`QuicTransport::recheck_admission`] when the answers of an
    /// installed hook change (membership or placement changed).
    pub fn set_peer_admission(&self, admission: Option<PeerAdmission>) {
        self.shared.gate.set_admission(admission);
        self.shared.recheck_peers();
    }

    /// Applies the admission hook and the revocations again to every known peer, closing and
    /// forgetting those they now refuse.
    pub fn recheck_admission(&self) {
        self.shared.recheck_peers();
    }

    /// Replaces the set of revoked node ids and certificate serials. Enforced after every
    /// handshake, accepted or dialled (closed with [`codes::REVOKED`](crate::codes::REVOKED),
    /// counted in `connections_refused_revoked`), on `send` (refused as
    /// [`SendError::UnknownPeer`]), and on live connections now: those of a revoked id or
    /// serial are closed and their peers forgotten.
    pub fn set_revocations(&self, revoked: Revocations) {
        self.shared.gate.set_revocations(revoked);
        self.shared.recheck_peers();
    }

    /// Closes every connection and the endpoint; `send` fails with [`SendError::Shutdown`]
    /// from now on. Waits (up to a second) for peers to be told, then releases the bound port
    /// even while other handles of the transport live.
    pub async fn shutdown(&self) {
        self.shared.closing.store(true, Ordering::SeqCst);
        self.shared
            .endpoint
            .close(VarInt::from_u32(codes::SHUTDOWN), b"shutdown");
        let peers: Vec<Arc<Peer>> = self
            .shared
            .peers
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .drain()
            .map(|(_, p)| p)
            .collect();
        for p in peers {
            p.stop();
        }
        let _ =
            tokio::time::timeout(Duration::from_secs(1), self.shared.endpoint.wait_idle()).await;
        self.release_port().await;
    }

    /// Gives the bound port back, while handles of the endpoint live on (a node restarted in
    /// the same process binds it again at once). quinn keeps its socket while any handle of
    /// the endpoint lives, and the socket it replaces on a rebind until traffic arrives on
    /// the new one: rebinding twice onto throwaway loopback sockets lets go of it. Closed
    /// connections still hold it until the tasks that own them notice the close: waits for
    /// that (up to a second), by binding the port itself.
    async fn release_port(&self) {
        let Ok(addr) = self.shared.endpoint.local_addr() else {
            return;
        };
        for _ in 0..2 {
            let spare = std::net::UdpSocket::bind((std::net::Ipv4Addr::LOCALHOST, 0))
                .and_then(|socket| self.shared.endpoint.rebind(socket));
            if let Err(error) = spare {
                tracing::debug!(%error, "cannot rebind the closed endpoint; its port is released once every handle is gone");
                return;
            }
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(1);
        while std::net::UdpSocket::bind(addr).is_err() {
            if tokio::time::Instant::now() >= deadline {
                tracing::debug!(%addr, "the closed endpoint's port is still held");
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

impl Transport for QuicTransport {
    fn send(&self, to: NodeId, envelope: Envelope) -> Result<(), SendError> {
        let shared = &self.shared;
        let c = &shared.counters;
        if shared.closing.load(Ordering::Relaxed) {
            return Err(SendError::Shutdown);
        }
        // A peer already known is one shared lock, held while its frames are queued (no
        // reference count to touch); the address book is asked only for a new one.
        {
            let peers = shared.peers();
            if let Some(peer) = peers.get(&to) {
                let encoded = codec::encode(
                    shared.local,
                    envelope,
                    shared.config.max_frame_bytes,
                    &shared.caps,
                )?;
                return peer.enqueue(shared, encoded);
            }
        }
        if to == shared.local
            || shared.book.get(to).is_none()
            || shared.gate.verdict(to, None) == admission::Verdict::Revoked
        {
            Counters::add(&c.dropped_unknown_peer, 1);
            return Err(SendError::UnknownPeer(to));
        }
        let encoded = codec::encode(
            shared.local,
            envelope,
            shared.config.max_frame_bytes,
            &shared.caps,
        )?;
        shared.peer(to).enqueue(shared, encoded)
    }

    fn stats(&self) -> TransportStats {
        let mut stats = self.shared.counters.snapshot();
        // The queue gauges live with each peer's queue, under the lock `send` takes anyway.
        for peer in self.shared.peers().values() {
            let (envelopes, bytes) = peer.queued();
            stats.queued_envelopes += envelopes as u64;
            stats.queued_bytes += bytes as u64;
        }
        stats
    }

    fn peer_links(&self) -> Vec<(NodeId, bool)> {
        let mut links: Vec<(NodeId, bool)> = self
            .shared
            .peers()
            .values()
            .map(|p| (p.id, p.is_connected()))
            .collect();
        links.sort_unstable();
        links
    }
}

impl NodeTransport for QuicTransport {
    fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    fn take_client_connections(&self) -> Option<mpsc::Receiver<ClientConnection>> {
        QuicTransport::take_client_connections(self)
    }

    fn reload_tls(
        &self,
        identity: &certs::NodeIdentity,
        cas: &[rustls::pki_types::CertificateDer<'static>],
    ) -> Result<(), TransportError> {
        QuicTransport::reload_tls(self, identity, cas)
    }

    fn set_peer_admission(&self, admission: Option<PeerAdmission>) {
        QuicTransport::set_peer_admission(self, admission);
    }

    fn set_revocations(&self, revoked: Revocations) {
        QuicTransport::set_revocations(self, revoked);
    }

    fn recheck_admission(&self) {
        QuicTransport::recheck_admission(self);
    }

    fn shutdown(&self) -> TransportFuture<'_> {
        Box::pin(QuicTransport::shutdown(self))
    }
}

impl Drop for QuicTransport {
    fn drop(&mut self) {
        self.shared.closing.store(true, Ordering::SeqCst);
        self.shared
            .endpoint
            .close(VarInt::from_u32(codes::SHUTDOWN), b"dropped");
        for p in self.shared.peers().values() {
            p.stop();
        }
    }
}
