//! Transfers, both sides.
//!
//! Serving: `GET /api/v1/workspaces/{ws}/snapshot` (the transfer manifest, MessagePack +
//! zstd), `POST /api/v1/workspaces/{ws}/chunks` (a body of concatenated chunk hashes,
//! answered by a stream of chunk frames), and for changed chunks `…/chunks/parts` (their
//! parts) and `…/chunks/ranges` (pieces of them); see `schemas/transfer.md`. All honour the
//! workspace's sharing like the catalog does, and uploads are limited per node and per peer:
//! over the limit the answer is 503 / 429 with `Retry-After`, never a hang.
//!
//! Jobs: `POST /api/v1/transfers` (clone or sync), `GET /api/v1/transfers`,
//! `GET /api/v1/transfers/{id}`, `DELETE /api/v1/transfers/{id}` (cancel; removes a finished
//! job), `POST /api/v1/transfers/{id}/retry`.

use std::collections::HashMap;
use std::io::Read;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use bytes::Bytes;

use aienv_actors::chunk_frame::{self, Frame};
use aienv_actors::chunk_parts;
use aienv_actors::fsio::ReadAt;
use aienv_actors::snapshot_delta::SnapshotDelta;
use aienv_actors::snapshot_reader::SnapshotReader;
use aienv_actors::transfer_queue::{TransferError, TransferKind, TransferRequest};
use aienv_actors::workspace_store::{EncodedSnapshot, StoreError, WorkspaceEntry};

use crate::api::{TransferDto, TransferRequestDto};

use super::peers::{caller_key, peer_viewers};
use super::{ApiError, AppState, Caller, Login};

/// Media type of the snapshot body.
pub const SNAPSHOT_TYPE: &str = "application/vnd.aienv.snapshot+msgpack+zstd";
/// Media type of a snapshot sent as a delta from one the asker holds.
pub const SNAPSHOT_DELTA_TYPE: &str = "application/vnd.aienv.snapshot-delta+msgpack+zstd";
/// Media type of the chunk frame stream.
pub const CHUNKS_TYPE: &str = "application/vnd.aienv.chunks";
/// Media type of a part-list answer.
pub const PARTS_TYPE: &str = "application/vnd.aienv.parts";

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/workspaces/{ws}/snapshot", web::get().to(snapshot))
        .route("/workspaces/{ws}/chunks", web::post().to(chunks))
        .route("/workspaces/{ws}/chunks/parts", web::post().to(parts))
        .route("/workspaces/{ws}/chunks/ranges", web::post().to(ranges))
        .service(
            web::resource("/transfers")
                .route(web::get().to(list))
                .route(web::post().to(create)),
        )
        .service(
            web::resource("/transfers/{id}")
                .route(web::get().to(show))
                .route(web::delete().to(cancel)),
        )
        .route("/transfers/{id}/retry", web::post().to(retry));
}

/// Concurrent uploads (chunk batches being served), per node and per asking peer.
pub struct Uploads {
    max_total: usize,
    max_per_peer: usize,
    active: Mutex<(usize, HashMap<String, usize>)>,
    /// Test hook (`serve --test-corrupt-chunks N`): flip a byte in the next N chunks served.
    pub corrupt_next: AtomicU32,
    /// Test hook (`serve --test-chunk-delay-ms N`): pause before each chunk served, so
    /// tests can interrupt a transfer mid-way.
    pub delay_per_chunk: std::time::Duration,
}

impl Uploads {
    /// Limits as configured.
    pub fn new(max_total: usize, max_per_peer: usize, hooks: TestHooks) -> Uploads {
        Uploads {
            max_total: max_total.max(1),
            max_per_peer: max_per_peer.max(1),
            active: Mutex::new((0, HashMap::new())),
            corrupt_next: AtomicU32::new(hooks.corrupt_chunks),
            delay_per_chunk: std::time::Duration::from_millis(hooks.chunk_delay_ms),
        }
    }

    fn acquire(self: &Arc<Self>, peer: &str) -> Result<UploadSlot, ApiError> {
        let mut active = self.active.lock().unwrap_or_else(|e| e.into_inner());
        if active.0 >= self.max_total {
            return Err(busy(
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "this node is serving {} uploads, its limit; retry shortly",
                    active.0
                ),
            ));
        }
        let mine = active.1.entry(peer.to_string()).or_default();
        if *mine >= self.max_per_peer {
            return Err(busy(
                StatusCode::TOO_MANY_REQUESTS,
                format!(
                    "you already have {mine} uploads running, the per-peer limit; retry shortly"
                ),
            ));
        }
        *mine += 1;
        active.0 += 1;
        Ok(UploadSlot {
            uploads: self.clone(),
            peer: peer.to_string(),
        })
    }
}

