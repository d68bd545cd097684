//! Fetching a job's chunks: the sources (the main peer and every online peer with the same
//! content), their windows of pipelined batch requests, and what happens to each answer.
//!
//! Each source has several batches in flight; frames are decoded as they stream in and
//! verified and written a megabyte at a time off the arbiter, so a batch that broke off is
//! requeued from the first chunk that did not arrive and an interrupted transfer refetches at
//! most the chunks in flight. Corrupted chunks go back to the queue (to another source when
//! there is one); busy sources are paused for their `Retry-After`, failing ones back off.

use std::cell::Cell;
use std::collections::{HashMap, HashSet, VecDeque};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::stream::{FuturesUnordered, StreamExt};
use uuid::Uuid;

use crate::chunk_frame::{FrameDecoder, FrameKind, HEADER_LEN};
use crate::peer_registry::{PeerEndpoint, PeerState};
use crate::snapshot::Hash;

use super::client::FetchError;
use super::error::TransferError;
use super::job::Progress;
use super::runner::JobContext;
use super::stage::Stage;

/// One peer chunks are fetched from, and how it is doing.
pub(super) struct Source {
    peer_id: Uuid,
    /// The peer's name (for the job's `sources`).
    pub(super) name: String,
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

impl Source {
    pub(super) fn new(peer_id: Uuid, name: String) -> Source {
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
    /// Online peers other than the main source whose catalog lists the same workspace id and
    /// whose snapshot has the same root.
    pub(super) async fn extra_sources(&self, root: Hash) -> Vec<Source> {
        let candidates: Vec<(Uuid, String, PeerEndpoint)> = self
            .peers
            .view()
            .peers
            .iter()
            .filter(|p| p.id != self.job.peer_id && p.state == PeerState::Online)
            .filter(|p| p.catalog.iter().any(|e| e.id == self.job.workspace_id))
            .filter_map(|p| Some((p.id, p.name.clone(), p.endpoint()?)))
            .collect();
        let mut found = Vec::new();
        for (id, name, endpoint) in candidates {
            // Asked with this snapshot's root, a peer with the same content answers "not
            // modified": nothing to download or decode. Any other answer is other content.
            let same = self
                .client
                .manifest(&endpoint, self.job.workspace_id, Some(root), None)
                .await;
            if let Ok(None) = same {
                found.push(Source::new(id, name));
            }
        }
        found
    }

    /// Fetches `needed` from the sources until every chunk is written.
    pub(super) async fn fetch(
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
                let Some(endpoint) = self.endpoint(sources[index].peer_id) else {
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
                in_flight.push(self.fetch_batch(
                    index,
                    endpoint,
                    batch,
                    stage.clone(),
                    live.clone(),
                ));
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
        endpoint: PeerEndpoint,
        batch: Vec<(Hash, u32)>,
        stage: Arc<Stage>,
        live: Rc<Cell<u64>>,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = BatchResult>>> {
        let hashes: Vec<Hash> = batch.iter().map(|b| b.0).collect();
        let request = self.client.chunks(
            &endpoint,
            self.job.workspace_id,
            &hashes,
            self.config.compress.for_source(&endpoint.url),
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
