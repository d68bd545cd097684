//! The PeerRegistry actor: every known peer, its state, resources and catalog.
//!
//! Data flow: the Announcer sends [`PeerSeen`] for each valid announcement and [`PeerGoodbye`]
//! for each goodbye; static peers (routed networks, VPNs) are polled over HTTP. When a peer's
//! announced catalog digest differs from the catalog we hold, the registry fetches it through
//! the [`PeerClient`] the HTTP layer provides (this crate knows no HTTP), as a future run on
//! the actor's context: it never blocks the actor. A timer moves silent peers
//! `online → stale → gone`. Readers use the published [`PeersView`].
//!
//! Every peer has a key. An announcement or a static peer's answer is taken only when its key
//! is the one the [`KeyBook`] holds for its id (or may be pinned for it: derived from a key
//! id, or a legacy id seen for the first time); any other key is a conflict, counted and
//! shown, and never replaces what is known. The catalog is fetched over mutual TLS from the
//! pinned key only. Which peers are trusted is a person's decision ([`TrustPeer`],
//! [`UntrustPeer`]), kept in the same book.

mod keys;
mod view;

pub use keys::{KeyBook, KeyBookError, KeyCheck, TrustedPeer, MAX_PINS};
pub use view::{
    Conflict, ConflictReport, NetworkEntry, PeerInfo, PeerSource, PeerState, PeersView,
};

use std::collections::HashMap;
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use chrono::Utc;
use tokio::sync::watch;
use uuid::Uuid;

use crate::catalog::CatalogEntry;
use crate::discovery::wire::{Announcement, ResourceSummary, Scheme};
use crate::event_bus::EventBus;
use crate::events::NodeEvent;
use crate::identity::{KeyFingerprint, KeyIdError};

/// A peer as a caller reaches it: its API's base URL and the key it must present there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerEndpoint {
    /// `https://address:port`.
    pub url: String,
    /// The pinned key.
    pub key: KeyFingerprint,
}

/// What `GET /api/v1/node` of a static peer says.
#[derive(Debug, Clone)]
pub struct RemoteNode {
    /// Node id.
    pub id: Uuid,
    /// Node name.
    pub name: String,
    /// Resources.
    pub resources: ResourceSummary,
    /// Catalog digest.
    pub catalog_digest: String,
    /// Shared workspaces.
    pub shared_workspaces: u32,
    /// Uptime.
    pub uptime_seconds: u64,
    /// The key the node presented (whatever it was).
    pub key: KeyFingerprint,
}

/// A boxed local future (the HTTP client is not `Send`; it runs on the actor's thread).
pub type LocalFuture<T> = Pin<Box<dyn Future<Output = T>>>;

/// How the registry talks to peers over mutual TLS; implemented by the `aienv` package.
pub trait PeerClient {
    /// `GET {base}/api/v1/catalog` of the node holding `key` (any other key is refused in
    /// the handshake).
    fn catalog(&self, peer: &PeerEndpoint)
        -> LocalFuture<Result<Vec<CatalogEntry>, PeerCallError>>;
    /// `GET {base}/api/v1/node` of a static peer: over a connection that accepts only
    /// `expected` when the configuration names the key, else any key, recorded in the answer
    /// for the registry to check against the id the peer reports.
    fn node(
        &self,
        base_url: &str,
        expected: Option<KeyFingerprint>,
    ) -> LocalFuture<Result<RemoteNode, PeerCallError>>;
}

/// Why a call to a peer failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PeerCallError {
    /// The peer presented another key than the one pinned for it.
    #[error("{message}")]
    KeyMismatch {
        /// The key it presented, when known.
        presented: Option<KeyFingerprint>,
        /// What failed.
        message: String,
    },
    /// Anything else (unreachable, HTTP error, malformed answer).
    #[error("{0}")]
    Failed(String),
}

