//! `/api/v1/workspaces`: CRUD, listing with filter and search, YAML editing, environments,
//! sharing, history, export (streamed download) and import (streamed upload).

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

use actix_web::http::header::{self, ContentDisposition, DispositionParam, DispositionType};
use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use bytes::Bytes;
use futures_util::StreamExt;
use serde::Deserialize;

use aienv_actors::model::{Sharing, SharingMode, WorkspaceKind};
use aienv_actors::workspace_store::{
    CreateRequest, ListFilter, StoreError, WorkspaceEntry, WorkspacePatch,
};

use crate::api::{
    CreateWorkspace, CreatedDto, GitStateDto, ImportSummaryDto, ListQuery, RevisionDetail,
    RevisionDto, ShareRequest, UpdateWorkspace, WorkspaceDetail, WorkspaceDto, WorkspacePage,
};

use crate::access::Action;

use super::permissions::{authorize, require_admin, require_create};
use super::{ApiError, AppState, Caller, Login};

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::resource("/workspaces")
            .route(web::get().to(list))
            .route(web::post().to(create)),
    )
    .route("/workspaces/import", web::post().to(import))
    .service(
        web::resource("/workspaces/{ws}")
            .route(web::get().to(show))
            .route(web::patch().to(update))
            .route(web::delete().to(delete)),
    )
    .service(
        web::resource("/workspaces/{ws}/manifest")
            .route(web::get().to(get_manifest))
            .route(web::put().to(put_manifest)),
    )
    .service(
        web::resource("/workspaces/{ws}/environments/{env}")
            .route(web::get().to(get_environment))
            .route(web::put().to(put_environment))
            .route(web::delete().to(delete_environment)),
    )
    .route("/workspaces/{ws}/share", web::post().to(share))
    .route("/workspaces/{ws}/unshare", web::post().to(unshare))
    .route("/workspaces/{ws}/revisions", web::get().to(revisions))
    .route("/workspaces/{ws}/revisions/{rev}", web::get().to(revision))
    .route(
        "/workspaces/{ws}/revisions/{rev}/restore",
        web::post().to(restore),
    )
    .route("/workspaces/{ws}/export", web::get().to(export));
}

fn parse_kind(value: &str) -> Result<WorkspaceKind, ApiError> {
    WorkspaceKind::parse(value).ok_or_else(|| {
        let all: Vec<&str> = WorkspaceKind::ALL.iter().map(|k| k.as_str()).collect();
        ApiError {
            status: StatusCode::UNPROCESSABLE_ENTITY,
            code: "invalid-field",
            message: format!("type `{value}` is not one of: {}", all.join(", ")),
            details: Some(serde_json::json!({"field": "type"})),
        }
    })
}

/// The workspace `target` if the caller may see it; 404 otherwise (never reveal unshared ones).
fn visible(
    state: &AppState,
    caller: &Caller,
    target: &str,
) -> Result<Arc<WorkspaceEntry>, ApiError> {
    let entry = state.store.get(target)?;
    if !caller.viewer().may_see(&entry.manifest) {
        return Err(StoreError::NotFound(target.to_string()).into());
    }
    Ok(entry)
}

async fn list(
    state: web::Data<AppState>,
    caller: Caller,
    request: HttpRequest,
    query: web::Query<ListQuery>,
) -> Result<HttpResponse, ApiError> {
    let view = state.store.view();
    let viewer = caller.viewer();
    let body = state
        .list_cache
        .get_or_build(view.seq, &viewer, request.query_string(), || {
            let query = query.into_inner();
            if query.limit == Some(0) {
                return Err(ApiError::bad_request(
                    "invalid-query",
                    "limit must be at least 1",
                ));
            }
            let filter = ListFilter {
                kind: query.kind.as_deref().map(parse_kind).transpose()?,
                tool: query.tool,
                language: query.lang,
                tag: query.tag,
                text: query.q,
                shared: query.shared,
                viewer: viewer.clone(),
                limit: query.limit,
                after: query.cursor,
            };
            let page = view.list(&filter);
            let show_path = caller.is_logged_in();
            let page = WorkspacePage {
                items: page
                    .items
                    .iter()
                    .map(|e| WorkspaceDto::from_entry(e, show_path))
                    .collect(),
                total: page.total,
                next_cursor: page.next_cursor,
            };
            Ok(Bytes::from(
                serde_json::to_vec(&page).expect("pages serialize"),
            ))
        })?;
    Ok(HttpResponse::Ok()
        .content_type("application/json")
        .body(body))
}

