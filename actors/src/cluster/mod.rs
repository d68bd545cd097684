//! The lab cluster, requester's side: the **Placements** actor records where this node's
//! environments run on trusted peers and follows them there.
//!
//! Data flow: the HTTP layer ranks the peers ([`rank`]), asks the chosen one to run the
//! environment over mutual TLS, then sends [`Place`]. The actor persists the placement
//! (sled tree `placements`, so a restarted node finds its environments again), asks each
//! peer for the run's state every [`PlacementConfig::poll`] through the [`ClusterClient`]
//! (this crate knows no HTTP), and publishes `PlacementChanged` events and the
//! [`PlacementsView`] the tool proxy and status read. A peer that is gone from discovery or
//! has not answered for [`PlacementConfig::lost_after`] makes its placements `lost` (with
//! where and since when); when it answers again they are found again.

pub mod fit_chunks;
pub mod rank;

use std::collections::{HashMap, HashSet};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use uuid::Uuid;

use crate::event_bus::EventBus;
use crate::events::NodeEvent;
use crate::peer_registry::{LocalFuture, PeerCallError, PeerEndpoint, PeerRegistryHandle};
pub use crate::runtime_supervisor::Amounts;

/// How this node reaches the peers its environments run on; the `aienv` package implements
/// it over mutual TLS.
pub trait ClusterClient {
    /// The state of `environment` of the workspace `workspace` (this node's id for it) that
    /// the peer runs for this node; `None` when the peer runs no such thing.
    fn run_status(
        &self,
        peer: &PeerEndpoint,
        workspace: Uuid,
        environment: &str,
    ) -> LocalFuture<Result<Option<RemoteRun>, PeerCallError>>;

    /// What the peer lends, holds for peers and runs for this node.
    fn offer(&self, peer: &PeerEndpoint) -> LocalFuture<Result<NodeOffer, PeerCallError>>;
}

/// A node's offer to its trusted peers (`GET /cluster/offer`).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct NodeOffer {
    /// Whether it accepts work from trusted peers.
    pub accept: bool,
    /// Its CPU cores, memory (bytes) and GPUs.
    pub host: Amounts,
    /// What it lends at most (`None`: all).
    pub limits: crate::runtime_supervisor::LendLimits,
    /// Held by peers' environments.
    pub lent: Amounts,
    /// Left to lend.
    pub left: Amounts,
    /// CPU cores held by its environments over its cores.
    pub load: f64,
    /// Environments it runs for peers (as much as it shows the asker).
    pub runs: Vec<LentRun>,
}

/// An environment active on a node: its own, or one it runs for a peer.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct LentRun {
    /// The workspace there (empty when the asker may not see it).
    pub workspace: String,
    /// The environment.
    pub environment: String,
    /// Its state.
    pub state: String,
    /// The peer it runs for; `None` for the node's own.
    pub lent_to: Option<crate::runtime_supervisor::Borrower>,
    /// What it holds.
    pub allocation: Option<Amounts>,
}

/// Every trusted peer's offer, as last asked, for the cluster view.
#[derive(Debug, Clone, Default)]
pub struct ClusterView {
    /// Per trusted online peer: its offer, or why it could not be asked.
    pub offers: Vec<(Uuid, Result<NodeOffer, String>)>,
    /// When they were asked last.
    pub asked_at: Option<DateTime<Utc>>,
}

/// Timing of the follower.
#[derive(Debug, Clone, Copy)]
pub struct PlacementConfig {
    /// How often each peer is asked.
    pub poll: Duration,
    /// Silence after which a placement is `lost`.
    pub lost_after: Duration,
    /// How often trusted peers' offers are asked while someone watches the cluster view.
    pub offers_every: Duration,
    /// How long a watch lasts without being renewed.
    pub watch_for: Duration,
}

impl Default for PlacementConfig {
    fn default() -> Self {
        PlacementConfig {
            poll: Duration::from_secs(1),
            lost_after: Duration::from_secs(10),
            offers_every: Duration::from_secs(2),
            watch_for: Duration::from_secs(30),
        }
    }
}

