//! The raw baselines that bound a cluster, measured in the same run on the same machine:
//! durable appends to one fjall database, and messages on one raw quinn stream.

use std::time::{Duration, Instant};

use fjall::{Database, KeyspaceCreateOptions, PersistMode};
use routing::NodeId;
use storage::Persist;
use transport::TransportConfig;
use transport::wire::{FrameDecoder, LENGTH_PREFIX};

use super::BenchError;

fn fjall_mode(persist: Persist) -> PersistMode {
    match persist {
        Persist::SyncData => PersistMode::SyncData,
        Persist::SyncAll => PersistMode::SyncAll,
        Persist::Buffer => PersistMode::Buffer,
    }
}

/// Raw fjall: entries/s appended to one keyspace of a fresh database in a temporary directory,
/// `batch_entries` entries of `value_bytes` bytes per write batch, each batch committed with
/// `persist` (for [`Persist::SyncData`], `PersistMode::SyncData`: one fdatasync per batch).
/// Keys are (group, index) big-endian like the log store's, one group. Runs for `duration`.
///
/// # Errors
/// [`BenchError::Io`] for the directory, [`BenchError::Fjall`] for the database.
pub fn fjall_append_per_sec(
    batch_entries: usize,
    value_bytes: usize,
    persist: Persist,
    duration: Duration,
) -> Result<f64, BenchError> {
    let dir = tempfile::tempdir()?;
    // As the log store opens it: the journal is persisted only when a batch asks.
    let db = Database::builder(dir.path())
        .manual_journal_persist(true)
        .open()?;
    let log = db.keyspace("log", KeyspaceCreateOptions::default)?;
    let value = vec![0xA5u8; value_bytes];
    let batch_entries = batch_entries.max(1);
    let mode = fjall_mode(persist);
    let mut index = 0u64;
    let start = Instant::now();
    while start.elapsed() < duration {
        let mut batch = db.batch().durability(Some(mode));
        for _ in 0..batch_entries {
            index += 1;
            let mut key = [0u8; 16];
            key[..8].copy_from_slice(&1u64.to_be_bytes());
            key[8..].copy_from_slice(&index.to_be_bytes());
            batch.insert(&log, key, value.as_slice());
        }
        batch.commit()?;
    }
    Ok(index as f64 / start.elapsed().as_secs_f64().max(1e-9))
}

fn quinn_err<E: std::fmt::Display>(what: &'static str) -> impl Fn(E) -> BenchError {
    move |e| BenchError::Quinn(format!("{what}: {e}"))
}

/// Raw quinn: messages/s of `message_bytes`-byte messages, each behind a 4-byte big-endian
/// length prefix (our frame format), written one by one on one unidirectional stream between
/// two endpoints on loopback. The TLS and transport configs are the ones our nodes use
/// (node certificates from one fresh CA, mutual TLS, ALPN `pontoon/1`, default
/// [`TransportConfig`]). The receiver splits the frames; the clock stops when it has read
/// them all. The sender writes for `duration`.
///
/// # Errors
/// [`BenchError::Certs`], [`BenchError::Transport`] for the configs, [`BenchError::Quinn`]
/// for the connection or stream.
pub async fn quinn_stream_msgs_per_sec(
    message_bytes: usize,
    duration: Duration,
) -> Result<f64, BenchError> {
    let ca = certs::ClusterCa::generate("pontoon bench baseline")?;
    let config = TransportConfig::default();
    let (server_a, client_a) =
        transport::quinn_configs(&ca.issue_node(NodeId(1), &[])?, &config, certs::ALPN)?;
    let (server_b, _) =
        transport::quinn_configs(&ca.issue_node(NodeId(2), &[])?, &config, certs::ALPN)?;
    let any = std::net::SocketAddr::from((std::net::Ipv4Addr::LOCALHOST, 0));
    let mut a = quinn::Endpoint::server(server_a, any).map_err(quinn_err("endpoint"))?;
    a.set_default_client_config(client_a);
    let b = quinn::Endpoint::server(server_b, any).map_err(quinn_err("endpoint"))?;
    let target = b.local_addr().map_err(quinn_err("endpoint address"))?;

    // quinn handshakes an incoming connection only once it is accepted: do both at once.
    let dial = async {
        a.connect(target, &certs::node_server_name(NodeId(2)))
            .map_err(quinn_err("connect"))?
            .await
            .map_err(quinn_err("handshake"))
    };
    let accept = async {
        b.accept()
            .await
            .ok_or_else(|| BenchError::Quinn("endpoint closed before accepting".into()))?
            .await
            .map_err(quinn_err("accept"))
    };
    let (conn, accepted) = tokio::try_join!(dial, accept)?;

    let max_frame = config.max_frame_bytes;
    let receiver = tokio::spawn(async move {
        let mut recv = accepted
            .accept_uni()
            .await
            .map_err(quinn_err("accept stream"))?;
        let mut decoder = FrameDecoder::new(max_frame);
        let mut frames = 0u64;
        while let Some(chunk) = recv
            .read_chunk(64 * 1024, true)
            .await
            .map_err(quinn_err("read"))?
        {
            decoder.extend(&chunk.bytes);
            while decoder.next_frame().map_err(quinn_err("frame"))?.is_some() {
                frames += 1;
            }
        }
        Ok::<_, BenchError>((frames, Instant::now()))
    });

    let len = u32::try_from(message_bytes)
        .map_err(|_| BenchError::Quinn(format!("{message_bytes}-byte message too large")))?;
    let mut frame = Vec::with_capacity(LENGTH_PREFIX + message_bytes);
    frame.extend_from_slice(&len.to_be_bytes());
    frame.resize(LENGTH_PREFIX + message_bytes, 0xA5);

    let mut stream = conn.open_uni().await.map_err(quinn_err("open stream"))?;
    let start = Instant::now();
    let mut sent = 0u64;
    while start.elapsed() < duration {
        for _ in 0..64 {
            stream.write_all(&frame).await.map_err(quinn_err("write"))?;
        }
        sent += 64;
    }
    stream.finish().map_err(quinn_err("finish"))?;
    let (received, end) = receiver
        .await
        .map_err(|e| BenchError::Quinn(format!("receiver task: {e}")))??;
    conn.close(0u32.into(), b"done");
    a.wait_idle().await;
    if received != sent {
        return Err(BenchError::Quinn(format!(
            "sent {sent} messages but the receiver read {received}"
        )));
    }
    Ok(received as f64 / end.duration_since(start).as_secs_f64().max(1e-9))
}
