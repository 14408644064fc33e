//! `KvClient` on a loaded machine: one connection per node shared by concurrent calls and
//! redialled once when lost, a connection that outlives a multi-second stall of the node, and
//! compare-and-set through the client.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly on purpose

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use certs::{ClientRole, ClusterCa};
use coordinator::{Node, NodeConfig};
use pontoon_service::{KvClient, KvService, KvStateMachine};
use routing::{NodeId, RoutingTable};
use tokio::task::JoinSet;

const DEADLINE: Duration = Duration::from_secs(30);

/// Closes every client connection the node accepted so far, as a node restart or a network
/// path change would end them.
type Closer = Arc<Mutex<Vec<Box<dyn Fn() + Send>>>>;

/// A one-node cluster serving the KV service at `listen`, on the runtime this is called on.
async fn serve(ca: &ClusterCa, dir: &Path, listen: SocketAddr) -> Node {
    serve_closable(ca, dir, listen).await.0
}

async fn serve_closable(ca: &ClusterCa, dir: &Path, listen: SocketAddr) -> (Node, Closer) {
    let id = NodeId(1);
    let identity = ca.issue_node(id, &["127.0.0.1".to_string()]).unwrap();
    let routing = RoutingTable::uniform(16, 2, &[id], 1).unwrap();
    let mut config = NodeConfig::new(id, listen, dir).tick_interval(Duration::from_millis(10));
    config.transport = config.transport.accept_clients(true);
    let state = KvStateMachine::new();
    let node = Node::start(config, &identity, routing, state.clone())
        .await
        .unwrap();
    let addr = node.local_addr();
    let mut clients = node.take_client_connections().unwrap();
    let service = KvService::new(node.clone(), state, BTreeMap::from([(id, addr)]));
    let closers: Closer = Arc::default();
    let closing = closers.clone();
    tokio::spawn(async move {
        while let Some(client) = clients.recv().await {
            let connection = client.connection.clone();
            closing
                .lock()
                .unwrap()
                .push(Box::new(move || connection.close(0u32.into(), b"gone")));
            tokio::spawn(service.clone().serve(client));
        }
    });
    (node, closers)
}

fn client(ca: &ClusterCa) -> Arc<KvClient> {
    let identity = ca.issue_client_with_role("app", ClientRole::Kv).unwrap();
    Arc::new(KvClient::new(&identity).unwrap())
}

/// Client connections the node has accepted so far.
async fn accepted(node: &Node) -> u64 {
    node.status().await.unwrap().transport.client_connections
}