/// What a peer says about the environment it runs for this node.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RemoteRun {
    /// `transferring`, `refused`, or an environment state (`starting`, `running`, …).
    pub state: String,
    /// Why it failed.
    pub error: Option<String>,
    /// The peer's notes (sizing, variant, set-up).
    pub notes: Vec<String>,
    /// The variant the peer picked and what it gives it.
    pub allocation: Option<(Option<String>, Amounts)>,
    /// Its tools.
    pub tools: Vec<RemoteTool>,
    /// Bytes received and to receive while `transferring`.
    pub transfer: Option<(u64, u64)>,
    /// The workspace's name on the peer.
    pub peer_workspace: String,
}

/// One tool of an environment running on a peer.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RemoteTool {
    /// Name.
    pub name: String,
    /// Kind (`jupyterlab`, `http`, …).
    pub kind: String,
    /// State on the peer.
    pub state: String,
    /// `/w/<workspace>/<tool>/…`, the same on both nodes.
    pub url: String,
}

/// What is persisted of a placement.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlacementRecord {
    /// The workspace (this node's).
    pub workspace_id: Uuid,
    /// Its name.
    pub workspace_name: String,
    /// The environment.
    pub environment: String,
    /// The peer running it.
    pub peer: Uuid,
    /// The peer's name (as trusted).
    pub peer_name: String,
    /// Who placed it.
    pub by: String,
    /// When.
    pub placed_at: DateTime<Utc>,
    /// Why this peer (the rule's words).
    pub reason: String,
    /// The workspace's root here when it was placed (or its results last came back): a sync
    /// of the results refuses to overwrite changes made here since.
    #[serde(default)]
    pub placed_root: Option<crate::snapshot::Hash>,
    /// When it was stopped through this node; the record stays, so its results can still be
    /// brought back, and is no longer followed.
    #[serde(default)]
    pub stopped_at: Option<DateTime<Utc>>,
}

/// A placement and what is known of it now.
#[derive(Debug, Clone, PartialEq)]
pub struct Placement {
    /// The record.
    pub record: PlacementRecord,
    /// The peer's last answer.
    pub remote: Option<RemoteRun>,
    /// When the peer last answered.
    pub last_seen: Option<DateTime<Utc>>,
    /// Since when it is lost (the peer gone or silent).
    pub lost_since: Option<DateTime<Utc>>,
    /// The last failed call, or why it is lost.
    pub error: Option<String>,
}

impl Placement {
    /// `placing` until the peer answers, `lost`, `stopped` once stopped through this node,
    /// or the peer's state.
    pub fn state(&self) -> &str {
        if self.record.stopped_at.is_some() {
            return "stopped";
        }
        if self.lost_since.is_some() {
            return "lost";
        }
        self.remote.as_ref().map_or("placing", |r| r.state.as_str())
    }

    /// Whether the environment is (or may still be) active on the peer.
    pub fn active(&self) -> bool {
        !matches!(self.state(), "stopped" | "failed" | "refused")
    }
}

/// Published read view: every placement, by workspace then environment.
#[derive(Debug, Clone, Default)]
pub struct PlacementsView {
    /// Sequence number of the last event reflected here.
    pub seq: u64,
    /// The placements.
    pub placements: Vec<Arc<Placement>>,
}

impl PlacementsView {
    /// The placement of `environment` of `workspace` (any of its environments when `None`).
    pub fn find(&self, workspace: Uuid, environment: Option<&str>) -> Option<&Arc<Placement>> {
        self.placements.iter().find(|p| {
            p.record.workspace_id == workspace
                && environment.is_none_or(|e| e == p.record.environment)
        })
    }

    /// Whether `peer` runs an environment of `workspace` for this node (then it may fetch it).
    pub fn placed_on(&self, workspace: Uuid, peer: Uuid) -> bool {
        self.placements
            .iter()
            .any(|p| p.record.workspace_id == workspace && p.record.peer == peer)
    }
}

type Key = (Uuid, String);

