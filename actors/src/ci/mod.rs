//! CI runs: a command run headless in a workspace's environment, for pipelines (`aienv ci`)
//! and webhooks. The **CiRuns** actor keeps the runs (sled tree `ci_runs`, so the list
//! survives a restart; logs in `<data-dir>/ci/<run>.log`), runs at most
//! [`CiConfig::max_running`] at once and queues the rest, and publishes `CiRunChanged` events
//! and the [`CiView`]. A run pulls the workspace's git projects when asked (fast-forward
//! only), then asks the RuntimeSupervisor to set the environment up and run the command
//! ([`crate::runtime_supervisor::command`]), and records the exit code, timings and any JUnit
//! reports the command wrote. Webhook deliveries are remembered (tree `ci_deliveries`) so a
//! repeated delivery id answers with the run it started instead of starting another.

pub mod junit;
pub mod remote;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use actix::prelude::*;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use uuid::Uuid;

use crate::event_bus::EventBus;
use crate::events::NodeEvent;
use crate::peer_registry::PeerRegistryHandle;
use crate::runtime_supervisor::command::RunCommand;
use crate::runtime_supervisor::{Borrower, RuntimeSupervisorHandle};
use crate::transfer_queue::{JobState, TransfersView};
use crate::workspace_store::WorkspaceStoreHandle;

pub use junit::JunitReport;
pub use remote::{CiRemote, RemoteCiRequest, RemoteCiStatus, RemotePeer};

/// How long a peer running a run may stay silent before the run is given up as lost.
const REMOTE_SILENCE: Duration = Duration::from_secs(60);

/// Most arguments of a command.
const MAX_ARGS: usize = 256;
/// Most bytes of a command, all arguments together.
const MAX_COMMAND_BYTES: usize = 64 * 1024;
/// Deliveries remembered per hook before the oldest are forgotten.
const MAX_DELIVERIES: usize = 10_000;
/// Longest a delivery id may be.
const MAX_DELIVERY_ID: usize = 200;

/// Settings.
#[derive(Debug, Clone)]
pub struct CiConfig {
    /// `<data-dir>/ci`: the runs' logs.
    pub dir: PathBuf,
    /// Runs at once; the rest wait in order.
    pub max_running: usize,
    /// Finished runs kept (with their logs); older ones are forgotten.
    pub keep: usize,
}

impl CiConfig {
    /// Defaults under `data_dir`.
    pub fn new(data_dir: &std::path::Path) -> CiConfig {
        CiConfig {
            dir: data_dir.join("ci"),
            max_running: 2,
            keep: 500,
        }
    }
}

/// Errors of the CI actor.
#[derive(Debug, thiserror::Error)]
pub enum CiError {
    /// No such workspace, environment or run.
    #[error("{0}")]
    NotFound(String),
    /// The request is not one the node can run.
    #[error("{0}")]
    BadRequest(String),
    /// The run records could not be written.
    #[error("CI run records: {0}")]
    Database(String),
    /// The actor is gone (the node is stopping).
    #[error("the CI runner is not running")]
    Gone,
}

/// What started a run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Trigger {
    /// The user who asked, or `hook:<name>`.
    pub by: String,
    /// The webhook's name, when one started it.
    #[serde(default)]
    pub hook: Option<String>,
    /// The forge's event (`push`, `Push Hook`, ...).
    #[serde(default)]
    pub event: Option<String>,
    /// The forge's delivery id.
    #[serde(default)]
    pub delivery: Option<String>,
}

/// A run to start.
#[derive(Debug, Clone)]
pub struct CiRequest {
    /// Workspace name or id.
    pub workspace: String,
    /// Environment (`None`: the workspace's first).
    pub environment: Option<String>,
    /// The command's argument vector.
    pub command: Vec<String>,
    /// Pull the workspace's git projects first.
    pub pull: bool,
    /// How long the command may run.
    pub timeout: Duration,
    /// Who or what asked.
    pub trigger: Trigger,
    /// Run it on this trusted peer instead of here.
    pub on: Option<RemotePeer>,
    /// A run for a peer (this node lends): sized within the lending limits.
    pub borrower: Option<Borrower>,
    /// A run for a peer whose workspace is still arriving: this transfer brings it, and
    /// `workspace` is the name it arrives under.
    pub transfer: Option<Uuid>,
}

