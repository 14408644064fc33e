//! raft-rs logs through `slog`; Pontoon's libraries speak `tracing`. This drain forwards every
//! raft-rs record as a `tracing` event under the target `raft`, with the record's key-values
//! rendered into the message, so one subscriber sees everything.

use std::fmt::Write as _;

use slog::{Drain, KV as _, Level, OwnedKVList, Record};

/// A `slog` drain that re-emits records as `tracing` events.
pub(crate) struct TracingDrain;

struct KvWriter(String);

impl slog::Serializer for KvWriter {
    fn emit_arguments(&mut self, key: slog::Key, val: &std::fmt::Arguments<'_>) -> slog::Result {
        let _ = write!(self.0, " {key}={val}");
        Ok(())
    }
}

impl Drain for TracingDrain {
    type Ok = ();
    type Err = slog::Never;

    fn log(&self, record: &Record<'_>, values: &OwnedKVList) -> Result<(), slog::Never> {
        // Cheap early exit: formatting raft-rs's chatty records costs more than the check.
        let enabled = match record.level() {
            Level::Critical | Level::Error => {
                tracing::enabled!(target: "raft", tracing::Level::ERROR)
            }
            Level::Warning => tracing::enabled!(target: "raft", tracing::Level::WARN),
            Level::Info => tracing::enabled!(target: "raft", tracing::Level::DEBUG),
            Level::Debug | Level::Trace => tracing::enabled!(target: "raft", tracing::Level::TRACE),
        };
        if !enabled {
            return Ok(());
        }
        let mut kv = KvWriter(String::new());
        let _ = record.kv().serialize(record, &mut kv);
        let _ = values.serialize(record, &mut kv);
        let message = record.msg();
        let kv = kv.0;
        // raft-rs logs elections at info; for a node running thousands of groups that is debug.
        match record.level() {
            Level::Critical | Level::Error => tracing::error!(target: "raft", "{message}{kv}"),
            Level::Warning => tracing::warn!(target: "raft", "{message}{kv}"),
            Level::Info => tracing::debug!(target: "raft", "{message}{kv}"),
            Level::Debug | Level::Trace => tracing::trace!(target: "raft", "{message}{kv}"),
        }
        Ok(())
    }
}

/// A raft-rs logger for one group of one node.
pub(crate) fn group_logger(node: u64, group: u64) -> slog::Logger {
    slog::Logger::root(
        TracingDrain.fuse(),
        slog::o!("node" => node, "group" => group),
    )
}