/// The actor.
pub struct Placements {
    config: PlacementConfig,
    tree: sled::Tree,
    peers: PeerRegistryHandle,
    client: Rc<dyn ClusterClient>,
    bus: EventBus,
    placements: HashMap<Key, Placement>,
    polling: HashSet<Key>,
    view_sender: watch::Sender<Arc<PlacementsView>>,
    /// When this actor started: a restarted node gives its peers the lost-after time to
    /// be heard again before anything shows `lost`.
    started: DateTime<Utc>,
    /// Until when someone watches the cluster view (offers are asked only then: an idle
    /// node asks its peers nothing).
    watched_until: Option<std::time::Instant>,
    /// Whether a round of offers is out.
    asking_offers: bool,
    cluster_sender: watch::Sender<Arc<ClusterView>>,
}

impl Actor for Placements {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        for item in self.tree.iter().values().flatten() {
            match rmp_serde::from_slice::<PlacementRecord>(&item) {
                Ok(record) => {
                    let key = (record.workspace_id, record.environment.clone());
                    self.placements.insert(
                        key,
                        Placement {
                            record,
                            remote: None,
                            last_seen: None,
                            lost_since: None,
                            error: None,
                        },
                    );
                }
                Err(error) => tracing::warn!(%error, "unreadable placement record skipped"),
            }
        }
        let keys: Vec<Key> = self.placements.keys().cloned().collect();
        for key in keys {
            self.publish(&key, false);
        }
        ctx.run_interval(self.config.poll, |actor, ctx| actor.poll(ctx));
        ctx.run_interval(self.config.offers_every, |actor, ctx| actor.ask_offers(ctx));
    }
}

/// Someone looks at the cluster view: ask the peers' offers for a while.
#[derive(Message)]
#[rtype(result = "()")]
pub struct WatchCluster;

impl Handler<WatchCluster> for Placements {
    type Result = ();

    fn handle(&mut self, _: WatchCluster, ctx: &mut Self::Context) {
        let first = self
            .watched_until
            .is_none_or(|until| until <= std::time::Instant::now());
        self.watched_until = Some(std::time::Instant::now() + self.config.watch_for);
        if first {
            self.ask_offers(ctx);
        }
    }
}

/// One round of offers.
#[derive(Message)]
#[rtype(result = "()")]
struct OffersAsked(Vec<(Uuid, Result<NodeOffer, String>)>);

impl Handler<OffersAsked> for Placements {
    type Result = ();

    fn handle(&mut self, message: OffersAsked, _: &mut Self::Context) {
        self.asking_offers = false;
        let before = self.cluster_sender.borrow().clone();
        if before.offers == message.0 {
            return;
        }
        let view = Arc::new(ClusterView {
            offers: message.0,
            asked_at: Some(Utc::now()),
        });
        let sender = &self.cluster_sender;
        self.bus
            .publish(NodeEvent::ClusterChanged(view.clone()), |_| {
                sender.send_replace(view.clone());
            });
    }
}

/// Records that a peer accepted to run an environment of this node.
#[derive(Message)]
#[rtype(result = "Result<Arc<Placement>, String>")]
pub struct Place(pub PlacementRecord);

/// Forgets a placement (stopped, or replaced by a new one).
#[derive(Message)]
#[rtype(result = "Result<(), String>")]
pub struct Forget {
    /// The workspace.
    pub workspace: Uuid,
    /// The environment.
    pub environment: String,
}

/// The placement was stopped through this node: kept (its results can come back), no
/// longer followed.
#[derive(Message)]
#[rtype(result = "Result<(), String>")]
pub struct Stopped {
    /// The workspace.
    pub workspace: Uuid,
    /// The environment.
    pub environment: String,
}

/// The results of a placed workspace came back: its root here now.
#[derive(Message)]
#[rtype(result = "Result<(), String>")]
pub struct ResultsBack {
    /// The workspace.
    pub workspace: Uuid,
    /// Its root after the sync.
    pub root: crate::snapshot::Hash,
}

impl Handler<Stopped> for Placements {
    type Result = Result<(), String>;

    fn handle(&mut self, message: Stopped, _: &mut Self::Context) -> Self::Result {
        let key = (message.workspace, message.environment);
        let Some(placement) = self.placements.get_mut(&key) else {
            return Ok(());
        };
        placement.record.stopped_at = Some(Utc::now());
        placement.lost_since = None;
        let record = placement.record.clone();
        self.persist(&key, Some(&record))?;
        self.publish(&key, false);
        Ok(())
    }
}

impl Handler<ResultsBack> for Placements {
    type Result = Result<(), String>;

