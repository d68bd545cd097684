//! One attempt of one job: fetch the snapshot, lay out the staging area, copy what this node
//! already has, fetch the rest from every source that has the same content, verify,
//! relocate, and hand the result to the store.
//!
//! The runner is a future on the TransferQueue's arbiter that owns its own state and reports
//! to the actor by message ([`JobReport`]); the blocking parts run in `spawn_blocking`.
//! Fetching from the sources is in [`super::fetch`], building the result in the workspace
//! store in [`super::materialize`].

use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::{Addr, Recipient};
use uuid::Uuid;

use crate::peer_registry::{PeerEndpoint, PeerRegistryHandle};
use crate::shutdown::Shutdown;
use crate::snapshot::Hash;
use crate::snapshot_delta::SnapshotDelta;
use crate::snapshot_receive::{join, Keeping, KeptSnapshot, ReceiveError, SnapshotEntries};
use crate::snapshot_writer::SnapshotHead;
use crate::workspace_store::{Origin, Taken, Touched, WorkspaceEntry, WorkspaceStoreHandle};

use super::client::{FetchError, ManifestBody, TransferClient};
use super::error::TransferError;
use super::fetch::Source;
use super::job::{JobInfo, JobState, Progress, TransferKind};
use super::stage::Stage;
use super::{JobReport, TransferConfig, TransferQueue};

/// Everything one attempt needs.
pub struct JobContext {
    /// The job as it was when started.
    pub job: JobInfo,
    /// The store.
    pub store: WorkspaceStoreHandle,
    /// The peers, to find sources.
    pub peers: PeerRegistryHandle,
    /// HTTP to peers.
    pub client: Rc<dyn TransferClient>,
    /// Limits and tuning.
    pub config: Arc<TransferConfig>,
    /// `<transfers>/<job id>`.
    pub job_dir: PathBuf,
    /// Cancels this attempt.
    pub cancel: Shutdown,
    /// Where progress goes.
    pub queue: Addr<TransferQueue>,
    /// Runs a clone's `post_clone` hook.
    pub post_clone: Option<Recipient<crate::runtime_supervisor::hooks::PostClone>>,
}

/// What a finished attempt produced.
pub struct Outcome {
    /// The local workspace.
    pub local_id: Uuid,
    /// Its name.
    pub local_name: String,
    /// Remarks for the job's notes.
    pub notes: Vec<String>,
    /// Final counters.
    pub progress: Progress,
    /// Root of the local workspace's snapshot right after the transfer (the baseline of the
    /// next sync's quick check).
    pub local_root: Option<Hash>,
    /// The clone arrived, but its `post_clone` hook failed: why, with its output.
    pub hook_error: Option<String>,
}

/// How the local snapshot after a commit is taken.
pub enum Closing {
    /// By a walk of the whole tree.
    Walk,
    /// Amended from the workspace's snapshot before the commit and the paths the commit
    /// touched, without a walk.
    Amend(Arc<Taken>, Touched),
}

impl Closing {
    /// Amended from `before` when the commit's touched paths are known, else by a walk.
    pub fn after(before: Arc<Taken>, touched: Option<Touched>) -> Closing {
        match touched {
            Some(touched) => Closing::Amend(before, touched),
            None => Closing::Walk,
        }
    }
}

