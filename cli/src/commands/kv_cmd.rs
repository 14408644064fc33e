//! `pontoon kv put|get|delete|cas|status`: the key-value service's client.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand};
use pontoon::admin::proto::admin_request::Body;
use pontoon::admin::proto::{AdminReply, AdminRequest, Empty, admin_reply};
use pontoon::admin::wire::{ClientRequest, client_reply};
use service::proto::kv_reply;
use service::{KvClient, KvRequest};

use super::CliError;

#[derive(Args, Debug)]
pub(crate) struct KvArgs {
    /// Address of any node holding the key's group (it forwards the request to the leader;
    /// other nodes redirect).
    #[arg(long)]
    node: SocketAddr,
    /// Directory holding ca.pem and the client certificate (`pontoon certs issue --client NAME`).
    #[arg(long)]
    certs: PathBuf,
    /// The client certificate's name.
    #[arg(long, default_value = "admin")]
    client: String,
    #[command(subcommand)]
    op: KvOp,
}

#[derive(Subcommand, Debug)]
enum KvOp {
    /// Set KEY to VALUE; prints the previous value.
    Put { key: String, value: String },
    /// Read KEY linearizably; exits 1 when it is absent.
    Get { key: String },
    /// Delete KEY; prints the previous value.
    Delete { key: String },
    /// Compare-and-set: set KEY to VALUE only if it holds EXPECTED now (without --expected:
    /// only if KEY is absent). On a mismatch nothing changes, the value found is printed and
    /// the exit code is 2.
    Cas {
        key: String,
        value: String,
        /// The value KEY must hold now; leave out to require that KEY is absent.
        #[arg(long)]
        expected: Option<String>,
    },
    /// The node's status as JSON.
    Status,
}

pub(crate) fn run(args: KvArgs) -> Result<ExitCode, CliError> {
    let identity = pontoon::certs::files::load_client(&args.certs, &args.client)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let client = KvClient::new(&identity)?;
        let outcome = run_op(&client, args.node, &args.op).await;
        client.close().await;
        outcome
    })
}

async fn run_op(client: &KvClient, node: SocketAddr, op: &KvOp) -> Result<ExitCode, CliError> {
    let request = match op {
        KvOp::Put { key, value } => KvRequest::put(key.as_bytes(), value.as_bytes()),
        KvOp::Get { key } => KvRequest::get(key.as_bytes()),
        KvOp::Delete { key } => KvRequest::delete(key.as_bytes()),
        KvOp::Cas {
            key,
            value,
            expected,
        } => KvRequest::compare_and_set(
            key.as_bytes(),
            expected.as_ref().map(|e| e.as_bytes().to_vec()),
            value.as_bytes(),
        ),
        KvOp::Status => {
            let request = ClientRequest::admin(AdminRequest::new(Body::NodeStatus(Empty {})));
            let reply = client.nodes().call(node, None, &request).await?;
            return match reply.body {
                Some(client_reply::Body::Admin(AdminReply {
                    body: Some(admin_reply::Body::NodeStatus(status)),
                })) => {
                    println!("{}", status.json);
                    Ok(ExitCode::SUCCESS)
                }
                _ => Err("the node answered a status request with something else".into()),
            };
        }
    };
    let reply = client.call(node, None, &request).await?;
    match op {
        KvOp::Get { .. } => match reply.value() {
            Some(value) => println!("{}", String::from_utf8_lossy(value)),
            None => return Ok(ExitCode::from(1)),
        },
        KvOp::Cas { .. } => {
            if let Some(kv_reply::Outcome::Mismatch(found)) = &reply.outcome {
                match &found.value {
                    Some(value) => println!("{}", String::from_utf8_lossy(value)),
                    None => eprintln!("the key is absent"),
                }
                return Ok(ExitCode::from(2));
            }
        }
        _ => {
            if let Some(previous) = reply.value() {
                println!("{}", String::from_utf8_lossy(previous));
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
