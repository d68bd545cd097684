//! Zero-configuration LAN discovery: the Announcer actor (this module), the beacon socket
//! (`beacon`) and the datagram format (`wire`).
//!
//! The Announcer owns the multicast socket. It announces this node at start (at once, after
//! 0.5 s and after 2.5 s), every `announce_interval`, within 200 ms of a change to the shared
//! catalog, at once when it hears a new peer, and says goodbye on shutdown. It decodes what it
//! hears, drops (and counts) its own, malformed, oversized, unknown-version, replayed and
//! flooding datagrams, and hands the rest to the PeerRegistry.

pub mod beacon;
pub mod wire;

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use tokio::sync::watch;
use uuid::Uuid;

use crate::catalog;
use crate::event_bus::{Envelope, EventBus};
use crate::events::NodeEvent;
use crate::peer_registry::{PeerGoodbye, PeerSeen};
use crate::resources::{self, Resources};
use crate::workspace_store::WorkspaceStoreHandle;

use beacon::Beacon;
use wire::{Announcement, Datagram, DecodeError, ResourceSummary, Scheme};

/// Configuration of the Announcer.
#[derive(Debug, Clone)]
pub struct AnnouncerConfig {
    /// Whether multicast discovery runs at all (resources are detected either way).
    pub enabled: bool,
    /// Multicast group.
    pub group: Ipv4Addr,
    /// UDP port.
    pub port: u16,
    /// Interfaces to use; empty: every up, multicast-capable, non-loopback interface.
    pub interfaces: Vec<String>,
    /// Time between periodic announcements.
    pub interval: Duration,
    /// This node's id.
    pub node_id: Uuid,
    /// This node's name.
    pub name: String,
    /// Port of this node's REST API.
    pub http_port: u16,
    /// Its scheme.
    pub scheme: Scheme,
    /// Its key (announced as `tls_fingerprint`).
    pub key: crate::identity::KeyFingerprint,
    /// The peers trusted at start (the catalog digest covers them; later changes arrive as
    /// `TrustChanged` events).
    pub trusted: Vec<crate::peer_registry::TrustedPeer>,
    /// The data dir (for free disk).
    pub data_dir: PathBuf,
}

/// Datagram counters, for `GET /api/v1/node`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counters {
    /// Announcements sent (per interface).
    pub sent: u64,
    /// Valid datagrams accepted.
    pub accepted: u64,
    /// Our own datagrams, looped back.
    pub own: u64,
    /// Claiming this node's id from another instance.
    pub forged: u64,
    /// Not decodable, or failing validation.
    pub malformed: u64,
    /// Larger than 1400 bytes.
    pub oversized: u64,
    /// Unknown format version.
    pub unknown_version: u64,
    /// Older than what the sender already said.
    pub replayed: u64,
    /// Over the per-sender rate.
    pub flood: u64,
}

/// Published read view of the Announcer.
#[derive(Debug, Clone, Default)]
pub struct AnnouncerView {
    /// This host's resources, as last detected.
    pub resources: Resources,
    /// Datagram counters.
    pub counters: Counters,
    /// Interfaces the group is joined on.
    pub interfaces: Vec<String>,
    /// Why discovery is not running, when it is not.
    pub problem: Option<String>,
    /// Digest and count of the shared catalog.
    pub catalog_digest: String,
    /// Shared workspaces.
    pub shared_workspaces: u32,
}

/// The actor.
pub struct Announcer {
    config: AnnouncerConfig,
    beacon: Option<Beacon>,
    instance: u64,
    seq: u64,
    started: Instant,
    store: WorkspaceStoreHandle,
    /// Where announcements go: the registry, known only by the messages it takes.
    registry: Registry,
    bus: EventBus,
    view: AnnouncerView,
    view_sender: watch::Sender<Arc<AnnouncerView>>,
    /// Per node id: (instance, last seq).
    last_seq: HashMap<Uuid, (u64, u64)>,
    /// Per (source, node id): token bucket (tokens, last refill).
    buckets: HashMap<(IpAddr, Uuid), (f64, Instant)>,
    /// Per source address: token bucket over all node ids it claims.
    source_buckets: HashMap<IpAddr, (f64, Instant)>,
    pending: Option<SpawnHandle>,
    last_prompt: Option<Instant>,
    /// Whether the start burst of announcements was sent (after the first detection).
    started_burst: bool,
    /// The peers trusted now (part of the catalog digest).
    trusted: Arc<Vec<crate::peer_registry::TrustedPeer>>,
}

