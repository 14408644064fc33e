//! A node whose coordinator stops on its own never lingers as a zombie: `Node::stopped` says
//! why, pending requests fail, and its QUIC endpoint is closed.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly on purpose

use std::net::{Ipv4Addr, UdpSocket};
use std::time::Duration;

use pontoon_coordinator::{
    Node, NodeConfig, NodeStopped, Outcome, StateMachine, StateMachineError, VShardScope,
};
use routing::{GroupId, NodeId, RoutingTable};

/// Fails, as a full disk would, on the command `fail`.
struct FailsOnCommand;

impl StateMachine for FailsOnCommand {
    fn apply(&mut self, _: GroupId, _: u64, command: &[u8]) -> Result<Vec<u8>, StateMachineError> {
        if command == b"fail" {
            return Err("no space left on device".into());
        }
        if command == b"panic" {
            panic!("index out of bounds in the database");
        }
        Ok(Vec::new())
    }
    fn snapshot(&mut self, _: GroupId) -> Result<Vec<u8>, StateMachineError> {
        Ok(Vec::new())
    }
    fn restore(&mut self, _: GroupId, _: &[u8]) -> Result<(), StateMachineError> {
        Ok(())
    }
    fn export_vshard(&mut self, _: GroupId, _: VShardScope) -> Result<Vec<u8>, StateMachineError> {
        Ok(Vec::new())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_coordinator_that_stops_on_a_fatal_error_closes_the_endpoint_and_says_why() {
    stops_on(b"fail", "no space left on device").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_state_machine_stops_the_node_instead_of_hanging_it() {
    stops_on(b"panic", "the state machine panicked: index out of bounds").await;
}

/// Starts a one-node cluster, writes, then proposes `command`, which makes the state machine
/// fail: the node must stop and say `reason`.
async fn stops_on(command: &[u8], reason_contains: &str) {
    let dir = tempfile::tempdir().unwrap();
    let certs_dir = dir.path().join("certs");
    certs::files::init_dir(&certs_dir, false).unwrap();
    let identity =
        certs::files::issue_node_files(&certs_dir, NodeId(1), &["127.0.0.1".into()], false)
            .unwrap();
    let listen = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))
        .unwrap()
        .local_addr()
        .unwrap();
    let routing = RoutingTable::uniform(16, 2, &[NodeId(1)], 1).unwrap();
    let config = NodeConfig::new(NodeId(1), listen, dir.path().join("data"))
        .peer(NodeId(1), listen)
        .tick_interval(Duration::from_millis(20))
        .request_timeout(Duration::from_secs(5));
    let node = Node::start(config, &identity, routing, FailsOnCommand)
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    // Writes work until the state machine fails.
    loop {
        if node.propose(b"k", b"ok".to_vec()).await.is_ok() {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "no leader in time");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(node.stop_reason(), None);
    let failed = node.propose(b"k", command.to_vec()).await.unwrap_err();
    // It was in raft (committed, even) when the node stopped: never "send it elsewhere".
    assert_eq!(failed.outcome(), Outcome::Unknown, "{failed}");
    let stopped = tokio::time::timeout(Duration::from_secs(10), node.stopped())
        .await
        .expect("the node reports its stop");
    match &stopped {
        NodeStopped::Fatal { reason } => {
            assert!(reason.contains(reason_contains), "{reason}");
        }
        NodeStopped::Shutdown => panic!("a fatal stop reported as a shutdown"),
    }
    assert_eq!(node.stop_reason(), Some(stopped));
    // Nothing is served any more, and what is refused now did not take effect.
    let after = node.propose(b"k", b"after".to_vec()).await.unwrap_err();
    assert_eq!(after.outcome(), Outcome::NotApplied, "{after}");
}
