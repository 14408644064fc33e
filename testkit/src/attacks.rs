//! The attacks, each a loop that runs until its deadline against one node.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::ops::RangeInclusive;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use certs::{ClusterCa, NodeIdentity};
use quinn::crypto::rustls::QuicClientConfig;
use routing::NodeId;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::Instant;
use transport::wire::StreamKind;
use transport::{TransportConfig, codes};

use crate::frames;

/// What went wrong setting an attack up (never what the target did: that is the report).
#[derive(Debug, thiserror::Error)]
pub enum AttackError {
    /// The CA could not mint the attacker's certificate.
    #[error("could not mint the attacker's certificate: {0}")]
    Certificate(#[from] certs::CertError),
    /// The attacker's own QUIC endpoint or TLS config could not be built.
    #[error("could not build the attacker's endpoint: {0}")]
    Endpoint(String),
}

/// The target of the attacks and the identities an attacker holds against it.
#[derive(Clone)]
pub struct Arsenal {
    ca: Arc<ClusterCa>,
    target: SocketAddr,
    target_id: NodeId,
    member: NodeId,
    live_member: NodeId,
    groups: Vec<u64>,
}

impl Arsenal {
    /// Attacks on node `target_id` at `target`. `member` is a member of the target's groups
    /// with no live link to it (its stolen certificate is the strongest peer identity: it is
    /// admitted). `live_member` is a running member with a lower id than the target (its
    /// stolen certificate dials against the real link). `groups` are the target's groups.
    pub fn new(
        ca: ClusterCa,
        target: SocketAddr,
        target_id: NodeId,
        member: NodeId,
        live_member: NodeId,
        groups: RangeInclusive<u64>,
    ) -> Self {
        Self {
            ca: Arc::new(ca),
            target,
            target_id,
            member,
            live_member,
            groups: groups.collect(),
        }
    }

    /// A node id in no configuration (a stranger's certificate of the cluster CA).
    pub const STRANGER: NodeId = NodeId(9_999);

    fn node_endpoint(&self, id: NodeId) -> Result<quinn::Endpoint, AttackError> {
        let identity = self.ca.issue_node(id, &["127.0.0.1".to_string()])?;
        endpoint_for(&identity)
    }

    /// A raw connection to the target as node `id`.
    async fn dial_as(
        &self,
        endpoint: &quinn::Endpoint,
    ) -> Result<quinn::Connection, quinn::ConnectionError> {
        let name = certs::node_server_name(self.target_id);
        match endpoint.connect(self.target, &name) {
            Ok(connecting) => connecting.await,
            Err(_) => Err(quinn::ConnectionError::LocallyClosed),
        }
    }

    fn client_config(&self, name: &str) -> Result<quinn::ClientConfig, AttackError> {
        let client = self
            .ca
            .issue_client_with_role(name, certs::ClientRole::Kv)?;
        let tls = client
            .client_config(&[certs::CLIENT_ALPN])
            .map_err(|e| AttackError::Endpoint(e.to_string()))?;
        let quic =
            QuicClientConfig::try_from(tls).map_err(|e| AttackError::Endpoint(e.to_string()))?;
        Ok(quinn::ClientConfig::new(Arc::new(quic)))
    }
}

fn endpoint_for(identity: &NodeIdentity) -> Result<quinn::Endpoint, AttackError> {
    let (_, client) = transport::quinn_configs(identity, &TransportConfig::default(), certs::ALPN)
        .map_err(|e| AttackError::Endpoint(e.to_string()))?;
    let mut endpoint = client_endpoint()?;
    endpoint.set_default_client_config(client);
    Ok(endpoint)
}

fn client_endpoint() -> Result<quinn::Endpoint, AttackError> {
    let any: SocketAddr = ([127, 0, 0, 1], 0).into();
    quinn::Endpoint::client(any).map_err(|e| AttackError::Endpoint(e.to_string()))
}

/// What the target told the attacker: how much was sent, and the refusals by code.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct AttackReport {
    /// Streams, frames, connections or handshakes the attacker started.
    pub sent: u64,
    /// Stream reset and connection close codes the target answered with, and how often.
    pub refusals: BTreeMap<u32, u64>,
    /// Connections the attacker completed (for the attacks that dial).
    pub connected: u64,
    /// The snapshot size the stalled-snapshot attack ended up announcing (0 for the others).
    pub announced: u64,
}