/// Bucket size and refill rate per (source, node): a real node sends at most a few per second.
const NODE_BURST: f64 = 20.0;
const NODE_RATE: f64 = 10.0;
/// Per source address (a host may run many nodes).
const SOURCE_BURST: f64 = 400.0;
const SOURCE_RATE: f64 = 200.0;
const MAX_TRACKED: usize = 8192;

/// Say goodbye now (graceful shutdown).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Goodbye;

#[derive(Message)]
#[rtype(result = "()")]
struct ResourcesDetected(Resources);

struct Received(Vec<u8>, SocketAddr);

impl Announcer {
    fn publish_view(&self) {
        self.view_sender.send_replace(Arc::new(self.view.clone()));
    }

    fn announcement(&mut self) -> Announcement {
        self.seq += 1;
        let r = &self.view.resources;
        Announcement {
            node_id: self.config.node_id,
            instance: self.instance,
            name: self.config.name.chars().take(64).collect(),
            http_port: self.config.http_port,
            scheme: self.config.scheme,
            tls_fingerprint: Some(self.config.key.to_hex()),
            protocol_version: wire::PROTOCOL_VERSION,
            catalog_digest: self.view.catalog_digest.clone(),
            shared_workspaces: self.view.shared_workspaces,
            resources: ResourceSummary {
                cpu_cores: r.cpu_cores,
                memory_total: r.memory_total,
                memory_available: r.memory_available,
                disk_free: r.disk_free,
                gpus: r.gpus.iter().take(16).cloned().collect(),
                os: r.os.clone(),
                arch: r.arch.clone(),
            },
            running_environments: 0,
            seq: self.seq,
            uptime_seconds: self.started.elapsed().as_secs(),
        }
    }

    fn announce(&mut self, goodbye: bool) {
        if self.beacon.is_none() {
            return;
        }
        let mut datagram = Datagram {
            goodbye,
            announcement: self.announcement(),
        };
        let bytes = loop {
            match wire::encode(&datagram) {
                Ok(bytes) => break bytes,
                Err(_) if !datagram.announcement.resources.gpus.is_empty() => {
                    datagram.announcement.resources.gpus.pop();
                }
                Err(error) => {
                    tracing::error!(%error, "cannot encode an announcement");
                    return;
                }
            }
        };
        let sent = self.beacon.as_ref().map_or(0, |b| b.send(&bytes));
        self.view.counters.sent += sent as u64;
    }

    /// Announces within 200 ms, once for any number of changes in that time.
    fn announce_soon(&mut self, ctx: &mut Context<Self>) {
        if self.pending.is_some() {
            return;
        }
        self.pending = Some(ctx.run_later(Duration::from_millis(200), |announcer, _| {
            announcer.pending = None;
            announcer.announce(false);
            announcer.publish_view();
        }));
    }

    fn refresh_catalog(&mut self, ctx: &mut Context<Self>) {
        let (digest, count) = catalog::digest(&self.store.view(), &self.trusted);
        if digest != self.view.catalog_digest || count != self.view.shared_workspaces {
            self.view.catalog_digest = digest;
            self.view.shared_workspaces = count;
            self.publish_view();
            self.announce_soon(ctx);
        }
    }

    fn sync_interfaces(&mut self) {
        let Some(beacon) = self.beacon.as_mut() else {
            return;
        };
        let wanted = beacon::select_interfaces(&beacon::list_interfaces(), &self.config.interfaces);
        for change in beacon.sync_interfaces(&wanted) {
            tracing::info!(change = %change, "discovery interfaces");
        }
        let joined: Vec<String> = beacon.joined().keys().cloned().collect();
        if joined != self.view.interfaces {
            self.view.interfaces = joined;
            self.view.problem = if self.view.interfaces.is_empty() {
                Some("no usable network interface; set discovery.interfaces".into())
            } else {
                None
            };
            self.publish_view();
        }
    }

    fn allow(&mut self, source: IpAddr, node: Uuid) -> bool {
        if self.buckets.len() > MAX_TRACKED {
            self.buckets.clear();
        }
        if self.source_buckets.len() > MAX_TRACKED {
            self.source_buckets.clear();
        }
        let now = Instant::now();
        let take = |bucket: &mut (f64, Instant), burst: f64, rate: f64| {
            bucket.0 = (bucket.0 + now.duration_since(bucket.1).as_secs_f64() * rate).min(burst);
            bucket.1 = now;
            if bucket.0 >= 1.0 {
                bucket.0 -= 1.0;
                true
            } else {
                false
            }
        };
        let source_ok = take(
            self.source_buckets
                .entry(source)
                .or_insert((SOURCE_BURST, now)),
            SOURCE_BURST,
            SOURCE_RATE,
        );
        source_ok
            && take(
                self.buckets
                    .entry((source, node))
                    .or_insert((NODE_BURST, now)),
                NODE_BURST,
                NODE_RATE,
            )
    }

