//! One peer: its connection (the single one between the two nodes), its bounded queue and
//! the writer task that drains it (see [`send`](super::send)).

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use quinn::{Connection, VarInt};
use routing::NodeId;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tracing::{Instrument, debug, info, info_span, warn};

use super::admission::{LogLimiter, Verdict};
use super::send::{self, Queue};
use super::{Shared, recv};
use crate::codec::{Encoded, SnapshotTransfer, codes, header_frame};
use crate::stats::Counters;
use crate::wire::{self, StreamKind};
use crate::{Inbound, SendError};

/// What writers see of the connection.
#[derive(Clone, Debug)]
pub(crate) enum ConnState {
    /// No connection yet; one is being set up.
    Connecting,
    /// The connection to write on.
    Up(Connection),
    /// The last dial failed: frames are dropped and reported until the next attempt.
    Down,
}

/// Events for the peer's connection task.
pub(crate) enum PeerEvent {
    /// The writer has frames and needs a connection.
    Want,
    /// The peer dialled us.
    Incoming(Connection),
    /// The lower node confirmed it adopted our dial (connection `stable_id`).
    Confirmed(usize),
    /// A connection ended (`stable_id`).
    Closed(usize),
}

pub(crate) struct Peer {
    pub(crate) id: NodeId,
    state: watch::Sender<ConnState>,
    events: mpsc::UnboundedSender<PeerEvent>,
    /// Frames toward the peer, bounded; drained by its one writer task.
    queue: Arc<Queue>,
    task: tokio::task::AbortHandle,
    writer: tokio::task::AbortHandle,
}

impl Peer {
    pub(crate) fn spawn(shared: &Arc<Shared>, id: NodeId) -> Arc<Self> {
        let (state, _) = watch::channel(ConnState::Connecting);
        let (events, rx) = mpsc::unbounded_channel();
        let span = info_span!("peer", node = %shared.local, peer = %id);
        let task = shared.runtime.spawn(
            connection_task(shared.clone(), id, state.clone(), events.clone(), rx)
                .instrument(span.clone()),
        );
        let queue = Arc::new(Queue::new());
        let writer = shared.runtime.spawn(
            send::writer(
                shared.clone(),
                id,
                queue.clone(),
                state.subscribe(),
                events.clone(),
            )
            .instrument(span),
        );
        Arc::new(Self {
            id,
            state,
            events,
            queue,
            task: task.abort_handle(),
            writer: writer.abort_handle(),
        })
    }

    /// Envelopes and bytes queued toward the peer now.
    pub(crate) fn queued(&self) -> (usize, usize) {
        self.queue.queued()
    }

    pub(crate) fn is_connected(&self) -> bool {
        matches!(*self.state.borrow(), ConnState::Up(_))
    }

    pub(crate) fn incoming(&self, conn: Connection) {
        let _ = self.events.send(PeerEvent::Incoming(conn));
    }

    pub(crate) fn stop(&self) {
        self.stop_with(codes::SHUTDOWN, b"shutdown");
    }

    /// Stops the peer's tasks and closes its connection with `code`.
    pub(crate) fn stop_with(&self, code: u32, reason: &[u8]) {
        self.task.abort();
        self.writer.abort();
        if let ConnState::Up(c) = &*self.state.borrow() {
            c.close(VarInt::from_u32(code), reason);
        }
    }

    /// The connection in use, when connected.
    pub(crate) fn current(&self) -> Option<Connection> {
        match &*self.state.borrow() {
            ConnState::Up(c) => Some(c.clone()),
            _ => None,
        }
    }

    /// Queues encoded frames without blocking.
    pub(crate) fn enqueue(
        self: &Arc<Self>,
        shared: &Arc<Shared>,
        encoded: Encoded,
    ) -> Result<(), SendError> {
        match encoded {
            Encoded::Snapshot(t) => {
                if !self.queue.admit_snapshot(shared.config.peer_queue_len) {
                    Counters::add(&shared.counters.dropped_queue_full, 1);
                    return Err(SendError::QueueFull { to: self.id });
                }
                let span = info_span!("snapshot", peer = %self.id, group = %t.group);
                shared
                    .runtime
                    .spawn(send_snapshot(shared.clone(), self.clone(), t).instrument(span));
                Ok(())
            }
            Encoded::Frames(f) => self.queue.push(shared, self.id, f),
        }
    }

