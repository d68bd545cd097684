//! The TransferQueue actor: clone and sync jobs, their queue, limits and persisted state.
//!
//! Data flow: callers hold a [`TransferQueueHandle`]. [`Enqueue`] resolves the peer and the
//! workspace against the PeerRegistry's view, records the job under
//! `<data-dir>/transfers/<job id>/job.msgpack` and starts it when a slot is free. Each
//! attempt is a [`runner`] future on the actor's arbiter that reports back by
//! [`JobReport`] messages; the actor alone changes job state, persists it, and publishes
//! `TransferChanged` events and the [`TransfersView`]. Jobs that were running when the node
//! stopped are queued again at start and resume from what already arrived.
//!
//! Staging data of a failed or cancelled job is kept for a retry (which resumes it) until
//! the job is removed (`DELETE` on a finished job); a successful job's staging is gone (it
//! became the workspace).

mod client;
mod delta;
mod error;
mod fetch;
mod job;
mod materialize;
pub mod push;
mod runner;
mod stage;

use std::collections::HashMap;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use chrono::Utc;
use tokio::sync::watch;
use uuid::Uuid;

use crate::event_bus::EventBus;
use crate::events::NodeEvent;
use crate::peer_registry::{PeerRegistryHandle, PeerState};
use crate::shutdown::Shutdown;
use crate::snapshot::{Hash, SnapshotLimits};
use crate::workspace_store::WorkspaceStoreHandle;

pub use client::{ByteStream, FetchError, ManifestBody, TransferClient};
pub use error::TransferError;
pub use job::{JobInfo, JobState, Progress, TransferKind, TransferRequest};

/// Limits and tuning of the queue.
#[derive(Debug, Clone)]
pub struct TransferConfig {
    /// `<data-dir>/transfers`: job records and staging (same file system as the workspaces).
    pub dir: PathBuf,
    /// Jobs running at once.
    pub max_jobs: usize,
    /// Batch requests in flight per source.
    pub window: usize,
    /// Chunk places a clone plans at a time.
    pub plan_window: usize,
    /// Most chunks per batch request.
    pub batch_chunks: usize,
    /// Most content bytes per batch request.
    pub batch_bytes: u64,
    /// When to ask sources to compress chunks.
    pub compress: Compression,
    /// How long a job waits for an unreachable source before failing.
    pub source_wait: Duration,
    /// Least time between two progress events of a job.
    pub progress_interval: Duration,
    /// Threads that re-hash files during verification.
    pub verify_threads: usize,
    /// Times one chunk may arrive corrupted before the job fails.
    pub max_bad_per_chunk: u32,
    /// Bounds on a source's snapshot.
    pub limits: SnapshotLimits,
}

impl TransferConfig {
    /// Defaults for a node whose data lives in `data_dir`.
    pub fn new(data_dir: &std::path::Path) -> TransferConfig {
        TransferConfig {
            dir: data_dir.join("transfers"),
            max_jobs: 2,
            window: 4,
            plan_window: 32_768,
            batch_chunks: 1024,
            batch_bytes: 8 * 1024 * 1024,
            compress: Compression::Auto,
            source_wait: Duration::from_secs(600),
            progress_interval: Duration::from_millis(250),
            verify_threads: std::thread::available_parallelism()
                .map_or(2, |n| n.get())
                .min(8),
            max_bad_per_chunk: 5,
            limits: SnapshotLimits::default(),
        }
    }
}

/// When chunks travel zstd-compressed (incompressible chunks always go raw).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Compression {
    /// Compress, except from a source on this host (loopback), where the link is a memory
    /// copy and compressing only costs CPU.
    #[default]
    Auto,
    /// Always compress.
    Always,
    /// Never compress.
    Never,
}

