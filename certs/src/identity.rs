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

/// The prefix of the URI SAN that carries a client's role: `urn:pontoon:role:<role>`, with
/// `<role>` one of [`ClientRole::as_str`] (`kv`, `admin`). A client certificate carries at
/// most one; one without it is a [`ClientRole::Kv`] client (least privilege: certificates
/// issued before roles existed can read and write keys, and nothing more). Node certificates
/// carry none: a role says what a *client* may ask of the cluster.
pub const ROLE_URI_PREFIX: &str = "urn:pontoon:role:";

/// What every pontoon identity SAN starts with; a certificate carries exactly one (role SANs,
/// [`ROLE_URI_PREFIX`], are not identities and are not counted).
const PONTOON_URI_PREFIX: &str = "urn:pontoon:";

/// What a client certificate allows its holder to ask of the cluster, checked by the node per
/// operation (DESIGN.md: trust boundaries).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ClientRole {
    /// Reads and writes keys; may read the cluster's shape (routing table, status), may not
    /// change it. The role of a certificate that names none.
    Kv,
    /// Everything a kv client may do, and reshaping the cluster: membership and routing
    /// changes, vShard steps and exports, leader transfers.
    Admin,
}

impl ClientRole {
    /// The role as its SAN and the command line write it: `kv` or `admin`.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            ClientRole::Kv => "kv",
            ClientRole::Admin => "admin",
        }
    }

    /// Whether this role may change the cluster's shape.
    #[must_use]
    pub fn is_admin(self) -> bool {
        self == ClientRole::Admin
    }
}

impl std::fmt::Display for ClientRole {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for ClientRole {
    type Err = CertError;

    fn from_str(s: &str) -> Result<Self, CertError> {
        match s {
            "kv" => Ok(ClientRole::Kv),
            "admin" => Ok(ClientRole::Admin),
            _ => Err(CertError::InvalidSan {
                san: format!("{ROLE_URI_PREFIX}{s}"),
                reason: "a client role is `kv` or `admin`",
            }),
        }
    }
}

/// The URI SAN that gives a client its role.
pub(crate) fn role_uri(role: ClientRole) -> String {
    format!("{ROLE_URI_PREFIX}{}", role.as_str())
}

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
    let uris = pontoon_uris(chain)?;
    let identities: Vec<&str> = uris
        .iter()
        .map(String::as_str)
        .filter(|uri| !uri.starts_with(ROLE_URI_PREFIX))
        .collect();
    match identities.as_slice() {
        [] => Err(CertError::MissingIdentity),
        [uri] => parse_identity_uri(uri),
        more => Err(CertError::AmbiguousIdentity { count: more.len() }),
    }
}

/// The role a client's chain grants (see [`ROLE_URI_PREFIX`]): [`ClientRole::Kv`] when the
/// certificate names none. Like [`peer_identity`], call it only on a chain the handshake
/// verified; pair it with [`peer_identity`] to know who holds the role.
///
/// # Errors
///
/// The parse errors of [`peer_identity`], and [`CertError::InvalidSan`] for a role this build
/// does not know or a certificate naming more than one role: such a certificate is refused,
/// not downgraded, since it was not issued by `pontoon certs`.
pub fn client_role(chain: &[CertificateDer<'_>]) -> Result<ClientRole, CertError> {
    let uris = pontoon_uris(chain)?;
    let mut roles = uris.iter().filter_map(|u| u.strip_prefix(ROLE_URI_PREFIX));
    match (roles.next(), roles.next()) {
        (None, _) => Ok(ClientRole::Kv),
        (Some(role), None) => role.parse(),
        (Some(_), Some(_)) => Err(CertError::InvalidSan {
            san: ROLE_URI_PREFIX.to_owned(),
            reason: "a client certificate names at most one role",
        }),
    }
}

/// Every `urn:pontoon:` URI SAN of the chain's end-entity certificate.
fn pontoon_uris(chain: &[CertificateDer<'_>]) -> Result<Vec<String>, CertError> {
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
    Ok(sans
        .iter()
        .flat_map(|ext| ext.value.general_names.iter())
        .filter_map(|name| match name {
            GeneralName::URI(uri) if uri.starts_with(PONTOON_URI_PREFIX) => Some((*uri).to_owned()),
            _ => None,
        })
        .collect())
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
    fn roles_parse_strictly_and_print_as_written() {
        for role in [ClientRole::Kv, ClientRole::Admin] {
            assert_eq!(role.as_str().parse::<ClientRole>().unwrap(), role);
            assert_eq!(role_uri(role), format!("urn:pontoon:role:{role}"));
        }
        for bad in ["", "Admin", "root", "admin "] {
            assert!(bad.parse::<ClientRole>().is_err(), "{bad:?}");
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
