//! [`TransportConfig`]: every limit of the transport, with documented, safe defaults, checked
//! once at start-up by [`TransportConfig::validate`].

use std::time::Duration;

/// A configuration value that cannot work.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
#[error("invalid transport config: {field}: {reason}")]
pub struct ConfigError {
    /// The field at fault.
    pub field: &'static str,
    /// Why, and what would be accepted.
    pub reason: String,
}

/// Limits and timings of the transport. Build with `TransportConfig::default()` and the
/// chainable setters; [`TransportConfig::validate`] runs when a transport is bound.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TransportConfig {
    /// Largest frame body accepted or sent (default 16 MiB). Longer frames reset their stream.
    pub max_frame_bytes: usize,
    /// Frames queued toward one peer across all its streams (default 65 536). When full,
    /// `send` fails with `QueueFull` instead of blocking or growing memory.
    pub peer_queue_len: usize,
    /// Bytes of encoded frames queued toward one peer across all its streams (default 64 MiB;
    /// at least `max_frame_bytes`). An envelope is refused with `QueueFull` while this much is
    /// queued, so a peer that stops reading costs at most this much memory (plus one
    /// envelope), whatever the size of its messages.
    pub peer_queue_bytes: usize,
    /// Frames queued on one stream (one group's raft stream, the heartbeat stream) (default
    /// 1 024), so one stalled group cannot fill the whole peer queue.
    pub stream_queue_len: usize,
    /// Capacity of the channel of [`crate::Inbound`] events to the coordinator (default 65 536).
    /// When full, stream readers wait: backpressure reaches the sender through flow control.
    pub inbound_queue_len: usize,
    /// Tasks reading one connection's group and heartbeat streams (default 1, at most 64).
    /// Each stream is read by one of them (assigned in turn as streams open), so a group's
    /// messages stay in order; more than one lets the decoding of one busy peer's traffic use
    /// more than one core. The count never grows with the number of groups. Raise it when a
    /// single peer's traffic keeps a core busy: on 2 cores, 2 readers gave the transport bench
    /// (one peer, 1024 groups) ~5% more messages/s, but cost the 3-node cluster bench (6
    /// connections per process) ~10% of its proposals/s.
    pub readers_per_connection: usize,
    /// Concurrent unidirectional streams a peer may open (default 16 384): one per group it
    /// shares with this node, and they stay open. The coordinator's `Node::start` raises it
    /// to its routing table's group count plus a little headroom.
    pub max_concurrent_uni_streams: u32,
    /// Concurrent bidirectional streams a peer may open (default 256): one per snapshot
    /// transfer in flight.
    pub max_concurrent_bidi_streams: u32,
    /// Bytes a peer may send on one stream before it is read (default 1 MiB).
    pub stream_receive_window: u32,
    /// Bytes a peer may send on one connection before it is read (default 32 MiB). Bounded:
    /// quinn's default is unbounded.
    pub connection_receive_window: u32,
    /// Bytes in flight unacknowledged per connection (default 32 MiB).
    pub send_window: u64,
    /// quinn's round-robin among streams of one priority (default `false`). Off, a stream
    /// with data goes out whole before the next: far fewer, larger stream frames when
    /// hundreds of group streams each carry a few small messages. A busy stream can then
    /// go ahead of the others by at most its flow-control window (`stream_receive_window`);
    /// heartbeats go first and snapshots last either way (stream priorities).
    pub send_fairness: bool,
    /// A connection silent this long is closed (default 30 s).
    pub idle_timeout: Duration,
    /// Keep-alive interval, shorter than `idle_timeout` (default 5 s).
    pub keep_alive: Duration,
    /// Incoming handshakes in progress and incoming node connections held at once (default
    /// 1 024). Attempts beyond it are refused before their handshake (no crypto is spent on
    /// them) and counted in `connections_refused_limit`. Connections this node dials do not
    /// count, nor client connections once handed over (their service bounds them).
    pub max_incoming_connections: usize,
    /// First delay before redialling a peer that could not be reached (default 50 ms).
    pub reconnect_backoff_min: Duration,
    /// Longest delay between redials; the delay doubles up to it (default 5 s).
    pub reconnect_backoff_max: Duration,
    /// Bytes of snapshot data per frame (default 1 MiB).
    pub snapshot_chunk_bytes: usize,
    /// Largest snapshot a receiver reassembles (default 1 GiB).
    pub max_snapshot_bytes: u64,
    /// Bytes the unfinished snapshot transfers of one peer may hold together (default 1 GiB;
    /// at least `max_snapshot_bytes`). A transfer reserves the size its header announces
    /// before any data is buffered; one that does not fit is reset
    /// ([`codes::SNAPSHOT_BUDGET`](crate::codes::SNAPSHOT_BUDGET), counted in
    /// `resets_snapshot_budget`) and the sender's raft retries it later. So a peer opening many
    /// snapshot streams holds at most this much, and none for longer than
    /// `partial_frame_timeout` without progress.
    pub snapshot_receive_bytes_per_peer: u64,
    /// Bytes the unfinished snapshot transfers of all peers may hold together (default 2 GiB;
    /// at least `snapshot_receive_bytes_per_peer`).
    pub snapshot_receive_bytes_per_node: u64,
    /// Also accept client connections (ALPN [`certs::CLIENT_ALPN`]) on this endpoint and hand
    /// them over through `QuicTransport::take_client_connections` (default `false`: only
    /// nodes, ALPN [`certs::ALPN`], may connect).
    pub accept_clients: bool,
    /// Accepted client connections waiting to be taken (default 64). When full, a new client
    /// connection is closed with [`crate::codes::CLIENTS_BUSY`] and counted, so a service
    /// that stopped taking them cannot make the endpoint hold connections without bound.
    pub client_queue_len: usize,
    /// Raft messages in one received frame (default 4 096). Checked on the frame's bytes
    /// before it is decoded (an empty message costs 2 bytes on the wire and ~200 decoded);
    /// the sender splits its batches to fit. A frame over it resets its stream
    /// ([`crate::codes::TOO_MANY`]) and is counted in `resets_too_many`.
    pub max_messages_per_batch: usize,
    /// Entries in one received raft message (default 16 384). raft-rs bounds an append by
    /// `max_size_per_msg` bytes and the coordinator batches commands into few entries, so an
    /// honest append holds far fewer. Checked before decoding, as `max_messages_per_batch`.
    pub max_entries_per_message: usize,
    /// Entries in one received frame, all its messages together (default 65 536): with
    /// `max_messages_per_batch`, what bounds a frame's decoded size (about 200 bytes a
    /// message and 150 an entry beyond the frame's own bytes).
    pub max_entries_per_frame: usize,
    /// Heartbeats in one received coalesced batch (default 65 536): one per group the two
    /// nodes share. The sender splits larger batches; [`TransportConfig::with_room_for_groups`]
    /// raises it with the group count.
    pub max_heartbeats_per_batch: usize,
    /// Node ids in one received conf state (voters, learners and joint lists; default 1 024).
    pub max_conf_ids: usize,
    /// An incoming handshake not finished within this is abandoned (default 5 s) and counted
    /// in `handshakes_timed_out`, so a peer that starts handshakes and stalls holds no slot
    /// for long. A dial to a peer is abandoned after it too, and retried after the backoff:
    /// a peer that restarts elsewhere, or whose old address swallows packets, is reached
    /// again within it (a lower-id node refuses the peer's own dial while it is dialling).
    pub handshake_timeout: Duration,
    /// Incoming handshakes in progress at once, nodes and clients alike, since the ALPN that
    /// tells them apart is known only at the end (default 256). Attempts beyond it are
    /// refused before any crypto and counted in `handshakes_refused_half_open`. A
    /// handshaking connection offers no streams and a small receive window until its peer
    /// is known, so each costs a few KiB.
    pub max_half_open: usize,
    /// Above this many handshakes in progress (default 32), an attempt from an address not
    /// yet validated is answered with a QUIC Retry (a stateless token round trip), so a
    /// flood from spoofed addresses costs no state at all. Counted in `handshakes_retried`.
    pub retry_half_open_above: usize,
    /// Client connections (ALPN [`certs::CLIENT_ALPN`]) held at once, handed over or queued
    /// (default 256). Beyond it a new client is closed with [`crate::codes::CLIENTS_BUSY`]
    /// and counted in `client_connections_refused_limit`.
    pub max_client_connections: usize,
    /// Requests (bidirectional streams) one client may have open at once (default 32).
    pub max_client_requests: u32,
    /// Bytes one client may send before the service reads them (quinn's connection receive
    /// window for a client connection; default 1 MiB).
    pub client_receive_window: u32,
    /// Largest request [`crate::ClientConnection::accept_request`] reads (default 4 MiB + 4,
    /// the service's largest message and its length prefix).
    pub client_request_bytes: usize,
    /// Bytes of requests being read and not yet answered, per client identity (the name in
    /// its certificate; all its connections together, so more connections buy no more)
    /// (default 8 MiB, at least `client_request_bytes`). A request that would pass it is
    /// refused with [`crate::codes::CLIENTS_BUSY`].
    pub client_buffered_bytes: usize,
    /// The same, all clients of the node together (default 64 MiB).
    pub clients_buffered_bytes: usize,
    /// A request not read whole within this is dropped and its stream reset (default 10 s):
    /// an unfinished request holds its buffer for at most this long.
    pub client_request_timeout: Duration,
    /// Least time between two replacements of a peer's connection by a new dial from the
    /// same node id (default 1 s). Besides, a connection that received anything within two
    /// `keep_alive` intervals is never replaced: a holder of the id's certificate dialling in
    /// a loop cannot keep cutting the real node's link. Refusals are counted in
    /// `connections_refused_replace`.
    pub min_link_replace_interval: Duration,
    /// Bytes one connection's stream decoders may hold for frames not yet complete, all its
    /// streams together (default 64 MiB; at least `max_frame_bytes`). One connection per
    /// node, so this is a per-node budget too. A read that takes a connection past it resets
    /// the stream that made it (counted in `resets_too_large`): 10 000 streams with a few
    /// bytes of a frame each cannot hold a buffer each.
    pub max_partial_bytes_per_connection: usize,
    /// A stream holding an unfinished frame (or a snapshot transfer) that receives nothing
    /// for this long is reset (default 10 s; counted in `resets_stalled`), so a stalled
    /// sender cannot keep its partial frames or snapshots in memory.
    pub partial_frame_timeout: Duration,
}

