//! Outgoing notifications (`ci.notify`): for each configured URL, the events it asked for —
//! `transfer_done`, `transfer_failed`, `environment_failed`, `ci_finished` — as signed JSON.
//! Each target has its own queue (bounded: the oldest is dropped, with a warning, when a
//! target stays down) and delivers in order, retrying with back-off: 1, 2, 4, 8, 16 and 32 s.
//! A 2xx answer delivers; a 4xx other than 408 and 429 will not get better and is dropped.
//!
//! Headers: `X-Aienv-Event`, `X-Aienv-Delivery` (a UUID, the same on every retry),
//! `X-Aienv-Signature-256: sha256=<HMAC-SHA256 of the body>` when the target has a secret.
//! Body: `{"event", "delivery", "at", "node": {"id", "name"}, "data"}`.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use aienv_actors::ci::CiState;
use aienv_actors::event_bus::EventBus;
use aienv_actors::events::NodeEvent;
use aienv_actors::runtime_supervisor::EnvState;
use aienv_actors::shutdown::Shutdown;
use aienv_actors::transfer_queue::JobState;
use serde_json::{json, Value};
use tokio::sync::Notify;
use uuid::Uuid;

use crate::config::{NotifyTarget, NOTIFY_EVENTS};

/// Deliveries waiting per target.
const QUEUE: usize = 1000;
/// Waits between attempts.
const BACKOFF: [u64; 6] = [1, 2, 4, 8, 16, 32];

/// One notification to send.
#[derive(Debug, Clone)]
struct Delivery {
    id: Uuid,
    event: &'static str,
    body: Arc<Vec<u8>>,
}

/// Starts watching the bus when there is anywhere to send to.
pub fn start(
    targets: &[NotifyTarget],
    bus: &EventBus,
    node_name: &str,
    node_id: Uuid,
    shutdown: Shutdown,
) {
    if targets.is_empty() {
        return;
    }
    let client = match crate::tls::web_client_config() {
        Ok(config) => awc::Client::builder()
            .timeout(Duration::from_secs(10))
            .connector(awc::Connector::new().rustls_0_23(Arc::new(config)))
            .finish(),
        Err(error) => {
            tracing::error!(%error, "no TLS client for notifications; they are off");
            return;
        }
    };
    let mut queues = Vec::new();
    for target in targets {
        let queue = Arc::new(Queue::default());
        queues.push((target.clone(), queue.clone()));
        actix_rt::spawn(deliver_loop(
            target.clone(),
            queue,
            client.clone(),
            shutdown.clone(),
        ));
    }
    let mut events = bus.subscribe();
    let node = json!({"id": node_id, "name": node_name});
    actix_rt::spawn(async move {
        let mut last: HashMap<Uuid, &'static str> = HashMap::new();
        loop {
            let envelope = tokio::select! {
                received = events.recv() => match received {
                    Ok(envelope) => envelope,
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(missed)) => {
                        tracing::warn!(missed, "notifications missed events (the bus ran ahead)");
                        continue;
                    }
                    Err(_) => return,
                },
                _ = shutdown.wait() => return,
            };
            let Some((key, event, data)) = notable(&envelope.event) else {
                continue;
            };
            // Each transition once (progress events repeat a state), and only the
            // transitions a target can ask for.
            if last.insert(key, event) == Some(event) || !NOTIFY_EVENTS.contains(&event) {
                continue;
            }
            if last.len() > 10_000 {
                last.clear();
            }
            let id = Uuid::new_v4();
            let body = json!({
                "event": event,
                "delivery": id,
                "at": envelope.at,
                "node": node,
                "data": data,
            });
            let delivery = Delivery {
                id,
                event,
                body: Arc::new(serde_json::to_vec(&body).expect("JSON encodes")),
            };
            for (target, queue) in &queues {
                if target.events.is_empty() || target.events.iter().any(|e| e == event) {
                    queue.push(delivery.clone(), &target.url);
                }
            }
        }
    });
}

