//! Tests of the codec: splitting to the frame size and the receiver's caps, reading back.
#![allow(clippy::indexing_slicing)]

use std::sync::Arc;

use proptest::prelude::*;

use super::*;
use crate::convert::tests::message;

fn raft(messages: Vec<eraftpb::Message>) -> Envelope {
    Envelope::Raft {
        group: GroupId(4),
        messages,
    }
}

/// The frames of an encoding, each checked against `max`.
fn frames_of(bytes: &Bytes, max: usize) -> Vec<wire::RaftBatch> {
    let mut dec = wire::FrameDecoder::new(max);
    dec.push(bytes.clone());
    let mut out = Vec::new();
    while let Some(body) = dec.next_frame().expect("within max") {
        out.push(wire::decode_body("RaftBatch", body).expect("decodes"));
    }
    dec.finish().expect("whole frames");
    out
}

#[test]
fn batches_over_the_receivers_caps_are_split_and_read_back_within_them() {
    let caps = RepeatedCaps {
        messages_per_batch: 2,
        entries_per_message: 4,
        entries_per_frame: 4,
        heartbeats_per_batch: 3,
        conf_ids: 8,
    };
    let counters = Counters::default();
    let messages: Vec<eraftpb::Message> = (0..5)
        .map(|i| {
            let mut m = eraftpb::Message {
                from: 7,
                index: i,
                ..Default::default()
            };
            m.set_entries(vec![eraftpb::Entry::default(); 2].into());
            m
        })
        .collect();
    let Ok(Encoded::Frames(f)) = encode(NodeId(7), raft(messages.clone()), 1 << 20, &caps) else {
        panic!("raft frames");
    };
    assert_eq!(f.frames, 3);
    let mut reader = StreamReader::new(NodeId(7), 1 << 20, 0, Arc::new(|_| true), caps);
    reader
        .feed(header_frame(StreamKind::Raft, 4), &counters)
        .unwrap();
    assert_eq!(
        reader.feed(f.bytes, &counters).unwrap(),
        vec![raft(messages)]
    );

    let batch = crate::HeartbeatBatch::new(
        crate::HeartbeatKind::Responses,
        (0..7)
            .map(|g| crate::GroupHeartbeat {
                group: GroupId(g),
                ..Default::default()
            })
            .collect(),
    );
    let Ok(Encoded::Frames(f)) = encode(NodeId(7), Envelope::Heartbeats(batch), 1 << 20, &caps)
    else {
        panic!("heartbeat frames");
    };
    assert_eq!((f.frames, f.messages), (3, 7));
    let mut reader = StreamReader::new(NodeId(7), 1 << 20, 0, Arc::new(|_| true), caps);
    reader
        .feed(header_frame(StreamKind::Heartbeats, 0), &counters)
        .unwrap();
    let got = reader.feed(f.bytes, &counters).unwrap();
    let groups: Vec<GroupId> = got
        .iter()
        .flat_map(|e| match e {
            Envelope::Heartbeats(b) => b.heartbeats.iter().map(|h| h.group).collect(),
            _ => Vec::new(),
        })
        .collect();
    assert_eq!((got.len(), groups), (3, (0..7).map(GroupId).collect()));
}

proptest! {
    #[test]
    fn raft_envelopes_split_into_fitting_frames_and_read_back_in_order(
        mut messages in proptest::collection::vec(message(), 0..12),
        max in 200usize..2048,
    ) {
        // The reader checks every sender against the peer's certificate.
        for m in &mut messages {
            m.from = 7;
        }
        let lens: Vec<usize> = messages.iter().map(direct::message_len).collect();
        match encode(NodeId(7), raft(messages.clone()), max, &RepeatedCaps::unbounded()) {
            Ok(Encoded::Frames(f)) => {
                let batches = frames_of(&f.bytes, max);
                prop_assert_eq!(f.frames, batches.len() as u64);
                prop_assert_eq!(f.messages, messages.len() as u64);
                // Split only where needed: two neighbours would not fit in one frame.
                for w in batches.windows(2) {
                    let joined = wire::RaftBatch {
                        from: 7,
                        messages: [w[0].messages.clone(), w[1].messages.clone()].concat(),
                    };
                    prop_assert!(prost::Message::encoded_len(&joined) > max);
                }
                let mut reader = StreamReader::new(NodeId(7), max, u64::MAX, Arc::new(|_| true), RepeatedCaps::unbounded());
                let counters = Counters::default();
                reader.feed(header_frame(StreamKind::Raft, 4), &counters).expect("header");
                let envs = reader.feed(f.bytes.clone(), &counters).expect("frames");
                prop_assert_eq!(envs, vec![raft(messages)]);
            }
            Ok(Encoded::Snapshot(_)) => prop_assert!(false, "not a snapshot"),
            Err(SendError::FrameTooLarge { len, max: m }) => {
                prop_assert_eq!(m, max);
                // Only a message that cannot fit in a frame of its own is refused.
                prop_assert!(len > max);
                prop_assert!(lens.iter().any(|&l| direct::batch_len(7, &[l]) == len));
            }
            Err(e) => prop_assert!(false, "unexpected {e}"),
        }
    }
}

