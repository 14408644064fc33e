//! The transport's figures for operators, through the `metrics` facade (no recorder
//! installed here: the binary picks the exporter).
//!
//! The frame and connection paths keep their relaxed atomics ([`TransportStats`]); the
//! caller publishes a snapshot of them on its tick with [`publish`], and the state of each
//! peer link with [`publish_links`], so no hot path touches the facade. Every name is in the
//! README's "Metrics" table. Labels are bounded: `node`, `peer`, `reason`, `kind`.

use metrics::{Unit, counter, describe_counter, describe_gauge, gauge};
use routing::NodeId;

use crate::TransportStats;

/// Counter, label `kind` (`raft`, `heartbeat`, `snapshot`, `forward`): frames written (stream
/// headers excluded).
pub const FRAMES_SENT: &str = "pontoon_transport_frames_sent_total";
/// Counter, label `kind`: frames read and accepted.
pub const FRAMES_RECEIVED: &str = "pontoon_transport_frames_received_total";
/// Counter, label `kind`: bytes written (headers, length prefixes and bodies).
pub const BYTES_SENT: &str = "pontoon_transport_sent_bytes_total";
/// Counter, label `kind`: bytes read.
pub const BYTES_RECEIVED: &str = "pontoon_transport_received_bytes_total";
/// Counter: raft messages written (a coalesced heartbeat counts once per group).
pub const MESSAGES_SENT: &str = "pontoon_transport_messages_sent_total";
/// Counter: raft messages handed to the coordinator.
pub const MESSAGES_RECEIVED: &str = "pontoon_transport_messages_received_total";
/// Counter, label `reason`: envelopes or frames dropped.
pub const DROPPED: &str = "pontoon_transport_dropped_total";
/// Counter: streams opened toward peers.
pub const STREAMS_OPENED: &str = "pontoon_transport_streams_opened_total";
/// Counter, label `reason`: incoming streams this node reset.
pub const STREAM_RESETS: &str = "pontoon_transport_stream_resets_total";
/// Counter: connections established (dialled or accepted).
pub const CONNECTIONS_OPENED: &str = "pontoon_transport_connections_opened_total";
/// Counter: connections lost or closed.
pub const CONNECTIONS_CLOSED: &str = "pontoon_transport_connections_closed_total";
/// Counter, label `reason`: connections refused.
pub const CONNECTIONS_REFUSED: &str = "pontoon_transport_connections_refused_total";
/// Counter: incoming attempts answered with a QUIC Retry.
pub const HANDSHAKES_RETRIED: &str = "pontoon_transport_handshakes_retried_total";
/// Counter: client connections accepted.
pub const CLIENT_CONNECTIONS: &str = "pontoon_transport_client_connections_total";
/// Counter: client requests refused (too large, over budget, too slow).
pub const CLIENT_REQUESTS_REFUSED: &str = "pontoon_transport_client_requests_refused_total";
/// Counter, label `kind` (`sent`, `received`, `failed`): snapshot transfers.
pub const SNAPSHOTS: &str = "pontoon_transport_snapshots_total";
/// Gauge: envelopes queued toward all peers and not yet written.
pub const QUEUED_ENVELOPES: &str = "pontoon_transport_queued_envelopes";
/// Gauge: encoded bytes queued toward all peers and not yet written.
pub const QUEUED_BYTES: &str = "pontoon_transport_queued_bytes";
/// Gauge: incoming handshakes in progress.
pub const HANDSHAKES_IN_PROGRESS: &str = "pontoon_transport_handshakes_in_progress";
/// Gauge: bytes held by the decoders of incoming streams.
pub const RECEIVE_BUFFERED_BYTES: &str = "pontoon_transport_receive_buffered_bytes";
/// Gauge, label `peer`: 1 while a connection to the peer is established, 0 otherwise.
pub const PEER_CONNECTED: &str = "pontoon_transport_peer_connected";

