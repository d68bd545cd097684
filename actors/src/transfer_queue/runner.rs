//! One attempt of one job: fetch the snapshot, lay out the staging area, copy what this node
//! already has, fetch the rest from every source that has the same content, verify,
//! relocate, and hand the result to the store.
//!
//! The runner is a future on the TransferQueue's arbiter that owns its own state and reports
//! to the actor by message ([`JobReport`]); the blocking parts run in `spawn_blocking`.
//! Requests are pipelined: each source has several batches in flight, and a batch that
//! broke off is requeued from the first chunk that did not arrive, so an interrupted
//! transfer refetches at most the chunks in flight.

use std::cell::Cell;
use std::collections::{HashMap, HashSet, VecDeque};
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::Addr;
use chrono::Utc;
use futures_util::stream::{FuturesUnordered, StreamExt};
use uuid::Uuid;

use crate::chunk_frame::{FrameDecoder, FrameKind, HEADER_LEN};
use crate::peer_registry::{PeerRegistryHandle, PeerState};
use crate::shutdown::Shutdown;
use crate::snapshot::{EntryKind, Hash, Snapshot};
use crate::workspace_store::{CloneRequest, Origin, WorkspaceStoreHandle};

use super::client::{FetchError, TransferClient};
use super::error::TransferError;
use super::job::{JobInfo, JobState, Progress, TransferKind};
use super::stage::{Stage, Work};
use super::{JobReport, TransferConfig, TransferQueue};

/// Everything one attempt needs.
pub struct JobContext {
    /// The job as it was when started.
    pub job: JobInfo,
    /// This node's id (sent to sources for `peers`-mode sharing).
    pub node_id: Uuid,
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
}

struct Source {
    peer_id: Uuid,
    name: String,
    in_flight: usize,
    paused_until: Option<Instant>,
    failures: u32,
    refused: Option<String>,
    last_error: Option<String>,
}

struct BatchResult {
    source: usize,
    requested: Vec<(Hash, u32)>,
    written: Vec<Hash>,
    bad: Vec<Hash>,
    missing: Vec<Hash>,
    bytes_written: u64,
    wire_bytes: u64,
    error: Option<FetchError>,
    failure: Option<TransferError>,
}