/// Runs one attempt of a job to its end.
pub async fn run(cx: JobContext) -> Result<Outcome, TransferError> {
    let started = Instant::now();
    let mut progress = Progress::default();
    cx.state(JobState::FetchingManifest);
    let mut phases = Phases::new();
    let local = match cx.job.kind {
        TransferKind::Clone => None,
        TransferKind::Sync | TransferKind::Push => Some(
            cx.store.get(
                &cx.job
                    .local_id
                    .expect("a sync or push names its workspace")
                    .to_string(),
            )?,
        ),
    };
    // A sync whose source and clone are both as the last transfer left them has nothing to
    // do: the source answers "not modified" to the root it had, and the clone's own snapshot
    // (a stat walk) still has the root recorded after that transfer.
    // This workspace's snapshot is taken once per attempt and used by every step that needs
    // it, staying in the memo's file and read in order.
    let mut fetched = None;
    let mut mine: Option<SnapshotEntries> = None;
    // A sync's snapshot of the clone as taken: the one after its commit is amended from it.
    let mut before: Option<Arc<Taken>> = None;
    // What this clone last took from its origin: read from disk while the source answers.
    let base = match (&local, cx.job.kind) {
        (Some(local), TransferKind::Sync) => Some(BaseLoad::start(&cx, local.manifest.id)),
        _ => None,
    };
    if let (Some(local), Some(baseline), TransferKind::Sync) =
        (&local, cx.job.baseline, cx.job.kind)
    {
        let origin = sync_origin(&cx.job, local);
        let id = local.manifest.id.to_string();
        let (source, current) = futures_util::future::join(
            cx.fetch_manifest(cx.job.peer_id, Some(origin.root), base.clone()),
            cx.store.take_snapshot(&id),
        )
        .await;
        phases.mark("snapshots");
        fetched = source?.map(|(fetched, bytes)| {
            progress.bytes_fetched += bytes;
            fetched
        });
        // Its entries are read only when something changed.
        let current = current?;
        if fetched.is_none() && current.root == baseline {
            let totals = (current.total_bytes, current.file_count);
            return Ok(up_to_date(local, totals, current.root, progress));
        }
        let current = Arc::new(current);
        before = Some(current.clone());
        mine = Some(blocking(move || Ok(current.entries()?)).await?);
    }
    if let (Some(local), None) = (&local, &mine) {
        let id = local.manifest.id.to_string();
        // A push's workspace was walked by the push route a moment before (its early
        // check). Its plan touches only the pushed paths, and those are described from disk
        // again before the commit (`materialize_push`): what changed since that walk either
        // lies beside the plan or is found there.
        let last = match cx.job.kind {
            TransferKind::Push => cx.store.last_snapshot(&id).await?,
            _ => None,
        };
        let current = Arc::new(match last {
            Some(last) => {
                tracing::debug!(job = %cx.job.id, "the push starts from the workspace's last snapshot");
                last
            }
            None => cx.store.take_snapshot(&id).await?,
        });
        before = Some(current.clone());
        mine = Some(blocking(move || Ok(current.entries()?)).await?);
    }
    // What the source has, and what this node will have: the same for a clone and for a
    // plain sync; the source's content with this clone's own changes laid over it for a
    // sync that keeps them (`kept`); this workspace with the peer's changes for a push. All
    // stay on disk: the source's as received or rebuilt from a delta, a kept or pushed
    // target as merged.
    let mut kept = false;
    let (source, target) = if cx.job.kind == TransferKind::Push {
        let current = mine.as_ref().expect("taken just above");
        let projects = &local
            .as_ref()
            .expect("a push names its workspace")
            .manifest
            .projects;
        (None, cx.push_target(current, projects).await?)
    } else {
        let fetched = match fetched {
            Some(fetched) => fetched,
            None => {
                let (fetched, bytes) = cx
                    .fetch_manifest(cx.job.peer_id, None, None)
                    .await?
                    .expect("a manifest without a known root is always sent");
                progress.bytes_fetched += bytes;
                fetched
            }
        };
        let fetched = SnapshotEntries::Kept(Arc::new(fetched));
        match (&local, &mine, &base) {
            (Some(local), Some(current), Some(base)) => {
                let target = cx.pull_target(local, current, &fetched, base).await?;
                kept = target.is_some();
                let target = target.unwrap_or_else(|| fetched.clone());
                (Some(fetched), target)
            }
            (None, _, _) => (None, fetched),
            _ => return Err(mismatch("a sync without its workspace's snapshot")),
        }
    };
    phases.mark("manifest");
    let root = target.root();
    let previous_root = std::fs::read(cx.job_dir.join("root")).ok();
    if previous_root.as_deref() != Some(&root.0[..]) {
        // The source moved on since an earlier attempt: what was staged is for other content.
        for stale in ["tree", "stage", "done.log"] {
            let path = cx.job_dir.join(stale);
            let _ = std::fs::remove_dir_all(&path);
            let _ = std::fs::remove_file(&path);
        }
        std::fs::write(cx.job_dir.join("root"), root.0)
            .map_err(TransferError::io("writing", &cx.job_dir))?;
    }
    cx.queue.do_send(JobReport::Root(cx.job.id, root));
    (progress.bytes_total, progress.files_total) = target.totals();

    if let (Some(local), Some(source), TransferKind::Sync) = (&local, &source, cx.job.kind) {
        let current = mine.clone().expect("taken just above");
        let origin = sync_origin(&cx.job, local);
        // Nothing new at the source (the clone's own changes stay as they are), or nothing
        // changed on either side.
        let local_root = current.root();
        if origin.root == source.root()
            && (kept || {
                let (source, job_dir) = (source.clone(), cx.job_dir.clone());
                blocking(move || unchanged(&current, &source, &origin, &job_dir)).await?
            })
        {
            let totals = (progress.bytes_total, progress.files_total);
            let outcome = up_to_date(local, totals, local_root, progress);
            cx.progress(&outcome.progress);
            return Ok(outcome);
        }
    }

    // Other online peers sharing the same content become sources too.
    let mut sources = vec![Source::new(cx.job.peer_id, cx.job.peer_name.clone())];
    if cx.job.kind != TransferKind::Push {
        sources.extend(cx.extra_sources(root).await);
    }
    cx.queue.do_send(JobReport::Sources(
        cx.job.id,
        sources.iter().map(|s| s.name.clone()).collect(),
    ));

    // Lay out the staging area.
    let (stage, work) = {
        let target = target.clone();
        let (job_dir, places) = (cx.job_dir.clone(), cx.config.plan_window);
        let relocated = local
            .as_ref()
            .and_then(|local| local.origin.as_ref())
            .map(|o| o.relocated.clone())
            .unwrap_or_default();
        blocking(move || match (target, mine) {
            (target, Some(current)) => Stage::prepare_sync(target, &current, &relocated, &job_dir),
            (Target::Kept(received), None) => Stage::prepare_clone(received, &job_dir, places),
            (Target::Whole(_), None) => Err(mismatch("a whole target without a workspace")),
        })
        .await?
    };
    let stage = Arc::new(stage);
    phases.mark("prepare");
    check_space(&cx.job_dir, work.bytes_to_write)?;
    progress.bytes_present = work.bytes_present;
    progress.bytes_done = work.bytes_present;
    cx.state(JobState::Transferring);
    cx.progress(&progress);

    // A clone's chunks come a window at a time (a sync's all at once): copied from this
    // node where it has them, the rest fetched.
    let mut window = Some(work.needed);
    while let Some(needed) = window {
        let (needed, copied) = {
            let stage = stage.clone();
            let chunks = cx.store.chunk_store();
            blocking(move || stage.copy_local(needed, &chunks)).await?
        };
        phases.mark("local-copy");
        tracing::debug!(job = %cx.job.id, copied, "copied from this node");
        progress.bytes_local += copied;
        progress.bytes_done += copied;
        progress.files_done = progress
            .files_total
            .saturating_sub(stage.files_incomplete());
        cx.progress(&progress);
        // A sync's changed chunks: what this node has of them is reused, the rest fetched as
        // ranges.
        let needed = match &local {
            Some(local) if !needed.is_empty() => {
                cx.rebuild_changed(&stage, needed, local.manifest.id, &mut progress)
                    .await?
            }
            _ => needed,
        };
        phases.mark("parts");
        cx.progress(&progress);
        cx.fetch(&stage, &mut sources, needed, &mut progress)
            .await?;
        phases.mark("fetch");
        window = {
            let stage = stage.clone();
            blocking(move || stage.next_window()).await?
        };
    }

    let mut rounds = 0;
    loop {
        cx.state(JobState::Verifying);
        let bad = {
            let stage = stage.clone();
            let threads = cx.config.verify_threads;
            blocking(move || {
                stage.apply_modes()?;
                stage.verify(threads)
            })
            .await?
        };
        phases.mark("verify");
        if bad.is_empty() {
            break;
        }
        rounds += 1;
        if rounds > 2 {
            return Err(TransferError::Verification(format!(
                "{} files still differ from the snapshot after {rounds} attempts",
                bad.len()
            )));
        }
        tracing::warn!(job = %cx.job.id, files = bad.len(), "files failed verification; fetching them again");
        let again = {
            let stage = stage.clone();
            blocking(move || stage.requeue(&bad)).await?
        };
        cx.state(JobState::Transferring);
        cx.fetch(&stage, &mut sources, again, &mut progress).await?;
        phases.mark("fetch");
    }
    progress.files_done = progress.files_total;
    progress.bytes_done = progress.bytes_total;
    cx.progress(&progress);

    tracing::info!(job = %cx.job.id, "verified; committing");
    cx.state(JobState::Materializing);
    let (outcome, closing) = match (&local, cx.job.kind, &source, &target, before) {
        (Some(local), TransferKind::Push, _, _, Some(before)) => {
            cx.materialize_push(local.manifest.id, &stage, before)
                .await?
        }
        (Some(local), TransferKind::Sync, Some(source), target, Some(before)) => {
            cx.materialize_sync(local.manifest.id, &stage, source, target, kept, before)
                .await?
        }
        (None, TransferKind::Clone, _, Target::Kept(received), _) => {
            (cx.materialize_clone(&stage, received).await?, Closing::Walk)
        }
        _ => return Err(mismatch("a job whose target does not fit its kind")),
    };
    // What the transfer held (the snapshots, the staging plan) goes before the local
    // snapshot below is taken: at many files they are most of the job's peak. Only its
    // root is needed; its entries stay in the memo's file.
    drop((stage, target, source, base, local));
    let local_root = cx
        .local_snapshot(outcome.local_id, closing)
        .await
        .map(|taken| {
            tracing::debug!(job = %cx.job.id, stats = ?taken.stats, "local snapshot after the transfer");
            taken.root
        });
    phases.mark("materialize");
    tracing::info!(job = %cx.job.id, phases = %phases, "transfer phases");
    let elapsed = started.elapsed().as_secs_f64();
    let mut notes = outcome.notes;
    notes.push(format!(
        "{} of {} bytes fetched over the network ({} on the wire), {} copied from this node, {} already in place, in {elapsed:.1} s",
        progress.bytes_from_peers,
        progress.bytes_total,
        progress.bytes_fetched,
        progress.bytes_local,
        progress.bytes_present
    ));
    Ok(Outcome {
        notes,
        progress,
        local_root,
        ..outcome
    })
}

