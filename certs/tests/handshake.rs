//! Real TLS handshakes over 127.0.0.1 TCP between configs built by this crate: what is
//! accepted, what is refused, and with which error on which side.

// Test helpers (outside #[test] fns) unwrap freely: a failure there is a test failure.
#![allow(clippy::unwrap_used)]

use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use pontoon_certs::{
    ALPN, CLIENT_ALPN, CertError, ClusterCa, NodeId, NodeIdentity, PeerIdentity,
    node_id_from_chain, node_server_name, peer_identity,
};
use rcgen::{
    CertificateParams, ExtendedKeyUsagePurpose, Issuer, KeyPair, SanType, string::Ia5String,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::{
    AlertDescription, CertificateError, ClientConfig, ClientConnection, Error as TlsError,
    RootCertStore, ServerConfig, ServerConnection, StreamOwned,
};

const TIMEOUT: Duration = Duration::from_secs(10);

/// How one side of a connection ended.
#[derive(Debug)]
enum Side {
    /// Handshake done and one message exchanged each way.
    Established {
        peer: Vec<CertificateDer<'static>>,
        alpn: Option<Vec<u8>>,
    },
    /// rustls refused (or received an alert).
    Tls(TlsError),
    /// The socket failed without a TLS error (e.g. the peer hung up).
    Io(#[allow(dead_code, reason = "read through Debug in failure messages")] io::ErrorKind),
}

fn side_error(e: io::Error) -> Side {
    match e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<TlsError>())
    {
        Some(tls) => Side::Tls(tls.clone()),
        None => Side::Io(e.kind()),
    }
}

/// Connects a client with `client` (dialing `server_name`) to a server with `server`; the
/// client sends "ping", the server answers "pong". Returns (server side, client side).
fn connect(server: ServerConfig, client: ClientConfig, server_name: &str) -> (Side, Side) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let server = Arc::new(server);
    let server_side = thread::spawn(move || {
        let (sock, _) = listener.accept().unwrap();
        sock.set_read_timeout(Some(TIMEOUT)).unwrap();
        let conn = ServerConnection::new(server).unwrap();
        let mut tls = StreamOwned::new(conn, sock);
        let mut buf = [0u8; 4];
        let run = tls
            .read_exact(&mut buf)
            .and_then(|()| tls.write_all(b"pong"))
            .and_then(|()| tls.flush());
        match run {
            Ok(()) => {
                assert_eq!(&buf, b"ping");
                Side::Established {
                    peer: tls
                        .conn
                        .peer_certificates()
                        .map(|c| c.iter().map(|c| c.clone().into_owned()).collect())
                        .unwrap_or_default(),
                    alpn: tls.conn.alpn_protocol().map(<[u8]>::to_vec),
                }
            }
            Err(e) => side_error(e),
        }
    });

    let sock = TcpStream::connect(addr).unwrap();
    sock.set_read_timeout(Some(TIMEOUT)).unwrap();
    let name = ServerName::try_from(server_name.to_owned()).unwrap();
    let conn = ClientConnection::new(Arc::new(client), name).unwrap();
    let mut tls = StreamOwned::new(conn, sock);
    let mut buf = [0u8; 4];
    let run = tls
        .write_all(b"ping")
        .and_then(|()| tls.flush())
        .and_then(|()| tls.read_exact(&mut buf));
    let client_side = match run {
        Ok(()) => {
            assert_eq!(&buf, b"pong");
            Side::Established {
                peer: tls
                    .conn
                    .peer_certificates()
                    .map(|c| c.iter().map(|c| c.clone().into_owned()).collect())
                    .unwrap_or_default(),
                alpn: tls.conn.alpn_protocol().map(<[u8]>::to_vec),
            }
        }
        Err(e) => side_error(e),
    };
    drop(tls);
    (server_side.join().unwrap(), client_side)
}

