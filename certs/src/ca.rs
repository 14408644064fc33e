//! The cluster CA and the identities it issues. One CA per cluster; every node and client
//! certificate is signed by it, and TLS peers trust nothing else.

use std::fmt;
use std::net::IpAddr;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType, string::Ia5String,
};
use routing::NodeId;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use time::{Duration, OffsetDateTime};

use crate::identity::{check_client_name, client_uri, node_uri, role_uri};
use crate::{CLUSTER_SERVER_NAME, CertError, ClientRole, node_server_name};

/// How long a generated CA certificate is valid: 10 years.
pub const CA_VALIDITY: Duration = Duration::days(3650);
/// How long an issued node or client certificate is valid: 2 years.
pub const LEAF_VALIDITY: Duration = Duration::days(730);
/// How far back `not_before` is set, so that peers with slightly slow clocks accept a
/// fresh certificate.
const CLOCK_SKEW: Duration = Duration::hours(1);

/// The cluster's certificate authority: its certificate and signing key.
pub struct ClusterCa {
    issuer: Issuer<'static, KeyPair>,
    cert_der: CertificateDer<'static>,
    cert_pem: String,
}

impl fmt::Debug for ClusterCa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print the key.
        f.debug_struct("ClusterCa")
            .field("cert_der_len", &self.cert_der.len())
            .finish_non_exhaustive()
    }
}

impl ClusterCa {
    /// Generates a new CA (ECDSA P-256, valid for [`CA_VALIDITY`]) named `common_name`.
    ///
    /// # Errors
    ///
    /// [`CertError::Generate`] if rcgen cannot create the key or the certificate.
    pub fn generate(common_name: &str) -> Result<Self, CertError> {
        let gen_err = |source| CertError::Generate {
            what: "CA certificate",
            source,
        };
        let key = KeyPair::generate().map_err(gen_err)?;
        let mut params = CertificateParams::default();
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let now = OffsetDateTime::now_utc();
        params.not_before = now - CLOCK_SKEW;
        params.not_after = now + CA_VALIDITY;
        let cert = params.self_signed(&key).map_err(gen_err)?;
        Ok(Self {
            cert_pem: cert.pem(),
            cert_der: cert.der().clone(),
            issuer: Issuer::new(params, key),
        })
    }

