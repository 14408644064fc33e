//! [`KvClient`]: the client side of the KV protocol, over [`NodeClient`] (one QUIC connection
//! per node, one stream per request). Every call goes through [`NodeClient::call`], which
//! follows `NotLeader` redirects and resends what certainly did not take effect.

use std::net::SocketAddr;

use admin::wire::{ClientReply, ClientRequest, client_reply};
use admin::{ClientError, NodeClient};
use prost::Message as _;
use routing::NodeId;

use crate::proto::{KvReply, KvRequest};

/// A client of the key-value service, authenticated by a client certificate.
pub struct KvClient {
    nodes: NodeClient,
}

impl KvClient {
    /// A client presenting `identity`.
    ///
    /// # Errors
    /// A TLS config or socket that cannot be made.
    pub fn new(identity: &certs::ClientIdentity) -> Result<Self, ClientError> {
        Ok(Self {
            nodes: NodeClient::new(identity)?,
        })
    }

    /// A client over an existing [`NodeClient`].
    #[must_use]
    pub fn over(nodes: NodeClient) -> Self {
        Self { nodes }
    }

    /// The client of the nodes it talks through (for admin requests on the same connections).
    #[must_use]
    pub fn nodes(&self) -> &NodeClient {
        &self.nodes
    }

    /// Sends `request` to the node at `first` (any node: it redirects to the key's leader) and
    /// returns the answer.
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
        kv_reply(self.nodes.call(first, node_hint, &envelope).await?)
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
        let reply = self.call(node, None, &KvRequest::put(key, value)).await?;
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
