//! Harness helpers shared by the QUIC integration tests.
#![allow(dead_code, missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use certs::{ClusterCa, NodeIdentity};
use pontoon_transport::{AddressBook, GroupFilter, Inbound, QuicTransport, TransportConfig};
use raft::eraftpb;
use routing::{GroupId, NodeId};
use tokio::sync::mpsc;

pub const DEADLINE: Duration = Duration::from_secs(30);

pub fn any_port() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

pub fn all_groups() -> GroupFilter {
    Arc::new(|_| true)
}

pub fn groups(known: impl IntoIterator<Item = u64>) -> GroupFilter {
    let set: HashSet<u64> = known.into_iter().collect();
    Arc::new(move |g: GroupId| set.contains(&g.get()))
}

pub fn identity(ca: &ClusterCa, id: u64) -> NodeIdentity {
    ca.issue_node(NodeId(id), &["127.0.0.1".to_string()])
        .unwrap()
}

pub fn append(from: u64, to: u64, index: u64, payload: usize) -> eraftpb::Message {
    let mut m = eraftpb::Message {
        msg_type: eraftpb::MessageType::MsgAppend,
        from,
        to,
        index,
        term: 1,
        ..Default::default()
    };
    let entry = eraftpb::Entry {
        index,
        term: 1,
        data: vec![7u8; payload].into(),
        ..Default::default()
    };
    m.set_entries(vec![entry].into());
    m
}

pub struct Node {
    pub transport: QuicTransport,
    pub inbound: mpsc::Receiver<Inbound>,
}

/// Binds one node per id on loopback, all sharing one address book.
pub async fn cluster(
    ca: &ClusterCa,
    ids: &[u64],
    config: TransportConfig,
    filter: GroupFilter,
) -> (Vec<Node>, AddressBook) {
    let book = AddressBook::new();
    let mut nodes = Vec::new();
    for &id in ids {
        let (transport, inbound) = QuicTransport::bind(
            any_port(),
            &identity(ca, id),
            config.clone(),
            book.clone(),
            filter.clone(),
        )
        .await
        .unwrap();
        book.insert(NodeId(id), transport.local_addr());
        nodes.push(Node { transport, inbound });
    }
    (nodes, book)
}

/// Waits for the next inbound event, failing the test at the deadline.
pub async fn next(rx: &mut mpsc::Receiver<Inbound>) -> Inbound {
    tokio::time::timeout(DEADLINE, rx.recv())
        .await
        .expect("deadline")
        .expect("channel open")
}

/// Waits until `cond` holds, polling; fails at the deadline.
pub async fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let start = tokio::time::Instant::now();
    while !cond() {
        assert!(start.elapsed() < DEADLINE, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A raw quinn endpoint with exactly the transport's TLS configs for `identity`.
pub fn raw_endpoint(
    identity: &NodeIdentity,
    config: &TransportConfig,
    alpn: &[u8],
) -> quinn::Endpoint {
    let (server, client) = pontoon_transport::quinn_configs(identity, config, alpn).unwrap();
    let mut ep = quinn::Endpoint::server(server, any_port()).unwrap();
    ep.set_default_client_config(client);
    ep
}