/// Where a run is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CiState {
    /// Waiting for a free slot.
    Queued,
    /// Waiting for the workspace to arrive (a run for a peer).
    Fetching,
    /// Pulling the git projects.
    Pulling,
    /// Setting the environment up and running the command.
    Running,
    /// The command exited 0.
    Passed,
    /// The command exited otherwise, or ran past its time.
    Failed,
    /// The run could not get to its command (see `error`).
    Error,
}

impl CiState {
    /// Its name.
    pub fn as_str(self) -> &'static str {
        match self {
            CiState::Queued => "queued",
            CiState::Fetching => "fetching",
            CiState::Pulling => "pulling",
            CiState::Running => "running",
            CiState::Passed => "passed",
            CiState::Failed => "failed",
            CiState::Error => "error",
        }
    }

    /// The state named `name` (as [`CiState::as_str`] writes it).
    pub fn parse(name: &str) -> Option<CiState> {
        [
            CiState::Queued,
            CiState::Fetching,
            CiState::Pulling,
            CiState::Running,
            CiState::Passed,
            CiState::Failed,
            CiState::Error,
        ]
        .into_iter()
        .find(|state| state.as_str() == name)
    }

    /// Passed, failed or error.
    pub fn is_finished(self) -> bool {
        matches!(self, CiState::Passed | CiState::Failed | CiState::Error)
    }
}

/// One run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CiRun {
    /// Its id.
    pub id: Uuid,
    /// Its number on this node (1, 2, ...).
    pub number: u64,
    /// The workspace's id.
    pub workspace_id: Uuid,
    /// The workspace's name when it started.
    pub workspace: String,
    /// The environment asked for (`None`: the first); the one used once it ran.
    pub environment: Option<String>,
    /// The command.
    pub command: Vec<String>,
    /// Whether the git projects are pulled first.
    pub pull: bool,
    /// Seconds the command may run.
    pub timeout_seconds: u64,
    /// What started it.
    pub trigger: Trigger,
    /// Where it is.
    pub state: CiState,
    /// The command's exit code.
    pub exit_code: Option<i32>,
    /// How the command ended, in words.
    pub reason: Option<String>,
    /// Why the run could not get to its command.
    pub error: Option<String>,
    /// Where it ran (`process`, `docker`).
    pub backend: Option<String>,
    /// What happened on the way (pulls, sizing).
    pub notes: Vec<String>,
    /// Seconds per phase (`queued`, `pull`, `setup`, `command`).
    pub timings: BTreeMap<String, f64>,
    /// JUnit reports the command wrote.
    pub junit: Vec<JunitReport>,
    /// The log file.
    pub log: PathBuf,
    /// When it was asked for.
    pub created: DateTime<Utc>,
    /// When it left the queue.
    pub started: Option<DateTime<Utc>>,
    /// When it finished.
    pub finished: Option<DateTime<Utc>>,
    /// The trusted peer it runs on (`aienv ci --on`); its log and reports are copied here.
    #[serde(default)]
    pub peer: Option<RemotePeer>,
    /// The run's id on that peer.
    #[serde(default)]
    pub remote_run: Option<Uuid>,
    /// The peer it runs for (this node lends).
    #[serde(default)]
    pub borrower: Option<Borrower>,
    /// The transfer bringing a peer's workspace here first.
    #[serde(default)]
    pub transfer: Option<Uuid>,
}

impl CiRun {
    /// Where the copy of JUnit report `index` of a run on a peer is kept.
    pub fn junit_copy(&self, index: usize) -> PathBuf {
        self.log
            .with_file_name(format!("{}.junit-{index}.xml", self.id))
    }
}

/// The runs, newest first.
#[derive(Debug, Clone, Default)]
pub struct CiView {
    /// Sequence number of the last event reflected.
    pub seq: u64,
    /// Every run kept.
    pub runs: Vec<Arc<CiRun>>,
}

impl CiView {
    /// Whether an unfinished run of workspace `workspace` is running on `peer` (which may
    /// then fetch the workspace).
    pub fn running_on(&self, workspace: Uuid, peer: Uuid) -> bool {
        self.runs.iter().any(|r| {
            r.workspace_id == workspace
                && !r.state.is_finished()
                && r.peer.as_ref().is_some_and(|p| p.id == peer)
        })
    }
}

