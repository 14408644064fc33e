//! Hostile peers over real QUIC and mutual TLS: an attacker holding a certificate of the
//! cluster CA (a member's stolen identity, and a node id that is in no configuration) sends
//! every forged raft message that once stopped a coordinator or disrupted a group. The
//! cluster must keep serving: every coordinator alive, every acknowledged write present, the
//! forged messages refused and counted by reason.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly on purpose

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::{Machines, attacker, forged, garbage_snapshot, local_cluster, rss_bytes};
use raft::eraftpb::{Entry, Message, MessageType, Snapshot};
use routing::{GroupId, META_GROUP, NodeId, RoutingTable};
use transport::{Envelope, Transport};
use transport::{GroupHeartbeat, HeartbeatBatch, HeartbeatKind};

/// Every forged message of the attack classes, for `group`, at a term a little above any the
/// cluster has reached (so raft would act on it if admission let it through).
fn attacks(group: GroupId, term: u64, from: NodeId) -> Vec<Envelope> {
    // The transport checks that a message names its certificate's node as sender.
    let raft = |mut messages: Vec<Message>| {
        for m in &mut messages {
            m.from = from.get();
        }
        Envelope::Raft { group, messages }
    };
    let mut out = Vec::new();
    // Types that never cross the network (raft-rs acts on them as local commands).
    for kind in [
        MessageType::MsgHup,
        MessageType::MsgBeat,
        MessageType::MsgCheckQuorum,
        MessageType::MsgUnreachable,
        MessageType::MsgSnapStatus,
    ] {
        out.push(raft(vec![forged(kind, 0)]));
    }
    // An empty proposal (raft-rs: "stepped empty MsgProp") and a non-empty one.
    out.push(raft(vec![forged(MessageType::MsgPropose, 0)]));
    let mut proposal = forged(MessageType::MsgPropose, 0);
    proposal.entries = vec![Entry {
        data: b"forged=1".to_vec().into(),
        ..Entry::default()
    }]
    .into();
    out.push(raft(vec![proposal]));
    // Start an election now, in every group.
    out.push(raft(vec![forged(MessageType::MsgTimeoutNow, term)]));
    // A read-index request without its context entry (raft-rs indexes entries[0]).
    out.push(raft(vec![forged(MessageType::MsgReadIndex, term)]));
    // An append whose entries do not follow its index.
    let mut gap = forged(MessageType::MsgAppend, term);
    gap.index = 1;
    gap.log_term = 1;
    gap.entries = vec![Entry {
        index: 1,
        term,
        ..Entry::default()
    }]
    .into();
    out.push(raft(vec![gap]));
    // Terms that overflow raft's `term + 1`.
    out.push(raft(vec![forged(MessageType::MsgAppend, u64::MAX)]));
    // A snapshot whose configuration raft cannot restore (a voter that is also a learner).
    let mut snapshot = forged(MessageType::MsgSnapshot, term);
    let mut data = Snapshot::default();
    data.mut_metadata().index = 1 << 20;
    data.mut_metadata().term = term;
    data.mut_metadata().mut_conf_state().voters = vec![1, 2, 3];
    data.mut_metadata().mut_conf_state().learners = vec![2];
    snapshot.snapshot = Some(data).into();
    snapshot.from = from.get();
    out.push(Envelope::Snapshot {
        group,
        message: snapshot,
    });
    // A sound snapshot (configuration, index, term) whose bytes the state machine cannot
    // read: raft would install it and the replica could never restore it.
    out.push(Envelope::Snapshot {
        group,
        message: garbage_snapshot(term, from),
    });
    // A coalesced heartbeat whose commit is far past every log (raft-rs `commit_to` panics).
    out.push(Envelope::Heartbeats(HeartbeatBatch::new(
        HeartbeatKind::Requests,
        vec![GroupHeartbeat {
            group,
            term,
            commit: 1 << 40,
            quiesce: false,
        }],
    )));
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_raft_messages_from_members_and_outsiders_are_refused_and_the_cluster_serves_on() {
    let dir = tempfile::tempdir().unwrap();
    let nodes: Vec<NodeId> = (1..=3).map(NodeId).collect();
    let routing = RoutingTable::uniform(256, 8, &nodes, 3).unwrap();
    let machines = Machines::default();
    let cluster = local_cluster(dir.path(), routing.clone(), &machines).await;
    assert!(
        cluster
            .wait_for_leaders(Duration::from_secs(20))
            .await
            .is_some()
    );
    // Node 3's identity is stolen: the real node 3 goes away and the attacker speaks as it.
    // Node 9 is in no configuration at all.
    cluster.kill(NodeId(3)).await;
    assert!(
        cluster
            .wait_for_leaders(Duration::from_secs(20))
            .await
            .is_some()
    );
    let targets: BTreeMap<NodeId, SocketAddr> = [NodeId(1), NodeId(2)]
        .into_iter()
        .map(|n| (n, cluster.node(n).unwrap().local_addr()))
        .collect();
    let cert_dir = dir.path().join("certs");
    let insider = attacker(&cert_dir, NodeId(3), &targets).await;
    // The attacker takes over node 3's address too: the survivors dial it as node 3.
    for node in cluster.running() {
        node.set_peer_address(NodeId(3), insider.local_addr());
    }
    let outsider = attacker(&cert_dir, NodeId(9), &targets).await;
    // The survivors redial node 3 with backoff; wait until they reach the attacker.
    let connected = Instant::now() + Duration::from_secs(30);
    while insider.connected_peers().len() < 2 {
        assert!(
            Instant::now() < connected,
            "the survivors never dialled the attacker"
        );
        for group in routing.groups().map(|(g, _)| g) {
            for to in targets.keys() {
                let _ = insider.send(*to, attacks(group, 0, NodeId(3)).remove(0));
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let timeout = Duration::from_secs(10);
    let mut acknowledged = Vec::new();
    // `PONTOON_ATTACK_SECS=60` is the bar run; CI runs 8 s.
    let attack = std::env::var("PONTOON_ATTACK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .map_or(Duration::from_secs(8), Duration::from_secs);
    let deadline = Instant::now() + attack;
    let rss_before = rss_bytes();
    let mut rss_peak = rss_before;
    let mut round = 0u64;
    while Instant::now() < deadline {
        for group in routing.groups().map(|(g, _)| g).chain([META_GROUP]) {
            for (transport, id) in [(&insider, NodeId(3)), (&outsider, NodeId(9))] {
                for envelope in attacks(group, 1_000 + round, id) {
                    for to in targets.keys() {
                        let _ = transport.send(*to, envelope.clone());
                    }
                }
            }
        }
        // Legitimate writes keep being acknowledged while the attack runs.
        for i in 0..16 {
            let key = format!("key-{round}-{i}");
            cluster
                .propose(key.as_bytes(), format!("{key}=v").into_bytes(), timeout)
                .await
                .unwrap_or_else(|e| panic!("write {key} failed under attack: {e}"));
            acknowledged.push(key);
        }
        rss_peak = rss_peak.max(rss_bytes());
        round += 1;
    }
    assert!(round >= 2, "the attack ran for several rounds");
    // Every node, the writer and both attackers live in this process: the bound is the
    // issue's for one node, here held by three.
    let grown_mib = rss_peak.saturating_sub(rss_before) >> 20;
    eprintln!(
        "attack ran {} s, {round} rounds, {} writes acknowledged; RSS peak growth {grown_mib} MiB",
        attack.as_secs(),
        acknowledged.len()
    );
    assert!(grown_mib <= 256, "RSS grew by {grown_mib} MiB under attack");

    let mut refused: BTreeMap<&'static str, u64> = BTreeMap::new();
    let mut outsider_refused = 0;
    for node in cluster.running() {
        // The coordinator is alive: it answers, and it refused what it was sent.
        let status = node.status().await.expect("coordinator still serves");
        outsider_refused += status.transport.connections_refused_not_admitted;
        for (reason, count) in status.coordinator.refused_messages {
            *refused.entry(reason).or_default() += count;
        }
        let kv = machines.lock().unwrap().get(&node.id()).cloned().unwrap();
        for group in routing.groups().map(|(g, _)| g) {
            node.read_index(group).await.unwrap();
        }
        for key in &acknowledged {
            let group = node.group_for_key(key.as_bytes());
            assert_eq!(
                kv.get(group, key).as_deref(),
                Some("v"),
                "{key} on {}",
                node.id()
            );
        }
        for group in routing.groups().map(|(g, _)| g) {
            assert!(
                kv.get(group, "forged").is_none(),
                "a forged proposal reached the state machine"
            );
        }
    }
    eprintln!("refused by reason: {refused:?}; outsider connections refused: {outsider_refused}");
    // The outsider is not in the routing table: its connections end at the handshake, so none
    // of its messages reaches a coordinator (the coordinator's own check is proven in the
    // admission and simulation tests).
    assert!(
        outsider_refused > 0,
        "the outsider's connections were admitted"
    );
    for reason in [
        "local_only_type",
        "forwarded_proposal",
        "malformed_read_index",
        "malformed_append",
        "out_of_range",
        "malformed_snapshot",
        "unrestorable_snapshot",
        "commit_past_last_index",
    ] {
        assert!(
            refused.get(reason).copied().unwrap_or(0) > 0,
            "no refusal counted for {reason}: {refused:?}"
        );
    }
    cluster.shutdown().await;
}

/// A node waiting to be added has no configuration yet: it hears only the nodes its starting
/// table lists. A stranger with a CA-signed certificate cannot make itself the joining node's
/// meta leader (and hand it a forged cluster); the real cluster then adds the node as usual.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_joining_node_hears_only_the_nodes_it_was_given_and_still_joins() {
    let dir = tempfile::tempdir().unwrap();
    let nodes: Vec<NodeId> = (1..=3).map(NodeId).collect();
    let routing = RoutingTable::uniform(64, 4, &nodes, 3).unwrap();
    let machines = Machines::default();
    let cluster = local_cluster(dir.path(), routing, &machines).await;
    let addr = cluster.join_node(NodeId(4)).await.unwrap();
    let joining = cluster.node(NodeId(4)).unwrap();

    let targets = BTreeMap::from([(NodeId(4), addr)]);
    let stranger = attacker(&dir.path().join("certs"), NodeId(9), &targets).await;
    let term = 1_000;
    let heartbeat = {
        let mut m = forged(MessageType::MsgHeartbeat, term);
        m.from = 9;
        m
    };
    let deadline = Instant::now() + Duration::from_secs(3);
    while Instant::now() < deadline {
        for envelope in [
            Envelope::Raft {
                group: META_GROUP,
                messages: vec![heartbeat.clone()],
            },
            Envelope::Raft {
                group: META_GROUP,
                messages: vec![garbage_snapshot(term, NodeId(9))],
            },
        ] {
            let _ = stranger.send(NodeId(4), envelope);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let status = joining.status().await.expect("the joining node serves");
    assert!(
        status.transport.connections_refused_not_admitted > 0,
        "the stranger's connections were admitted"
    );
    let meta = joining.group_status(META_GROUP).await.unwrap().unwrap();
    assert!(
        meta.term < term && meta.leader != Some(NodeId(9)),
        "the stranger was heard: {meta:?}"
    );

    // The cluster's own meta leader is listed, so the honest add goes through.
    cluster
        .reshaper(500)
        .add_node(NodeId(4), &addr.to_string())
        .await
        .unwrap();
    let meta = joining.group_status(META_GROUP).await.unwrap().unwrap();
    assert!(
        meta.leader.is_some_and(|leader| nodes.contains(&leader)),
        "{meta:?}"
    );
    assert!(joining.routing().is_member(NodeId(4)));
    cluster.shutdown().await;
}
