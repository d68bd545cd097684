//! The node's one typed event bus.
//!
//! Every actor publishes its [`NodeEvent`]s here; the WebSocket gateway, the CLI's watch views
//! and the tests subscribe. Each event gets a node-wide sequence number. An actor that serves
//! reads from a published view stamps that view with the sequence number of the event that
//! produced it, inside [`EventBus::publish`], so a subscriber that takes a view after
//! subscribing can drop the events the view already contains and miss none.
//!
//! The buffer is bounded: a subscriber that falls behind gets `Lagged` from its receiver and
//! must resnapshot; it never slows the publishers.

use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use tokio::sync::broadcast;

use crate::events::NodeEvent;

/// How many events a subscriber may fall behind before it must resnapshot.
pub const DEFAULT_CAPACITY: usize = 1024;

/// An event with its place in the node's history.
#[derive(Debug, Clone)]
pub struct Envelope {
    /// Node-wide sequence number, starting at 1, strictly increasing in publication order.
    pub seq: u64,
    /// When the event was published.
    pub at: DateTime<Utc>,
    /// The event.
    pub event: NodeEvent,
}

/// Cloneable publisher/subscriber handle to the bus.
#[derive(Clone)]
pub struct EventBus {
    sender: broadcast::Sender<Arc<Envelope>>,
    /// Makes "take the next number, update the view, send" one step, so the order of sequence
    /// numbers is the order in which subscribers receive events.
    last_seq: Arc<Mutex<u64>>,
}

impl EventBus {
    /// A bus whose subscribers may lag `capacity` events behind.
    pub fn new(capacity: usize) -> EventBus {
        let (sender, _) = broadcast::channel(capacity);
        EventBus {
            sender,
            last_seq: Arc::new(Mutex::new(0)),
        }
    }

    /// Publishes `event`. `before_send` runs with the event's sequence number before any
    /// subscriber can see the event; actors publish their new read view there.
    pub fn publish(&self, event: NodeEvent, before_send: impl FnOnce(u64)) -> u64 {
        let mut last = self.last_seq.lock().unwrap_or_else(|e| e.into_inner());
        *last += 1;
        let seq = *last;
        before_send(seq);
        // No subscriber is not an error: events are for whoever listens now.
        let _ = self.sender.send(Arc::new(Envelope {
            seq,
            at: Utc::now(),
            event,
        }));
        seq
    }

    /// Sequence number of the last published event (0 before the first).
    pub fn last_seq(&self) -> u64 {
        *self.last_seq.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A receiver of every event published from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Envelope>> {
        self.sender.subscribe()
    }

    /// Every event published from now on as a stream, for an actor's `add_stream` (events a
    /// slow actor missed are skipped: actors react to changes, they keep no log).
    pub fn stream(&self) -> impl futures_util::Stream<Item = Arc<Envelope>> + 'static {
        futures_util::stream::unfold(self.subscribe(), |mut receiver| async move {
            loop {
                match receiver.recv().await {
                    Ok(envelope) => return Some((envelope, receiver)),
                    Err(broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(broadcast::error::RecvError::Closed) => return None,
                }
            }
        })
    }
}

impl Default for EventBus {
    fn default() -> EventBus {
        EventBus::new(DEFAULT_CAPACITY)
    }
}
