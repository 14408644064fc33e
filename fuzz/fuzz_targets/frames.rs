//! Arbitrary bytes on a raft or heartbeat stream: split into frames (bounded), each decoded as
//! the stream's message type and converted to raft-rs messages. Nothing may panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use transport::wire::{FrameDecoder, HeartbeatBatch, RaftBatch, decode_body};

fuzz_target!(|data: &[u8]| {
    let mut decoder = FrameDecoder::new(64 * 1024);
    // Feed in uneven pieces, as a network would.
    for piece in data.chunks(7) {
        decoder.extend(piece);
        while let Ok(Some(frame)) = decoder.next_frame() {
            if let Ok(batch) = decode_body::<RaftBatch>("raft batch", frame.clone()) {
                for m in batch.messages {
                    let _ = transport::from_wire(m);
                }
            }
            let _ = decode_body::<HeartbeatBatch>("heartbeats", frame);
        }
    }
    let _ = decoder.finish();
});