/// Fault injection for tests; all off by default.
#[derive(Debug, Clone, Copy, Default)]
pub struct TestHooks {
    /// Corrupt this many served chunks.
    pub corrupt_chunks: u32,
    /// Pause this long before each served chunk.
    pub chunk_delay_ms: u64,
}

fn busy(status: StatusCode, message: String) -> ApiError {
    ApiError {
        status,
        code: "busy",
        message,
        details: Some(serde_json::json!({"retry_after": 1})),
    }
}

/// A held upload slot, released on drop (when the response stream ends).
struct UploadSlot {
    uploads: Arc<Uploads>,
    peer: String,
}

impl Drop for UploadSlot {
    fn drop(&mut self) {
        let mut active = self
            .uploads
            .active
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        active.0 = active.0.saturating_sub(1);
        if let Some(mine) = active.1.get_mut(&self.peer) {
            *mine = mine.saturating_sub(1);
            if *mine == 0 {
                active.1.remove(&self.peer);
            }
        }
    }
}

/// The workspace if the asker may fetch it: a logged-in user may fetch any; another node
/// what is shared with the LAN or with it by id or name.
fn fetchable(
    state: &AppState,
    caller: &Caller,
    request: &HttpRequest,
    target: &str,
) -> Result<Arc<WorkspaceEntry>, ApiError> {
    let entry = state.store.get(target)?;
    if caller.is_logged_in() {
        return Ok(entry);
    }
    // The origin a clone is pushing to reads the clone for the push's duration.
    if caller_key(request).is_some_and(|key| state.pushing.allows(key, entry.manifest.id)) {
        return Ok(entry);
    }
    // A peer this node placed the workspace on fetches it; the peer that placed a workspace
    // here fetches its results back from the clone; a peer running a CI run of it for this
    // node fetches it while the run lasts.
    let id = entry.manifest.id;
    let lent_to_caller = super::peers::trusted_caller(state, request).is_some_and(|peer| {
        state.placements.view().placed_on(id, peer.id)
            || entry
                .origin
                .as_ref()
                .is_some_and(|o| o.peer_id == peer.id && o.workspace_id == id)
            || state.ci.view().running_on(id, peer.id)
    });
    if lent_to_caller
        || peer_viewers(state, request)
            .iter()
            .any(|v| v.may_see(&entry.manifest))
    {
        Ok(entry)
    } else {
        // Never reveal that an unshared workspace exists.
        Err(StoreError::NotFound(target.to_string()).into())
    }
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct SnapshotQuery {
    /// The root of a snapshot the asker holds: answer with a delta from it when it is kept.
    since: Option<String>,
}

async fn snapshot(
    state: web::Data<AppState>,
    caller: Caller,
    request: HttpRequest,
    path: web::Path<String>,
    query: web::Query<SnapshotQuery>,
) -> Result<HttpResponse, ApiError> {
    let entry = fetchable(&state, &caller, &request, &path)?;
    let since = match query.since.as_deref() {
        None => None,
        Some(text) => Some(aienv_actors::snapshot::Hash::from_hex(text).ok_or_else(|| {
            ApiError::bad_request(
                "invalid-query",
                format!("since=`{text}` is not a root hash (64 hex digits)"),
            )
        })?),
    };
    let started = std::time::Instant::now();
    // Taken, not loaded: a snapshot the memo answers for is only read from disk when its
    // entries are needed (for a delta), never for "not modified".
    let taken = state
        .store
        .take_snapshot(&entry.manifest.id.to_string())
        .await?;
    tracing::debug!(
        workspace = %entry.manifest.name,
        files_cached = taken.stats.files_cached,
        files_hashed = taken.stats.files_hashed,
        bytes_hashed = taken.stats.bytes_hashed,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "snapshot taken"
    );
    let etag = format!("\"{}\"", taken.root);
    let unchanged = request
        .headers()
        .get(actix_web::http::header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|tag| tag.trim() == etag));
    if unchanged {
        return Ok(HttpResponse::NotModified()
            .insert_header((actix_web::http::header::ETAG, etag))
            .finish());
    }
    let history = state.snapshot_history.clone();
    let workspace = entry.manifest.id;
    let answer = web::block(move || -> Result<Answer, StoreError> {
        let started = std::time::Instant::now();
        // Its own root: the taken one, unless the workspace changed while a damaged memo
        // file was replaced.
        let full = taken.encoded()?;
        let checked_ms = started.elapsed().as_millis() as u64;
        if let Err(error) = history.record(workspace, &full.root, ReadAt::new(&full.file)) {
            tracing::warn!(%error, "could not keep the served snapshot (later syncs get it whole)");
        }
        // A delta from the snapshot the asker holds, when it is kept and smaller: both read
        // entry by entry, only the changes held (up to MAX_DELTA_CHANGES). A kept file that
        // cannot be read through costs the asker the whole snapshot, nothing more.
        let delta = since
            .and_then(|base| history.open(workspace, &base))
            .and_then(|mut base| {
                let made = SnapshotReader::new(ReadAt::new(&full.file)).and_then(|mut current| {
                    SnapshotDelta::between_readers(&mut base, &mut current, MAX_DELTA_CHANGES)
                });
                made.unwrap_or_else(|error| {
                    tracing::warn!(workspace = %workspace, %error, "a kept snapshot could not be read for a delta; sending the whole one");
                    None
                })
            })
            .map(|delta| delta.encode())
            .filter(|delta| (delta.len() as u64) < full.len);
        tracing::debug!(
            full = full.len,
            delta = delta.as_ref().map(Vec::len),
            checked_ms,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "snapshot ready"
        );
        Ok(match delta {
            Some(delta) => Answer::Delta(delta, full.root),
            None => Answer::Whole(full),
        })
    })
    .await
    .map_err(|_| ApiError::from(StoreError::Unavailable))??;
    let mut response = HttpResponse::Ok();
    let root = match &answer {
        Answer::Delta(_, root) => *root,
        Answer::Whole(full) => full.root,
    };
    response
        .insert_header(("X-Aienv-Root", root.to_hex()))
        .insert_header((actix_web::http::header::ETAG, format!("\"{root}\"")));
    Ok(match answer {
        Answer::Delta(delta, _) => response.content_type(SNAPSHOT_DELTA_TYPE).body(delta),
        Answer::Whole(full) => {
            response.content_type(SNAPSHOT_TYPE).no_chunking(full.len);
            response.streaming(file_stream(full.file, full.len))
        }
    })
}