impl Compression {
    /// Whether to ask the source at `base_url` to compress.
    pub fn for_source(self, base_url: &str) -> bool {
        match self {
            Compression::Always => true,
            Compression::Never => false,
            Compression::Auto => {
                let host = base_url
                    .split("://")
                    .nth(1)
                    .unwrap_or(base_url)
                    .rsplit_once(':')
                    .map_or(base_url, |(host, _)| host)
                    .trim_start_matches('[')
                    .trim_end_matches(']');
                !host
                    .parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback())
                    && host != "localhost"
            }
        }
    }
}

/// Published read view: every job, newest first.
#[derive(Debug, Clone, Default)]
pub struct TransfersView {
    /// Sequence number of the last event reflected here.
    pub seq: u64,
    /// The jobs.
    pub jobs: Vec<Arc<JobInfo>>,
}

impl TransfersView {
    /// The job with this id.
    pub fn find(&self, id: &str) -> Option<Arc<JobInfo>> {
        self.jobs.iter().find(|j| j.id.to_string() == id).cloned()
    }

    /// Jobs neither done, failed nor cancelled.
    pub fn active(&self) -> usize {
        self.jobs.iter().filter(|j| !j.state.is_finished()).count()
    }
}

/// The actor.
pub struct TransferQueue {
    config: Arc<TransferConfig>,
    jobs: HashMap<Uuid, JobInfo>,
    running: HashMap<Uuid, Shutdown>,
    /// Set by [`PauseAll`]: the node is stopping; interrupted jobs resume at the next start.
    paused: bool,
    store: WorkspaceStoreHandle,
    peers: PeerRegistryHandle,
    client: Rc<dyn TransferClient>,
    bus: EventBus,
    view_sender: watch::Sender<Arc<TransfersView>>,
    /// Runs a clone's `post_clone` hook (the RuntimeSupervisor, which confines it).
    post_clone: Option<Recipient<crate::runtime_supervisor::hooks::PostClone>>,
}

impl Actor for TransferQueue {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        if let Err(error) = std::fs::create_dir_all(&self.config.dir) {
            tracing::error!(dir = %self.config.dir.display(), %error, "cannot create the transfers directory");
        }
        for job in load_jobs(&self.config.dir) {
            let mut job = job;
            if !job.state.is_finished() {
                tracing::info!(job = %job.id, workspace = %job.workspace_name, "resuming a transfer interrupted by a restart");
                job.state = JobState::Queued;
                job.notes.push("resumed after a node restart".into());
            }
            self.jobs.insert(job.id, job);
        }
        let store = self.store.clone();
        push::prune_bases(&self.config.dir, |id| store.get(&id.to_string()).is_ok());
        self.publish_view();
        self.schedule(ctx);
    }

    fn stopping(&mut self, _: &mut Self::Context) -> Running {
        for cancel in self.running.values() {
            cancel.trigger();
        }
        Running::Stop
    }
}

/// Asks for a clone or sync.
#[derive(Message)]
#[rtype(result = "Result<Arc<JobInfo>, TransferError>")]
struct Enqueue {
    kind: TransferKind,
    request: TransferRequest,
}

/// Takes a peer's pushed changes into workspace `local` of this node (the caller checked
/// that the peer may write it).
#[derive(Message)]
#[rtype(result = "Result<Arc<JobInfo>, TransferError>")]
struct EnqueuePush {
    local: Uuid,
    peer: crate::peer_registry::TrustedPeer,
    request: push::PushRequest,
    by: String,
}

impl Handler<EnqueuePush> for TransferQueue {
    type Result = Result<Arc<JobInfo>, TransferError>;