async fn create(
    state: web::Data<AppState>,
    login: Login,
    body: web::Json<CreateWorkspace>,
) -> Result<HttpResponse, ApiError> {
    let body = body.into_inner();
    require_create(&state, &login.0)?;
    if body.from_dir.is_some() {
        // The node reads the directory with its own rights (root, as a service).
        require_admin(
            &state,
            &login.0,
            "make a workspace from a directory on the node (`from_dir`)",
        )?;
    }
    let git = body.git.as_ref().map(|g| aienv_actors::model::GitSource {
        url: g.url.clone(),
        git_ref: g.git_ref.clone(),
    });
    let mut git_local = false;
    if let Some(source) = &git {
        use aienv_actors::git::safety::check_url;
        if check_url(&source.url, false).is_err() && check_url(&source.url, true).is_ok() {
            // A path on the node is read with the node's rights, like `from_dir`.
            require_admin(
                &state,
                &login.0,
                "clone a repository from the node's own disk (a path or file:// URL)",
            )?;
            git_local = true;
        }
    }
    let name = match (&git, body.name.is_empty()) {
        (Some(source), true) => aienv_actors::workspace_store::repo_slug(&source.url),
        _ => body.name.clone(),
    };
    if name.is_empty() && body.from_dir.is_none() {
        return Err(ApiError {
            status: StatusCode::UNPROCESSABLE_ENTITY,
            code: "invalid-field",
            message: "field `name` is required unless `from_dir` holds a workspace.yaml".into(),
            details: Some(serde_json::json!({"field": "name"})),
        });
    }
    let request = CreateRequest {
        name,
        title: body.title,
        description: body.description,
        tags: body.tags,
        kind: body.kind.as_deref().map(parse_kind).transpose()?,
        languages: body.languages,
        tools: body.tools,
        template: body.template,
        from_dir: body.from_dir.map(PathBuf::from),
        git,
        git_local,
        template_values: body.parameters,
        from_peer: None,
    };
    let created = match request.template.as_deref().and_then(|t| t.split_once('/')) {
        Some((peer, template)) => {
            let (peer, template) = (peer.to_string(), template.to_string());
            super::templates::create_from_peer(&state, request, &peer, &template, login.name())
                .await?
        }
        None => state.store.create(request, login.name()).await?,
    };
    record_owner(&state, &created.workspace, login.name());
    Ok(HttpResponse::Created()
        .insert_header((
            header::LOCATION,
            format!("/api/v1/workspaces/{}", created.workspace.manifest.id),
        ))
        .json(CreatedDto {
            workspace: WorkspaceDto::from_entry(&created.workspace, true),
            notes: created.notes,
            import: None,
        }))
}

async fn show(
    state: web::Data<AppState>,
    caller: Caller,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let entry = visible(&state, &caller, &path)?;
    let mut detail = WorkspaceDetail::from_entry(&entry, caller.is_logged_in());
    if caller.is_logged_in() {
        // Remotes and branches are for people signed in here, like the workspace's path.
        let git = state.store.git().clone();
        let (root, projects) = (entry.path.clone(), entry.manifest.projects.clone());
        let states = tokio::task::spawn_blocking(move || git.inspect_projects(&root, &projects))
            .await
            .unwrap_or_default();
        for (name, result) in states {
            if let Some(project) = detail
                .workspace
                .projects
                .iter_mut()
                .find(|p| p.name == name)
            {
                project.git = Some(GitStateDto::from_result(result));
            }
        }
    }
    Ok(HttpResponse::Ok()
        .insert_header((header::ETAG, format!("\"{}\"", entry.manifest.revision)))
        .json(detail))
}

/// The revision an `If-Match: "N"` header asks for.
fn if_match(request: &HttpRequest) -> Result<Option<u64>, ApiError> {
    let Some(value) = request.headers().get(header::IF_MATCH) else {
        return Ok(None);
    };
    value
        .to_str()
        .ok()
        .map(|v| v.trim().trim_start_matches("W/").trim_matches('"'))
        .and_then(|v| v.parse().ok())
        .map(Some)
        .ok_or_else(|| {
            ApiError::bad_request(
                "invalid-header",
                "If-Match must be a revision such as \"3\"",
            )
        })
}