    fn handle(&mut self, message: ResultsBack, _: &mut Self::Context) -> Self::Result {
        let keys: Vec<Key> = self
            .placements
            .keys()
            .filter(|(workspace, _)| *workspace == message.workspace)
            .cloned()
            .collect();
        for key in keys {
            let placement = self.placements.get_mut(&key).expect("listed");
            placement.record.placed_root = Some(message.root);
            let record = placement.record.clone();
            self.persist(&key, Some(&record))?;
            self.publish(&key, false);
        }
        Ok(())
    }
}

/// A peer's answer about one placement.
#[derive(Message)]
#[rtype(result = "()")]
struct Polled {
    key: Key,
    result: Result<Option<RemoteRun>, PeerCallError>,
}

impl Handler<Place> for Placements {
    type Result = Result<Arc<Placement>, String>;

    fn handle(&mut self, message: Place, _: &mut Self::Context) -> Self::Result {
        let record = message.0;
        let key = (record.workspace_id, record.environment.clone());
        self.persist(&key, Some(&record))?;
        self.placements.insert(
            key.clone(),
            Placement {
                record,
                remote: None,
                last_seen: None,
                lost_since: None,
                error: None,
            },
        );
        self.publish(&key, false);
        Ok(Arc::new(self.placements[&key].clone()))
    }
}

impl Handler<Forget> for Placements {
    type Result = Result<(), String>;

    fn handle(&mut self, message: Forget, _: &mut Self::Context) -> Self::Result {
        let key = (message.workspace, message.environment);
        self.persist(&key, None)?;
        self.publish(&key, true);
        Ok(())
    }
}

impl Handler<Polled> for Placements {
    type Result = ();

    fn handle(&mut self, message: Polled, _: &mut Self::Context) {
        self.polling.remove(&message.key);
        let lost_after = self.config.lost_after;
        let Some(placement) = self.placements.get_mut(&message.key) else {
            return;
        };
        let before = placement.clone();
        let now = Utc::now();
        match message.result {
            Ok(remote) => {
                placement.last_seen = Some(now);
                placement.lost_since = None;
                placement.error = None;
                let remote = remote.map(|run| sanitized(run, &placement.record.workspace_name));
                placement.remote = Some(remote.unwrap_or_else(|| RemoteRun {
                    state: "stopped".into(),
                    error: Some(format!(
                        "{} no longer runs it (its node restarted, or its owner stopped it)",
                        placement.record.peer_name
                    )),
                    ..RemoteRun::default()
                }));
            }
            Err(error) => {
                placement.error = Some(error.to_string());
                let silent_since = placement.last_seen.unwrap_or(placement.record.placed_at);
                let silent = (now - silent_since).to_std().unwrap_or_default();
                if placement.lost_since.is_none() && placement.active() && silent >= lost_after {
                    placement.lost_since = Some(silent_since);
                    tracing::warn!(workspace = %placement.record.workspace_name, environment = %placement.record.environment, peer = %placement.record.peer_name, %error, "placement lost");
                }
            }
        }
        if *placement != before {
            let key = message.key.clone();
            self.publish(&key, false);
        }
    }
}

/// A peer's answer made safe to show and use here: tools named by slugs only, and their
/// links always under `/w/<workspace>/<tool>/` on this node (a hostile peer must not put a
/// `javascript:` or foreign link on the dashboard), strings bounded.
fn sanitized(mut run: RemoteRun, workspace: &str) -> RemoteRun {
    fn bounded(text: &mut String, max: usize) {
        if text.len() > max {
            let mut cut = max;
            while !text.is_char_boundary(cut) {
                cut -= 1;
            }
            text.truncate(cut);
        }
    }
    run.tools.retain(|t| crate::model::is_slug(&t.name));
    run.tools.truncate(64);
    for tool in &mut run.tools {
        let base = format!("/w/{workspace}/{}/", tool.name);
        let safe = tool.url.starts_with(&base)
            && tool.url.bytes().all(|b| b.is_ascii_graphic() && b != b'\\');
        if !safe {
            tool.url = base;
        }
        bounded(&mut tool.url, 2048);
        bounded(&mut tool.kind, 32);
        bounded(&mut tool.state, 32);
    }
    bounded(&mut run.state, 32);
    if let Some(error) = &mut run.error {
        bounded(error, 4096);
    }
    run.notes.truncate(32);
    for note in &mut run.notes {
        bounded(note, 1024);
    }
    bounded(&mut run.peer_workspace, 256);
    run
}

