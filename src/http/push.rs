//! Changes back to the origin (`aienv sync WS --push`), both sides.
//!
//! The clone's node: `POST /api/v1/workspaces/{ws}/push` (`{"force": bool}`, `{}` for none) works out what
//! the clone changed since its base (`transfer_queue::push`), lets the origin — by its
//! recorded key — read the clone for the push's duration, sends the changes, and answers
//! with the origin's outcome.
//!
//! The origin: `POST /api/v1/workspaces/{ws}/pushes` (a peer over mutual TLS; the body is
//! the push request of `schemas/transfer.md`). The caller must be a trusted peer and one of
//! the workspace's writers; conflicts are answered at once (409 with the paths), otherwise a
//! push job fetches the changed content from the clone, verifies it, and commits it as a new
//! revision; the answer comes when the job is done.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use uuid::Uuid;

use aienv_actors::identity::KeyFingerprint;
use aienv_actors::snapshot::RootHasher;
use aienv_actors::snapshot_receive::SnapshotEntries;
use aienv_actors::transfer_queue::push::{self, BranchPush, PushRequest, PUSH_FORMAT};
use aienv_actors::transfer_queue::{JobState, TransferError};

use crate::access::Action;
use crate::api::{ErrorBody, PushAsk, PushResultDto};

use super::peers::{caller_key, trusted_caller};
use super::permissions::{access_of, check};
use super::{ApiError, AppState, Login};

/// Media type of a push request.
pub const PUSH_TYPE: &str = "application/vnd.aienv.push+msgpack+zstd";

/// How long the clone's node waits for the origin to take a push in.
const PUSH_WAIT: Duration = Duration::from_secs(6 * 3600);

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/workspaces/{ws}/push", web::post().to(push))
        .service(
            web::resource("/workspaces/{ws}/pushes")
                .app_data(web::PayloadConfig::new(
                    aienv_actors::snapshot::SnapshotLimits::default().max_encoded_bytes as usize,
                ))
                .route(web::post().to(receive)),
        );
}

/// Clones being pushed, by the key of the origin they go to: that origin may read them (the
/// snapshot and chunk routes) while the push runs, even when they are not shared with it.
#[derive(Debug, Clone, Default)]
pub struct PushGrants(Arc<Mutex<HashMap<(KeyFingerprint, Uuid), usize>>>);

impl PushGrants {
    fn grant(&self, key: KeyFingerprint, workspace: Uuid) -> PushGrant {
        *self
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry((key, workspace))
            .or_default() += 1;
        PushGrant {
            grants: self.clone(),
            key,
            workspace,
        }
    }

    /// Whether the peer with `key` may read `workspace` now.
    pub fn allows(&self, key: KeyFingerprint, workspace: Uuid) -> bool {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains_key(&(key, workspace))
    }
}

/// One push's grant, withdrawn when dropped.
struct PushGrant {
    grants: PushGrants,
    key: KeyFingerprint,
    workspace: Uuid,
}

impl Drop for PushGrant {
    fn drop(&mut self) {
        let mut grants = self.grants.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(count) = grants.get_mut(&(self.key, self.workspace)) {
            *count -= 1;
            if *count == 0 {
                grants.remove(&(self.key, self.workspace));
            }
        }
    }
}

