//! Where a proposal's time goes on the node that leads its group: from the driver taking it
//! until raft hands it out committed (batching into the cycle's entry, the leader's persist,
//! replication and the followers' persists), and from then until the state machine's answer
//! (the apply queue and the apply itself). A caller's end-to-end latency less these two is
//! the wait for the driver. Recorded in HDR histograms (µs, 3 significant digits) that cover
//! the node's life, and published through the `metrics` facade too.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use crate::multiraft::Token;

/// Quantiles of one stage, in microseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct LatencyQuantiles {
    /// Proposals measured.
    pub count: u64,
    /// Median.
    pub p50_us: u64,
    /// 99th percentile.
    pub p99_us: u64,
    /// 99.9th percentile.
    pub p999_us: u64,
    /// Largest.
    pub max_us: u64,
}

/// The stages of the proposals this node led and acknowledged (see the module docs).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct StageLatencies {
    /// From the driver taking the proposal to raft handing it out committed.
    pub replicate: LatencyQuantiles,
    /// From commit to the state machine's answer.
    pub apply: LatencyQuantiles,
}

/// The driver's clock of its proposals' stages.
pub(super) struct StageClock {
    /// Proposals raft handed out committed, not yet answered.
    committed_at: HashMap<Token, Instant>,
    replicate: Histogram<u64>,
    apply: Histogram<u64>,
}

impl Default for StageClock {
    fn default() -> Self {
        Self {
            committed_at: HashMap::new(),
            replicate: histogram(),
            apply: histogram(),
        }
    }
}

/// µs from 1 to an hour, 3 significant digits: a fixed ~40 KiB, whatever is recorded.
fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3)
        .unwrap_or_else(|_| Histogram::new(3).unwrap_or_else(|_| unreachable!()))
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX).max(1)
}

impl StageClock {
    /// Raft handed `token`'s proposal out committed at `now`.
    pub(super) fn committed(&mut self, token: Token, now: Instant) {
        self.committed_at.insert(token, now);
    }

    /// `token`'s proposal, taken by the driver at `issued`, was answered at `now`: its stages
    /// are (`None` for a request that was not a proposal this node committed).
    pub(super) fn answered(
        &mut self,
        token: Token,
        issued: Option<Instant>,
        now: Instant,
    ) -> Option<(Duration, Duration)> {
        let committed = self.committed_at.remove(&token)?;
        let issued = issued?;
        let replicate = committed.saturating_duration_since(issued);
        let apply = now.saturating_duration_since(committed);
        self.replicate.saturating_record(micros(replicate));
        self.apply.saturating_record(micros(apply));
        Some((replicate, apply))
    }

    /// `token` failed or expired: nothing to measure.
    pub(super) fn forget(&mut self, token: Token) {
        self.committed_at.remove(&token);
    }

    /// The quantiles so far.
    pub(super) fn summary(&self) -> StageLatencies {
        let quantiles = |h: &Histogram<u64>| LatencyQuantiles {
            count: h.len(),
            p50_us: h.value_at_quantile(0.5),
            p99_us: h.value_at_quantile(0.99),
            p999_us: h.value_at_quantile(0.999),
            max_us: h.max(),
        };
        StageLatencies {
            replicate: quantiles(&self.replicate),
            apply: quantiles(&self.apply),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stages_are_measured_only_for_proposals_committed_here() {
        let mut clock = StageClock::default();
        let t0 = Instant::now();
        clock.committed(1, t0 + Duration::from_millis(3));
        let stages = clock.answered(1, Some(t0), t0 + Duration::from_millis(5));
        assert_eq!(
            stages,
            Some((Duration::from_millis(3), Duration::from_millis(2)))
        );
        // Never committed here (a read, a refusal): nothing recorded.
        assert_eq!(clock.answered(2, Some(t0), t0), None);
        // Committed, then expired: forgotten, so nothing is kept for it.
        clock.committed(3, t0);
        clock.forget(3);
        assert!(clock.committed_at.is_empty());
        let summary = clock.summary();
        assert_eq!(summary.replicate.count, 1);
        assert!(
            (2_990..=3_010).contains(&summary.replicate.p50_us),
            "{summary:?}"
        );
        assert!(
            (1_990..=2_010).contains(&summary.apply.p99_us),
            "{summary:?}"
        );
    }
}
