//! Arbitrary bytes from a client (the envelope, an admin request, a key-value request) or as a
//! replicated command / snapshot.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pontoon::admin::wire::{ClientRequest, client_request, decode};
use pontoon::{GroupId, StateMachine};
use prost::Message as _;
use service::{KvCommand, KvRequest, KvStateMachine};

fuzz_target!(|data: &[u8]| {
    if let Ok(request) = decode::<ClientRequest>("client request", data) {
        match request.body {
            Some(client_request::Body::Admin(admin)) => {
                let _ = admin.operation();
                let _ = admin.arguments();
            }
            Some(client_request::Body::App(bytes)) => {
                let _ = KvRequest::decode(bytes.as_slice());
            }
            None => {}
        }
    }
    let _ = KvRequest::decode(data);
    let _ = KvCommand::decode(data);
    let mut sm = KvStateMachine::new();
    let _ = sm.apply(GroupId(1), 1, data);
    let _ = sm.restore(GroupId(1), data);
});
