//! The cluster CA, node and client certificates, and the rustls configs for mutual TLS.
//!
//! Every node holds one certificate of the cluster CA. Its [`NodeId`] is
//! in a URI SAN `urn:pontoon:node:<id>` ([`NODE_URI_PREFIX`]) and its TLS server name
//! [`node_server_name`] is a DNS SAN: dialers verify the server name, and acceptors read the
//! dialer's id with [`peer_identity`] after the handshake. Both sides trust only the CA.
//!
//! ```
//! use std::sync::Arc;
//!
//! use pontoon_certs::{ALPN, ClusterCa, NodeId, PeerIdentity, node_server_name, peer_identity};
//!
//! // Once per cluster: the CA. Then one identity per node.
//! let ca = ClusterCa::generate("pontoon test cluster")?;
//! let node = ca.issue_node(NodeId(1), &["127.0.0.1".to_string()])?;
//! assert_eq!(peer_identity(node.cert_chain())?, PeerIdentity::Node(NodeId(1)));
//!
//! // The configs quinn wraps: accept with the server config, dial with the client config
//! // and the server name of the node you mean to reach.
//! let server = Arc::new(node.server_config(&[ALPN])?);
//! let client = Arc::new(node.client_config(&[ALPN])?);
//! assert_eq!(server.max_early_data_size, 0);
//! let _name = node_server_name(NodeId(2)); // "n2.node.pontoon"
//! # let _ = client;
//! # Ok::<(), pontoon_certs::CertError>(())
//! ```

mod ca;
mod error;
pub mod files;
mod identity;
mod tls;

pub use ca::{CA_VALIDITY, ClientIdentity, ClusterCa, LEAF_VALIDITY, NodeIdentity};
pub use error::CertError;
pub use identity::{
    CLIENT_URI_PREFIX, CLUSTER_SERVER_NAME, ClientRole, NODE_URI_PREFIX, PeerIdentity,
    ROLE_URI_PREFIX, client_role, leaf_serial, node_id_from_chain, node_server_name, peer_identity,
};
/// The DER certificate type every config of this crate takes (re-exported from rustls).
pub use rustls_pki_types::CertificateDer;
pub use tls::{ALPN, CLIENT_ALPN};

/// Re-exported: the id type certificates carry.
pub use routing::NodeId;