/// What a run needs beyond the store and the supervisor: transfers (a peer's workspace
/// arriving) and peers (runs on them).
#[derive(Clone)]
pub struct CiLinks {
    /// The TransferQueue's view.
    pub transfers: watch::Receiver<Arc<TransfersView>>,
    /// The peers, for their endpoints.
    pub peers: PeerRegistryHandle,
    /// Calls to peers.
    pub remote: Rc<dyn CiRemote>,
}

/// A run started, or the one a repeated delivery started earlier.
#[derive(Debug, Clone)]
pub struct Started {
    /// The run.
    pub run: Arc<CiRun>,
    /// Whether the delivery had been seen: nothing new started.
    pub duplicate: bool,
}

/// The CiRuns actor.
pub struct CiRuns {
    config: CiConfig,
    runs: HashMap<Uuid, CiRun>,
    queue: VecDeque<Uuid>,
    running: usize,
    next_number: u64,
    tree: sled::Tree,
    deliveries: sled::Tree,
    store: WorkspaceStoreHandle,
    runtimes: RuntimeSupervisorHandle,
    links: CiLinks,
    bus: EventBus,
    view_sender: watch::Sender<Arc<CiView>>,
}

impl Actor for CiRuns {
    type Context = Context<Self>;

    fn started(&mut self, _: &mut Self::Context) {
        let _ = std::fs::create_dir_all(&self.config.dir);
        for item in self.tree.iter().values().flatten() {
            let Ok(mut run) = rmp_serde::from_slice::<CiRun>(&item) else {
                continue;
            };
            if !run.state.is_finished() {
                run.state = CiState::Error;
                run.error = Some("the node stopped before the run finished".into());
                run.finished = Some(Utc::now());
                self.persist(&run);
            }
            self.next_number = self.next_number.max(run.number);
            self.runs.insert(run.id, run);
        }
        self.publish_view();
    }
}

/// Starts a run (or finds the one a repeated delivery started).
#[derive(Message)]
#[rtype(result = "Result<Started, CiError>")]
struct StartRun(CiRequest);

impl Handler<StartRun> for CiRuns {
    type Result = Result<Started, CiError>;

    fn handle(&mut self, StartRun(request): StartRun, ctx: &mut Self::Context) -> Self::Result {
        check_command(&request.command)?;
        let delivery_key = match (&request.trigger.hook, &request.trigger.delivery) {
            (Some(hook), Some(delivery)) => {
                if delivery.len() > MAX_DELIVERY_ID || delivery.chars().any(char::is_control) {
                    return Err(CiError::BadRequest(
                        "the delivery id is too long or holds control characters".into(),
                    ));
                }
                Some(format!("{hook}\u{0}{delivery}"))
            }
            _ => None,
        };
        if let Some(key) = &delivery_key {
            if let Some(seen) = self.deliveries.get(key).map_err(database)? {
                let id = Uuid::from_slice(&seen[..16.min(seen.len())]).unwrap_or_default();
                if let Some(run) = self.runs.get(&id) {
                    return Ok(Started {
                        run: Arc::new(run.clone()),
                        duplicate: true,
                    });
                }
            }
        }
        // A peer's workspace still arriving is checked once it is here.
        let (workspace_id, workspace) = match request.transfer {
            Some(_) => (Uuid::nil(), request.workspace.clone()),
            None => {
                let entry = self
                    .store
                    .get(&request.workspace)
                    .map_err(|e| CiError::NotFound(e.to_string()))?;
                check_environment(&entry, request.environment.as_deref())?;
                (entry.manifest.id, entry.manifest.name.clone())
            }
        };
        self.next_number += 1;
        let id = Uuid::new_v4();
        let run = CiRun {
            id,
            number: self.next_number,
            workspace_id,
            workspace,
            environment: request.environment,
            command: request.command,
            pull: request.pull,
            timeout_seconds: request.timeout.as_secs(),
            trigger: request.trigger,
            state: CiState::Queued,
            exit_code: None,
            reason: None,
            error: None,
            backend: None,
            notes: Vec::new(),
            timings: BTreeMap::new(),
            junit: Vec::new(),
            log: self.config.dir.join(format!("{id}.log")),
            created: Utc::now(),
            started: None,
            finished: None,
            peer: request.on,
            remote_run: None,
            borrower: request.borrower,
            transfer: request.transfer,
        };
        if let Some(key) = delivery_key {
            let mut value = id.as_bytes().to_vec();
            value.extend_from_slice(&Utc::now().timestamp().to_be_bytes());
            self.deliveries.insert(key, value).map_err(database)?;
            self.forget_old_deliveries();
        }
        self.persist(&run);
        self.runs.insert(id, run.clone());
        self.queue.push_back(id);
        self.changed(id);
        self.schedule(ctx);
        self.forget_old_runs();
        Ok(Started {
            run: Arc::new(self.runs[&id].clone()),
            duplicate: false,
        })
    }
}

