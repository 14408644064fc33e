//! Client connections handed over to the service, and the budgets their requests are read
//! within: a request is read whole (up to `client_request_bytes`) within
//! `client_request_timeout`, its bytes counted against the client's (all connections of one
//! certificate name together) and all clients' budgets
//! until the answer is sent, so unfinished or slow requests hold bounded memory for a
//! bounded time.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use quinn::{RecvStream, SendStream, VarInt};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::Shared;
use crate::codec::codes;
use crate::stats::Counters;

/// A connection from a client (ALPN [`certs::CLIENT_ALPN`]), authenticated by a certificate
/// of the cluster CA, handed over by `QuicTransport::take_client_connections`. The service
/// reads requests with [`ClientConnection::accept_request`] (or opens and accepts streams on
/// `connection` itself, outside the transport's request budgets).
#[derive(Debug)]
pub struct ClientConnection {
    /// Who connected: the client's name from its certificate (`urn:pontoon:client:<name>`),
    /// or `node-<id>` when a node connected as a client.
    pub name: String,
    /// The connection.
    pub connection: quinn::Connection,
    budget: RequestBudget,
}

/// What a client's requests may hold.
#[derive(Clone)]
struct RequestBudget {
    client: Arc<Semaphore>,
    all: Arc<Semaphore>,
    max_request: usize,
    timeout: std::time::Duration,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for RequestBudget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequestBudget")
            .field("client_available", &self.client.available_permits())
            .field("all_available", &self.all.available_permits())
            .field("max_request", &self.max_request)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

/// Why a request could not be read. The stream is reset (with
/// [`codes::CLIENTS_BUSY`](crate::codes::CLIENTS_BUSY) for a budget or a timeout) and the
/// refusal counted in `client_requests_refused`; the connection carries on.
#[derive(Debug, thiserror::Error)]
pub enum ClientRequestError {
    /// The connection ended: stop serving it.
    #[error("client connection ended: {0}")]
    Closed(#[from] quinn::ConnectionError),
    /// The request is longer than `client_request_bytes`.
    #[error("request longer than {max} bytes")]
    TooLarge {
        /// `client_request_bytes`.
        max: usize,
    },
    /// The client's or all clients' budget of request bytes is spent: the client should
    /// retry later.
    #[error("request budget spent")]
    Busy,
    /// The request was not received whole within `client_request_timeout`.
    #[error("request not received within {0:?}")]
    TimedOut(std::time::Duration),
    /// The client reset the stream or it failed.
    #[error("reading the request: {0}")]
    Read(String),
}

/// A request read whole; its bytes count against the budgets until this is dropped.
#[derive(Debug)]
pub struct ClientRequest {
    /// The request's bytes, as the client sent them.
    pub body: Bytes,
    /// Where the answer goes.
    pub reply: SendStream,
    _client: OwnedSemaphorePermit,
    _all: OwnedSemaphorePermit,
}

/// A request stream accepted and not yet read; read it with [`IncomingRequest::read`] (on a
/// task of its own, so one slow request does not hold up the client's next).
#[derive(Debug)]
pub struct IncomingRequest {
    send: SendStream,
    recv: RecvStream,
    budget: RequestBudget,
}

impl ClientConnection {
    pub(super) fn new(name: String, connection: quinn::Connection, shared: &Arc<Shared>) -> Self {
        let cfg = &shared.config;
        let client = shared.client_budget(&name);
        Self {
            name,
            connection,
            budget: RequestBudget {
                client,
                all: shared.client_bytes.clone(),
                max_request: cfg.client_request_bytes,
                timeout: cfg.client_request_timeout,
                shared: shared.clone(),
            },
        }
    }

    /// The client's next request stream (bidirectional: the request, then the answer).
    ///
    /// # Errors
    /// [`ClientRequestError::Closed`] once the connection ended.
    pub async fn accept_request(&self) -> Result<IncomingRequest, ClientRequestError> {
        let (send, recv) = self.connection.accept_bi().await?;
        Ok(IncomingRequest {
            send,
            recv,
            budget: self.budget.clone(),
        })
    }
}

impl IncomingRequest {
    /// Reads the request to its end within the budgets and the timeout.
    ///
    /// # Errors
    /// A [`ClientRequestError`]; the stream is then reset and the refusal counted.
    pub async fn read(mut self) -> Result<ClientRequest, ClientRequestError> {
        let b = self.budget.clone();
        let result = tokio::time::timeout(b.timeout, read_within(&mut self.recv, &b)).await;
        let outcome = match result {
            Ok(Ok((body, client, all))) => {
                return Ok(ClientRequest {
                    body,
                    reply: self.send,
                    _client: client,
                    _all: all,
                });
            }
            Ok(Err(e)) => e,
            Err(_) => ClientRequestError::TimedOut(b.timeout),
        };
        Counters::add(&b.shared.counters.client_requests_refused, 1);
        let _ = self.recv.stop(VarInt::from_u32(codes::CLIENTS_BUSY));
        let _ = self.send.reset(VarInt::from_u32(codes::CLIENTS_BUSY));
        Err(outcome)
    }
}

/// Reads chunks, taking budget for each before keeping it.
async fn read_within(
    recv: &mut RecvStream,
    b: &RequestBudget,
) -> Result<(Bytes, OwnedSemaphorePermit, OwnedSemaphorePermit), ClientRequestError> {
    let take = |sem: &Arc<Semaphore>, n: usize| {
        u32::try_from(n)
            .ok()
            .and_then(|n| sem.clone().try_acquire_many_owned(n).ok())
            .ok_or(ClientRequestError::Busy)
    };
    let mut client = take(&b.client, 0)?;
    let mut all = take(&b.all, 0)?;
    let mut body = BytesMut::new();
    loop {
        match recv.read_chunk(b.max_request, true).await {
            Ok(Some(chunk)) => {
                let len = chunk.bytes.len();
                if body.len() + len > b.max_request {
                    return Err(ClientRequestError::TooLarge { max: b.max_request });
                }
                client.merge(take(&b.client, len)?);
                all.merge(take(&b.all, len)?);
                body.extend_from_slice(&chunk.bytes);
            }
            Ok(None) => return Ok((body.freeze(), client, all)),
            Err(quinn::ReadError::ConnectionLost(e)) => return Err(e.into()),
            Err(e) => return Err(ClientRequestError::Read(e.to_string())),
        }
    }
}
