//! `GET|PUT /workspaces/{ws}/access`: a workspace's owner and members, and the peers that
//! may push into it.

use actix_web::http::StatusCode;
use actix_web::{web, HttpResponse};

use crate::access::{Action, PeerWriter, WorkspaceAccess, MAX_MEMBERS};
use crate::api::{AccessDto, AccessUpdate};

use super::permissions::{access_of, check, role};
use super::{ApiError, AppState, Login};

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::resource("/workspaces/{ws}/access")
            .route(web::get().to(show))
            .route(web::put().to(update)),
    );
}

async fn show(
    state: web::Data<AppState>,
    login: Login,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let entry = state.store.get(&path)?;
    let access = access_of(&state, &entry).await?;
    Ok(HttpResponse::Ok().json(dto(&state, &login, &access)?))
}

fn dto(state: &AppState, login: &Login, access: &WorkspaceAccess) -> Result<AccessDto, ApiError> {
    let role = role(state, &login.0)?;
    let may = |action| crate::access::permits(role, login.name(), access, action);
    Ok(AccessDto {
        owner: access.owner.clone(),
        members: access.members.clone(),
        writers: access.writers.iter().map(|w| w.name.clone()).collect(),
        you: login.name().to_string(),
        role: role.as_str().to_string(),
        may_use: may(Action::Use),
        may_change: may(Action::Change),
        may_grant: may(Action::Grant),
    })
}

async fn update(
    state: web::Data<AppState>,
    login: Login,
    path: web::Path<String>,
    body: web::Json<AccessUpdate>,
) -> Result<HttpResponse, ApiError> {
    let body = body.into_inner();
    let entry = state.store.get(&path)?;
    let mut access = access_of(&state, &entry).await?;
    let invalid = |field: &str, message: String| ApiError {
        status: StatusCode::UNPROCESSABLE_ENTITY,
        code: "invalid-field",
        message,
        details: Some(serde_json::json!({"field": field})),
    };
    if let Some(owner) = body.owner.filter(|o| *o != access.owner) {
        check(&state, &login.0, &entry, Action::Transfer).await?;
        if !state.auth.is_user(&owner) {
            return Err(invalid(
                "owner",
                format!("owner: `{owner}` is not a user of this node (`aienv user ls`)"),
            ));
        }
        access.owner = owner;
    }
    if let Some(members) = body.members {
        if members.len() > MAX_MEMBERS {
            return Err(invalid(
                "members",
                format!("members: at most {MAX_MEMBERS} users"),
            ));
        }
        let mut list: Vec<String> = Vec::with_capacity(members.len());
        for name in members {
            if !list.contains(&name) && name != access.owner {
                list.push(name);
            }
        }
        if list != access.members {
            // Permission first: who may not change the list learns nothing about user names.
            check(&state, &login.0, &entry, Action::Grant).await?;
            if let Some(unknown) = list.iter().find(|name| !state.auth.is_user(name)) {
                return Err(invalid(
                    "members",
                    format!("members: `{unknown}` is not a user of this node (`aienv user ls`)"),
                ));
            }
            access.members = list;
        }
    }
    if let Some(writers) = body.writers {
        if writers.len() > MAX_MEMBERS {
            return Err(invalid(
                "writers",
                format!("writers: at most {MAX_MEMBERS} peers"),
            ));
        }
        let current: Vec<&str> = access.writers.iter().map(|w| w.name.as_str()).collect();
        if writers.iter().map(String::as_str).collect::<Vec<_>>() != current {
            // Permission first: who may not change the list learns nothing about peers.
            check(&state, &login.0, &entry, Action::Grant).await?;
        }
        let trusted = state.peers.view().trusted.clone();
        let mut list: Vec<PeerWriter> = Vec::with_capacity(writers.len());
        for wanted in &writers {
            let peer = trusted
                .iter()
                .find(|t| {
                    t.name == *wanted || t.id.to_string() == *wanted || t.key.to_readable() == *wanted
                })
                .ok_or_else(|| {
                    invalid(
                        "writers",
                        format!(
                            "writers: `{wanted}` is not a trusted peer of this node (`aienv peers`; trust it first)"
                        ),
                    )
                })?;
            if !list.iter().any(|w| w.id == peer.id) {
                list.push(PeerWriter {
                    id: peer.id,
                    name: peer.name.clone(),
                });
            }
        }
        access.writers = list;
    }
    let owner = access.owner.clone();
    access.members.retain(|m| *m != owner);
    state
        .workspace_access
        .put(entry.manifest.id, &access)
        .map_err(|e| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "access-records-unavailable",
                e.to_string(),
            )
        })?;
    tracing::info!(user = login.name(), workspace = %entry.manifest.name, owner = %access.owner, members = ?access.members, writers = ?access.writers, "workspace access changed");
    Ok(HttpResponse::Ok().json(dto(&state, &login, &access)?))
}