/// A running run's progress, from its future.
#[derive(Message)]
#[rtype(result = "()")]
struct Progress {
    id: Uuid,
    change: Change,
}

enum Change {
    State(CiState),
    /// The peer's workspace arrived as this one.
    Workspace(Uuid),
    /// The run's id on the peer running it.
    Remote(Uuid),
    Note(String),
    Timing(String, f64),
    Finished(Box<Outcome>),
}

/// How a run ended.
struct Outcome {
    state: CiState,
    environment: Option<String>,
    backend: Option<String>,
    exit_code: Option<i32>,
    reason: Option<String>,
    error: Option<String>,
    junit: Vec<JunitReport>,
}

impl Outcome {
    /// A run that did not get to its command (yet): `error` until something better is known.
    fn never_ran() -> Outcome {
        Outcome {
            state: CiState::Error,
            environment: None,
            backend: None,
            exit_code: None,
            reason: None,
            error: None,
            junit: Vec::new(),
        }
    }
}

impl Handler<Progress> for CiRuns {
    type Result = ();

    fn handle(&mut self, progress: Progress, ctx: &mut Self::Context) {
        let Some(run) = self.runs.get_mut(&progress.id) else {
            return;
        };
        match progress.change {
            Change::State(state) => run.state = state,
            Change::Workspace(id) => run.workspace_id = id,
            Change::Remote(id) => run.remote_run = Some(id),
            Change::Note(note) => run.notes.push(note),
            Change::Timing(phase, seconds) => {
                run.timings.insert(phase, seconds);
            }
            Change::Finished(outcome) => {
                run.state = outcome.state;
                if outcome.environment.is_some() {
                    run.environment = outcome.environment;
                }
                run.backend = outcome.backend;
                run.exit_code = outcome.exit_code;
                run.reason = outcome.reason;
                run.error = outcome.error;
                run.junit = outcome.junit;
                run.finished = Some(Utc::now());
                self.running = self.running.saturating_sub(1);
            }
        }
        let run = run.clone();
        if run.state.is_finished() || matches!(run.state, CiState::Running | CiState::Pulling) {
            self.persist(&run);
        }
        self.changed(progress.id);
        self.schedule(ctx);
    }
}

impl CiRuns {
    fn schedule(&mut self, ctx: &mut Context<Self>) {
        while self.running < self.config.max_running.max(1) {
            let Some(id) = self.queue.pop_front() else {
                return;
            };
            let Some(run) = self.runs.get_mut(&id) else {
                continue;
            };
            self.running += 1;
            let now = Utc::now();
            run.timings.insert(
                "queued".into(),
                (now - run.created).num_milliseconds() as f64 / 1000.0,
            );
            run.started = Some(now);
            let run = run.clone();
            let job = Job {
                run,
                store: self.store.clone(),
                runtimes: self.runtimes.clone(),
                links: self.links.clone(),
                actor: ctx.address(),
            };
            actix::spawn(job.go());
        }
    }

    fn changed(&mut self, id: Uuid) {
        let run = Arc::new(self.runs[&id].clone());
        let view = self.view();
        let sender = self.view_sender.clone();
        self.bus.publish(NodeEvent::CiRunChanged(run), |seq| {
            sender.send_replace(Arc::new(CiView { seq, ..view }));
        });
    }

    fn view(&self) -> CiView {
        let mut runs: Vec<Arc<CiRun>> = self.runs.values().cloned().map(Arc::new).collect();
        runs.sort_by_key(|r| std::cmp::Reverse(r.number));
        CiView {
            seq: self.bus.last_seq(),
            runs,
        }
    }

    fn publish_view(&self) {
        self.view_sender.send_replace(Arc::new(self.view()));
    }