/// Runs one attempt of a job to its end.
pub async fn run(cx: JobContext) -> Result<Outcome, TransferError> {
    let started = Instant::now();
    let mut progress = Progress::default();
    cx.state(JobState::FetchingManifest);
    let mut phases = Phases::new();
    let local = match cx.job.kind {
        TransferKind::Clone => None,
        TransferKind::Sync => Some(
            cx.store
                .get(&cx.job.local_id.expect("a sync names its clone").to_string())?,
        ),
    };
    // A sync whose source and clone are both as the last transfer left them has nothing to
    // do: the source answers "not modified" to the root it had, and the clone's own snapshot
    // (a stat walk) still has the root recorded after that transfer.
    let mut fetched = None;
    if let (Some(local), Some(baseline)) = (&local, cx.job.baseline) {
        let origin = local.origin.as_ref().expect("a sync target is a clone");
        let id = local.manifest.id.to_string();
        let (source, mine) = futures_util::future::join(
            cx.fetch_manifest(cx.job.peer_id, Some(origin.root)),
            cx.store.snapshot(&id),
        )
        .await;
        fetched = source?;
        let (mine, _) = mine?;
        if fetched.is_none() && mine.root == baseline {
            progress.bytes_total = mine.total_bytes();
            progress.bytes_present = progress.bytes_total;
            progress.bytes_done = progress.bytes_total;
            progress.files_total = mine.file_count();
            progress.files_done = progress.files_total;
            return Ok(Outcome {
                local_id: local.manifest.id,
                local_name: local.manifest.name.clone(),
                notes: vec![format!(
                    "`{}` is already up to date with its source",
                    local.manifest.name
                )],
                local_root: Some(baseline),
                progress,
            });
        }
    }
    let snapshot = Arc::new(match fetched {
        Some(snapshot) => snapshot,
        None => cx
            .fetch_manifest(cx.job.peer_id, None)
            .await?
            .expect("a manifest without a known root is always sent"),
    });
    phases.mark("manifest");
    let previous_root = std::fs::read(cx.job_dir.join("root")).ok();
    if previous_root.as_deref() != Some(&snapshot.root.0[..]) {
        // The source moved on since an earlier attempt: what was staged is for other content.
        for stale in ["tree", "stage", "done.log"] {
            let path = cx.job_dir.join(stale);
            let _ = std::fs::remove_dir_all(&path);
            let _ = std::fs::remove_file(&path);
        }
        std::fs::write(cx.job_dir.join("root"), snapshot.root.0)
            .map_err(TransferError::io("writing", &cx.job_dir))?;
    }
    cx.queue.do_send(JobReport::Root(cx.job.id, snapshot.root));
    progress.bytes_total = snapshot.total_bytes();
    progress.files_total = snapshot.file_count();

    if let (Some(local), TransferKind::Sync) = (&local, cx.job.kind) {
        let origin = local.origin.as_ref().expect("a sync target is a clone");
        if origin.root == snapshot.root {
            let (current, _) = cx.store.snapshot(&local.manifest.id.to_string()).await?;
            if let Some(note) = unchanged_note(&current, &snapshot, origin, &local.manifest.name) {
                progress.bytes_present = progress.bytes_total;
                progress.bytes_done = progress.bytes_total;
                progress.files_done = progress.files_total;
                cx.progress(&progress);
                return Ok(Outcome {
                    local_id: local.manifest.id,
                    local_name: local.manifest.name.clone(),
                    notes: vec![note],
                    local_root: Some(current.root),
                    progress,
                });
            }
        }
    }

    // Other online peers sharing the same content become sources too.
    let mut sources = vec![Source::new(cx.job.peer_id, cx.job.peer_name.clone())];
    sources.extend(cx.extra_sources(&snapshot).await);
    cx.queue.do_send(JobReport::Sources(
        cx.job.id,
        sources.iter().map(|s| s.name.clone()).collect(),
    ));

    // Lay out the staging area.
    let (stage, work) = {
        let snapshot = snapshot.clone();
        let job_dir = cx.job_dir.clone();
        let kind = cx.job.kind;
        let local_state = match &local {
            Some(local) => {
                let (current, _) = cx.store.snapshot(&local.manifest.id.to_string()).await?;
                Some((
                    current,
                    local
                        .origin
                        .as_ref()
                        .map(|o| o.relocated.clone())
                        .unwrap_or_default(),
                ))
            }
            None => None,
        };
        blocking(move || match (kind, local_state) {
            (TransferKind::Sync, Some((current, relocated))) => {
                Stage::prepare_sync(snapshot, &current, &relocated, &job_dir)
            }
            _ => Stage::prepare_clone(snapshot, &job_dir),
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

    let Work { needed, .. } = work;
    let (mut needed, copied) = {
        let stage = stage.clone();
        let chunks = cx.store.chunk_store();
        blocking(move || stage.copy_local(needed, &chunks)).await?
    };
    phases.mark("local-copy");
    tracing::info!(job = %cx.job.id, copied, "copied from this node");
    progress.bytes_local += copied;
    progress.bytes_done += copied;
    progress.files_done = progress
        .files_total
        .saturating_sub(stage.files_incomplete());
    cx.progress(&progress);

    let mut rounds = 0;
    loop {
        cx.fetch(&stage, &mut sources, needed, &mut progress)
            .await?;
        phases.mark("fetch");
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
            blocking(move || Ok(stage.requeue(&bad))).await?
        };
        needed = again;
        cx.state(JobState::Transferring);
    }
    progress.files_done = progress.files_total;
    progress.bytes_done = progress.bytes_total;
    cx.progress(&progress);

    cx.state(JobState::Materializing);
    let outcome = match (&local, cx.job.kind) {
        (Some(local), TransferKind::Sync) => {
            cx.materialize_sync(local.manifest.id, &stage, &snapshot)
                .await?
        }
        _ => cx.materialize_clone(&stage, &snapshot).await?,
    };
    let local_root = cx
        .store
        .snapshot(&outcome.local_id.to_string())
        .await
        .ok()
        .map(|(snapshot, stats)| {
            tracing::debug!(job = %cx.job.id, ?stats, "local snapshot after the transfer");
            snapshot.root
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

/// Whether the clone is exactly what its origin root describes (no local changes), so a
/// sync has nothing to do.
fn unchanged_note(
    current: &Snapshot,
    source: &Snapshot,
    origin: &Origin,
    name: &str,
) -> Option<String> {
    let local: HashMap<&str, &crate::snapshot::SnapshotEntry> = current
        .entries
        .iter()
        .map(|e| (e.path.as_str(), e))
        .collect();
    if current.entries.len() != source.entries.len() {
        return None;
    }
    for entry in &source.entries {
        let mine = local.get(entry.path.as_str())?;
        let same = *mine == entry
            || entry.path == crate::model::WORKSPACE_FILE
            || origin.relocated.contains_key(&entry.path);
        if !same {
            return None;
        }
    }
    Some(format!("`{name}` is already up to date with its source"))
}

impl Source {
    fn new(peer_id: Uuid, name: String) -> Source {
        Source {
            peer_id,
            name,
            in_flight: 0,
            paused_until: None,
            failures: 0,
            refused: None,
            last_error: None,
        }
    }
}

impl JobContext {
    fn state(&self, state: JobState) {
        self.queue.do_send(JobReport::State(self.job.id, state));
    }

    fn progress(&self, progress: &Progress) {
        self.queue
            .do_send(JobReport::Progress(self.job.id, progress.clone()));
    }

    fn base_url(&self, peer_id: Uuid) -> Option<String> {
        self.peers
            .view()
            .peers
            .iter()
            .find(|p| p.id == peer_id && p.state != PeerState::Gone)
            .and_then(|p| p.base_url())
    }

    /// The source's snapshot, retrying while the peer is unreachable (up to the configured
    /// wait).
    async fn fetch_manifest(
        &self,
        peer_id: Uuid,
        known: Option<Hash>,
    ) -> Result<Option<Snapshot>, TransferError> {
        let deadline = Instant::now() + self.config.source_wait;
        let mut delay = Duration::from_millis(250);
        loop {
            let result = match self.base_url(peer_id) {
                Some(url) => {
                    self.client
                        .manifest(&url, self.job.workspace_id, self.node_id, known)
                        .await
                }
                None => Err(FetchError::Network(format!(
                    "peer `{}` is not online",
                    self.job.peer_name
                ))),
            };
            let error = match result {
                Ok(None) => return Ok(None),
                Ok(Some(bytes)) => {
                    let limits = self.config.limits.clone();
                    return blocking(move || {
                        Snapshot::decode(&bytes, &limits).map_err(TransferError::from)
                    })
                    .await
                    .map(Some);
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

    async fn sleep(&self, delay: Duration) -> Result<(), TransferError> {
        tokio::select! {
            _ = tokio::time::sleep(delay) => Ok(()),
            _ = self.cancel.wait() => Err(TransferError::Cancelled),
        }
    }

    /// Online peers other than the main source whose catalog lists the same workspace id and
    /// whose snapshot has the same root.
    async fn extra_sources(&self, snapshot: &Snapshot) -> Vec<Source> {
        let candidates: Vec<(Uuid, String, String)> = self
            .peers
            .view()
            .peers
            .iter()
            .filter(|p| p.id != self.job.peer_id && p.state == PeerState::Online)
            .filter(|p| p.catalog.iter().any(|e| e.id == self.job.workspace_id))
            .filter_map(|p| Some((p.id, p.name.clone(), p.base_url()?)))
            .collect();
        let mut found = Vec::new();
        for (id, name, url) in candidates {
            let Ok(Some(bytes)) = self
                .client
                .manifest(&url, self.job.workspace_id, self.node_id, None)
                .await
            else {
                continue;
            };
            let limits = self.config.limits.clone();
            let Ok(theirs) =
                blocking(move || Snapshot::decode(&bytes, &limits).map_err(TransferError::from))
                    .await
            else {
                continue;
            };
            if theirs.root == snapshot.root {
                found.push(Source::new(id, name));
            }
        }
        found
    }

    /// Fetches `needed` from the sources until every chunk is written.
    async fn fetch(
        &self,
        stage: &Arc<Stage>,
        sources: &mut [Source],
        needed: Vec<(Hash, u32)>,
        progress: &mut Progress,
    ) -> Result<(), TransferError> {
        let mut pending: VecDeque<(Hash, u32)> = needed.into();
        let mut in_flight = FuturesUnordered::new();
        let mut bad_counts: HashMap<Hash, u32> = HashMap::new();
        let mut missing_from: HashMap<Hash, HashSet<usize>> = HashMap::new();
        let mut last_report = Instant::now();
        let mut rate = RateMeter::new(progress.bytes_done);
        let mut stalled_since: Option<Instant> = None;
        let live = Rc::new(Cell::new(0u64));
        loop {
            if self.cancel.is_triggered() {
                return Err(TransferError::Cancelled);
            }
            let now = Instant::now();
            // Fill every source's window.
            while !pending.is_empty() {
                let Some(index) = pick_source(
                    sources,
                    now,
                    self.config.window,
                    &missing_from,
                    pending.front().map(|p| &p.0),
                ) else {
                    break;
                };
                let Some(url) = self.base_url(sources[index].peer_id) else {
                    sources[index].paused_until = Some(now + Duration::from_millis(500));
                    sources[index].last_error = Some("peer is not online".into());
                    continue;
                };
                let mut batch = Vec::new();
                let mut bytes = 0u64;
                while let Some(&(hash, size)) = pending.front() {
                    if !batch.is_empty()
                        && (batch.len() >= self.config.batch_chunks
                            || bytes + u64::from(size) > self.config.batch_bytes)
                    {
                        break;
                    }
                    pending.pop_front();
                    bytes += u64::from(size);
                    batch.push((hash, size));
                }
                sources[index].in_flight += 1;
                in_flight.push(self.fetch_batch(index, url, batch, stage.clone(), live.clone()));
            }
            if in_flight.is_empty() {
                if pending.is_empty() {
                    return Ok(());
                }
                // Every source is paused or refused.
                let since = *stalled_since.get_or_insert(now);
                if sources.iter().all(|s| s.refused.is_some()) {
                    let why: Vec<String> = sources
                        .iter()
                        .map(|s| {
                            format!("{}: {}", s.name, s.refused.as_deref().unwrap_or_default())
                        })
                        .collect();
                    return Err(TransferError::NoSource(why.join("; ")));
                }
                if now.duration_since(since) > self.config.source_wait {
                    let why: Vec<String> = sources
                        .iter()
                        .map(|s| {
                            format!(
                                "{}: {}",
                                s.name,
                                s.last_error.as_deref().unwrap_or("unreachable")
                            )
                        })
                        .collect();
                    return Err(TransferError::NoSource(why.join("; ")));
                }
                let wake = sources
                    .iter()
                    .filter(|s| s.refused.is_none())
                    .filter_map(|s| s.paused_until)
                    .min()
                    .map(|t| t.saturating_duration_since(now))
                    .unwrap_or(Duration::from_millis(250))
                    .max(Duration::from_millis(20));
                self.sleep(wake).await?;
                continue;
            }
            let next_report = self
                .config
                .progress_interval
                .saturating_sub(last_report.elapsed());
            let result: BatchResult = tokio::select! {
                result = in_flight.next() => result.expect("in_flight is not empty"),
                _ = tokio::time::sleep(next_report) => {
                    last_report = Instant::now();
                    self.report_live(progress, live.get(), &mut rate, stage);
                    continue;
                }
                _ = self.cancel.wait() => return Err(TransferError::Cancelled),
            };
            if let Some(failure) = result.failure {
                return Err(failure);
            }
            let source = &mut sources[result.source];
            source.in_flight -= 1;
            progress.bytes_fetched += result.wire_bytes;
            progress.bytes_from_peers += result.bytes_written;
            progress.bytes_done += result.bytes_written;
            progress.chunks_fetched += result.written.len() as u64;
            if !result.written.is_empty() {
                stalled_since = None;
                source.failures = 0;
            }
            let answered: HashSet<Hash> = result
                .written
                .iter()
                .chain(&result.bad)
                .chain(&result.missing)
                .copied()
                .collect();
            // Whatever did not arrive goes back to the front, in order.
            for item in result.requested.iter().rev() {
                if !answered.contains(&item.0) {
                    pending.push_front(*item);
                }
            }
            let sizes: HashMap<Hash, u32> = result.requested.iter().copied().collect();
            for hash in &result.bad {
                progress.chunks_bad += 1;
                let count = bad_counts.entry(*hash).or_default();
                *count += 1;
                tracing::warn!(job = %self.job.id, chunk = %hash, source = %source.name, "chunk did not match its hash; fetching it again");
                if *count > self.config.max_bad_per_chunk {
                    return Err(TransferError::TooManyBadChunks(hash.to_hex(), *count));
                }
                pending.push_back((*hash, sizes[hash]));
            }
            for hash in &result.missing {
                let missing = missing_from.entry(*hash).or_default();
                missing.insert(result.source);
                if sources
                    .iter()
                    .enumerate()
                    .all(|(i, s)| s.refused.is_some() || missing.contains(&i))
                {
                    return Err(TransferError::SourceChanged(format!(
                        "no source has chunk {hash} any more"
                    )));
                }
                pending.push_back((*hash, sizes[hash]));
            }
            let source = &mut sources[result.source];
            match result.error {
                None => {}
                Some(FetchError::Busy(after)) => {
                    source.paused_until = Some(Instant::now() + after);
                    source.last_error = Some("busy".into());
                }
                Some(FetchError::Refused(why)) => {
                    tracing::warn!(job = %self.job.id, source = %source.name, %why, "source refused");
                    source.refused = Some(why);
                }
                Some(FetchError::Network(why)) => {
                    source.failures += 1;
                    let backoff = Duration::from_millis(250 * (1 << source.failures.min(5)))
                        .min(Duration::from_secs(5));
                    tracing::info!(job = %self.job.id, source = %source.name, %why, ?backoff, "source failed; retrying");
                    source.paused_until = Some(Instant::now() + backoff);
                    source.last_error = Some(why);
                }
            }
            if last_report.elapsed() >= self.config.progress_interval {
                last_report = Instant::now();
                self.report_live(progress, live.get(), &mut rate, stage);
            }
        }
    }

    /// Reports the counters, including what batches still in flight already wrote.
    fn report_live(&self, progress: &mut Progress, live: u64, rate: &mut RateMeter, stage: &Stage) {
        let done = progress.bytes_done + live;
        progress.rate = rate.update(done);
        progress.eta_seconds =
            (progress.rate > 0).then(|| progress.bytes_total.saturating_sub(done) / progress.rate);
        progress.files_done = progress
            .files_total
            .saturating_sub(stage.files_incomplete());
        let mut shown = progress.clone();
        shown.bytes_done = done;
        shown.bytes_from_peers += live;
        self.progress(&shown);
    }

    /// One batch request. Frames are decoded as they arrive and handed, about a megabyte at
    /// a time, to a blocking task that verifies and writes them; `live` counts the content
    /// written so far for progress reports.
    fn fetch_batch(
        &self,
        source: usize,
        url: String,
        batch: Vec<(Hash, u32)>,
        stage: Arc<Stage>,
        live: Rc<Cell<u64>>,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = BatchResult>>> {
        let hashes: Vec<Hash> = batch.iter().map(|b| b.0).collect();
        let request = self.client.chunks(
            &url,
            self.job.workspace_id,
            self.node_id,
            &hashes,
            self.config.compress.for_source(&url),
        );
        Box::pin(async move {
            let wanted: Arc<HashMap<Hash, u32>> = Arc::new(batch.iter().copied().collect());
            let mut result = BatchResult {
                source,
                requested: batch,
                written: Vec::new(),
                bad: Vec::new(),
                missing: Vec::new(),
                bytes_written: 0,
                wire_bytes: 0,
                error: None,
                failure: None,
            };
            let mut stream = match request.await {
                Ok(stream) => stream,
                Err(error) => {
                    result.error = Some(error);
                    return result;
                }
            };
            let mut decoder = FrameDecoder::default();
            let mut frames = Vec::new();
            let mut buffered = 0usize;
            loop {
                let piece = stream.next().await;
                let ended = match piece {
                    Some(Ok(bytes)) => {
                        result.wire_bytes += bytes.len() as u64;
                        decoder.push(&bytes);
                        loop {
                            match decoder.next_frame() {
                                Ok(Some(frame)) => {
                                    if !wanted.contains_key(&frame.hash) {
                                        result.error = Some(FetchError::Network(format!(
                                            "the source sent chunk {} that was not asked for",
                                            frame.hash
                                        )));
                                        break;
                                    }
                                    buffered += frame.payload.len() + HEADER_LEN;
                                    frames.push(frame);
                                }
                                Ok(None) => break,
                                Err(error) => {
                                    result.error = Some(FetchError::Network(error.to_string()));
                                    break;
                                }
                            }
                        }
                        result.error.is_some()
                    }
                    Some(Err(error)) => {
                        result.error = Some(error);
                        true
                    }
                    None => {
                        if let Err(error) = decoder.finish() {
                            result.error = Some(FetchError::Network(error.to_string()));
                        }
                        true
                    }
                };
                if buffered >= 1024 * 1024 || (ended && !frames.is_empty()) {
                    let batch_frames = std::mem::take(&mut frames);
                    buffered = 0;
                    let stage = stage.clone();
                    let wanted = wanted.clone();
                    match tokio::task::spawn_blocking(move || {
                        process_frames(&stage, &wanted, batch_frames)
                    })
                    .await
                    {
                        Ok(Ok(processed)) => {
                            live.set(live.get() + processed.bytes_written);
                            result.bytes_written += processed.bytes_written;
                            result.written.extend(processed.written);
                            result.bad.extend(processed.bad);
                            result.missing.extend(processed.missing);
                        }
                        Ok(Err(failure)) => {
                            result.failure = Some(failure);
                            ended_with(&live, &result);
                            return result;
                        }
                        Err(_) => {
                            result.failure = Some(TransferError::Unavailable);
                            ended_with(&live, &result);
                            return result;
                        }
                    }
                }
                if ended {
                    ended_with(&live, &result);
                    return result;
                }
            }
        })
    }

    async fn materialize_clone(
        &self,
        stage: &Arc<Stage>,
        snapshot: &Arc<Snapshot>,
    ) -> Result<Outcome, TransferError> {
        // A second copy on this node gets a new id (and so another directory).
        let id = if self.store.get(&snapshot.workspace_id.to_string()).is_ok() {
            Uuid::new_v4()
        } else {
            snapshot.workspace_id
        };
        let new_root = self.store.workspace_root(id);
        let relocation = {
            let stage = stage.clone();
            blocking(move || stage.relocate(&new_root)).await?
        };
        let mut notes = relocation.notes.clone();
        if !relocation.relocated.is_empty() {
            notes.push(format!(
                "relocated {} files and links that embedded the source's path: {}",
                relocation.relocated.len(),
                relocation
                    .relocated
                    .keys()
                    .take(10)
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        for rebuild in &relocation.needs_rebuild {
            notes.push(format!("needs rebuild: {rebuild}"));
        }
        if id != snapshot.workspace_id {
            set_id(stage.tree(), id)?;
            notes.push(format!(
                "this node already has workspace id {}; the clone got id {id}",
                snapshot.workspace_id
            ));
        }
        let origin = Origin {
            peer_id: self.job.peer_id,
            peer_name: self.job.peer_name.clone(),
            workspace_id: snapshot.workspace_id,
            workspace_name: snapshot.name.clone(),
            revision: snapshot.revision,
            root: snapshot.root,
            cloned_at: Utc::now(),
            synced_at: None,
            relocated: relocation.relocated.clone(),
            needs_rebuild: relocation.needs_rebuild.clone(),
        };
        let created = self
            .store
            .commit_clone(
                CloneRequest {
                    staging: stage.tree().to_path_buf(),
                    origin,
                    rename_to: self.job.request.rename_to.clone(),
                    private: self.job.request.private,
                    notes: Vec::new(),
                },
                &self.job.request.by,
            )
            .await?;
        notes.extend(created.notes);
        let local_id = created.workspace.manifest.id;
        let written: HashSet<String> = snapshot
            .entries
            .iter()
            .filter(|e| e.kind == EntryKind::File)
            .map(|e| e.path.clone())
            .filter(|path| {
                !relocation.relocated.contains_key(path) && path != crate::model::WORKSPACE_FILE
            })
            .collect();
        self.store
            .record_snapshot(local_id, snapshot.clone(), written)
            .await?;
        Ok(Outcome {
            local_id,
            local_name: created.workspace.manifest.name.clone(),
            notes,
            progress: Progress::default(),
            local_root: None,
        })
    }

    async fn materialize_sync(
        &self,
        id: Uuid,
        stage: &Arc<Stage>,
        snapshot: &Arc<Snapshot>,
    ) -> Result<Outcome, TransferError> {
        let local = self.store.get(&id.to_string())?;
        let new_root = local.path.clone();
        let relocation = {
            let stage = stage.clone();
            blocking(move || stage.relocate(&new_root)).await?
        };
        let mut origin = local
            .origin
            .as_deref()
            .cloned()
            .expect("a sync target is a clone");
        for (path, hash) in &relocation.relocated {
            origin.relocated.insert(path.clone(), *hash);
        }
        origin
            .relocated
            .retain(|path, _| snapshot.entries.iter().any(|e| &e.path == path));
        origin.needs_rebuild = relocation.needs_rebuild.clone();
        origin.revision = snapshot.revision;
        origin.root = snapshot.root;
        origin.synced_at = Some(Utc::now());
        let plan = stage.take_plan();
        let summary = format!(
            "{} files replaced, {} links set, {} directories created, {} paths removed",
            plan.files.len(),
            plan.links.len(),
            plan.dirs.len(),
            plan.remove.len()
        );
        let written: HashSet<String> = plan
            .files
            .iter()
            .map(|(_, path)| path.clone())
            .filter(|path| {
                !origin.relocated.contains_key(path) && path != crate::model::WORKSPACE_FILE
            })
            .collect();
        let started = Instant::now();
        let entry = self
            .store
            .commit_sync(id, plan, origin, &self.job.request.by)
            .await?;
        let committed = started.elapsed();
        self.store
            .record_snapshot(id, snapshot.clone(), written)
            .await?;
        tracing::debug!(job = %self.job.id, ?committed, recorded = ?started.elapsed() - committed, "sync committed");
        let mut notes = relocation.notes;
        notes.push(summary);
        Ok(Outcome {
            local_id: id,
            local_name: entry.manifest.name.clone(),
            notes,
            progress: Progress::default(),
            local_root: None,
        })
    }
}

/// What the blocking half made of one batch.
struct Processed {
    written: Vec<Hash>,
    bad: Vec<Hash>,
    missing: Vec<Hash>,
    bytes_written: u64,
}

/// Verifies each decoded frame and writes the good chunks.
fn process_frames(
    stage: &Stage,
    wanted: &HashMap<Hash, u32>,
    frames: Vec<crate::chunk_frame::Frame>,
) -> Result<Processed, TransferError> {
    let mut processed = Processed {
        written: Vec::new(),
        bad: Vec::new(),
        missing: Vec::new(),
        bytes_written: 0,
    };
    for frame in frames {
        let hash = frame.hash;
        let size = wanted[&hash];
        if frame.kind == FrameKind::Missing {
            processed.missing.push(hash);
            continue;
        }
        match frame.into_data() {
            Ok(data) if data.len() == size as usize && Hash::of(&data) == hash => {
                processed.bytes_written += stage.write_chunk(&hash, &data)?;
                processed.written.push(hash);
            }
            _ => processed.bad.push(hash),
        }
    }
    stage.flush_log()?;
    Ok(processed)
}

/// A finished batch's bytes move from the live counter into the job's totals.
fn ended_with(live: &Cell<u64>, result: &BatchResult) {
    live.set(live.get().saturating_sub(result.bytes_written));
}

fn pick_source(
    sources: &[Source],
    now: Instant,
    window: usize,
    missing_from: &HashMap<Hash, HashSet<usize>>,
    next: Option<&Hash>,
) -> Option<usize> {
    let missing = next.and_then(|h| missing_from.get(h));
    sources
        .iter()
        .enumerate()
        .filter(|(_, s)| s.refused.is_none() && s.in_flight < window)
        .filter(|(_, s)| s.paused_until.is_none_or(|t| t <= now))
        .filter(|(i, _)| missing.is_none_or(|m| !m.contains(i)))
        .min_by_key(|(_, s)| s.in_flight)
        .map(|(i, _)| i)
}

/// Rewrites the `id` in a staged `workspace.yaml` (a second copy on this node).
fn set_id(tree: &std::path::Path, id: Uuid) -> Result<(), TransferError> {
    let path = tree.join(crate::model::WORKSPACE_FILE);
    let mut manifest: crate::model::WorkspaceManifest =
        crate::yaml::read_file(&path).map_err(|e| TransferError::Store(e.into()))?;
    manifest.id = id;
    std::fs::write(&path, crate::yaml::to_string(&manifest))
        .map_err(TransferError::io("writing", &path))
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

async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, TransferError> + Send + 'static,
) -> Result<T, TransferError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|_| TransferError::Unavailable)?
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

/// Content bytes per second over the last few seconds.
struct RateMeter {
    samples: VecDeque<(Instant, u64)>,
}

impl RateMeter {
    fn new(done: u64) -> RateMeter {
        RateMeter {
            samples: VecDeque::from([(Instant::now(), done)]),
        }
    }

    fn update(&mut self, done: u64) -> u64 {
        let now = Instant::now();
        self.samples.push_back((now, done));
        while self.samples.len() > 2
            && now.duration_since(self.samples[0].0) > Duration::from_secs(3)
        {
            self.samples.pop_front();
        }
        let (then, before) = self.samples[0];
        let seconds = now.duration_since(then).as_secs_f64();
        if seconds <= 0.0 {
            return 0;
        }
        ((done - before) as f64 / seconds) as u64
    }
}
