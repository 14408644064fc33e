//! rustls configs for mutual TLS between nodes (and from clients): TLS 1.3 only, ring as the
//! explicit provider, the cluster CA as the only trust anchor on both sides, 0-RTT off. The
//! configs are what quinn's `QuicServerConfig` / `QuicClientConfig` accept as they are.

use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::{CertError, ClientIdentity, NodeIdentity};

/// The ALPN protocol of node-to-node connections.
pub const ALPN: &[u8] = b"pontoon/1";
/// The ALPN protocol of client (CLI) connections to a node.
pub const CLIENT_ALPN: &[u8] = b"pontoon-client/1";

fn provider() -> Arc<CryptoProvider> {
    // Explicit: with both ring and aws-lc-rs in a graph, rustls' default builders panic.
    Arc::new(rustls::crypto::ring::default_provider())
}

fn roots(ca: &CertificateDer<'static>) -> Result<Arc<RootCertStore>, CertError> {
    roots_of(std::slice::from_ref(ca))
}

/// A trust store of several CAs: while a CA is rolled over, both the old and the new one.
fn roots_of(cas: &[CertificateDer<'static>]) -> Result<Arc<RootCertStore>, CertError> {
    let mut roots = RootCertStore::empty();
    for ca in cas {
        roots.add(ca.clone())?;
    }
    Ok(Arc::new(roots))
}

fn alpn_list(alpns: &[&[u8]]) -> Vec<Vec<u8>> {
    alpns.iter().map(|a| a.to_vec()).collect()
}

fn client_config_for(
    chain: &[CertificateDer<'static>],
    key: &PrivateKeyDer<'static>,
    ca: &CertificateDer<'static>,
    alpns: &[&[u8]],
) -> Result<ClientConfig, CertError> {
    client_config_with(chain, key, roots(ca)?, alpns)
}

fn client_config_with(
    chain: &[CertificateDer<'static>],
    key: &PrivateKeyDer<'static>,
    roots: Arc<RootCertStore>,
    alpns: &[&[u8]],
) -> Result<ClientConfig, CertError> {
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain.to_vec(), key.clone_key())?;
    config.alpn_protocols = alpn_list(alpns);
    // 0-RTT data is replayable: never send it.
    config.enable_early_data = false;
    Ok(config)
}

impl NodeIdentity {
    /// The config with which this node accepts connections: TLS 1.3, this node's
    /// certificate, and a client certificate required from every peer, verified against the
    /// cluster CA only. `alpns` are the protocols offered, in order of preference (usually
    /// `&[ALPN]`, plus [`CLIENT_ALPN`] where clients are served); a peer that offers none of
    /// them is refused with `no_application_protocol`.
    ///
    /// The handshake proves the peer holds a certificate of the cluster CA, not which node
    /// it is: read that with [`crate::peer_identity`] on the peer's chain afterwards.
    ///
    /// # Errors
    ///
    /// [`CertError::Tls`] if rustls refuses the certificate, key or CA,
    /// [`CertError::Verifier`] if it refuses to build the client verifier.
    pub fn server_config(&self, alpns: &[&[u8]]) -> Result<ServerConfig, CertError> {
        self.server_config_trusting(alpns, std::slice::from_ref(&self.ca))
    }

    /// As [`NodeIdentity::server_config`], trusting every CA of `cas` instead of this
    /// identity's own CA alone: during a CA rollover, the old and the new CA, so peers with
    /// certificates of either are accepted. Include the identity's own CA.
    ///
    /// # Errors
    ///
    /// As [`NodeIdentity::server_config`].
    pub fn server_config_trusting(
        &self,
        alpns: &[&[u8]],
        cas: &[CertificateDer<'static>],
    ) -> Result<ServerConfig, CertError> {
        let provider = provider();
        let verifier =
            WebPkiClientVerifier::builder_with_provider(roots_of(cas)?, provider.clone())
                .build()?;
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_client_cert_verifier(verifier)
            .with_single_cert(self.cert_chain.clone(), self.key.clone_key())?;
        config.alpn_protocols = alpn_list(alpns);
        // 0-RTT off: early data is replayable (quinn requires 0 or u32::MAX here).
        config.max_early_data_size = 0;
        Ok(config)
    }

    /// The config with which this node dials peers: TLS 1.3, the cluster CA as the only
    /// trust anchor, this node's certificate presented for client auth. Dial with the server
    /// name [`crate::node_server_name`] of the node you mean to reach, so that hostname
    /// verification proves you reached it.
    ///
    /// # Errors
    ///
    /// [`CertError::Tls`] if rustls refuses the certificate, key or CA.
    pub fn client_config(&self, alpns: &[&[u8]]) -> Result<ClientConfig, CertError> {
        client_config_for(&self.cert_chain, &self.key, &self.ca, alpns)
    }

    /// As [`NodeIdentity::client_config`], trusting every CA of `cas` (see
    /// [`NodeIdentity::server_config_trusting`]).
    ///
    /// # Errors
    ///
    /// As [`NodeIdentity::client_config`].
    pub fn client_config_trusting(
        &self,
        alpns: &[&[u8]],
        cas: &[CertificateDer<'static>],
    ) -> Result<ClientConfig, CertError> {
        client_config_with(&self.cert_chain, &self.key, roots_of(cas)?, alpns)
    }
}

impl ClientIdentity {
    /// The config with which a client dials a node: as [`NodeIdentity::client_config`], with
    /// the client's certificate (usually with `&[CLIENT_ALPN]`).
    ///
    /// # Errors
    ///
    /// [`CertError::Tls`] if rustls refuses the certificate, key or CA.
    pub fn client_config(&self, alpns: &[&[u8]]) -> Result<ClientConfig, CertError> {
        client_config_for(&self.cert_chain, &self.key, &self.ca, alpns)
    }
}
