//! Tests of the frame decoder and the stream header.
#![allow(clippy::indexing_slicing)]

use proptest::prelude::*;

use super::*;

fn batch(n: usize) -> RaftBatch {
    RaftBatch {
        from: 7,
        messages: (0..n)
            .map(|i| RaftMessage {
                msg_type: 3,
                to: 2,
                from: 7,
                index: i as u64,
                ..Default::default()
            })
            .collect(),
    }
}

#[test]
fn of_a_frame_straddling_reads_only_its_own_bytes_are_copied() {
    let mut out = BytesMut::new();
    for n in 0..4 {
        encode_frame(&batch(n), 1 << 20, &mut out).unwrap();
    }
    let bytes = out.freeze();
    // Cut inside the second frame.
    let cut = LENGTH_PREFIX + prost::Message::encoded_len(&batch(0)) + 3;
    let (first, second) = (bytes.slice(..cut), bytes.slice(cut..));
    let mut dec = FrameDecoder::new(1 << 20);
    dec.push(first);
    assert!(dec.next_frame().unwrap().is_some());
    assert!(dec.next_frame().unwrap().is_none());
    dec.push(second.clone());
    let straddling = dec.next_frame().unwrap().unwrap();
    assert_eq!(decode_body::<RaftBatch>("b", straddling).unwrap(), batch(1));
    let read = second.as_ptr() as usize..second.as_ptr() as usize + second.len();
    for n in 2..4 {
        let body = dec.next_frame().unwrap().unwrap();
        assert!(
            read.contains(&(body.as_ptr() as usize)),
            "frame {n} was copied"
        );
        assert_eq!(decode_body::<RaftBatch>("b", body).unwrap(), batch(n));
    }
    assert!(dec.next_frame().unwrap().is_none());
    dec.finish().unwrap();
}

#[test]
fn frames_round_trip_through_the_decoder_in_any_split() {
    let mut out = BytesMut::new();
    for n in 0..5 {
        encode_frame(&batch(n), 1 << 20, &mut out).unwrap();
    }
    let bytes = out.freeze();
    for split in [1, 3, 7, bytes.len()] {
        let mut dec = FrameDecoder::new(1 << 20);
        let mut got = Vec::new();
        for chunk in bytes.chunks(split) {
            dec.extend(chunk);
            while let Some(body) = dec.next_frame().unwrap() {
                got.push(decode_body::<RaftBatch>("RaftBatch", body).unwrap());
            }
        }
        dec.finish().unwrap();
        assert_eq!(got, (0..5).map(batch).collect::<Vec<_>>());
    }
}

/// Feeds `bytes` cut at `cuts`, alternating `push` and `extend`, and collects the frames
/// (or the first error).
fn split_frames(bytes: &Bytes, cuts: &[usize], max: usize) -> (Vec<Bytes>, Result<(), WireError>) {
    let mut dec = FrameDecoder::new(max);
    let mut frames = Vec::new();
    let mut bounds: Vec<usize> = cuts.iter().map(|c| c % (bytes.len() + 1)).collect();
    bounds.push(0);
    bounds.push(bytes.len());
    bounds.sort_unstable();
    for (i, w) in bounds.windows(2).enumerate() {
        if i % 2 == 0 {
            dec.push(bytes.slice(w[0]..w[1]));
        } else {
            dec.extend(&bytes[w[0]..w[1]]);
        }
        loop {
            match dec.next_frame() {
                Ok(Some(f)) => frames.push(f),
                Ok(None) => break,
                Err(e) => return (frames, Err(e)),
            }
        }
    }
    (frames, dec.finish())
}

#[test]
fn an_oversized_frame_is_refused_on_both_sides_before_buffering() {
    let mut out = BytesMut::new();
    let err = encode_frame(&batch(100), 64, &mut out).unwrap_err();
    assert!(matches!(err, WireError::FrameTooLarge { max: 64, .. }));
    assert!(out.is_empty());
    let mut dec = FrameDecoder::new(64);
    dec.extend(&1_000_000u32.to_be_bytes());
    assert_eq!(
        dec.next_frame(),
        Err(WireError::FrameTooLarge {
            len: 1_000_000,
            max: 64
        })
    );
}