impl AttackReport {
    /// How many refusals of any code the target answered with.
    pub fn refused(&self) -> u64 {
        self.refusals.values().sum()
    }

    fn refusal(&mut self, code: Option<u32>) {
        if let Some(code) = code {
            *self.refusals.entry(code).or_default() += 1;
        }
    }
}

impl fmt::Display for AttackReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} sent, {} connected", self.sent, self.connected)?;
        if self.announced > 0 {
            write!(f, ", announcing {} MiB", self.announced >> 20)?;
        }
        write!(f, ", refused")?;
        if self.refusals.is_empty() {
            return write!(f, " never");
        }
        for (code, n) in &self.refusals {
            write!(f, " {n}×0x{code:x}")?;
        }
        Ok(())
    }
}

/// One attack class of the #17 issue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attack {
    /// As an admitted member: every forged raft message type and out-of-range index, and
    /// heartbeats whose commit is past any log, for every group, again and again.
    ForgedMessages,
    /// As an admitted member: 16 MiB frames of millions of empty entries, messages and
    /// heartbeats, one after another.
    AmplifyingFrames,
    /// As an admitted member: as many streams as the target allows, each a header and a few
    /// bytes of a frame announced at 512 KiB, never finished.
    PartialFrames,
    /// As an admitted member: snapshot transfers announced at the largest size the target
    /// takes (from 1 GiB, halved after each refusal as too large), sent at full speed to the
    /// last chunk and then stalled, four at a time.
    StalledSnapshots,
    /// With a live member's certificate: dial the target again and again, against the real
    /// link.
    DialStorm,
    /// With a certificate for a node id in no configuration: dial and write, again and again.
    Stranger,
    /// With a kv client certificate: 1,000 idle client connections, redialled when closed.
    IdleClients,
    /// With a kv client certificate: 200 requests of 4 MiB announced, never finished, over 8
    /// connections, reopened when refused.
    UnfinishedRequests,
    /// With no certificate at all: 1,100 handshakes a second that never finish (through a
    /// relay that drops every answer, as from spoofed addresses).
    HalfOpenHandshakes,
}

impl Attack {
    /// Every attack class.
    pub const ALL: [Attack; 9] = [
        Attack::ForgedMessages,
        Attack::AmplifyingFrames,
        Attack::PartialFrames,
        Attack::StalledSnapshots,
        Attack::DialStorm,
        Attack::Stranger,
        Attack::IdleClients,
        Attack::UnfinishedRequests,
        Attack::HalfOpenHandshakes,
    ];

    /// A short name, for reports.
    pub fn name(self) -> &'static str {
        match self {
            Attack::ForgedMessages => "forged raft messages",
            Attack::AmplifyingFrames => "amplifying frames",
            Attack::PartialFrames => "unfinished peer streams",
            Attack::StalledSnapshots => "stalled snapshots",
            Attack::DialStorm => "dial storm with a live member's id",
            Attack::Stranger => "a stranger's node certificate",
            Attack::IdleClients => "idle client connections",
            Attack::UnfinishedRequests => "unfinished client requests",
            Attack::HalfOpenHandshakes => "half-open handshakes",
        }
    }

    /// Runs the attack against `arsenal`'s target until `until`, and reports what the target
    /// answered. Everything the attacker opened is closed before it returns.
    pub async fn run(self, arsenal: &Arsenal, until: Instant) -> Result<AttackReport, AttackError> {
        match self {
            Attack::ForgedMessages => forged_messages(arsenal, until).await,
            Attack::AmplifyingFrames => amplifying_frames(arsenal, until).await,
            Attack::PartialFrames => partial_frames(arsenal, until).await,
            Attack::StalledSnapshots => stalled_snapshots(arsenal, until).await,
            Attack::DialStorm => dial_storm(arsenal, until).await,
            Attack::Stranger => stranger(arsenal, until).await,
            Attack::IdleClients => idle_clients(arsenal, until).await,
            Attack::UnfinishedRequests => unfinished_requests(arsenal, until).await,
            Attack::HalfOpenHandshakes => half_open(arsenal, until).await,
        }
    }
}

/// How long the attacker waits for one answer before it moves on.
const ANSWER_WAIT: Duration = Duration::from_secs(10);

fn close_code(error: &quinn::ConnectionError) -> Option<u32> {
    match error {
        quinn::ConnectionError::ApplicationClosed(close) => {
            u32::try_from(close.error_code.into_inner()).ok()
        }
        _ => None,
    }
}

