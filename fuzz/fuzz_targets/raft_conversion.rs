//! Arbitrary prost bytes as one raft message: decoding and conversion to raft-rs must reject
//! what is invalid, and what converts must convert back to the same wire message.
#![no_main]

use libfuzzer_sys::fuzz_target;
use prost::Message as _;
use transport::wire::RaftMessage;

fuzz_target!(|data: &[u8]| {
    if let Ok(wire) = RaftMessage::decode(data) {
        if let Ok(message) = transport::from_wire(wire) {
            let again = transport::to_wire(&message);
            let back = transport::from_wire(again).expect("a converted message converts again");
            assert_eq!(back, message);
        }
    }
});