/// Why trust could not be given or taken.
#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    /// No known peer matches.
    #[error("no peer `{0}` is known; give its key id (from `aienv node` on that machine) to trust it before it is seen")]
    NotFound(String),
    /// Several peers share the name.
    #[error("{count} peers are called `{name}`; give the id or key id of the one to trust")]
    Ambiguous {
        /// The name.
        name: String,
        /// How many.
        count: usize,
    },
    /// The key the person compared is not the peer's.
    #[error("`{peer}` presents key {actual}, not the {expected} you compared: do not trust it")]
    KeyMismatch {
        /// The peer.
        peer: String,
        /// The key it presents.
        actual: KeyFingerprint,
        /// The key given.
        expected: KeyFingerprint,
    },
    /// A typed key id is malformed.
    #[error(transparent)]
    KeyId(#[from] KeyIdError),
    /// This node's own id or key.
    #[error("that is this node itself")]
    Itself,
    /// The database failed.
    #[error(transparent)]
    Database(#[from] KeyBookError),
    /// The registry is not running (the node is stopping).
    #[error("the peer registry is not running")]
    Unavailable,
}

/// Configuration of the PeerRegistry.
#[derive(Debug, Clone)]
pub struct RegistryConfig {
    /// This node's id (never listed as a peer).
    pub node_id: Uuid,
    /// The announce interval; liveness timeouts are multiples of it.
    pub interval: Duration,
    /// `host:port` of peers polled over HTTP.
    pub static_peers: Vec<String>,
    /// This node's own key (never pinned for another id, never trusted).
    pub node_key: KeyFingerprint,
}

struct Peer {
    info: PeerInfo,
    heard: Instant,
    /// (instance, seq) of the last announcement, to ignore stale ones.
    instance: u64,
    fetched_digest: Option<String>,
    fetching: bool,
    retry_at: Option<Instant>,
    backoff: Duration,
    /// When another key last claimed this peer's id.
    conflict_at: Option<Instant>,
}

/// The actor.
pub struct PeerRegistry {
    config: RegistryConfig,
    peers: HashMap<Uuid, Peer>,
    client: Rc<dyn PeerClient>,
    bus: EventBus,
    view: PeersView,
    view_sender: watch::Sender<Arc<PeersView>>,
    keys: KeyBook,
    /// When a conflict event was last published per claimed id (events are rate-limited;
    /// the count is not).
    conflict_events: HashMap<Uuid, Instant>,
}

/// A valid announcement was heard from `address`.
#[derive(Message)]
#[rtype(result = "()")]
pub struct PeerSeen {
    /// What the peer said.
    pub announcement: Announcement,
    /// Where it came from.
    pub address: IpAddr,
}

/// A peer said goodbye.
#[derive(Message)]
#[rtype(result = "()")]
pub struct PeerGoodbye {
    /// The peer.
    pub node_id: Uuid,
    /// Where the goodbye came from: only the address the peer was last heard from may say
    /// it (a goodbye is as unsigned as an announcement).
    pub address: IpAddr,
}

#[derive(Message)]
#[rtype(result = "()")]
struct CatalogFetched {
    id: Uuid,
    digest: String,
    result: Result<Vec<CatalogEntry>, PeerCallError>,
}

#[derive(Message)]
#[rtype(result = "()")]
struct StaticPolled {
    address: String,
    result: Result<RemoteNode, PeerCallError>,
}

/// A person trusts a peer: named by id, key id or name (exactly one known peer), optionally
/// with the key id they compared, which must be the peer's.
#[derive(Message)]
#[rtype(result = "Result<TrustedPeer, TrustError>")]
pub struct TrustPeer {
    /// Id, key id (readable or hex) or name.
    pub peer: String,
    /// The key id the person compared, if they gave it.
    pub confirm_key: Option<KeyFingerprint>,
    /// Who decided.
    pub by: String,
}

/// A person revokes trust.
#[derive(Message)]
#[rtype(result = "Result<TrustedPeer, TrustError>")]
pub struct UntrustPeer {
    /// Id, key id or name (of a trusted peer).
    pub peer: String,
}

const MAX_PEERS: usize = 4096;

impl PeerRegistry {
    fn publish(&mut self, event: impl FnOnce(Arc<PeerInfo>) -> NodeEvent, id: Uuid) {
        let Some(peer) = self.peers.get(&id) else {
            return;
        };
        let info = Arc::new(peer.info.clone());
        self.publish_event(event(info));
    }

    /// Publishes `event` with the view rebuilt first.
    fn publish_event(&mut self, event: NodeEvent) {
        self.view.peers = self.sorted_peers();
        self.view.trusted = Arc::new(self.keys.all_trusted());
        let view = &mut self.view;
        let sender = &self.view_sender;
        self.bus.publish(event, |seq| {
            view.seq = seq;
            sender.send_replace(Arc::new(view.clone()));
        });
    }

    /// Refuses `presented` for `id`: counted, shown on the known peer, told by an event (at
    /// most once per 6 intervals per id, however fast an impostor repeats itself).
    fn conflict(&mut self, report: ConflictReport) {
        self.view.key_conflicts += 1;
        let interval = self.config.interval;
        let mut newly_active = false;
        if let Some(peer) = self.peers.get_mut(&report.id) {
            peer.conflict_at = Some(Instant::now());
            let conflict = peer.info.conflict.get_or_insert(Conflict {
                key: report.presented,
                address: report.address,
                last_seen: Utc::now(),
                count: 0,
                active: false,
            });
            conflict.key = report.presented;
            conflict.address = report.address;
            conflict.last_seen = Utc::now();
            conflict.count += 1;
            newly_active = !conflict.active;
            conflict.active = true;
        }
        let quiet = self
            .conflict_events
            .get(&report.id)
            .is_some_and(|at| at.elapsed() < interval * 6);
        if quiet && !newly_active {
            return;
        }
        tracing::warn!(
            id = %report.id,
            name = %report.name,
            address = %report.address,
            presented = %report.presented,
            expected = ?report.expected.map(|k| k.to_string()),
            via = report.via,
            "refused another key for a known node id"
        );
        if self.conflict_events.len() >= MAX_PEERS {
            self.conflict_events.clear();
        }
        self.conflict_events.insert(report.id, Instant::now());
        let id = report.id;
        self.publish_event(NodeEvent::PeerConflict(Arc::new(report)));
        if newly_active {
            self.publish(NodeEvent::PeerUpdated, id);
        }
    }

    /// Finds the one peer `text` names: a key id, a node id, or a name.
    fn resolve_peer(&self, text: &str) -> Result<(Uuid, KeyFingerprint, String), TrustError> {
        let text = text.trim();
        if let Ok(id) = Uuid::parse_str(text) {
            let peer = self.peers.get(&id).map(|p| &p.info);
            let key = self
                .keys
                .pinned(id)
                .ok_or_else(|| TrustError::NotFound(text.to_string()))?;
            let name = peer.map_or_else(|| id.to_string(), |p| p.name.clone());
            return Ok((id, key, name));
        }
        if let Ok(key) = KeyFingerprint::parse(text) {
            let id = self.keys.id_of(&key);
            let name = self
                .peers
                .get(&id)
                .filter(|p| p.info.key == key)
                .map_or_else(|| id.to_string(), |p| p.info.name.clone());
            return Ok((id, key, name));
        }
        let named: Vec<&Peer> = self
            .peers
            .values()
            .filter(|p| p.info.name == text)
            .collect();
        match named.as_slice() {
            [] => {
                if let Some(trusted) = self.keys.all_trusted().into_iter().find(|t| t.name == text)
                {
                    return Ok((trusted.id, trusted.key, trusted.name));
                }
                // A typed key id with a typo says so rather than "not found".
                if text.len() >= 50 {
                    KeyFingerprint::parse(text)?;
                }
                Err(TrustError::NotFound(text.to_string()))
            }
            [peer] => Ok((peer.info.id, peer.info.key, peer.info.name.clone())),
            many => Err(TrustError::Ambiguous {
                name: text.to_string(),
                count: many.len(),
            }),
        }
    }

    fn sorted_peers(&self) -> Vec<Arc<PeerInfo>> {
        let mut peers: Vec<Arc<PeerInfo>> = self
            .peers
            .values()
            .map(|p| Arc::new(p.info.clone()))
            .collect();
        peers.sort_by(|a, b| (a.name.as_str(), a.id).cmp(&(b.name.as_str(), b.id)));
        peers
    }

    fn seen(
        &mut self,
        ctx: &mut Context<Self>,
        node: SeenNode,
        address: IpAddr,
        source: PeerSource,
    ) {
        if node.id == self.config.node_id {
            return;
        }
        if !self.peers.contains_key(&node.id) && self.peers.len() >= MAX_PEERS {
            tracing::warn!(peer = %node.id, "peer table full; ignoring a new peer");
            return;
        }
        let check = if node.key == self.config.node_key {
            // Our own key under another id: nobody else holds it.
            KeyCheck::Conflict { expected: None }
        } else {
            self.keys.check(node.id, &node.key)
        };
        match check {
            KeyCheck::Pinned => {}
            KeyCheck::New => match self.keys.pin(node.id, node.key) {
                Ok(true) => {}
                Ok(false) => {
                    tracing::warn!(peer = %node.id, "peer key book full; ignoring a new peer");
                    return;
                }
                Err(error) => {
                    tracing::warn!(peer = %node.id, %error, "cannot pin a new peer's key");
                    return;
                }
            },
            KeyCheck::Conflict { expected } => {
                self.conflict(ConflictReport {
                    id: node.id,
                    name: node.name,
                    address,
                    presented: node.key,
                    expected,
                    via: "announcement",
                });
                return;
            }
        }
        let now = Utc::now();
        let (is_new, changed) = match self.peers.get_mut(&node.id) {
            Some(peer) => {
                let info = &mut peer.info;
                let changed = info.state != PeerState::Online
                    || info.name != node.name
                    || info.http_port != node.http_port
                    || info.resources != node.resources
                    || info.shared_workspaces != node.shared_workspaces
                    || info.running_environments != node.running_environments
                    || info.addresses.first() != Some(&address);
                info.state = PeerState::Online;
                info.name = node.name;
                info.http_port = node.http_port;
                info.scheme = node.scheme;
                info.resources = node.resources;
                info.shared_workspaces = node.shared_workspaces;
                info.running_environments = node.running_environments;
                info.uptime_seconds = node.uptime_seconds;
                let current = peer.fetched_digest.as_deref() == Some(node.catalog_digest.as_str());
                let changed = changed || info.catalog_current != current;
                info.catalog_current = current;
                info.catalog_digest = node.catalog_digest;
                info.last_seen = now;
                info.addresses.retain(|a| *a != address);
                info.addresses.insert(0, address);
                info.addresses.truncate(4);
                if node.instance != peer.instance {
                    // Restarted: its catalog may have changed without a digest change.
                    peer.instance = node.instance;
                    peer.fetched_digest = None;
                    info.catalog_current = false;
                }
                peer.heard = Instant::now();
                (false, changed)
            }
            None => {
                self.peers.insert(
                    node.id,
                    Peer {
                        info: PeerInfo {
                            id: node.id,
                            name: node.name,
                            addresses: vec![address],
                            http_port: node.http_port,
                            scheme: node.scheme,
                            state: PeerState::Online,
                            source,
                            last_seen: now,
                            resources: node.resources,
                            shared_workspaces: node.shared_workspaces,
                            running_environments: node.running_environments,
                            uptime_seconds: node.uptime_seconds,
                            catalog_digest: node.catalog_digest,
                            catalog: Arc::new(Vec::new()),
                            catalog_error: None,
                            catalog_current: false,
                            key: node.key,
                            trusted: self
                                .keys
                                .trusted(node.id)
                                .is_some_and(|t| t.key == node.key),
                            conflict: None,
                        },
                        heard: Instant::now(),
                        instance: node.instance,
                        fetched_digest: None,
                        fetching: false,
                        retry_at: None,
                        backoff: Duration::from_millis(250),
                        conflict_at: None,
                    },
                );
                (true, true)
            }
        };
        if is_new {
            let peer = &self.peers[&node.id].info;
            tracing::info!(peer = %peer.name, id = %peer.id, %address, "peer joined");
            self.publish(NodeEvent::PeerJoined, node.id);
        } else if changed {
            self.publish(NodeEvent::PeerUpdated, node.id);
        }
        self.maybe_fetch(ctx, node.id);
    }

    fn maybe_fetch(&mut self, ctx: &mut Context<Self>, id: Uuid) {
        let Some(peer) = self.peers.get_mut(&id) else {
            return;
        };
        let wanted = peer.info.catalog_digest.clone();
        if peer.fetching
            || peer.info.state == PeerState::Gone
            || peer.fetched_digest.as_deref() == Some(wanted.as_str())
            || peer.retry_at.is_some_and(|at| Instant::now() < at)
        {
            return;
        }
        let Some(endpoint) = peer.info.endpoint() else {
            return;
        };
        peer.fetching = true;
        let future = self.client.catalog(&endpoint);
        let digest = wanted;
        ctx.spawn(
            future
                .into_actor(self)
                .map(move |result, _, ctx| ctx.notify(CatalogFetched { id, digest, result })),
        );
    }

    fn tick(&mut self, ctx: &mut Context<Self>) {
        let interval = self.config.interval;
        let mut changed = Vec::new();
        let mut forget = Vec::new();
        let mut ended_conflicts = Vec::new();
        for (id, peer) in self.peers.iter_mut() {
            let silent = peer.heard.elapsed();
            let state = if silent >= interval * 6 {
                PeerState::Gone
            } else if silent >= interval * 3 {
                PeerState::Stale
            } else {
                PeerState::Online
            };
            if peer.info.state == PeerState::Gone && silent >= interval * 60 {
                forget.push(*id);
            }
            // Goodbye marks gone at once; only silence moves a peer forward from here.
            if state as u8 > peer.info.state as u8 {
                peer.info.state = state;
                changed.push((*id, state));
            }
            let conflict_over = peer
                .conflict_at
                .is_some_and(|at| at.elapsed() >= interval * 6);
            if let Some(conflict) = peer.info.conflict.as_mut().filter(|c| c.active) {
                if conflict_over {
                    conflict.active = false;
                    ended_conflicts.push(*id);
                }
            }
        }
        for id in ended_conflicts {
            self.publish(NodeEvent::PeerUpdated, id);
        }
        for (id, state) in changed {
            let name = self.peers[&id].info.name.clone();
            tracing::info!(peer = %name, %id, state = state.as_str(), "peer state changed");
            if state == PeerState::Gone {
                self.publish(NodeEvent::PeerLeft, id);
            } else {
                self.publish(NodeEvent::PeerUpdated, id);
            }
        }
        for id in forget {
            self.peers.remove(&id);
        }
        // Refresh `last_seen` for readers of the view; only changes of state are events.
        self.view.peers = self.sorted_peers();
        self.view_sender.send_replace(Arc::new(self.view.clone()));
        let ids: Vec<Uuid> = self.peers.keys().copied().collect();
        for id in ids {
            self.maybe_fetch(ctx, id);
        }
    }

    fn poll_static(&mut self, ctx: &mut Context<Self>) {
        for address in self.config.static_peers.clone() {
            // `host:port#KEY-ID` pins the key; without it the first key seen is checked
            // against the id the peer reports.
            let (location, expected) = match address.split_once('#') {
                Some((location, key)) => match KeyFingerprint::parse(key) {
                    Ok(key) => (location.to_string(), Some(key)),
                    Err(error) => {
                        tracing::warn!(peer = %address, %error, "static peer: bad key id; not polled");
                        continue;
                    }
                },
                None => (address.clone(), None),
            };
            let base = if location.contains("://") {
                location
            } else {
                format!("https://{location}")
            };
            let future = self.client.node(&base, expected);
            ctx.spawn(
                future
                    .into_actor(self)
                    .map(move |result, _, ctx| ctx.notify(StaticPolled { address, result })),
            );
        }
    }
}

/// The parts of an announcement (or a static peer's `/node`) the registry keeps.
struct SeenNode {
    id: Uuid,
    instance: u64,
    name: String,
    http_port: u16,
    scheme: Scheme,
    resources: ResourceSummary,
    shared_workspaces: u32,
    running_environments: u32,
    uptime_seconds: u64,
    catalog_digest: String,
    key: KeyFingerprint,
}

impl Actor for PeerRegistry {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        let tick = (self.config.interval / 4).max(Duration::from_millis(50));
        ctx.run_interval(tick, |registry, ctx| registry.tick(ctx));
        if !self.config.static_peers.is_empty() {
            self.poll_static(ctx);
            ctx.run_interval(self.config.interval, |registry, ctx| {
                registry.poll_static(ctx)
            });
        }
    }
}

