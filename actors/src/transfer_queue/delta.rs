//! Changed chunks rebuilt from their previous versions (`schemas/transfer.md`, "Parts of
//! changed chunks"). A 1 MiB edit inside a large file changes the ~1 MiB chunks around it,
//! and whole chunks would carry the unchanged bytes at their edges again; so before the
//! normal fetch, a sync asks the source for the parts of each changed chunk whose file this
//! node holds an older version of, copies the parts it already has from the chunks that
//! version lost, and fetches only the rest as ranges. Every rebuilt chunk is checked against
//! its hash before it is written; whatever cannot be rebuilt (a source without parts, a
//! range that did not come, a mismatch) is simply fetched whole afterwards.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use futures_util::StreamExt;
use uuid::Uuid;

use crate::chunk_frame::{FrameDecoder, FrameKind};
use crate::chunk_parts::{self, Range, MAX_PARTS_REQUEST, MAX_RANGES_REQUEST};
use crate::snapshot::{ChunkRef, Hash, SnapshotEntry, CHUNK_MAX};
use crate::workspace_store::ChunkStore;

use super::error::TransferError;
use super::job::Progress;
use super::runner::{blocking, JobContext};
use super::stage::Stage;

/// Chunks smaller than this are fetched whole: they cannot have two parts. (Small files are
/// single chunks: an edited 20 KB source file keeps the parts before the edit.)
const MIN_CHUNK: u32 = 2 * chunk_parts::PART_MIN as u32;
/// Bytes of previous versions held in memory, and of chunks being rebuilt, each at most
/// (what is past it is fetched whole).
const BUDGET: u64 = 64 * 1024 * 1024;
/// Bytes one range request may bring.
const RANGES_BYTES: u64 = 16 * 1024 * 1024;

/// Which changed chunks to rebuild, and the parts this node has to rebuild them with.
#[derive(Default)]
struct Plan {
    /// Changed chunks (hash, size) whose file this node holds an older version of.
    candidates: Vec<(Hash, u32)>,
    /// The chunks those older versions lost, read.
    previous: Vec<Vec<u8>>,
    /// Their parts: part hash → (index in `previous`, offset).
    parts: HashMap<Hash, (usize, u32)>,
}

/// A file's content as chunk references (a small file is its own single chunk).
fn chunk_refs(entry: &SnapshotEntry) -> Vec<ChunkRef> {
    match (&entry.chunks[..], entry.hash) {
        ([], Some(hash)) if entry.size > 0 => vec![ChunkRef {
            hash,
            size: entry.size as u32,
        }],
        (chunks, _) => chunks.to_vec(),
    }
}

/// `changed`: the files staged (new entry) that this node holds an older version of.
fn plan(
    changed: &[(SnapshotEntry, SnapshotEntry)],
    needed: &[(Hash, u32)],
    chunks: &ChunkStore,
    local_id: Uuid,
) -> Plan {
    let needed: HashSet<Hash> = needed
        .iter()
        .filter(|(_, size)| *size >= MIN_CHUNK)
        .map(|(hash, _)| *hash)
        .collect();
    let mut plan = Plan::default();
    let mut chosen = HashSet::new();
    let mut read = HashSet::new();
    let (mut candidate_bytes, mut previous_bytes) = (0u64, 0u64);
    for (entry, old) in changed {
        if entry.hash.is_none() || old.hash.is_none() || old.hash == entry.hash {
            continue;
        }
        let new = chunk_refs(entry);
        let candidates: Vec<(Hash, u32)> = new
            .iter()
            .filter(|c| needed.contains(&c.hash) && !chosen.contains(&c.hash))
            .map(|c| (c.hash, c.size))
            .collect();
        if candidates.is_empty() {
            continue;
        }
        let kept: HashSet<Hash> = new.iter().map(|c| c.hash).collect();
        let lost: Vec<ChunkRef> = chunk_refs(old)
            .into_iter()
            .filter(|c| !kept.contains(&c.hash) && read.insert(c.hash))
            .collect();
        let adds = candidates.iter().map(|(_, s)| u64::from(*s)).sum::<u64>();
        let reads = lost.iter().map(|c| u64::from(c.size)).sum::<u64>();
        if lost.is_empty() || candidate_bytes + adds > BUDGET || previous_bytes + reads > BUDGET {
            continue;
        }
        let mut found = false;
        for chunk in lost {
            // Read (and verified, unless its file is unchanged since indexed) from this
            // node's own copy.
            let Some(data) = chunks.read(local_id, &chunk.hash) else {
                continue;
            };
            let index = plan.previous.len();
            for part in chunk_parts::cut(&data) {
                plan.parts.entry(part.hash).or_insert((index, part.offset));
            }
            previous_bytes += data.len() as u64;
            plan.previous.push(data);
            found = true;
        }
        if found {
            candidate_bytes += adds;
            chosen.extend(candidates.iter().map(|(h, _)| *h));
            plan.candidates.extend(candidates);
        }
    }
    plan
}

