//! The one error type of the certs crate. Each variant says what went wrong and what to do.

use std::path::PathBuf;

/// Why a certificate could not be made, loaded, read or turned into a TLS config.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CertError {
    /// rcgen could not generate a key or sign a certificate.
    #[error("could not generate the {what}: {source}; check the names and validity period given")]
    Generate {
        /// What was being generated.
        what: &'static str,
        /// rcgen's reason.
        #[source]
        source: rcgen::Error,
    },
    /// PEM or DER input could not be parsed, or is not what it should be.
    #[error("could not read the {what}: {reason}; regenerate it with `pontoon certs`")]
    Parse {
        /// What was being read (e.g. "CA certificate").
        what: &'static str,
        /// Why it was refused.
        reason: String,
    },
    /// A file could not be read or written.
    #[error("{path}: {source}; check that the path exists and is accessible")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The peer presented no certificate at all.
    #[error("the peer presented no certificate: it must authenticate with one from the cluster CA")]
    NoCertificate,
    /// The certificate has no `urn:pontoon:` URI SAN, so it names no node or client.
    #[error(
        "the certificate carries no urn:pontoon:node:<id> or urn:pontoon:client:<name> URI SAN; \
         issue it with `pontoon certs`"
    )]
    MissingIdentity,
    /// The certificate has more than one `urn:pontoon:` URI SAN, so its identity is ambiguous.
    #[error(
        "the certificate carries {count} urn:pontoon: URI SANs, expected exactly one; reissue it"
    )]
    AmbiguousIdentity {
        /// How many pontoon URI SANs it has.
        count: usize,
    },
    /// The certificate identifies a client where a node was required.
    #[error("the certificate belongs to client {name:?}, not to a node; use a node certificate")]
    NotANode {
        /// The client name in the certificate.
        name: String,
    },
    /// A SAN (in a certificate, or given to be issued) is malformed.
    #[error("invalid SAN {san:?}: {reason}")]
    InvalidSan {
        /// The SAN as text.
        san: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A client name is not 1..=64 characters of `[A-Za-z0-9_-]`.
    #[error("invalid client name {name:?}: use 1 to 64 characters of A-Z, a-z, 0-9, '_' and '-'")]
    InvalidClientName {
        /// The name given.
        name: String,
    },
    /// `NodeId(0)` is reserved by raft-rs and cannot get a certificate.
    #[error("node id 0 is reserved: number nodes from 1")]
    ReservedNodeId,
    /// The validity period is empty.
    #[error("not_before must be earlier than not_after")]
    InvalidValidity,
    /// A file would be overwritten.
    #[error("{path} already exists; pass --force to overwrite it")]
    AlreadyExists {
        /// The existing file.
        path: PathBuf,
    },
    /// rustls refused to build a config (for example the key does not match the certificate).
    #[error(
        "could not build the TLS config: {0}; check that the certificate and key belong together"
    )]
    Tls(#[from] rustls::Error),
    /// rustls refused to build the client certificate verifier.
    #[error("could not build the client verifier: {0}; check the CA certificate")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
}