impl Handler<PeerSeen> for PeerRegistry {
    type Result = ();

    fn handle(&mut self, message: PeerSeen, ctx: &mut Self::Context) {
        let a = message.announcement;
        // The wire format checked its shape; an announcement without a key is an old node's,
        // which cannot be reached over mutual TLS.
        let Some(key) = a
            .tls_fingerprint
            .as_deref()
            .and_then(KeyFingerprint::from_hex)
        else {
            tracing::debug!(peer = %a.node_id, "ignoring an announcement without a key");
            return;
        };
        if a.scheme != Scheme::Https {
            tracing::debug!(peer = %a.node_id, "ignoring a node that does not speak TLS");
            return;
        }
        let node = SeenNode {
            id: a.node_id,
            instance: a.instance,
            name: a.name,
            http_port: a.http_port,
            scheme: a.scheme,
            resources: a.resources,
            shared_workspaces: a.shared_workspaces,
            running_environments: a.running_environments,
            uptime_seconds: a.uptime_seconds,
            catalog_digest: a.catalog_digest,
            key,
        };
        self.seen(ctx, node, message.address, PeerSource::Multicast);
    }
}

impl Handler<PeerGoodbye> for PeerRegistry {
    type Result = ();

    fn handle(&mut self, message: PeerGoodbye, _: &mut Self::Context) {
        let Some(peer) = self.peers.get_mut(&message.node_id) else {
            return;
        };
        if peer.info.state == PeerState::Gone
            || peer.info.addresses.first() != Some(&message.address)
        {
            return;
        }
        peer.info.state = PeerState::Gone;
        // Silence from now on keeps it gone; a new announcement brings it back.
        peer.heard = Instant::now()
            .checked_sub(self.config.interval * 6)
            .unwrap_or_else(Instant::now);
        tracing::info!(peer = %peer.info.name, id = %message.node_id, "peer said goodbye");
        self.publish(NodeEvent::PeerLeft, message.node_id);
    }
}

