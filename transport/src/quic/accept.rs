//! Incoming connections, from the first packet to a known peer: the half-open budget (with
//! QUIC Retry under load), the handshake timeout, then the split by ALPN into node
//! connections (given to their peer, holding an admission permit) and client connections
//! (held against their own cap, see `clients.rs`).
//!
//! A handshaking connection is offered no streams and a small receive window (see
//! `handshake_transport`): quinn allocates state for every stream a peer may open as soon as
//! it grants them, so granting a node's stream budget to an unknown peer would cost megabytes
//! per half-open handshake. The real budgets are granted once the peer is known.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use quinn::VarInt;
use tracing::{debug, warn};

use super::admission::Verdict;
use super::clients::ClientConnection;
use super::{Shared, negotiated_alpn, peer_chain, peer_node_id};
use crate::codec::codes;
use crate::stats::Counters;

/// One handshake in progress, counted in the `handshakes_in_progress` gauge; gives its
/// slot back when dropped.
struct HalfOpen(Arc<Shared>);

impl HalfOpen {
    fn new(shared: &Arc<Shared>) -> Self {
        Counters::add(&shared.counters.handshakes_in_progress, 1);
        Self(shared.clone())
    }
}

impl Drop for HalfOpen {
    fn drop(&mut self) {
        Counters::sub(&self.0.counters.handshakes_in_progress, 1);
    }
}

/// Accepts connections until the endpoint closes. See the [module docs](self).
pub(super) async fn accept_loop(shared: Arc<Shared>) {
    while let Some(incoming) = shared.endpoint.accept().await {
        let c = &shared.counters;
        let cfg = &shared.config;
        // Only this loop adds to the gauge, so it cannot pass the cap between load and add.
        let open =
            usize::try_from(c.handshakes_in_progress.load(Ordering::Acquire)).unwrap_or(usize::MAX);
        if open >= cfg.max_half_open {
            Counters::add_all([
                (&c.connections_refused, 1),
                (&c.handshakes_refused_half_open, 1),
            ]);
            debug!(remote = %incoming.remote_address(), open, "max_half_open reached: refusing");
            incoming.refuse();
            continue;
        }
        if open >= cfg.retry_half_open_above
            && !incoming.remote_address_validated()
            && incoming.may_retry()
        {
            // The client comes back with a token that proves its address; it then counts
            // as validated and gets a slot (if one is free).
            Counters::add(&c.handshakes_retried, 1);
            if let Err(e) = incoming.retry() {
                e.into_incoming().ignore();
            }
            continue;
        }
        let Ok(permit) = shared.admission.clone().try_acquire_owned() else {
            Counters::add_all([
                (&c.connections_refused, 1),
                (&c.connections_refused_limit, 1),
            ]);
            debug!(remote = %incoming.remote_address(), "max_incoming_connections reached: refusing");
            incoming.refuse();
            continue;
        };
        let slot = HalfOpen::new(&shared);
        let shared = shared.clone();
        tokio::spawn(async move {
            let remote = incoming.remote_address();
            let refused = |why: &dyn std::fmt::Display| {
                Counters::add(&shared.counters.connections_refused, 1);
                debug!(%remote, error = %why, "handshake failed");
            };
            let failed = |why: &dyn std::fmt::Display| {
                Counters::add(&shared.counters.connections_refused_handshake, 1);
                refused(why);
            };
            let connecting = match incoming.accept() {
                Ok(connecting) => connecting,
                Err(e) => return failed(&e),
            };
            // Dropping an unfinished handshake closes it: its state goes with it.
            let conn = match tokio::time::timeout(shared.config.handshake_timeout, connecting).await
            {
                Ok(Ok(conn)) => conn,
                Ok(Err(e)) => return failed(&e),
                Err(_) => {
                    Counters::add(&shared.counters.handshakes_timed_out, 1);
                    return refused(&"handshake timed out");
                }
            };
            drop(slot);
            if negotiated_alpn(&conn).as_deref() == Some(certs::CLIENT_ALPN) {
                // Only offered with `accept_clients`: rustls refuses it otherwise. Clients
                // have their own cap; the node permit ends here.
                drop(permit);
                hand_over_client(&shared, conn);
                return;
            }
            match peer_node_id(&conn) {
                Some(id) if id != shared.local => match shared.verdict(&conn, id) {
                    Verdict::Admitted => {
                        grant_node_budgets(&shared, &conn);
                        shared.peer(id).incoming(conn.clone());
                    }
                    // No peer state for it: nothing will redial it.
                    refused => shared.refuse_node(&conn, id, refused),
                },
                _ => {
                    Counters::add(&shared.counters.connections_refused, 1);
                    warn!(%remote, "peer certificate names no other node: closing");
                    conn.close(VarInt::from_u32(codes::NOT_A_NODE), b"not a node");
                }
            }
            // A node connection keeps its permit until it ends (its reader task holds it
            // open meanwhile, so waiting here keeps nothing alive).
            conn.closed().await;
            drop(permit);
        });
    }
}