/// What a sync compares against: the clone's origin, or, for a placed workspace's results
/// (`placed`: not a clone), an origin that records nothing (every difference is the peer's
/// result, and nothing was relocated here).
pub(super) fn sync_origin(job: &JobInfo, local: &WorkspaceEntry) -> crate::workspace_store::Origin {
    match &local.origin {
        Some(origin) => (**origin).clone(),
        None => crate::workspace_store::Origin {
            peer_id: job.peer_id,
            peer_key: job.peer_key,
            peer_name: job.peer_name.clone(),
            workspace_id: local.manifest.id,
            workspace_name: local.manifest.name.clone(),
            revision: 0,
            root: Hash([0; 32]),
            cloned_at: job.created,
            synced_at: None,
            relocated: Default::default(),
            needs_rebuild: Vec::new(),
        },
    }
}

/// Whether the clone is exactly what its origin's snapshot describes (no local changes
/// beyond its own `workspace.yaml` and relocated files), so a sync has nothing to do. Reads
/// both side by side (blocking).
fn unchanged(
    current: &SnapshotEntries,
    source: &SnapshotEntries,
    origin: &Origin,
    job_dir: &std::path::Path,
) -> Result<bool, TransferError> {
    /// Ends the walk at the first difference.
    struct Differs;
    let reading = |e| TransferError::io("reading the snapshots to compare in", job_dir)(e);
    let (a, b) = (
        current.cursor().map_err(reading)?,
        source.cursor().map_err(reading)?,
    );
    let walked = join(
        a,
        b,
        |e| Err(reading(e)),
        |mine, theirs| match (mine, theirs) {
            (Some(mine), Some(entry))
                if mine == entry
                    || entry.path == crate::model::WORKSPACE_FILE
                    || origin.relocated.contains_key(&entry.path) =>
            {
                Ok(())
            }
            _ => Err(Ok(Differs)),
        },
    );
    match walked {
        Ok(()) => Ok(true),
        Err(Ok(Differs)) => Ok(false),
        Err(Err(error)) => Err(error),
    }
}