fn forward_reader() -> (StreamReader, Counters) {
    let counters = Counters::default();
    let mut reader = StreamReader::new(
        NodeId(7),
        4096,
        0,
        Arc::new(|_| true),
        RepeatedCaps::unbounded(),
    );
    reader
        .feed(header_frame(StreamKind::Forward, 0), &counters)
        .unwrap();
    (reader, counters)
}

fn forward_bytes(frame: &wire::ForwardFrame) -> Bytes {
    let mut out = BytesMut::new();
    wire::encode_frame(frame, 1 << 20, &mut out).unwrap();
    out.freeze()
}

#[test]
fn forwarded_requests_and_replies_read_back_as_sent() {
    let sent = [
        Forward::Propose {
            id: 9,
            group: GroupId(3),
            vshard: Some(routing::VShardId(12)),
            command: Bytes::from_static(b"put k v"),
            session: Some(wire::ForwardSession {
                client: 5,
                seq: 2,
                acked: 1,
                time_ms: 77,
            }),
        },
        Forward::Reply {
            id: 9,
            result: Ok(Bytes::from_static(b"done")),
        },
        Forward::Reply {
            id: 10,
            result: Err(wire::ForwardError {
                code: 1,
                not_applied: true,
                node: 2,
                reason: "why".into(),
                ..Default::default()
            }),
        },
    ];
    let (mut reader, counters) = forward_reader();
    for forward in sent {
        let Ok(Encoded::Frames(f)) = encode(
            NodeId(7),
            Envelope::Forward(forward.clone()),
            4096,
            &RepeatedCaps::unbounded(),
        ) else {
            panic!("forward frames");
        };
        assert_eq!(f.key, StreamKey::Forward);
        assert_eq!(
            reader.feed(f.bytes, &counters).unwrap(),
            vec![Envelope::Forward(forward)]
        );
    }
}

#[test]
fn a_forwarded_command_larger_than_a_frame_is_refused_before_it_is_queued() {
    let big = Forward::Propose {
        id: 1,
        group: GroupId(1),
        vshard: None,
        command: Bytes::from(vec![0u8; 8192]),
        session: None,
    };
    assert!(matches!(
        encode(
            NodeId(7),
            Envelope::Forward(big),
            4096,
            &RepeatedCaps::unbounded()
        ),
        Err(SendError::FrameTooLarge { max: 4096, .. })
    ));
    // A prefix announcing more than the receiver's maximum resets the stream unread.
    let (mut reader, counters) = forward_reader();
    let refusal = reader
        .feed(Bytes::from_static(&[0, 1, 0, 0]), &counters)
        .unwrap_err();
    assert_eq!(refusal.code(), codes::TOO_LARGE);
}

#[test]
fn malformed_or_forged_forward_frames_are_typed_refusals() {
    let refusal = |frame: wire::ForwardFrame| {
        let (mut reader, counters) = forward_reader();
        reader.feed(forward_bytes(&frame), &counters).unwrap_err()
    };
    let propose = Some(wire::ForwardBody::Propose(wire::ForwardPropose::default()));
    // Another node's id in the frame: the certificate says 7.
    let forged = refusal(wire::ForwardFrame {
        from: 8,
        id: 1,
        group_id: 1,
        body: propose.clone(),
    });
    assert_eq!(forged.code(), codes::SENDER_MISMATCH);
    for bad in [
        wire::ForwardFrame {
            from: 7,
            id: 1,
            group_id: 1,
            body: None,
        },
        wire::ForwardFrame {
            from: 7,
            id: 1,
            group_id: 0,
            body: propose,
        },
        wire::ForwardFrame {
            from: 7,
            id: 1,
            group_id: 0,
            body: Some(wire::ForwardBody::Reply(wire::ForwardReply {
                outcome: None,
            })),
        },
    ] {
        assert_eq!(refusal(bad).code(), codes::MALFORMED);
    }
    let (mut reader, counters) = forward_reader();
    let garbage = reader
        .feed(Bytes::from_static(&[0, 0, 0, 2, 0xff, 0xff]), &counters)
        .unwrap_err();
    assert_eq!(garbage.code(), codes::MALFORMED);
}

proptest! {
    #[test]
    fn any_bytes_on_a_forward_stream_decode_or_are_refused_without_panic(
        bytes in proptest::collection::vec(any::<u8>(), 0..512),
    ) {
        let (mut reader, counters) = forward_reader();
        let _ = reader.feed(Bytes::from(bytes), &counters);
    }
}
