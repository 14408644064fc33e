/// Stream reset: the header names a group this node does not know.
pub const UNKNOWN_GROUP: u32 = 0x10;
/// Stream reset: a header or frame did not decode, or the stream ended inside a frame.
pub const MALFORMED: u32 = 0x11;
/// Stream reset: unknown stream kind or wire version.
pub const UNKNOWN_KIND: u32 = 0x12;
/// Stream reset: a frame longer than `max_frame_bytes`, or a snapshot longer than
/// `max_snapshot_bytes`.
pub const TOO_LARGE: u32 = 0x13;
/// Stream reset: a frame claims a sender other than the peer's certificate.
pub const SENDER_MISMATCH: u32 = 0x14;
/// Stream reset or connection close: this node is shutting down.
pub const SHUTDOWN: u32 = 0x15;
/// Stream reset: a frame holds more elements of a repeated field than its cap
/// (`TransportConfig::max_entries_per_message` and the like).
pub const TOO_MANY: u32 = 0x16;
/// Stream reset: it held an unfinished frame or snapshot and received nothing for
/// `TransportConfig::partial_frame_timeout`.
pub const STALLED: u32 = 0x17;
/// Stream reset: the snapshot it announces does not fit in what its peer's (or all
/// peers') unfinished snapshots may hold (`TransportConfig::snapshot_receive_bytes_per_peer`,
/// `TransportConfig::snapshot_receive_bytes_per_node`); the sender retries later.
pub const SNAPSHOT_BUDGET: u32 = 0x18;
/// Connection close: another connection between the same two nodes won (the one dialled
/// by the lower NodeId).
pub const DUPLICATE_CONNECTION: u32 = 0x20;
/// Connection close: the peer's certificate carries no node id (on the raft ALPN), or no
/// pontoon identity at all (on the client ALPN).
pub const NOT_A_NODE: u32 = 0x21;
/// Connection close: the node id is not admitted by this node (not a member of its
/// groups nor placed by its routing table).
pub const NOT_ADMITTED: u32 = 0x23;
/// Connection close: the node id or the certificate's serial is revoked.
pub const REVOKED: u32 = 0x24;
/// Connection close: the id already has an established, recently active connection, or
/// replaced it too recently; the dial is refused.
pub const LINK_KEPT: u32 = 0x25;
/// Connection close: a client connection arrived while the queue of client connections
/// not yet taken by the service was full (`TransportConfig::client_queue_len`).
pub const CLIENTS_BUSY: u32 = 0x22;
