//! Benchmark harness shared by the criterion benches and `pontoon bench`.
//!
//! [`harness`] runs a real [`LocalCluster`](coordinator::testkit::local::LocalCluster) under closed-loop
//! load and, in the same process and the same run, the raw baselines that bound it: durable
//! appends to one fjall database and messages on one raw quinn stream. The
//! [`BenchReport`](harness::BenchReport) it builds carries the stable JSON names of DESIGN.md
//! ("The benchmark report").
#![warn(missing_docs)]

pub mod harness;
