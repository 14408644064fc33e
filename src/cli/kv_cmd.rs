//! `pontoon kv put|get|status`: the key-value service's client.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand};
use pontoon::service::{KvClient, Request, op};

use super::CliError;

#[derive(Args, Debug)]
pub struct KvArgs {
    /// Address of any node (it redirects to the leader).
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
    /// The node's status as JSON.
    Status,
}

pub fn run(args: KvArgs) -> Result<ExitCode, CliError> {
    let identity = pontoon::certs::files::load_client(&args.certs, &args.client)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let client = KvClient::new(&identity)?;
        let request = match &args.op {
            KvOp::Put { key, value } => Request {
                op: op::PUT,
                key: key.clone().into_bytes(),
                value: value.clone().into_bytes(),
                ..Request::default()
            },
            KvOp::Get { key } => Request {
                op: op::GET,
                key: key.clone().into_bytes(),
                ..Request::default()
            },
            KvOp::Delete { key } => Request {
                op: op::DELETE,
                key: key.clone().into_bytes(),
                ..Request::default()
            },
            KvOp::Status => Request {
                op: op::STATUS,
                ..Request::default()
            },
        };
        let reply = client.call(args.node, None, request).await;
        client.close().await;
        let reply = reply?;
        match args.op {
            KvOp::Status => println!("{}", reply.message),
            KvOp::Get { .. } => match reply.value {
                Some(value) => println!("{}", String::from_utf8_lossy(&value)),
                None => return Ok(ExitCode::from(1)),
            },
            KvOp::Put { .. } | KvOp::Delete { .. } => {
                if let Some(previous) = reply.value {
                    println!("{}", String::from_utf8_lossy(&previous));
                }
            }
        }
        Ok(ExitCode::SUCCESS)
    })
}