    /// Loads a CA from its certificate and private key in PEM.
    ///
    /// # Errors
    ///
    /// [`CertError::Parse`] if either does not parse, the certificate is not a CA, or the
    /// key does not belong to the certificate.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self, CertError> {
        let cert_der =
            CertificateDer::from_pem_slice(cert_pem.as_bytes()).map_err(|e| CertError::Parse {
                what: "CA certificate",
                reason: e.to_string(),
            })?;
        let key = KeyPair::from_pem(key_pem).map_err(|e| CertError::Parse {
            what: "CA private key",
            reason: e.to_string(),
        })?;
        {
            let (_, cert) = parse_x509(&cert_der, "CA certificate")?;
            if !cert.is_ca() {
                return Err(CertError::Parse {
                    what: "CA certificate",
                    reason: "it is not a CA certificate (basic constraints)".into(),
                });
            }
            check_key_matches(&cert, &key, "CA private key")?;
        }
        let issuer = Issuer::from_ca_cert_der(&cert_der, key).map_err(|e| CertError::Parse {
            what: "CA certificate",
            reason: e.to_string(),
        })?;
        Ok(Self {
            issuer,
            cert_der,
            cert_pem: cert_pem.to_owned(),
        })
    }

    /// The CA certificate in PEM (public; give it to every node and client).
    #[must_use]
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA private key in PEM (secret; keep it off the nodes if you can).
    #[must_use]
    pub fn key_pem(&self) -> String {
        self.issuer.key().serialize_pem()
    }

    /// The CA certificate in DER.
    #[must_use]
    pub fn cert_der(&self) -> &CertificateDer<'static> {
        &self.cert_der
    }

    /// Issues a node certificate, valid from now for [`LEAF_VALIDITY`]. It carries the SANs
    /// `urn:pontoon:node:<id>` and DNS [`node_server_name`], plus `extra_sans` (each a DNS
    /// name or an IP address), and both the server and client auth key usages.
    ///
    /// # Errors
    ///
    /// [`CertError::ReservedNodeId`] for `NodeId(0)`, [`CertError::InvalidSan`] for an extra
    /// SAN that is neither a DNS name nor an IP address, [`CertError::Generate`] if rcgen
    /// fails.
    pub fn issue_node(&self, id: NodeId, extra_sans: &[String]) -> Result<NodeIdentity, CertError> {
        let now = OffsetDateTime::now_utc();
        self.issue_node_with_validity(id, extra_sans, now - CLOCK_SKEW, now + LEAF_VALIDITY)
    }

    /// [`ClusterCa::issue_node`] with an explicit validity period (tests of expiry,
    /// short-lived certificates).
    ///
    /// # Errors
    ///
    /// Those of [`ClusterCa::issue_node`], and [`CertError::InvalidValidity`] if
    /// `not_before` is not earlier than `not_after`.
    pub fn issue_node_with_validity(
        &self,
        id: NodeId,
        extra_sans: &[String],
        not_before: OffsetDateTime,
        not_after: OffsetDateTime,
    ) -> Result<NodeIdentity, CertError> {
        if id == NodeId(0) {
            return Err(CertError::ReservedNodeId);
        }
        let mut sans = vec![
            uri_san(&node_uri(id))?,
            dns_san(&node_server_name(id))?,
            dns_san(CLUSTER_SERVER_NAME)?,
        ];
        for san in extra_sans {
            sans.push(parse_extra_san(san)?);
        }
        let (cert, key) = self.issue_leaf(
            &format!("pontoon node {}", id.get()),
            sans,
            vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ],
            not_before,
            not_after,
        )?;
        Ok(NodeIdentity {
            node_id: id,
            cert_chain: vec![cert],
            key,
            ca: self.cert_der.clone(),
        })
    }

    /// Issues a [`ClientRole::Kv`] client certificate: [`ClusterCa::issue_client_with_role`]
    /// with the least privilege.
    ///
    /// # Errors
    ///
    /// Those of [`ClusterCa::issue_client_with_role`].
    pub fn issue_client(&self, name: &str) -> Result<ClientIdentity, CertError> {
        self.issue_client_with_role(name, ClientRole::Kv)
    }

    /// Issues a client certificate (SANs `urn:pontoon:client:<name>` and
    /// `urn:pontoon:role:<role>`, client auth only), valid from now for [`LEAF_VALIDITY`].
    ///
    /// # Errors
    ///
    /// [`CertError::InvalidClientName`] unless the name is 1 to 64 characters of
    /// `[A-Za-z0-9_-]`, [`CertError::Generate`] if rcgen fails.
    pub fn issue_client_with_role(
        &self,
        name: &str,
        role: ClientRole,
    ) -> Result<ClientIdentity, CertError> {
        check_client_name(name)?;
        let now = OffsetDateTime::now_utc();
        let (cert, key) = self.issue_leaf(
            &format!("pontoon client {name}"),
            vec![uri_san(&client_uri(name))?, uri_san(&role_uri(role))?],
            vec![ExtendedKeyUsagePurpose::ClientAuth],
            now - CLOCK_SKEW,
            now + LEAF_VALIDITY,
        )?;
        Ok(ClientIdentity {
            name: name.to_owned(),
            role,
            cert_chain: vec![cert],
            key,
            ca: self.cert_der.clone(),
        })
    }

    fn issue_leaf(
        &self,
        common_name: &str,
        sans: Vec<SanType>,
        extended_key_usages: Vec<ExtendedKeyUsagePurpose>,
        not_before: OffsetDateTime,
        not_after: OffsetDateTime,
    ) -> Result<(CertificateDer<'static>, PrivateKeyDer<'static>), CertError> {
        if not_before >= not_after {
            return Err(CertError::InvalidValidity);
        }
        let gen_err = |source| CertError::Generate {
            what: "certificate",
            source,
        };
        let key = KeyPair::generate().map_err(gen_err)?;
        let mut params = CertificateParams::default();
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.subject_alt_names = sans;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = extended_key_usages;
        params.use_authority_key_identifier_extension = true;
        params.not_before = not_before;
        params.not_after = not_after;
        let cert = params.signed_by(&key, &self.issuer).map_err(gen_err)?;
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        Ok((cert.der().clone(), key))
    }
}

/// A node's certificate chain, private key and the cluster CA it trusts.
pub struct NodeIdentity {
    pub(crate) node_id: NodeId,
    pub(crate) cert_chain: Vec<CertificateDer<'static>>,
    pub(crate) key: PrivateKeyDer<'static>,
    pub(crate) ca: CertificateDer<'static>,
}