    /// The connection to write on; `None` when the peer is down (the caller drops and
    /// reports).
    async fn connection(&self, rx: &mut watch::Receiver<ConnState>) -> Option<Connection> {
        loop {
            match &*rx.borrow_and_update() {
                ConnState::Up(c) if c.close_reason().is_none() => return Some(c.clone()),
                ConnState::Down => {
                    let _ = self.events.send(PeerEvent::Want);
                    return None;
                }
                _ => {
                    let _ = self.events.send(PeerEvent::Want);
                }
            }
            rx.changed().await.ok()?;
        }
    }
}

/// One snapshot transfer on its own bidirectional stream; reports its fate to the
/// coordinator.
async fn send_snapshot(shared: Arc<Shared>, peer: Arc<Peer>, t: SnapshotTransfer) {
    let mut conn_rx = peer.state.subscribe();
    let delivered = match peer.connection(&mut conn_rx).await {
        Some(conn) => transfer(&shared, &conn, &t).await.unwrap_or_else(|e| {
            warn!(error = %e, "snapshot transfer failed");
            false
        }),
        None => false,
    };
    let c = &shared.counters;
    peer.queue.snapshot_done();
    Counters::add(
        if delivered {
            &c.snapshots_sent
        } else {
            &c.snapshots_failed
        },
        1,
    );
    shared
        .deliver(Inbound::SnapshotStatus {
            to: peer.id,
            group: t.group,
            delivered,
        })
        .await;
}