impl Handler<CatalogFetched> for PeerRegistry {
    type Result = ();

    fn handle(&mut self, message: CatalogFetched, ctx: &mut Self::Context) {
        let Some(peer) = self.peers.get_mut(&message.id) else {
            return;
        };
        peer.fetching = false;
        match message.result {
            Ok(catalog) => {
                let current = message.digest == peer.info.catalog_digest;
                let changed = *peer.info.catalog != catalog
                    || peer.info.catalog_current != current
                    || peer.info.catalog_error.is_some();
                peer.fetched_digest = Some(message.digest);
                peer.retry_at = None;
                peer.backoff = Duration::from_millis(250);
                peer.info.catalog_error = None;
                peer.info.catalog_current = current;
                peer.info.catalog = Arc::new(catalog);
                if changed {
                    self.publish(NodeEvent::PeerUpdated, message.id);
                }
                // The digest may have moved on while we fetched.
                self.maybe_fetch(ctx, message.id);
            }
            Err(error) => {
                if let PeerCallError::KeyMismatch { presented, .. } = &error {
                    let report = ConflictReport {
                        id: message.id,
                        name: peer.info.name.clone(),
                        address: peer
                            .info
                            .addresses
                            .first()
                            .copied()
                            .unwrap_or(IpAddr::from([0, 0, 0, 0])),
                        presented: presented.unwrap_or(peer.info.key),
                        expected: Some(peer.info.key),
                        via: "handshake",
                    };
                    let error = error.to_string();
                    peer.retry_at = Some(Instant::now() + peer.backoff);
                    peer.backoff = (peer.backoff * 2).min(Duration::from_secs(30));
                    peer.info.catalog_error = Some(error);
                    self.conflict(report);
                    return;
                }
                let error = error.to_string();
                tracing::warn!(peer = %peer.info.name, %error, retry_in_ms = peer.backoff.as_millis() as u64, "catalog fetch failed");
                peer.retry_at = Some(Instant::now() + peer.backoff);
                peer.backoff = (peer.backoff * 2).min(Duration::from_secs(30));
                if peer.info.catalog_error.as_deref() != Some(error.as_str()) {
                    peer.info.catalog_error = Some(error);
                    self.publish(NodeEvent::PeerUpdated, message.id);
                }
            }
        }
    }
}