/// Changes past which a delta is not made (the whole snapshot is sent): what making one holds
/// stays bounded (about 13 MB of entries), whatever the workspace's size.
const MAX_DELTA_CHANGES: usize = 65_536;

/// What the snapshot route sends: a delta, or the whole snapshot from its file.
enum Answer {
    Delta(Vec<u8>, aienv_actors::snapshot::Hash),
    Whole(EncodedSnapshot),
}

/// The first `len` bytes of `file`, read in blocks as the client takes them: a snapshot of
/// any size is sent without being held.
fn file_stream(
    file: std::fs::File,
    len: u64,
) -> impl futures_util::Stream<Item = Result<Bytes, std::io::Error>> {
    const BLOCK: usize = 256 * 1024;
    let (sender, receiver) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(4);
    tokio::task::spawn_blocking(move || {
        let mut reader = ReadAt::new(&file).take(len);
        loop {
            let mut block = Vec::with_capacity(BLOCK);
            let item = match (&mut reader).take(BLOCK as u64).read_to_end(&mut block) {
                Ok(0) => return,
                Ok(_) => Ok(Bytes::from(block)),
                Err(error) => Err(error),
            };
            let failed = item.is_err();
            if sender.blocking_send(item).is_err() || failed {
                return; // The client went away, or the read failed (the response aborts).
            }
        }
    });
    futures_util::stream::unfold(receiver, |mut receiver| async move {
        receiver.recv().await.map(|item| (item, receiver))
    })
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ChunksQuery {
    /// `zstd` (default) or `none`.
    compress: Option<String>,
}

/// The compression a `compress` query asks for.
fn compression(query: &ChunksQuery) -> Result<Option<i32>, ApiError> {
    match query.compress.as_deref() {
        None | Some("zstd") => Ok(Some(1)),
        Some("none") => Ok(None),
        Some(other) => Err(ApiError::bad_request(
            "invalid-query",
            format!("compress=`{other}` is not one of: zstd, none"),
        )),
    }
}

/// An upload slot for the caller: per-peer limits count by key where the caller proved one,
/// else by address.
fn upload_slot(state: &AppState, request: &HttpRequest) -> Result<UploadSlot, ApiError> {
    let asker = caller_key(request)
        .map(|key| key.to_hex())
        .or_else(|| request.peer_addr().map(|a| a.ip().to_string()))
        .unwrap_or_default();
    state.uploads.acquire(&asker)
}

/// What serving chunks of a workspace needs, the upload slot held.
struct Serving {
    slot: UploadSlot,
    chunks: ServedChunks,
    uploads: Arc<Uploads>,
}

impl Serving {
    fn new(
        state: &AppState,
        request: &HttpRequest,
        entry: &WorkspaceEntry,
    ) -> Result<Serving, ApiError> {
        Ok(Serving {
            slot: upload_slot(state, request)?,
            chunks: ServedChunks {
                chunk_store: state.store.chunk_store(),
                workspace: entry.manifest.id,
                reader: None,
            },
            uploads: state.uploads.clone(),
        })
    }
}

/// The chunks of one workspace as one request serves them: read through one
/// [`ChunkReader`](aienv_actors::workspace_store::ChunkReader), made on first use (off the
/// async workers), so the workspace's root is opened once per request, not per chunk. The
/// empty chunk (an empty file's content) needs no file: every node has it.
struct ServedChunks {
    chunk_store: aienv_actors::workspace_store::ChunkStore,
    workspace: uuid::Uuid,
    /// `Some(None)`: the workspace is gone.
    reader: Option<Option<aienv_actors::workspace_store::ChunkReader>>,
}

impl ServedChunks {
    /// The chunk `hash` appended to `out`; `false`, with `out` as it was, when it is not
    /// held.
    fn read_into(&mut self, hash: &aienv_actors::snapshot::Hash, out: &mut Vec<u8>) -> bool {
        if *hash == aienv_actors::snapshot::Hash::of(b"") {
            return true;
        }
        let (chunk_store, workspace) = (&self.chunk_store, self.workspace);
        self.reader
            .get_or_insert_with(|| chunk_store.reader(workspace))
            .as_mut()
            .is_some_and(|reader| reader.read_into(hash, out))
    }

    fn read(&mut self, hash: &aienv_actors::snapshot::Hash) -> Option<Vec<u8>> {
        let mut data = Vec::new();
        self.read_into(hash, &mut data).then_some(data)
    }
}

/// Test hook: flips the first byte of the next bytes sent (a chunk or a range of one) while
/// the count lasts.
fn maybe_corrupt(uploads: &Uploads, hash: &aienv_actors::snapshot::Hash, data: &mut [u8]) {
    if data.is_empty() {
        return;
    }
    let corrupt = uploads
        .corrupt_next
        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
        .is_ok();
    if corrupt {
        tracing::warn!(chunk = %hash, "test hook: corrupting a chunk in transit");
        data[0] ^= 0xff;
    }
}

/// Streams the frames `write` makes for each of `items`, produced off the async workers and
/// sent as they are ready; a full channel (slow reader) pauses the producer. The upload
/// slot is held until the stream ends.
fn frame_stream<I: Send + 'static>(
    items: Vec<I>,
    slot: UploadSlot,
    uploads: Arc<Uploads>,
    mut write: impl FnMut(&mut Vec<u8>, I) + Send + 'static,
) -> HttpResponse {
    // Sent once it holds this much; sized so that one more frame of the largest chunk always
    // fits, and a chunk read into it never makes it move (and copy) what it holds.
    const SEND_AT: usize = 512 * 1024;
    const CAPACITY: usize =
        SEND_AT + aienv_actors::snapshot::CHUNK_MAX as usize + chunk_frame::HEADER_LEN;
    let (sender, receiver) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(8);
    tokio::task::spawn_blocking(move || {
        let _slot = slot;
        let mut out = Vec::with_capacity(CAPACITY);
        let delay = uploads.delay_per_chunk;
        for item in items {
            if !delay.is_zero() {
                std::thread::sleep(delay);
            }
            write(&mut out, item);
            if out.len() >= SEND_AT || !delay.is_zero() {
                let full = std::mem::replace(&mut out, Vec::with_capacity(CAPACITY));
                if sender.blocking_send(Ok(Bytes::from(full))).is_err() {
                    return; // The client went away.
                }
            }
        }
        if !out.is_empty() {
            let _ = sender.blocking_send(Ok(Bytes::from(out)));
        }
    });
    let stream = futures_util::stream::unfold(receiver, |mut receiver| async move {
        receiver.recv().await.map(|item| (item, receiver))
    });
    HttpResponse::Ok()
        .content_type(CHUNKS_TYPE)
        .streaming(stream)
}