    fn handle(&mut self, message: EnqueuePush, ctx: &mut Self::Context) -> Self::Result {
        let EnqueuePush {
            local,
            peer,
            request,
            by,
        } = message;
        let entry = self.store.get(&local.to_string())?;
        if let Some(other) = self
            .jobs
            .values()
            .find(|other| !other.state.is_finished() && other.local_id == Some(local))
        {
            return Err(TransferError::BadRequest(format!(
                "transfer {} is already working on `{}`; push again when it is done",
                other.id, entry.manifest.name
            )));
        }
        let job = JobInfo {
            peer_id: peer.id,
            peer_key: Some(peer.key),
            peer_name: peer.name.clone(),
            workspace_id: request.source_workspace_id,
            workspace_name: request.source_name.clone(),
            target_name: entry.manifest.name.clone(),
            local_id: Some(local),
            ..JobInfo::queued(
                TransferKind::Push,
                TransferRequest {
                    peer: peer.id.to_string(),
                    workspace: local.to_string(),
                    by,
                    force: request.force,
                    ..TransferRequest::default()
                },
            )
        };
        let dir = self.config.dir.join(job.id.to_string());
        std::fs::create_dir_all(&dir).map_err(TransferError::io("creating", &dir))?;
        let path = dir.join(push::REQUEST_FILE);
        crate::fsio::write_atomic(&path, &request.encode())
            .map_err(|e| TransferError::io("writing", &path)(std::io::Error::other(e)))?;
        tracing::info!(job = %job.id, peer = %peer.name, workspace = %entry.manifest.name, changes = request.changes.len(), branches = request.branches.len(), "push queued");
        let id = job.id;
        self.jobs.insert(id, job);
        self.persist(id);
        self.publish(id);
        self.schedule(ctx);
        Ok(Arc::new(self.jobs[&id].clone()))
    }
}

/// Cancels an active job, or removes a finished one with its staging data.
#[derive(Message)]
#[rtype(result = "Result<Option<Arc<JobInfo>>, TransferError>")]
struct Cancel {
    id: String,
}

/// The node is stopping: running jobs stop at their next step and stay queued (their
/// progress is on disk), nothing new starts. Answers how many were running.
#[derive(Message)]
#[rtype(result = "usize")]
struct PauseAll;

impl Handler<PauseAll> for TransferQueue {
    type Result = usize;

    fn handle(&mut self, _: PauseAll, _: &mut Self::Context) -> usize {
        self.paused = true;
        for cancel in self.running.values() {
            cancel.trigger();
        }
        self.running.len()
    }
}

/// Queues a failed or cancelled job again; it resumes from what arrived.
#[derive(Message)]
#[rtype(result = "Result<Arc<JobInfo>, TransferError>")]
struct Retry {
    id: String,
}

/// What a runner tells the queue.
#[derive(Message)]
#[rtype(result = "()")]
pub enum JobReport {
    /// The job entered a state.
    State(Uuid, JobState),
    /// New counters.
    Progress(Uuid, Progress),
    /// The peers chunks are fetched from.
    Sources(Uuid, Vec<String>),
    /// The snapshot's root hash.
    Root(Uuid, Hash),
}

impl Handler<Enqueue> for TransferQueue {
    type Result = Result<Arc<JobInfo>, TransferError>;

    fn handle(&mut self, message: Enqueue, ctx: &mut Self::Context) -> Self::Result {
        let Enqueue { kind, request } = message;
        let mut job = JobInfo::queued(kind, request);
        match kind {
            TransferKind::Clone => self.resolve_clone(&mut job)?,
            TransferKind::Sync => self.resolve_sync(&mut job)?,
            TransferKind::Push => {
                return Err(TransferError::BadRequest(
                    "a push is asked for by the pushing node (`aienv sync WS --push`)".into(),
                ))
            }
        }
        if let Some(other) = self.jobs.values().find(|other| {
            !other.state.is_finished()
                && (other.target_name == job.target_name
                    || (job.local_id.is_some() && other.local_id == job.local_id))
        }) {
            return Err(TransferError::BadRequest(format!(
                "transfer {} is already working on `{}`",
                other.id, job.target_name
            )));
        }
        tracing::info!(job = %job.id, kind = kind.as_str(), peer = %job.peer_name, workspace = %job.workspace_name, target = %job.target_name, "transfer queued");
        let id = job.id;
        self.jobs.insert(id, job);
        self.persist(id);
        self.publish(id);
        self.schedule(ctx);
        Ok(Arc::new(self.jobs[&id].clone()))
    }
}

