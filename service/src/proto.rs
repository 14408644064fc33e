//! The KV protocol: one [`KvRequest`] per stream, inside the client protocol's envelope
//! (`admin::wire::ClientRequest::App`), answered by one [`KvReply`]
//! (`admin::wire::ClientReply::App`). Failures travel in the envelope as typed
//! `admin::wire::Failure`s, the same as admin failures.

use prost::Message as _;

/// A key-value request.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct KvRequest {
    /// The operation.
    #[prost(oneof = "kv_request::Op", tags = "1, 2, 3, 4")]
    pub op: Option<kv_request::Op>,
    /// The client session a write belongs to: the node then applies it once however often
    /// it is sent (see `pontoon_coordinator::ClientSession`).
    #[prost(message, optional, tag = "5")]
    pub session: Option<kv_request::Session>,
}

/// The operations of a [`KvRequest`].
pub mod kv_request {
    /// Set `key` to `value`.
    #[derive(Clone, PartialEq, Eq, prost::Message)]
    pub struct Put {
        /// The key.
        #[prost(bytes = "vec", tag = "1")]
        pub key: Vec<u8>,
        /// The value.
        #[prost(bytes = "vec", tag = "2")]
        pub value: Vec<u8>,
    }

    /// Read `key` linearizably.
    #[derive(Clone, PartialEq, Eq, prost::Message)]
    pub struct Get {
        /// The key.
        #[prost(bytes = "vec", tag = "1")]
        pub key: Vec<u8>,
    }

    /// Remove `key`.
    #[derive(Clone, PartialEq, Eq, prost::Message)]
    pub struct Delete {
        /// The key.
        #[prost(bytes = "vec", tag = "1")]
        pub key: Vec<u8>,
    }

    /// Set `key` to `value` only if it holds `expected` now (absent: the key is absent).
    #[derive(Clone, PartialEq, Eq, prost::Message)]
    pub struct CompareAndSet {
        /// The key.
        #[prost(bytes = "vec", tag = "1")]
        pub key: Vec<u8>,
        /// What it must hold now.
        #[prost(bytes = "vec", optional, tag = "2")]
        pub expected: Option<Vec<u8>>,
        /// What to set.
        #[prost(bytes = "vec", tag = "3")]
        pub value: Vec<u8>,
    }

    /// Which command of which client session a write is.
    #[derive(Clone, Copy, PartialEq, Eq, prost::Message)]
    pub struct Session {
        /// The session's id.
        #[prost(uint64, tag = "1")]
        pub client: u64,
        /// The command's sequence number in the session.
        #[prost(uint64, tag = "2")]
        pub seq: u64,
        /// The client has every answer up to this sequence number.
        #[prost(uint64, tag = "3")]
        pub acked: u64,
    }

    /// A key-value operation.
    #[derive(Clone, PartialEq, Eq, prost::Oneof)]
    pub enum Op {
        /// See [`Put`].
        #[prost(message, tag = "1")]
        Put(Put),
        /// See [`Get`].
        #[prost(message, tag = "2")]
        Get(Get),
        /// See [`Delete`].
        #[prost(message, tag = "3")]
        Delete(Delete),
        /// See [`CompareAndSet`].
        #[prost(message, tag = "4")]
        CompareAndSet(CompareAndSet),
    }
}

/// The answer to a [`KvRequest`] that did not fail.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct KvReply {
    /// The answer.
    #[prost(oneof = "kv_reply::Outcome", tags = "1, 2, 3")]
    pub outcome: Option<kv_reply::Outcome>,
}

/// The answers of a [`KvReply`].
pub mod kv_reply {
    /// A value, or its absence.
    #[derive(Clone, PartialEq, Eq, prost::Message)]
    pub struct Value {
        /// The value; absent when the key is.
        #[prost(bytes = "vec", optional, tag = "1")]
        pub value: Option<Vec<u8>>,
    }