/// Registers the descriptions and units of the transport's series with the installed
/// recorder.
pub fn describe() {
    describe_counter!(
        FRAMES_SENT,
        "Frames written to peers, by stream kind (raft, heartbeat, snapshot, forward)."
    );
    describe_counter!(
        FRAMES_RECEIVED,
        "Frames read from peers and accepted, by stream kind (raft, heartbeat, snapshot, forward)."
    );
    describe_counter!(
        BYTES_SENT,
        Unit::Bytes,
        "Bytes written to peers, by stream kind (raft, heartbeat, snapshot, forward)."
    );
    describe_counter!(
        BYTES_RECEIVED,
        Unit::Bytes,
        "Bytes read from peers, by stream kind (raft, heartbeat, snapshot, forward)."
    );
    describe_counter!(MESSAGES_SENT, "Raft messages written to peers.");
    describe_counter!(
        MESSAGES_RECEIVED,
        "Raft messages handed to the coordinator."
    );
    describe_counter!(
        DROPPED,
        "Envelopes or frames dropped, by reason (queue_full, unknown_peer, unreachable, \
         sender_mismatch, faults)."
    );
    describe_counter!(STREAMS_OPENED, "Streams opened toward peers.");
    describe_counter!(
        STREAM_RESETS,
        "Incoming streams reset, by reason (unknown_group, malformed, unknown_kind, too_large, \
         too_many, stalled, sender_mismatch)."
    );
    describe_counter!(CONNECTIONS_OPENED, "Connections established and adopted.");
    describe_counter!(CONNECTIONS_CLOSED, "Connections lost or closed.");
    describe_counter!(
        CONNECTIONS_REFUSED,
        "Connections refused, by reason (handshake_failed, handshake_timeout, half_open, \
         limit, not_admitted, revoked, replace, client_limit, client_busy, other)."
    );
    describe_counter!(
        HANDSHAKES_RETRIED,
        "Incoming attempts answered with a QUIC Retry."
    );
    describe_counter!(CLIENT_CONNECTIONS, "Client connections accepted.");
    describe_counter!(CLIENT_REQUESTS_REFUSED, "Client requests refused.");
    describe_counter!(
        SNAPSHOTS,
        "Snapshot transfers, by kind (sent, received, failed)."
    );
    describe_gauge!(
        QUEUED_ENVELOPES,
        "Envelopes queued toward peers, not yet written."
    );
    describe_gauge!(
        QUEUED_BYTES,
        Unit::Bytes,
        "Encoded bytes queued toward peers, not yet written."
    );
    describe_gauge!(HANDSHAKES_IN_PROGRESS, "Incoming handshakes in progress.");
    describe_gauge!(
        RECEIVE_BUFFERED_BYTES,
        Unit::Bytes,
        "Bytes held by the decoders of incoming streams."
    );
    describe_gauge!(
        PEER_CONNECTED,
        "1 while a connection to the peer is established, 0 otherwise."
    );
}

