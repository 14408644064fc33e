//! [`LocalNetwork`]: nodes of one process joined by channels, a [`NodeTransport`] for running
//! real `Node`s without sockets (tests, examples, benchmarks of the coordinator alone).
//!
//! Envelopes travel as they are, never encoded: every sender is code of this process, so the
//! hostile-peer checks of the wire codec have nothing to guard. What the trust settings mean
//! here: the admission hook and the revocations are checked on every send, at both ends, so a
//! refused or revoked node is cut off at once; there is no TLS, and
//! [`NodeTransport::reload_tls`] says so with [`TransportError::NoTls`].

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, PoisonError, RwLock};

use routing::NodeId;
use rustls::pki_types::CertificateDer;
use tokio::sync::mpsc;
use tokio::sync::mpsc::error::TrySendError;

use crate::quic::admission::{Gate, Verdict};
use crate::stats::Counters;
use crate::{
    ClientConnection, Envelope, Inbound, NodeTransport, PeerAdmission, Revocations, SendError,
    Transport, TransportError, TransportFuture, TransportStats,
};

/// One node's end of a [`LocalNetwork`].
struct Port {
    inbound: mpsc::Sender<Inbound>,
    gate: Gate,
    closed: AtomicBool,
}

/// The nodes of one process, joined by channels. Cheap to clone; clones are the same network.
#[derive(Clone, Default)]
pub struct LocalNetwork {
    ports: Arc<RwLock<HashMap<NodeId, Arc<Port>>>>,
}

impl std::fmt::Debug for LocalNetwork {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let nodes: Vec<NodeId> = self
            .ports
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .keys()
            .copied()
            .collect();
        f.debug_struct("LocalNetwork")
            .field("nodes", &nodes)
            .finish()
    }
}

impl LocalNetwork {
    /// An empty network.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Attaches `node`, replacing an earlier attachment of the same id (a restarted node).
    /// Returns its transport and the channel its [`Inbound`] events arrive on, which holds at
    /// most `queue_len` of them (a full channel refuses sends with [`SendError::QueueFull`]).
    #[must_use]
    pub fn join(
        &self,
        node: NodeId,
        queue_len: usize,
    ) -> (Arc<LocalTransport>, mpsc::Receiver<Inbound>) {
        let (tx, rx) = mpsc::channel(queue_len.max(1));
        let port = Arc::new(Port {
            inbound: tx,
            gate: Gate::default(),
            closed: AtomicBool::new(false),
        });
        let previous = self
            .ports
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(node, port.clone());
        if let Some(previous) = previous {
            previous.closed.store(true, Ordering::SeqCst);
        }
        let transport = LocalTransport {
            id: node,
            port,
            network: self.clone(),
            counters: Counters::default(),
        };
        (Arc::new(transport), rx)
    }

    /// Cuts `node` off, as a machine that crashed or fell behind a partition while its
    /// process runs on: every send to or from it is refused from now on, until it joins
    /// again.
    pub fn disconnect(&self, node: NodeId) {
        if let Some(port) = self.port(node) {
            port.closed.store(true, Ordering::SeqCst);
        }
    }

    /// Puts a node cut off by [`LocalNetwork::disconnect`] back on the network (a partition
    /// that healed); what was sent meanwhile stays lost.
    pub fn reconnect(&self, node: NodeId) {
        if let Some(port) = self.port(node) {
            port.closed.store(false, Ordering::SeqCst);
        }
    }

    fn port(&self, node: NodeId) -> Option<Arc<Port>> {
        self.ports
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&node)
            .cloned()
    }
}

/// A node's transport on a [`LocalNetwork`].
pub struct LocalTransport {
    id: NodeId,
    port: Arc<Port>,
    network: LocalNetwork,
    counters: Counters,
}

impl std::fmt::Debug for LocalTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalTransport")
            .field("node", &self.id)
            .finish()
    }
}

impl LocalTransport {
    /// Counts and returns the refusal of an envelope toward `to`.
    fn refuse(&self, to: NodeId, error: SendError) -> Result<(), SendError> {
        let c = &self.counters;
        let counter = match &error {
            SendError::QueueFull { .. } => &c.dropped_queue_full,
            SendError::UnknownPeer(_) => &c.dropped_unknown_peer,
            _ => &c.dropped_unreachable,
        };
        Counters::add(counter, 1);
        tracing::trace!(node = %self.id, peer = %to, %error, "local send refused");
        Err(error)
    }
}

fn message_count(envelope: &Envelope) -> u64 {
    match envelope {
        Envelope::Raft { messages, .. } => messages.len() as u64,
        Envelope::Heartbeats(batch) => batch.heartbeats.len() as u64,
        Envelope::Snapshot { .. } | Envelope::Forward(_) => 1,
    }
}

