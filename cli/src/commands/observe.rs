//! What `pontoon node` serves to operators over plain HTTP on `metrics_listen`: the libraries'
//! metrics as Prometheus text (`/metrics`), and the node's health (`/health`, alias `/ready`;
//! `/live`).
//!
//! The libraries only emit through the `metrics` facade; the binary installs the Prometheus
//! recorder here. The HTTP side is a few lines on a tokio listener rather than a web framework:
//! four GET routes, one short response each, the connection closed after it. Requests are
//! bounded (size, time, concurrency), since anyone on the listening address can send them.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use pontoon::Node;
use pontoon::coordinator::NodeStatus;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};

use super::CliError;

/// Latency buckets in seconds: 100 µs to 10 s, about three per decade.
const SECONDS_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];
/// Groups per persisted batch.
const GROUPS_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 1024.0];
/// Bytes per persisted batch.
const BYTES_BUCKETS: &[f64] = &[
    256.0,
    1024.0,
    4096.0,
    16384.0,
    65536.0,
    262_144.0,
    1_048_576.0,
    4_194_304.0,
];
/// Longest request head read; a GET line and a few headers fit easily.
const MAX_REQUEST_BYTES: usize = 8192;
/// Time a client has to send its request head.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Requests served at once; more wait for a slot.
const MAX_CONCURRENT: usize = 16;
/// How long the coordinator may take to answer a status request before health fails.
const STATUS_TIMEOUT: Duration = Duration::from_secs(2);
/// A follower this many entries behind its group's commit index is still catching up.
const CATCH_UP_LAG: u64 = 1000;

/// Installs the process's Prometheus recorder (histograms as real buckets) and registers the
/// description of every Pontoon series. Call it once, before the node starts.
pub(crate) fn install_recorder() -> Result<PrometheusHandle, CliError> {
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS_BUCKETS)?
        .set_buckets_for_metric(
            Matcher::Full(pontoon::storage::metrics::PERSIST_GROUPS.into()),
            GROUPS_BUCKETS,
        )?
        .set_buckets_for_metric(
            Matcher::Full(pontoon::storage::metrics::PERSIST_BYTES.into()),
            BYTES_BUCKETS,
        )?
        .install_recorder()?;
    pontoon::coordinator::metrics::describe();
    Ok(handle)
}

/// The node once it has started; `None` while it opens its store and starts.
pub(crate) type Started = watch::Receiver<Option<Node>>;

/// Serves `/metrics`, `/health` (`/ready`) and `/live` on `listener` until the process ends.
pub(crate) async fn serve(listener: TcpListener, handle: PrometheusHandle, node: Started) {
    let slots = Arc::new(Semaphore::new(MAX_CONCURRENT));
    let upkeep = handle.clone();
    // Histograms are drained into their buckets on upkeep; between scrapes too, so their
    // memory stays bounded however rarely Prometheus comes.
    tokio::spawn(async move {
        let mut every = tokio::time::interval(Duration::from_secs(5));
        loop {
            every.tick().await;
            upkeep.run_upkeep();
        }
    });
    loop {
        let (stream, remote) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                tracing::warn!(%error, "metrics listener: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let (handle, node) = (handle.clone(), node.borrow().clone());
        tokio::spawn(async move {
            if let Err(error) = answer(stream, &handle, node.as_ref()).await {
                tracing::debug!(%remote, %error, "metrics listener: request failed");
            }
            drop(slot);
        });
    }
}

/// Binds the metrics listener.
pub(crate) async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

async fn answer(
    mut stream: TcpStream,
    handle: &PrometheusHandle,
    node: Option<&Node>,
) -> std::io::Result<()> {
    let head = match tokio::time::timeout(REQUEST_TIMEOUT, read_head(&mut stream)).await {
        Ok(head) => head?,
        Err(_) => return Ok(()),
    };
    let (status, content_type, body) = match request_path(&head) {
        Some("/metrics") => {
            handle.run_upkeep();
            (
                "200 OK",
                "text/plain; version=0.0.4; charset=utf-8",
                handle.render(),
            )
        }
        Some("/health" | "/ready") => {
            let (ready, why) = readiness(node).await;
            let status = if ready {
                "200 OK"
            } else {
                "503 Service Unavailable"
            };
            (status, "text/plain; charset=utf-8", format!("{why}\n"))
        }
        Some("/live") => match node.and_then(Node::stop_reason) {
            None => ("200 OK", "text/plain; charset=utf-8", "live\n".into()),
            Some(reason) => (
                "503 Service Unavailable",
                "text/plain; charset=utf-8",
                format!("stopped: {reason:?}\n"),
            ),
        },
        Some(_) => (
            "404 Not Found",
            "text/plain; charset=utf-8",
            "try /metrics, /health, /ready or /live\n".into(),
        ),
        None => (
            "400 Bad Request",
            "text/plain; charset=utf-8",
            "expected GET\n".into(),
        ),
    };
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}

/// Reads until the end of the request head, at most [`MAX_REQUEST_BYTES`].
async fn read_head(stream: &mut TcpStream) -> std::io::Result<Vec<u8>> {
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    while head.len() < MAX_REQUEST_BYTES && !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(buf.get(..n).unwrap_or_default());
    }
    Ok(head)
}