/// The clone's side.
async fn push(
    state: web::Data<AppState>,
    login: Login,
    path: web::Path<String>,
    body: web::Json<PushAsk>,
) -> Result<HttpResponse, ApiError> {
    let force = body.force;
    let entry = state.store.get(&path)?;
    check(&state, &login.0, &entry, Action::Keep).await?;
    let name = entry.manifest.name.clone();
    let origin = entry
        .origin
        .clone()
        .ok_or_else(|| TransferError::NotAClone(name.clone()))?;
    let mine = state
        .store
        .take_snapshot(&entry.manifest.id.to_string())
        .await?;
    let (changes, mut notes, branches) = {
        let (git, root, projects) = (
            state.store.git().clone(),
            entry.path.clone(),
            entry.manifest.projects.clone(),
        );
        let (transfers, id, relocated) = (
            state.transfers.clone(),
            entry.manifest.id,
            origin.relocated.clone(),
        );
        let name = name.clone();
        // The base and this clone's snapshot are read side by side, never held.
        web::block(move || -> Result<_, ApiError> {
            let base = transfers.base(id)?.ok_or(TransferError::NoBase(name))?;
            let base = SnapshotEntries::Kept(std::sync::Arc::new(base));
            let mine = mine.entries()?;
            Ok(what_to_push(
                &git, &root, &projects, &base, &mine, &relocated,
            )?)
        })
        .await
        .map_err(|_| ApiError::from(TransferError::Unavailable))??
    };
    if changes.is_empty() && branches.is_empty() {
        notes.insert(0, format!("`{name}` has no changes to push"));
        return Ok(HttpResponse::Ok().json(PushResultDto {
            state: "up-to-date".into(),
            peer: origin.peer_name.clone(),
            workspace: origin.workspace_name.clone(),
            job: None,
            revision: None,
            changes: 0,
            notes,
        }));
    }
    let peer = state
        .peers
        .view()
        .endpoint(origin.peer_id)
        .filter(|p| origin.peer_key.is_none_or(|key| key == p.key))
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::CONFLICT,
                "peer-unavailable",
                format!(
                    "`{}`, the origin of `{name}`, is not online (or no longer presents the key it was cloned from)",
                    origin.peer_name
                ),
            )
        })?;
    let request = PushRequest {
        format: PUSH_FORMAT,
        source_workspace_id: entry.manifest.id,
        source_name: name.clone(),
        source_root: entry.path.display().to_string(),
        base_root: origin.root,
        force,
        changes,
        branches,
    };
    let count = request.changes.len();
    let body = web::block(move || request.encode())
        .await
        .map_err(|_| ApiError::from(TransferError::Unavailable))?;
    tracing::info!(user = login.name(), workspace = %name, origin = %origin.peer_name, changes = count, force, "pushing to the origin");
    let _grant = state.pushing.grant(peer.key, entry.manifest.id);
    let sent = crate::cluster_client::client(&state.identity, &peer)
        .post(format!(
            "{}/api/v1/workspaces/{}/pushes",
            peer.url, origin.workspace_id
        ))
        .timeout(PUSH_WAIT)
        .content_type(PUSH_TYPE)
        .send_body(body)
        .await;
    let unreachable = |message: String| {
        ApiError::new(
            StatusCode::BAD_GATEWAY,
            "peer-unreachable",
            format!("`{}` did not answer: {message}", origin.peer_name),
        )
    };
    let mut response = sent.map_err(|e| unreachable(e.to_string()))?;
    let bytes = response
        .body()
        .limit(4 << 20)
        .await
        .map_err(|e| unreachable(e.to_string()))?;
    let status = response.status();
    if status.is_success() {
        let mut result: PushResultDto = serde_json::from_slice(&bytes)
            .map_err(|e| unreachable(format!("invalid answer: {e}")))?;
        result.notes.append(&mut notes);
        return Ok(HttpResponse::Ok().json(result));
    }
    // The origin's refusal, in its words and with its code, under the same status (a 5xx
    // there is a failure of the peer here: 502).
    let refusal = serde_json::from_slice::<ErrorBody>(&bytes).ok();
    let (code, message, details) = match refusal {
        Some(body) => (body.error.code, body.error.message, body.error.details),
        None => ("peer-refused".to_string(), format!("HTTP {status}"), None),
    };
    Err(ApiError {
        status: if status.is_server_error() {
            StatusCode::BAD_GATEWAY
        } else {
            StatusCode::from_u16(status.as_u16()).unwrap_or(StatusCode::CONFLICT)
        },
        code: push_code(&code),
        message: format!("`{}` refused the push: {message}", origin.peer_name),
        details,
    })
}

/// The origin's error code as one of ours (codes are `&'static str` here).
fn push_code(code: &str) -> &'static str {
    [
        "conflict",
        "not-a-writer",
        "untrusted-peer",
        "invalid-push",
        "workspace-not-found",
        "transfer-conflict",
        "push-failed",
        "busy",
        "pusher-unreachable",
    ]
    .into_iter()
    .find(|known| *known == code)
    .unwrap_or("peer-refused")
}

