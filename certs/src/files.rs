//! The on-disk layout of a cluster's certificates, so that the `pontoon certs` command, node
//! start-up and tests agree on names and permissions:
//!
//! ```text
//! <dir>/ca.pem                 CA certificate (public)
//! <dir>/ca.key                 CA private key (0600)
//! <dir>/node-<id>.pem          node certificate
//! <dir>/node-<id>.key          node private key (0600)
//! <dir>/client-<name>.pem      client certificate
//! <dir>/client-<name>.key      client private key (0600)
//! ```
//!
//! Nothing is overwritten unless `force` is passed; private keys are created with mode 0600
//! from the start (never written world-readable and tightened afterwards).

use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use routing::NodeId;

use crate::identity::check_client_name;
use crate::{CertError, ClientIdentity, ClientRole, ClusterCa, NodeIdentity};

/// The CA certificate's path in `dir`.
#[must_use]
pub fn ca_cert_path(dir: &Path) -> PathBuf {
    dir.join("ca.pem")
}

/// The CA key's path in `dir`.
#[must_use]
pub fn ca_key_path(dir: &Path) -> PathBuf {
    dir.join("ca.key")
}

/// A node certificate's path in `dir`.
#[must_use]
pub fn node_cert_path(dir: &Path, id: NodeId) -> PathBuf {
    dir.join(format!("node-{}.pem", id.get()))
}

/// A node key's path in `dir`.
#[must_use]
pub fn node_key_path(dir: &Path, id: NodeId) -> PathBuf {
    dir.join(format!("node-{}.key", id.get()))
}

/// A client certificate's path in `dir` (the name is not checked here).
#[must_use]
pub fn client_cert_path(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("client-{name}.pem"))
}

/// A client key's path in `dir` (the name is not checked here).
#[must_use]
pub fn client_key_path(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("client-{name}.key"))
}

/// Creates `dir` if needed and a new CA in it (`ca.pem`, `ca.key`).
///
/// # Errors
///
/// [`CertError::AlreadyExists`] if either file exists and `force` is false,
/// [`CertError::Io`] for file system errors, [`CertError::Generate`] if generation fails.
pub fn init_dir(dir: &Path, force: bool) -> Result<ClusterCa, CertError> {
    create_dir(dir)?;
    let (cert_path, key_path) = (ca_cert_path(dir), ca_key_path(dir));
    refuse_existing(&[&cert_path, &key_path], force)?;
    let ca = ClusterCa::generate("pontoon cluster CA")?;
    write_pair(&cert_path, ca.cert_pem(), &key_path, &ca.key_pem(), force)?;
    Ok(ca)
}

/// Issues a node certificate with the CA of `dir` and writes `node-<id>.pem` / `.key`.
///
/// # Errors
///
/// [`CertError::AlreadyExists`] if either file exists and `force` is false, the errors of
/// [`load_ca`] and [`ClusterCa::issue_node`], [`CertError::Io`] for write errors.
pub fn issue_node_files(
    dir: &Path,
    id: NodeId,
    extra_sans: &[String],
    force: bool,
) -> Result<NodeIdentity, CertError> {
    let (cert_path, key_path) = (node_cert_path(dir, id), node_key_path(dir, id));
    refuse_existing(&[&cert_path, &key_path], force)?;
    let node = load_ca(dir)?.issue_node(id, extra_sans)?;
    write_pair(
        &cert_path,
        &node.cert_pem(),
        &key_path,
        &node.key_pem(),
        force,
    )?;
    Ok(node)
}

/// Issues a [`ClientRole::Kv`] client certificate: [`issue_client_files_with_role`] with the
/// least privilege.
///
/// # Errors
///
/// Those of [`issue_client_files_with_role`].
pub fn issue_client_files(
    dir: &Path,
    name: &str,
    force: bool,
) -> Result<ClientIdentity, CertError> {
    issue_client_files_with_role(dir, name, ClientRole::Kv, force)
}

/// Issues a client certificate of `role` with the CA of `dir` and writes
/// `client-<name>.pem` / `.key`.
///
/// # Errors
///
/// [`CertError::InvalidClientName`] for a bad name, [`CertError::AlreadyExists`] if either
/// file exists and `force` is false, the errors of [`load_ca`], [`CertError::Io`].
pub fn issue_client_files_with_role(
    dir: &Path,
    name: &str,
    role: ClientRole,
    force: bool,
) -> Result<ClientIdentity, CertError> {
    // Checked before the name becomes part of a path.
    check_client_name(name)?;
    let (cert_path, key_path) = (client_cert_path(dir, name), client_key_path(dir, name));
    refuse_existing(&[&cert_path, &key_path], force)?;
    let client = load_ca(dir)?.issue_client_with_role(name, role)?;
    write_pair(
        &cert_path,
        &client.cert_pem(),
        &key_path,
        &client.key_pem(),
        force,
    )?;
    Ok(client)
}