/// The path of a `GET` request, without its query.
fn request_path(head: &[u8]) -> Option<&str> {
    let line = head.split(|b| *b == b'\n').next()?;
    let line = std::str::from_utf8(line).ok()?.trim_end();
    let mut parts = line.split(' ');
    if parts.next()? != "GET" {
        return None;
    }
    let target = parts.next()?;
    Some(target.split('?').next().unwrap_or(target))
}

/// Whether the node can serve, and why not: starting (not started, or no group yet), stopped,
/// not answering, or catching up (a group without a leader, or applying far behind its commit
/// index).
async fn readiness(node: Option<&Node>) -> (bool, String) {
    let Some(node) = node else {
        return (
            false,
            "starting: opening the log store and starting the node".into(),
        );
    };
    if let Some(reason) = node.stop_reason() {
        return (false, format!("stopped: {reason:?}"));
    }
    match tokio::time::timeout(STATUS_TIMEOUT, node.status()).await {
        Err(_) => (
            false,
            "not ready: the coordinator did not answer in time".into(),
        ),
        Ok(Err(error)) => (false, format!("not ready: {error}")),
        Ok(Ok(status)) => verdict(&status),
    }
}

/// [`readiness`] from a status the coordinator answered with.
fn verdict(status: &NodeStatus) -> (bool, String) {
    if status.groups.is_empty() {
        return (false, "starting: this node holds no group yet".into());
    }
    let leaderless = status.groups.iter().filter(|g| g.leader.is_none()).count();
    if leaderless > 0 {
        return (
            false,
            format!("catching up: {leaderless} groups without a known leader"),
        );
    }
    let behind = status
        .groups
        .iter()
        .filter(|g| g.commit.saturating_sub(g.applied) > CATCH_UP_LAG)
        .count();
    if behind > 0 {
        return (
            false,
            format!(
                "catching up: {behind} groups applying more than {CATCH_UP_LAG} entries behind"
            ),
        );
    }
    (
        true,
        format!(
            "ready: {} groups, {} led here, routing table version {}",
            status.groups.len(),
            status.leading(),
            status.routing_version
        ),
    )
}

#[cfg(test)]
mod tests {
    use pontoon::coordinator::{GroupStatus, Role};
    use pontoon::{GroupId, NodeId};

    use super::*;

    fn group(id: u64, leader: Option<u64>, commit: u64, applied: u64) -> GroupStatus {
        GroupStatus {
            group: GroupId(id),
            role: Role::Follower,
            term: 2,
            leader: leader.map(NodeId),
            commit,
            applied,
            first_index: 1,
            last_index: commit,
            voters: vec![NodeId(1), NodeId(2), NodeId(3)],
            learners: Vec::new(),
            joint: false,
            quiet: false,
            set_aside: false,
        }
    }

    fn status(groups: Vec<GroupStatus>) -> NodeStatus {
        NodeStatus {
            node: NodeId(1),
            groups,
            coordinator: Default::default(),
            storage: Default::default(),
            transport: Default::default(),
            proposals_acknowledged: 0,
            routing_version: 1,
            peers_down: Vec::new(),
            latency: Default::default(),
        }
    }

    #[tokio::test]
    async fn health_says_starting_until_the_node_is_up() {
        let (ready, why) = readiness(None).await;
        assert!(!ready && why.starts_with("starting"), "{why}");
    }

    #[test]
    fn a_node_is_ready_only_with_groups_all_led_and_applied_close_to_their_commit() {
        let (ready, why) = verdict(&status(Vec::new()));
        assert!(!ready && why.starts_with("starting"), "{why}");
        let (ready, why) = verdict(&status(vec![
            group(1, Some(2), 10, 10),
            group(2, None, 5, 5),
        ]));
        assert!(
            !ready && why.contains("1 groups without a known leader"),
            "{why}"
        );
        let far = group(2, Some(3), 5000, 10);
        let (ready, why) = verdict(&status(vec![group(1, Some(2), 10, 10), far]));
        assert!(!ready && why.starts_with("catching up"), "{why}");
        let near = group(2, Some(3), 5000, 4500);
        let (ready, why) = verdict(&status(vec![group(1, Some(2), 10, 10), near]));
        assert!(ready && why.starts_with("ready: 2 groups"), "{why}");
    }

    #[test]
    fn request_path_takes_the_get_target_without_its_query() {
        assert_eq!(
            request_path(b"GET /metrics?x=1 HTTP/1.1\r\nHost: a\r\n\r\n"),
            Some("/metrics")
        );
        assert_eq!(
            request_path(b"GET /health HTTP/1.0\r\n\r\n"),
            Some("/health")
        );
        assert_eq!(request_path(b"POST /metrics HTTP/1.1\r\n\r\n"), None);
        assert_eq!(request_path(b"\xff\xfe"), None);
    }
}
