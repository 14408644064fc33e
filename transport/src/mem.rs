//! A deterministic in-memory network with the transport's semantics, for tests.
//!
//! [`SimNetwork`] is sans-IO like quinn-proto: no tokio, no clocks. Time is a `u64` of ticks
//! the caller passes in. Envelopes are encoded to the same wire bytes the QUIC transport
//! writes and decoded by the same reader, so byte and message counts match what QUIC would
//! frame. A seed drives every fault (drop, duplicate, delay, hence reorder), so a failing
//! test replays exactly from its seed.
//!
//! [`LocalNetwork`] is the other in-memory network: live, over tokio channels, a
//! [`NodeTransport`](crate::NodeTransport) that real `Node`s run on without sockets.

mod local;

pub use local::{LocalNetwork, LocalTransport};

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use bytes::Bytes;
use routing::{GroupId, NodeId};

use crate::codec::{self, Encoded, StreamKey, StreamReader};
use crate::limits::RepeatedCaps;
use crate::stats::Counters;
use crate::{Envelope, Inbound, TransportStats};

/// Faults applied to every frame sent through a [`SimNetwork`].
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct FaultConfig {
    /// Probability in `0.0..=1.0` that an envelope is lost.
    pub drop: f64,
    /// Probability that a raft or heartbeat envelope is delivered twice (each copy with its
    /// own delay).
    pub duplicate: f64,
    /// Fewest ticks between send and delivery.
    pub min_delay: u64,
    /// Most ticks between send and delivery; envelopes with different delays are reordered.
    pub max_delay: u64,
}

/// splitmix64: tiny, and its output for a seed never changes with a dependency upgrade.
#[derive(Clone, Debug)]
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn chance(&mut self, p: f64) -> bool {
        // 53 random bits as a float in [0, 1).
        p > 0.0 && ((self.next_u64() >> 11) as f64 / (1u64 << 53) as f64) < p
    }

    fn between(&mut self, lo: u64, hi: u64) -> u64 {
        if hi <= lo {
            lo
        } else {
            lo + self.next_u64() % (hi - lo + 1)
        }
    }
}

#[derive(Debug)]
enum Item {
    /// Encoded bytes of one envelope; the stream header is included for decoding.
    Frames {
        from: NodeId,
        to: NodeId,
        key: StreamKey,
        header: Bytes,
        frames: Bytes,
    },
    Snapshot {
        from: NodeId,
        to: NodeId,
        group: GroupId,
        bytes: Bytes,
    },
    /// An event for a node itself (snapshot outcomes).
    Local { node: NodeId, event: Inbound },
}

/// N nodes and the network between them. See the [module docs](self).
#[derive(Debug)]
pub struct SimNetwork {
    rng: Rng,
    faults: FaultConfig,
    blocked: HashSet<(NodeId, NodeId)>,
    isolated: HashSet<NodeId>,
    in_flight: BTreeMap<(u64, u64), Item>,
    seq: u64,
    streams_sent: HashSet<(NodeId, NodeId, StreamKey)>,
    streams_received: HashSet<(NodeId, NodeId, StreamKey)>,
    counters: Counters,
    max_frame_bytes: usize,
    caps: RepeatedCaps,
    chunk_bytes: usize,
}

impl SimNetwork {
    /// A network whose every random choice derives from `seed`.
    #[must_use]
    pub fn new(seed: u64, faults: FaultConfig) -> Self {
        let defaults = crate::TransportConfig::default();
        Self {
            rng: Rng(seed),
            faults,
            blocked: HashSet::new(),
            isolated: HashSet::new(),
            in_flight: BTreeMap::new(),
            seq: 0,
            streams_sent: HashSet::new(),
            streams_received: HashSet::new(),
            counters: Counters::default(),
            max_frame_bytes: defaults.max_frame_bytes,
            caps: RepeatedCaps::from_config(&defaults),
            chunk_bytes: defaults.snapshot_chunk_bytes,
        }
    }

