//! Durable raft log for many groups in one fjall database (filled in by the storage issue).