async fn chunks(
    state: web::Data<AppState>,
    caller: Caller,
    request: HttpRequest,
    path: web::Path<String>,
    query: web::Query<ChunksQuery>,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let entry = fetchable(&state, &caller, &request, &path)?;
    let level = compression(&query)?;
    let hashes = chunk_frame::parse_request(&body)
        .map_err(|message| ApiError::bad_request("invalid-chunk-request", message))?;
    let Serving {
        slot,
        mut chunks,
        uploads,
    } = Serving::new(&state, &request, &entry)?;
    Ok(frame_stream(
        hashes,
        slot,
        uploads.clone(),
        // Each chunk is read straight into its place behind the frame's header.
        move |out, hash| {
            Frame::encode_with(out, hash, level, |out| {
                let at = out.len();
                let served = chunks.read_into(&hash, out);
                maybe_corrupt(&uploads, &hash, &mut out[at..]);
                served
            })
        },
    ))
}

/// `POST /workspaces/{ws}/chunks/parts`: each asked chunk's parts (sizes and hashes), so a
/// receiver holding its previous version asks only for the ranges it lacks.
async fn parts(
    state: web::Data<AppState>,
    caller: Caller,
    request: HttpRequest,
    path: web::Path<String>,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let entry = fetchable(&state, &caller, &request, &path)?;
    let hashes = chunk_parts::parse_list_request(&body)
        .map_err(|message| ApiError::bad_request("invalid-parts-request", message))?;
    let Serving {
        slot, mut chunks, ..
    } = Serving::new(&state, &request, &entry)?;
    let answer = web::block(move || {
        let _slot = slot;
        let mut out = Vec::new();
        for hash in hashes {
            let parts = chunks.read(&hash).map(|data| chunk_parts::cut(&data));
            chunk_parts::encode_list(&mut out, hash, parts.as_deref());
        }
        out
    })
    .await
    .map_err(|_| ApiError::from(StoreError::Unavailable))?;
    Ok(HttpResponse::Ok().content_type(PARTS_TYPE).body(answer))
}