/// The notification an event makes, if any: its subject's id, the event name and the data.
fn notable(event: &NodeEvent) -> Option<(Uuid, &'static str, Value)> {
    fn to_value(dto: impl serde::Serialize) -> Value {
        serde_json::to_value(dto).expect("DTOs encode")
    }
    match event {
        NodeEvent::TransferChanged(job) => {
            let name = match job.state {
                JobState::Done => "transfer_done",
                JobState::Failed => "transfer_failed",
                _ => "transfer_running",
            };
            Some((
                job.id,
                name,
                to_value(crate::api::TransferDto::from(&**job)),
            ))
        }
        NodeEvent::RuntimeChanged(status) => {
            let name = if status.state == EnvState::Failed {
                "environment_failed"
            } else {
                "environment_other"
            };
            // One key per environment: the workspace's id mixed with the environment's name.
            let digest = blake3::hash(status.environment.as_bytes());
            let mut bytes = *status.workspace_id.as_bytes();
            for (byte, mix) in bytes.iter_mut().zip(digest.as_bytes()) {
                *byte ^= mix;
            }
            let key = Uuid::from_bytes(bytes);
            Some((
                key,
                name,
                to_value(crate::api::EnvironmentStatusDto::from(&**status)),
            ))
        }
        NodeEvent::CiRunChanged(run) => {
            let name = if run.state.is_finished() {
                "ci_finished"
            } else if run.state == CiState::Queued {
                "ci_queued"
            } else {
                "ci_running"
            };
            Some((run.id, name, to_value(crate::api::CiRunDto::from(&**run))))
        }
        _ => None,
    }
}

/// A target's waiting deliveries.
#[derive(Default)]
struct Queue {
    items: std::sync::Mutex<VecDeque<Delivery>>,
    ready: Notify,
}

impl Queue {
    fn push(&self, delivery: Delivery, url: &str) {
        let mut items = self.items.lock().unwrap_or_else(|e| e.into_inner());
        if items.len() >= QUEUE {
            let dropped = items.pop_front();
            tracing::warn!(%url, dropped = ?dropped.map(|d| d.event), "notification queue full; dropped the oldest");
        }
        items.push_back(delivery);
        self.ready.notify_one();
    }

    fn front(&self) -> Option<Delivery> {
        self.items
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .front()
            .cloned()
    }

    fn pop(&self) {
        self.items
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .pop_front();
    }
}

async fn deliver_loop(
    target: NotifyTarget,
    queue: Arc<Queue>,
    client: awc::Client,
    shutdown: Shutdown,
) {
    loop {
        let Some(delivery) = queue.front() else {
            tokio::select! {
                _ = queue.ready.notified() => continue,
                _ = shutdown.wait() => return,
            }
        };
        let mut attempt = 0;
        loop {
            match send(&target, &client, &delivery).await {
                Ok(()) => break,
                Err((permanent, why)) => {
                    let Some(wait) = BACKOFF.get(attempt).filter(|_| !permanent) else {
                        tracing::warn!(url = %target.url, event = delivery.event, delivery = %delivery.id, %why, "notification dropped");
                        break;
                    };
                    tracing::info!(url = %target.url, event = delivery.event, %why, retry_in_s = wait, "notification failed; retrying");
                    attempt += 1;
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(*wait)) => {}
                        _ = shutdown.wait() => return,
                    }
                }
            }
        }
        queue.pop();
    }
}

/// One attempt; `Err((permanent, why))`.
async fn send(
    target: &NotifyTarget,
    client: &awc::Client,
    delivery: &Delivery,
) -> Result<(), (bool, String)> {
    let mut request = client
        .post(&target.url)
        .insert_header(("Content-Type", "application/json"))
        .insert_header(("User-Agent", concat!("aienv/", env!("CARGO_PKG_VERSION"))))
        .insert_header(("X-Aienv-Event", delivery.event))
        .insert_header(("X-Aienv-Delivery", delivery.id.to_string()));
    let secret = match (&target.secret, &target.secret_file) {
        (Some(secret), _) => Some(secret.as_bytes().to_vec()),
        (None, Some(path)) => Some(
            std::fs::read_to_string(path)
                .map_err(|e| (false, format!("secret_file {}: {e}", path.display())))?
                .trim_end_matches(['\n', '\r'])
                .as_bytes()
                .to_vec(),
        ),
        (None, None) => None,
    };
    if let Some(secret) = secret {
        request = request.insert_header((
            "X-Aienv-Signature-256",
            crate::http::webhook::sign(&secret, &delivery.body),
        ));
    }
    let response = request
        .send_body(delivery.body.to_vec())
        .await
        .map_err(|e| (false, e.to_string()))?;
    let status = response.status();
    if status.is_success() {
        Ok(())
    } else {
        let permanent =
            status.is_client_error() && status.as_u16() != 408 && status.as_u16() != 429;
        Err((permanent, format!("answered {status}")))
    }
}