impl Handler<StaticPolled> for PeerRegistry {
    type Result = ();

    fn handle(&mut self, message: StaticPolled, ctx: &mut Self::Context) {
        let remote = match message.result {
            Ok(remote) => remote,
            Err(error) => {
                tracing::debug!(peer = %message.address, %error, "static peer did not answer");
                return;
            }
        };
        let location = message
            .address
            .split_once('#')
            .map_or(message.address.as_str(), |(l, _)| l);
        let (host, port) = split_host_port(location);
        let Some(address) = resolve(&host) else {
            tracing::warn!(peer = %message.address, "cannot resolve static peer");
            return;
        };
        let node = SeenNode {
            id: remote.id,
            instance: 0,
            name: remote.name,
            http_port: port,
            scheme: Scheme::Https,
            resources: remote.resources,
            shared_workspaces: remote.shared_workspaces,
            running_environments: 0,
            uptime_seconds: remote.uptime_seconds,
            catalog_digest: remote.catalog_digest,
            key: remote.key,
        };
        self.seen(ctx, node, address, PeerSource::Static);
    }
}

impl Handler<TrustPeer> for PeerRegistry {
    type Result = Result<TrustedPeer, TrustError>;

    fn handle(&mut self, message: TrustPeer, _: &mut Self::Context) -> Self::Result {
        let (id, key, name) = self.resolve_peer(&message.peer)?;
        if id == self.config.node_id || key == self.config.node_key {
            return Err(TrustError::Itself);
        }
        if let Some(expected) = message.confirm_key {
            if expected != key {
                return Err(TrustError::KeyMismatch {
                    peer: name,
                    actual: key,
                    expected,
                });
            }
        }
        // Trusting a key that was never seen pins it for its id (a derived id: the key is
        // the proof; a legacy id keeps whatever was pinned first).
        match self.keys.check(id, &key) {
            KeyCheck::Pinned => {}
            KeyCheck::New => {
                self.keys.pin(id, key)?;
            }
            KeyCheck::Conflict { expected } => {
                return Err(TrustError::KeyMismatch {
                    peer: name,
                    actual: expected.unwrap_or(key),
                    expected: key,
                })
            }
        }
        let record = TrustedPeer {
            id,
            key,
            name,
            since: Utc::now(),
            by: message.by,
        };
        self.keys.trust(record.clone())?;
        tracing::info!(peer = %record.name, %id, key = %key, by = %record.by, "peer trusted");
        if let Some(peer) = self.peers.get_mut(&id) {
            peer.info.trusted = peer.info.key == key;
            self.publish(NodeEvent::PeerUpdated, id);
        }
        self.publish_event(NodeEvent::TrustChanged(Arc::new(self.keys.all_trusted())));
        Ok(record)
    }
}