impl Handler<Cancel> for TransferQueue {
    type Result = Result<Option<Arc<JobInfo>>, TransferError>;

    fn handle(&mut self, message: Cancel, _: &mut Self::Context) -> Self::Result {
        let id = self.find(&message.id)?;
        let state = self.jobs[&id].state;
        if let Some(cancel) = self.running.get(&id) {
            // The runner stops at its next step and `finish` records the cancellation.
            cancel.trigger();
            return Ok(Some(Arc::new(self.jobs[&id].clone())));
        }
        if state.is_finished() {
            self.jobs.remove(&id);
            let dir = self.config.dir.join(id.to_string());
            if let Err(error) = std::fs::remove_dir_all(&dir) {
                tracing::warn!(%error, dir = %dir.display(), "removing a transfer's files failed");
            }
            self.publish_view();
            return Ok(None);
        }
        self.set_finished(id, JobState::Cancelled, None);
        Ok(Some(Arc::new(self.jobs[&id].clone())))
    }
}

impl Handler<Retry> for TransferQueue {
    type Result = Result<Arc<JobInfo>, TransferError>;

    fn handle(&mut self, message: Retry, ctx: &mut Self::Context) -> Self::Result {
        let id = self.find(&message.id)?;
        let job = self.jobs.get_mut(&id).expect("found");
        if !matches!(job.state, JobState::Failed | JobState::Cancelled) {
            return Err(TransferError::WrongState {
                id: id.to_string(),
                state: job.state.as_str(),
                why: "only failed or cancelled transfers can be retried",
            });
        }
        job.state = JobState::Queued;
        job.error = None;
        job.finished = None;
        job.updated = Utc::now();
        self.persist(id);
        self.publish(id);
        self.schedule(ctx);
        Ok(Arc::new(self.jobs[&id].clone()))
    }
}

impl Handler<JobReport> for TransferQueue {
    type Result = ();

    fn handle(&mut self, report: JobReport, _: &mut Self::Context) {
        let id = match &report {
            JobReport::State(id, _)
            | JobReport::Progress(id, _)
            | JobReport::Sources(id, _)
            | JobReport::Root(id, _) => *id,
        };
        // Reports from a runner that was cancelled meanwhile are dropped.
        if !self.running.contains_key(&id) {
            return;
        }
        let Some(job) = self.jobs.get_mut(&id) else {
            return;
        };
        let persist = match report {
            JobReport::State(_, state) => {
                job.state = state;
                true
            }
            JobReport::Progress(_, progress) => {
                job.progress = progress;
                false
            }
            JobReport::Sources(_, sources) => {
                job.sources = sources;
                false
            }
            JobReport::Root(_, root) => {
                job.root = Some(root);
                true
            }
        };
        job.updated = Utc::now();
        if persist {
            self.persist(id);
        }
        self.publish(id);
    }
}

impl TransferQueue {
    fn find(&self, id: &str) -> Result<Uuid, TransferError> {
        self.jobs
            .keys()
            .find(|job| job.to_string() == id)
            .copied()
            .ok_or_else(|| TransferError::JobNotFound(id.to_string()))
    }