/// A chunk being rebuilt.
struct Rebuild {
    hash: Hash,
    data: Vec<u8>,
    /// Bytes copied from previous versions.
    reused: u64,
    /// Bytes fetched as ranges.
    fetched: u64,
    /// A range came back missing or wrong.
    failed: bool,
}

impl JobContext {
    /// Rebuilds what it can of `needed` from the parts this node already has (see the
    /// module's text) and returns the chunks still to fetch whole. Never fails the job over
    /// the attempt: a source without parts, or any error, leaves the chunks to the normal
    /// fetch.
    pub(super) async fn rebuild_changed(
        &self,
        stage: &Arc<Stage>,
        needed: Vec<(Hash, u32)>,
        local_id: Uuid,
        progress: &mut Progress,
    ) -> Result<Vec<(Hash, u32)>, TransferError> {
        let chunks = self.store.chunk_store();
        let asked = needed.clone();
        let changed = stage.changed_files();
        let plan = blocking(move || Ok(plan(&changed, &asked, &chunks, local_id))).await?;
        if plan.candidates.is_empty() {
            return Ok(needed);
        }
        let Some(endpoint) = self.endpoint(self.job.peer_id) else {
            return Ok(needed);
        };
        let workspace = self.job.workspace_id;

        // Each candidate's parts; what this node has of them is copied in at once.
        let mut rebuilds = Vec::new();
        let mut ranges: Vec<(usize, Range)> = Vec::new();
        for batch in plan.candidates.chunks(MAX_PARTS_REQUEST) {
            let answer = match self.client.parts(&endpoint, workspace, batch).await {
                Ok(answer) => answer,
                Err(error) => {
                    tracing::info!(job = %self.job.id, %error, "the source lists no parts; changed chunks are fetched whole");
                    return Ok(needed);
                }
            };
            progress.bytes_fetched += answer.len() as u64;
            let lists = match chunk_parts::decode_lists(&answer, batch) {
                Ok(lists) => lists,
                Err(error) => {
                    tracing::warn!(job = %self.job.id, %error, "the source's part lists are malformed; changed chunks are fetched whole");
                    return Ok(needed);
                }
            };
            for ((hash, size), parts) in batch.iter().zip(lists) {
                let Some(parts) = parts else { continue };
                let reused: u64 = parts
                    .iter()
                    .filter(|p| plan.parts.contains_key(&p.hash))
                    .map(|p| u64::from(p.size))
                    .sum();
                // Mostly new content compresses as well whole; not worth a second request.
                if reused * 8 < u64::from(*size) {
                    continue;
                }
                let index = rebuilds.len();
                let mut data = vec![0u8; *size as usize];
                let mut missing: Option<Range> = None;
                for part in &parts {
                    let (start, end) = (part.offset as usize, (part.offset + part.size) as usize);
                    let have = plan.parts.get(&part.hash).and_then(|&(from, offset)| {
                        plan.previous[from]
                            .get(offset as usize..offset as usize + part.size as usize)
                    });
                    match have {
                        Some(bytes) => {
                            data[start..end].copy_from_slice(bytes);
                            if let Some(range) = missing.take() {
                                ranges.push((index, range));
                            }
                        }
                        None => match &mut missing {
                            // Adjacent missing parts travel as one range.
                            Some(range) => range.len += part.size,
                            None => {
                                missing = Some(Range {
                                    hash: *hash,
                                    offset: part.offset,
                                    len: part.size,
                                })
                            }
                        },
                    }
                }
                if let Some(range) = missing {
                    ranges.push((index, range));
                }
                rebuilds.push(Rebuild {
                    hash: *hash,
                    data,
                    reused,
                    fetched: 0,
                    failed: false,
                });
            }
        }
        if rebuilds.is_empty() {
            return Ok(needed);
        }

        // The ranges, in requests of bounded count and size.
        let mut start = 0;
        while start < ranges.len() {
            if self.cancel.is_triggered() {
                return Err(TransferError::Cancelled);
            }
            let mut end = start;
            let mut bytes = 0u64;
            while end < ranges.len()
                && end - start < MAX_RANGES_REQUEST
                && (end == start || bytes + u64::from(ranges[end].1.len) <= RANGES_BYTES)
            {
                bytes += u64::from(ranges[end].1.len);
                end += 1;
            }
            let batch = &ranges[start..end];
            start = end;
            let asked: Vec<Range> = batch.iter().map(|(_, r)| *r).collect();
            if let Err(error) = self
                .fetch_ranges(&endpoint, workspace, batch, &asked, &mut rebuilds, progress)
                .await
            {
                tracing::info!(job = %self.job.id, %error, "ranges of changed chunks did not come; those chunks are fetched whole");
                for (index, _) in batch {
                    rebuilds[*index].failed = true;
                }
            }
        }

        // Check and write what was rebuilt.
        let stage = stage.clone();
        let job = self.job.id;
        let (written, counts) = blocking(move || {
            let mut written = HashSet::new();
            let (mut done, mut reused, mut fetched, mut bad) = (0u64, 0u64, 0u64, 0u64);
            for rebuild in rebuilds.into_iter().filter(|r| !r.failed) {
                if Hash::of(&rebuild.data) != rebuild.hash {
                    tracing::warn!(%job, chunk = %rebuild.hash, "a chunk rebuilt from its parts does not match its hash; it is fetched whole");
                    bad += 1;
                    continue;
                }
                done += stage.write_chunk(&rebuild.hash, &rebuild.data)?;
                reused += rebuild.reused;
                fetched += rebuild.fetched;
                written.insert(rebuild.hash);
            }
            stage.flush_log()?;
            Ok((written, (done, reused, fetched, bad)))
        })
        .await?;
        let (done, reused, fetched, bad) = counts;
        tracing::info!(job = %self.job.id, chunks = written.len(), reused, fetched, "changed chunks rebuilt from their parts");
        progress.bytes_done += done;
        progress.bytes_local += done.saturating_sub(fetched);
        progress.bytes_from_peers += fetched.min(done);
        progress.chunks_fetched += written.len() as u64;
        progress.chunks_bad += bad;
        Ok(needed
            .into_iter()
            .filter(|(hash, _)| !written.contains(hash))
            .collect())
    }

