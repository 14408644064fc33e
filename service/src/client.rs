//! [`KvClient`]: the client side of the KV protocol, over [`NodeClient`] (one QUIC connection
//! per node shared by concurrent calls, one stream per request). Every call goes through
//! [`NodeClient::call_with`], which follows `NotLeader` redirects and resends what the error
//! class allows: what certainly did not take effect always, an outcome-unknown failure only
//! for a get or a write in a client session (see [`KvRequest::is_idempotent`]). Its own
//! writes are in a session, so every failure of one may be resent: it applies once.

use std::net::SocketAddr;

use admin::wire::{ClientReply, ClientRequest, client_reply};
use admin::{ClientError, NodeClient, Retries};
use prost::Message as _;
use routing::NodeId;

use coordinator::ClientSession;

use crate::proto::{KvReply, KvRequest};

/// A client of the key-value service, authenticated by a client certificate.
pub struct KvClient {
    nodes: NodeClient,
    /// Every write is a command of this session: resent after any failure, it applies once.
    session: ClientSession,
}

impl KvClient {
    /// A client presenting `identity`.
    ///
    /// # Errors
    /// A TLS config or socket that cannot be made.
    pub fn new(identity: &certs::ClientIdentity) -> Result<Self, ClientError> {
        Ok(Self {
            nodes: NodeClient::new(identity)?,
            session: ClientSession::new(),
        })
    }

    /// A client over an existing [`NodeClient`].
    #[must_use]
    pub fn over(nodes: NodeClient) -> Self {
        Self {
            nodes,
            session: ClientSession::new(),
        }
    }

    /// The client of the nodes it talks through (for admin requests on the same connections).
    #[must_use]
    pub fn nodes(&self) -> &NodeClient {
        &self.nodes
    }

    /// Sends `request` to the node at `first` (any node: it redirects to the key's leader) and
    /// returns the answer. A get, or a write in a client session
    /// ([`KvRequest::in_session`]), is resent after a lost connection or a timeout; a plain
    /// write is not, and its error then says the write may have taken effect
    /// ([`ClientError::may_have_taken_effect`]). `put`, `delete` and `compare_and_set` send
    /// their writes in this client's session.
    ///
    /// # Errors
    /// [`ClientError`]; [`ClientError::Remote`] carries the node's typed failure.
    pub async fn call(
        &self,
        first: SocketAddr,
        node_hint: Option<NodeId>,
        request: &KvRequest,
    ) -> Result<KvReply, ClientError> {
        let envelope = ClientRequest::app(request.to_bytes());
        let retries = if request.is_idempotent() {
            Retries::Idempotent
        } else {
            Retries::DidNotTakeEffect
        };
        let reply = self
            .nodes
            .call_with(first, node_hint, &envelope, retries)
            .await?;
        kv_reply(reply)
    }

    /// Sets `key` to `value`; returns the previous value.
    ///
    /// # Errors
    /// As [`KvClient::call`].
    pub async fn put(
        &self,
        node: SocketAddr,
        key: &[u8],
        value: &[u8],
    ) -> Result<Option<Vec<u8>>, ClientError> {
        let once = self.session.command();
        let request = KvRequest::put(key, value).in_session(&once);
        let reply = self.call(node, None, &request).await?;
        Ok(reply.value().map(<[u8]>::to_vec))
    }

    /// Reads `key` linearizably.
    ///
    /// # Errors
    /// As [`KvClient::call`].
    pub async fn get(&self, node: SocketAddr, key: &[u8]) -> Result<Option<Vec<u8>>, ClientError> {
        let reply = self.call(node, None, &KvRequest::get(key)).await?;
        Ok(reply.value().map(<[u8]>::to_vec))
    }

    /// Removes `key`; returns its previous value.
    ///
    /// # Errors
    /// As [`KvClient::call`].
    pub async fn delete(
        &self,
        node: SocketAddr,
        key: &[u8],
    ) -> Result<Option<Vec<u8>>, ClientError> {
        let once = self.session.command();
        let request = KvRequest::delete(key).in_session(&once);
        let reply = self.call(node, None, &request).await?;
        Ok(reply.value().map(<[u8]>::to_vec))
    }

    /// Sets `key` to `value` if it holds `expected` now (`None`: if it is absent). `Ok(Ok(()))`
    /// when it did; `Ok(Err(current))` with the value found (nothing changed) when it did not.
    ///
    /// # Errors
    /// As [`KvClient::call`].
    pub async fn compare_and_set(
        &self,
        node: SocketAddr,
        key: &[u8],
        expected: Option<&[u8]>,
        value: &[u8],
    ) -> Result<Result<(), Option<Vec<u8>>>, ClientError> {
        let once = self.session.command();
        let request =
            KvRequest::compare_and_set(key, expected.map(<[u8]>::to_vec), value).in_session(&once);
        let reply = self.call(node, None, &request).await?;
        Ok(match reply.outcome {
            Some(crate::proto::kv_reply::Outcome::Mismatch(found)) => Err(found.value),
            _ => Ok(()),
        })
    }

    /// Closes every connection (see [`NodeClient::close`]).
    pub async fn close(&self) {
        self.nodes.close().await;
    }
}

/// The KV answer an envelope carries.
fn kv_reply(reply: ClientReply) -> Result<KvReply, ClientError> {
    match reply.body {
        Some(client_reply::Body::App(bytes)) => KvReply::decode(bytes.as_slice())
            .map_err(|e| ClientError::Unexpected(format!("malformed key-value reply: {e}"))),
        Some(client_reply::Body::Failure(f)) => Err(ClientError::Remote(f.to_error())),
        _ => Err(ClientError::Unexpected(
            "an admin reply to a key-value request".into(),
        )),
    }
}