    fn persist(&self, run: &CiRun) {
        let value = rmp_serde::to_vec_named(run).expect("runs encode");
        if let Err(error) = self.tree.insert(run.id.as_bytes(), value) {
            tracing::error!(run = %run.id, %error, "cannot record a CI run");
        }
    }

    /// Keeps the newest `keep` finished runs (and their logs).
    fn forget_old_runs(&mut self) {
        let mut finished: Vec<(u64, Uuid)> = self
            .runs
            .values()
            .filter(|r| r.state.is_finished())
            .map(|r| (r.number, r.id))
            .collect();
        if finished.len() <= self.config.keep {
            return;
        }
        finished.sort();
        let excess = finished.len() - self.config.keep;
        for (_, id) in finished.into_iter().take(excess) {
            if let Some(run) = self.runs.remove(&id) {
                let _ = std::fs::remove_file(&run.log);
                for index in 0..run.junit.len() {
                    let _ = std::fs::remove_file(run.junit_copy(index));
                }
                let _ = self.tree.remove(id.as_bytes());
            }
        }
    }

    /// Forgets the oldest deliveries beyond [`MAX_DELIVERIES`].
    fn forget_old_deliveries(&self) {
        if self.deliveries.len() <= MAX_DELIVERIES {
            return;
        }
        let mut all: Vec<(i64, sled::IVec)> = self
            .deliveries
            .iter()
            .flatten()
            .map(|(key, value)| {
                let at = value
                    .get(16..24)
                    .and_then(|b| b.try_into().ok())
                    .map_or(0, i64::from_be_bytes);
                (at, key)
            })
            .collect();
        all.sort();
        for (_, key) in all.into_iter().take(MAX_DELIVERIES / 10) {
            let _ = self.deliveries.remove(key);
        }
    }
}

/// One run's work, off the actor.
struct Job {
    run: CiRun,
    store: WorkspaceStoreHandle,
    runtimes: RuntimeSupervisorHandle,
    links: CiLinks,
    actor: Addr<CiRuns>,
}

impl Job {
    fn tell(&self, change: Change) {
        self.actor.do_send(Progress {
            id: self.run.id,
            change,
        });
    }