    fn resolve_clone(&self, job: &mut JobInfo) -> Result<(), TransferError> {
        let view = self.peers.view();
        let wanted = job.request.peer.as_str();
        let peer = view
            .peers
            .iter()
            .find(|p| p.id.to_string() == wanted || p.name == wanted)
            .filter(|p| p.state != PeerState::Gone)
            .ok_or_else(|| TransferError::PeerNotFound {
                name: wanted.to_string(),
                close: close_matches(
                    wanted,
                    view.peers
                        .iter()
                        .filter(|p| p.state != PeerState::Gone)
                        .map(|p| p.name.as_str()),
                ),
            })?;
        let target = job.request.workspace.as_str();
        if job.request.placed {
            let (Ok(id), Some(name)) = (target.parse::<Uuid>(), job.request.rename_to.clone())
            else {
                return Err(TransferError::WorkspaceNotFound {
                    peer: peer.name.clone(),
                    name: target.to_string(),
                    close: Vec::new(),
                });
            };
            job.peer_id = peer.id;
            job.peer_key = Some(peer.key);
            job.peer_name = peer.name.clone();
            job.workspace_id = id;
            job.workspace_name = name.clone();
            job.target_name = name;
            if self.store.get(&job.target_name).is_ok() {
                return Err(TransferError::NameTaken(job.target_name.clone()));
            }
            return Ok(());
        }
        let entry = peer
            .catalog
            .iter()
            .find(|e| e.id.to_string() == target || e.name == target)
            .ok_or_else(|| TransferError::WorkspaceNotFound {
                peer: peer.name.clone(),
                name: target.to_string(),
                close: close_matches(target, peer.catalog.iter().map(|e| e.name.as_str())),
            })?;
        job.peer_id = peer.id;
        job.peer_key = Some(peer.key);
        job.peer_name = peer.name.clone();
        job.workspace_id = entry.id;
        job.workspace_name = entry.name.clone();
        job.target_name = job
            .request
            .rename_to
            .clone()
            .unwrap_or_else(|| entry.name.clone());
        if let Ok(existing) = self.store.get(&job.target_name) {
            if existing.manifest.name == job.target_name {
                return Err(TransferError::NameTaken(job.target_name.clone()));
            }
        }
        Ok(())
    }

    fn resolve_sync(&self, job: &mut JobInfo) -> Result<(), TransferError> {
        let local = self.store.get(&job.request.workspace)?;
        if job.request.placed && local.origin.is_none() {
            return self.resolve_results(job, &local);
        }
        let origin = local
            .origin
            .as_ref()
            .ok_or_else(|| TransferError::NotAClone(local.manifest.name.clone()))?;
        let view = self.peers.view();
        let wanted = if job.request.peer.is_empty() {
            origin.peer_id.to_string()
        } else {
            job.request.peer.clone()
        };
        let peer = view
            .peers
            .iter()
            .find(|p| p.id.to_string() == wanted || p.name == wanted)
            .ok_or_else(|| TransferError::PeerNotFound {
                name: if job.request.peer.is_empty() {
                    format!(
                        "{} (the origin of `{}`)",
                        origin.peer_name, local.manifest.name
                    )
                } else {
                    wanted.clone()
                },
                close: close_matches(&wanted, view.peers.iter().map(|p| p.name.as_str())),
            })?;
        if let Some(recorded) = origin.peer_key.filter(|_| peer.id == origin.peer_id) {
            if recorded != peer.key {
                return Err(TransferError::NoSource(format!(
                    "`{}` now presents key {}, not the key {recorded} `{}` was cloned from; sync refused",
                    peer.name, peer.key, local.manifest.name
                )));
            }
        }
        job.peer_id = peer.id;
        job.peer_key = Some(peer.key);
        job.peer_name = peer.name.clone();
        job.workspace_id = origin.workspace_id;
        job.workspace_name = origin.workspace_name.clone();
        job.target_name = local.manifest.name.clone();
        job.local_id = Some(local.manifest.id);
        job.baseline = self
            .jobs
            .values()
            .filter(|other| other.state == JobState::Done && other.local_id == job.local_id)
            .max_by_key(|other| other.finished)
            .and_then(|other| other.local_root);
        Ok(())
    }

    /// A sync that brings a placed workspace's results back from the peer that ran it.
    fn resolve_results(
        &self,
        job: &mut JobInfo,
        local: &crate::workspace_store::WorkspaceEntry,
    ) -> Result<(), TransferError> {
        let view = self.peers.view();
        let wanted = job.request.peer.as_str();
        let peer = view
            .peers
            .iter()
            .find(|p| p.id.to_string() == wanted || p.name == wanted)
            .filter(|p| p.state != PeerState::Gone)
            .ok_or_else(|| TransferError::PeerNotFound {
                name: wanted.to_string(),
                close: Vec::new(),
            })?;
        job.peer_id = peer.id;
        job.peer_key = Some(peer.key);
        job.peer_name = peer.name.clone();
        job.workspace_id = local.manifest.id;
        job.workspace_name = local.manifest.name.clone();
        job.target_name = local.manifest.name.clone();
        job.local_id = Some(local.manifest.id);
        job.baseline = None;
        Ok(())
    }

