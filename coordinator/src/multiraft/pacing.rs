//! Ticks and election pacing: only awake groups tick, elections are rationed
//! ([`RaftConfig::max_campaigns`]) and their timeouts drawn from a seeded RNG so a
//! simulation replays exactly.

use super::*;

impl MultiRaft {
    /// Advances the logical clock by one tick: every group that is not quiet ticks; quiet
    /// groups cost nothing. Node-level liveness is tracked here too.
    pub fn tick(&mut self) {
        self.ticks += 1;
        let refill = (self.config.max_campaigns / self.config.election_tick).max(1);
        self.campaign_tokens = (self.campaign_tokens + refill).min(self.config.max_campaigns);
        let quiesce = self.config.quiesce;
        let mut to_quiesce = Vec::new();
        // Only awake groups tick: a quiet group costs nothing here, not even a visit.
        let mut asleep = Vec::new();
        for &id in &self.awake {
            let Some(g) = self.groups.get_mut(&id).filter(|g| !g.quiet) else {
                asleep.push(id);
                continue;
            };
            // A group whose timeout fires now (a follower's first round, a candidate's next)
            // needs a token (see `RaftConfig::max_campaigns`); without one its timer stays at
            // the brink and it tries again next tick.
            if g.election_due() {
                // A replica set aside waits at the brink for good: it still votes (its timer
                // is past the leader's lease) but never stands.
                if g.quarantined {
                    continue;
                }
                if self.campaign_tokens == 0 {
                    self.stats.campaigns_deferred += 1;
                    continue;
                }
                self.campaign_tokens -= 1;
                self.stats.campaigns_started += 1;
            }
            // Most ticks only advance a counter (a follower waiting, a leader between
            // heartbeats): only a tick that stepped raft can have made a `Ready`, so only
            // that one puts the group in the next cycle.
            if g.tick() {
                self.dirty.insert(id);
            }
            Self::jitter_election(&mut self.rng, &self.config, g);
            if quiesce && g.is_idle_leader(self.id) {
                g.idle_ticks += 1;
                if g.idle_ticks >= self.config.quiesce_after_ticks {
                    to_quiesce.push(id);
                }
            } else {
                g.idle_ticks = 0;
            }
        }
        for id in asleep {
            self.awake.remove(&id);
        }
        for id in to_quiesce {
            self.quiesce_leader(id);
        }
        self.tick_liveness();
    }

    /// raft-rs draws election timeouts from the thread RNG; we redraw them from our seeded RNG
    /// whenever raft reset them (a new term or role), so a simulation replays exactly.
    pub(super) fn jitter_election(rng: &mut StdRng, config: &RaftConfig, g: &mut Group) {
        let (term, role) = (g.term(), g.role());
        let timeout = g.election_timeout();
        // raft redraws from its own (wide) range whenever it resets: bring any timeout back
        // into the normal window, except a spread-out first election still waiting.
        let out_of_range = timeout < config.election_tick
            || (timeout >= 2 * config.election_tick && !g.first_spread);
        if term != g.timer_term || role != g.timer_role || out_of_range {
            g.timer_term = term;
            g.timer_role = role;
            g.first_spread = false;
            Self::draw_election_timeout(rng, config, g);
        }
    }

    /// Groups loaded together (a restart, a new cluster) would all time out within the same
    /// election window and campaign at once: tens of thousands of elections whose votes
    /// cannot all be processed within one timeout, so candidates time out again before
    /// their answers arrive and nothing converges. Their first timeouts are spread over one
    /// window per [`GROUPS_PER_ELECTION_WINDOW`] groups instead; later ones are normal.
    pub(super) fn spread_first_elections(&mut self, loaded: &[GroupId]) {
        let windows =
            (loaded.len() / GROUPS_PER_ELECTION_WINDOW).min(crate::config::MAX_ELECTION_SPREAD - 2);
        if windows == 0 {
            return;
        }
        let tick = self.config.election_tick;
        let span = tick.saturating_mul(windows + 1);
        for group in loaded {
            if let Some(g) = self.groups.get_mut(group) {
                let timeout = self.rng.random_range(tick..tick + span);
                g.set_election_timeout(timeout);
                g.first_spread = true;
            }
        }
    }

    pub(super) fn draw_election_timeout(rng: &mut StdRng, config: &RaftConfig, g: &mut Group) {
        let timeout = rng.random_range(config.election_tick..2 * config.election_tick);
        g.set_election_timeout(timeout);
    }
}
