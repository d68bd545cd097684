//! The PeerRegistry actor: every known peer, its state, resources and catalog.
//!
//! Data flow: the Announcer sends [`PeerSeen`] for each valid announcement and [`PeerGoodbye`]
//! for each goodbye; static peers (routed networks, VPNs) are polled over HTTP. When a peer's
//! announced catalog digest differs from the catalog we hold, the registry fetches it through
//! the [`PeerClient`] the HTTP layer provides (this crate knows no HTTP), as a future run on
//! the actor's context: it never blocks the actor. A timer moves silent peers
//! `online → stale → gone`. Readers use the published [`PeersView`].

use std::collections::HashMap;
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use chrono::{DateTime, Utc};
use tokio::sync::watch;
use uuid::Uuid;

use crate::catalog::{CatalogEntry, CatalogFilter};
use crate::discovery::wire::{Announcement, ResourceSummary, Scheme};
use crate::event_bus::EventBus;
use crate::events::NodeEvent;

/// A peer's liveness.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerState {
    /// Heard from within 3 announce intervals.
    Online,
    /// Silent for 3 intervals.
    Stale,
    /// Silent for 6 intervals, or said goodbye.
    Gone,
}

impl PeerState {
    /// `online`, `stale` or `gone`.
    pub fn as_str(self) -> &'static str {
        match self {
            PeerState::Online => "online",
            PeerState::Stale => "stale",
            PeerState::Gone => "gone",
        }
    }
}

/// How a peer is known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerSource {
    /// From multicast announcements.
    Multicast,
    /// From `discovery.static_peers`, polled over HTTP.
    Static,
}

/// Everything known about one peer.
#[derive(Debug, Clone)]
pub struct PeerInfo {
    /// Node id.
    pub id: Uuid,
    /// Node name.
    pub name: String,
    /// Addresses it was heard from (most recent first).
    pub addresses: Vec<IpAddr>,
    /// Its REST API port.
    pub http_port: u16,
    /// Its REST API scheme.
    pub scheme: Scheme,
    /// Liveness.
    pub state: PeerState,
    /// How it is known.
    pub source: PeerSource,
    /// When it was last heard from.
    pub last_seen: DateTime<Utc>,
    /// Its resources.
    pub resources: ResourceSummary,
    /// Shared workspaces it announced.
    pub shared_workspaces: u32,
    /// Running environments it announced.
    pub running_environments: u32,
    /// Seconds it has been up, as announced.
    pub uptime_seconds: u64,
    /// Announced catalog digest.
    pub catalog_digest: String,
    /// The catalog, as last fetched.
    pub catalog: Arc<Vec<CatalogEntry>>,
    /// Why the last catalog fetch failed, if it did.
    pub catalog_error: Option<String>,
    /// Whether `catalog` was fetched for the digest announced last.
    pub catalog_current: bool,
}

impl PeerInfo {
    /// Base URL of the peer's API.
    pub fn base_url(&self) -> Option<String> {
        let address = self.addresses.first()?;
        Some(match address {
            IpAddr::V4(v4) => format!("{}://{v4}:{}", self.scheme.as_str(), self.http_port),
            IpAddr::V6(v6) => format!("{}://[{v6}]:{}", self.scheme.as_str(), self.http_port),
        })
    }
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
}

/// A boxed local future (the HTTP client is not `Send`; it runs on the actor's thread).
pub type LocalFuture<T> = Pin<Box<dyn Future<Output = T>>>;

/// How the registry talks to peers over HTTP; implemented by the `aienv` package.
pub trait PeerClient {
    /// `GET {base}/api/v1/catalog`, identifying this node as `viewer`.
    fn catalog(
        &self,
        base_url: &str,
        viewer: Uuid,
    ) -> LocalFuture<Result<Vec<CatalogEntry>, String>>;
    /// `GET {base}/api/v1/node`.
    fn node(&self, base_url: &str) -> LocalFuture<Result<RemoteNode, String>>;
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
}

/// Published read view of the registry.
#[derive(Debug, Clone, Default)]
pub struct PeersView {
    /// Sequence number of the last event reflected here.
    pub seq: u64,
    /// Every peer, by name.
    pub peers: Vec<Arc<PeerInfo>>,
}