    /// Replaces the faults from now on (envelopes in flight keep their fate).
    pub fn set_faults(&mut self, faults: FaultConfig) {
        self.faults = faults;
    }

    /// Stops traffic from `from` to `to` (not the reverse). Envelopes in flight are lost.
    pub fn partition_one_way(&mut self, from: NodeId, to: NodeId) {
        self.blocked.insert((from, to));
    }

    /// Stops traffic both ways between `a` and `b`.
    pub fn partition(&mut self, a: NodeId, b: NodeId) {
        self.partition_one_way(a, b);
        self.partition_one_way(b, a);
    }

    /// Cuts `node` off from every other node.
    pub fn isolate(&mut self, node: NodeId) {
        self.isolated.insert(node);
    }

    /// Ends every partition and isolation.
    pub fn heal(&mut self) {
        self.blocked.clear();
        self.isolated.clear();
    }

    fn is_blocked(&self, from: NodeId, to: NodeId) -> bool {
        from != to
            && (self.blocked.contains(&(from, to))
                || self.isolated.contains(&from)
                || self.isolated.contains(&to))
    }

    fn schedule(&mut self, due: u64, item: Item) {
        self.seq += 1;
        self.in_flight.insert((due, self.seq), item);
    }

    fn delay(&mut self, now: u64) -> u64 {
        now.saturating_add(
            self.rng
                .between(self.faults.min_delay, self.faults.max_delay),
        )
    }

    fn snapshot_failed(&mut self, now: u64, from: NodeId, to: NodeId, group: GroupId) {
        Counters::add(&self.counters.snapshots_failed, 1);
        let due = now.saturating_add(self.faults.min_delay);
        self.schedule(
            due,
            Item::Local {
                node: from,
                event: Inbound::SnapshotStatus {
                    to,
                    group,
                    delivered: false,
                },
            },
        );
    }

    /// Sends `envelope` from `from` to `to` at time `now`: encodes it to wire bytes, counts
    /// it, and applies partitions and faults. An envelope that cannot be encoded is counted
    /// as dropped (the QUIC transport refuses it in `send`).
    pub fn send(&mut self, now: u64, from: NodeId, to: NodeId, envelope: Envelope) {
        let encoded = match codec::encode(from, envelope, self.max_frame_bytes, &self.caps) {
            Ok(e) => e,
            Err(_) => {
                Counters::add(&self.counters.dropped_faults, 1);
                return;
            }
        };
        let c = &self.counters;
        match encoded {
            Encoded::Frames(f) => {
                let header = f.key.header();
                if self.streams_sent.insert((from, to, f.key)) {
                    Counters::add(&c.streams_opened, 1);
                    Counters::add(&c.bytes_sent, header.len() as u64);
                }
                Counters::add(&c.frames_sent, f.frames);
                Counters::add(&c.messages_sent, f.messages);
                Counters::add(&c.bytes_sent, f.bytes.len() as u64);
                if self.is_blocked(from, to) || self.rng.chance(self.faults.drop) {
                    Counters::add(&self.counters.dropped_faults, f.frames);
                    return;
                }
                let copies = if self.rng.chance(self.faults.duplicate) {
                    Counters::add(&self.counters.duplicated, f.frames);
                    2
                } else {
                    1
                };
                for _ in 0..copies {
                    let due = self.delay(now);
                    let item = Item::Frames {
                        from,
                        to,
                        key: f.key,
                        header: header.clone(),
                        frames: f.bytes.clone(),
                    };
                    self.schedule(due, item);
                }
            }
            Encoded::Snapshot(t) => {
                let mut bytes = t.head.to_vec();
                let mut frames = 1;
                for chunk in t.chunks(self.chunk_bytes, self.max_frame_bytes) {
                    bytes.extend_from_slice(&chunk);
                    frames += 1;
                }
                Counters::add(&c.streams_opened, 1);
                Counters::add(&c.frames_sent, frames);
                Counters::add(&c.messages_sent, 1);
                Counters::add(&c.bytes_sent, bytes.len() as u64);
                if self.is_blocked(from, to) || self.rng.chance(self.faults.drop) {
                    Counters::add(&self.counters.dropped_faults, frames);
                    self.snapshot_failed(now, from, to, t.group);
                    return;
                }
                let due = self.delay(now);
                self.schedule(
                    due,
                    Item::Snapshot {
                        from,
                        to,
                        group: t.group,
                        bytes: bytes.into(),
                    },
                );
            }
        }
    }

