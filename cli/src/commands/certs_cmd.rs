//! `pontoon certs init|issue`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Subcommand;
use pontoon::NodeId;
use pontoon::certs::{ClientRole, files};

use super::CliError;

#[derive(Subcommand, Debug)]
pub(crate) enum CertsCommand {
    /// Create a cluster CA (ca.pem, ca.key) in DIR. Keep ca.key secret: whoever holds it can
    /// issue certificates your nodes will trust.
    Init {
        /// Directory for the CA files (created if missing).
        #[arg(long)]
        dir: PathBuf,
        /// Overwrite existing files.
        #[arg(long)]
        force: bool,
    },
    /// Issue a node certificate (node-ID.pem, node-ID.key) or, with --client, a client
    /// certificate (client-NAME.pem, client-NAME.key), signed by the CA in DIR.
    Issue {
        /// Directory holding the CA; the new files go there too.
        #[arg(long)]
        dir: PathBuf,
        /// The node id (1 or more) the certificate proves.
        #[arg(long, required_unless_present = "client", conflicts_with = "client")]
        node: Option<u64>,
        /// Issue a client certificate for NAME instead (letters, digits, '-', '_').
        #[arg(long, value_name = "NAME")]
        client: Option<String>,
        /// The client's role: `kv` reads and writes keys and reads the cluster's shape;
        /// `admin` may also change it (`pontoon cluster`). Nodes check it per operation.
        /// Default: kv.
        #[arg(
            long,
            value_name = "ROLE",
            requires = "client",
            conflicts_with = "node"
        )]
        role: Option<ClientRole>,
        /// Extra DNS names or IP addresses the node is reached at (repeatable).
        #[arg(long = "san", value_name = "HOST_OR_IP")]
        sans: Vec<String>,
        /// Overwrite existing files.
        #[arg(long)]
        force: bool,
    },
}

pub(crate) fn run(command: CertsCommand) -> Result<ExitCode, CliError> {
    match command {
        CertsCommand::Init { dir, force } => {
            files::init_dir(&dir, force)?;
            println!(
                "cluster CA written: {} and {}",
                files::ca_cert_path(&dir).display(),
                files::ca_key_path(&dir).display()
            );
        }
        CertsCommand::Issue {
            dir,
            node: Some(id),
            client: None,
            sans,
            force,
            ..
        } => {
            let node = NodeId(id);
            files::issue_node_files(&dir, node, &sans, force)?;
            println!(
                "node {id} certificate written: {} and {}",
                files::node_cert_path(&dir, node).display(),
                files::node_key_path(&dir, node).display()
            );
        }
        CertsCommand::Issue {
            dir,
            client: Some(name),
            role,
            force,
            ..
        } => {
            // Least privilege unless asked: a kv client can change nothing but keys.
            let role = role.unwrap_or(ClientRole::Kv);
            files::issue_client_files_with_role(&dir, &name, role, force)?;
            println!(
                "client certificate (role {role}) written: {} and {}",
                files::client_cert_path(&dir, &name).display(),
                files::client_key_path(&dir, &name).display()
            );
        }
        CertsCommand::Issue { .. } => return Err("pass --node ID or --client NAME".into()),
    }
    Ok(ExitCode::SUCCESS)
}
