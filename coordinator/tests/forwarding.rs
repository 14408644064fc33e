//! Any node accepts a proposal: on a follower it is forwarded to the leader over the peer
//! connection and answered to the caller, with its outcome class kept; forwarding can be
//! turned off; the leader serves forwarded requests only from members of the group, and never
//! forwards one again. Over the in-process `LocalNetwork`, so each test takes a second or two.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly on purpose

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::SharedKv;
use pontoon_coordinator::{ClientSession, Node, NodeConfig, Outcome, RequestError};
use routing::{GroupId, NodeId, RoutingTable};
use tokio::sync::mpsc;
use tokio::time::Instant;
use transport::mem::LocalNetwork;
use transport::{AddressBook, Envelope, Forward, Inbound, NodeTransport, Transport};

const TIMEOUT: Duration = Duration::from_secs(2);

/// Starts a node for each of `running` (the others of `routing` stay down).
fn start(
    dir: &std::path::Path,
    net: &LocalNetwork,
    routing: &RoutingTable,
    running: &[NodeId],
    configure: impl Fn(NodeConfig) -> NodeConfig,
) -> Vec<(Node, SharedKv)> {
    running
        .iter()
        .map(|&id| {
            let (transport, inbound) = net.join(id, 4096);
            let config = NodeConfig::new(id, transport.local_addr(), dir.join(format!("n{id}")))
                .tick_interval(Duration::from_millis(10))
                .request_timeout(TIMEOUT);
            let config = configure(config);
            let kv = SharedKv::default();
            let node = Node::start_with_transport(
                config,
                transport,
                inbound,
                AddressBook::new(),
                routing.clone(),
                kv.clone(),
            )
            .unwrap();
            (node, kv)
        })
        .collect()
}

