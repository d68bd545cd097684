//! One cancellation signal that every long-lived task observes.

use tokio::sync::watch;

/// Cloneable shutdown signal: `trigger` once, `wait` anywhere.
#[derive(Clone)]
pub struct Shutdown {
    sender: watch::Sender<bool>,
    receiver: watch::Receiver<bool>,
}

impl Shutdown {
    /// A signal not yet triggered.
    pub fn new() -> Shutdown {
        let (sender, receiver) = watch::channel(false);
        Shutdown { sender, receiver }
    }

    /// Tells every waiter to stop.
    pub fn trigger(&self) {
        self.sender.send_replace(true);
    }

    /// Whether the signal was triggered.
    pub fn is_triggered(&self) -> bool {
        *self.receiver.borrow()
    }

    /// Completes when the signal is triggered.
    pub async fn wait(&self) {
        let mut receiver = self.receiver.clone();
        // An error means the sender is gone, which also means shutdown.
        let _ = receiver.wait_for(|triggered| *triggered).await;
    }
}

impl Default for Shutdown {
    fn default() -> Shutdown {
        Shutdown::new()
    }
}