async fn transfer(
    shared: &Shared,
    conn: &Connection,
    t: &SnapshotTransfer,
) -> Result<bool, String> {
    let c = &shared.counters;
    let (mut send, mut recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
    let _ = send.set_priority(-1);
    Counters::add(&c.streams_opened, 1);
    send.write_all(&t.head).await.map_err(|e| e.to_string())?;
    let mut frames = 1;
    let mut bytes = t.head.len() as u64;
    for chunk in t.chunks(
        shared.config.snapshot_chunk_bytes,
        shared.config.max_frame_bytes,
    ) {
        send.write_all(&chunk).await.map_err(|e| e.to_string())?;
        frames += 1;
        bytes += chunk.len() as u64;
    }
    send.finish().map_err(|e| e.to_string())?;
    Counters::add_all([
        (&c.frames_sent, frames),
        (&c.bytes_sent, bytes),
        (&c.snapshot_frames_sent, frames),
        (&c.snapshot_bytes_sent, bytes),
        (&c.messages_sent, 1),
    ]);
    let answer = recv.read_to_end(64).await.map_err(|e| e.to_string())?;
    let mut dec = wire::FrameDecoder::new(64);
    dec.extend(&answer);
    let body = dec
        .next_frame()
        .map_err(|e| e.to_string())?
        .ok_or("empty answer")?;
    let ack: wire::SnapshotAck =
        wire::decode_body("SnapshotAck", body).map_err(|e| e.to_string())?;
    Ok(ack.delivered)
}

/// Owns the connection to one peer: dials with backoff, applies the "lower NodeId's dial
/// wins" rule, and publishes the connection writers use.
async fn connection_task(
    shared: Arc<Shared>,
    id: NodeId,
    state: watch::Sender<ConnState>,
    events: mpsc::UnboundedSender<PeerEvent>,
    mut rx: mpsc::UnboundedReceiver<PeerEvent>,
) {
    type Dial = Pin<Box<dyn Future<Output = Result<Connection, String>> + Send>>;
    let lower = shared.local < id;
    let min = shared.config.reconnect_backoff_min;
    let max = shared.config.reconnect_backoff_max;
    let mut backoff = min;
    let mut current: Option<Connection> = None;
    // A connection we dialled as the higher node, waiting for the lower node's confirmation.
    let mut pending: Option<Connection> = None;
    let mut dialing: Option<Dial> = None;
    let mut retry_at: Option<Instant> = None;
    let mut wanted = false;
    // Once connected, keep redialling a lost peer even when nothing is queued for it.
    let mut had_connection = false;
    // When the current connection last showed it was alive, and when a dial last replaced it.
    let mut activity = Activity::default();
    let mut replaced_at: Option<Instant> = None;
    let keep_alive = shared.config.keep_alive;

    let replace_log = LogLimiter::default();
    let adopt = |conn: Connection, current: &mut Option<Connection>, had_connection: &mut bool| {
        *had_connection = true;
        Counters::add(&shared.counters.connections_opened, 1);
        info!(remote = %conn.remote_address(), "connected");
        let span =
            info_span!("connection", node = %shared.local, peer = %id, conn = conn.stable_id());
        // Up before the reader starts: whoever sees a message from the peer sees it connected.
        *current = Some(conn.clone());
        state.send_replace(ConnState::Up(conn.clone()));
        shared
            .runtime
            .spawn(recv::drive(shared.clone(), id, conn, events.clone()).instrument(span));
    };
    let dial = |shared: &Arc<Shared>| -> Dial {
        let shared = shared.clone();
        Box::pin(async move {
            let addr = shared
                .book
                .get(id)
                .ok_or_else(|| format!("no address for {id}"))?;
            let connecting = shared
                .endpoint
                .connect_with(
                    shared
                        .client_config
                        .read()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .clone(),
                    addr,
                    &certs::node_server_name(id),
                )
                .map_err(|e| e.to_string())?;
            // A dial to an address nobody answers (a crashed peer, an address it left) would
            // wait out the idle timeout, and while it waits the lower node refuses the
            // peer's own dial: bounded like an incoming handshake, then retried.
            let timeout = shared.config.handshake_timeout;
            let conn = tokio::time::timeout(timeout, connecting)
                .await
                .map_err(|_| format!("no handshake with {addr} within {timeout:?}"))?
                .map_err(|e| e.to_string())?;
            // Hostname verification already proved it; the certificate's id must agree.
            if super::peer_node_id(&conn) != Some(id) {
                conn.close(VarInt::from_u32(codes::NOT_A_NODE), b"wrong node");
                return Err(format!("{addr} is not {id}"));
            }
            if shared.verdict(&conn, id) == Verdict::Revoked {
                Counters::add(&shared.counters.connections_refused_revoked, 1);
                conn.close(VarInt::from_u32(codes::REVOKED), b"revoked");
                return Err(format!("{id}'s certificate is revoked"));
            }
            Ok(conn)
        })
    };

    loop {
        let alive = current.as_ref().is_some_and(|c| c.close_reason().is_none());
        let sleep_until = retry_at.unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
        tokio::select! {
            event = rx.recv() => match event {
                None => return,
                Some(PeerEvent::Want) => {
                    wanted = true;
                    if !alive && dialing.is_none() && pending.is_none() && retry_at.is_none() {
                        state.send_if_modified(|s| if matches!(s, ConnState::Down) { *s = ConnState::Connecting; true } else { false });
                        dialing = Some(dial(&shared));
                    }
                }
                Some(PeerEvent::Incoming(conn)) => {
                    if lower && (alive || dialing.is_some()) {
                        // Our own dial wins.
                        Counters::add(&shared.counters.connections_refused, 1);
                        conn.close(VarInt::from_u32(codes::DUPLICATE_CONNECTION), b"lower node's dial wins");
                        continue;
                    }
                    if !lower && alive {
                        // A dial from the lower id replaces our connection only if that one
                        // went quiet, and not twice within `min_link_replace_interval`: a
                        // holder of the id's certificate cannot keep cutting the real link.
                        let now = Instant::now();
                        let active = current.as_ref().is_some_and(|c| activity.active(c, now, keep_alive));
                        let too_soon = replaced_at.is_some_and(|t| now.duration_since(t) < shared.config.min_link_replace_interval);
                        if active || too_soon {
                            Counters::add_all([
                                (&shared.counters.connections_refused, 1),
                                (&shared.counters.connections_refused_replace, 1),
                            ]);
                            if let Some(suppressed) = replace_log.permit() {
                                warn!(remote = %conn.remote_address(), active, suppressed, "a second connection from this node id: keeping the established one");
                            }
                            conn.close(VarInt::from_u32(codes::LINK_KEPT), b"established link kept");
                            continue;
                        }
                        replaced_at = Some(now);
                    }
                    if !lower {
                        // The lower node's dial wins: drop whatever we had.
                        dialing = None;
                        for old in [current.take(), pending.take()].into_iter().flatten() {
                            old.close(VarInt::from_u32(codes::DUPLICATE_CONNECTION), b"lower node's dial wins");
                        }
                    }
                    retry_at = None;
                    backoff = min;
                    adopt(conn.clone(), &mut current, &mut had_connection);
                    if lower {
                        shared.runtime.spawn(confirm(conn));
                    }
                }
                Some(PeerEvent::Confirmed(sid)) => {
                    if let Some(conn) = pending.take_if(|p| p.stable_id() == sid) {
                        adopt(conn, &mut current, &mut had_connection);
                    }
                }
                Some(PeerEvent::Closed(sid)) => {
                    if current.as_ref().is_some_and(|c| c.stable_id() == sid) {
                        current = None;
                        Counters::add(&shared.counters.connections_closed, 1);
                        // Frames buffered on it may be lost: raft should treat the peer as
                        // unreachable in every group.
                        shared.report(Inbound::Unreachable { to: id, group: None });
                        if shared.book.get(id).is_none() {
                            // It dialled us and we cannot dial it: nothing to keep.
                            debug!("connection lost; no address to redial: forgetting the peer");
                            shared.forget(id);
                            return;
                        }
                        info!("connection lost: redialling");
                        state.send_replace(ConnState::Connecting);
                        if dialing.is_none() && pending.is_none() {
                            retry_at = Some(Instant::now() + backoff);
                            wanted = true;
                        }
                    } else if pending.as_ref().is_some_and(|c| c.stable_id() == sid) {
                        // The lower node refused our dial: its own should arrive; if not,
                        // try again after the backoff.
                        pending = None;
                        retry_at = Some(Instant::now() + backoff);
                    }
                }
            },
            result = async { match dialing.as_mut() { Some(d) => d.await, None => std::future::pending().await } }, if dialing.is_some() => {
                dialing = None;
                match result {
                    Ok(conn) if lower || alive => {
                        if alive {
                            conn.close(VarInt::from_u32(codes::DUPLICATE_CONNECTION), b"already connected");
                        } else {
                            backoff = min;
                            adopt(conn, &mut current, &mut had_connection);
                        }
                    }
                    Ok(conn) => {
                        // Wait for the lower node's confirmation before writing on it.
                        let span = info_span!("connection", node = %shared.local, peer = %id, conn = conn.stable_id());
                        shared.runtime.spawn(recv::drive(shared.clone(), id, conn.clone(), events.clone()).instrument(span));
                        pending = Some(conn);
                        backoff = min;
                    }
                    Err(e) => {
                        warn!(error = %e, retry_in = ?backoff, "dial failed");
                        state.send_replace(ConnState::Down);
                        retry_at = Some(Instant::now() + backoff);
                        backoff = (backoff * 2).min(max);
                    }
                }
            },
            () = tokio::time::sleep_until(sleep_until), if retry_at.is_some() => {
                retry_at = None;
                if (wanted || had_connection) && !alive && dialing.is_none() && pending.is_none() {
                    wanted = false;
                    dialing = Some(dial(&shared));
                }
            },
        }
    }
}

/// When a connection last received datagrams, sampled from quinn's counters: a live peer
/// answers our keep-alives, so a connection with nothing received within two `keep_alive`
/// intervals has gone quiet.
#[derive(Default)]
struct Activity {
    /// The connection sampled, its datagrams received, and when they last grew.
    seen: Option<(usize, u64, Instant)>,
}

impl Activity {
    fn active(&mut self, conn: &Connection, now: Instant, keep_alive: Duration) -> bool {
        let rx = conn.stats().udp_rx.datagrams;
        let at = match self.seen {
            Some((sid, last, at)) if sid == conn.stable_id() && rx == last => at,
            Some((sid, ..)) if sid == conn.stable_id() => now,
            // First look at this connection: it just received its handshake at least; count
            // from when it was adopted is unknown, so from now.
            _ => now,
        };
        self.seen = Some((conn.stable_id(), rx, at));
        now.duration_since(at) < keep_alive * 2
    }
}

/// Tells the higher node we adopted the connection it dialled.
async fn confirm(conn: Connection) {
    if let Ok(mut s) = conn.open_uni().await {
        let _ = s.write_all(&header_frame(StreamKind::Control, 0)).await;
        let _ = s.finish();
    }
}

/// The framed [`wire::SnapshotAck`] a receiver writes back.
pub(crate) fn snapshot_ack(delivered: bool) -> Bytes {
    let mut out = BytesMut::new();
    let _ = wire::encode_frame(&wire::SnapshotAck { delivered }, 64, &mut out);
    out.freeze()
}