impl Handler<UntrustPeer> for PeerRegistry {
    type Result = Result<TrustedPeer, TrustError>;

    fn handle(&mut self, message: UntrustPeer, _: &mut Self::Context) -> Self::Result {
        let (id, _, _) = self.resolve_peer(&message.peer)?;
        let record = self.keys.untrust(id)?.ok_or_else(|| {
            TrustError::NotFound(format!("{} (among trusted peers)", message.peer))
        })?;
        tracing::info!(peer = %record.name, %id, "trust revoked");
        if let Some(peer) = self.peers.get_mut(&id) {
            peer.info.trusted = false;
            self.publish(NodeEvent::PeerUpdated, id);
        }
        self.publish_event(NodeEvent::TrustChanged(Arc::new(self.keys.all_trusted())));
        Ok(record)
    }
}

fn split_host_port(address: &str) -> (String, u16) {
    let rest = address.split_once("://").map_or(address, |(_, r)| r);
    let rest = rest.split('/').next().unwrap_or(rest);
    match rest.rsplit_once(':') {
        Some((host, port)) => (
            host.trim_matches(['[', ']']).to_string(),
            port.parse().unwrap_or(37778),
        ),
        None => (rest.to_string(), 37778),
    }
}

fn resolve(host: &str) -> Option<IpAddr> {
    if let Ok(ip) = host.parse() {
        return Some(ip);
    }
    use std::net::ToSocketAddrs;
    (host, 0).to_socket_addrs().ok()?.next().map(|a| a.ip())
}