/// `POST /workspaces/{ws}/chunks/ranges`: pieces of chunks, one chunk frame each (the
/// frame's hash is the chunk's, its length the piece's).
async fn ranges(
    state: web::Data<AppState>,
    caller: Caller,
    request: HttpRequest,
    path: web::Path<String>,
    query: web::Query<ChunksQuery>,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let entry = fetchable(&state, &caller, &request, &path)?;
    let level = compression(&query)?;
    let ranges = chunk_parts::parse_ranges(&body)
        .map_err(|message| ApiError::bad_request("invalid-range-request", message))?;
    let Serving {
        slot,
        mut chunks,
        uploads,
    } = Serving::new(&state, &request, &entry)?;
    // Ranges of one chunk come together: it is read once for all of them.
    let mut last: Option<(aienv_actors::snapshot::Hash, Option<Vec<u8>>)> = None;
    Ok(frame_stream(
        ranges,
        slot,
        uploads.clone(),
        move |out, range: chunk_parts::Range| {
            if last.as_ref().is_none_or(|(hash, _)| *hash != range.hash) {
                let data = chunks.read(&range.hash);
                last = Some((range.hash, data));
            }
            let data = last.as_ref().and_then(|(_, data)| data.as_deref());
            let (start, end) = (
                range.offset as usize,
                range.offset as usize + range.len as usize,
            );
            match data.and_then(|data| data.get(start..end)) {
                Some(piece) => {
                    let mut piece = piece.to_vec();
                    maybe_corrupt(&uploads, &range.hash, &mut piece);
                    Frame::encode(out, range.hash, &piece, level)
                }
                // Not held, or a piece past the chunk's end.
                None => Frame::encode_missing(out, range.hash),
            }
        },
    ))
}