/// The changes, notes and git branches of a push.
type ToPush = (Vec<push::Change>, Vec<String>, Vec<BranchPush>);

/// The changes, notes and git branches of a push (blocking: git runs, and the snapshots are
/// read side by side).
fn what_to_push(
    git: &aienv_actors::git::Git,
    root: &std::path::Path,
    projects: &[aienv_actors::model::Project],
    base: &SnapshotEntries,
    mine: &SnapshotEntries,
    relocated: &std::collections::BTreeMap<String, aienv_actors::snapshot::Hash>,
) -> Result<ToPush, TransferError> {
    let (set, git_projects) = push::read_changes(base, mine, projects, relocated, true)
        .map_err(|error| TransferError::io("reading the snapshots to compare of", root)(error))?;
    let mut notes = Vec::new();
    let mut branches = Vec::new();
    for project in &git_projects {
        let dir = root.join(project);
        let shown = if project.is_empty() { "." } else { project };
        match git.inspect(&dir) {
            Ok(state) => {
                match (&state.branch, &state.commit) {
                    (Some(branch), Some(commit))
                        if push::is_branch_name(branch) && push::is_commit_id(commit) =>
                    {
                        branches.push(BranchPush {
                            project: project.clone(),
                            branch: branch.clone(),
                            commit: commit.clone(),
                        })
                    }
                    _ => notes.push(format!(
                        "{shown}: not on a branch; its commits were not pushed (check out a branch)"
                    )),
                }
                if state.dirty() {
                    notes.push(format!(
                        "{shown}: {} uncommitted paths were not pushed (git projects go back as commits: commit them, then push again)",
                        state.changed_count
                    ));
                }
            }
            Err(error) => notes.push(format!("{shown}: not pushed: {error}")),
        }
    }
    Ok((set, notes, branches))
}