/// Cloneable handle of the PeerRegistry.
#[derive(Clone)]
pub struct PeerRegistryHandle {
    addr: Addr<PeerRegistry>,
    view: watch::Receiver<Arc<PeersView>>,
}

impl PeerRegistryHandle {
    /// Starts the registry on the current arbiter.
    pub fn start(
        config: RegistryConfig,
        keys: KeyBook,
        client: Rc<dyn PeerClient>,
        bus: EventBus,
    ) -> PeerRegistryHandle {
        let view = PeersView {
            seq: bus.last_seq(),
            peers: Vec::new(),
            trusted: Arc::new(keys.all_trusted()),
            key_conflicts: 0,
        };
        let (view_sender, receiver) = watch::channel(Arc::new(view.clone()));
        let addr = PeerRegistry {
            config,
            peers: HashMap::new(),
            client,
            bus,
            view,
            view_sender,
            keys,
            conflict_events: HashMap::new(),
        }
        .start();
        PeerRegistryHandle {
            addr,
            view: receiver,
        }
    }

    /// Trusts a peer (see [`TrustPeer`]).
    pub async fn trust(
        &self,
        peer: &str,
        confirm_key: Option<KeyFingerprint>,
        by: &str,
    ) -> Result<TrustedPeer, TrustError> {
        self.addr
            .send(TrustPeer {
                peer: peer.to_string(),
                confirm_key,
                by: by.to_string(),
            })
            .await
            .map_err(|_| TrustError::Unavailable)?
    }

    /// Revokes trust in a peer.
    pub async fn untrust(&self, peer: &str) -> Result<TrustedPeer, TrustError> {
        self.addr
            .send(UntrustPeer {
                peer: peer.to_string(),
            })
            .await
            .map_err(|_| TrustError::Unavailable)?
    }

    /// The current view.
    pub fn view(&self) -> Arc<PeersView> {
        self.view.borrow().clone()
    }

    /// The actor's address, for the Announcer.
    pub fn addr(&self) -> Addr<PeerRegistry> {
        self.addr.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_and_port() {
        assert_eq!(split_host_port("10.0.0.5:4000"), ("10.0.0.5".into(), 4000));
        assert_eq!(
            split_host_port("http://gpu-box:37778/"),
            ("gpu-box".into(), 37778)
        );
        assert_eq!(split_host_port("[::1]:9"), ("::1".into(), 9));
        assert_eq!(split_host_port("lab"), ("lab".into(), 37778));
    }
}
