//! Which node ids may hold a connection to this node, decided after the handshake from the
//! id in the peer's certificate: the embedder's admission hook (members of this node's groups
//! and nodes its routing table places) and the revocation set (node ids and certificate
//! serials). A refused id gets no peer state, so nothing redials it; refusals are counted by
//! reason and logged at most once per [`LOG_EVERY`], not once per attempt.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

use routing::NodeId;
use tracing::warn;

/// Decides whether a node id may connect; see `QuicTransport::set_peer_admission`.
pub type PeerAdmission = Arc<dyn Fn(NodeId) -> bool + Send + Sync>;

/// Node ids and certificate serials no longer trusted, whatever the CA says. See
/// `QuicTransport::set_revocations`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Revocations {
    /// Node ids refused whatever their certificate.
    pub nodes: HashSet<NodeId>,
    /// Certificate serial numbers (big-endian bytes, as in the certificate) refused.
    pub serials: HashSet<Vec<u8>>,
}

impl Revocations {
    /// Whether a peer with this id and leaf certificate serial is revoked.
    #[must_use]
    pub fn revokes(&self, id: NodeId, serial: Option<&[u8]>) -> bool {
        self.nodes.contains(&id) || serial.is_some_and(|s| self.serials.contains(s))
    }
}

/// Why a node connection was refused after its handshake.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    Admitted,
    NotAdmitted,
    Revoked,
}

/// Refusals are logged at most this often, with the count suppressed meanwhile.
pub(crate) const LOG_EVERY: Duration = Duration::from_secs(10);

/// The admission hook, the revocations and the rate-limited log of refusals.
#[derive(Default)]
pub(crate) struct Gate {
    admission: RwLock<Option<PeerAdmission>>,
    revoked: RwLock<Revocations>,
    log: LogLimiter,
}

impl Gate {
    pub(crate) fn set_admission(&self, admission: Option<PeerAdmission>) {
        *self
            .admission
            .write()
            .unwrap_or_else(PoisonError::into_inner) = admission;
    }

    pub(crate) fn set_revocations(&self, revoked: Revocations) {
        *self.revoked.write().unwrap_or_else(PoisonError::into_inner) = revoked;
    }

    /// The verdict for a peer with this id and leaf certificate serial.
    pub(crate) fn verdict(&self, id: NodeId, serial: Option<&[u8]>) -> Verdict {
        if self
            .revoked
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .revokes(id, serial)
        {
            return Verdict::Revoked;
        }
        let admission = self
            .admission
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        match admission {
            Some(admit) if !admit(id) => Verdict::NotAdmitted,
            _ => Verdict::Admitted,
        }
    }

    /// Logs a refusal, at most once per [`LOG_EVERY`].
    pub(crate) fn log_refusal(&self, id: NodeId, verdict: Verdict) {
        if let Some(suppressed) = self.log.permit() {
            warn!(peer = %id, ?verdict, suppressed, "node connection refused");
        }
    }
}

/// Lets one log line through per [`LOG_EVERY`], counting the others.
#[derive(Default)]
pub(crate) struct LogLimiter {
    last: Mutex<Option<Instant>>,
    suppressed: AtomicU64,
}

impl LogLimiter {
    /// `Some(lines suppressed since the last one)` when a line may be logged now.
    pub(crate) fn permit(&self) -> Option<u64> {
        let mut last = self.last.lock().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        if last.is_some_and(|t| now.duration_since(t) < LOG_EVERY) {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        *last = Some(now);
        Some(self.suppressed.swap(0, Ordering::Relaxed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn revocations_win_over_admission_and_the_default_admits_all() {
        let gate = Gate::default();
        assert_eq!(gate.verdict(NodeId(4), None), Verdict::Admitted);
        gate.set_admission(Some(Arc::new(|id: NodeId| id.get() < 4)));
        assert_eq!(gate.verdict(NodeId(4), None), Verdict::NotAdmitted);
        assert_eq!(gate.verdict(NodeId(3), Some(&[9])), Verdict::Admitted);
        gate.set_revocations(Revocations {
            nodes: HashSet::new(),
            serials: [vec![9]].into_iter().collect(),
        });
        assert_eq!(gate.verdict(NodeId(3), Some(&[9])), Verdict::Revoked);
        assert_eq!(gate.verdict(NodeId(3), Some(&[8])), Verdict::Admitted);
    }

    #[test]
    fn the_log_limiter_lets_one_line_through_per_period() {
        let log = LogLimiter::default();
        assert_eq!(log.permit(), Some(0));
        assert_eq!(log.permit(), None);
        assert_eq!(log.permit(), None);
        *log.last.lock().unwrap_or_else(PoisonError::into_inner) =
            Instant::now().checked_sub(LOG_EVERY);
        assert_eq!(log.permit(), Some(2));
    }
}