impl Clone for NodeIdentity {
    fn clone(&self) -> Self {
        Self {
            node_id: self.node_id,
            cert_chain: self.cert_chain.clone(),
            key: self.key.clone_key(),
            ca: self.ca.clone(),
        }
    }
}

impl fmt::Debug for NodeIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NodeIdentity")
            .field("node_id", &self.node_id)
            .finish_non_exhaustive()
    }
}

impl NodeIdentity {
    /// Builds an identity from DER parts, checking that they belong together: the
    /// certificate names exactly one node, the key is its key, and the CA signed it.
    ///
    /// # Errors
    ///
    /// [`CertError::Parse`] for unparsable parts, a key that is not the certificate's or a
    /// certificate the CA did not sign; the errors of [`crate::node_id_from_chain`].
    pub fn from_der(
        cert_chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
        ca: CertificateDer<'static>,
    ) -> Result<Self, CertError> {
        let node_id = crate::node_id_from_chain(&cert_chain)?;
        check_leaf(&cert_chain, &key, &ca)?;
        Ok(Self {
            node_id,
            cert_chain,
            key,
            ca,
        })
    }

    /// Builds an identity from PEM text: the node certificate (chain), its private key and
    /// the CA certificate.
    ///
    /// # Errors
    ///
    /// [`CertError::Parse`] for PEM that holds no certificate or key, and the errors of
    /// [`NodeIdentity::from_der`].
    pub fn from_pem(cert_pem: &str, key_pem: &str, ca_pem: &str) -> Result<Self, CertError> {
        let (chain, key, ca) = parse_pem_parts(cert_pem, key_pem, ca_pem)?;
        Self::from_der(chain, key, ca)
    }

    /// The node this identity belongs to.
    #[must_use]
    pub fn node_id(&self) -> NodeId {
        self.node_id
    }

    /// The node's certificate chain, end-entity first.
    #[must_use]
    pub fn cert_chain(&self) -> &[CertificateDer<'static>] {
        &self.cert_chain
    }

    /// The node's private key.
    #[must_use]
    pub fn key(&self) -> &PrivateKeyDer<'static> {
        &self.key
    }

    /// The cluster CA certificate, the only trust anchor of this node.
    #[must_use]
    pub fn ca(&self) -> &CertificateDer<'static> {
        &self.ca
    }

    /// The node certificate in PEM.
    #[must_use]
    pub fn cert_pem(&self) -> String {
        chain_pem(&self.cert_chain)
    }

    /// The node's private key in PEM (PKCS#8).
    #[must_use]
    pub fn key_pem(&self) -> String {
        key_pem(&self.key)
    }
}

/// A client's certificate chain, private key and the cluster CA it trusts.
pub struct ClientIdentity {
    pub(crate) name: String,
    pub(crate) role: ClientRole,
    pub(crate) cert_chain: Vec<CertificateDer<'static>>,
    pub(crate) key: PrivateKeyDer<'static>,
    pub(crate) ca: CertificateDer<'static>,
}

impl Clone for ClientIdentity {
    fn clone(&self) -> Self {
        Self {
            name: self.name.clone(),
            role: self.role,
            cert_chain: self.cert_chain.clone(),
            key: self.key.clone_key(),
            ca: self.ca.clone(),
        }
    }
}

impl fmt::Debug for ClientIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientIdentity")
            .field("name", &self.name)
            .field("role", &self.role)
            .finish_non_exhaustive()
    }
}

impl ClientIdentity {
    /// Builds a client identity from PEM text: the client certificate (chain), its private
    /// key and the CA certificate; checks them as [`NodeIdentity::from_der`] does.
    ///
    /// # Errors
    ///
    /// [`CertError::Parse`] for unparsable or mismatched parts, [`CertError::MissingIdentity`]
    /// and friends for a certificate without a client SAN, [`CertError::InvalidSan`] for a
    /// node certificate.
    pub fn from_pem(cert_pem: &str, key_pem: &str, ca_pem: &str) -> Result<Self, CertError> {
        let (cert_chain, key, ca) = parse_pem_parts(cert_pem, key_pem, ca_pem)?;
        let name = match crate::peer_identity(&cert_chain)? {
            crate::PeerIdentity::Client(name) => name,
            crate::PeerIdentity::Node(id) => {
                return Err(CertError::InvalidSan {
                    san: node_uri(id),
                    reason: "this is a node certificate, a client certificate was expected",
                });
            }
        };
        let role = crate::client_role(&cert_chain)?;
        check_leaf(&cert_chain, &key, &ca)?;
        Ok(Self {
            name,
            role,
            cert_chain,
            key,
            ca,
        })
    }