async fn update(
    state: web::Data<AppState>,
    login: Login,
    request: HttpRequest,
    path: web::Path<String>,
    body: web::Json<UpdateWorkspace>,
) -> Result<HttpResponse, ApiError> {
    authorize(&state, &login.0, &path, Action::Change).await?;
    let body = body.into_inner();
    let expected = body.expected_revision.or(if_match(&request)?);
    let patch = WorkspacePatch {
        name: body.name,
        title: body.title,
        description: body.description,
        tags: body.tags,
        kind: body.kind.as_deref().map(parse_kind).transpose()?,
        languages: body.languages,
        tools: body.tools,
        template: body.template,
    };
    let entry = state
        .store
        .update(&path, patch, expected, login.name())
        .await?;
    Ok(HttpResponse::Ok().json(WorkspaceDto::from_entry(&entry, true)))
}

async fn delete(
    state: web::Data<AppState>,
    login: Login,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let entry = authorize(&state, &login.0, &path, Action::Keep).await?;
    // Its environments stop first: nothing keeps running from the trash.
    let id = entry.manifest.id.to_string();
    if state
        .runtimes
        .status(&id)?
        .iter()
        .any(|s| s.state.is_active())
    {
        state
            .runtimes
            .stop(Some(&id), None, std::time::Duration::from_secs(120))
            .await?;
    }
    state.store.delete(&id, login.name()).await?;
    if let Err(error) = state.workspace_access.remove(entry.manifest.id) {
        tracing::warn!(%error, "forgetting the access record of a deleted workspace");
    }
    Ok(HttpResponse::NoContent().finish())
}

/// Records who made a new workspace (its history says so too; this saves reading it).
fn record_owner(state: &AppState, entry: &WorkspaceEntry, owner: &str) {
    let access = crate::access::WorkspaceAccess {
        owner: owner.to_string(),
        members: Vec::new(),
        writers: Vec::new(),
    };
    if let Err(error) = state.workspace_access.put(entry.manifest.id, &access) {
        tracing::warn!(%error, "recording a workspace's owner (read from its history later)");
    }
}

/// Reads a YAML request body, bounded by `http.max_body_bytes`.
async fn yaml_body(state: &AppState, mut payload: web::Payload) -> Result<String, ApiError> {
    let limit = state.limits.max_body_bytes;
    let mut body = Vec::new();
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|e| ApiError::bad_request("upload-failed", e.to_string()))?;
        if body.len() + chunk.len() > limit {
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body-too-large",
                format!("request body exceeds the limit of {limit} bytes"),
            ));
        }
        body.extend_from_slice(&chunk);
    }
    String::from_utf8(body)
        .map_err(|_| ApiError::bad_request("invalid-encoding", "the YAML body must be UTF-8"))
}

fn yaml_response(text: String) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/yaml; charset=utf-8")
        .body(text)
}

async fn get_manifest(
    state: web::Data<AppState>,
    caller: Caller,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let entry = visible(&state, &caller, &path)?;
    Ok(yaml_response(aienv_actors::yaml::to_string(
        &entry.manifest,
    )))
}