impl Default for TransportConfig {
    fn default() -> Self {
        Self {
            max_frame_bytes: 16 << 20,
            peer_queue_len: 65_536,
            peer_queue_bytes: 64 << 20,
            stream_queue_len: 1_024,
            inbound_queue_len: 65_536,
            readers_per_connection: 1,
            max_concurrent_uni_streams: 16_384,
            max_concurrent_bidi_streams: 256,
            stream_receive_window: 1 << 20,
            connection_receive_window: 32 << 20,
            send_window: 32 << 20,
            send_fairness: false,
            idle_timeout: Duration::from_secs(30),
            keep_alive: Duration::from_secs(5),
            max_incoming_connections: 1_024,
            reconnect_backoff_min: Duration::from_millis(50),
            reconnect_backoff_max: Duration::from_secs(5),
            snapshot_chunk_bytes: 1 << 20,
            max_snapshot_bytes: 1 << 30,
            snapshot_receive_bytes_per_peer: 1 << 30,
            snapshot_receive_bytes_per_node: 2 << 30,
            accept_clients: false,
            client_queue_len: 64,
            max_messages_per_batch: 4_096,
            max_entries_per_message: 16_384,
            max_entries_per_frame: 65_536,
            max_heartbeats_per_batch: 65_536,
            max_conf_ids: 1_024,
            handshake_timeout: Duration::from_secs(5),
            max_half_open: 256,
            retry_half_open_above: 32,
            max_client_connections: 256,
            max_client_requests: 32,
            client_receive_window: 1 << 20,
            client_request_bytes: (4 << 20) + 4,
            client_buffered_bytes: 8 << 20,
            clients_buffered_bytes: 64 << 20,
            client_request_timeout: Duration::from_secs(10),
            min_link_replace_interval: Duration::from_secs(1),
            max_partial_bytes_per_connection: 64 << 20,
            partial_frame_timeout: Duration::from_secs(10),
        }
    }
}