/// Publishes a snapshot of a transport's counters for `node`: call it on a periodic tick.
pub fn publish(node: NodeId, s: &TransportStats) {
    let n = node.get().to_string();
    // The totals count every stream; heartbeat, snapshot and forward streams also count on
    // their own, so raft streams (and the control stream) are the rest.
    let by_kind = [
        (
            FRAMES_SENT,
            s.frames_sent,
            s.heartbeat_frames_sent,
            s.snapshot_frames_sent,
            s.forward_frames_sent,
        ),
        (
            FRAMES_RECEIVED,
            s.frames_received,
            s.heartbeat_frames_received,
            s.snapshot_frames_received,
            s.forward_frames_received,
        ),
        (
            BYTES_SENT,
            s.bytes_sent,
            s.heartbeat_bytes_sent,
            s.snapshot_bytes_sent,
            s.forward_bytes_sent,
        ),
        (
            BYTES_RECEIVED,
            s.bytes_received,
            s.heartbeat_bytes_received,
            s.snapshot_bytes_received,
            s.forward_bytes_received,
        ),
    ];
    for (name, total, heartbeat, snapshot, forward) in by_kind {
        let raft = total
            .saturating_sub(heartbeat)
            .saturating_sub(snapshot)
            .saturating_sub(forward);
        for (kind, value) in [
            ("raft", raft),
            ("heartbeat", heartbeat),
            ("snapshot", snapshot),
            ("forward", forward),
        ] {
            counter!(name, "node" => n.clone(), "kind" => kind).absolute(value);
        }
    }
    let plain = [
        (MESSAGES_SENT, s.messages_sent),
        (MESSAGES_RECEIVED, s.messages_received),
        (STREAMS_OPENED, s.streams_opened),
        (CONNECTIONS_OPENED, s.connections_opened),
        (CONNECTIONS_CLOSED, s.connections_closed),
        (HANDSHAKES_RETRIED, s.handshakes_retried),
        (CLIENT_CONNECTIONS, s.client_connections),
        (CLIENT_REQUESTS_REFUSED, s.client_requests_refused),
    ];
    for (name, value) in plain {
        counter!(name, "node" => n.clone()).absolute(value);
    }
    let dropped = [
        ("queue_full", s.dropped_queue_full),
        ("unknown_peer", s.dropped_unknown_peer),
        ("unreachable", s.dropped_unreachable),
        ("sender_mismatch", s.dropped_sender_mismatch),
        ("faults", s.dropped_faults),
    ];
    for (reason, value) in dropped {
        counter!(DROPPED, "node" => n.clone(), "reason" => reason).absolute(value);
    }
    let resets = [
        ("unknown_group", s.resets_unknown_group),
        ("malformed", s.resets_malformed),
        ("unknown_kind", s.resets_unknown_kind),
        ("too_large", s.resets_too_large),
        ("too_many", s.resets_too_many),
        ("stalled", s.resets_stalled),
        ("sender_mismatch", s.resets_sender_mismatch),
    ];
    for (reason, value) in resets {
        counter!(STREAM_RESETS, "node" => n.clone(), "reason" => reason).absolute(value);
    }
    let refused = [
        ("handshake_failed", s.connections_refused_handshake),
        ("handshake_timeout", s.handshakes_timed_out),
        ("half_open", s.handshakes_refused_half_open),
        ("limit", s.connections_refused_limit),
        ("not_admitted", s.connections_refused_not_admitted),
        ("revoked", s.connections_refused_revoked),
        ("replace", s.connections_refused_replace),
        ("client_limit", s.client_connections_refused_limit),
        ("client_busy", s.client_connections_refused_busy),
    ];
    // `connections_refused` counts every refusal; what no reason above names (a duplicate
    // dial, a certificate that names nobody, clients not served) is `other`.
    let named: u64 = refused.iter().map(|(_, v)| v).sum();
    let other = s.connections_refused.saturating_sub(named);
    for (reason, value) in refused.into_iter().chain([("other", other)]) {
        counter!(CONNECTIONS_REFUSED, "node" => n.clone(), "reason" => reason).absolute(value);
    }
    for (kind, value) in [
        ("sent", s.snapshots_sent),
        ("received", s.snapshots_received),
        ("failed", s.snapshots_failed),
    ] {
        counter!(SNAPSHOTS, "node" => n.clone(), "kind" => kind).absolute(value);
    }
    let gauges = [
        (QUEUED_ENVELOPES, s.queued_envelopes),
        (QUEUED_BYTES, s.queued_bytes),
        (HANDSHAKES_IN_PROGRESS, s.handshakes_in_progress),
        (RECEIVE_BUFFERED_BYTES, s.receive_buffered_bytes),
    ];
    for (name, value) in gauges {
        gauge!(name, "node" => n.clone()).set(value as f64);
    }
}

/// Publishes whether each peer link of `node` is up (see [`crate::Transport::peer_links`]).
pub fn publish_links(node: NodeId, links: &[(NodeId, bool)]) {
    let n = node.get().to_string();
    for (peer, up) in links {
        let value = if *up { 1.0 } else { 0.0 };
        gauge!(PEER_CONNECTED, "node" => n.clone(), "peer" => peer.get().to_string()).set(value);
    }
}