/// The outcome of a sync that had nothing to do: everything counted as already in place.
fn up_to_date(
    local: &WorkspaceEntry,
    (bytes_total, files_total): (u64, u64),
    local_root: Hash,
    mut progress: Progress,
) -> Outcome {
    progress.bytes_total = bytes_total;
    progress.bytes_present = bytes_total;
    progress.bytes_done = bytes_total;
    progress.files_total = files_total;
    progress.files_done = files_total;
    Outcome {
        local_id: local.manifest.id,
        local_name: local.manifest.name.clone(),
        notes: vec![format!(
            "`{}` is already up to date with its source",
            local.manifest.name
        )],
        local_root: Some(local_root),
        progress,
        hook_error: None,
    }
}

impl JobContext {
    /// The local workspace's snapshot after the commit, as `closing` says; an amended one
    /// that fails is taken by a walk instead. `None` when that fails too: the next sync then
    /// has no quick check.
    async fn local_snapshot(&self, id: Uuid, closing: Closing) -> Option<Taken> {
        let id = id.to_string();
        if let Closing::Amend(before, touched) = closing {
            match self.store.amend_snapshot(&id, before, touched).await {
                Ok(taken) => return Some(taken),
                Err(error) => {
                    tracing::warn!(job = %self.job.id, %error, "amending the local snapshot failed; walking the workspace instead");
                }
            }
        }
        self.store.take_snapshot(&id).await.ok()
    }

