//! Arbitrary bytes as the first frame of a stream: the stream header.
#![no_main]

use libfuzzer_sys::fuzz_target;
use transport::wire::{FrameDecoder, MAX_HEADER_BYTES, StreamHeader, decode_body};

fuzz_target!(|data: &[u8]| {
    let mut decoder = FrameDecoder::new(MAX_HEADER_BYTES);
    decoder.extend(data);
    if let Ok(Some(frame)) = decoder.next_frame() {
        if let Ok(header) = decode_body::<StreamHeader>("stream header", frame) {
            let _ = header.validate();
        }
    }
});
