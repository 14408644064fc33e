//! Test and benchmark machinery, behind the `test-util` feature (off by default), so it is
//! never part of the API an embedder builds against by accident.
//!
//! - [`sim`]: a deterministic simulation of a whole cluster (real cores and stores, an
//!   in-memory network with faults, virtual time from one seed).
//! - [`linearizability`]: a checker for the key-value histories a simulation records.
//! - [`local`]: N real nodes in one process over QUIC on loopback, and a load driver.
//! - [`series`]: a per-second time series of a load run (throughput, latency quantiles,
//!   leaders per node) written as JSON lines, for a plot.
//!
//! Enable it from a dev-dependency:
//! `pontoon-coordinator = { path = "…", features = ["test-util"] }`.

pub mod linearizability;
pub mod local;
pub mod series;
pub mod sim;