    /// Everything due at or before `now`, decoded from its bytes, in a deterministic order
    /// (due time, then send order). Each item is `(node it is for, event)`.
    pub fn deliver(&mut self, now: u64) -> Vec<(NodeId, Inbound)> {
        let mut out = Vec::new();
        let all: crate::GroupFilter = Arc::new(|_| true);
        while let Some(entry) = self.in_flight.first_entry() {
            if entry.key().0 > now {
                break;
            }
            match entry.remove() {
                Item::Local { node, event } => out.push((node, event)),
                Item::Frames {
                    from,
                    to,
                    key,
                    header,
                    frames,
                } => {
                    if self.is_blocked(from, to) {
                        Counters::add(&self.counters.dropped_faults, 1);
                        continue;
                    }
                    let mut reader = StreamReader::new(
                        from,
                        self.max_frame_bytes,
                        u64::MAX,
                        all.clone(),
                        self.caps,
                    );
                    // The header travels once per stream on QUIC: count it once here too.
                    let header_counts = Counters::default();
                    let header_ok = reader.feed(header.clone(), &header_counts).is_ok();
                    if self.streams_received.insert((from, to, key)) {
                        Counters::add(&self.counters.bytes_received, header.len() as u64);
                    }
                    match reader.feed(frames, &self.counters) {
                        Ok(envs) if header_ok => {
                            out.extend(
                                envs.into_iter()
                                    .map(|envelope| (to, Inbound::Message { from, envelope })),
                            );
                        }
                        Ok(_) | Err(_) => Counters::add(&self.counters.resets_malformed, 1),
                    }
                }
                Item::Snapshot {
                    from,
                    to,
                    group,
                    bytes,
                } => {
                    if self.is_blocked(from, to) {
                        Counters::add(&self.counters.dropped_faults, 1);
                        self.snapshot_failed(now, from, to, group);
                        continue;
                    }
                    let mut reader = StreamReader::new(
                        from,
                        self.max_frame_bytes,
                        u64::MAX,
                        all.clone(),
                        self.caps,
                    );
                    let result = reader
                        .feed(bytes, &self.counters)
                        .and_then(|_| reader.finish(&self.counters));
                    let delivered = if let Ok(Some(envelope)) = result {
                        out.push((to, Inbound::Message { from, envelope }));
                        Counters::add(&self.counters.snapshots_sent, 1);
                        true
                    } else {
                        Counters::add(&self.counters.snapshots_failed, 1);
                        false
                    };
                    out.push((
                        from,
                        Inbound::SnapshotStatus {
                            to,
                            group,
                            delivered,
                        },
                    ));
                }
            }
        }
        out
    }

    /// The counters, as the QUIC transport would count the same traffic (sent and received
    /// summed over all nodes).
    #[must_use]
    pub fn stats(&self) -> TransportStats {
        self.counters.snapshot()
    }

    /// Items scheduled and not yet delivered.
    #[must_use]
    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// The next time something is due, if anything is in flight.
    #[must_use]
    pub fn next_due(&self) -> Option<u64> {
        self.in_flight.keys().next().map(|k| k.0)
    }
}

#[cfg(test)]
mod tests {
    use raft::eraftpb;

    use super::*;