    fn state(&self, state: JobState) {
        self.queue.do_send(JobReport::State(self.job.id, state));
    }

    pub(super) fn progress(&self, progress: &Progress) {
        self.queue
            .do_send(JobReport::Progress(self.job.id, progress.clone()));
    }

    /// Where to reach a source; the main source only under the key the job recorded for it
    /// (a clone's origin, by its key: a sync talks to nothing else).
    pub(super) fn endpoint(&self, peer_id: Uuid) -> Option<PeerEndpoint> {
        let endpoint = self.peers.view().endpoint(peer_id)?;
        match self.job.peer_key {
            Some(key) if peer_id == self.job.peer_id && key != endpoint.key => None,
            _ => Some(endpoint),
        }
    }

    /// The source's snapshot, retrying while the peer is unreachable (up to the configured
    /// wait).
    ///
    /// With `known` and `base` (what this clone last took from the source, which was
    /// `known`), the source may send only the changes from it; a delta that does not rebuild
    /// a valid snapshot, or that comes when the base cannot be read, is fetched again whole.
    /// Returns the snapshot and the bytes received for it.
    async fn fetch_manifest(
        &self,
        peer_id: Uuid,
        known: Option<Hash>,
        loading: Option<BaseLoad>,
    ) -> Result<Option<(KeptSnapshot, u64)>, TransferError> {
        let deadline = Instant::now() + self.config.source_wait;
        let mut delay = Duration::from_millis(250);
        let mut received = 0u64;
        let mut since = known.filter(|_| loading.is_some());
        let mut base: Option<Arc<KeptSnapshot>> = None;
        loop {
            let result = match self.endpoint(peer_id) {
                Some(endpoint) => {
                    self.client
                        .manifest(&endpoint, self.job.workspace_id, known, since)
                        .await
                }
                None => Err(FetchError::Network(format!(
                    "peer `{}` is not online",
                    self.job.peer_name
                ))),
            };
            let error = match result {
                Ok(None) => return Ok(None),
                Ok(Some(body)) => {
                    received += body.len() as u64;
                    if let (ManifestBody::Delta(_), Some(loading)) = (&body, &loading) {
                        base = loading
                            .get()
                            .await
                            .ok()
                            .flatten()
                            .filter(|b| Some(b.root) == since);
                    }
                    if matches!(body, ManifestBody::Delta(_)) && base.is_none() && since.is_some() {
                        tracing::warn!(job = %self.job.id, "the snapshot this clone last took could not be read; fetching the source's whole");
                        since = None;
                        continue;
                    }
                    let limits = self.config.limits.clone();
                    let (dir, job_dir) = (self.config.dir.clone(), self.job_dir.clone());
                    let held = base.clone();
                    let decoded = blocking(move || {
                        // Checked as it is decoded (or rebuilt) and kept on disk: the
                        // peer's entries are never held together.
                        let fetched = match (body, held) {
                            (ManifestBody::Full(bytes), _) => {
                                let len = bytes.len() as u64;
                                KeptSnapshot::receive(&bytes[..], len, &limits, &job_dir).map_err(
                                    kept_error("keeping the received snapshot in", &job_dir),
                                )?
                            }
                            (ManifestBody::Delta(bytes), Some(base)) => {
                                SnapshotDelta::decode_onto_kept(&bytes, &base, &limits, &job_dir)
                                    .map_err(kept_error(
                                        "keeping the rebuilt snapshot in",
                                        &job_dir,
                                    ))?
                            }
                            (ManifestBody::Delta(_), None) => {
                                return Err(TransferError::Manifest(
                                    crate::snapshot::SnapshotError::Malformed(
                                        "a delta came though none was asked for".into(),
                                    ),
                                ))
                            }
                        };
                        // Read into memory only where the file system folds case.
                        check_case(&dir, || {
                            let snapshot = fetched.load().map_err(TransferError::io(
                                "reading the received snapshot in",
                                &job_dir,
                            ))?;
                            Ok(snapshot.case_collisions(3))
                        })?;
                        Ok(fetched)
                    })
                    .await;
                    match decoded {
                        Ok(snapshot) => return Ok(Some((snapshot, received))),
                        Err(TransferError::Manifest(error)) if base.is_some() => {
                            tracing::warn!(job = %self.job.id, %error, "the source's snapshot delta was refused; fetching it whole");
                            base = None;
                            since = None;
                            continue;
                        }
                        Err(error) => return Err(error),
                    }
                }
                Err(FetchError::Refused(why)) => return Err(TransferError::NoSource(why)),
                Err(FetchError::Busy(after)) => {
                    delay = after;
                    "busy".to_string()
                }
                Err(FetchError::Network(error)) => error,
            };
            if Instant::now() >= deadline {
                return Err(TransferError::NoSource(format!(
                    "`{}` did not answer for {:?}: {error}",
                    self.job.peer_name, self.config.source_wait
                )));
            }
            tracing::info!(job = %self.job.id, %error, "source unreachable; retrying");
            self.sleep(delay).await?;
            delay = (delay * 2).min(Duration::from_secs(5));
        }
    }