async fn list(state: web::Data<AppState>, _caller: Login) -> HttpResponse {
    let view = state.transfers.view();
    HttpResponse::Ok().json(
        view.jobs
            .iter()
            .map(|j| TransferDto::from(&**j))
            .collect::<Vec<_>>(),
    )
}

async fn create(
    state: web::Data<AppState>,
    login: Login,
    body: web::Json<TransferRequestDto>,
) -> Result<HttpResponse, ApiError> {
    let body = body.into_inner();
    let kind = match body.kind.as_str() {
        "clone" => TransferKind::Clone,
        "sync" => TransferKind::Sync,
        other => {
            return Err(ApiError {
                status: StatusCode::UNPROCESSABLE_ENTITY,
                code: "invalid-field",
                message: format!("kind `{other}` is not one of: clone, sync"),
                details: Some(serde_json::json!({"field": "kind"})),
            })
        }
    };
    if kind == TransferKind::Clone && body.peer.as_deref().unwrap_or_default().is_empty() {
        return Err(ApiError {
            status: StatusCode::UNPROCESSABLE_ENTITY,
            code: "invalid-field",
            message: "a clone needs `peer`: the name or id of the node to clone from".into(),
            details: Some(serde_json::json!({"field": "peer"})),
        });
    }
    // Any signed-in person may clone (the clone is theirs); a sync changes a workspace here.
    match kind {
        TransferKind::Clone => {
            super::permissions::role(&state, &login.0)?;
        }
        TransferKind::Sync | TransferKind::Push => {
            super::permissions::authorize(
                &state,
                &login.0,
                &body.workspace,
                crate::access::Action::Keep,
            )
            .await?;
        }
    }
    if let Some(name) = &body.rename_to {
        if !aienv_actors::model::is_slug(name) {
            return Err(ApiError {
                status: StatusCode::UNPROCESSABLE_ENTITY,
                code: "invalid-field",
                message: format!("`as`: `{name}` is not a valid workspace name (lower-case letters, digits and dashes)"),
                details: Some(serde_json::json!({"field": "as"})),
            });
        }
    }
    if kind == TransferKind::Sync {
        if let Some(job) = super::cluster::sync_results(&state, &login, &body).await? {
            return Ok(HttpResponse::Accepted().json(TransferDto::from(&*job)));
        }
    }
    let job = state
        .transfers
        .enqueue(
            kind,
            TransferRequest {
                peer: body.peer.unwrap_or_default(),
                workspace: body.workspace,
                rename_to: body.rename_to,
                private: body.private,
                by: login.name().to_string(),
                placed: false,
                force: body.force,
            },
        )
        .await?;
    Ok(HttpResponse::Accepted().json(TransferDto::from(&*job)))
}

async fn show(
    state: web::Data<AppState>,
    _caller: Login,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let job = state
        .transfers
        .view()
        .find(&path)
        .ok_or_else(|| TransferError::JobNotFound(path.to_string()))?;
    Ok(HttpResponse::Ok().json(TransferDto::from(&*job)))
}

/// Refuses to touch a job someone else started, unless an admin asks.
fn own_job(state: &AppState, login: &Login, id: &str) -> Result<(), ApiError> {
    let Some(job) = state.transfers.view().find(id) else {
        return Ok(()); // the queue answers "not found" itself
    };
    if job.request.by == login.name()
        || super::permissions::role(state, &login.0)? == crate::auth::Role::Admin
    {
        return Ok(());
    }
    Err(ApiError::new(
        StatusCode::FORBIDDEN,
        "forbidden",
        format!(
            "transfer {id} was started by `{}`; only they or an admin may cancel or retry it",
            job.request.by
        ),
    ))
}

async fn cancel(
    state: web::Data<AppState>,
    login: Login,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    own_job(&state, &login, &path)?;
    Ok(match state.transfers.cancel(&path).await? {
        Some(job) => HttpResponse::Ok().json(TransferDto::from(&*job)),
        None => HttpResponse::NoContent().finish(),
    })
}

async fn retry(
    state: web::Data<AppState>,
    login: Login,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    own_job(&state, &login, &path)?;
    let job = state.transfers.retry(&path).await?;
    Ok(HttpResponse::Accepted().json(TransferDto::from(&*job)))
}
