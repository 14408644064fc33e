//! QUIC transport, wire format and in-memory network (filled in by the transport issue).