    pub(super) async fn sleep(&self, delay: Duration) -> Result<(), TransferError> {
        tokio::select! {
            _ = tokio::time::sleep(delay) => Ok(()),
            _ = self.cancel.wait() => Err(TransferError::Cancelled),
        }
    }
}

fn check_space(dir: &std::path::Path, needed: u64) -> Result<(), TransferError> {
    let available = match crate::resources::disk_free(dir) {
        0 => return Ok(()),
        available => available,
    };
    // Keep a margin for metadata and other writers.
    let margin = 64 * 1024 * 1024;
    if needed.saturating_add(margin) > available {
        return Err(TransferError::DiskFull {
            path: dir.display().to_string(),
            needed,
            available,
        });
    }
    Ok(())
}

pub(super) async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, TransferError> + Send + 'static,
) -> Result<T, TransferError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|_| TransferError::Unavailable)?
}

/// What a sync's clone last took from its origin (its base), read from disk once on a
/// blocking thread from the start of the attempt: the snapshot delta and the three-way merge
/// both need it, and reading it need not wait for the source's answer.
#[derive(Clone)]
pub(super) struct BaseLoad(
    futures_util::future::Shared<futures_util::future::BoxFuture<'static, LoadedBase>>,
);

/// The outcome of reading a base, shared by everything that waits for it.
type LoadedBase = Result<Option<Arc<KeptSnapshot>>, Arc<TransferError>>;

impl BaseLoad {
    fn start(cx: &JobContext, id: Uuid) -> BaseLoad {
        use futures_util::FutureExt;
        let dir = cx.config.dir.clone();
        let task = tokio::task::spawn_blocking(move || {
            super::push::open_base(&dir, id).map(|base| base.map(Arc::new))
        });
        BaseLoad(
            async move {
                match task.await {
                    Ok(result) => result.map_err(Arc::new),
                    Err(_) => Err(Arc::new(TransferError::Unavailable)),
                }
            }
            .boxed()
            .shared(),
        )
    }

    /// The base (`None`: none is recorded).
    async fn get(&self) -> Result<Option<Arc<KeptSnapshot>>, TransferError> {
        self.0.clone().await.map_err(|error| match &*error {
            TransferError::BaseDamaged { path, source } => TransferError::BaseDamaged {
                path: path.clone(),
                source: source.clone(),
            },
            _ => TransferError::Unavailable,
        })
    }
}

/// Wall time per phase of an attempt, for the log (and the benchmark's profile).
struct Phases {
    last: Instant,
    done: Vec<(&'static str, Duration)>,
}

impl Phases {
    fn new() -> Phases {
        Phases {
            last: Instant::now(),
            done: Vec::new(),
        }
    }

    fn mark(&mut self, phase: &'static str) {
        let now = Instant::now();
        self.done.push((phase, now - self.last));
        self.last = now;
    }
}

impl std::fmt::Display for Phases {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (index, (phase, took)) in self.done.iter().enumerate() {
            if index > 0 {
                f.write_str(" ")?;
            }
            write!(f, "{phase}={:.0}ms", took.as_secs_f64() * 1000.0)?;
        }
        Ok(())
    }
}

/// An impossible combination of a job's kind and what it fetched, refused rather than
/// panicking on the transfer arbiter.
fn mismatch(what: &str) -> TransferError {
    TransferError::Manifest(crate::snapshot::SnapshotError::Malformed(what.to_string()))
}