    async fn go(mut self) {
        let started = std::time::Instant::now();
        let since = SystemTime::now() - Duration::from_secs(1);
        let mut outcome = Outcome::never_ran();
        let log = self.run.log.clone();
        crate::runtime_supervisor::append_log(
            &log,
            &format!(
                "== aienv CI run #{} of {}: {}\n",
                self.run.number,
                self.run.workspace,
                self.run.command.join(" ")
            ),
        );
        if let Some(transfer) = self.run.transfer {
            self.tell(Change::State(CiState::Fetching));
            match self.arrival(transfer).await {
                Ok(id) => {
                    self.run.workspace_id = id;
                    self.tell(Change::Workspace(id));
                    self.tell(Change::Timing(
                        "fetch".into(),
                        started.elapsed().as_secs_f64(),
                    ));
                }
                Err(error) => {
                    crate::runtime_supervisor::append_log(&log, &format!("== {error}\n"));
                    outcome.error = Some(error);
                    self.tell(Change::Finished(Box::new(outcome)));
                    return;
                }
            }
        }
        if let Some(peer) = self.run.peer.clone() {
            let outcome = self.on_peer(&peer).await;
            self.tell(Change::Timing(
                "total".into(),
                started.elapsed().as_secs_f64(),
            ));
            self.tell(Change::Finished(Box::new(outcome)));
            return;
        }
        if self.run.pull {
            self.tell(Change::State(CiState::Pulling));
            match self.pull().await {
                Ok(notes) => {
                    for note in notes {
                        crate::runtime_supervisor::append_log(&log, &format!("== pull: {note}\n"));
                        self.tell(Change::Note(note));
                    }
                }
                Err(error) => {
                    crate::runtime_supervisor::append_log(
                        &log,
                        &format!("== pull failed: {error}\n"),
                    );
                    outcome.error = Some(error);
                    self.tell(Change::Finished(Box::new(outcome)));
                    return;
                }
            }
            self.tell(Change::Timing(
                "pull".into(),
                started.elapsed().as_secs_f64(),
            ));
        }
        self.tell(Change::State(CiState::Running));
        let vars = vec![
            ("CI".to_string(), "true".to_string()),
            ("AIENV_CI_RUN".to_string(), self.run.id.to_string()),
            ("AIENV_CI_NUMBER".to_string(), self.run.number.to_string()),
            ("AIENV_CI_BY".to_string(), self.run.trigger.by.clone()),
            (
                "AIENV_CI_EVENT".to_string(),
                self.run.trigger.event.clone().unwrap_or_default(),
            ),
            (
                "AIENV_CI_DELIVERY".to_string(),
                self.run.trigger.delivery.clone().unwrap_or_default(),
            ),
        ];
        let result = self
            .runtimes
            .run_command(RunCommand {
                workspace: self.run.workspace_id.to_string(),
                environment: self.run.environment.clone(),
                command: shell_line(&self.run.command),
                log: log.clone(),
                timeout: Duration::from_secs(self.run.timeout_seconds.max(1)),
                vars,
                borrower: self.run.borrower.clone(),
            })
            .await;
        match result {
            Ok(done) => {
                for note in done.notes {
                    self.tell(Change::Note(note));
                }
                self.tell(Change::Timing("setup".into(), done.setup_seconds));
                self.tell(Change::Timing("command".into(), done.command_seconds));
                outcome.state = if done.finished.success() {
                    CiState::Passed
                } else {
                    CiState::Failed
                };
                outcome.environment = Some(done.environment);
                outcome.backend = Some(done.backend.as_str().to_string());
                outcome.exit_code = done.finished.code;
                outcome.reason = Some(done.finished.reason);
                if let Ok(entry) = self.store.get(&self.run.workspace_id.to_string()) {
                    let root = entry.path.clone();
                    outcome.junit = tokio::task::spawn_blocking(move || junit::find(&root, since))
                        .await
                        .unwrap_or_default();
                }
            }
            Err(error) => {
                crate::runtime_supervisor::append_log(&log, &format!("== {error}\n"));
                outcome.error = Some(error.to_string());
            }
        }
        self.tell(Change::Timing(
            "total".into(),
            started.elapsed().as_secs_f64(),
        ));
        self.tell(Change::Finished(Box::new(outcome)));
    }

    /// Waits for the transfer bringing a peer's workspace; the workspace's id here.
    async fn arrival(&self, transfer: Uuid) -> Result<Uuid, String> {
        let mut view = self.links.transfers.clone();
        let job = loop {
            let current = view.borrow().find(&transfer.to_string());
            match current {
                Some(job) if job.state.is_finished() => break job,
                Some(_) => {}
                None => return Err("the transfer of the workspace was removed".into()),
            }
            if view.changed().await.is_err() {
                return Err("the node is stopping".into());
            }
        };
        if job.state != JobState::Done {
            return Err(format!(
                "the workspace did not arrive: {}",
                job.error.as_deref().unwrap_or(job.state.as_str())
            ));
        }
        let id = job
            .local_id
            .ok_or_else(|| "the transfer named no workspace".to_string())?;
        let entry = self.store.get(&id.to_string()).map_err(|e| e.to_string())?;
        check_environment(&entry, self.run.environment.as_deref()).map_err(|e| e.to_string())?;
        Ok(id)
    }