    fn msg(from: u64, to: u64, index: u64) -> eraftpb::Message {
        eraftpb::Message {
            msg_type: eraftpb::MessageType::MsgAppend,
            from,
            to,
            index,
            ..Default::default()
        }
    }

    fn raft(group: u64, from: u64, to: u64, index: u64) -> Envelope {
        Envelope::Raft {
            group: GroupId(group),
            messages: vec![msg(from, to, index)],
        }
    }

    /// Sends `n` envelopes per ordered pair of 3 nodes over ticks, returns the full trace.
    fn run(seed: u64, faults: FaultConfig, n: u64) -> Vec<(u64, NodeId, Inbound)> {
        let mut net = SimNetwork::new(seed, faults);
        let mut trace = Vec::new();
        for now in 0..n + 100 {
            if now < n {
                for a in 1..=3 {
                    for b in 1..=3 {
                        if a != b {
                            net.send(now, NodeId(a), NodeId(b), raft(a * 10 + b, a, b, now));
                        }
                    }
                }
            }
            trace.extend(net.deliver(now).into_iter().map(|(to, ev)| (now, to, ev)));
        }
        trace
    }

    fn indices(trace: &[(u64, NodeId, Inbound)], group: u64) -> Vec<u64> {
        trace
            .iter()
            .filter_map(|(_, _, ev)| match ev {
                Inbound::Message {
                    envelope: Envelope::Raft { group: g, messages },
                    ..
                } if g.get() == group => Some(messages[0].index),
                _ => None,
            })
            .collect()
    }

    const FAULTY: FaultConfig = FaultConfig {
        drop: 0.1,
        duplicate: 0.1,
        min_delay: 0,
        max_delay: 5,
    };

    #[test]
    fn the_same_seed_replays_the_same_trace_and_another_seed_does_not() {
        let a = run(42, FAULTY, 200);
        assert_eq!(a, run(42, FAULTY, 200));
        assert_ne!(a, run(43, FAULTY, 200));
    }

    #[test]
    fn without_faults_every_message_arrives_once_in_order_and_counts_balance() {
        let mut net = SimNetwork::new(1, FaultConfig::default());
        let mut got = Vec::new();
        for now in 0..50 {
            net.send(now, NodeId(1), NodeId(2), raft(5, 1, 2, now));
            got.extend(net.deliver(now));
        }
        assert_eq!(net.in_flight(), 0);
        let idx: Vec<u64> = got
            .iter()
            .map(|(to, ev)| match ev {
                Inbound::Message {
                    from: NodeId(1),
                    envelope: Envelope::Raft { messages, .. },
                } if *to == NodeId(2) => messages[0].index,
                other => panic!("unexpected {other:?}"),
            })
            .collect();
        assert_eq!(idx, (0..50).collect::<Vec<_>>());
        let s = net.stats();
        assert_eq!(
            (
                s.frames_sent,
                s.frames_received,
                s.messages_sent,
                s.messages_received
            ),
            (50, 50, 50, 50)
        );
        assert_eq!(s.bytes_sent, s.bytes_received);
        assert_eq!(s.streams_opened, 1);
    }

    #[test]
    fn faults_drop_duplicate_and_reorder_and_are_counted() {
        let trace = run(7, FAULTY, 300);
        let idx = indices(&trace, 12);
        assert!(idx.windows(2).any(|w| w[1] < w[0]), "some reordering");
        let mut sorted = idx.clone();
        sorted.sort_unstable();
        assert!(sorted.windows(2).any(|w| w[0] == w[1]), "some duplicate");
        sorted.dedup();
        assert!(sorted.len() < 300, "some loss");
        let mut net = SimNetwork::new(
            7,
            FaultConfig {
                drop: 1.0,
                ..FaultConfig::default()
            },
        );
        net.send(0, NodeId(1), NodeId(2), raft(1, 1, 2, 0));
        assert!(net.deliver(10).is_empty());
        assert_eq!(net.stats().dropped_faults, 1);
    }