/// One entry of the merged network catalog.
#[derive(Debug, Clone)]
pub struct NetworkEntry {
    /// The peer sharing it.
    pub peer: Arc<PeerInfo>,
    /// The workspace.
    pub entry: CatalogEntry,
}

impl PeersView {
    /// Everything online peers share that matches `filter`, optionally from one peer (by id
    /// or name), ordered by workspace name then peer name.
    pub fn network_catalog(&self, filter: &CatalogFilter, peer: Option<&str>) -> Vec<NetworkEntry> {
        let mut entries: Vec<NetworkEntry> = self
            .peers
            .iter()
            .filter(|p| p.state == PeerState::Online)
            .filter(|p| peer.is_none_or(|wanted| p.name == wanted || p.id.to_string() == wanted))
            .flat_map(|p| {
                p.catalog
                    .iter()
                    .filter(|e| e.matches(filter))
                    .map(|e| NetworkEntry {
                        peer: p.clone(),
                        entry: e.clone(),
                    })
                    .collect::<Vec<_>>()
            })
            .collect();
        entries.sort_by(|a, b| {
            (a.entry.name.as_str(), a.peer.name.as_str())
                .cmp(&(b.entry.name.as_str(), b.peer.name.as_str()))
        });
        entries
    }
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
}

/// The actor.
pub struct PeerRegistry {
    config: RegistryConfig,
    peers: HashMap<Uuid, Peer>,
    client: Rc<dyn PeerClient>,
    bus: EventBus,
    view: PeersView,
    view_sender: watch::Sender<Arc<PeersView>>,
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
}

#[derive(Message)]
#[rtype(result = "()")]
struct CatalogFetched {
    id: Uuid,
    digest: String,
    result: Result<Vec<CatalogEntry>, String>,
}

#[derive(Message)]
#[rtype(result = "()")]
struct StaticPolled {
    address: String,
    result: Result<RemoteNode, String>,
}

const MAX_PEERS: usize = 4096;

impl PeerRegistry {
    fn publish(&mut self, event: impl FnOnce(Arc<PeerInfo>) -> NodeEvent, id: Uuid) {
        let Some(peer) = self.peers.get(&id) else {
            return;
        };
        let info = Arc::new(peer.info.clone());
        self.view.peers = self.sorted_peers();
        let view = &mut self.view;
        let sender = &self.view_sender;
        self.bus.publish(event(info), |seq| {
            view.seq = seq;
            sender.send_replace(Arc::new(view.clone()));
        });
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
                        },
                        heard: Instant::now(),
                        instance: node.instance,
                        fetched_digest: None,
                        fetching: false,
                        retry_at: None,
                        backoff: Duration::from_millis(250),
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
        let Some(base) = peer.info.base_url() else {
            return;
        };
        peer.fetching = true;
        let future = self.client.catalog(&base, self.config.node_id);
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
            let base = if address.contains("://") {
                address.clone()
            } else {
                format!("http://{address}")
            };
            let future = self.client.node(&base);
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
        if peer.info.state == PeerState::Gone {
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
        let (host, port) = split_host_port(&message.address);
        let Some(address) = resolve(&host) else {
            tracing::warn!(peer = %message.address, "cannot resolve static peer");
            return;
        };
        let node = SeenNode {
            id: remote.id,
            instance: 0,
            name: remote.name,
            http_port: port,
            scheme: if message.address.starts_with("https://") {
                Scheme::Https
            } else {
                Scheme::Http
            },
            resources: remote.resources,
            shared_workspaces: remote.shared_workspaces,
            running_environments: 0,
            uptime_seconds: remote.uptime_seconds,
            catalog_digest: remote.catalog_digest,
        };
        self.seen(ctx, node, address, PeerSource::Static);
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
        client: Rc<dyn PeerClient>,
        bus: EventBus,
    ) -> PeerRegistryHandle {
        let (view_sender, view) = watch::channel(Arc::new(PeersView {
            seq: bus.last_seq(),
            peers: Vec::new(),
        }));
        let addr = PeerRegistry {
            config,
            peers: HashMap::new(),
            client,
            bus,
            view: PeersView::default(),
            view_sender,
        }
        .start();
        PeerRegistryHandle { addr, view }
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