fn peer_of(side: &Side) -> &[CertificateDer<'static>] {
    match side {
        Side::Established { peer, .. } => peer,
        other => panic!("expected an established connection, got {other:?}"),
    }
}

fn alpn_of(side: &Side) -> Option<&[u8]> {
    match side {
        Side::Established { alpn, .. } => alpn.as_deref(),
        other => panic!("expected an established connection, got {other:?}"),
    }
}

fn certificate_error(side: &Side) -> &CertificateError {
    match side {
        Side::Tls(TlsError::InvalidCertificate(e)) => e,
        other => panic!("expected an invalid certificate error, got {other:?}"),
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn roots(ca: &CertificateDer<'static>) -> Arc<RootCertStore> {
    let mut roots = RootCertStore::empty();
    roots.add(ca.clone()).unwrap();
    Arc::new(roots)
}

/// A client config that trusts `trust` but presents `chain`/`key` (or nothing): how a peer
/// with a foreign or broken certificate looks to our server.
fn rogue_client(
    trust: &CertificateDer<'static>,
    present: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
    alpn: &[u8],
) -> ClientConfig {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots(trust));
    let mut config = match present {
        Some((chain, key)) => builder.with_client_auth_cert(chain, key).unwrap(),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![alpn.to_vec()];
    config
}

/// A server config that trusts `trust` for client auth but presents `chain`/`key`.
fn rogue_server(
    trust: &CertificateDer<'static>,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> ServerConfig {
    let verifier = WebPkiClientVerifier::builder_with_provider(roots(trust), provider())
        .build()
        .unwrap();
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .unwrap();
    config.alpn_protocols = vec![ALPN.to_vec()];
    config
}

fn parts(id: &NodeIdentity) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
    (id.cert_chain().to_vec(), id.key().clone_key())
}

/// A certificate signed by the cluster CA with the node's DNS name but no pontoon URI SAN.
fn cert_without_node_id(ca: &ClusterCa) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
    let issuer =
        Issuer::from_ca_cert_pem(ca.cert_pem(), KeyPair::from_pem(&ca.key_pem()).unwrap()).unwrap();
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::default();
    params.subject_alt_names = vec![SanType::DnsName(
        Ia5String::try_from(node_server_name(NodeId(9))).unwrap(),
    )];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let cert = params.signed_by(&key, &issuer).unwrap();
    (
        vec![cert.der().clone()],
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
    )
}

fn expired(ca: &ClusterCa, id: NodeId) -> NodeIdentity {
    let now = time::OffsetDateTime::now_utc();
    ca.issue_node_with_validity(
        id,
        &[],
        now - time::Duration::days(10),
        now - time::Duration::days(1),
    )
    .unwrap()
}

fn is_expired(e: &CertificateError) -> bool {
    matches!(
        e,
        CertificateError::Expired | CertificateError::ExpiredContext { .. }
    )
}

#[test]
fn nodes_of_the_cluster_ca_connect_and_learn_each_others_ids() {
    let ca = ClusterCa::generate("test").unwrap();
    let n1 = ca.issue_node(NodeId(1), &[]).unwrap();
    let n2 = ca.issue_node(NodeId(2), &[]).unwrap();
    let (server, client) = connect(
        n1.server_config(&[ALPN]).unwrap(),
        n2.client_config(&[ALPN]).unwrap(),
        &node_server_name(NodeId(1)),
    );
    assert_eq!(node_id_from_chain(peer_of(&server)).unwrap(), NodeId(2));
    assert_eq!(node_id_from_chain(peer_of(&client)).unwrap(), NodeId(1));
    assert_eq!(alpn_of(&server), Some(ALPN));
    assert_eq!(alpn_of(&client), Some(ALPN));
}