async fn put_manifest(
    state: web::Data<AppState>,
    login: Login,
    path: web::Path<String>,
    body: web::Payload,
) -> Result<HttpResponse, ApiError> {
    authorize(&state, &login.0, &path, Action::Change).await?;
    let text = yaml_body(&state, body).await?;
    let entry = state
        .store
        .replace_manifest(&path, text, login.name())
        .await?;
    Ok(HttpResponse::Ok().json(WorkspaceDto::from_entry(&entry, true)))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RevisionQuery {
    expected_revision: Option<u64>,
}

async fn get_environment(
    state: web::Data<AppState>,
    caller: Caller,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    let (workspace, environment) = path.into_inner();
    let entry = visible(&state, &caller, &workspace)?;
    let spec = entry.environments.get(&environment).ok_or_else(|| {
        ApiError::from(StoreError::EnvironmentNotFound {
            workspace: entry.manifest.name.clone(),
            environment: environment.clone(),
        })
    })?;
    Ok(yaml_response(aienv_actors::yaml::to_string(spec)))
}

async fn put_environment(
    state: web::Data<AppState>,
    login: Login,
    request: HttpRequest,
    path: web::Path<(String, String)>,
    query: web::Query<RevisionQuery>,
    body: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let (workspace, environment) = path.into_inner();
    authorize(&state, &login.0, &workspace, Action::Change).await?;
    let text = yaml_body(&state, body).await?;
    let expected = query.expected_revision.or(if_match(&request)?);
    let entry = state
        .store
        .put_environment(&workspace, &environment, text, expected, login.name())
        .await?;
    Ok(HttpResponse::Ok().json(WorkspaceDto::from_entry(&entry, true)))
}

async fn delete_environment(
    state: web::Data<AppState>,
    login: Login,
    request: HttpRequest,
    path: web::Path<(String, String)>,
    query: web::Query<RevisionQuery>,
) -> Result<HttpResponse, ApiError> {
    let (workspace, environment) = path.into_inner();
    authorize(&state, &login.0, &workspace, Action::Change).await?;
    let expected = query.expected_revision.or(if_match(&request)?);
    let entry = state
        .store
        .remove_environment(&workspace, &environment, expected, login.name())
        .await?;
    Ok(HttpResponse::Ok().json(WorkspaceDto::from_entry(&entry, true)))
}

async fn share(
    state: web::Data<AppState>,
    login: Login,
    path: web::Path<String>,
    body: Option<web::Json<ShareRequest>>,
) -> Result<HttpResponse, ApiError> {
    authorize(&state, &login.0, &path, Action::Change).await?;
    let body = body.map(|b| b.into_inner()).unwrap_or_default();
    let mode = match body.mode.as_deref() {
        None | Some("lan") => SharingMode::Lan,
        Some("peers") => SharingMode::Peers,
        Some(other) => {
            return Err(ApiError {
                status: StatusCode::UNPROCESSABLE_ENTITY,
                code: "invalid-field",
                message: format!("mode `{other}` is not one of: lan, peers"),
                details: Some(serde_json::json!({"field": "mode"})),
            })
        }
    };
    let sharing = Sharing {
        enabled: true,
        mode,
        peers: body.peers,
    };
    let entry = state
        .store
        .set_sharing(&path, sharing, login.name())
        .await?;
    let root = entry.path.clone();
    let warnings = web::block(move || aienv_actors::tree::portability_warnings(&root))
        .await
        .unwrap_or_default();
    for warning in &warnings {
        tracing::warn!(workspace = %entry.manifest.name, "{warning}");
    }
    // Index the content now, so the first peer to clone it does not wait for the hashing.
    let store = state.store.clone();
    let id = entry.manifest.id.to_string();
    let name = entry.manifest.name.clone();
    actix_web::rt::spawn(async move {
        // Taken, not loaded: the entries stay in the memo's file for the first peer.
        match store.take_snapshot(&id).await {
            Ok(taken) => tracing::info!(
                workspace = %name,
                files = taken.file_count,
                bytes_hashed = taken.stats.bytes_hashed,
                "shared workspace indexed for transfers"
            ),
            Err(error) => tracing::warn!(%error, "indexing a shared workspace failed"),
        }
    });
    let mut dto = WorkspaceDto::from_entry(&entry, true);
    dto.warnings = warnings;
    Ok(HttpResponse::Ok().json(dto))
}

async fn unshare(
    state: web::Data<AppState>,
    login: Login,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let current = authorize(&state, &login.0, &path, Action::Change).await?;
    let sharing = Sharing {
        enabled: false,
        ..current.manifest.sharing.clone()
    };
    let entry = state
        .store
        .set_sharing(&path, sharing, login.name())
        .await?;
    Ok(HttpResponse::Ok().json(WorkspaceDto::from_entry(&entry, true)))
}

async fn revisions(
    state: web::Data<AppState>,
    caller: Caller,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let entry = visible(&state, &caller, &path)?;
    let history = state
        .store
        .revisions(&entry.manifest.id.to_string())
        .await?;
    Ok(HttpResponse::Ok().json(history.iter().map(RevisionDto::from).collect::<Vec<_>>()))
}

async fn revision(
    state: web::Data<AppState>,
    caller: Caller,
    path: web::Path<(String, u64)>,
) -> Result<HttpResponse, ApiError> {
    let (workspace, number) = path.into_inner();
    let entry = visible(&state, &caller, &workspace)?;
    let record = state
        .store
        .revision(&entry.manifest.id.to_string(), number)
        .await?;
    Ok(HttpResponse::Ok().json(RevisionDetail::from(&record)))
}

async fn restore(
    state: web::Data<AppState>,
    login: Login,
    path: web::Path<(String, u64)>,
) -> Result<HttpResponse, ApiError> {
    let (workspace, number) = path.into_inner();
    authorize(&state, &login.0, &workspace, Action::Change).await?;
    let entry = state
        .store
        .restore(&workspace, number, login.name())
        .await?;
    Ok(HttpResponse::Ok().json(WorkspaceDto::from_entry(&entry, true)))
}

/// A `Write` that hands chunks to the response stream; fails once the client is gone.
struct ChannelWriter {
    sender: tokio::sync::mpsc::Sender<Result<Bytes, std::io::Error>>,
    buffer: Vec<u8>,
}

const EXPORT_CHUNK: usize = 256 * 1024;

impl Write for ChannelWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buffer.extend_from_slice(data);
        if self.buffer.len() >= EXPORT_CHUNK {
            self.flush()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        let chunk = Bytes::from(std::mem::replace(
            &mut self.buffer,
            Vec::with_capacity(EXPORT_CHUNK),
        ));
        self.sender
            .blocking_send(Ok(chunk))
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::BrokenPipe, "client went away"))
    }
}