    fn schedule(&mut self, ctx: &mut Context<Self>) {
        while !self.paused && self.running.len() < self.config.max_jobs {
            let Some(id) = self
                .jobs
                .values()
                .filter(|j| j.state == JobState::Queued)
                .min_by_key(|j| j.created)
                .map(|j| j.id)
            else {
                break;
            };
            self.start(id, ctx);
        }
    }

    fn start(&mut self, id: Uuid, ctx: &mut Context<Self>) {
        let cancel = Shutdown::new();
        self.running.insert(id, cancel.clone());
        let job = self.jobs.get_mut(&id).expect("scheduled jobs exist");
        job.attempts += 1;
        job.started = Some(Utc::now());
        job.state = JobState::FetchingManifest;
        let job_dir = self.config.dir.join(id.to_string());
        let context = runner::JobContext {
            job: job.clone(),
            store: self.store.clone(),
            peers: self.peers.clone(),
            client: self.client.clone(),
            config: self.config.clone(),
            job_dir: job_dir.clone(),
            cancel,
            queue: ctx.address(),
            post_clone: self.post_clone.clone(),
        };
        if let Err(error) = std::fs::create_dir_all(&job_dir) {
            self.set_finished(
                id,
                JobState::Failed,
                Some(TransferError::io("creating", &job_dir)(error).to_string()),
            );
            return;
        }
        self.persist(id);
        self.publish(id);
        tracing::info!(job = %id, "transfer started");
        ctx.spawn(
            runner::run(context)
                .into_actor(self)
                .map(move |result, actor, ctx| {
                    actor.running.remove(&id);
                    match result {
                        Ok(outcome) => {
                            if let Some(job) = actor.jobs.get_mut(&id) {
                                job.local_id = Some(outcome.local_id);
                                job.target_name = outcome.local_name;
                                job.notes.extend(outcome.notes);
                                job.hook_error = outcome.hook_error;
                                job.progress = outcome.progress;
                                job.local_root = outcome.local_root;
                            }
                            actor.set_finished(id, JobState::Done, None);
                            for stale in ["tree", "stage", "done.log", "root"] {
                                let path = actor.config.dir.join(id.to_string()).join(stale);
                                let _ = std::fs::remove_dir_all(&path);
                                let _ = std::fs::remove_file(&path);
                            }
                        }
                        Err(TransferError::Cancelled) if actor.paused => {
                            // Stopped by the node's shutdown, not by a person: it resumes.
                            if let Some(job) = actor.jobs.get_mut(&id) {
                                job.state = JobState::Queued;
                                job.updated = Utc::now();
                                job.notes.push("paused by the node's shutdown".into());
                            }
                            actor.persist(id);
                            actor.publish(id);
                        }
                        Err(TransferError::Cancelled) => {
                            actor.set_finished(id, JobState::Cancelled, None)
                        }
                        Err(error) => {
                            tracing::warn!(job = %id, %error, "transfer failed");
                            if let (TransferError::Conflict { paths, .. }, Some(job)) =
                                (&error, actor.jobs.get_mut(&id))
                            {
                                job.conflicts = paths.clone();
                            }
                            actor.set_finished(id, JobState::Failed, Some(error.to_string()));
                        }
                    }
                    actor.schedule(ctx);
                }),
        );
    }

    fn set_finished(&mut self, id: Uuid, state: JobState, error: Option<String>) {
        let Some(job) = self.jobs.get_mut(&id) else {
            return;
        };
        job.state = state;
        job.error = error;
        job.finished = Some(Utc::now());
        job.updated = Utc::now();
        job.progress.rate = 0;
        job.progress.eta_seconds = None;
        tracing::info!(job = %id, state = state.as_str(), "transfer finished");
        self.persist(id);
        self.publish(id);
    }