    /// An answer.
    #[derive(Clone, PartialEq, Eq, prost::Oneof)]
    pub enum Outcome {
        /// A get's value.
        #[prost(message, tag = "1")]
        Value(Value),
        /// A write took effect; the key's previous value.
        #[prost(message, tag = "2")]
        Done(Value),
        /// A compare-and-set found another value (given here); nothing changed.
        #[prost(message, tag = "3")]
        Mismatch(Value),
    }
}

impl KvRequest {
    /// A request for `op`.
    #[must_use]
    pub fn new(op: kv_request::Op) -> Self {
        Self {
            op: Some(op),
            session: None,
        }
    }

    /// The same request as command `command` of a client session: the node applies it once
    /// however often it is sent.
    #[must_use]
    pub fn in_session(mut self, command: &coordinator::SessionCommand) -> Self {
        self.session = Some(kv_request::Session {
            client: command.session().id(),
            seq: command.seq(),
            acked: command.acknowledged(),
        });
        self
    }

    /// A put.
    #[must_use]
    pub fn put(key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) -> Self {
        Self::new(kv_request::Op::Put(kv_request::Put {
            key: key.into(),
            value: value.into(),
        }))
    }

    /// A linearizable get.
    #[must_use]
    pub fn get(key: impl Into<Vec<u8>>) -> Self {
        Self::new(kv_request::Op::Get(kv_request::Get { key: key.into() }))
    }

    /// A delete.
    #[must_use]
    pub fn delete(key: impl Into<Vec<u8>>) -> Self {
        Self::new(kv_request::Op::Delete(kv_request::Delete {
            key: key.into(),
        }))
    }

    /// A compare-and-set.
    #[must_use]
    pub fn compare_and_set(
        key: impl Into<Vec<u8>>,
        expected: Option<Vec<u8>>,
        value: impl Into<Vec<u8>>,
    ) -> Self {
        Self::new(kv_request::Op::CompareAndSet(kv_request::CompareAndSet {
            key: key.into(),
            expected,
            value: value.into(),
        }))
    }

    /// Whether sending the request twice changes nothing: a get, or a write in a client
    /// session (the node applies it once). A client may then resend it after an
    /// outcome-unknown failure. A plain write may not: resent after its first copy applied,
    /// a put could overwrite a later write, a delete or compare-and-set answer differently.
    #[must_use]
    pub fn is_idempotent(&self) -> bool {
        matches!(self.op, Some(kv_request::Op::Get(_))) || self.session.is_some()
    }

    /// The request's bytes, for the envelope.
    #[must_use]
    pub fn to_bytes(&self) -> Vec<u8> {
        self.encode_to_vec()
    }
}

impl KvReply {
    /// The value it carries: a get's value, a write's previous value, or the value a
    /// compare-and-set found.
    #[must_use]
    pub fn value(&self) -> Option<&[u8]> {
        match &self.outcome {
            Some(
                kv_reply::Outcome::Value(v)
                | kv_reply::Outcome::Done(v)
                | kv_reply::Outcome::Mismatch(v),
            ) => v.value.as_deref(),
            None => None,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic_the_kv_decoders(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = KvRequest::decode(bytes.as_slice());
            if let Ok(reply) = KvReply::decode(bytes.as_slice()) {
                let _ = reply.value();
            }
        }

        #[test]
        fn requests_round_trip(key in proptest::collection::vec(any::<u8>(), 0..32),
                               value in proptest::collection::vec(any::<u8>(), 0..32),
                               expected in proptest::option::of(proptest::collection::vec(any::<u8>(), 0..8))) {
            for request in [
                KvRequest::put(key.clone(), value.clone()),
                KvRequest::get(key.clone()),
                KvRequest::delete(key.clone()),
                KvRequest::compare_and_set(key.clone(), expected.clone(), value.clone()),
            ] {
                prop_assert_eq!(KvRequest::decode(request.to_bytes().as_slice()).unwrap(), request);
            }
        }
    }
}
