//! Benchmark harness shared by the criterion benches and `pontoon bench`.
