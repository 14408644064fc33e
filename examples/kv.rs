//! A replicated key-value map on Pontoon: a database author's first read.
//!
//! Three nodes in one process, over QUIC with mutual TLS on loopback. Run it with
//! `cargo run --example kv` (add `-- --keys 1000` for more writes).

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use clap::Parser;
use pontoon::certs::ClusterCa;
use pontoon::{
    GroupId, Node, NodeConfig, NodeId, RequestError, RoutingTable, StateMachine, StateMachineError,
};

// 1. The state machine: what your database replicates. Here a map per group; a command is
//    `key=value`, the response the previous value. Clones share the data, so the copy the
//    application keeps can read what the node applies.
#[derive(Clone, Default)]
struct Map(Arc<Mutex<HashMap<GroupId, BTreeMap<String, String>>>>);

impl Map {
    fn get(&self, group: GroupId, key: &str) -> Option<String> {
        self.0.lock().ok()?.get(&group)?.get(key).cloned()
    }
}

impl StateMachine for Map {
    fn apply(
        &mut self,
        group: GroupId,
        _index: u64,
        command: &[u8],
    ) -> Result<Vec<u8>, StateMachineError> {
        let text = std::str::from_utf8(command)?;
        let (key, value) = text.split_once('=').ok_or("command is not key=value")?;
        let mut maps = self.0.lock().map_err(|_| "poisoned")?;
        let previous = maps
            .entry(group)
            .or_default()
            .insert(key.to_string(), value.to_string());
        Ok(previous.unwrap_or_default().into_bytes())
    }

    fn snapshot(&mut self, group: GroupId) -> Result<Vec<u8>, StateMachineError> {
        let maps = self.0.lock().map_err(|_| "poisoned")?;
        let pairs: Vec<String> = maps
            .get(&group)
            .into_iter()
            .flatten()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        Ok(pairs.join("\n").into_bytes())
    }

    fn restore(&mut self, group: GroupId, snapshot: &[u8]) -> Result<(), StateMachineError> {
        let mut map = BTreeMap::new();
        for line in std::str::from_utf8(snapshot)?.lines() {
            let (k, v) = line.split_once('=').ok_or("malformed snapshot line")?;
            map.insert(k.to_string(), v.to_string());
        }
        self.0.lock().map_err(|_| "poisoned")?.insert(group, map);
        Ok(())
    }
}

#[derive(Parser)]
struct Args {
    /// Keys to write.
    #[arg(long, default_value_t = 100)]
    keys: usize,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let args = Args::parse();
    let data = tempfile::tempdir()?;

    // 2. Identity: one cluster CA; each node's certificate carries its NodeId.
    //    (On real machines: `pontoon certs init` / `pontoon certs issue`.)
    let ca = ClusterCa::generate("example cluster")?;
    let ids = [NodeId(1), NodeId(2), NodeId(3)];

    // 3. Routing: 1024 vShards over 16 groups, three replicas each. Every node gets the same table.
    let routing = RoutingTable::uniform(1024, 16, &ids, 3)?;

    // 4. Start the nodes. Port 0 picks a free port; peers learn it through the address book.
    let mut nodes = Vec::new();
    let mut maps = Vec::new();
    for id in ids {
        let identity = ca.issue_node(id, &["127.0.0.1".into()])?;
        let config = NodeConfig::new(
            id,
            SocketAddr::from(([127, 0, 0, 1], 0)),
            data.path().join(id.to_string()),
        )
        .tick_interval(Duration::from_millis(20));
        let map = Map::default();
        nodes.push(Node::start(config, &identity, routing.clone(), map.clone()).await?);
        maps.push(map);
    }
    for a in &nodes {
        for b in &nodes {
            if a.id() != b.id() {
                a.set_peer_address(b.id(), b.local_addr());
            }
        }
    }

    // 5. Write. A proposal goes to its key's group; any node takes it (a follower forwards it
    //    to the group's leader), and the answer comes after commit and apply. NotLeader (with
    //    forwarding turned off, or no leader elected by the deadline) names the leader to retry
    //    on, when one is known.
    for i in 0..args.keys {
        let (key, value) = (format!("user:{i}"), format!("name-{i}"));
        let mut node = &nodes[i % nodes.len()];
        loop {
            match node
                .propose(key.as_bytes(), format!("{key}={value}").into_bytes())
                .await
            {
                Ok(_previous) => break,
                Err(RequestError::NotLeader {
                    leader: Some(leader),
                    ..
                }) => {
                    node = nodes
                        .iter()
                        .find(|n| n.id() == leader)
                        .ok_or("unknown leader")?;
                }
                // Anything else that certainly did not take effect (no leader yet, peers not
                // heard yet as the cluster starts, a dropped proposal) is safe to retry.
                Err(e) if e.did_not_take_effect() => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => return Err(e.into()),
            }
        }
    }
    println!("wrote {} keys", args.keys);

    // 6. Linearizable read on any replica: a read barrier, then read the local state.
    let key = format!("user:{}", args.keys - 1);
    let group = routing.group_for_key(key.as_bytes());
    for (node, map) in nodes.iter().zip(&maps) {
        if routing
            .replicas(group)
            .is_some_and(|r| r.contains(&node.id()))
        {
            node.read_index(group).await?;
            println!("{} reads {key} = {:?}", node.id(), map.get(group, &key));
            assert_eq!(
                map.get(group, &key).as_deref(),
                Some(format!("name-{}", args.keys - 1).as_str())
            );
        }
    }

    // 7. Shut down: pending requests fail (ShuttingDown when they never reached raft, so they
    //    did not take effect; StoppedInFlight, outcome unknown, when they did). The data stays
    //    on disk.
    for node in &nodes {
        node.shutdown().await;
    }
    Ok(())
}