/// Loads the CA of `dir`.
///
/// # Errors
///
/// [`CertError::Io`] if a file cannot be read, the errors of [`ClusterCa::from_pem`].
pub fn load_ca(dir: &Path) -> Result<ClusterCa, CertError> {
    ClusterCa::from_pem(&read(&ca_cert_path(dir))?, &read(&ca_key_path(dir))?)
}

/// Loads node `id`'s identity from `dir`, and checks the certificate is that node's.
///
/// # Errors
///
/// The errors of [`NodeIdentity::from_pem_files`], and [`CertError::InvalidSan`] if the
/// certificate names another node.
pub fn load_node(dir: &Path, id: NodeId) -> Result<NodeIdentity, CertError> {
    let node = NodeIdentity::from_pem_files(
        &node_cert_path(dir, id),
        &node_key_path(dir, id),
        &ca_cert_path(dir),
    )?;
    if node.node_id() != id {
        return Err(CertError::InvalidSan {
            san: crate::identity::node_uri(node.node_id()),
            reason: "the certificate file belongs to another node",
        });
    }
    Ok(node)
}

/// Loads client `name`'s identity from `dir`.
///
/// # Errors
///
/// [`CertError::InvalidClientName`], [`CertError::Io`], the errors of
/// [`ClientIdentity::from_pem`], and [`CertError::InvalidSan`] if the certificate names
/// another client.
pub fn load_client(dir: &Path, name: &str) -> Result<ClientIdentity, CertError> {
    check_client_name(name)?;
    let client = ClientIdentity::from_pem(
        &read(&client_cert_path(dir, name))?,
        &read(&client_key_path(dir, name))?,
        &read(&ca_cert_path(dir))?,
    )?;
    if client.name() != name {
        return Err(CertError::InvalidSan {
            san: crate::identity::client_uri(client.name()),
            reason: "the certificate file belongs to another client",
        });
    }
    Ok(client)
}

impl NodeIdentity {
    /// Loads a node identity from a certificate, key and CA certificate file (PEM).
    ///
    /// # Errors
    ///
    /// [`CertError::Io`] if a file cannot be read, the errors of [`NodeIdentity::from_pem`].
    pub fn from_pem_files(cert: &Path, key: &Path, ca: &Path) -> Result<Self, CertError> {
        Self::from_pem(&read(cert)?, &read(key)?, &read(ca)?)
    }
}

/// Loads every CA certificate of a PEM bundle (`ca.pem` holding the old and the new CA while
/// a CA rolls over). A node's own certificate must be signed by the first.
///
/// # Errors
///
/// [`CertError::Io`] if the file cannot be read, [`CertError::Parse`] if it holds no
/// certificate or a malformed one.
pub fn load_ca_bundle(path: &Path) -> Result<Vec<CertificateDer<'static>>, CertError> {
    let pem = read(path)?;
    let cas = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| CertError::Parse {
            what: "CA bundle",
            reason: e.to_string(),
        })?;
    if cas.is_empty() {
        return Err(CertError::Parse {
            what: "CA bundle",
            reason: "no certificate in it".into(),
        });
    }
    Ok(cas)
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> CertError + '_ {
    move |source| CertError::Io {
        path: path.to_owned(),
        source,
    }
}

fn read(path: &Path) -> Result<String, CertError> {
    fs::read_to_string(path).map_err(io_err(path))
}

fn create_dir(dir: &Path) -> Result<(), CertError> {
    fs::create_dir_all(dir).map_err(io_err(dir))
}

fn refuse_existing(paths: &[&Path], force: bool) -> Result<(), CertError> {
    if force {
        return Ok(());
    }
    match paths.iter().find(|p| p.exists()) {
        Some(path) => Err(CertError::AlreadyExists {
            path: path.to_path_buf(),
        }),
        None => Ok(()),
    }
}

/// Writes the key first (so a crash never leaves a certificate without its key) and the
/// certificate second.
fn write_pair(
    cert_path: &Path,
    cert_pem: &str,
    key_path: &Path,
    key_pem: &str,
    force: bool,
) -> Result<(), CertError> {
    write_file(key_path, key_pem, 0o600, force)?;
    write_file(cert_path, cert_pem, 0o644, force)
}

fn write_file(path: &Path, contents: &str, mode: u32, force: bool) -> Result<(), CertError> {
    let mut options = OpenOptions::new();
    options.write(true).mode(mode);
    if force {
        options.create(true).truncate(true);
    } else {
        // Atomic with respect to other writers: fails if the file appeared meanwhile.
        options.create_new(true);
    }
    let mut file = options.open(path).map_err(|source| {
        if source.kind() == std::io::ErrorKind::AlreadyExists {
            CertError::AlreadyExists {
                path: path.to_owned(),
            }
        } else {
            CertError::Io {
                path: path.to_owned(),
                source,
            }
        }
    })?;
    if force {
        // `mode` applies only on creation: tighten a key file that already existed.
        use std::os::unix::fs::PermissionsExt;
        file.set_permissions(fs::Permissions::from_mode(mode))
            .map_err(io_err(path))?;
    }
    file.write_all(contents.as_bytes()).map_err(io_err(path))?;
    file.sync_all().map_err(io_err(path))
}
