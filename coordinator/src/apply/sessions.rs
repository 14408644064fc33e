//! Client sessions: each group remembers, per client session, the response of every command
//! it applied that the client has not acknowledged yet, so a retried command (same session,
//! same sequence number) is answered with the first response instead of being applied twice.
//!
//! The table is replicated state: every replica builds it from the same log, it travels in
//! snapshots and in vShard exports, and idle sessions expire by the group's replicated time
//! (the proposers' clocks carried in the log, never a replica's own clock), so every replica
//! forgets the same sessions at the same log position.

use std::collections::BTreeMap;

use routing::VShardId;

use crate::replicated::SessionTag;

/// A session idle this long in a group's replicated time is forgotten there. A client that
/// retries a command after that long gets it applied again.
pub(crate) const SESSION_TTL_MS: u64 = 60 * 60 * 1000;
/// Responses one session may leave unacknowledged in one group; past it, new commands of the
/// session are refused (did not take effect) until the client acknowledges.
pub(crate) const MAX_UNACKNOWLEDGED: usize = 10_000;
/// Sessions one group keeps; past it, commands of a new session are refused until idle ones
/// expire, so clients that never acknowledge cannot grow the table without bound.
pub(crate) const MAX_SESSIONS: usize = 100_000;
/// Sessions one owner keeps in one group: the top [`OWNER_BITS`] bits of a session id name
/// its owner (the KV service puts the client certificate's there), so one client opening
/// sessions without end fills at most half of [`MAX_SESSIONS`], never the whole table every
/// other client needs. Past it, the owner's new sessions are refused until its idle ones
/// expire; random ids ([`crate::ClientSession::new`]) spread over every owner. Half, not
/// less: a client that opens a session per command (one `pontoon kv` process per write)
/// legitimately leaves one behind per write for the session lifetime.
pub(crate) const MAX_SESSIONS_PER_OWNER: usize = MAX_SESSIONS / 2;
/// The bits of a session id that name its owner (see [`MAX_SESSIONS_PER_OWNER`]).
pub(crate) const OWNER_BITS: u32 = 16;
/// Bytes one group's table may hold, all sessions together: cached responses, and what each
/// session and each cached response costs beside its bytes ([`SESSION_COST`],
/// [`RESPONSE_COST`]); past it, commands that would add more are refused until clients
/// acknowledge or idle sessions expire.
pub(crate) const MAX_CACHED_BYTES: usize = 64 << 20;
/// What a session costs the table beside its responses' bytes (its map entry and the first
/// node of its responses' map), charged against [`MAX_CACHED_BYTES`].
pub(crate) const SESSION_COST: usize = 512;
/// What a cached response costs beside its bytes (its map slot and vector header).
pub(crate) const RESPONSE_COST: usize = 64;

/// A cached outcome: the response, or `None` for a command applied before this replica
/// restarted (the state machine had made it durable; its response was not kept).
type Cached = (Option<VShardId>, Option<Vec<u8>>);

#[derive(Clone, Debug, Default, PartialEq)]
struct Client {
    acked: u64,
    last_ms: u64,
    responses: BTreeMap<u64, Cached>,
}

/// What to do with a command of a session.
#[derive(Debug, PartialEq)]
pub(crate) enum Check {
    /// Not seen: apply it, then [`Sessions::record`] its response.
    Apply,
    /// Applied before: answer with this response.
    Answered(Vec<u8>),
    /// Applied before this replica restarted; its response is gone.
    AppliedEarlier,
    /// Refused without applying (why).
    Refused(String),
}

/// One group's session table.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct Sessions {
    clients: BTreeMap<u64, Client>,
    /// Sessions per owner (kept in step with `clients`, so the quota costs no scan).
    owners: BTreeMap<u64, usize>,
    /// What the table holds, in bytes: every session's and cached response's cost and the
    /// responses' bytes (kept in step with `clients`).
    cached_bytes: usize,
    /// The group's replicated time: the latest proposer clock seen in its log.
    now_ms: u64,
    /// When idle sessions were last looked for.
    swept_ms: u64,
}

