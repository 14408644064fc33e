//! Placement reconciliation: acting on the routing tables the meta group applies. The table
//! is published to the handle, peer addresses are learned, and this node's replicas are
//! created or removed as the table places them.

use std::collections::HashSet;
use std::sync::{Arc, RwLock};

use routing::{GroupId, NodeId, RoutingTable};
use tokio::sync::watch;
use transport::{AddressBook, NodeTransport};

use crate::apply::Applying;
use crate::error::CoordinatorError;
use crate::lock;
use crate::multiraft::{MultiRaft, Token};

/// The groups the QUIC endpoint accepts streams for, shared with its stream filter.
pub(super) type KnownGroups = Arc<RwLock<HashSet<GroupId>>>;

/// What the driver shares about placement with the handle and the transport.
pub(super) struct Placement {
    /// The table requests are routed by, with the leader hints this node saw.
    routing: Arc<RwLock<RoutingTable>>,
    /// Its version, for handles waiting on a newer table.
    version: watch::Sender<u64>,
    /// The meta group applied a new table that this node has not acted on yet.
    table_pending: bool,
    known: Option<KnownGroups>,
    address_book: AddressBook,
}

impl Placement {
    pub(super) fn new(
        routing: Arc<RwLock<RoutingTable>>,
        version: watch::Sender<u64>,
        known: Option<KnownGroups>,
        address_book: AddressBook,
    ) -> Self {
        Self {
            routing,
            version,
            table_pending: false,
            known,
            address_book,
        }
    }

    /// The leader this node last saw for `group`.
    pub(super) fn leader_hint(&self, group: GroupId) -> Option<NodeId> {
        lock::read(&self.routing).leader_hint(group)
    }

    /// Records `group`'s new leader for routing.
    pub(super) fn set_leader_hint(&self, group: GroupId, leader: Option<NodeId>) {
        let _ = lock::write(&self.routing).set_leader_hint(group, leader);
    }

    /// Acts on a new routing table from the meta group: publishes it, learns addresses, and
    /// creates or removes this node's replicas as it places them. Returns the proposals whose
    /// outcome this node lost track of (their group was removed here). Call between cycles:
    /// creating a replica writes to the store on its own.
    ///
    /// Only once the meta group has applied everything this node knows committed: a node
    /// replaying its meta log after a restart must not act on an old table (it would delete a
    /// replica that a later version placed here again).
    pub(super) fn reconcile(
        &mut self,
        core: &mut MultiRaft,
        state_machine: &mut Applying,
    ) -> Result<Vec<Token>, CoordinatorError> {
        if let Some(table) = state_machine.take_table_change() {
            self.table_pending = true;
            self.publish(table);
        }
        if !self.table_pending || !core.meta_caught_up() {
            return Ok(Vec::new());
        }
        self.table_pending = false;
        let me = core.id();
        let table = state_machine.table();
        for (node, address) in table.members() {
            if node == me || address.is_empty() {
                continue;
            }
            match address.parse() {
                Ok(addr) => {
                    self.address_book.insert(node, addr);
                }
                Err(error) => tracing::warn!(%node, address, %error, "unusable member address"),
            }
        }
        let lost = core.place_replicas(table)?;
        if let Some(known) = &self.known {
            *lock::write(known) = core.groups().collect();
        }
        Ok(lost)
    }

    /// Makes `table` the one proposals are routed by, keeping the leader hints this node saw.
    fn publish(&mut self, mut table: RoutingTable) {
        let version = table.version();
        {
            let mut routing = lock::write(&self.routing);
            for (group, placement) in routing.groups() {
                if let Some(leader) = placement.leader_hint {
                    let _ = table.set_leader_hint(group, Some(leader));
                }
            }
            *routing = table;
        }
        self.version.send_replace(version);
    }
}

/// The endpoint hears only nodes of the cluster the routing table names (for a node still
/// joining: the running nodes its configuration listed), and none it revokes: checked after
/// every handshake, and again on live connections each time a new table applies.
pub(super) fn admit_by_routing(
    transport: &Arc<dyn NodeTransport>,
    routing: &Arc<RwLock<RoutingTable>>,
    mut versions: watch::Receiver<u64>,
) {
    let table = routing.clone();
    transport.set_peer_admission(Some(Arc::new(move |peer| {
        let table = lock::read(&table);
        !table.is_node_revoked(peer) && table.is_member(peer)
    })));
    let revocations = |table: &RoutingTable| transport::Revocations {
        nodes: table.revoked_nodes().iter().copied().collect(),
        // Routing keeps serials without leading zero bytes; a certificate's DER integer has
        // one when the high bit is set.
        serials: table
            .revoked_serials()
            .iter()
            .flat_map(|s| [s.clone(), [&[0u8][..], s].concat()])
            .collect(),
    };
    transport.set_revocations(revocations(&lock::read(routing)));
    let (transport, routing) = (Arc::downgrade(transport), routing.clone());
    tokio::spawn(async move {
        while versions.changed().await.is_ok() {
            let Some(transport) = transport.upgrade() else {
                return;
            };
            let revoked = revocations(&lock::read(&routing));
            transport.set_revocations(revoked);
            transport.recheck_admission();
        }
    });
}
