//! The checks every route, the tool proxy and the terminal make before acting: the caller's
//! role now (a changed role or a removed user applies to open sessions at once) and the
//! workspace's owner and members ([`crate::access`]).

use std::sync::Arc;

use actix_web::http::StatusCode;

use aienv_actors::workspace_store::WorkspaceEntry;

use crate::access::{self, Action, WorkspaceAccess};
use crate::auth::{Principal, Role};

use super::{ApiError, AppState};

/// `principal`'s role now; 401 for a user removed since they signed in.
pub fn role(state: &AppState, principal: &Principal) -> Result<Role, ApiError> {
    state.auth.role(principal).ok_or_else(|| {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            format!("user `{}` no longer exists on this node", principal.name()),
        )
    })
}

fn forbidden(message: String) -> ApiError {
    ApiError::new(StatusCode::FORBIDDEN, "forbidden", message)
}

/// Refuses anyone but an admin; `what` names the refused act ("trust peers").
pub fn require_admin(state: &AppState, principal: &Principal, what: &str) -> Result<(), ApiError> {
    match role(state, principal)? {
        Role::Admin => Ok(()),
        role => Err(forbidden(format!(
            "only an admin may {what}; `{}` is a {} (an admin changes that with `aienv user role {} admin`)",
            principal.name(),
            role.as_str(),
            principal.name()
        ))),
    }
}

/// Refuses viewers, who may clone but not make workspaces.
pub fn require_create(state: &AppState, principal: &Principal) -> Result<Role, ApiError> {
    let role = role(state, principal)?;
    if access::may_create(role) {
        Ok(role)
    } else {
        Err(forbidden(format!(
            "`{}` is a viewer: viewers browse and clone, they do not create workspaces",
            principal.name()
        )))
    }
}

/// The owner and members of `entry`, read from its history (and recorded) the first time.
pub async fn access_of(
    state: &AppState,
    entry: &WorkspaceEntry,
) -> Result<WorkspaceAccess, ApiError> {
    let id = entry.manifest.id;
    if let Some(access) = state.workspace_access.get(id).map_err(internal)? {
        return Ok(access);
    }
    let history = state.store.revisions(&id.to_string()).await?;
    let owner = history
        .first()
        .map_or(crate::auth::ADMIN_NAME.to_string(), |r| r.by.clone());
    let access = WorkspaceAccess {
        owner,
        members: Vec::new(),
        writers: Vec::new(),
    };
    state.workspace_access.put(id, &access).map_err(internal)?;
    Ok(access)
}

fn internal(error: access::AccessError) -> ApiError {
    tracing::error!(%error, "access records");
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "access-records-unavailable",
        error.to_string(),
    )
}

/// Workspace `target` when `principal` may do `action` with it; 403 naming who may.
pub async fn authorize(
    state: &AppState,
    principal: &Principal,
    target: &str,
    action: Action,
) -> Result<Arc<WorkspaceEntry>, ApiError> {
    let entry = state.store.get(target)?;
    check(state, principal, &entry, action).await?;
    Ok(entry)
}

/// Whether `principal` may do `action` with `entry`; 403 naming who may.
pub async fn check(
    state: &AppState,
    principal: &Principal,
    entry: &WorkspaceEntry,
    action: Action,
) -> Result<(), ApiError> {
    let role = role(state, principal)?;
    if role == Role::Admin {
        return Ok(());
    }
    let access = access_of(state, entry).await?;
    if access::permits(role, principal.name(), &access, action) {
        return Ok(());
    }
    let name = principal.name();
    let workspace = &entry.manifest.name;
    let hint = match (role, action) {
        (Role::Viewer, _) => {
            "viewers browse and clone; they keep (sync, delete) only what they cloned".to_string()
        }
        (_, Action::Transfer) => "only an admin gives a workspace to another owner".to_string(),
        (_, Action::Grant) => format!(
            "only its owner `{}` or an admin changes its members",
            access.owner
        ),
        _ => format!(
            "it belongs to `{}`, who can add you: `aienv ws access {workspace} --add {name}`",
            access.owner
        ),
    };
    Err(forbidden(format!(
        "`{name}` ({}) may not {} workspace `{workspace}`: {hint}",
        role.as_str(),
        action.what()
    )))
}
