//! Who a certificate belongs to. A node's id and a client's name travel in one URI SAN, so
//! the identity a peer proves in the TLS handshake is the identity Pontoon acts on.

use routing::NodeId;
use rustls_pki_types::CertificateDer;
use x509_parser::extensions::GeneralName;

use crate::CertError;

/// The prefix of the URI SAN that carries a node's id: the full SAN is
/// `urn:pontoon:node:<id>`, with `<id>` the node id in decimal, without sign or leading zeros
/// (for example `urn:pontoon:node:3`). Every node certificate has exactly one such SAN and
/// no other `urn:pontoon:` SAN.
pub const NODE_URI_PREFIX: &str = "urn:pontoon:node:";

/// The prefix of the URI SAN that carries a client's name: `urn:pontoon:client:<name>`, with
/// `<name>` 1 to 64 characters of `[A-Za-z0-9_-]`.
pub const CLIENT_URI_PREFIX: &str = "urn:pontoon:client:";

/// What every pontoon identity SAN starts with; a certificate carries exactly one.
const PONTOON_URI_PREFIX: &str = "urn:pontoon:";

/// The TLS server name of a node: `n<id>.node.pontoon`. Every node certificate carries it as
/// a DNS SAN and dialers use it as the server name, so hostname verification proves that
/// the peer that answered is the node that was dialed.
///
/// ```
/// use pontoon_certs::{NodeId, node_server_name};
///
/// assert_eq!(node_server_name(NodeId(7)), "n7.node.pontoon");
/// ```
#[must_use]
pub fn node_server_name(id: NodeId) -> String {
    format!("n{}.node.pontoon", id.get())
}

/// A DNS SAN every node certificate carries besides its own [`node_server_name`]: clients
/// that only know a node's address (not its id) dial with this name and still verify that the
/// answering peer is a node of the cluster. Nodes dialing nodes always use the id-specific name.
pub const CLUSTER_SERVER_NAME: &str = "any.node.pontoon";

/// The URI SAN that names a node.
pub(crate) fn node_uri(id: NodeId) -> String {
    format!("{NODE_URI_PREFIX}{}", id.get())
}

/// The URI SAN that names a client.
pub(crate) fn client_uri(name: &str) -> String {
    format!("{CLIENT_URI_PREFIX}{name}")
}

/// Checks a client name: 1 to 64 characters of `[A-Za-z0-9_-]` (safe in a URI and a file
/// name).
pub(crate) fn check_client_name(name: &str) -> Result<(), CertError> {
    let ok = (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(CertError::InvalidClientName {
            name: name.to_owned(),
        })
    }
}

/// Who a peer is, as its certificate says.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum PeerIdentity {
    /// A node of the cluster.
    Node(NodeId),
    /// A client (for example the kv CLI), by name.
    Client(String),
}