/// The code a stream was reset (stopped) with by the target, once it is, or `None` at the
/// deadline or when the connection ends first.
async fn stopped_code(stream: &quinn::SendStream, wait: Duration) -> Option<u32> {
    match tokio::time::timeout(wait, stream.stopped()).await {
        Ok(Ok(Some(code))) => u32::try_from(code.into_inner()).ok(),
        _ => None,
    }
}

/// A connection to the target as the admitted member, redialled after a pause when closed.
async fn member_connection(
    arsenal: &Arsenal,
    endpoint: &quinn::Endpoint,
    report: &mut AttackReport,
    until: Instant,
) -> Option<quinn::Connection> {
    while Instant::now() < until {
        match arsenal.dial_as(endpoint).await {
            Ok(conn) => {
                report.connected += 1;
                return Some(conn);
            }
            Err(e) => {
                report.refusal(close_code(&e));
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    None
}

async fn forged_messages(arsenal: &Arsenal, until: Instant) -> Result<AttackReport, AttackError> {
    let endpoint = arsenal.node_endpoint(arsenal.member)?;
    let mut report = AttackReport::default();
    let (from, to) = (arsenal.member.get(), arsenal.target_id.get());
    let mut term = 1_000;
    while let Some(conn) = member_connection(arsenal, &endpoint, &mut report, until).await {
        while Instant::now() < until && conn.close_reason().is_none() {
            // Rising terms, so raft would act on them if admission let them through.
            term += 1;
            for &group in &arsenal.groups {
                let Ok(mut stream) = conn.open_uni().await else {
                    break;
                };
                let _ = stream
                    .write_chunk(frames::header(StreamKind::Raft, group))
                    .await;
                for frame in frames::forged_raft_frames(from, to, term) {
                    let _ = stream.write_chunk(frame).await;
                    report.sent += 1;
                }
                let _ = stream.finish();
            }
            if let Ok(mut stream) = conn.open_uni().await {
                let _ = stream
                    .write_chunk(frames::header(StreamKind::Heartbeats, 0))
                    .await;
                // At a stale term: a member claiming leadership at a newer term is lying within
                // the protocol, which a crash-fault tolerant protocol does not defend against.
                let _ = stream
                    .write_chunk(frames::forged_heartbeats(from, &arsenal.groups, 1))
                    .await;
                let _ = stream.finish();
                report.sent += 1;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        if let Some(e) = conn.close_reason() {
            report.refusal(close_code(&e));
        }
        conn.close(0u32.into(), b"done");
    }
    endpoint.close(0u32.into(), b"done");
    Ok(report)
}

async fn amplifying_frames(arsenal: &Arsenal, until: Instant) -> Result<AttackReport, AttackError> {
    let endpoint = arsenal.node_endpoint(arsenal.member)?;
    let mut report = AttackReport::default();
    let from = arsenal.member.get();
    let max = TransportConfig::default().max_frame_bytes;
    // 8 M empty entries in one message; 8 M empty messages; 8 M empty heartbeats.
    let attacks = [
        (
            StreamKind::Raft,
            frames::amplifying_frame(from, 2, Some(7), max),
        ),
        (
            StreamKind::Raft,
            frames::amplifying_frame(from, 2, None, max),
        ),
        (
            StreamKind::Heartbeats,
            frames::amplifying_frame(from, 3, None, max),
        ),
    ];
    let group = arsenal.groups.first().copied().unwrap_or(1);
    while let Some(conn) = member_connection(arsenal, &endpoint, &mut report, until).await {
        'connection: while Instant::now() < until {
            for (kind, frame) in &attacks {
                let Ok(mut stream) = conn.open_uni().await else {
                    break 'connection;
                };
                // Zero-copy: the attacker's own buffers are shared, not copied per stream.
                let _ = stream.write_chunk(frames::header(*kind, group)).await;
                let _ = stream.write_chunk(frame.clone()).await;
                report.sent += 1;
                report.refusal(stopped_code(&stream, ANSWER_WAIT).await);
            }
        }
        if let Some(e) = conn.close_reason() {
            report.refusal(close_code(&e));
        }
        conn.close(0u32.into(), b"done");
    }
    endpoint.close(0u32.into(), b"done");
    Ok(report)
}

/// Collects the reset codes of streams handed to it, each awaited on its own task.
struct Resets {
    tasks: JoinSet<Option<u32>>,
}

impl Resets {
    fn new() -> Self {
        Self {
            tasks: JoinSet::new(),
        }
    }

    fn watch(&mut self, stream: quinn::SendStream) {
        self.tasks.spawn(async move {
            match stream.stopped().await {
                Ok(Some(code)) => u32::try_from(code.into_inner()).ok(),
                _ => None,
            }
        });
    }

    fn drain_finished(&mut self, report: &mut AttackReport) {
        while let Some(done) = self.tasks.try_join_next() {
            report.refusal(done.ok().flatten());
        }
    }

    /// Stops waiting for the rest (their connection is being closed).
    fn abandon(mut self, report: &mut AttackReport) {
        self.drain_finished(report);
        self.tasks.abort_all();
    }
}

async fn partial_frames(arsenal: &Arsenal, until: Instant) -> Result<AttackReport, AttackError> {
    let endpoint = arsenal.node_endpoint(arsenal.member)?;
    let mut report = AttackReport::default();
    // A length prefix announcing 512 KiB and the first 2 KiB of it.
    let partial = Bytes::from([(512u32 << 10).to_be_bytes().as_slice(), &[0; 2048]].concat());
    while let Some(conn) = member_connection(arsenal, &endpoint, &mut report, until).await {
        let mut resets = Resets::new();
        let mut i = 0u64;
        while Instant::now() < until && conn.close_reason().is_none() {
            // At the stream limit, open waits until the target resets some.
            let Ok(Ok(mut stream)) =
                tokio::time::timeout(Duration::from_millis(200), conn.open_uni()).await
            else {
                resets.drain_finished(&mut report);
                continue;
            };
            let group = arsenal.groups[(i as usize) % arsenal.groups.len().max(1)];
            i += 1;
            let _ = stream
                .write_chunk(frames::header(StreamKind::Raft, group))
                .await;
            let _ = stream.write_chunk(partial.clone()).await;
            report.sent += 1;
            resets.watch(stream);
            if i.is_multiple_of(256) {
                resets.drain_finished(&mut report);
            }
        }
        resets.abandon(&mut report);
        if let Some(e) = conn.close_reason() {
            report.refusal(close_code(&e));
        }
        conn.close(0u32.into(), b"done");
    }
    endpoint.close(0u32.into(), b"done");
    Ok(report)
}

async fn stalled_snapshots(arsenal: &Arsenal, until: Instant) -> Result<AttackReport, AttackError> {
    const AT_ONCE: usize = 4;
    const CHUNK: usize = 1 << 20;
    let endpoint = arsenal.node_endpoint(arsenal.member)?;
    let mut report = AttackReport::default();
    let (from, to) = (arsenal.member.get(), arsenal.target_id.get());
    let chunk = frames::snapshot_chunk(CHUNK);
    // The attacker adapts: it announces 1 GiB, and half as much after each transfer refused
    // as too large, so it ends up announcing the largest size the target takes.
    let announce = Arc::new(AtomicU64::new(1 << 30));
    while let Some(conn) = member_connection(arsenal, &endpoint, &mut report, until).await {
        let mut transfers = JoinSet::new();
        let mut i = 0usize;
        while Instant::now() < until && conn.close_reason().is_none() {
            while transfers.len() < AT_ONCE {
                let group = arsenal.groups[i % arsenal.groups.len().max(1)];
                i += 1;
                let (conn, chunk, announce) = (conn.clone(), chunk.clone(), announce.clone());
                report.sent += 1;
                transfers.spawn(async move {
                    let Ok((mut send, _answer)) = conn.open_bi().await else {
                        return None;
                    };
                    let total = announce.load(Ordering::Relaxed);
                    let opening = frames::stalled_snapshot_opening(from, to, group, total);
                    let code = if send.write_chunk(opening).await.is_err() {
                        stopped_code(&send, Duration::ZERO).await
                    } else {
                        // Full speed up to the last chunk, then stall for as long as the
                        // target lets the transfer hold what it sent.
                        for _ in 1..total / CHUNK as u64 {
                            if send.write_chunk(chunk.clone()).await.is_err() {
                                break;
                            }
                        }
                        stopped_code(&send, Duration::from_secs(3600)).await
                    };
                    if code == Some(codes::TOO_LARGE) {
                        let _ = announce.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |a| {
                            (a > CHUNK as u64 * 2).then_some(a / 2)
                        });
                    }
                    code
                });
            }
            if let Ok(Some(done)) = tokio::time::timeout_at(until, transfers.join_next()).await {
                report.refusal(done.ok().flatten());
            }
        }
        transfers.abort_all();
        if let Some(e) = conn.close_reason() {
            report.refusal(close_code(&e));
        }
        conn.close(0u32.into(), b"done");
    }
    report.announced = announce.load(Ordering::Relaxed);
    endpoint.close(0u32.into(), b"done");
    Ok(report)
}

async fn dial_storm(arsenal: &Arsenal, until: Instant) -> Result<AttackReport, AttackError> {
    dial_repeatedly(arsenal, arsenal.live_member, until).await
}

async fn stranger(arsenal: &Arsenal, until: Instant) -> Result<AttackReport, AttackError> {
    dial_repeatedly(arsenal, Arsenal::STRANGER, until).await
}

/// Dials the target as `id` as fast as it answers; on each connection, writes a forged frame
/// for every group until the target closes it.
async fn dial_repeatedly(
    arsenal: &Arsenal,
    id: NodeId,
    until: Instant,
) -> Result<AttackReport, AttackError> {
    let endpoint = arsenal.node_endpoint(id)?;
    let mut report = AttackReport::default();
    let (from, to) = (id.get(), arsenal.target_id.get());
    while Instant::now() < until {
        report.sent += 1;
        match arsenal.dial_as(&endpoint).await {
            Ok(conn) => {
                report.connected += 1;
                for &group in &arsenal.groups {
                    let Ok(mut stream) = conn.open_uni().await else {
                        break;
                    };
                    let _ = stream
                        .write_chunk(frames::header(StreamKind::Raft, group))
                        .await;
                    if let Some(frame) = frames::forged_raft_frames(from, to, 1).pop() {
                        let _ = stream.write_chunk(frame).await;
                    }
                }
                if let Ok(e) = tokio::time::timeout(Duration::from_millis(500), conn.closed()).await
                {
                    report.refusal(close_code(&e));
                }
                conn.close(0u32.into(), b"again");
            }
            Err(e) => report.refusal(close_code(&e)),
        }
    }
    endpoint.close(0u32.into(), b"done");
    Ok(report)
}

async fn idle_clients(arsenal: &Arsenal, until: Instant) -> Result<AttackReport, AttackError> {
    const HELD: usize = 1_000;
    let config = arsenal.client_config("idle-attacker")?;
    let endpoint = client_endpoint()?;
    let mut report = AttackReport::default();
    let mut held: Vec<quinn::Connection> = Vec::new();
    while Instant::now() < until {
        // Closed ones (refused beyond the cap, or timed out idle) are redialled.
        let mut still = Vec::with_capacity(held.len());
        for conn in held.drain(..) {
            match conn.close_reason() {
                Some(e) => report.refusal(close_code(&e)),
                None => still.push(conn),
            }
        }
        held = still;
        while held.len() < HELD && Instant::now() < until {
            report.sent += 1;
            let Ok(connecting) =
                endpoint.connect_with(config.clone(), arsenal.target, certs::CLUSTER_SERVER_NAME)
            else {
                break;
            };
            match tokio::time::timeout(ANSWER_WAIT, connecting).await {
                Ok(Ok(conn)) => {
                    report.connected += 1;
                    held.push(conn);
                }
                Ok(Err(e)) => report.refusal(close_code(&e)),
                Err(_) => {}
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for conn in held {
        conn.close(0u32.into(), b"done");
    }
    endpoint.close(0u32.into(), b"done");
    Ok(report)
}

async fn unfinished_requests(
    arsenal: &Arsenal,
    until: Instant,
) -> Result<AttackReport, AttackError> {
    const CONNECTIONS: usize = 8;
    const PER_CONNECTION: usize = 25;
    let config = arsenal.client_config("slow-attacker")?;
    let endpoint = client_endpoint()?;
    let mut report = AttackReport::default();
    // Each request announces 4 MiB (the request cap) and sends 1 MiB of it, then stalls.
    let request = Bytes::from(vec![1u8; 1 << 20]);
    let (done, mut finished) = mpsc::unbounded_channel::<Option<u32>>();
    let mut connections = Vec::new();
    while Instant::now() < until {
        connections.retain(|c: &quinn::Connection| c.close_reason().is_none());
        while connections.len() < CONNECTIONS && Instant::now() < until {
            let Ok(connecting) =
                endpoint.connect_with(config.clone(), arsenal.target, certs::CLUSTER_SERVER_NAME)
            else {
                break;
            };
            match tokio::time::timeout(ANSWER_WAIT, connecting).await {
                Ok(Ok(conn)) => {
                    report.connected += 1;
                    for _ in 0..PER_CONNECTION {
                        spawn_unfinished(&conn, request.clone(), done.clone(), until);
                        report.sent += 1;
                    }
                    connections.push(conn);
                }
                Ok(Err(e)) => report.refusal(close_code(&e)),
                Err(_) => {}
            }
        }
        // Each refused request is replaced by a new one on the same connection.
        while let Ok(code) = finished.try_recv() {
            report.refusal(code);
            if let Some(conn) = connections.iter().find(|c| c.close_reason().is_none()) {
                spawn_unfinished(conn, request.clone(), done.clone(), until);
                report.sent += 1;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for conn in connections {
        conn.close(0u32.into(), b"done");
    }
    endpoint.close(0u32.into(), b"done");
    Ok(report)
}

fn spawn_unfinished(
    conn: &quinn::Connection,
    body: Bytes,
    done: mpsc::UnboundedSender<Option<u32>>,
    until: Instant,
) {
    let conn = conn.clone();
    tokio::spawn(async move {
        let Ok((mut send, mut recv)) = conn.open_bi().await else {
            return;
        };
        let _ = send.write_chunk(body).await;
        // The target answers a refused request by resetting or stopping the stream.
        let left = until.saturating_duration_since(Instant::now());
        let code = tokio::select! {
            stopped = send.stopped() => stopped.ok().flatten().and_then(|c| u32::try_from(c.into_inner()).ok()),
            read = recv.read_to_end(1 << 16) => match read {
                Err(quinn::ReadToEndError::Read(quinn::ReadError::Reset(code))) => u32::try_from(code.into_inner()).ok(),
                _ => None,
            },
            () = tokio::time::sleep(left) => return,
        };
        let _ = done.send(code);
    });
}

async fn half_open(arsenal: &Arsenal, until: Instant) -> Result<AttackReport, AttackError> {
    const PER_SECOND: usize = 1_100;
    let relay = black_hole(arsenal.target, until).await?;
    let endpoint = client_endpoint()?;
    // A client config with the stranger's certificate: the handshake never gets that far.
    let identity = arsenal
        .ca
        .issue_node(Arsenal::STRANGER, &["127.0.0.1".to_string()])?;
    let (_, config) = transport::quinn_configs(&identity, &TransportConfig::default(), certs::ALPN)
        .map_err(|e| AttackError::Endpoint(e.to_string()))?;
    let name = certs::node_server_name(arsenal.target_id);
    let mut report = AttackReport::default();
    // Held (a dropped attempt would tell the target it is over) until the target's handshake
    // timeout has surely passed for them.
    let mut held = std::collections::VecDeque::new();
    while Instant::now() < until {
        let second = Instant::now() + Duration::from_secs(1);
        let mut attempts = Vec::with_capacity(PER_SECOND);
        for _ in 0..PER_SECOND {
            if let Ok(connecting) = endpoint.connect_with(config.clone(), relay, &name) {
                attempts.push(connecting);
                report.sent += 1;
            }
        }
        held.push_back(attempts);
        if held.len() > 8 {
            held.pop_front();
        }
        tokio::time::sleep_until(second.min(until)).await;
    }
    drop(held);
    endpoint.close(0u32.into(), b"done");
    Ok(report)
}

/// Relays datagrams from local dialers to `target` and drops every answer, until `until`:
/// dialling the address it returns makes handshakes that start and never finish, from an
/// address that never answers a Retry (as a spoofed one).
///
/// # Errors
/// [`AttackError::Endpoint`] when no local UDP socket can be bound.
pub async fn black_hole(target: SocketAddr, until: Instant) -> Result<SocketAddr, AttackError> {
    let any: SocketAddr = ([127, 0, 0, 1], 0).into();
    let socket = tokio::net::UdpSocket::bind(any)
        .await
        .map_err(|e| AttackError::Endpoint(e.to_string()))?;
    let addr = socket
        .local_addr()
        .map_err(|e| AttackError::Endpoint(e.to_string()))?;
    let relay = async move {
        let mut buf = vec![0u8; 65_536];
        while let Ok((n, from)) = socket.recv_from(&mut buf).await {
            if from != target {
                let _ = socket.send_to(&buf[..n], target).await;
            }
        }
    };
    tokio::spawn(async move {
        let _ = tokio::time::timeout_at(until, relay).await;
    });
    Ok(addr)
}
