//! [`NodeTransport`]: everything a running node asks of its transport, so the node holds one
//! `Arc<dyn NodeTransport>` whichever network is underneath (QUIC in production, the in-process
//! [`LocalNetwork`](crate::mem::LocalNetwork) in tests) and never a concrete type.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;

use rustls::pki_types::CertificateDer;
use tokio::sync::mpsc;

use crate::{ClientConnection, PeerAdmission, Revocations, Transport, TransportError};

/// A future a [`NodeTransport`] method returns; boxed so the trait stays object-safe.
pub type TransportFuture<'a> = Pin<Box<dyn Future<Output = ()> + Send + 'a>>;

/// The transport a node runs on: [`Transport::send`] for the coordinator, and the endpoint's
/// life cycle and trust settings for the node's handle.
///
/// An implementation without some capability says so: a transport with no TLS refuses
/// [`NodeTransport::reload_tls`] with [`TransportError::NoTls`] rather than pretending to
/// have rotated a certificate.
pub trait NodeTransport: Transport {
    /// The address the transport is reached at.
    fn local_addr(&self) -> SocketAddr;

    /// The client connections this endpoint accepts: `Some` once when it accepts clients,
    /// `None` otherwise or when already taken.
    fn take_client_connections(&self) -> Option<mpsc::Receiver<ClientConnection>>;

    /// Replaces this node's certificate, key and trusted CA bundle without a restart.
    ///
    /// # Errors
    /// [`TransportError::IdentityChanged`] for another node's identity, [`TransportError::NoTls`]
    /// for a transport without TLS, or why the certificates cannot make TLS configs (the old
    /// ones then stay).
    fn reload_tls(
        &self,
        identity: &certs::NodeIdentity,
        cas: &[CertificateDer<'static>],
    ) -> Result<(), TransportError>;

    /// Installs the hook that decides which node ids may talk to this node (`None`: all).
    /// Peers already known that it refuses are forgotten now.
    fn set_peer_admission(&self, admission: Option<PeerAdmission>);

    /// Replaces the revoked node ids and certificate serials; live links of revoked peers end
    /// now.
    fn set_revocations(&self, revoked: Revocations);

    /// Applies the admission hook and the revocations again to every known peer (call it when
    /// the hook's answers changed).
    fn recheck_admission(&self);

    /// Closes every link and the endpoint; `send` fails with
    /// [`SendError::Shutdown`](crate::SendError::Shutdown) afterwards. The future ends once
    /// peers have been told (bounded by the implementation).
    fn shutdown(&self) -> TransportFuture<'_>;
}