    /// The client's name.
    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The role its certificate grants.
    #[must_use]
    pub fn role(&self) -> ClientRole {
        self.role
    }

    /// The client's certificate chain, end-entity first.
    #[must_use]
    pub fn cert_chain(&self) -> &[CertificateDer<'static>] {
        &self.cert_chain
    }

    /// The client's private key.
    #[must_use]
    pub fn key(&self) -> &PrivateKeyDer<'static> {
        &self.key
    }

    /// The cluster CA certificate.
    #[must_use]
    pub fn ca(&self) -> &CertificateDer<'static> {
        &self.ca
    }

    /// The client certificate in PEM.
    #[must_use]
    pub fn cert_pem(&self) -> String {
        chain_pem(&self.cert_chain)
    }

    /// The client's private key in PEM (PKCS#8).
    #[must_use]
    pub fn key_pem(&self) -> String {
        key_pem(&self.key)
    }
}

type PemParts = (
    Vec<CertificateDer<'static>>,
    PrivateKeyDer<'static>,
    CertificateDer<'static>,
);

fn parse_pem_parts(cert_pem: &str, key_pem: &str, ca_pem: &str) -> Result<PemParts, CertError> {
    let chain = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| CertError::Parse {
            what: "certificate",
            reason: e.to_string(),
        })?;
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| CertError::Parse {
        what: "private key",
        reason: e.to_string(),
    })?;
    let ca = CertificateDer::from_pem_slice(ca_pem.as_bytes()).map_err(|e| CertError::Parse {
        what: "CA certificate",
        reason: e.to_string(),
    })?;
    Ok((chain, key, ca))
}

/// Checks that the key belongs to the end-entity certificate and that the CA signed it, so
/// a mix-up of files fails at load time, not as a handshake failure on a peer.
fn check_leaf(
    chain: &[CertificateDer<'_>],
    key: &PrivateKeyDer<'_>,
    ca: &CertificateDer<'_>,
) -> Result<(), CertError> {
    let leaf = chain.first().ok_or(CertError::NoCertificate)?;
    let (_, leaf) = parse_x509(leaf, "certificate")?;
    let (_, ca) = parse_x509(ca, "CA certificate")?;
    let key = KeyPair::try_from(key).map_err(|e| CertError::Parse {
        what: "private key",
        reason: e.to_string(),
    })?;
    check_key_matches(&leaf, &key, "private key")?;
    leaf.verify_signature(Some(ca.public_key()))
        .map_err(|e| CertError::Parse {
            what: "certificate",
            reason: format!("it was not signed by this CA ({e})"),
        })
}

fn parse_x509<'a>(
    der: &'a CertificateDer<'_>,
    what: &'static str,
) -> Result<(&'a [u8], x509_parser::certificate::X509Certificate<'a>), CertError> {
    x509_parser::parse_x509_certificate(der).map_err(|e| CertError::Parse {
        what,
        reason: e.to_string(),
    })
}

fn check_key_matches(
    cert: &x509_parser::certificate::X509Certificate<'_>,
    key: &KeyPair,
    what: &'static str,
) -> Result<(), CertError> {
    use rcgen::PublicKeyData;
    if cert.public_key().subject_public_key.data.as_ref() == key.der_bytes() {
        Ok(())
    } else {
        Err(CertError::Parse {
            what,
            reason: "the key does not belong to the certificate".into(),
        })
    }
}

fn uri_san(uri: &str) -> Result<SanType, CertError> {
    Ia5String::try_from(uri)
        .map(SanType::URI)
        .map_err(|_| CertError::InvalidSan {
            san: uri.to_owned(),
            reason: "not ASCII",
        })
}

fn dns_san(name: &str) -> Result<SanType, CertError> {
    Ia5String::try_from(name)
        .map(SanType::DnsName)
        .map_err(|_| CertError::InvalidSan {
            san: name.to_owned(),
            reason: "not ASCII",
        })
}

/// An extra SAN: an IP address if it parses as one, else a DNS name.
fn parse_extra_san(san: &str) -> Result<SanType, CertError> {
    if let Ok(ip) = san.parse::<IpAddr>() {
        return Ok(SanType::IpAddress(ip));
    }
    rustls_pki_types::DnsName::try_from(san).map_err(|_| CertError::InvalidSan {
        san: san.to_owned(),
        reason: "neither an IP address nor a valid DNS name",
    })?;
    dns_san(san)
}

