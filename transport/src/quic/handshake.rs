//! What a finished handshake says about the other side: the ALPN it settled on (node or
//! client path) and the certificate chain it presented (and the NodeId in it). Read by the
//! accept loop, the dialler and the admission checks alike.

use quinn::crypto::rustls::HandshakeData;
use routing::NodeId;

/// The ALPN protocol the handshake settled on.
pub(super) fn negotiated_alpn(conn: &quinn::Connection) -> Option<Vec<u8>> {
    conn.handshake_data()?
        .downcast::<HandshakeData>()
        .ok()?
        .protocol
}

/// The peer's verified certificate chain.
pub(super) fn peer_chain(
    conn: &quinn::Connection,
) -> Option<Vec<rustls::pki_types::CertificateDer<'static>>> {
    conn.peer_identity()?
        .downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>()
        .ok()
        .map(|chain| *chain)
}

/// The NodeId in the peer's verified certificate.
pub(crate) fn peer_node_id(conn: &quinn::Connection) -> Option<NodeId> {
    let identity = conn.peer_identity()?;
    let chain = identity
        .downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>()
        .ok()?;
    certs::node_id_from_chain(&chain).ok()
}