/// The origin's side.
async fn receive(
    state: web::Data<AppState>,
    request: HttpRequest,
    path: web::Path<String>,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let Some(peer) = trusted_caller(&state, &request) else {
        let why = if caller_key(&request).is_some() {
            "this node does not trust the caller's key; only trusted peers may push"
        } else {
            "only a peer, over mutual TLS, may push"
        };
        return Err(ApiError::new(StatusCode::FORBIDDEN, "untrusted-peer", why));
    };
    let entry = state.store.get(&path)?;
    let access = access_of(&state, &entry).await?;
    if !access.writable_by(peer.id) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "not-a-writer",
            format!(
                "`{}` may not push into `{}`: its owner allows that with `aienv ws access {} --writer {}`",
                peer.name, entry.manifest.name, entry.manifest.name, peer.name
            ),
        ));
    }
    // The push job fetches the changed content from the caller's clone: without an address
    // for it, the job would only wait out its sources' patience while the caller waits too.
    // A peer seen before but silent for a moment (not online just now) keeps its address,
    // and the job waits for it as for any source.
    let reachable = state
        .peers
        .view()
        .peers
        .iter()
        .any(|p| p.id == peer.id && p.key == peer.key && p.base_url().is_some());
    if !reachable {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "pusher-unreachable",
            format!(
                "`{}` cannot fetch the pushed files: it has no address for `{}` (it has not seen it on the network; with discovery off, list `{}` in `discovery.static_peers` on `{}`)",
                state.node.name, peer.name, peer.name, state.node.name
            ),
        ));
    }
    let limits = aienv_actors::snapshot::SnapshotLimits::default();
    let pushed = web::block(move || PushRequest::decode(&body, &limits))
        .await
        .map_err(|_| ApiError::from(TransferError::Unavailable))?
        .map_err(|e| {
            ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid-push",
                format!("push request refused: {e}"),
            )
        })?;
    // Conflicts and "nothing to do" are answered at once; the job checks again. The
    // workspace's snapshot is read in order from the memo's file, never held.
    let id = entry.manifest.id;
    let taken = Arc::new(state.store.take_snapshot(&id.to_string()).await?);
    let current_root = taken.root;
    let (changes, force, projects, dir) = (
        pushed.changes.clone(),
        pushed.force,
        entry.manifest.projects.clone(),
        entry.path.clone(),
    );
    let merged = web::block(move || -> Result<Result<_, push::Conflicts>, ApiError> {
        let current = taken.entries()?;
        let git_projects = push::git_projects(&projects, &current)
            .map_err(TransferError::io("reading the snapshot of", &dir))?;
        push::check_pushed(&changes, &git_projects).map_err(|e| {
            ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid-push",
                format!("push request refused: {e}"),
            )
        })?;
        let mut root = RootHasher::new();
        let merged = push::push_merge(&current, &changes, force, |entry| {
            root.push(entry);
            Ok(())
        })
        .map_err(TransferError::io("reading the snapshot of", &dir))?;
        Ok(merged.map(|()| root.finish()))
    })
    .await
    .map_err(|_| ApiError::from(TransferError::Unavailable))??;
    let same = match merged {
        Ok(root) => root == current_root,
        Err(c) => {
            return Err(TransferError::Conflict {
                paths: c.paths,
                count: c.count,
                hint: push::PUSH_HINT,
            }
            .into())
        }
    };
    if same {
        // No file to take in (the commits' objects came with an earlier push): only the
        // branches, if any, and no new revision.
        let mut notes = vec![format!(
            "`{}` here already has these files",
            entry.manifest.name
        )];
        let (git, root, projects, name, branches) = (
            state.store.git().clone(),
            entry.path.clone(),
            entry.manifest.projects.clone(),
            peer.name.clone(),
            pushed.branches.clone(),
        );
        notes.extend(
            web::block(move || {
                branches
                    .iter()
                    .map(|b| push::receive_branch(&git, &root, &projects, &name, b))
                    .collect::<Vec<_>>()
            })
            .await
            .map_err(|_| ApiError::from(TransferError::Unavailable))?,
        );
        return Ok(HttpResponse::Ok().json(PushResultDto {
            state: "up-to-date".into(),
            peer: state.node.name.clone(),
            workspace: entry.manifest.name.clone(),
            job: None,
            revision: Some(entry.manifest.revision),
            changes: 0,
            notes,
        }));
    }
    let changes = pushed.changes.len();
    let by = format!("{}@{}", pushed.source_name, peer.name);
    let job = state.transfers.push(id, peer, pushed, by).await?;
    tracing::info!(job = %job.id, workspace = %entry.manifest.name, changes, "push accepted");
    let mut view = state.transfers.subscribe();
    let finished = loop {
        if let Some(job) = view.borrow().find(&job.id.to_string()) {
            if job.state.is_finished() {
                break job;
            }
        }
        tokio::select! {
            changed = view.changed() => if changed.is_err() {
                return Err(TransferError::Unavailable.into());
            },
            () = state.shutdown.wait() => return Err(TransferError::Unavailable.into()),
        }
    };
    match finished.state {
        JobState::Done => {
            let revision = state.store.get(&id.to_string())?.manifest.revision;
            Ok(HttpResponse::Ok().json(PushResultDto {
                state: "done".into(),
                peer: state.node.name.clone(),
                workspace: entry.manifest.name.clone(),
                job: Some(finished.id),
                revision: Some(revision),
                changes,
                notes: finished.notes.clone(),
            }))
        }
        _ if !finished.conflicts.is_empty() => Err(ApiError {
            status: StatusCode::CONFLICT,
            code: "conflict",
            message: finished.error.clone().unwrap_or_default(),
            details: Some(serde_json::json!({
                "paths": finished.conflicts,
                "count": finished.conflicts.len(),
                "job": finished.id,
            })),
        }),
        _ => Err(ApiError {
            status: StatusCode::UNPROCESSABLE_ENTITY,
            code: "push-failed",
            message: format!(
                "the push ({}) {}: {}",
                finished.id,
                finished.state.as_str(),
                finished.error.clone().unwrap_or_default()
            ),
            details: Some(serde_json::json!({"job": finished.id})),
        }),
    }
}
