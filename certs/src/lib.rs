//! Cluster CA, node certificates and rustls configs (filled in by the foundation issue).