impl Sessions {
    /// Whether the command tagged `tag` must be applied. Every replica calls this for every
    /// command in the same order, so every replica's table is the same.
    pub(crate) fn check(&mut self, tag: &SessionTag) -> Check {
        self.advance(tag.time_ms);
        let now = self.now_ms;
        if !self.clients.contains_key(&tag.client) {
            if self.clients.len() >= MAX_SESSIONS {
                return Check::Refused(format!(
                    "this group holds {MAX_SESSIONS} client sessions; a new one must wait for \
                     idle ones to expire"
                ));
            }
            if self.owned_by(tag.client) >= MAX_SESSIONS_PER_OWNER {
                return Check::Refused(format!(
                    "this client holds {MAX_SESSIONS_PER_OWNER} sessions in this group; a new \
                     one must wait for its idle ones to expire (reuse a session instead of \
                     opening one per command)"
                ));
            }
        }
        let client = Self::client_mut(
            &mut self.clients,
            &mut self.owners,
            &mut self.cached_bytes,
            tag.client,
        );
        client.last_ms = now;
        if tag.acked > client.acked {
            client.acked = tag.acked;
            let kept = client.responses.split_off(&(tag.acked + 1));
            let dropped = std::mem::replace(&mut client.responses, kept);
            self.cached_bytes = self.cached_bytes.saturating_sub(bytes_of(dropped.values()));
        }
        let Some(client) = self.clients.get(&tag.client) else {
            return Check::Apply;
        };
        if let Some((_, cached)) = client.responses.get(&tag.seq) {
            return match cached {
                Some(response) => Check::Answered(response.clone()),
                None => Check::AppliedEarlier,
            };
        }
        if tag.seq <= client.acked {
            return Check::Refused(format!(
                "command {} of session {:x} was answered and acknowledged already",
                tag.seq, tag.client
            ));
        }
        if client.responses.len() >= MAX_UNACKNOWLEDGED {
            return Check::Refused(format!(
                "session {:x} has {MAX_UNACKNOWLEDGED} unacknowledged commands in this group",
                tag.client
            ));
        }
        if self.cached_bytes >= MAX_CACHED_BYTES {
            return Check::Refused(format!(
                "this group caches {MAX_CACHED_BYTES} bytes of unacknowledged responses; \
                 clients must acknowledge before more are taken"
            ));
        }
        Check::Apply
    }

    /// Remembers the response of an applied command (`None`: applied before a restart, the
    /// response is not known).
    pub(crate) fn record(
        &mut self,
        tag: &SessionTag,
        vshard: Option<VShardId>,
        response: Option<Vec<u8>>,
    ) {
        self.advance(tag.time_ms);
        let now = self.now_ms;
        let client = Self::client_mut(
            &mut self.clients,
            &mut self.owners,
            &mut self.cached_bytes,
            tag.client,
        );
        client.last_ms = now;
        if tag.seq > client.acked {
            self.cached_bytes += RESPONSE_COST + response.as_ref().map_or(0, Vec::len);
            if let Some(old) = client.responses.insert(tag.seq, (vshard, response)) {
                self.cached_bytes = self.cached_bytes.saturating_sub(bytes_of([&old]));
            }
        }
    }

    /// Sessions of `client`'s owner in the table.
    fn owned_by(&self, client: u64) -> usize {
        self.owners.get(&owner(client)).copied().unwrap_or(0)
    }

    /// `client`'s entry in `clients`, made (and counted in `owners`) if it is new.
    fn client_mut<'a>(
        clients: &'a mut BTreeMap<u64, Client>,
        owners: &mut BTreeMap<u64, usize>,
        cached_bytes: &mut usize,
        client: u64,
    ) -> &'a mut Client {
        if !clients.contains_key(&client) {
            *owners.entry(owner(client)).or_default() += 1;
            *cached_bytes += SESSION_COST;
        }
        clients.entry(client).or_default()
    }

    fn advance(&mut self, time_ms: u64) {
        if time_ms <= self.now_ms {
            return;
        }
        self.now_ms = time_ms;
        if self.now_ms.saturating_sub(self.swept_ms) < SESSION_TTL_MS / 16 {
            return;
        }
        self.swept_ms = self.now_ms;
        let now = self.now_ms;
        self.clients
            .retain(|_, c| c.last_ms.saturating_add(SESSION_TTL_MS) >= now);
        self.recount();
    }

    fn recount(&mut self) {
        self.cached_bytes = self
            .clients
            .values()
            .map(|c| SESSION_COST + bytes_of(c.responses.values()))
            .sum();
        self.owners.clear();
        for id in self.clients.keys() {
            *self.owners.entry(owner(*id)).or_default() += 1;
        }
    }

    /// The table, for a snapshot.
    pub(crate) fn to_msg(&self) -> SessionsMsg {
        self.msg_where(|_| true)
    }

    /// The entries of commands routed by `vshard`, for moving it.
    pub(crate) fn export(&self, vshard: VShardId) -> SessionsMsg {
        self.msg_where(|v| *v == Some(vshard))
    }

    fn msg_where(&self, keep: impl Fn(&Option<VShardId>) -> bool) -> SessionsMsg {
        SessionsMsg {
            now_ms: self.now_ms,
            clients: self
                .clients
                .iter()
                .filter_map(|(id, c)| {
                    let responses: Vec<ResponseMsg> = c
                        .responses
                        .iter()
                        .filter(|(_, (v, _))| keep(v))
                        .map(|(seq, (v, r))| ResponseMsg {
                            seq: *seq,
                            vshard: v.map(VShardId::get),
                            response: r.clone(),
                        })
                        .collect();
                    (!responses.is_empty() || keep(&None)).then_some(ClientMsg {
                        client: *id,
                        acked: c.acked,
                        last_ms: c.last_ms,
                        responses,
                    })
                })
                .collect(),
        }
    }

    /// The table a snapshot carried.
    pub(crate) fn from_msg(msg: SessionsMsg) -> Self {
        let mut this = Self {
            now_ms: msg.now_ms,
            swept_ms: msg.now_ms,
            ..Self::default()
        };
        this.merge(msg);
        this
    }

    /// Adds the entries a vShard export carried.
    pub(crate) fn merge(&mut self, msg: SessionsMsg) {
        self.now_ms = self.now_ms.max(msg.now_ms);
        for c in msg.clients {
            let client = self.clients.entry(c.client).or_default();
            client.acked = client.acked.max(c.acked);
            client.last_ms = client.last_ms.max(c.last_ms);
            for r in c.responses {
                if r.seq > client.acked {
                    client
                        .responses
                        .insert(r.seq, (r.vshard.map(VShardId), r.response));
                }
            }
            let acked = client.acked;
            client.responses.retain(|seq, _| *seq > acked);
        }
        self.recount();
    }
}

