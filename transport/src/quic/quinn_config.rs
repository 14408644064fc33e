//! Building quinn's configs from ours: the transport parameters (streams, windows, idle
//! timeout), the smaller ones a connection gets while it is still handshaking, and the TLS
//! server and client configs the endpoint accepts and dials with.
//!
//! Kept apart from the endpoint's lifecycle in `quic/mod.rs`: this is pure translation from
//! a [`TransportConfig`] and an identity, run at bind and at every TLS reload.

use std::sync::Arc;

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::{IdleTimeout, VarInt};

use super::TransportError;
use crate::{ConfigError, TransportConfig};

/// Connection attempts quinn holds for the accept loop beyond `max_incoming_connections`.
const PENDING_INCOMING: usize = 1024;

/// The endpoint's own settings: its stateless-reset key and connection-id key, both derived
/// from the node's private key. A node restarted with the same identity then recognises the
/// connection ids its previous process issued and answers a packet on one with a stateless
/// reset (RFC 9000, section 10.3) carrying the token that process announced: a peer drops
/// the dead connection at its next packet. Otherwise the dead connection looks alive for two
/// keep-alive intervals after its last packet, and a live-looking connection is not replaced
/// by a new dial from the same id (see [`TransportConfig::min_link_replace_interval`]), so
/// the restarted node would stay cut off for up to 10 s. Only a holder of the private key
/// can forge such a reset.
pub(super) fn endpoint_config(
    identity: &certs::NodeIdentity,
) -> Result<quinn::EndpointConfig, TransportError> {
    use ring::{hkdf, hmac};
    /// An HKDF output of `0` bytes.
    struct Bytes(usize);
    impl hkdf::KeyType for Bytes {
        fn len(&self) -> usize {
            self.0
        }
    }
    let unusable = |_| TransportError::Quic("cannot derive the endpoint keys".into());
    let secret = hkdf::Salt::new(hkdf::HKDF_SHA256, b"pontoon quic endpoint v1")
        .extract(identity.key().secret_der());
    let reset = secret
        .expand(&[b"stateless reset"], hmac::HMAC_SHA256)
        .map_err(unusable)?;
    let mut cid_key = [0u8; 8];
    secret
        .expand(&[b"connection id"], Bytes(cid_key.len()))
        .and_then(|okm| okm.fill(&mut cid_key))
        .map_err(unusable)?;
    let cid_key = u64::from_le_bytes(cid_key);
    let mut config = quinn::EndpointConfig::new(Arc::new(hmac::Key::from(reset)));
    config.cid_generator(move || {
        Box::new(quinn_proto::HashedConnectionIdGenerator::from_key(cid_key))
    });
    Ok(config)
}

/// Builds quinn's transport parameters from our config.
pub(crate) fn quinn_transport(
    c: &TransportConfig,
) -> Result<Arc<quinn::TransportConfig>, ConfigError> {
    quinn_transport_params(c).map(Arc::new)
}

fn quinn_transport_params(c: &TransportConfig) -> Result<quinn::TransportConfig, ConfigError> {
    let err = |field, e: &dyn std::fmt::Display| ConfigError {
        field,
        reason: e.to_string(),
    };
    let mut t = quinn::TransportConfig::default();
    t.max_concurrent_uni_streams(VarInt::from_u32(c.max_concurrent_uni_streams))
        .max_concurrent_bidi_streams(VarInt::from_u32(c.max_concurrent_bidi_streams))
        .stream_receive_window(VarInt::from_u32(c.stream_receive_window))
        .receive_window(VarInt::from_u32(c.connection_receive_window))
        .send_window(c.send_window)
        .send_fairness(c.send_fairness)
        .max_idle_timeout(Some(
            IdleTimeout::try_from(c.idle_timeout).map_err(|e| err("idle_timeout", &e))?,
        ))
        .keep_alive_interval(Some(c.keep_alive));
    Ok(t)
}