    /// One range request; each frame's bytes go into its chunk at its offset.
    async fn fetch_ranges(
        &self,
        endpoint: &crate::peer_registry::PeerEndpoint,
        workspace: Uuid,
        batch: &[(usize, Range)],
        asked: &[Range],
        rebuilds: &mut [Rebuild],
        progress: &mut Progress,
    ) -> Result<(), String> {
        let mut stream = self
            .client
            .ranges(
                endpoint,
                workspace,
                asked,
                self.config.compress.for_source(&endpoint.url),
            )
            .await
            .map_err(|e| e.to_string())?;
        let mut decoder = FrameDecoder::default();
        let mut next = 0;
        while let Some(piece) = stream.next().await {
            let piece = piece.map_err(|e| e.to_string())?;
            progress.bytes_fetched += piece.len() as u64;
            decoder.push(&piece);
            while let Some(frame) = decoder.next_frame().map_err(|e| e.to_string())? {
                let Some((index, range)) = batch.get(next) else {
                    return Err("more frames than ranges asked for".into());
                };
                next += 1;
                if frame.hash != range.hash {
                    return Err(format!("frame {next} is for another chunk"));
                }
                let rebuild = &mut rebuilds[*index];
                if frame.kind == FrameKind::Missing {
                    rebuild.failed = true;
                    continue;
                }
                let data = frame.into_data().map_err(|e| e.to_string())?;
                let (start, len) = (range.offset as usize, range.len as usize);
                if data.len() != len || start + len > rebuild.data.len() || len > CHUNK_MAX as usize
                {
                    rebuild.failed = true;
                    continue;
                }
                rebuild.data[start..start + len].copy_from_slice(&data);
                rebuild.fetched += len as u64;
            }
        }
        decoder.finish().map_err(|e| e.to_string())?;
        if next < batch.len() {
            return Err(format!("{} of {} ranges came", next, batch.len()));
        }
        Ok(())
    }
}
