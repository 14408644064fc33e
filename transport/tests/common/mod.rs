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

/// The process's resident set size, from `/proc/self/status` (`VmRSS`), in bytes.
pub fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .expect("VmRSS in /proc/self/status");
    let kib: u64 = line
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .expect("VmRSS in kB");
    kib * 1024
}

/// Serialises the tests of one binary that measure the process's RSS: the others would add
/// their own memory to the measure.
pub static RSS_LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Node 1 (the victim, `config`) and node 2 (its legitimate peer, default config), both
/// knowing groups 1..=16, connected (node 1 dialled).
pub async fn victim_and_legit_peer(ca: &ClusterCa, config: TransportConfig) -> (Node, Node) {
    let (victim, peer, _) = victim_and_peer_with_book(ca, config).await;
    (victim, peer)
}

/// [`victim_and_legit_peer`], with the address book both use (to add attackers to). Node 1
/// dialled, so the connection holds none of node 1's admission permits.
pub async fn victim_and_peer_with_book(
    ca: &ClusterCa,
    config: TransportConfig,
) -> (Node, Node, AddressBook) {
    use pontoon_transport::{Envelope, HeartbeatBatch, Transport};
    let book = AddressBook::new();
    let mut nodes = Vec::new();
    for id in [1, 2] {
        let (transport, inbound) = QuicTransport::bind(
            any_port(),
            &identity(ca, id),
            if id == 1 {
                config.clone()
            } else {
                TransportConfig::default()
            },
            book.clone(),
            groups(1..=16),
        )
        .await
        .unwrap();
        book.insert(NodeId(id), transport.local_addr());
        nodes.push(Node { transport, inbound });
    }
    let peer = nodes.pop().unwrap();
    let victim = nodes.pop().unwrap();
    victim
        .transport
        .send(NodeId(2), Envelope::Heartbeats(HeartbeatBatch::liveness()))
        .unwrap();
    wait_for("node 1 and node 2 to connect", || {
        victim.transport.connected_peers() == vec![NodeId(2)]
            && peer.transport.connected_peers() == vec![NodeId(1)]
    })
    .await;
    (victim, peer, book)
}

/// `from` sends `count` appends in group 1 to `to`, and `to` receives them all, in order
/// (events of other kinds are skipped).
pub async fn legit_traffic_flows(from: &Node, to: &mut Node, count: u64) {
    use pontoon_transport::{Envelope, Transport};
    let me = from.transport.node_id().get();
    let them = to.transport.node_id();
    let send = async {
        for i in 0..count {
            let env = Envelope::Raft {
                group: GroupId(1),
                messages: vec![append(me, them.get(), i, 64)],
            };
            wait_for("room toward the peer", || {
                from.transport.send(them, env.clone()).is_ok()
            })
            .await;
        }
    };
    let receive = async {
        let mut expected = 0;
        while expected < count {
            if let Inbound::Message {
                from: sender,
                envelope: Envelope::Raft { group, messages },
            } = next(&mut to.inbound).await
            {
                assert_eq!((sender.get(), group), (me, GroupId(1)));
                for m in messages {
                    assert_eq!(m.index, expected, "once, in order");
                    expected += 1;
                }
            }
        }
    };
    tokio::join!(send, receive);
}

/// A raw QUIC connection to `target` (node `server`) from a genuine node `id`.
pub async fn raw_node_connection(
    ca: &ClusterCa,
    id: u64,
    target: SocketAddr,
    server: u64,
) -> Result<quinn::Connection, quinn::ConnectionError> {
    let raw = raw_endpoint(&identity(ca, id), &TransportConfig::default(), certs::ALPN);
    raw.connect(target, &certs::node_server_name(NodeId(server)))
        .unwrap()
        .await
}