async fn export(
    state: web::Data<AppState>,
    caller: Caller,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let entry = visible(&state, &caller, &path)?;
    let (sender, receiver) = tokio::sync::mpsc::channel(8);
    let writer = ChannelWriter {
        sender: sender.clone(),
        buffer: Vec::with_capacity(EXPORT_CHUNK),
    };
    let store = state.store.clone();
    let target = entry.manifest.id.to_string();
    let name = entry.manifest.name.clone();
    actix_web::rt::spawn(async move {
        match store.export(&target, writer).await {
            Ok(summary) => {
                tracing::info!(workspace = %name, entries = summary.entries, bytes = summary.bytes, "exported");
            }
            Err(error) => {
                tracing::warn!(workspace = %name, %error, "export failed");
                // Ending the stream with an error aborts the response, so the client sees a
                // failed download rather than a truncated archive.
                let _ = sender
                    .send(Err(std::io::Error::other(error.to_string())))
                    .await;
            }
        }
    });
    let stream = tokio_stream(receiver);
    Ok(HttpResponse::Ok()
        .content_type("application/zstd")
        .insert_header(ContentDisposition {
            disposition: DispositionType::Attachment,
            parameters: vec![DispositionParam::Filename(format!(
                "{}-r{}.tar.zst",
                entry.manifest.name, entry.manifest.revision
            ))],
        })
        .streaming(stream))
}

fn tokio_stream(
    mut receiver: tokio::sync::mpsc::Receiver<Result<Bytes, std::io::Error>>,
) -> impl futures_util::Stream<Item = Result<Bytes, std::io::Error>> {
    futures_util::stream::poll_fn(move |cx| receiver.poll_recv(cx))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ImportQuery {
    #[serde(rename = "as")]
    rename_to: Option<String>,
}

async fn import(
    state: web::Data<AppState>,
    login: Login,
    query: web::Query<ImportQuery>,
    mut payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    require_create(&state, &login.0)?;
    let upload_dir = state.node.data_dir.join("staging");
    let upload = upload_dir.join(format!("upload-{}.tar.zst", uuid::Uuid::new_v4().simple()));
    let limit = state.limits.max_upload_bytes;
    let result = async {
        let mut file = tokio::fs::File::create(&upload)
            .await
            .map_err(|e| ApiError::from(StoreError::io("creating", &upload)(e)))?;
        let mut received = 0u64;
        while let Some(chunk) = payload.next().await {
            let chunk = chunk.map_err(|e| ApiError::bad_request("upload-failed", e.to_string()))?;
            received += chunk.len() as u64;
            if received > limit {
                return Err(ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "body-too-large",
                    format!("the archive exceeds the upload limit of {limit} bytes (http.max_upload_bytes)"),
                ));
            }
            tokio::io::AsyncWriteExt::write_all(&mut file, &chunk)
                .await
                .map_err(|e| ApiError::from(StoreError::io("writing", &upload)(e)))?;
        }
        if received == 0 {
            return Err(ApiError::bad_request("empty-body", "send the .tar.zst archive as the request body"));
        }
        // tokio's File hands writes to a blocking thread: without waiting for the last one,
        // the import could read the upload before its tail is written (seen as "incomplete
        // frame" on a loaded machine).
        tokio::io::AsyncWriteExt::flush(&mut file)
            .await
            .map_err(|e| ApiError::from(StoreError::io("writing", &upload)(e)))?;
        drop(file);
        let created = state
            .store
            .import(upload.clone(), query.into_inner().rename_to, login.name())
            .await?;
        record_owner(&state, &created.workspace, login.name());
        Ok(HttpResponse::Created().json(CreatedDto {
            workspace: WorkspaceDto::from_entry(&created.workspace, true),
            notes: created.notes,
            import: created.import.as_ref().map(ImportSummaryDto::from),
        }))
    }
    .await;
    let _ = tokio::fs::remove_file(&upload).await;
    result
}
