//! The receiving side of a connection: one task per incoming stream, so a stream stuck
//! mid-frame or out of credit holds up nobody else.

use std::sync::Arc;

use bytes::Bytes;

use quinn::{Connection, RecvStream, SendStream, VarInt};
use routing::NodeId;
use tokio::sync::mpsc;
use tracing::{Instrument, debug, info_span, warn};

use super::Shared;
use super::peer::{PeerEvent, snapshot_ack};
use crate::Inbound;
use crate::codec::{Refusal, StreamReader};
use crate::stats::Counters;
use crate::wire::StreamKind;

/// Received chunks taken from a stream at once (one lock of the connection each time).
const READ_CHUNKS: usize = 16;

/// Accepts the peer's streams until the connection ends, then tells the peer task.
pub(crate) async fn drive(
    shared: Arc<Shared>,
    peer: NodeId,
    conn: Connection,
    events: mpsc::UnboundedSender<PeerEvent>,
) {
    let sid = conn.stable_id();
    let reason = loop {
        tokio::select! {
            uni = conn.accept_uni() => match uni {
                Ok(recv) => {
                    let span = info_span!("stream", id = %recv.id(), group = tracing::field::Empty);
                    tokio::spawn(read_stream(shared.clone(), peer, recv, None, events.clone(), sid).instrument(span));
                }
                Err(e) => break e,
            },
            bi = conn.accept_bi() => match bi {
                Ok((send, recv)) => {
                    let span = info_span!("snapshot_stream", id = %recv.id(), group = tracing::field::Empty);
                    tokio::spawn(read_stream(shared.clone(), peer, recv, Some(send), events.clone(), sid).instrument(span));
                }
                Err(e) => break e,
            },
        }
    };
    debug!(%reason, "connection ended");
    let _ = events.send(PeerEvent::Closed(sid));
}

/// Moves the `receive_buffered_bytes` gauge from what a stream held to what it holds now.
fn track_held(c: &Counters, held: &mut usize, now: usize) {
    if now > *held {
        Counters::add(&c.receive_buffered_bytes, (now - *held) as u64);
    } else if now < *held {
        Counters::sub(&c.receive_buffered_bytes, (*held - now) as u64);
    }
    *held = now;
}

/// Reads one stream to its end. Anything wrong resets this stream only.
async fn read_stream(
    shared: Arc<Shared>,
    peer: NodeId,
    mut recv: RecvStream,
    mut answer: Option<SendStream>,
    events: mpsc::UnboundedSender<PeerEvent>,
    conn_id: usize,
) {
    let c = &shared.counters;
    let cfg = &shared.config;
    let mut reader = StreamReader::new(
        peer,
        cfg.max_frame_bytes,
        cfg.max_snapshot_bytes,
        shared.known_groups.clone(),
    );
    // What this stream's decoder holds, as last added to `receive_buffered_bytes`.
    let mut held = 0usize;
    let outcome: Result<(), Refusal> = async {
        let mut chunks: [Bytes; READ_CHUNKS] = Default::default();
        loop {
            match recv.read_chunks(&mut chunks).await {
                Ok(Some(n)) => {
                    let reads = chunks[..n].iter_mut().map(std::mem::take);
                    let envelopes = reader.feed_all(reads, c);
                    track_held(c, &mut held, reader.held_bytes());
                    for envelope in envelopes? {
                        shared
                            .deliver(Inbound::Message {
                                from: peer,
                                envelope,
                            })
                            .await;
                    }
                    if let Some((kind, group)) = reader.kind() {
                        // Only the snapshot kind travels on a bidirectional stream, and the
                        // snapshot kind only there.
                        if (kind == StreamKind::Snapshot) != answer.is_some() {
                            return Err(Refusal::UnknownKind(crate::WireError::UnknownStreamKind(
                                kind as i32,
                            )));
                        }
                        tracing::Span::current().record(
                            "group",
                            tracing::field::display(group.map_or(0, |g| g.get())),
                        );
                    }
                }
                Ok(None) => {
                    if let Some((StreamKind::Control, _)) = reader.kind() {
                        let _ = events.send(PeerEvent::Confirmed(conn_id));
                    }
                    if let Some(envelope) = reader.finish(c)? {
                        shared
                            .deliver(Inbound::Message {
                                from: peer,
                                envelope,
                            })
                            .await;
                        if let Some(send) = answer.as_mut() {
                            let _ = send.write_all(&snapshot_ack(true)).await;
                            let _ = send.finish();
                        }
                    }
                    return Ok(());
                }
                // Reset by the sender or the connection ended: nothing to answer.
                Err(e) => {
                    debug!(error = %e, "stream ended early");
                    return Ok(());
                }
            }
        }
    }
    .await;
    track_held(c, &mut held, 0);
    if let Err(refusal) = outcome {
        refusal.count(c);
        let kind = reader.kind();
        warn!(%peer, ?kind, reason = %refusal, code = refusal.code(), "resetting stream");
        let _ = recv.stop(VarInt::from_u32(refusal.code()));
        if let Some(send) = answer.as_mut() {
            let _ = send.write_all(&snapshot_ack(false)).await;
            let _ = send.finish();
        }
    }
}