fn chain_pem(chain: &[CertificateDer<'_>]) -> String {
    chain
        .iter()
        .map(|c| pem_block("CERTIFICATE", c.as_ref()))
        .collect()
}

fn key_pem(key: &PrivateKeyDer<'_>) -> String {
    let label = match key {
        PrivateKeyDer::Pkcs1(_) => "RSA PRIVATE KEY",
        PrivateKeyDer::Sec1(_) => "EC PRIVATE KEY",
        _ => "PRIVATE KEY",
    };
    pem_block(label, key.secret_der())
}

/// RFC 7468 PEM: base64 in lines of 64 characters.
fn pem_block(label: &str, der: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut b64 = String::with_capacity(der.len().div_ceil(3) * 4);
    for chunk in der.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, &b)| n | (u32::from(b) << (16 - 8 * i)));
        for i in 0..4 {
            if i <= chunk.len() {
                b64.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                b64.push('=');
            }
        }
    }
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pem_blocks_round_trip_through_the_pem_parser() {
        for len in [0usize, 1, 2, 3, 47, 48, 49, 200] {
            let der: Vec<u8> = (0..len).map(|i| (i * 37 % 256) as u8).collect();
            let pem = pem_block("CERTIFICATE", &der);
            let back = CertificateDer::from_pem_slice(pem.as_bytes()).unwrap();
            assert_eq!(back.as_ref(), der.as_slice(), "len {len}");
        }
    }

    #[test]
    fn issued_client_certificates_carry_their_role_and_a_roleless_one_reads_as_kv() {
        let ca = ClusterCa::generate("roles").unwrap();
        for role in [ClientRole::Kv, ClientRole::Admin] {
            let client = ca.issue_client_with_role("ops", role).unwrap();
            assert_eq!(crate::client_role(client.cert_chain()).unwrap(), role);
            assert_eq!(
                crate::peer_identity(client.cert_chain()).unwrap(),
                crate::PeerIdentity::Client("ops".into())
            );
            let back =
                ClientIdentity::from_pem(&client.cert_pem(), &client.key_pem(), ca.cert_pem())
                    .unwrap();
            assert_eq!(back.role(), role);
        }
        assert_eq!(ca.issue_client("kv").unwrap().role(), ClientRole::Kv);
        // A certificate from before roles existed: identity SAN only.
        let now = OffsetDateTime::now_utc();
        let (legacy, _) = ca
            .issue_leaf(
                "pontoon client old",
                vec![uri_san(&client_uri("old")).unwrap()],
                vec![ExtendedKeyUsagePurpose::ClientAuth],
                now - CLOCK_SKEW,
                now + LEAF_VALIDITY,
            )
            .unwrap();
        assert_eq!(crate::client_role(&[legacy]).unwrap(), ClientRole::Kv);
        // Two roles, or one this build does not know, are refused rather than guessed.
        for sans in [
            vec![role_uri(ClientRole::Kv), role_uri(ClientRole::Admin)],
            vec!["urn:pontoon:role:root".to_string()],
        ] {
            let mut all = vec![uri_san(&client_uri("odd")).unwrap()];
            all.extend(sans.iter().map(|s| uri_san(s).unwrap()));
            let (odd, _) = ca
                .issue_leaf(
                    "pontoon client odd",
                    all,
                    vec![ExtendedKeyUsagePurpose::ClientAuth],
                    now - CLOCK_SKEW,
                    now + LEAF_VALIDITY,
                )
                .unwrap();
            assert!(matches!(
                crate::client_role(&[odd]),
                Err(CertError::InvalidSan { .. })
            ));
        }
    }

    #[test]
    fn extra_sans_are_ip_or_dns() {
        assert!(matches!(
            parse_extra_san("10.0.0.1"),
            Ok(SanType::IpAddress(_))
        ));
        assert!(matches!(parse_extra_san("::1"), Ok(SanType::IpAddress(_))));
        assert!(matches!(
            parse_extra_san("db-1.example.com"),
            Ok(SanType::DnsName(_))
        ));
        for bad in ["", "not a name", "bad_name!", "é.example"] {
            assert!(
                matches!(parse_extra_san(bad), Err(CertError::InvalidSan { .. })),
                "{bad:?}"
            );
        }
    }
}