/// The transport parameters offered to a connection still handshaking: no streams and a small
/// window until its certificate says what it is (quinn allocates state for every stream it
/// grants). [`accept::grant_node_budgets`] and the client hand-over grant the real ones.
///
/// [`accept::grant_node_budgets`]: super::accept::grant_node_budgets
fn handshake_transport(c: &TransportConfig) -> Result<Arc<quinn::TransportConfig>, ConfigError> {
    let mut t = quinn_transport_params(c)?;
    let window = c.client_receive_window.min(c.connection_receive_window);
    t.max_concurrent_uni_streams(VarInt::from_u32(0))
        .max_concurrent_bidi_streams(VarInt::from_u32(0))
        .receive_window(VarInt::from_u32(window))
        .stream_receive_window(VarInt::from_u32(c.stream_receive_window.min(window)));
    Ok(Arc::new(t))
}

/// The server config the endpoint accepts with (ALPNs offered, handshake budgets) and the
/// client config it dials with, trusting `cas`.
pub(super) fn endpoint_configs(
    identity: &certs::NodeIdentity,
    config: &TransportConfig,
    cas: &[rustls::pki_types::CertificateDer<'static>],
) -> Result<(quinn::ServerConfig, quinn::ClientConfig), TransportError> {
    // Node dials offer only the raft ALPN; the server offers the client one on request.
    let offered: &[&[u8]] = if config.accept_clients {
        &[certs::ALPN, certs::CLIENT_ALPN]
    } else {
        &[certs::ALPN]
    };
    let (mut server, client) = configs_offering(identity, config, offered, certs::ALPN, cas)?;
    server.transport_config(handshake_transport(config)?);
    // Data a not-yet-accepted attempt may buffer (0-RTT is off: this is only its Initial).
    server
        .incoming_buffer_size(64 << 10)
        .incoming_buffer_size_total(8 << 20);
    Ok((server, client))
}

/// Quinn server and client configs from a node identity, with our limits. Exposed so tests
/// and benchmarks can build a raw quinn endpoint with exactly the transport's TLS.
///
/// # Errors
/// [`TransportError`] when the identity or the config cannot produce a QUIC config.
pub fn quinn_configs(
    identity: &certs::NodeIdentity,
    config: &TransportConfig,
    alpn: &[u8],
) -> Result<(quinn::ServerConfig, quinn::ClientConfig), TransportError> {
    configs_offering(
        identity,
        config,
        &[alpn],
        alpn,
        std::slice::from_ref(identity.ca()),
    )
}

/// As [`quinn_configs`], with the server offering every ALPN of `server_alpns`.
fn configs_offering(
    identity: &certs::NodeIdentity,
    config: &TransportConfig,
    server_alpns: &[&[u8]],
    alpn: &[u8],
    cas: &[rustls::pki_types::CertificateDer<'static>],
) -> Result<(quinn::ServerConfig, quinn::ClientConfig), TransportError> {
    let transport = quinn_transport(config)?;
    let server_tls =
        QuicServerConfig::try_from(identity.server_config_trusting(server_alpns, cas)?)
            .map_err(|e| TransportError::Quic(e.to_string()))?;
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(server_tls));
    server.transport_config(transport.clone());
    // quinn's own bound is on attempts not yet taken by the accept loop, which takes them at
    // once and refuses (and counts) those beyond `max_incoming_connections` itself: quinn's
    // is only a backstop for a burst that outruns the loop.
    server.max_incoming(
        config
            .max_incoming_connections
            .saturating_add(PENDING_INCOMING),
    );
    let client_tls = QuicClientConfig::try_from(identity.client_config_trusting(&[alpn], cas)?)
        .map_err(|e| TransportError::Quic(e.to_string()))?;
    let mut client = quinn::ClientConfig::new(Arc::new(client_tls));
    client.transport_config(transport);
    Ok((server, client))
}