/// A snapshot that could not be kept: refused (the peer's document, or what it makes), or
/// this node's disk failed while `action` in `dir`.
fn kept_error(
    action: &'static str,
    dir: &std::path::Path,
) -> impl FnOnce(ReceiveError) -> TransferError {
    let io = TransferError::io(action, dir);
    move |error| match error {
        ReceiveError::Refused(refused) => refused.into(),
        ReceiveError::Keeping(error) => io(error),
    }
}

/// The target `merge` hands over entry by entry, checked and kept in an unnamed file in
/// `job_dir` like a received snapshot, under `head`. Conflicts are refused with `hint`; an
/// entry the checker refuses is reported after them; this node's disk failing ends the walk.
fn keep_merged(
    limits: &crate::snapshot::SnapshotLimits,
    job_dir: &std::path::Path,
    head: SnapshotHead,
    hint: &'static str,
    merge: impl FnOnce(
        &mut dyn FnMut(&crate::snapshot::SnapshotEntry) -> std::io::Result<()>,
    ) -> std::io::Result<Result<(), super::push::Conflicts>>,
) -> Result<KeptSnapshot, TransferError> {
    let mut keeping = Keeping::new(limits, job_dir);
    let mut refused = None;
    let merged = merge(&mut |entry| {
        match keeping.push(entry) {
            Err(ReceiveError::Keeping(error)) => return Err(error),
            Err(failure) if refused.is_none() => refused = Some(failure),
            _ => {}
        }
        Ok(())
    })
    .map_err(TransferError::io("merging the snapshots in", job_dir))?;
    merged.map_err(|c| conflict(c, hint))?;
    let kept = match refused {
        Some(failure) => Err(failure),
        None => keeping.keep(head, None),
    };
    kept.map_err(kept_error("keeping the merged snapshot in", job_dir))
}

/// What a job makes this node's: a clone's received snapshot, a sync's or push's target,
/// each on disk.
type Target = SnapshotEntries;

/// Refuses, before anything is written, a snapshot whose paths differ only by letter case
/// when `dir`'s file system cannot tell them apart (elsewhere they clone as they are);
/// `pairs` finds them (at most 3), called only there.
fn check_case(
    dir: &std::path::Path,
    pairs: impl FnOnce() -> Result<Vec<(String, String)>, TransferError>,
) -> Result<(), TransferError> {
    // The probe first: finding the pairs holds every path folded (about 20 MB at 200,000
    // files), which a file system that tells case apart never needs.
    std::fs::create_dir_all(dir).map_err(TransferError::io("creating", dir))?;
    if crate::tree::case_sensitive(dir).map_err(TransferError::io("probing", dir))? {
        return Ok(());
    }
    let pairs = pairs()?;
    if pairs.is_empty() {
        return Ok(());
    }
    Err(TransferError::CaseCollision {
        dir: dir.display().to_string(),
        pairs: pairs
            .iter()
            .map(|(a, b)| format!("`{a}` and `{b}`"))
            .collect::<Vec<_>>()
            .join(", "),
    })
}

/// What a refused sync tells the person.
const PULL_HINT: &str = "nothing was applied; push your changes first (`aienv sync WS --push`), or sync with --force to take the origin's versions";

fn conflict(conflicts: super::push::Conflicts, hint: &'static str) -> TransferError {
    TransferError::Conflict {
        paths: conflicts.paths,
        count: conflicts.count,
        hint,
    }
}

impl JobContext {
    /// A push job's target: its request laid over this workspace as `current` has it.
    /// Read in order and written to an unnamed file, checked entry by entry, like a sync's:
    /// what is held grows with the request, not with the workspace.
    pub(super) async fn push_target(
        &self,
        current: &SnapshotEntries,
        projects: &[crate::model::Project],
    ) -> Result<SnapshotEntries, TransferError> {
        let (current, projects) = (current.clone(), projects.to_vec());
        let (limits, job_dir) = (self.config.limits.clone(), self.job_dir.clone());
        let request = self.push_request();
        blocking(move || {
            let request = request(&current, &projects)?;
            let head = SnapshotHead {
                source_root: request.source_root.clone(),
                ..current.head()
            };
            let target = keep_merged(&limits, &job_dir, head, super::push::PUSH_HINT, |out| {
                super::push::push_merge(&current, &request.changes, request.force, out)
            })?;
            Ok(SnapshotEntries::Kept(Arc::new(target)))
        })
        .await
    }