    fn receive(&mut self, ctx: &mut Context<Self>, bytes: &[u8], from: SocketAddr) {
        let counters = &mut self.view.counters;
        let datagram = match wire::decode(bytes) {
            Ok(datagram) => datagram,
            Err(error) => {
                match error {
                    DecodeError::Oversized(_) => counters.oversized += 1,
                    DecodeError::UnknownVersion(_) => counters.unknown_version += 1,
                    _ => counters.malformed += 1,
                }
                tracing::debug!(%from, %error, "dropped a datagram");
                return;
            }
        };
        let a = datagram.announcement;
        if a.node_id == self.config.node_id {
            if a.instance == self.instance {
                self.view.counters.own += 1;
            } else {
                self.view.counters.forged += 1;
                tracing::warn!(%from, "dropped a datagram claiming this node's id");
            }
            return;
        }
        if !self.allow(from.ip(), a.node_id) {
            self.view.counters.flood += 1;
            return;
        }
        let previous = self.last_seq.get(&a.node_id).copied();
        if let Some((instance, seq)) = previous {
            if instance == a.instance && a.seq <= seq {
                self.view.counters.replayed += 1;
                return;
            }
        }
        if self.last_seq.len() > MAX_TRACKED {
            self.last_seq.clear();
        }
        self.last_seq.insert(a.node_id, (a.instance, a.seq));
        self.view.counters.accepted += 1;
        let id = a.node_id;
        if datagram.goodbye {
            self.registry.goodbye.do_send(PeerGoodbye {
                node_id: id,
                address: from.ip(),
            });
            return;
        }
        let newcomer = previous.is_none_or(|(instance, _)| instance != a.instance);
        self.registry.seen.do_send(PeerSeen {
            announcement: a,
            address: from.ip(),
        });
        if newcomer {
            // A newcomer learns the whole LAN in one round: everyone answers at once (at most
            // every 100 ms, so a crowd of newcomers does not cause a storm).
            let due = self
                .last_prompt
                .is_none_or(|at| at.elapsed() >= Duration::from_millis(100));
            if due {
                self.last_prompt = Some(Instant::now());
                self.announce(false);
            } else {
                self.announce_soon(ctx);
            }
        }
    }
}

impl Actor for Announcer {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        self.trusted = Arc::new(self.config.trusted.clone());
        let (digest, count) = catalog::digest(&self.store.view(), &self.trusted);
        self.view.catalog_digest = digest;
        self.view.shared_workspaces = count;
        // Detection may run nvidia-smi: never on the arbiter. The start burst of announcements
        // waits for the first result, so peers never see a node without its hardware.
        let detect = |announcer: &mut Announcer, ctx: &mut Context<Announcer>| {
            let data_dir = announcer.config.data_dir.clone();
            let addr = ctx.address();
            tokio::task::spawn_blocking(move || {
                addr.do_send(ResourcesDetected(resources::detect(&data_dir)))
            });
        };
        detect(self, ctx);
        ctx.run_interval(Duration::from_secs(30), detect);
        ctx.add_stream(self.bus.stream());

        if !self.config.enabled {
            self.view.problem = Some("discovery is off (--no-discovery)".into());
            self.publish_view();
            return;
        }
        match Beacon::bind(self.config.group, self.config.port) {
            Ok(beacon) => {
                let socket = beacon.socket();
                self.beacon = Some(beacon);
                self.sync_interfaces();
                let datagrams = futures_util::stream::unfold(socket, |socket| async move {
                    let mut buffer = vec![0u8; 2048];
                    loop {
                        match socket.recv_from(&mut buffer).await {
                            Ok((n, from)) => {
                                return Some((Received(buffer[..n].to_vec(), from), socket));
                            }
                            Err(error) => {
                                tracing::debug!(%error, "discovery receive failed");
                                tokio::time::sleep(Duration::from_millis(10)).await;
                            }
                        }
                    }
                });
                ctx.add_stream(datagrams);
                ctx.run_interval(self.config.interval, |a, _| {
                    a.announce(false);
                    a.publish_view();
                });
                ctx.run_interval(Duration::from_secs(5), |a, _| a.sync_interfaces());
                tracing::info!(
                    group = %self.config.group,
                    port = self.config.port,
                    interfaces = ?self.view.interfaces,
                    interval_ms = self.config.interval.as_millis() as u64,
                    "discovery started"
                );
            }
            Err(error) => {
                tracing::error!(%error, port = self.config.port, "discovery cannot bind its socket; this node will not be found by multicast");
                self.view.problem = Some(format!(
                    "cannot bind UDP port {}: {error}",
                    self.config.port
                ));
            }
        }
        self.publish_view();
    }
}