impl Placements {
    fn persist(&self, key: &Key, record: Option<&PlacementRecord>) -> Result<(), String> {
        let id = format!("{}/{}", key.0, key.1);
        let result = match record {
            Some(record) => self
                .tree
                .insert(
                    id.as_bytes(),
                    rmp_serde::to_vec_named(record).expect("placement records encode"),
                )
                .map(|_| ()),
            None => self.tree.remove(id.as_bytes()).map(|_| ()),
        };
        result
            .and_then(|_| self.tree.flush().map(|_| ()))
            .map_err(|e| format!("cannot record the placement: {e}"))
    }

    fn ask_offers(&mut self, ctx: &mut Context<Self>) {
        let watched = self
            .watched_until
            .is_some_and(|until| until > std::time::Instant::now());
        if !watched || self.asking_offers {
            return;
        }
        self.asking_offers = true;
        let peers = self.peers.view();
        let asks: Vec<_> = peers
            .peers
            .iter()
            .filter(|p| p.trusted && p.state == crate::peer_registry::PeerState::Online)
            .filter_map(|p| Some((p.id, p.endpoint()?)))
            .map(|(id, endpoint)| {
                let request = self.client.offer(&endpoint);
                async move {
                    let answer = match tokio::time::timeout(Duration::from_secs(5), request).await {
                        Ok(Ok(offer)) => Ok(offer),
                        Ok(Err(error)) => Err(error.to_string()),
                        Err(_) => Err("no answer in 5 s".to_string()),
                    };
                    (id, answer)
                }
            })
            .collect();
        ctx.spawn(futures_util::future::join_all(asks).into_actor(self).map(
            |mut offers, _, ctx| {
                offers.sort_by_key(|(id, _)| *id);
                ctx.notify(OffersAsked(offers));
            },
        ));
    }

    fn poll(&mut self, ctx: &mut Context<Self>) {
        let peers = self.peers.view();
        let now = Utc::now();
        let keys: Vec<Key> = self.placements.keys().cloned().collect();
        for key in keys {
            if self.polling.contains(&key) || self.placements[&key].record.stopped_at.is_some() {
                continue;
            }
            let placement = &self.placements[&key];
            let Some(endpoint) = peers.endpoint(placement.record.peer) else {
                // Gone from discovery (or never seen since this node started).
                if placement.active() && placement.lost_since.is_none() {
                    let since = placement
                        .last_seen
                        .unwrap_or(placement.record.placed_at.max(self.started));
                    let silent = (now - since).to_std().unwrap_or_default();
                    if silent >= self.config.lost_after || placement.last_seen.is_some() {
                        let name = placement.record.peer_name.clone();
                        let entry = self.placements.get_mut(&key).expect("listed");
                        entry.lost_since = Some(since);
                        entry.error = Some(format!("{name} is gone from the network"));
                        self.publish(&key, false);
                    }
                }
                continue;
            };
            self.polling.insert(key.clone());
            let request = self.client.run_status(&endpoint, key.0, &key.1);
            let timeout = self.config.lost_after.max(Duration::from_secs(2));
            let polled_key = key.clone();
            ctx.spawn(
                async move {
                    match tokio::time::timeout(timeout, request).await {
                        Ok(result) => result,
                        Err(_) => Err(PeerCallError::Failed("no answer in time".into())),
                    }
                }
                .into_actor(self)
                .map(move |result, _, ctx| {
                    ctx.notify(Polled {
                        key: polled_key,
                        result,
                    })
                }),
            );
        }
    }