    #[test]
    fn a_one_way_partition_blocks_one_direction_until_healed() {
        let mut net = SimNetwork::new(3, FaultConfig::default());
        net.partition_one_way(NodeId(1), NodeId(2));
        net.send(0, NodeId(1), NodeId(2), raft(1, 1, 2, 0));
        net.send(0, NodeId(2), NodeId(1), raft(1, 2, 1, 0));
        let got = net.deliver(0);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].0, NodeId(1));
        net.heal();
        net.send(1, NodeId(1), NodeId(2), raft(1, 1, 2, 1));
        assert_eq!(net.deliver(1).len(), 1);
        net.isolate(NodeId(3));
        net.send(2, NodeId(1), NodeId(3), raft(1, 1, 3, 2));
        net.send(2, NodeId(3), NodeId(2), raft(1, 3, 2, 2));
        assert!(net.deliver(2).is_empty());
    }

    #[test]
    fn messages_in_flight_when_a_partition_starts_are_lost() {
        let mut net = SimNetwork::new(
            3,
            FaultConfig {
                min_delay: 5,
                max_delay: 5,
                ..FaultConfig::default()
            },
        );
        net.send(0, NodeId(1), NodeId(2), raft(1, 1, 2, 0));
        net.partition(NodeId(1), NodeId(2));
        assert!(net.deliver(10).is_empty());
        assert_eq!(net.in_flight(), 0);
    }

    #[test]
    fn snapshots_arrive_whole_and_report_their_fate_to_the_sender() {
        let mut net = SimNetwork::new(9, FaultConfig::default());
        net.chunk_bytes = 1000;
        let mut m = msg(1, 2, 0);
        m.msg_type = eraftpb::MessageType::MsgSnapshot;
        m.mut_snapshot().data = Bytes::from(vec![7u8; 4500]);
        m.mut_snapshot().mut_metadata().index = 77;
        net.send(
            0,
            NodeId(1),
            NodeId(2),
            Envelope::Snapshot {
                group: GroupId(4),
                message: m.clone(),
            },
        );
        let got = net.deliver(0);
        assert_eq!(
            got,
            vec![
                (
                    NodeId(2),
                    Inbound::Message {
                        from: NodeId(1),
                        envelope: Envelope::Snapshot {
                            group: GroupId(4),
                            message: m.clone()
                        }
                    }
                ),
                (
                    NodeId(1),
                    Inbound::SnapshotStatus {
                        to: NodeId(2),
                        group: GroupId(4),
                        delivered: true
                    }
                ),
            ]
        );
        assert_eq!(net.stats().frames_sent, 1 + 5);
        net.partition(NodeId(1), NodeId(2));
        net.send(
            1,
            NodeId(1),
            NodeId(2),
            Envelope::Snapshot {
                group: GroupId(4),
                message: m,
            },
        );
        assert_eq!(
            net.deliver(1),
            vec![(
                NodeId(1),
                Inbound::SnapshotStatus {
                    to: NodeId(2),
                    group: GroupId(4),
                    delivered: false
                }
            )]
        );
    }

    #[test]
    fn coalesced_heartbeats_arrive_from_the_sending_node() {
        let mut net = SimNetwork::new(0, FaultConfig::default());
        let hb = crate::HeartbeatBatch::new(
            crate::HeartbeatKind::Requests,
            (1..=3)
                .map(|g| crate::GroupHeartbeat {
                    group: GroupId(g),
                    term: 2,
                    commit: 5,
                    quiesce: false,
                })
                .collect(),
        );
        net.send(0, NodeId(1), NodeId(2), Envelope::Heartbeats(hb.clone()));
        let got = net.deliver(0);
        let expected = hb;
        assert_eq!(
            got,
            vec![(
                NodeId(2),
                Inbound::Message {
                    from: NodeId(1),
                    envelope: Envelope::Heartbeats(expected)
                }
            )]
        );
        assert_eq!(net.stats().messages_received, 3);
    }
}