#[test]
fn a_client_certificate_is_accepted_and_identified_as_a_client() {
    let ca = ClusterCa::generate("test").unwrap();
    let n1 = ca.issue_node(NodeId(1), &[]).unwrap();
    let kv = ca.issue_client("kv-cli").unwrap();
    let (server, client) = connect(
        n1.server_config(&[ALPN, CLIENT_ALPN]).unwrap(),
        kv.client_config(&[CLIENT_ALPN]).unwrap(),
        &node_server_name(NodeId(1)),
    );
    assert_eq!(
        peer_identity(peer_of(&server)).unwrap(),
        PeerIdentity::Client("kv-cli".into())
    );
    assert_eq!(alpn_of(&server), Some(CLIENT_ALPN));
    assert!(matches!(
        node_id_from_chain(peer_of(&server)),
        Err(CertError::NotANode { name }) if name == "kv-cli"
    ));
    assert_eq!(node_id_from_chain(peer_of(&client)).unwrap(), NodeId(1));
}

#[test]
fn dialing_one_node_and_reaching_another_is_refused_by_hostname_verification() {
    let ca = ClusterCa::generate("test").unwrap();
    let n1 = ca.issue_node(NodeId(1), &[]).unwrap();
    let n2 = ca.issue_node(NodeId(2), &[]).unwrap();
    let (_, client) = connect(
        n1.server_config(&[ALPN]).unwrap(),
        n2.client_config(&[ALPN]).unwrap(),
        &node_server_name(NodeId(3)),
    );
    assert!(
        matches!(
            certificate_error(&client),
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. }
        ),
        "{client:?}"
    );
}

#[test]
fn a_server_certificate_from_another_ca_is_refused_by_the_client() {
    let ca = ClusterCa::generate("test").unwrap();
    let other = ClusterCa::generate("other").unwrap();
    let impostor = other.issue_node(NodeId(1), &[]).unwrap();
    let (chain, key) = parts(&impostor);
    let n2 = ca.issue_node(NodeId(2), &[]).unwrap();
    let (server, client) = connect(
        rogue_server(ca.cert_der(), chain, key),
        n2.client_config(&[ALPN]).unwrap(),
        &node_server_name(NodeId(1)),
    );
    assert_eq!(certificate_error(&client), &CertificateError::UnknownIssuer);
    assert!(
        matches!(server, Side::Tls(TlsError::AlertReceived(_))),
        "{server:?}"
    );
}

#[test]
fn a_client_certificate_from_another_ca_is_refused_by_the_server() {
    let ca = ClusterCa::generate("test").unwrap();
    let other = ClusterCa::generate("other").unwrap();
    let n1 = ca.issue_node(NodeId(1), &[]).unwrap();
    let impostor = other.issue_node(NodeId(2), &[]).unwrap();
    let (server, client) = connect(
        n1.server_config(&[ALPN]).unwrap(),
        rogue_client(ca.cert_der(), Some(parts(&impostor)), ALPN),
        &node_server_name(NodeId(1)),
    );
    assert_eq!(certificate_error(&server), &CertificateError::UnknownIssuer);
    assert!(
        matches!(
            client,
            Side::Tls(TlsError::AlertReceived(AlertDescription::UnknownCA))
        ),
        "{client:?}"
    );
}

#[test]
fn an_expired_client_certificate_is_refused_by_the_server() {
    let ca = ClusterCa::generate("test").unwrap();
    let n1 = ca.issue_node(NodeId(1), &[]).unwrap();
    let old = expired(&ca, NodeId(2));
    let (server, _) = connect(
        n1.server_config(&[ALPN]).unwrap(),
        old.client_config(&[ALPN]).unwrap(),
        &node_server_name(NodeId(1)),
    );
    assert!(is_expired(certificate_error(&server)), "{server:?}");
}

#[test]
fn an_expired_server_certificate_is_refused_by_the_client() {
    let ca = ClusterCa::generate("test").unwrap();
    let old = expired(&ca, NodeId(1));
    let n2 = ca.issue_node(NodeId(2), &[]).unwrap();
    let (_, client) = connect(
        old.server_config(&[ALPN]).unwrap(),
        n2.client_config(&[ALPN]).unwrap(),
        &node_server_name(NodeId(1)),
    );
    assert!(is_expired(certificate_error(&client)), "{client:?}");
}

