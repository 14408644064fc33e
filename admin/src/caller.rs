//! Who is asking: read once per connection from the certificate the TLS handshake verified,
//! then checked per operation.
//!
//! The rules (DESIGN.md, trust boundaries):
//! - a client certificate with role `admin` may do everything;
//! - a client certificate with role `kv` (or no role: certificates from before roles) may read
//!   and write keys and read the cluster's shape (routing table, group and node status), and
//!   nothing that changes the cluster or exports its data;
//! - a node certificate is refused on the client protocol altogether: nodes speak raft to each
//!   other on their own ALPN, and a stolen node key must not also be an admin credential;
//! - a certificate the node cannot read (no pontoon identity, an unknown role) is refused.

use certs::{ClientRole, PeerIdentity};
use rustls_pki_types::CertificateDer;

/// The caller of a client connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Caller {
    /// A client, by the name and role its certificate carries.
    Client {
        /// The client's name.
        name: String,
        /// What it may do.
        role: ClientRole,
    },
    /// A peer that may not use the client protocol; every request is refused.
    Refused {
        /// Who it is, as far as the node could tell.
        who: String,
        /// Why it is refused.
        reason: String,
    },
}

impl Caller {
    /// The caller behind a verified certificate chain (end-entity first).
    #[must_use]
    pub fn from_chain(chain: &[CertificateDer<'_>]) -> Self {
        match certs::peer_identity(chain) {
            Ok(PeerIdentity::Client(name)) => match certs::client_role(chain) {
                Ok(role) => Caller::Client { name, role },
                Err(e) => Caller::Refused {
                    who: format!("client {name}"),
                    reason: format!("its certificate's role cannot be read: {e}"),
                },
            },
            Ok(PeerIdentity::Node(id)) => Caller::Refused {
                who: format!("node {}", id.get()),
                reason: "node certificates are not accepted on the client protocol; \
                         use a client certificate (`pontoon certs issue --client NAME`)"
                    .into(),
            },
            Err(e) => Caller::Refused {
                who: "unidentified peer".into(),
                reason: format!("its certificate names no pontoon client: {e}"),
            },
        }
    }

    /// The caller of a connection, from the peer certificate quinn kept.
    #[must_use]
    pub fn of(connection: &quinn::Connection) -> Self {
        let chain = connection
            .peer_identity()
            .and_then(|any| any.downcast::<Vec<CertificateDer<'static>>>().ok());
        match chain {
            Some(chain) => Self::from_chain(&chain),
            None => Caller::Refused {
                who: "unidentified peer".into(),
                reason: "the connection carries no peer certificate".into(),
            },
        }
    }

    /// Whether the caller may ask anything at all (read and write keys).
    #[must_use]
    pub fn is_client(&self) -> bool {
        matches!(self, Caller::Client { .. })
    }

    /// The caller's name for logs and refusals: `client NAME (role ROLE)`.
    #[must_use]
    pub fn describe(&self) -> String {
        match self {
            Caller::Client { name, role } => format!("client {name} (role {role})"),
            Caller::Refused { who, .. } => who.clone(),
        }
    }

    /// The client's name, or the refused peer's description.
    #[must_use]
    pub fn name(&self) -> &str {
        match self {
            Caller::Client { name, .. } => name,
            Caller::Refused { who, .. } => who,
        }
    }

    /// The client's role (`None` for a refused peer).
    #[must_use]
    pub fn role(&self) -> Option<ClientRole> {
        match self {
            Caller::Client { role, .. } => Some(*role),
            Caller::Refused { .. } => None,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn roles_nodes_and_garbage_are_told_apart() {
        let ca = certs::ClusterCa::generate("callers").unwrap();
        let admin = ca.issue_client_with_role("ops", ClientRole::Admin).unwrap();
        assert_eq!(
            Caller::from_chain(admin.cert_chain()),
            Caller::Client {
                name: "ops".into(),
                role: ClientRole::Admin
            }
        );
        let kv = ca.issue_client("app").unwrap();
        assert_eq!(
            Caller::from_chain(kv.cert_chain()).role(),
            Some(ClientRole::Kv)
        );
        let node = ca.issue_node(routing::NodeId(2), &[]).unwrap();
        let caller = Caller::from_chain(node.cert_chain());
        assert!(!caller.is_client());
        assert_eq!(caller.describe(), "node 2");
        assert!(!Caller::from_chain(&[]).is_client());
    }
}
