//! Counters a caller can read without scraping logs: one set of atomics per transport,
//! read as a plain [`TransportStats`] snapshot.

use std::sync::atomic::{AtomicU64, Ordering};

macro_rules! stats {
    ($($(#[$doc:meta])* $name:ident),* $(,)?) => {
        /// A snapshot of a transport's counters. All counts since the transport started.
        #[derive(Clone, Debug, Default, PartialEq, Eq)]
        pub struct TransportStats {
            $($(#[$doc])* pub $name: u64,)*
        }

        /// The live counters behind [`TransportStats`].
        #[derive(Debug, Default)]
        pub(crate) struct Counters {
            $(pub(crate) $name: AtomicU64,)*
        }

        impl Counters {
            pub(crate) fn snapshot(&self) -> TransportStats {
                TransportStats { $($name: self.$name.load(Ordering::Relaxed),)* }
            }
        }
    };
}

stats!(
    /// Frames written (stream headers excluded).
    frames_sent,
    /// Frames read and accepted (stream headers excluded).
    frames_received,
    /// Bytes written: headers, length prefixes and bodies.
    bytes_sent,
    /// Bytes read: headers, length prefixes and bodies.
    bytes_received,
    /// Of `frames_sent`, those on heartbeat streams (coalesced heartbeat batches).
    heartbeat_frames_sent,
    /// Of `bytes_sent`, those on heartbeat streams.
    heartbeat_bytes_sent,
    /// Of `frames_sent`, those of snapshot transfers (head and chunks).
    snapshot_frames_sent,
    /// Of `bytes_sent`, those of snapshot transfers.
    snapshot_bytes_sent,
    /// Of `frames_received`, those on heartbeat streams.
    heartbeat_frames_received,
    /// Of `bytes_received`, those on heartbeat streams.
    heartbeat_bytes_received,
    /// Of `frames_received`, those of snapshot transfers.
    snapshot_frames_received,
    /// Of `bytes_received`, those of snapshot transfers.
    snapshot_bytes_received,
    /// Of `frames_sent`, those on forward streams (forwarded requests and their replies).
    forward_frames_sent,
    /// Of `bytes_sent`, those on forward streams.
    forward_bytes_sent,
    /// Of `frames_received`, those on forward streams.
    forward_frames_received,
    /// Of `bytes_received`, those on forward streams.
    forward_bytes_received,
    /// Raft messages (and coalesced heartbeats, one per group) written.
    messages_sent,
    /// Raft messages (and coalesced heartbeats, one per group) handed to the coordinator.
    messages_received,
    /// Envelopes refused by `send` because a peer or stream queue was full.
    dropped_queue_full,
    /// Envelopes refused by `send` because the peer is not in the address book.
    dropped_unknown_peer,
    /// Frames lost because the peer could not be reached or the stream failed.
    dropped_unreachable,
    /// Frames whose claimed sender differed from the peer's certificate.
    dropped_sender_mismatch,
    /// Frames dropped by the simulated network's faults or partitions.
    dropped_faults,
    /// Frames duplicated by the simulated network.
    duplicated,
    /// Streams opened toward peers.
    streams_opened,
    /// Incoming streams reset (stopped) by this node, all reasons.
    streams_reset,
    /// Resets because the group is unknown here.
    resets_unknown_group,
    /// Resets because a frame or header did not decode.
    resets_malformed,
    /// Resets because the header named an unknown stream kind or version.
    resets_unknown_kind,
    /// Resets because a frame exceeded `max_frame_bytes` or a snapshot `max_snapshot_bytes`.
    resets_too_large,
    /// Resets because a frame held more elements of a repeated field than its cap.
    resets_too_many,
    /// Resets because a stream holding an unfinished frame or snapshot received nothing for
    /// `partial_frame_timeout`.
    resets_stalled,
    /// Resets because a frame claimed another sender.
    resets_sender_mismatch,
    /// Snapshot transfers refused at their header because the size they announce does not fit
    /// in `snapshot_receive_bytes_per_peer` or `snapshot_receive_bytes_per_node` beside the
    /// unfinished snapshots held already (the sender learns it failed and retries later).
    resets_snapshot_budget,
    /// Connections established (dialled or accepted) and adopted.
    connections_opened,
    /// Connections lost or closed.
    connections_closed,
    /// Connections refused: failed handshake, no usable identity, duplicate, a client
    /// arriving while the client queue is full, or one beyond `max_incoming_connections`.
    connections_refused,
    /// Incoming connections refused before their handshake because
    /// `max_incoming_connections` were already being handshaken or held.
    connections_refused_limit,
    /// Incoming handshakes that failed: TLS refused the peer's certificate (another CA, an
    /// expired or revoked chain, a missing key usage) or the QUIC handshake broke off.
    connections_refused_handshake,
    /// Incoming handshakes abandoned after `handshake_timeout`.
    handshakes_timed_out,
    /// Incoming attempts refused before their handshake because `max_half_open` handshakes
    /// were in progress.
    handshakes_refused_half_open,
    /// Incoming attempts answered with a QUIC Retry (address validation) because more than
    /// `retry_half_open_above` handshakes were in progress.
    handshakes_retried,
    /// Client connections closed because `max_client_connections` were held.
    client_connections_refused_limit,
    /// Client requests refused: over `client_request_bytes`, over a byte budget, or not read
    /// whole within `client_request_timeout`.
    client_requests_refused,
    /// Dials from a node id whose established, recently active connection was kept, or whose
    /// connection was replaced less than `min_link_replace_interval` ago.
    connections_refused_replace,
    /// Node connections closed because the peer admission hook did not admit their id.
    connections_refused_not_admitted,
    /// Node connections closed because their node id or certificate serial is revoked.
    connections_refused_revoked,
    /// Client connections (ALPN `pontoon-client/1`) accepted and handed over.
    client_connections,
    /// Client connections closed because the queue of connections not yet taken was full.
    client_connections_refused_busy,
    /// Snapshots the receiver acknowledged.
    snapshots_sent,
    /// Snapshots that failed on the way.
    snapshots_failed,
    /// Snapshots reassembled and handed to the coordinator.
    snapshots_received,
    /// Gauge, not a count: envelopes queued toward all peers and not yet written (raft and
    /// heartbeat frames, and snapshot transfers in flight). Bounded by `peer_queue_len` per
    /// peer. Read from the peers' queues when the stats are taken.
    queued_envelopes,
    /// Gauge, not a count: encoded bytes of the raft and heartbeat frames queued toward all
    /// peers and not yet written. Bounded by `peer_queue_bytes` per peer, plus one envelope.
    /// Snapshot data is not copied into the queue and is not counted here.
    queued_bytes,
    /// Gauge, not a count: incoming handshakes in progress now (at most `max_half_open`).
    handshakes_in_progress,
    /// Gauge, not a count: bytes held by the decoders of incoming streams (the start of
    /// frames that straddle reads, with their buffers' capacity, and snapshots being
    /// reassembled).
    receive_buffered_bytes,
);

impl Counters {
    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// Adds several counts gathered locally at once, skipping those at zero: one shared
    /// cache line touched per count that moved, not per event.
    pub(crate) fn add_all<const N: usize>(counts: [(&AtomicU64, u64); N]) {
        for (counter, n) in counts {
            if n > 0 {
                Self::add(counter, n);
            }
        }
    }

    /// Lowers a gauge.
    pub(crate) fn sub(gauge: &AtomicU64, n: u64) {
        gauge.fetch_sub(n, Ordering::Relaxed);
    }
}