    fn persist(&self, id: Uuid) {
        let Some(job) = self.jobs.get(&id) else {
            return;
        };
        let dir = self.config.dir.join(id.to_string());
        let result = std::fs::create_dir_all(&dir).and_then(|()| {
            let temp = dir.join("job.msgpack.tmp");
            std::fs::write(
                &temp,
                rmp_serde::to_vec_named(job).expect("jobs always encode"),
            )?;
            std::fs::rename(&temp, dir.join("job.msgpack"))
        });
        if let Err(error) = result {
            tracing::warn!(job = %id, %error, "saving the transfer's state failed");
        }
    }

    fn publish(&mut self, id: Uuid) {
        let Some(job) = self.jobs.get(&id) else {
            return;
        };
        let job = Arc::new(job.clone());
        let sender = &self.view_sender;
        let jobs = &self.jobs;
        self.bus.publish(NodeEvent::TransferChanged(job), |seq| {
            sender.send_replace(Arc::new(build_view(jobs, seq)));
        });
    }

    fn publish_view(&mut self) {
        let view = build_view(&self.jobs, self.bus.last_seq());
        self.view_sender.send_replace(Arc::new(view));
    }
}

fn build_view(jobs: &HashMap<Uuid, JobInfo>, seq: u64) -> TransfersView {
    let mut list: Vec<Arc<JobInfo>> = jobs.values().cloned().map(Arc::new).collect();
    list.sort_by_key(|job| std::cmp::Reverse(job.created));
    TransfersView { seq, jobs: list }
}

fn load_jobs(dir: &std::path::Path) -> Vec<JobInfo> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| {
            let path = entry.path().join("job.msgpack");
            let bytes = std::fs::read(&path).ok()?;
            match rmp_serde::from_slice::<JobInfo>(&bytes) {
                Ok(job) => Some(job),
                Err(error) => {
                    tracing::warn!(path = %path.display(), %error, "ignoring an unreadable transfer record");
                    None
                }
            }
        })
        .collect()
}

/// Names within a small edit distance of `wanted` (or containing it), closest first.
fn close_matches<'a>(wanted: &str, names: impl Iterator<Item = &'a str>) -> Vec<String> {
    let wanted_lower = wanted.to_lowercase();
    let mut scored: Vec<(usize, String)> = names
        .filter_map(|name| {
            let lower = name.to_lowercase();
            let distance = edit_distance(&wanted_lower, &lower);
            let close = distance <= (wanted.len() / 3).max(2)
                || lower.contains(&wanted_lower)
                || wanted_lower.contains(&lower);
            close.then(|| (distance, name.to_string()))
        })
        .collect();
    scored.sort();
    scored.dedup_by(|a, b| a.1 == b.1);
    scored.into_iter().take(5).map(|(_, name)| name).collect()
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut previous: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut current = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            current[j + 1] = (previous[j] + usize::from(ca != *cb))
                .min(previous[j + 1] + 1)
                .min(current[j] + 1);
        }
        previous = current;
    }
    previous[b.len()]
}

/// Cloneable async API of the TransferQueue.
#[derive(Clone)]
pub struct TransferQueueHandle {
    addr: Addr<TransferQueue>,
    view: watch::Receiver<Arc<TransfersView>>,
    /// `<data-dir>/transfers`, where clones' bases are read.
    dir: PathBuf,
}

impl TransferQueueHandle {
    /// Starts the queue on the current arbiter (its runners use `client`, which is not
    /// `Send`).
    pub fn start(
        config: TransferConfig,
        store: WorkspaceStoreHandle,
        peers: PeerRegistryHandle,
        client: Rc<dyn TransferClient>,
        bus: EventBus,
        post_clone: Option<Recipient<crate::runtime_supervisor::hooks::PostClone>>,
    ) -> TransferQueueHandle {
        let (view_sender, view) = watch::channel(Arc::new(TransfersView {
            seq: bus.last_seq(),
            jobs: Vec::new(),
        }));
        let dir = config.dir.clone();
        let addr = TransferQueue {
            config: Arc::new(config),
            jobs: HashMap::new(),
            running: HashMap::new(),
            paused: false,
            store,
            peers,
            client,
            bus,
            view_sender,
            post_clone,
        }
        .start();
        TransferQueueHandle { addr, view, dir }
    }