macro_rules! setters {
    ($($(#[$doc:meta])* $name:ident: $ty:ty),* $(,)?) => {
        impl TransportConfig {
            $(
                $(#[$doc])*
                #[must_use]
                pub fn $name(mut self, value: $ty) -> Self {
                    self.$name = value;
                    self
                }
            )*
        }
    };
}

setters!(
    /// Sets [`TransportConfig::max_frame_bytes`].
    max_frame_bytes: usize,
    /// Sets [`TransportConfig::peer_queue_len`].
    peer_queue_len: usize,
    /// Sets [`TransportConfig::peer_queue_bytes`].
    peer_queue_bytes: usize,
    /// Sets [`TransportConfig::stream_queue_len`].
    stream_queue_len: usize,
    /// Sets [`TransportConfig::inbound_queue_len`].
    inbound_queue_len: usize,
    /// Sets [`TransportConfig::readers_per_connection`].
    readers_per_connection: usize,
    /// Sets [`TransportConfig::max_concurrent_uni_streams`].
    max_concurrent_uni_streams: u32,
    /// Sets [`TransportConfig::max_concurrent_bidi_streams`].
    max_concurrent_bidi_streams: u32,
    /// Sets [`TransportConfig::stream_receive_window`].
    stream_receive_window: u32,
    /// Sets [`TransportConfig::connection_receive_window`].
    connection_receive_window: u32,
    /// Sets [`TransportConfig::send_window`].
    send_window: u64,
    /// Sets [`TransportConfig::send_fairness`].
    send_fairness: bool,
    /// Sets [`TransportConfig::idle_timeout`].
    idle_timeout: Duration,
    /// Sets [`TransportConfig::keep_alive`].
    keep_alive: Duration,
    /// Sets [`TransportConfig::max_incoming_connections`].
    max_incoming_connections: usize,
    /// Sets [`TransportConfig::reconnect_backoff_min`].
    reconnect_backoff_min: Duration,
    /// Sets [`TransportConfig::reconnect_backoff_max`].
    reconnect_backoff_max: Duration,
    /// Sets [`TransportConfig::snapshot_chunk_bytes`].
    snapshot_chunk_bytes: usize,
    /// Sets [`TransportConfig::max_snapshot_bytes`].
    max_snapshot_bytes: u64,
    /// Sets [`TransportConfig::snapshot_receive_bytes_per_peer`].
    snapshot_receive_bytes_per_peer: u64,
    /// Sets [`TransportConfig::snapshot_receive_bytes_per_node`].
    snapshot_receive_bytes_per_node: u64,
    /// Sets [`TransportConfig::accept_clients`].
    accept_clients: bool,
    /// Sets [`TransportConfig::client_queue_len`].
    client_queue_len: usize,
    /// Sets [`TransportConfig::max_messages_per_batch`].
    max_messages_per_batch: usize,
    /// Sets [`TransportConfig::max_entries_per_message`].
    max_entries_per_message: usize,
    /// Sets [`TransportConfig::max_entries_per_frame`].
    max_entries_per_frame: usize,
    /// Sets [`TransportConfig::max_heartbeats_per_batch`].
    max_heartbeats_per_batch: usize,
    /// Sets [`TransportConfig::max_conf_ids`].
    max_conf_ids: usize,
    /// Sets [`TransportConfig::handshake_timeout`].
    handshake_timeout: Duration,
    /// Sets [`TransportConfig::max_half_open`].
    max_half_open: usize,
    /// Sets [`TransportConfig::retry_half_open_above`].
    retry_half_open_above: usize,
    /// Sets [`TransportConfig::max_client_connections`].
    max_client_connections: usize,
    /// Sets [`TransportConfig::max_client_requests`].
    max_client_requests: u32,
    /// Sets [`TransportConfig::client_receive_window`].
    client_receive_window: u32,
    /// Sets [`TransportConfig::client_request_bytes`].
    client_request_bytes: usize,
    /// Sets [`TransportConfig::client_buffered_bytes`].
    client_buffered_bytes: usize,
    /// Sets [`TransportConfig::clients_buffered_bytes`].
    clients_buffered_bytes: usize,
    /// Sets [`TransportConfig::client_request_timeout`].
    client_request_timeout: Duration,
    /// Sets [`TransportConfig::min_link_replace_interval`].
    min_link_replace_interval: Duration,
    /// Sets [`TransportConfig::max_partial_bytes_per_connection`].
    max_partial_bytes_per_connection: usize,
    /// Sets [`TransportConfig::partial_frame_timeout`].
    partial_frame_timeout: Duration,
);

/// Streams kept beyond one per group: the heartbeat stream, the meta group's, and spares.
pub const STREAM_HEADROOM: u32 = 64;

impl TransportConfig {
    /// This config with room for `groups` groups shared with each peer: one stream per group
    /// (a group's stream stays open, and quinn never lets a peer open more than
    /// `max_concurrent_uni_streams`, so a node holding more groups would leave the rest
    /// silent) plus [`STREAM_HEADROOM`], and a heartbeat batch per group. Only ever raises
    /// a limit, so a larger configured value stays.
    #[must_use]
    pub fn with_room_for_groups(mut self, groups: usize) -> Self {
        let needed = u32::try_from(groups)
            .unwrap_or(u32::MAX)
            .saturating_add(STREAM_HEADROOM);
        self.max_concurrent_uni_streams = self.max_concurrent_uni_streams.max(needed);
        self.max_heartbeats_per_batch = self.max_heartbeats_per_batch.max(needed as usize);
        self
    }
}

/// Room for the length prefix and the prost tag of a snapshot chunk.
const CHUNK_OVERHEAD: usize = 16;

/// Most reading tasks per connection: more than a machine's cores buys nothing.
const MAX_READERS_PER_CONNECTION: usize = 64;

impl TransportConfig {
    /// Checks that the values can work together.
    ///
    /// # Errors
    /// A [`ConfigError`] naming the first field at fault.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let err = |field, reason: String| Err(ConfigError { field, reason });
        if self.max_frame_bytes < 1024 || self.max_frame_bytes > u32::MAX as usize {
            return err(
                "max_frame_bytes",
                format!("{} is not within 1 KiB ..= 4 GiB", self.max_frame_bytes),
            );
        }
        for (field, v) in [
            ("peer_queue_len", self.peer_queue_len),
            ("stream_queue_len", self.stream_queue_len),
            ("inbound_queue_len", self.inbound_queue_len),
            ("max_incoming_connections", self.max_incoming_connections),
            ("snapshot_chunk_bytes", self.snapshot_chunk_bytes),
            ("client_queue_len", self.client_queue_len),
            ("max_messages_per_batch", self.max_messages_per_batch),
            ("max_entries_per_message", self.max_entries_per_message),
            ("max_heartbeats_per_batch", self.max_heartbeats_per_batch),
            ("max_conf_ids", self.max_conf_ids),
            ("max_half_open", self.max_half_open),
            ("max_client_connections", self.max_client_connections),
            ("client_request_bytes", self.client_request_bytes),
        ] {
            if v == 0 {
                return err(field, "must be at least 1".into());
            }
        }
        if !(1..=MAX_READERS_PER_CONNECTION).contains(&self.readers_per_connection) {
            return err(
                "readers_per_connection",
                format!(
                    "{} is not within 1 ..= {MAX_READERS_PER_CONNECTION}",
                    self.readers_per_connection
                ),
            );
        }
        if self.max_entries_per_frame < self.max_entries_per_message {
            return err(
                "max_entries_per_frame",
                format!(
                    "{} must be at least max_entries_per_message ({})",
                    self.max_entries_per_frame, self.max_entries_per_message
                ),
            );
        }
        if self.retry_half_open_above > self.max_half_open {
            return err(
                "retry_half_open_above",
                format!(
                    "{} must be at most max_half_open ({})",
                    self.retry_half_open_above, self.max_half_open
                ),
            );
        }
        if self.handshake_timeout.is_zero() || self.handshake_timeout > self.idle_timeout {
            return err(
                "handshake_timeout",
                format!(
                    "{:?} must be non-zero and at most idle_timeout ({:?})",
                    self.handshake_timeout, self.idle_timeout
                ),
            );
        }
        if self.max_partial_bytes_per_connection < self.max_frame_bytes {
            return err(
                "max_partial_bytes_per_connection",
                format!(
                    "{} must be at least max_frame_bytes ({})",
                    self.max_partial_bytes_per_connection, self.max_frame_bytes
                ),
            );
        }
        if self.snapshot_receive_bytes_per_peer < self.max_snapshot_bytes {
            return err(
                "snapshot_receive_bytes_per_peer",
                format!(
                    "{} must be at least max_snapshot_bytes ({}), or no snapshot of that size \
                     is ever received",
                    self.snapshot_receive_bytes_per_peer, self.max_snapshot_bytes
                ),
            );
        }
        if self.snapshot_receive_bytes_per_node < self.snapshot_receive_bytes_per_peer {
            return err(
                "snapshot_receive_bytes_per_node",
                format!(
                    "{} must be at least snapshot_receive_bytes_per_peer ({})",
                    self.snapshot_receive_bytes_per_node, self.snapshot_receive_bytes_per_peer
                ),
            );
        }
        if self.partial_frame_timeout.is_zero() {
            return err("partial_frame_timeout", "must be non-zero".into());
        }
        if self.client_request_timeout.is_zero() {
            return err("client_request_timeout", "must be non-zero".into());
        }
        if self.max_client_requests == 0 || self.client_receive_window == 0 {
            return err(
                "max_client_requests",
                "max_client_requests and client_receive_window must be at least 1".into(),
            );
        }
        if self.client_buffered_bytes < self.client_request_bytes
            || self.clients_buffered_bytes < self.client_buffered_bytes
        {
            return err(
                "client_buffered_bytes",
                format!(
                    "need client_request_bytes ({}) <= client_buffered_bytes ({}) <= \
                     clients_buffered_bytes ({})",
                    self.client_request_bytes,
                    self.client_buffered_bytes,
                    self.clients_buffered_bytes
                ),
            );
        }
        if self.peer_queue_bytes < self.max_frame_bytes {
            return err(
                "peer_queue_bytes",
                format!(
                    "{} must be at least max_frame_bytes ({})",
                    self.peer_queue_bytes, self.max_frame_bytes
                ),
            );
        }
        if self.max_concurrent_uni_streams == 0 {
            return err(
                "max_concurrent_uni_streams",
                "must be at least 1 (one per group)".into(),
            );
        }
        if self.stream_receive_window == 0
            || self.stream_receive_window > self.connection_receive_window
        {
            return err(
                "stream_receive_window",
                format!(
                    "{} must be within 1 ..= connection_receive_window ({})",
                    self.stream_receive_window, self.connection_receive_window
                ),
            );
        }
        if self.snapshot_chunk_bytes + CHUNK_OVERHEAD > self.max_frame_bytes {
            return err(
                "snapshot_chunk_bytes",
                format!(
                    "{} does not fit in max_frame_bytes ({})",
                    self.snapshot_chunk_bytes, self.max_frame_bytes
                ),
            );
        }
        if self.keep_alive.is_zero() || self.keep_alive >= self.idle_timeout {
            return err(
                "keep_alive",
                format!(
                    "{:?} must be non-zero and shorter than idle_timeout ({:?})",
                    self.keep_alive, self.idle_timeout
                ),
            );
        }
        if self.idle_timeout > Duration::from_secs(600) {
            return err(
                "idle_timeout",
                format!("{:?} is longer than 10 minutes", self.idle_timeout),
            );
        }
        if self.reconnect_backoff_min.is_zero()
            || self.reconnect_backoff_min > self.reconnect_backoff_max
        {
            return err(
                "reconnect_backoff_min",
                format!(
                    "{:?} must be non-zero and at most reconnect_backoff_max ({:?})",
                    self.reconnect_backoff_min, self.reconnect_backoff_max
                ),
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_bounded() {
        let c = TransportConfig::default();
        assert_eq!(c.validate(), Ok(()));
        assert!(!c.accept_clients, "only nodes connect unless asked");
        assert!(c.connection_receive_window < u32::MAX);
        assert!(c.max_concurrent_uni_streams >= 1024);
    }

    #[test]
    fn room_for_groups_only_raises_the_stream_and_heartbeat_limits() {
        let many = TransportConfig::default().with_room_for_groups(100_000);
        assert_eq!(many.max_concurrent_uni_streams, 100_000 + STREAM_HEADROOM);
        assert_eq!(many.max_heartbeats_per_batch, 100_064);
        assert_eq!(many.validate(), Ok(()));
        let wide = TransportConfig::default().max_concurrent_uni_streams(50_000);
        assert_eq!(
            wide.clone()
                .with_room_for_groups(10)
                .max_concurrent_uni_streams,
            50_000
        );
    }

    #[test]
    fn validate_names_the_field_at_fault() {
        let bad = [
            (
                TransportConfig::default().max_frame_bytes(10),
                "max_frame_bytes",
            ),
            (
                TransportConfig::default().peer_queue_len(0),
                "peer_queue_len",
            ),
            (
                TransportConfig::default().peer_queue_bytes(1 << 20),
                "peer_queue_bytes",
            ),
            (
                TransportConfig::default().readers_per_connection(0),
                "readers_per_connection",
            ),
            (
                TransportConfig::default().readers_per_connection(65),
                "readers_per_connection",
            ),
            (
                TransportConfig::default().stream_receive_window(64 << 20),
                "stream_receive_window",
            ),
            (
                TransportConfig::default().snapshot_chunk_bytes(16 << 20),
                "snapshot_chunk_bytes",
            ),
            (
                TransportConfig::default().keep_alive(Duration::from_secs(60)),
                "keep_alive",
            ),
            (
                TransportConfig::default().reconnect_backoff_min(Duration::from_secs(60)),
                "reconnect_backoff_min",
            ),
            (
                TransportConfig::default().max_messages_per_batch(0),
                "max_messages_per_batch",
            ),
            (
                TransportConfig::default().max_entries_per_frame(10),
                "max_entries_per_frame",
            ),
            (
                TransportConfig::default().retry_half_open_above(1_000),
                "retry_half_open_above",
            ),
            (
                TransportConfig::default().handshake_timeout(Duration::from_secs(60)),
                "handshake_timeout",
            ),
            (
                TransportConfig::default().client_buffered_bytes(1024),
                "client_buffered_bytes",
            ),
        ];
        for (config, field) in bad {
            assert_eq!(config.validate().map_err(|e| e.field), Err(field));
        }
    }
}