#[test]
fn an_announced_length_is_not_allocated_before_its_bytes_arrive() {
    let mut dec = FrameDecoder::new(u32::MAX as usize);
    dec.extend(&[(1u32 << 30).to_be_bytes().as_slice(), &[0; 10]].concat());
    assert_eq!(dec.next_frame(), Ok(None));
    assert!(
        dec.buf.capacity() <= 2 * RESERVE_AHEAD,
        "reserved {} bytes for 14 received",
        dec.buf.capacity()
    );
}

#[test]
fn a_truncated_stream_is_reported() {
    let mut out = BytesMut::new();
    encode_frame(&batch(3), 1 << 20, &mut out).unwrap();
    let mut dec = FrameDecoder::new(1 << 20);
    dec.extend(&out[..out.len() - 1]);
    assert_eq!(dec.next_frame(), Ok(None));
    assert!(matches!(dec.finish(), Err(WireError::Truncated { .. })));
}

#[test]
fn headers_check_version_and_kind() {
    assert_eq!(
        StreamHeader::new(StreamKind::Raft, 9).validate(),
        Ok(StreamKind::Raft)
    );
    let mut h = StreamHeader::new(StreamKind::Raft, 9);
    h.version = 2;
    assert_eq!(h.validate(), Err(WireError::UnsupportedVersion(2)));
    h = StreamHeader {
        version: WIRE_VERSION,
        kind: 99,
        group_id: 1,
    };
    assert_eq!(h.validate(), Err(WireError::UnknownStreamKind(99)));
    h.kind = 0;
    assert_eq!(h.validate(), Err(WireError::UnknownStreamKind(0)));
}

proptest! {
    #[test]
    fn frames_survive_any_cuts_and_mix_of_push_and_extend(
        sizes in proptest::collection::vec(0usize..40, 0..8),
        cuts in proptest::collection::vec(any::<usize>(), 0..10),
    ) {
        let mut out = BytesMut::new();
        for (i, &n) in sizes.iter().enumerate() {
            let body = vec![u8::try_from(i).unwrap_or(0); n];
            out.put_u32(u32::try_from(n).unwrap_or(0));
            out.extend_from_slice(&body);
        }
        let bytes = out.freeze();
        let (frames, end) = split_frames(&bytes, &cuts, 64);
        prop_assert_eq!(end, Ok(()));
        prop_assert_eq!(frames.len(), sizes.len());
        for (i, (f, &n)) in frames.iter().zip(&sizes).enumerate() {
            prop_assert_eq!(f.len(), n);
            prop_assert!(f.iter().all(|&b| usize::from(b) == i));
        }
        // Without the last byte, the stream ends inside a frame (unless it is empty).
        if !bytes.is_empty() {
            let (_, end) = split_frames(&bytes.slice(..bytes.len() - 1), &cuts, 64);
            prop_assert!(matches!(end, Err(WireError::Truncated { .. })), "{:?}", end);
        }
    }

    #[test]
    fn an_oversized_prefix_is_refused_however_it_arrives(
        cuts in proptest::collection::vec(any::<usize>(), 0..6),
    ) {
        let mut bytes = BytesMut::new();
        bytes.put_u32(3);
        bytes.extend_from_slice(b"abc");
        bytes.put_u32(65);
        bytes.extend_from_slice(&[0; 10]);
        let (frames, end) = split_frames(&bytes.freeze(), &cuts, 64);
        prop_assert_eq!(frames.len(), 1);
        prop_assert_eq!(end, Err(WireError::FrameTooLarge { len: 65, max: 64 }));
    }

    #[test]
    fn the_decoder_never_panics_on_garbage(bytes in proptest::collection::vec(any::<u8>(), 0..512), max in 0usize..256) {
        let mut dec = FrameDecoder::new(max);
        dec.extend(&bytes);
        while let Ok(Some(body)) = dec.next_frame() {
            prop_assert!(body.len() <= max);
            let _ = decode_body::<RaftBatch>("RaftBatch", body.clone());
            let _ = decode_body::<HeartbeatBatch>("HeartbeatBatch", body.clone());
            let _ = decode_body::<SnapshotHeader>("SnapshotHeader", body);
        }
    }
}