/// The owner a session id names (see [`MAX_SESSIONS_PER_OWNER`]).
fn owner(client: u64) -> u64 {
    client >> (u64::BITS - OWNER_BITS)
}

/// What `cached` responses cost the table ([`RESPONSE_COST`] each beside their bytes).
fn bytes_of<'a>(cached: impl IntoIterator<Item = &'a Cached>) -> usize {
    cached
        .into_iter()
        .map(|(_, r)| RESPONSE_COST + r.as_ref().map_or(0, Vec::len))
        .sum()
}

/// The session table as it travels in snapshots and vShard exports.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct SessionsMsg {
    #[prost(uint64, tag = "1")]
    now_ms: u64,
    #[prost(message, repeated, tag = "2")]
    clients: Vec<ClientMsg>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct ClientMsg {
    #[prost(uint64, tag = "1")]
    client: u64,
    #[prost(uint64, tag = "2")]
    acked: u64,
    #[prost(uint64, tag = "3")]
    last_ms: u64,
    #[prost(message, repeated, tag = "4")]
    responses: Vec<ResponseMsg>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct ResponseMsg {
    #[prost(uint64, tag = "1")]
    seq: u64,
    #[prost(uint32, optional, tag = "2")]
    vshard: Option<u32>,
    #[prost(bytes = "vec", optional, tag = "3")]
    response: Option<Vec<u8>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tag(client: u64, seq: u64, acked: u64, time_ms: u64) -> SessionTag {
        SessionTag {
            client,
            seq,
            acked,
            time_ms,
        }
    }

    #[test]
    fn a_retry_is_answered_with_the_first_response_until_acknowledged() {
        let mut s = Sessions::default();
        let first = tag(7, 1, 0, 1_000);
        assert_eq!(s.check(&first), Check::Apply);
        s.record(&first, None, Some(b"r1".to_vec()));
        assert_eq!(s.check(&first), Check::Answered(b"r1".to_vec()));
        // Acknowledged by the next command: the response goes, a late retry is refused.
        let second = tag(7, 2, 1, 2_000);
        assert_eq!(s.check(&second), Check::Apply);
        assert!(matches!(s.check(&first), Check::Refused(_)));
    }

    #[test]
    fn idle_sessions_expire_by_replicated_time_alike_everywhere() {
        let mut s = Sessions::default();
        let old = tag(1, 1, 0, 1_000);
        assert_eq!(s.check(&old), Check::Apply);
        s.record(&old, None, Some(b"x".to_vec()));
        // Another client's command carries time past the TTL: the idle session is gone.
        let later = tag(2, 1, 0, 1_000 + SESSION_TTL_MS + 1);
        assert_eq!(s.check(&later), Check::Apply);
        assert!(!s.clients.contains_key(&1));
        // Time in the log never goes back (a slow proposer's clock): it does not revive it.
        assert_eq!(s.check(&tag(3, 1, 0, 5)), Check::Apply);
        assert_eq!(s.now_ms, 1_000 + SESSION_TTL_MS + 1);
    }

    #[test]
    fn the_table_travels_in_snapshots_and_by_vshard_in_exports() {
        let mut s = Sessions::default();
        let (a, b) = (tag(9, 1, 0, 10), tag(9, 2, 0, 11));
        s.check(&a);
        s.record(&a, Some(VShardId(1)), Some(b"a".to_vec()));
        s.check(&b);
        s.record(&b, Some(VShardId(2)), Some(b"b".to_vec()));
        let mut copy = Sessions::from_msg(s.to_msg());
        assert_eq!(copy.check(&a), Check::Answered(b"a".to_vec()));
        let mut moved = Sessions::default();
        moved.merge(s.export(VShardId(2)));
        assert_eq!(moved.check(&b), Check::Answered(b"b".to_vec()));
        assert_eq!(
            moved.check(&a),
            Check::Apply,
            "vShard 1's entry stayed behind"
        );
    }

    #[test]
    fn a_group_full_of_sessions_or_cached_bytes_refuses_more_until_they_go() {
        let mut s = Sessions::default();
        // Spread over owners, each under its quota.
        let spread = |i: u64| ((i % 64) << (u64::BITS - OWNER_BITS)) | i;
        for i in 1..=MAX_SESSIONS as u64 {
            assert_eq!(s.check(&tag(spread(i), 1, 0, 1)), Check::Apply);
        }
        let newcomer = tag(u64::MAX, 1, 0, 1);
        assert!(matches!(s.check(&newcomer), Check::Refused(_)));
        // Known sessions go on; once the idle ones expire, the newcomer gets in.
        assert_eq!(s.check(&tag(spread(1), 2, 0, 2)), Check::Apply);
        let later = tag(u64::MAX, 1, 0, 2 + SESSION_TTL_MS + 1);
        assert_eq!(s.check(&later), Check::Apply);

        let mut s = Sessions::default();
        let big = vec![0u8; 1 << 20];
        for seq in 1..=(MAX_CACHED_BYTES >> 20) as u64 {
            let t = tag(5, seq, 0, 1);
            assert_eq!(s.check(&t), Check::Apply);
            s.record(&t, None, Some(big.clone()));
        }
        let over = tag(5, 1_000, 0, 1);
        assert!(matches!(s.check(&over), Check::Refused(_)));
        // Acknowledging frees the responses; the session's own cost stays while it lives.
        let acking = tag(5, 1_000, 999, 1);
        assert_eq!(s.check(&acking), Check::Apply);
        assert_eq!(s.cached_bytes, SESSION_COST);
    }

    #[test]
    fn every_session_and_response_is_charged_its_cost_beside_its_bytes() {
        let mut s = Sessions::default();
        for (client, response) in [(1, Vec::new()), (2, vec![0u8; 100])] {
            let t = tag(client, 1, 0, 1);
            assert_eq!(s.check(&t), Check::Apply);
            s.record(&t, None, Some(response));
        }
        let charged = 2 * SESSION_COST + 2 * RESPONSE_COST + 100;
        assert_eq!(s.cached_bytes, charged);
        // Counted afresh on a replica restored from a snapshot: the same.
        assert_eq!(Sessions::from_msg(s.to_msg()).cached_bytes, charged);
    }

    #[test]
    fn one_owner_opening_sessions_without_end_fills_only_its_share() {
        let mut s = Sessions::default();
        let shift = u64::BITS - OWNER_BITS;
        let flooder = |i: u64| (7 << shift) | i;
        for i in 1..=MAX_SESSIONS_PER_OWNER as u64 {
            assert_eq!(s.check(&tag(flooder(i), 1, 0, 1)), Check::Apply);
        }
        let one_more = tag(flooder(u64::from(u32::MAX)), 1, 0, 1);
        assert!(matches!(s.check(&one_more), Check::Refused(r) if r.contains("this client")));
        // The same on a replica restored from a snapshot of the table.
        let mut restored = Sessions::from_msg(s.to_msg());
        assert!(matches!(restored.check(&one_more), Check::Refused(_)));
        // Its sessions go on, and every other owner still opens new ones.
        assert_eq!(s.check(&tag(flooder(1), 2, 0, 1)), Check::Apply);
        assert_eq!(s.check(&tag((8 << shift) | 1, 1, 0, 1)), Check::Apply);
        assert_eq!(s.check(&tag((6 << shift) | 1, 1, 0, 1)), Check::Apply);
        // Once its idle sessions expire, it opens new ones again.
        let later = tag(flooder(u64::from(u32::MAX)), 1, 0, 2 + SESSION_TTL_MS + 1);
        assert_eq!(s.check(&later), Check::Apply);
    }

    #[test]
    fn a_session_with_too_many_unacknowledged_commands_is_refused() {
        let mut s = Sessions::default();
        for seq in 1..=MAX_UNACKNOWLEDGED as u64 {
            let t = tag(4, seq, 0, 1);
            assert_eq!(s.check(&t), Check::Apply);
            s.record(&t, None, Some(Vec::new()));
        }
        let over = tag(4, MAX_UNACKNOWLEDGED as u64 + 1, 0, 1);
        assert!(matches!(s.check(&over), Check::Refused(_)));
        // Acknowledging frees room.
        let acking = tag(4, MAX_UNACKNOWLEDGED as u64 + 1, 100, 1);
        assert_eq!(s.check(&acking), Check::Apply);
    }
}