    /// Runs the command on `peer` and follows it there: state, log (copied into this run's
    /// log as it grows), then exit code, notes, timings and JUnit reports (copied here).
    async fn on_peer(&self, peer: &RemotePeer) -> Outcome {
        let log = self.run.log.clone();
        let outcome = Outcome::never_ran();
        let endpoint = || self.links.peers.view().endpoint(peer.id);
        let fail = |mut outcome: Outcome, error: String| {
            crate::runtime_supervisor::append_log(&log, &format!("== {error}\n"));
            outcome.error = Some(error);
            outcome
        };
        let Some(first) = endpoint() else {
            return fail(outcome, format!("{} is not online", peer.name));
        };
        crate::runtime_supervisor::append_log(&log, &format!("== running on {}\n", peer.name));
        let request = RemoteCiRequest {
            workspace_id: self.run.workspace_id,
            workspace_name: self.run.workspace.clone(),
            environment: self.run.environment.clone(),
            command: self.run.command.clone(),
            pull: self.run.pull,
            timeout_seconds: self.run.timeout_seconds,
            user: self.run.trigger.by.clone(),
        };
        let started = match self.links.remote.start(&first, &request).await {
            Ok(status) => status,
            Err(error) => return fail(outcome, format!("{} refused the run: {error}", peer.name)),
        };
        let remote = started.id;
        self.tell(Change::Remote(remote));
        self.tell(Change::Note(format!(
            "runs on {} as its run {remote}",
            peer.name
        )));
        let mut offset = 0u64;
        let mut shown = CiState::Queued;
        let mut silent_since: Option<Instant> = None;
        let finished = loop {
            let answer = match endpoint() {
                Some(endpoint) => {
                    offset += self.copy_log(&endpoint, remote, offset).await;
                    self.links
                        .remote
                        .status(&endpoint, remote)
                        .await
                        .map_err(|e| e.to_string())
                }
                None => Err(format!("{} is not online", peer.name)),
            };
            match answer {
                Ok(status) if status.state.is_finished() => break status,
                Ok(status) => {
                    silent_since = None;
                    if status.state != shown {
                        shown = status.state;
                        self.tell(Change::State(shown));
                    }
                }
                Err(error) => {
                    let since = *silent_since.get_or_insert_with(Instant::now);
                    if since.elapsed() > REMOTE_SILENCE {
                        return fail(
                            outcome,
                            format!("lost {} for {REMOTE_SILENCE:?}: {error}", peer.name),
                        );
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        };
        if let Some(endpoint) = endpoint() {
            // The rest of the log, then copies of the reports.
            loop {
                let copied = self.copy_log(&endpoint, remote, offset).await;
                if copied == 0 {
                    break;
                }
                offset += copied;
            }
            for index in 0..finished.junit.len() {
                match self.links.remote.junit(&endpoint, remote, index).await {
                    Ok(bytes) => {
                        if let Err(error) = std::fs::write(self.run.junit_copy(index), bytes) {
                            tracing::warn!(run = %self.run.id, %error, "keeping a JUnit report failed");
                        }
                    }
                    Err(error) => self.tell(Change::Note(format!(
                        "JUnit report {} could not be copied from {}: {error}",
                        finished.junit[index].path, peer.name
                    ))),
                }
            }
        }
        for note in finished.notes {
            self.tell(Change::Note(format!("{}: {note}", peer.name)));
        }
        for (phase, seconds) in &finished.timings {
            if phase != "total" && phase != "queued" {
                self.tell(Change::Timing(phase.clone(), *seconds));
            }
        }
        Outcome {
            state: finished.state,
            environment: finished.environment,
            backend: finished.backend.map(|b| format!("{b} on {}", peer.name)),
            exit_code: finished.exit_code,
            reason: finished.reason,
            error: finished.error,
            junit: finished.junit,
        }
    }

    /// Appends the peer's log from `offset` to this run's; how many bytes came.
    async fn copy_log(
        &self,
        endpoint: &crate::peer_registry::PeerEndpoint,
        remote: Uuid,
        offset: u64,
    ) -> u64 {
        let Ok(bytes) = self.links.remote.log(endpoint, remote, offset).await else {
            return 0;
        };
        if bytes.is_empty() {
            return 0;
        }
        use std::io::Write;
        let written = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.run.log)
            .and_then(|mut file| file.write_all(&bytes));
        if let Err(error) = written {
            tracing::warn!(run = %self.run.id, %error, "copying a peer's log failed");
        }
        bytes.len() as u64
    }

    /// Fast-forwards every git project of the workspace.
    async fn pull(&self) -> Result<Vec<String>, String> {
        let entry = self
            .store
            .get(&self.run.workspace_id.to_string())
            .map_err(|e| e.to_string())?;
        let git = self.store.git().clone();
        let root = entry.path.clone();
        let projects = entry.manifest.projects.clone();
        tokio::task::spawn_blocking(move || {
            let mut notes = Vec::new();
            for project in &projects {
                crate::git::no_link_on_the_way(&root, &project.path)?;
                let dir = root.join(&project.path);
                if std::fs::symlink_metadata(dir.join(".git")).is_err() {
                    continue;
                }
                let note = git
                    .pull(&dir)
                    .map_err(|e| format!("{}: {e}", project.path))?;
                notes.push(format!("{}: {note}", project.path));
            }
            if notes.is_empty() {
                return Err("the workspace has no git project to pull".to_string());
            }
            Ok(notes)
        })
        .await
        .map_err(|_| "the pull was interrupted".to_string())?
    }
}

/// Refuses an environment the workspace lacks, or a workspace without any.
fn check_environment(
    entry: &crate::workspace_store::WorkspaceEntry,
    environment: Option<&str>,
) -> Result<(), CiError> {
    if let Some(environment) = environment {
        if !entry.environments.contains_key(environment) {
            return Err(CiError::NotFound(format!(
                "workspace `{}` has no environment `{environment}`",
                entry.manifest.name
            )));
        }
    } else if entry.environments.is_empty() {
        return Err(CiError::BadRequest(format!(
            "workspace `{}` has no environments: add one (`aienv env detect {}` proposes one)",
            entry.manifest.name, entry.manifest.name
        )));
    }
    Ok(())
}

/// The argument vector as one `sh -c` line, each argument quoted.
fn shell_line(argv: &[String]) -> String {
    argv.iter()
        .map(|a| crate::runtime_supervisor::detect::shell_quote(a))
        .collect::<Vec<_>>()
        .join(" ")
}

fn check_command(command: &[String]) -> Result<(), CiError> {
    if command.is_empty() || command[0].is_empty() {
        return Err(CiError::BadRequest(
            "`command` is empty: give the program and its arguments".into(),
        ));
    }
    if command.len() > MAX_ARGS {
        return Err(CiError::BadRequest(format!(
            "`command` has {} arguments; at most {MAX_ARGS}",
            command.len()
        )));
    }
    if command.iter().map(String::len).sum::<usize>() > MAX_COMMAND_BYTES {
        return Err(CiError::BadRequest(format!(
            "`command` is longer than {MAX_COMMAND_BYTES} bytes"
        )));
    }
    if command.iter().any(|a| a.contains('\0')) {
        return Err(CiError::BadRequest("`command` holds a NUL byte".into()));
    }
    Ok(())
}

fn database(error: sled::Error) -> CiError {
    CiError::Database(error.to_string())
}

/// Cloneable handle to the CiRuns actor.
#[derive(Clone)]
pub struct CiRunsHandle {
    addr: Addr<CiRuns>,
    view: watch::Receiver<Arc<CiView>>,
}

impl CiRunsHandle {
    /// Starts the actor on the current arbiter; runs live in `tree`, deliveries in
    /// `deliveries`.
    pub fn start(
        config: CiConfig,
        tree: sled::Tree,
        deliveries: sled::Tree,
        store: WorkspaceStoreHandle,
        runtimes: RuntimeSupervisorHandle,
        links: CiLinks,
        bus: EventBus,
    ) -> CiRunsHandle {
        let (view_sender, view) = watch::channel(Arc::new(CiView::default()));
        let addr = CiRuns {
            config,
            runs: HashMap::new(),
            queue: VecDeque::new(),
            running: 0,
            next_number: 0,
            tree,
            deliveries,
            store,
            runtimes,
            links,
            bus,
            view_sender,
        }
        .start();
        CiRunsHandle { addr, view }
    }

    /// Starts a run, or answers with the run a repeated delivery started.
    pub async fn start_run(&self, request: CiRequest) -> Result<Started, CiError> {
        self.addr
            .send(StartRun(request))
            .await
            .map_err(|_| CiError::Gone)?
    }

    /// The current view.
    pub fn view(&self) -> Arc<CiView> {
        self.view.borrow().clone()
    }

    /// One run by id or number.
    pub fn get(&self, target: &str) -> Result<Arc<CiRun>, CiError> {
        let view = self.view();
        view.runs
            .iter()
            .find(|r| r.id.to_string() == target || r.number.to_string() == target)
            .cloned()
            .ok_or_else(|| CiError::NotFound(format!("no CI run `{target}`")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_are_quoted_word_by_word_and_bounded() {
        assert_eq!(
            shell_line(&["pytest".into(), "-k".into(), "a and b".into()]),
            "pytest -k 'a and b'"
        );
        assert!(check_command(&[]).is_err());
        assert!(check_command(&["".into()]).is_err());
        assert!(check_command(&vec!["x".into(); MAX_ARGS + 1]).is_err());
        assert!(check_command(&["a\0b".into()]).is_err());
        check_command(&["true".into()]).unwrap();
    }
}
