//! Hostile traffic for Pontoon's tests and for the trust-boundary Bar runs.
//!
//! An [`Arsenal`] holds the cluster CA (so it can mint any certificate an attacker might have
//! stolen or been issued) and names one target node. Each [`Attack`] then runs against that
//! node over real QUIC and TLS until a deadline, as the #17 issue measured them: forged raft
//! messages, amplifying frames, floods of unfinished streams, stalled snapshots, dial storms
//! with a live member's identity, a stranger's node certificate, idle and unfinished client
//! connections, and half-open handshakes. The attacker only observes what the target tells it
//! (stream resets and connection closes, counted by code in an [`AttackReport`]); whether the
//! target kept serving, kept its data and bounded its memory is for the caller to measure.
//!
//! ```no_run
//! # async fn run(ca: certs::ClusterCa, addr: std::net::SocketAddr) {
//! use pontoon_testkit::{Arsenal, Attack};
//! use routing::NodeId;
//! let arsenal = Arsenal::new(ca, addr, NodeId(4), NodeId(1), NodeId(2), 1..=8);
//! let until = tokio::time::Instant::now() + std::time::Duration::from_secs(60);
//! let report = Attack::PartialFrames.run(&arsenal, until).await.unwrap();
//! println!("{report}");
//! # }
//! ```
#![warn(missing_docs)]

mod attacks;
mod frames;

pub use attacks::{Arsenal, Attack, AttackError, AttackReport, black_hole};
pub use frames::{
    amplifying_frame, forged_heartbeats, forged_raft_frames, header, snapshot_chunk,
    stalled_snapshot_opening,
};