/// Reads the identity from the end-entity (first) certificate of a peer's chain, as rustls
/// hands it over after a verified handshake (`peer_certificates()`).
///
/// This does not verify the chain: call it only on chains the TLS handshake verified against
/// the cluster CA.
///
/// # Errors
///
/// [`CertError::NoCertificate`] for an empty chain, [`CertError::Parse`] for a certificate
/// that is not X.509, [`CertError::MissingIdentity`] with no `urn:pontoon:` URI SAN,
/// [`CertError::AmbiguousIdentity`] with more than one, and [`CertError::InvalidSan`] for a
/// node id that is not a nonzero decimal u64 or a client name that breaks the rules.
pub fn peer_identity(chain: &[CertificateDer<'_>]) -> Result<PeerIdentity, CertError> {
    let leaf = chain.first().ok_or(CertError::NoCertificate)?;
    let (_, cert) = x509_parser::parse_x509_certificate(leaf).map_err(|e| CertError::Parse {
        what: "peer certificate",
        reason: e.to_string(),
    })?;
    let sans = cert
        .subject_alternative_name()
        .map_err(|e| CertError::Parse {
            what: "peer certificate's SAN extension",
            reason: e.to_string(),
        })?;
    let uris: Vec<&str> = sans
        .iter()
        .flat_map(|ext| ext.value.general_names.iter())
        .filter_map(|name| match name {
            GeneralName::URI(uri) if uri.starts_with(PONTOON_URI_PREFIX) => Some(*uri),
            _ => None,
        })
        .collect();
    match uris.as_slice() {
        [] => Err(CertError::MissingIdentity),
        [uri] => parse_identity_uri(uri),
        more => Err(CertError::AmbiguousIdentity { count: more.len() }),
    }
}

/// The node id of a peer's chain: [`peer_identity`] that also requires a node.
///
/// # Errors
///
/// The errors of [`peer_identity`], and [`CertError::NotANode`] for a client certificate.
pub fn node_id_from_chain(chain: &[CertificateDer<'_>]) -> Result<NodeId, CertError> {
    match peer_identity(chain)? {
        PeerIdentity::Node(id) => Ok(id),
        PeerIdentity::Client(name) => Err(CertError::NotANode { name }),
    }
}

/// The serial number of the chain's leaf certificate (big-endian bytes as encoded), for
/// revocation lists. Like [`peer_identity`], it does not verify the chain.
///
/// # Errors
///
/// [`CertError::NoCertificate`] for an empty chain, [`CertError::Parse`] for a certificate
/// that is not X.509.
pub fn leaf_serial(chain: &[CertificateDer<'_>]) -> Result<Vec<u8>, CertError> {
    let leaf = chain.first().ok_or(CertError::NoCertificate)?;
    let (_, cert) = x509_parser::parse_x509_certificate(leaf).map_err(|e| CertError::Parse {
        what: "peer certificate",
        reason: e.to_string(),
    })?;
    Ok(cert.raw_serial().to_vec())
}

fn parse_identity_uri(uri: &str) -> Result<PeerIdentity, CertError> {
    let invalid = |reason| CertError::InvalidSan {
        san: uri.to_owned(),
        reason,
    };
    if let Some(id) = uri.strip_prefix(NODE_URI_PREFIX) {
        if id.is_empty() || !id.bytes().all(|b| b.is_ascii_digit()) {
            return Err(invalid("the node id must be a decimal number"));
        }
        if id.starts_with('0') {
            return Err(invalid(
                "the node id must be nonzero and written without leading zeros",
            ));
        }
        let id: u64 = id
            .parse()
            .map_err(|_| invalid("the node id does not fit in 64 bits"))?;
        Ok(PeerIdentity::Node(NodeId(id)))
    } else if let Some(name) = uri.strip_prefix(CLIENT_URI_PREFIX) {
        check_client_name(name)
            .map_err(|_| invalid("a client name is 1 to 64 characters of [A-Za-z0-9_-]"))?;
        Ok(PeerIdentity::Client(name.to_owned()))
    } else {
        Err(invalid(
            "expected urn:pontoon:node:<id> or urn:pontoon:client:<name>",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_uris_parse_strictly() {
        assert_eq!(
            parse_identity_uri("urn:pontoon:node:42").unwrap(),
            PeerIdentity::Node(NodeId(42))
        );
        assert_eq!(
            parse_identity_uri("urn:pontoon:node:18446744073709551615").unwrap(),
            PeerIdentity::Node(NodeId(u64::MAX))
        );
        assert_eq!(
            parse_identity_uri("urn:pontoon:client:kv-cli_1").unwrap(),
            PeerIdentity::Client("kv-cli_1".into())
        );
        for bad in [
            "urn:pontoon:node:",
            "urn:pontoon:node:0",
            "urn:pontoon:node:007",
            "urn:pontoon:node:+7",
            "urn:pontoon:node:-7",
            "urn:pontoon:node:7 ",
            "urn:pontoon:node:18446744073709551616",
            "urn:pontoon:client:",
            "urn:pontoon:client:a/b",
            "urn:pontoon:other:1",
        ] {
            assert!(
                matches!(parse_identity_uri(bad), Err(CertError::InvalidSan { .. })),
                "{bad} was accepted"
            );
        }
    }

    #[test]
    fn client_names_are_restricted() {
        assert!(check_client_name("a").is_ok());
        assert!(check_client_name(&"x".repeat(64)).is_ok());
        for bad in ["", "a b", "é", "../x", "a.b"] {
            assert!(check_client_name(bad).is_err(), "{bad:?}");
        }
        assert!(check_client_name(&"x".repeat(65)).is_err());
    }

    #[test]
    fn empty_or_garbage_chains_are_refused() {
        assert!(matches!(peer_identity(&[]), Err(CertError::NoCertificate)));
        let garbage = CertificateDer::from(vec![0x30, 0x03, 0x01, 0x01, 0xff]);
        assert!(matches!(
            peer_identity(&[garbage]),
            Err(CertError::Parse { .. })
        ));
    }
}
