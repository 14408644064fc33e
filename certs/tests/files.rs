//! The certificate directory: layout, key permissions, no silent overwrite, round trips.

// Test helpers (outside #[test] fns) unwrap freely: a failure there is a test failure.
#![allow(clippy::unwrap_used)]

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use pontoon_certs::files::{
    ca_cert_path, ca_key_path, client_cert_path, client_key_path, init_dir, issue_client_files,
    issue_node_files, load_ca, load_client, load_node, node_cert_path, node_key_path,
};
use pontoon_certs::{CertError, NodeId, NodeIdentity, PeerIdentity, peer_identity};

fn mode(path: &Path) -> u32 {
    fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn init_issue_and_load_round_trip_with_private_keys_0600() {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    let ca = init_dir(&certs, false).unwrap();
    assert_eq!(mode(&ca_key_path(&certs)), 0o600);
    let node = issue_node_files(&certs, NodeId(3), &["10.0.0.3".into()], false).unwrap();
    assert_eq!(mode(&node_key_path(&certs, NodeId(3))), 0o600);
    let client = issue_client_files(&certs, "kv", false).unwrap();
    assert_eq!(mode(&client_key_path(&certs, "kv")), 0o600);
    for cert in [
        ca_cert_path(&certs),
        node_cert_path(&certs, NodeId(3)),
        client_cert_path(&certs, "kv"),
    ] {
        // Public: 0644 before the umask; only check that no one but the owner can write.
        assert_eq!(mode(&cert) & 0o622, 0o600, "{}", cert.display());
    }

    let loaded_ca = load_ca(&certs).unwrap();
    assert_eq!(loaded_ca.cert_der(), ca.cert_der());
    let loaded = load_node(&certs, NodeId(3)).unwrap();
    assert_eq!(loaded.node_id(), NodeId(3));
    assert_eq!(loaded.cert_chain(), node.cert_chain());
    assert_eq!(loaded.key().secret_der(), node.key().secret_der());
    assert_eq!(loaded.ca(), ca.cert_der());
    let loaded_client = load_client(&certs, "kv").unwrap();
    assert_eq!(loaded_client.name(), "kv");
    assert_eq!(
        peer_identity(loaded_client.cert_chain()).unwrap(),
        PeerIdentity::Client("kv".into())
    );
    assert_eq!(loaded_client.key().secret_der(), client.key().secret_der());

    // A CA reloaded from disk still issues certificates that chain to it.
    let later = loaded_ca.issue_node(NodeId(4), &[]).unwrap();
    NodeIdentity::from_der(
        later.cert_chain().to_vec(),
        later.key().clone_key(),
        ca.cert_der().clone(),
    )
    .unwrap();
}

#[test]
fn nothing_is_overwritten_without_force() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ca = init_dir(d, false).unwrap();
    match init_dir(d, false) {
        Err(CertError::AlreadyExists { path }) => assert_eq!(path, ca_cert_path(d)),
        other => panic!("expected AlreadyExists, got {other:?}"),
    }
    assert!(
        CertError::AlreadyExists {
            path: ca_cert_path(d)
        }
        .to_string()
        .contains("--force")
    );
    assert_eq!(
        load_ca(d).unwrap().cert_der(),
        ca.cert_der(),
        "CA unchanged"
    );

    let node = issue_node_files(d, NodeId(1), &[], false).unwrap();
    assert!(matches!(
        issue_node_files(d, NodeId(1), &[], false),
        Err(CertError::AlreadyExists { .. })
    ));
    assert_eq!(
        load_node(d, NodeId(1)).unwrap().cert_chain(),
        node.cert_chain()
    );
    issue_client_files(d, "kv", false).unwrap();
    assert!(matches!(
        issue_client_files(d, "kv", false),
        Err(CertError::AlreadyExists { .. })
    ));

    // With force: replaced, and a loosened key file is tightened back to 0600.
    fs::set_permissions(
        node_key_path(d, NodeId(1)),
        fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    let again = issue_node_files(d, NodeId(1), &[], true).unwrap();
    assert_ne!(again.cert_chain(), node.cert_chain());
    assert_eq!(mode(&node_key_path(d, NodeId(1))), 0o600);
    let new_ca = init_dir(d, true).unwrap();
    assert_ne!(new_ca.cert_der(), ca.cert_der());
}

#[test]
fn mismatched_or_invalid_files_are_refused_at_load_time() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    init_dir(d, false).unwrap();
    issue_node_files(d, NodeId(1), &[], false).unwrap();
    issue_node_files(d, NodeId(2), &[], false).unwrap();

    // node-1's certificate under node-2's name.
    fs::copy(node_cert_path(d, NodeId(1)), node_cert_path(d, NodeId(2))).unwrap();
    fs::copy(node_key_path(d, NodeId(1)), node_key_path(d, NodeId(2))).unwrap();
    assert!(matches!(
        load_node(d, NodeId(2)),
        Err(CertError::InvalidSan { .. })
    ));

    // A key that is not the certificate's.
    issue_node_files(d, NodeId(3), &[], false).unwrap();
    fs::copy(node_key_path(d, NodeId(3)), node_key_path(d, NodeId(1))).unwrap();
    assert!(matches!(
        load_node(d, NodeId(1)),
        Err(CertError::Parse { .. })
    ));

    // A certificate of another CA.
    let other = tempfile::tempdir().unwrap();
    init_dir(other.path(), false).unwrap();
    issue_node_files(other.path(), NodeId(5), &[], false).unwrap();
    fs::copy(ca_cert_path(other.path()), ca_cert_path(d)).unwrap();
    issue_node_files(d, NodeId(9), &[], false).unwrap_err(); // CA cert and key now differ
    assert!(matches!(load_ca(d), Err(CertError::Parse { .. })));
    assert!(matches!(
        load_node(d, NodeId(3)),
        Err(CertError::Parse { .. })
    ));

    assert!(matches!(
        load_node(d, NodeId(42)),
        Err(CertError::Io { .. })
    ));
    assert!(matches!(
        issue_client_files(d, "../escape", false),
        Err(CertError::InvalidClientName { .. })
    ));
    assert!(matches!(
        init_dir(d, false).unwrap_err(),
        CertError::AlreadyExists { .. }
    ));
}

#[test]
fn node_id_zero_and_bad_sans_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    init_dir(d, false).unwrap();
    assert!(matches!(
        issue_node_files(d, NodeId(0), &[], false),
        Err(CertError::ReservedNodeId)
    ));
    assert!(matches!(
        issue_node_files(d, NodeId(1), &["not a host".into()], false),
        Err(CertError::InvalidSan { .. })
    ));
    assert!(
        !node_key_path(d, NodeId(1)).exists(),
        "no partial files left"
    );
}
