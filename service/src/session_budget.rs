//! How many client sessions each client certificate may open through this node.
//!
//! The groups bound their session tables per group (see `coordinator`'s sessions), not per
//! node: a client opening a new session for every write in every group would grow every
//! replica's tables, group after group. The front door bounds it per node instead: a client
//! certificate may name at most [`SessionBudget::per_client`] distinct sessions through this
//! node within the sessions' lifetime. Past it, a command of a new session is refused (did
//! not take effect) and the client should reuse a session; commands of sessions already
//! counted always pass. Not replicated, and need not be: it runs before anything is proposed.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Sessions a client certificate may name through one node within [`SESSION_LIFETIME`]: as
/// many as one group's whole table holds, so a client that opens a session per write (one
/// `pontoon kv` process per write) may write about 28 times a second through one node,
/// around the clock, before it is refused.
pub const SESSIONS_PER_CLIENT: usize = 100_000;
/// How long a session counts against its client (the groups keep an idle session this long).
pub const SESSION_LIFETIME: Duration = Duration::from_secs(60 * 60);

/// The sessions each client opened recently, by certificate name. Cheap to share.
#[derive(Debug)]
pub struct SessionBudget {
    per_client: usize,
    lifetime: Duration,
    clients: Mutex<HashMap<String, Recent>>,
}

/// One client's sessions, in the order they were first seen.
#[derive(Debug, Default)]
struct Recent {
    order: VecDeque<(Instant, u64)>,
    ids: HashSet<u64>,
}

impl Default for SessionBudget {
    fn default() -> Self {
        Self::new(SESSIONS_PER_CLIENT, SESSION_LIFETIME)
    }
}

impl SessionBudget {
    /// A budget of `per_client` sessions per client certificate, each counted for `lifetime`
    /// from when it was first seen.
    #[must_use]
    pub fn new(per_client: usize, lifetime: Duration) -> Self {
        Self {
            per_client,
            lifetime,
            clients: Mutex::default(),
        }
    }

    /// Whether `client` may send a command of `session` now: yes for a session it is counted
    /// for already, and for a new one while it has room (the new one is then counted).
    pub fn admit(&self, client: &str, session: u64, now: Instant) -> bool {
        let mut clients = self
            .clients
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let recent = clients.entry(client.to_owned()).or_default();
        while let Some(&(seen, id)) = recent.order.front() {
            if now.saturating_duration_since(seen) < self.lifetime {
                break;
            }
            recent.order.pop_front();
            recent.ids.remove(&id);
        }
        if recent.ids.contains(&session) {
            return true;
        }
        if recent.ids.len() >= self.per_client {
            return false;
        }
        recent.ids.insert(session);
        recent.order.push_back((now, session));
        true
    }

    /// The per-client budget.
    #[must_use]
    pub fn per_client(&self) -> usize {
        self.per_client
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_gets_its_budget_of_new_sessions_and_keeps_the_ones_it_has() {
        let budget = SessionBudget::new(3, Duration::from_secs(60));
        let t0 = Instant::now();
        for session in 1..=3 {
            assert!(budget.admit("flood", session, t0));
        }
        assert!(!budget.admit("flood", 4, t0), "a fourth new session");
        assert!(budget.admit("flood", 2, t0), "a counted session goes on");
        assert!(
            budget.admit("other", 4, t0),
            "another client has its own budget"
        );
        // Once the first ones are older than the lifetime, there is room again.
        let later = t0 + Duration::from_secs(61);
        assert!(budget.admit("flood", 4, later));
        assert!(budget.admit("flood", 5, later));
        assert!(budget.admit("flood", 6, later));
        assert!(!budget.admit("flood", 7, later));
    }
}