    /// The push's merge rule again, against `current`, the workspace just before the
    /// commit: its conflicts, and the request. The merged result is not kept: the plan was
    /// made from the job's target (from `before`), and only the pushed paths, whose
    /// conflicts this finds, matter to it. A pushed path the plan left alone, as `before`
    /// already had it as pushed, and that changed since is a conflict too
    /// ([`super::push::changed_while_pushed`]).
    pub(super) async fn push_recheck(
        &self,
        current: &SnapshotEntries,
        before: &SnapshotEntries,
        projects: &[crate::model::Project],
    ) -> Result<super::push::PushRequest, TransferError> {
        let (current, before, projects) = (current.clone(), before.clone(), projects.to_vec());
        let job_dir = self.job_dir.clone();
        let request = self.push_request();
        blocking(move || {
            let request = request(&current, &projects)?;
            let merging = || TransferError::io("merging the snapshots in", &job_dir);
            super::push::push_merge(&current, &request.changes, request.force, |_| Ok(()))
                .map_err(merging())?
                .map_err(|c| conflict(c, super::push::PUSH_HINT))?;
            let changed = super::push::changed_while_pushed(&before, &current, &request.changes)
                .map_err(merging())?;
            if !changed.is_empty() {
                let conflicts = super::push::Conflicts::of(changed);
                return Err(conflict(conflicts, super::push::PUSH_AGAIN_HINT));
            }
            Ok(request)
        })
        .await
    }

    /// Reads the job's push request, checked against the git projects `current` holds.
    pub(super) fn push_request(
        &self,
    ) -> impl FnOnce(
        &SnapshotEntries,
        &[crate::model::Project],
    ) -> Result<super::push::PushRequest, TransferError>
           + Send
           + 'static {
        let path = self.job_dir.join(super::push::REQUEST_FILE);
        let limits = self.config.limits.clone();
        let job_dir = self.job_dir.clone();
        move |current, projects| {
            let bytes = std::fs::read(&path).map_err(TransferError::io("reading", &path))?;
            let request = super::push::PushRequest::decode(&bytes, &limits)?;
            let git_projects = super::push::git_projects(projects, current).map_err(
                TransferError::io("reading the workspace's snapshot in", &job_dir),
            )?;
            // The route checked the request a moment before: a refusal now is the workspace
            // changed since (a project became a git checkout).
            super::push::check_pushed(&request.changes, &git_projects).map_err(|error| {
                TransferError::BadRequest(format!(
                    "push request refused as the workspace is now: {error}"
                ))
            })?;
            Ok(request)
        }
    }

    /// A sync's target when the clone has changes of its own since its base, or git
    /// projects: the source with the clone's changes laid over it and the clone's own `.git`
    /// (`None`: take the source as it is — no base recorded, nothing of the clone's to keep,
    /// a forced sync, or a placed workspace's results). Every snapshot is read in order and
    /// the target written to an unnamed file: what is held grows with the clone's changes,
    /// not with the workspace.
    async fn pull_target(
        &self,
        local: &WorkspaceEntry,
        current: &SnapshotEntries,
        source: &SnapshotEntries,
        base: &BaseLoad,
    ) -> Result<Option<SnapshotEntries>, TransferError> {
        let Some(origin) = local.origin.clone() else {
            return Ok(None);
        };
        if self.job.request.force || self.job.request.placed {
            return Ok(None);
        }
        let Some(base) = base.get().await? else {
            return Ok(None);
        };
        let (current, source) = (current.clone(), source.clone());
        let projects = local.manifest.projects.clone();
        let limits = self.config.limits.clone();
        let job_dir = self.job_dir.clone();
        blocking(move || {
            let reading = TransferError::io("reading the snapshots to compare in", &job_dir);
            let base = SnapshotEntries::Kept(base);
            let (set, git_projects) =
                super::push::read_changes(&base, &current, &projects, &origin.relocated, false)
                    .map_err(reading)?;
            if set.is_empty() && git_projects.is_empty() {
                return Ok(None);
            }
            // A sync never replaces a git project's `.git` here: commits made in the clone
            // stay (they go back with a push), and history comes through git's own remotes.
            let target = keep_merged(&limits, &job_dir, source.head(), PULL_HINT, |out| {
                super::push::pull_merge(&source, &set, &current, &git_projects, out)
            })?;
            Ok((target.root != source.root()).then(|| SnapshotEntries::Kept(Arc::new(target))))
        })
        .await
    }
}