    fn publish(&mut self, key: &Key, removed: bool) {
        let placement = if removed {
            match self.placements.remove(key) {
                Some(placement) => Arc::new(placement),
                None => return,
            }
        } else {
            match self.placements.get(key) {
                Some(placement) => Arc::new(placement.clone()),
                None => return,
            }
        };
        let sender = &self.view_sender;
        let placements = &self.placements;
        self.bus
            .publish(NodeEvent::PlacementChanged { placement, removed }, |seq| {
                let mut list: Vec<Arc<Placement>> =
                    placements.values().cloned().map(Arc::new).collect();
                list.sort_by(|a, b| {
                    (
                        a.record.workspace_name.as_str(),
                        a.record.environment.as_str(),
                    )
                        .cmp(&(
                            b.record.workspace_name.as_str(),
                            b.record.environment.as_str(),
                        ))
                });
                sender.send_replace(Arc::new(PlacementsView {
                    seq,
                    placements: list,
                }));
            });
    }
}

/// Cloneable handle to the Placements actor.
#[derive(Clone)]
pub struct PlacementsHandle {
    addr: Addr<Placements>,
    view: watch::Receiver<Arc<PlacementsView>>,
    cluster: watch::Receiver<Arc<ClusterView>>,
}

impl PlacementsHandle {
    /// Starts the actor on the current arbiter; its records live in `tree`.
    pub fn start(
        config: PlacementConfig,
        tree: sled::Tree,
        peers: PeerRegistryHandle,
        client: Rc<dyn ClusterClient>,
        bus: EventBus,
    ) -> PlacementsHandle {
        let (view_sender, view) = watch::channel(Arc::new(PlacementsView::default()));
        let (cluster_sender, cluster) = watch::channel(Arc::new(ClusterView::default()));
        let addr = Placements {
            config,
            tree,
            peers,
            client,
            bus,
            placements: HashMap::new(),
            polling: HashSet::new(),
            view_sender,
            started: Utc::now(),
            watched_until: None,
            asking_offers: false,
            cluster_sender,
        }
        .start();
        PlacementsHandle {
            addr,
            view,
            cluster,
        }
    }

    /// Every trusted peer's offer as last asked; asks them for a while from now on.
    pub fn cluster(&self) -> Arc<ClusterView> {
        self.addr.do_send(WatchCluster);
        self.cluster.borrow().clone()
    }

    /// The current read view.
    pub fn view(&self) -> Arc<PlacementsView> {
        self.view.borrow().clone()
    }

    /// Records a placement (replacing an earlier one of the same environment).
    pub async fn place(&self, record: PlacementRecord) -> Result<Arc<Placement>, String> {
        self.ask(Place(record)).await
    }

    /// Marks a placement stopped through this node.
    pub async fn stopped(&self, workspace: Uuid, environment: &str) -> Result<(), String> {
        self.ask(Stopped {
            workspace,
            environment: environment.to_string(),
        })
        .await
    }

    /// Records that the results of `workspace` came back (its root now).
    pub async fn results_back(
        &self,
        workspace: Uuid,
        root: crate::snapshot::Hash,
    ) -> Result<(), String> {
        self.ask(ResultsBack { workspace, root }).await
    }

    /// Forgets a placement.
    pub async fn forget(&self, workspace: Uuid, environment: &str) -> Result<(), String> {
        self.ask(Forget {
            workspace,
            environment: environment.to_string(),
        })
        .await
    }

    async fn ask<M, R>(&self, message: M) -> Result<R, String>
    where
        M: Message<Result = Result<R, String>> + Send + 'static,
        R: Send + 'static,
        Placements: Handler<M>,
    {
        self.addr
            .send(message)
            .await
            .map_err(|_| "the placements actor is gone".to_string())?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hostile_peers_tool_links_stay_on_this_node() {
        let run = RemoteRun {
            state: "running".into(),
            tools: vec![
                RemoteTool {
                    name: "web".into(),
                    url: "javascript:alert(1)".into(),
                    ..RemoteTool::default()
                },
                RemoteTool {
                    name: "lab".into(),
                    url: "/w/ws/lab/tree?x=1".into(),
                    ..RemoteTool::default()
                },
                RemoteTool {
                    name: "../x".into(),
                    url: "/w/ws/../x/".into(),
                    ..RemoteTool::default()
                },
            ],
            ..RemoteRun::default()
        };
        let safe = sanitized(run, "ws");
        assert_eq!(safe.tools.len(), 2);
        assert_eq!(safe.tools[0].url, "/w/ws/web/");
        assert_eq!(safe.tools[1].url, "/w/ws/lab/tree?x=1");
    }
}
