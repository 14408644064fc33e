//! Arbitrary bytes from a key-value client or as a replicated command / snapshot.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pontoon::kv::{KvCommand, KvStateMachine};
use pontoon::service::{Request, decode};
use pontoon::{GroupId, StateMachine};

fuzz_target!(|data: &[u8]| {
    let _ = decode::<Request>("client request", data);
    let _ = KvCommand::decode(data);
    let mut sm = KvStateMachine::new();
    let _ = sm.apply(GroupId(1), 1, data);
    let _ = sm.restore(GroupId(1), data);
});
