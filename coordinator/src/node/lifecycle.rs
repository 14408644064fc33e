//! How a node leaves service and tells what happens to it: [`Node::subscribe`] and
//! [`Node::drain`] (the calls that only watch or end a node's life, beside the request API in
//! `handle`).

use std::time::Duration;

use tokio::sync::oneshot;

use super::handle::Command;
use super::{Drained, Node, NodeEvent};

impl Node {
    /// Subscribes to what happens on this node from now on: leader and role changes of its
    /// groups, groups going quiet or waking, peers declared down or heard again, and last of
    /// all [`NodeEvent::Stopped`] with the reason (a fatal error or a shutdown).
    ///
    /// The channel is bounded
    /// ([`NodeConfig::event_capacity`](crate::NodeConfig::event_capacity)): a subscriber
    /// that falls further behind gets
    /// [`RecvError::Lagged`](tokio::sync::broadcast::error::RecvError::Lagged) and misses
    /// the oldest events; read [`Node::status`] then to resynchronise.
    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<NodeEvent> {
        self.events.subscribe()
    }

    /// Leaves the cluster's service gracefully, then shuts down: stops taking new proposals
    /// (they fail with [`RequestError::ShuttingDown`](crate::RequestError::ShuttingDown),
    /// which did not take effect), moves every leadership it holds to a caught-up voter,
    /// lets the requests in flight finish, and then [`Node::shutdown`]s. Whatever is not done by `deadline` is cut short by the
    /// shutdown: leaderships still held then move by election, requests still waiting fail
    /// as the shutdown says. Reads are still served while it drains.
    pub async fn drain(&self, deadline: Duration) -> Drained {
        let until = tokio::time::Instant::now() + deadline;
        let mut report = Drained {
            led_at_start: 0,
            still_leading: 0,
            in_flight_at_stop: 0,
        };
        let mut first = true;
        loop {
            let (reply, rx) = oneshot::channel();
            if self.commands.send(Command::Drain { reply }).await.is_err() {
                break;
            }
            let Ok(progress) = rx.await else { break };
            if first {
                report.led_at_start = progress.leading;
                first = false;
            }
            report.still_leading = progress.leading;
            report.in_flight_at_stop = progress.in_flight;
            if progress.leading == 0 && progress.in_flight == 0 {
                break;
            }
            let now = tokio::time::Instant::now();
            if now >= until {
                break;
            }
            tokio::time::sleep((until - now).min(Duration::from_millis(20))).await;
        }
        tracing::info!(node = %self.id, ?report, "drained; shutting down");
        self.shutdown().await;
        report
    }
}
