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