    /// The current view.
    pub fn view(&self) -> Arc<TransfersView> {
        self.view.borrow().clone()
    }

    /// A receiver that sees every new view.
    pub fn subscribe(&self) -> watch::Receiver<Arc<TransfersView>> {
        self.view.clone()
    }

    /// Queues a clone or sync.
    pub async fn enqueue(
        &self,
        kind: TransferKind,
        request: TransferRequest,
    ) -> Result<Arc<JobInfo>, TransferError> {
        self.addr
            .send(Enqueue { kind, request })
            .await
            .map_err(|_| TransferError::Unavailable)?
    }

    /// Queues a peer's push into workspace `local` (see [`push`]).
    pub async fn push(
        &self,
        local: Uuid,
        peer: crate::peer_registry::TrustedPeer,
        request: push::PushRequest,
        by: String,
    ) -> Result<Arc<JobInfo>, TransferError> {
        self.addr
            .send(EnqueuePush {
                local,
                peer,
                request,
                by,
            })
            .await
            .map_err(|_| TransferError::Unavailable)?
    }

    /// What workspace `id` (a clone) had from its origin at its last clone or sync, read
    /// through once (blocking) and kept open to be read in order.
    pub fn base(
        &self,
        id: Uuid,
    ) -> Result<Option<crate::snapshot_receive::KeptSnapshot>, TransferError> {
        push::open_base(&self.dir, id)
    }

    /// Cancels an active job; removes a finished one (returns `None`).
    pub async fn cancel(&self, id: &str) -> Result<Option<Arc<JobInfo>>, TransferError> {
        self.addr
            .send(Cancel { id: id.to_string() })
            .await
            .map_err(|_| TransferError::Unavailable)?
    }

    /// Pauses every running job for the node's shutdown and waits (at most `timeout`) until
    /// their runners have stopped and saved where they were.
    pub async fn shut_down(&self, timeout: std::time::Duration) {
        if self.addr.send(PauseAll).await.unwrap_or(0) == 0 {
            return;
        }
        let mut view = self.subscribe();
        let _ = tokio::time::timeout(timeout, async {
            loop {
                if view.borrow().jobs.iter().all(|j| {
                    !matches!(
                        j.state,
                        JobState::FetchingManifest
                            | JobState::Transferring
                            | JobState::Verifying
                            | JobState::Materializing
                    )
                }) {
                    return;
                }
                if view.changed().await.is_err() {
                    return;
                }
            }
        })
        .await;
    }

    /// Retries a failed or cancelled job.
    pub async fn retry(&self, id: &str) -> Result<Arc<JobInfo>, TransferError> {
        self.addr
            .send(Retry { id: id.to_string() })
            .await
            .map_err(|_| TransferError::Unavailable)?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compression_policy() {
        assert!(!Compression::Auto.for_source("http://127.0.0.1:37778"));
        assert!(!Compression::Auto.for_source("http://[::1]:37778"));
        assert!(Compression::Auto.for_source("http://10.0.0.5:37778"));
        assert!(Compression::Always.for_source("http://127.0.0.1:1"));
        assert!(!Compression::Never.for_source("http://10.0.0.5:1"));
    }

    #[test]
    fn close_names() {
        let names = ["gpu-box", "laptop", "gpu-server", "lab-01"];
        assert_eq!(close_matches("gpu-bx", names.into_iter()), ["gpu-box"]);
        assert_eq!(
            close_matches("gpu", names.into_iter()),
            ["gpu-box", "gpu-server"]
        );
        assert!(close_matches("zzzzzz", names.into_iter()).is_empty());
    }
}