/// The stream and window budgets of a node connection, granted once its certificate says it
/// is one.
pub(super) fn grant_node_budgets(shared: &Shared, conn: &quinn::Connection) {
    let cfg = &shared.config;
    conn.set_max_concurrent_uni_streams(VarInt::from_u32(cfg.max_concurrent_uni_streams));
    conn.set_max_concurrent_bi_streams(VarInt::from_u32(cfg.max_concurrent_bidi_streams));
    conn.set_receive_window(VarInt::from_u32(cfg.connection_receive_window));
}

/// Sends a client connection to the service, or closes it when there is none, it is busy,
/// or `max_client_connections` are held.
fn hand_over_client(shared: &Arc<Shared>, conn: quinn::Connection) {
    let c = &shared.counters;
    let remote = conn.remote_address();
    let name = match peer_chain(&conn).map(|chain| certs::peer_identity(&chain)) {
        Some(Ok(certs::PeerIdentity::Client(name))) => name,
        Some(Ok(certs::PeerIdentity::Node(id))) => format!("node-{}", id.get()),
        _ => {
            Counters::add(&c.connections_refused, 1);
            warn!(%remote, "client certificate names nobody: closing");
            conn.close(VarInt::from_u32(codes::NOT_A_NODE), b"no identity");
            return;
        }
    };
    let Some(clients) = shared.clients.as_ref() else {
        Counters::add(&c.connections_refused, 1);
        conn.close(VarInt::from_u32(codes::NOT_A_NODE), b"clients not served");
        return;
    };
    let Ok(held) = shared.client_slots.clone().try_acquire_owned() else {
        Counters::add_all([
            (&c.connections_refused, 1),
            (&c.client_connections_refused_limit, 1),
        ]);
        debug!(%remote, client = %name, "max_client_connections reached: closing");
        conn.close(VarInt::from_u32(codes::CLIENTS_BUSY), b"too many clients");
        return;
    };
    // Count before the hand-over: once the service holds the connection it may read the
    // stats, and they must already include it.
    match clients.try_reserve() {
        Ok(permit) => {
            Counters::add(&c.client_connections, 1);
            let cfg = &shared.config;
            conn.set_max_concurrent_bi_streams(VarInt::from_u32(cfg.max_client_requests));
            conn.set_receive_window(VarInt::from_u32(cfg.client_receive_window));
            // The slot is held until the connection ends, whoever holds it.
            let watched = conn.clone();
            tokio::spawn(async move {
                watched.closed().await;
                drop(held);
            });
            permit.send(ClientConnection::new(name, conn, shared));
        }
        Err(_) => {
            Counters::add_all([
                (&c.connections_refused, 1),
                (&c.client_connections_refused_busy, 1),
            ]);
            warn!(%remote, client = %name, "client queue full or not taken: closing");
            conn.close(VarInt::from_u32(codes::CLIENTS_BUSY), b"busy");
        }
    }
}
