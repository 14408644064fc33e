//! [`SeriesWriter`]: one JSON line per sample of a load run on a [`LocalCluster`], so a run
//! can be plotted afterwards (`scripts/plot_series.py` renders a file to PNG).
//!
//! Each line is one object:
//! `{"t_s":…, "acknowledged":…, "writes_per_s":…, "p50_us":…, "p99_us":…, "leaders":{"1":…}, "event":…}`:
//! seconds since the load started, acknowledged writes so far, the write rate and the latency
//! quantiles over the time since the previous line (an HDR histogram window of
//! [`LoadStats::take_window`]), the data groups each running node leads, and what happened
//! since the previous line (a node killed), if anything.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufWriter, Write as _};
use std::path::Path;
use std::time::Instant;

use serde::Serialize;

use super::local::{LoadStats, LocalCluster};
use crate::StateMachine;

/// Writes a load run's time series, one JSON line per [`SeriesWriter::sample`].
pub struct SeriesWriter {
    out: BufWriter<File>,
    start: Instant,
    last: (Instant, u64),
    events: Vec<String>,
}

#[derive(Serialize)]
struct Row<'a> {
    t_s: f64,
    acknowledged: u64,
    writes_per_s: f64,
    p50_us: u64,
    p99_us: u64,
    leaders: BTreeMap<String, usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    event: Option<&'a str>,
}

impl SeriesWriter {
    /// Creates (or truncates) `path`; times are counted from `start`, when the load began.
    ///
    /// # Errors
    /// The file cannot be created.
    pub fn create(path: &Path, start: Instant) -> std::io::Result<Self> {
        Ok(Self {
            out: BufWriter::new(File::create(path)?),
            start,
            last: (start, 0),
            events: Vec::new(),
        })
    }

    /// Notes something that happened (a node killed); the next line carries it.
    pub fn event(&mut self, what: impl Into<String>) {
        self.events.push(what.into());
    }

    /// Writes one line: the window since the previous one. Starts `stats`'s next latency
    /// window.
    ///
    /// # Errors
    /// The line cannot be written.
    pub async fn sample<S: StateMachine>(
        &mut self,
        cluster: &LocalCluster<S>,
        stats: &LoadStats,
    ) -> std::io::Result<()> {
        let leaders = cluster.leader_counts().await;
        let now = Instant::now();
        let window = stats.take_window(&[0.5, 0.99]);
        let acknowledged = stats.acknowledged();
        let seconds = now.duration_since(self.last.0).as_secs_f64().max(1e-3);
        let writes_per_s = acknowledged.saturating_sub(self.last.1) as f64 / seconds;
        self.last = (now, acknowledged);
        let event = (!self.events.is_empty()).then(|| self.events.join("; "));
        self.events.clear();
        let row = Row {
            t_s: now.duration_since(self.start).as_secs_f64(),
            acknowledged,
            writes_per_s,
            p50_us: window.quantiles_us.first().copied().unwrap_or(0),
            p99_us: window.quantiles_us.get(1).copied().unwrap_or(0),
            leaders: leaders
                .into_iter()
                .map(|(node, led)| (node.get().to_string(), led))
                .collect(),
            event: event.as_deref(),
        };
        serde_json::to_writer(&mut self.out, &row)?;
        self.out.write_all(b"\n")?;
        self.out.flush()
    }
}