impl StreamHandler<Received> for Announcer {
    fn handle(&mut self, Received(bytes, from): Received, ctx: &mut Self::Context) {
        self.receive(ctx, &bytes, from);
    }

    fn finished(&mut self, _: &mut Self::Context) {}
}

impl StreamHandler<Arc<Envelope>> for Announcer {
    fn handle(&mut self, envelope: Arc<Envelope>, ctx: &mut Self::Context) {
        match &envelope.event {
            NodeEvent::WorkspaceChanged(_) => self.refresh_catalog(ctx),
            NodeEvent::TrustChanged(trusted) => {
                self.trusted = trusted.clone();
                self.refresh_catalog(ctx);
            }
            _ => {}
        }
    }

    fn finished(&mut self, _: &mut Self::Context) {}
}

impl Handler<ResourcesDetected> for Announcer {
    type Result = ();

    fn handle(&mut self, message: ResourcesDetected, ctx: &mut Self::Context) {
        if !self.started_burst {
            // The first detection: announce at once, and again after 0.5 s and 2.5 s so one
            // lost datagram does not hide this node.
            self.started_burst = true;
            self.view.resources = message.0;
            self.publish_view();
            self.announce(false);
            ctx.run_later(Duration::from_millis(500), |a, _| a.announce(false));
            ctx.run_later(Duration::from_millis(2500), |a, _| a.announce(false));
            return;
        }
        let old = &self.view.resources;
        let new = message.0;
        let significant = old.cpu_cores != new.cpu_cores
            || old.gpus != new.gpus
            || old.memory_total != new.memory_total;
        self.view.resources = new;
        self.publish_view();
        if significant {
            self.announce_soon(ctx);
        }
    }
}

impl Handler<Goodbye> for Announcer {
    type Result = ();

    fn handle(&mut self, _: Goodbye, _: &mut Self::Context) {
        self.announce(true);
        // Goodbyes are not repeated by timers: a lost one is covered by the silence timeout.
        self.beacon = None;
    }
}

/// Cloneable handle of the Announcer.
#[derive(Clone)]
pub struct AnnouncerHandle {
    addr: Addr<Announcer>,
    view: watch::Receiver<Arc<AnnouncerView>>,
}

/// What the Announcer tells the peer registry.
#[derive(Clone)]
pub struct Registry {
    /// A valid announcement.
    pub seen: Recipient<PeerSeen>,
    /// A goodbye.
    pub goodbye: Recipient<PeerGoodbye>,
}

impl AnnouncerHandle {
    /// Starts the Announcer on the current arbiter.
    pub fn start(
        config: AnnouncerConfig,
        store: WorkspaceStoreHandle,
        registry: Registry,
        bus: EventBus,
    ) -> AnnouncerHandle {
        let (view_sender, view) = watch::channel(Arc::new(AnnouncerView::default()));
        let mut instance = [0u8; 8];
        instance.copy_from_slice(&Uuid::new_v4().as_bytes()[..8]);
        let addr = Announcer {
            config,
            beacon: None,
            instance: u64::from_le_bytes(instance),
            seq: 0,
            started: Instant::now(),
            store,
            registry,
            bus,
            trusted: Arc::new(Vec::new()),
            view: AnnouncerView::default(),
            view_sender,
            last_seq: HashMap::new(),
            buckets: HashMap::new(),
            source_buckets: HashMap::new(),
            pending: None,
            last_prompt: None,
            started_burst: false,
        }
        .start();
        AnnouncerHandle { addr, view }
    }

    /// The current view.
    pub fn view(&self) -> Arc<AnnouncerView> {
        self.view.borrow().clone()
    }

    /// Sends the goodbye and stops announcing.
    pub async fn goodbye(&self) {
        let _ = self.addr.send(Goodbye).await;
    }
}