#[test]
fn a_certificate_without_a_node_id_passes_tls_but_yields_no_identity() {
    let ca = ClusterCa::generate("test").unwrap();
    let n1 = ca.issue_node(NodeId(1), &[]).unwrap();
    let anonymous = cert_without_node_id(&ca);

    // As a dialer: the CA signed it, so TLS accepts it; the node id check refuses it.
    let (server, _) = connect(
        n1.server_config(&[ALPN]).unwrap(),
        rogue_client(
            ca.cert_der(),
            Some((anonymous.0.clone(), anonymous.1.clone_key())),
            ALPN,
        ),
        &node_server_name(NodeId(1)),
    );
    assert!(matches!(
        peer_identity(peer_of(&server)),
        Err(CertError::MissingIdentity)
    ));
    assert!(matches!(
        node_id_from_chain(peer_of(&server)),
        Err(CertError::MissingIdentity)
    ));

    // As an acceptor.
    let n2 = ca.issue_node(NodeId(2), &[]).unwrap();
    let (_, client) = connect(
        rogue_server(ca.cert_der(), anonymous.0, anonymous.1),
        n2.client_config(&[ALPN]).unwrap(),
        &node_server_name(NodeId(9)),
    );
    assert!(matches!(
        node_id_from_chain(peer_of(&client)),
        Err(CertError::MissingIdentity)
    ));
}

#[test]
fn a_client_without_a_certificate_is_refused() {
    let ca = ClusterCa::generate("test").unwrap();
    let n1 = ca.issue_node(NodeId(1), &[]).unwrap();
    let (server, client) = connect(
        n1.server_config(&[ALPN]).unwrap(),
        rogue_client(ca.cert_der(), None, ALPN),
        &node_server_name(NodeId(1)),
    );
    assert!(
        matches!(server, Side::Tls(TlsError::NoCertificatesPresented)),
        "{server:?}"
    );
    assert!(
        matches!(
            client,
            Side::Tls(TlsError::AlertReceived(
                AlertDescription::CertificateRequired
            ))
        ),
        "{client:?}"
    );
}

#[test]
fn a_dialer_without_a_common_alpn_is_refused() {
    let ca = ClusterCa::generate("test").unwrap();
    let n1 = ca.issue_node(NodeId(1), &[]).unwrap();
    let n2 = ca.issue_node(NodeId(2), &[]).unwrap();
    let (server, client) = connect(
        n1.server_config(&[ALPN]).unwrap(),
        n2.client_config(&[b"something-else/1"]).unwrap(),
        &node_server_name(NodeId(1)),
    );
    assert!(
        matches!(server, Side::Tls(TlsError::NoApplicationProtocol)),
        "{server:?}"
    );
    assert!(
        matches!(
            client,
            Side::Tls(TlsError::AlertReceived(
                AlertDescription::NoApplicationProtocol
            ))
        ),
        "{client:?}"
    );
}

#[test]
fn configs_are_tls13_only_without_early_data_and_convert_into_quinn() {
    let ca = ClusterCa::generate("test").unwrap();
    let n1 = ca.issue_node(NodeId(1), &["127.0.0.1".into()]).unwrap();
    let server = n1.server_config(&[ALPN]).unwrap();
    let client = n1.client_config(&[ALPN]).unwrap();
    assert_eq!(server.max_early_data_size, 0);
    assert!(!client.enable_early_data);
    assert_eq!(server.alpn_protocols, vec![ALPN.to_vec()]);
    quinn::crypto::rustls::QuicServerConfig::try_from(server).unwrap();
    quinn::crypto::rustls::QuicClientConfig::try_from(client).unwrap();
}