/// `count` puts at once through `client`, each retried until the node answers it.
async fn concurrent_puts(client: &Arc<KvClient>, addr: SocketAddr, round: &str, count: usize) {
    let mut puts = JoinSet::new();
    for i in 0..count {
        let client = client.clone();
        let key = format!("{round}-{i}");
        puts.spawn(async move {
            let start = tokio::time::Instant::now();
            while let Err(e) = client.put(addr, key.as_bytes(), b"v").await {
                assert!(start.elapsed() < DEADLINE, "{key} never succeeded: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        });
    }
    puts.join_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_calls_share_one_connection_and_redial_it_once_when_it_is_lost() {
    const CALLS: usize = 64;
    let dir = tempfile::tempdir().unwrap();
    let ca = ClusterCa::generate("shared-connection").unwrap();
    let (node, close_clients) =
        serve_closable(&ca, dir.path(), "127.0.0.1:0".parse().unwrap()).await;
    let addr = node.local_addr();
    let client = client(&ca);
    concurrent_puts(&client, addr, "first", CALLS).await;
    assert_eq!(
        accepted(&node).await,
        1,
        "{CALLS} concurrent calls dialled once"
    );

    // The node ends the connection: the client's is lost under it.
    for close in close_clients.lock().unwrap().iter() {
        close();
    }
    concurrent_puts(&client, addr, "second", CALLS).await;
    assert_eq!(
        accepted(&node).await,
        2,
        "{CALLS} concurrent calls found the connection lost and redialled it once"
    );
    let key = b"first-0".as_slice();
    assert_eq!(
        client.get(addr, key).await.unwrap().as_deref(),
        Some(&b"v"[..])
    );
    node.shutdown().await;
}

#[test]
fn a_connection_outlives_a_node_stalled_for_several_seconds() {
    const STALL: Duration = Duration::from_secs(4);
    let dir = tempfile::tempdir().unwrap();
    let ca = ClusterCa::generate("stall").unwrap();
    // The node on a runtime of its own, one thread, so one blocked task stalls all of it as a
    // starved CPU would.
    let node_rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let node_rt = Arc::new(node_rt);
    let (node_handle, stop) = {
        let (tx, rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let rt = node_rt.clone();
        let path = dir.path().to_owned();
        let ca_pem = (ca.cert_pem().to_owned(), ca.key_pem());
        let thread = std::thread::spawn(move || {
            rt.block_on(async move {
                let ca = ClusterCa::from_pem(&ca_pem.0, &ca_pem.1).unwrap();
                let node = serve(&ca, &path, "127.0.0.1:0".parse().unwrap()).await;
                tx.send((node.clone(), tokio::runtime::Handle::current()))
                    .unwrap();
                let _ = stop_rx.await;
                node.shutdown().await;
            });
        });
        let (node, handle) = rx.recv().unwrap();
        ((node, handle, thread), stop_tx)
    };
    let (node, handle, thread) = node_handle;
    let addr = node.local_addr();
    let client_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    client_rt.block_on(async {
        let client = client(&ca);
        concurrent_puts(&client, addr, "before", 1).await;
        // The node's only thread is blocked: no keep-alive, no answer, for STALL.
        handle.spawn(async move { std::thread::sleep(STALL) });
        tokio::time::sleep(Duration::from_millis(100)).await;
        let started = tokio::time::Instant::now();
        client
            .put(addr, b"during", b"stall")
            .await
            .expect("a request sent during the stall is answered after it on the same connection");
        assert!(started.elapsed() >= STALL / 2, "the node really stalled");
        let status = {
            let node = node.clone();
            handle.spawn(async move { node.status().await.unwrap() })
        };
        let status = status.await.unwrap();
        assert_eq!(
            status.transport.client_connections, 1,
            "the connection survived the stall"
        );
        client.close().await;
    });
    stop.send(()).unwrap();
    thread.join().unwrap();
    drop(node);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compare_and_set_changes_a_key_only_from_the_value_expected() {
    let dir = tempfile::tempdir().unwrap();
    let ca = ClusterCa::generate("cas").unwrap();
    let node = serve(&ca, dir.path(), "127.0.0.1:0".parse().unwrap()).await;
    let addr = node.local_addr();
    let client = client(&ca);
    concurrent_puts(&client, addr, "ready", 1).await;
    assert_eq!(
        client
            .compare_and_set(addr, b"k", None, b"one")
            .await
            .unwrap(),
        Ok(()),
        "set when absent"
    );
    assert_eq!(
        client
            .compare_and_set(addr, b"k", Some(b"zero"), b"two")
            .await
            .unwrap(),
        Err(Some(b"one".to_vec())),
        "a mismatch returns what it found"
    );
    assert_eq!(
        client
            .compare_and_set(addr, b"k", Some(b"one"), b"two")
            .await
            .unwrap(),
        Ok(())
    );
    assert_eq!(
        client.delete(addr, b"k").await.unwrap().as_deref(),
        Some(&b"two"[..])
    );
    assert_eq!(client.get(addr, b"k").await.unwrap(), None);
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_in_a_session_sent_again_is_answered_and_not_applied_twice() {
    let dir = tempfile::tempdir().unwrap();
    let ca = ClusterCa::generate("sessions").unwrap();
    let node = serve(&ca, dir.path(), "127.0.0.1:0".parse().unwrap()).await;
    let addr = node.local_addr();
    let client = client(&ca);
    concurrent_puts(&client, addr, "ready", 1).await;
    // The same request twice, as a client resending after a lost connection would: the
    // second copy answers with the first's response (the value before it) and changes
    // nothing, though another write came between.
    let session = coordinator::ClientSession::new();
    let first = session.command();
    let put = pontoon_service::KvRequest::put(&b"k"[..], &b"one"[..]).in_session(&first);
    let answer = client.call(addr, None, &put).await.unwrap();
    assert_eq!(answer.value(), None, "k was absent");
    assert_eq!(
        client.put(addr, b"k", b"two").await.unwrap().as_deref(),
        Some(&b"one"[..])
    );
    let again = client.call(addr, None, &put).await.unwrap();
    assert_eq!(
        again.value(),
        None,
        "the resent put answers as the first did"
    );
    assert_eq!(
        client.get(addr, b"k").await.unwrap().as_deref(),
        Some(&b"two"[..]),
        "the resent put was not applied again"
    );
    node.shutdown().await;
}