/// The leader of `group` once every running replica of it names the same one.
async fn leader(nodes: &[(Node, SharedKv)], group: GroupId) -> NodeId {
    let until = Instant::now() + Duration::from_secs(20);
    loop {
        let mut seen = Vec::new();
        for (node, _) in nodes {
            if let Some(status) = node.group_status(group).await.unwrap() {
                seen.push(status.leader);
            }
        }
        if let Some(Some(l)) = seen.first()
            && seen.iter().all(|s| *s == Some(*l))
            && nodes.iter().any(|(n, _)| n.id() == *l)
        {
            return *l;
        }
        assert!(
            Instant::now() < until,
            "no agreed leader of {group}: {seen:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Holds `kv`'s lock on a thread of its own, so its node's applies wait, until dropped.
fn hold_apply(kv: &SharedKv) -> std::sync::mpsc::Sender<()> {
    let (release, released) = std::sync::mpsc::channel::<()>();
    let (taken, is_taken) = std::sync::mpsc::channel();
    let kv = kv.0.clone();
    std::thread::spawn(move || {
        let _held = kv.lock().unwrap();
        taken.send(()).unwrap();
        let _ = released.recv();
    });
    is_taken.recv().unwrap();
    release
}

fn node(nodes: &[(Node, SharedKv)], id: NodeId) -> &(Node, SharedKv) {
    nodes.iter().find(|(n, _)| n.id() == id).unwrap()
}

async fn shutdown(nodes: &[(Node, SharedKv)]) {
    for (n, _) in nodes {
        n.shutdown().await;
    }
}

fn three() -> (Vec<NodeId>, RoutingTable) {
    let ids: Vec<NodeId> = (1..=3).map(NodeId).collect();
    let routing = RoutingTable::uniform(16, 1, &ids, 3).unwrap();
    (ids, routing)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proposal_on_a_follower_is_forwarded_and_reads_on_any_node_see_it() {
    let dir = tempfile::tempdir().unwrap();
    let (ids, routing) = three();
    let net = LocalNetwork::new();
    let nodes = start(dir.path(), &net, &routing, &ids, |c| c);
    let group = nodes[0].0.group_for_key(b"k");
    let leader_id = leader(&nodes, group).await;
    let (follower, follower_kv) = nodes.iter().find(|(n, _)| n.id() != leader_id).unwrap();
    assert_eq!(follower.propose(b"k", b"k=1".to_vec()).await.unwrap(), b"");
    // The response is the state machine's (the previous value), relayed from the leader.
    assert_eq!(follower.propose(b"k", b"k=2".to_vec()).await.unwrap(), b"1");
    // The follower names the leader, so a caller can go there next time instead of paying
    // the forwarding hop on every command.
    assert_eq!(follower.leader_hint(group), Some(leader_id));
    // Linearizable: a read barrier on the leader, then on the follower, sees the write.
    let (leader_node, leader_kv) = node(&nodes, leader_id);
    let read = leader_node.read_key(b"k").await.unwrap();
    assert_eq!(leader_kv.get(read.group, "k").as_deref(), Some("2"));
    let read = follower.read_key(b"k").await.unwrap();
    assert_eq!(follower_kv.get(read.group, "k").as_deref(), Some("2"));
    shutdown(&nodes).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_command_forwarded_twice_applies_once() {
    let dir = tempfile::tempdir().unwrap();
    let (ids, routing) = three();
    let net = LocalNetwork::new();
    let nodes = start(dir.path(), &net, &routing, &ids, |c| c);
    let group = nodes[0].0.group_for_key(b"k");
    let leader_id = leader(&nodes, group).await;
    let (follower, _) = nodes.iter().find(|(n, _)| n.id() != leader_id).unwrap();
    let session = ClientSession::new();
    let command = session.command();
    let first = follower.propose_once(&command, b"k", b"k=1".to_vec()).await;
    assert_eq!(first.unwrap(), b"");
    // The same command again (a client's retry): answered from the session, not applied again
    // (applied twice, it would answer "1").
    let again = follower.propose_once(&command, b"k", b"k=1".to_vec()).await;
    assert_eq!(again.unwrap(), b"");
    shutdown(&nodes).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_forwarding_off_a_follower_answers_not_leader_naming_the_leader() {
    let dir = tempfile::tempdir().unwrap();
    let (ids, routing) = three();
    let net = LocalNetwork::new();
    let nodes = start(dir.path(), &net, &routing, &ids, |c| {
        c.forward_to_leader(false)
    });
    let group = nodes[0].0.group_for_key(b"k");
    let leader_id = leader(&nodes, group).await;
    let (follower, _) = nodes.iter().find(|(n, _)| n.id() != leader_id).unwrap();
    let refused = follower.propose(b"k", b"k=1".to_vec()).await;
    assert_eq!(
        refused,
        Err(RequestError::NotLeader {
            group,
            leader: Some(leader_id)
        })
    );
    // The leader itself takes it as before.
    let (leader_node, _) = node(&nodes, leader_id);
    assert_eq!(
        leader_node.propose(b"k", b"k=1".to_vec()).await.unwrap(),
        b""
    );
    shutdown(&nodes).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_no_leader_reachable_a_follower_fails_within_the_deadline_as_not_applied() {
    let dir = tempfile::tempdir().unwrap();
    let (ids, routing) = three();
    let net = LocalNetwork::new();
    let nodes = start(dir.path(), &net, &routing, &ids, |c| c);
    let group = nodes[0].0.group_for_key(b"k");
    let leader_id = leader(&nodes, group).await;
    // The leader and one more node go: no quorum, so no leader can be elected.
    let survivor = nodes.iter().position(|(n, _)| n.id() != leader_id).unwrap();
    for (i, (n, _)) in nodes.iter().enumerate() {
        if i != survivor {
            n.shutdown().await;
        }
    }
    let (follower, _) = &nodes[survivor];
    let started = Instant::now();
    let failed = follower.propose(b"k", b"k=1".to_vec()).await.unwrap_err();
    assert_eq!(failed.outcome(), Outcome::NotApplied, "{failed:?}");
    // Retried with backoff until the request deadline, not past it (one timeout for the
    // routing retry around it, and slack for a loaded machine).
    assert!(started.elapsed() < TIMEOUT * 2 + Duration::from_secs(1));
    let read = follower.read_index(group).await.unwrap_err();
    assert_eq!(read.outcome(), Outcome::NotApplied, "{read:?}");
    follower.shutdown().await;
}

/// The forward replies a raw endpoint receives, kept by request id (raft traffic skipped),
/// so waiting for one never loses another that came first.
struct Replies {
    inbound: mpsc::Receiver<Inbound>,
    seen: std::collections::HashMap<u64, Result<Bytes, u32>>,
}

impl Replies {
    /// The reply to request `id`: an answer, or the error code of a refusal.
    async fn of(&mut self, id: u64) -> Result<Bytes, u32> {
        let until = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(reply) = self.seen.remove(&id) {
                return reply;
            }
            let next = tokio::time::timeout_at(until, self.inbound.recv()).await;
            let Ok(Some(message)) = next else {
                panic!("no reply to forwarded request {id}");
            };
            if let Inbound::Message {
                envelope: Envelope::Forward(Forward::Reply { id: got, result }),
                ..
            } = message
            {
                let reply = result.map_err(|e| {
                    assert!(
                        e.not_applied,
                        "a refusal before proposing did not take effect"
                    );
                    e.code
                });
                self.seen.insert(got, reply);
            }
        }
    }
}

fn propose(id: u64, group: GroupId) -> Envelope {
    Envelope::Forward(Forward::Propose {
        id,
        group,
        vshard: None,
        command: Bytes::from_static(b"k=9"),
        session: None,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leader_serves_forwards_only_from_members_within_a_cap_and_never_forwards_them_again() {
    let dir = tempfile::tempdir().unwrap();
    // Four nodes, four groups of three replicas: node 4 is outside some group. Node 4 is a raw
    // endpoint here, sending forward frames of its own making.
    let ids: Vec<NodeId> = (1..=4).map(NodeId).collect();
    let routing = RoutingTable::uniform(16, 4, &ids, 3).unwrap();
    let net = LocalNetwork::new();
    let (raw, raw_in) = net.join(NodeId(4), 4096);
    let mut replies = Replies {
        inbound: raw_in,
        seen: std::collections::HashMap::new(),
    };
    let nodes = start(dir.path(), &net, &routing, &ids[..3], |c| {
        c.max_forwarded_per_peer(1)
    });
    let replicas = |g: GroupId| routing.replicas(g).unwrap_or_default().to_vec();
    let groups: Vec<GroupId> = routing.groups().map(|(g, _)| g).collect();
    let outside = *groups
        .iter()
        .find(|g| !replicas(**g).contains(&NodeId(4)))
        .unwrap();
    let inside = *groups
        .iter()
        .find(|g| replicas(**g).contains(&NodeId(4)))
        .unwrap();
    let leader_out = leader(&nodes, outside).await;
    raw.send(leader_out, propose(1, outside)).unwrap();
    const REFUSED: u32 = 7;
    const NOT_LEADER: u32 = 1;
    assert_eq!(replies.of(1).await, Err(REFUSED));
    // A member is served: the command is applied on the leader.
    let leader_in = leader(&nodes, inside).await;
    raw.send(leader_in, propose(2, inside)).unwrap();
    assert_eq!(replies.of(2).await, Ok(Bytes::new()));
    // One request of this peer in flight (its apply held up) is the cap: the next is Busy.
    let held = hold_apply(&node(&nodes, leader_in).1);
    raw.send(leader_in, propose(4, inside)).unwrap();
    raw.send(leader_in, propose(5, inside)).unwrap();
    const BUSY: u32 = 9;
    assert_eq!(replies.of(5).await, Err(BUSY));
    drop(held);
    assert_eq!(replies.of(4).await, Ok(Bytes::from_static(b"9")));
    // Sent to a replica that does not lead, it is refused as NotLeader, not passed on.
    let follower_in = replicas(inside)
        .into_iter()
        .find(|n| *n != leader_in && *n != NodeId(4))
        .unwrap();
    raw.send(follower_in, propose(3, inside)).unwrap();
    assert_eq!(replies.of(3).await, Err(NOT_LEADER));
    shutdown(&nodes).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forwarded_proposal_whose_answer_does_not_come_is_outcome_unknown() {
    let dir = tempfile::tempdir().unwrap();
    let (ids, routing) = three();
    let net = LocalNetwork::new();
    let nodes = start(dir.path(), &net, &routing, &ids, |c| c);
    let group = nodes[0].0.group_for_key(b"k");
    let leader_id = leader(&nodes, group).await;
    let (follower, follower_kv) = nodes.iter().find(|(n, _)| n.id() != leader_id).unwrap();
    // The leader commits but cannot apply, so it cannot answer before the deadline.
    let held = hold_apply(&node(&nodes, leader_id).1);
    let lost = follower.propose(b"k", b"k=1".to_vec()).await.unwrap_err();
    assert_eq!(lost, RequestError::Timeout { group });
    assert_eq!(lost.outcome(), Outcome::Unknown);
    drop(held);
    // Unknown, not "did not happen": it was committed, and is applied everywhere.
    let read = follower.read_key(b"k").await.unwrap();
    assert_eq!(follower_kv.get(read.group, "k").as_deref(), Some("1"));
    shutdown(&nodes).await;
}

/// A leader that goes down with a forwarded request in flight: the follower's caller learns
/// it as `OutcomeUnknown` once liveness declares the leader down, not as `Timeout` at the
/// request's deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forwarded_proposal_whose_leader_goes_down_fails_as_outcome_unknown_before_the_deadline()
{
    let dir = tempfile::tempdir().unwrap();
    let (ids, routing) = three();
    let net = LocalNetwork::new();
    // A deadline far past liveness's failure detection (some election timeouts of 10 ms ticks).
    let nodes = start(dir.path(), &net, &routing, &ids, |c| {
        c.request_timeout(Duration::from_secs(30))
    });
    let group = nodes[0].0.group_for_key(b"k");
    let leader_id = leader(&nodes, group).await;
    let (follower, _) = nodes.iter().find(|(n, _)| n.id() != leader_id).unwrap();
    // The leader takes the request but cannot answer it, then drops off the network.
    let held = hold_apply(&node(&nodes, leader_id).1);
    let proposal = follower.propose(b"k", b"k=1".to_vec());
    let cut = async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        net.disconnect(leader_id);
    };
    let (lost, ()) = tokio::join!(proposal, cut);
    let lost = lost.unwrap_err();
    assert_eq!(lost, RequestError::OutcomeUnknown { group });
    assert_eq!(lost.outcome(), Outcome::Unknown);
    drop(held);
    shutdown(&nodes).await;
}

/// Node-level liveness is visible to a service choosing where to redirect a client: a peer cut
/// off is reported down once liveness declares it so, and up again once it is heard.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_reports_which_peers_liveness_holds_down_and_clears_them_when_heard() {
    let dir = tempfile::tempdir().unwrap();
    let (ids, routing) = three();
    let net = LocalNetwork::new();
    let nodes = start(dir.path(), &net, &routing, &ids, |c| c);
    let (watcher, cut) = (&nodes[0].0, ids[2]);
    let group = watcher.group_for_key(b"k");
    leader(&nodes, group).await;
    assert!(!watcher.is_peer_down(cut), "a connected peer is up");
    net.disconnect(cut);
    let until = Instant::now() + Duration::from_secs(30);
    while !watcher.is_peer_down(cut) {
        assert!(Instant::now() < until, "never declared down");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(!watcher.is_peer_down(ids[1]), "only the peer cut off");
    net.reconnect(cut);
    while watcher.is_peer_down(cut) {
        assert!(Instant::now() < until, "never heard again");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    shutdown(&nodes).await;
}