impl Transport for LocalTransport {
    fn send(&self, to: NodeId, envelope: Envelope) -> Result<(), SendError> {
        if self.port.closed.load(Ordering::SeqCst) {
            return self.refuse(to, SendError::Shutdown);
        }
        // A link exists only when each end admits the other, as after a QUIC handshake.
        let target = match self.network.port(to) {
            Some(port)
                if to != self.id
                    && !port.closed.load(Ordering::SeqCst)
                    && self.port.gate.verdict(to, None) == Verdict::Admitted
                    && port.gate.verdict(self.id, None) == Verdict::Admitted =>
            {
                port
            }
            _ => return self.refuse(to, SendError::UnknownPeer(to)),
        };
        let messages = message_count(&envelope);
        let snapshot = match &envelope {
            Envelope::Snapshot { group, .. } => Some(*group),
            _ => None,
        };
        let inbound = Inbound::Message {
            from: self.id,
            envelope,
        };
        match target.inbound.try_send(inbound) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => return self.refuse(to, SendError::QueueFull { to }),
            Err(TrySendError::Closed(_)) => return self.refuse(to, SendError::UnknownPeer(to)),
        }
        let c = &self.counters;
        Counters::add_all([(&c.frames_sent, 1), (&c.messages_sent, messages)]);
        if let Some(group) = snapshot {
            Counters::add(&c.snapshots_sent, 1);
            // Delivered into the peer's queue is as far as this network can vouch for.
            let status = Inbound::SnapshotStatus {
                to,
                group,
                delivered: true,
            };
            let _ = self.port.inbound.try_send(status);
        }
        Ok(())
    }

    fn stats(&self) -> TransportStats {
        self.counters.snapshot()
    }
}

impl NodeTransport for LocalTransport {
    /// No socket is bound: the unspecified address, port 0.
    fn local_addr(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0))
    }

    /// Clients connect over QUIC only: always `None`.
    fn take_client_connections(&self) -> Option<mpsc::Receiver<ClientConnection>> {
        None
    }

    fn reload_tls(
        &self,
        _identity: &certs::NodeIdentity,
        _cas: &[CertificateDer<'static>],
    ) -> Result<(), TransportError> {
        Err(TransportError::NoTls {
            transport: "the local in-process network",
        })
    }

    fn set_peer_admission(&self, admission: Option<PeerAdmission>) {
        self.port.gate.set_admission(admission);
    }

    fn set_revocations(&self, revoked: Revocations) {
        self.port.gate.set_revocations(revoked);
    }

    /// Nothing to do: there are no links to drop, and every send asks the gate afresh.
    fn recheck_admission(&self) {}

    fn shutdown(&self) -> TransportFuture<'_> {
        self.port.closed.store(true, Ordering::SeqCst);
        let mut ports = self
            .network
            .ports
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        if ports
            .get(&self.id)
            .is_some_and(|p| Arc::ptr_eq(p, &self.port))
        {
            ports.remove(&self.id);
        }
        Box::pin(std::future::ready(()))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use std::sync::Arc;

    use raft::eraftpb;
    use routing::{GroupId, NodeId};

    use super::*;

    fn raft(group: u64) -> Envelope {
        Envelope::Raft {
            group: GroupId(group),
            messages: vec![eraftpb::Message::default()],
        }
    }

    #[tokio::test]
    async fn envelopes_arrive_with_the_sender_named() {
        let net = LocalNetwork::new();
        let (a, _a_rx) = net.join(NodeId(1), 8);
        let (_b, mut b_rx) = net.join(NodeId(2), 8);
        a.send(NodeId(2), raft(7)).unwrap();
        let got = b_rx.recv().await.unwrap();
        assert_eq!(
            got,
            Inbound::Message {
                from: NodeId(1),
                envelope: raft(7)
            }
        );
        assert_eq!(a.stats().messages_sent, 1);
    }

    #[tokio::test]
    async fn a_full_queue_and_an_absent_peer_are_refused_and_counted() {
        let net = LocalNetwork::new();
        let (a, _a_rx) = net.join(NodeId(1), 8);
        let (_b, _b_rx) = net.join(NodeId(2), 1);
        a.send(NodeId(2), raft(1)).unwrap();
        assert_eq!(
            a.send(NodeId(2), raft(1)),
            Err(SendError::QueueFull { to: NodeId(2) })
        );
        assert_eq!(
            a.send(NodeId(3), raft(1)),
            Err(SendError::UnknownPeer(NodeId(3)))
        );
        let stats = a.stats();
        assert_eq!(
            (stats.dropped_queue_full, stats.dropped_unknown_peer),
            (1, 1)
        );
    }

    #[tokio::test]
    async fn admission_and_revocation_cut_a_node_off_at_either_end() {
        let net = LocalNetwork::new();
        let (a, _a_rx) = net.join(NodeId(1), 8);
        let (b, _b_rx) = net.join(NodeId(2), 8);
        b.set_peer_admission(Some(Arc::new(|id: NodeId| id != NodeId(1))));
        assert_eq!(
            a.send(NodeId(2), raft(1)),
            Err(SendError::UnknownPeer(NodeId(2)))
        );
        b.set_peer_admission(None);
        a.send(NodeId(2), raft(1)).unwrap();
        a.set_revocations(Revocations {
            nodes: [NodeId(2)].into_iter().collect(),
            serials: Default::default(),
        });
        assert_eq!(
            a.send(NodeId(2), raft(1)),
            Err(SendError::UnknownPeer(NodeId(2)))
        );
    }

    #[tokio::test]
    async fn there_is_no_tls_to_reload_and_shutdown_stops_sends() {
        let net = LocalNetwork::new();
        let (a, _a_rx) = net.join(NodeId(1), 8);
        let (b, _b_rx) = net.join(NodeId(2), 8);
        let ca = certs::ClusterCa::generate("test").unwrap();
        let identity = ca.issue_node(NodeId(1), &[]).unwrap();
        assert!(matches!(
            a.reload_tls(&identity, &[]),
            Err(TransportError::NoTls { .. })
        ));
        b.shutdown().await;
        assert_eq!(
            a.send(NodeId(2), raft(1)),
            Err(SendError::UnknownPeer(NodeId(2)))
        );
        a.shutdown().await;
        assert_eq!(a.send(NodeId(2), raft(1)), Err(SendError::Shutdown));
    }
}
