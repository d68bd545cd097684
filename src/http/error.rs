//! The one place where errors become HTTP responses: a status and a stable machine code.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use serde_json::json;

use aienv_actors::transfer_queue::TransferError;
use aienv_actors::workspace_store::{ArchiveError, StoreError};
use aienv_actors::yaml::YamlError;

use crate::api::{ErrorBody, ErrorDetail};

/// An error as the API reports it: `{"error": {"code", "message", "details"}}`.
#[derive(Debug, Clone)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Stable machine code.
    pub code: &'static str,
    /// One-line message.
    pub message: String,
    /// Structured details.
    pub details: Option<serde_json::Value>,
}

impl ApiError {
    /// An error without details.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
            details: None,
        }
    }

    /// 401: no or wrong credentials.
    pub fn unauthorized() -> ApiError {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "this action needs a login: HTTP Basic credentials of a node user, or the node's admin token as `Authorization: Bearer TOKEN`",
        )
    }

    /// 400 for a request that is malformed.
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, code, message)
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        self.status
    }

    fn error_response(&self) -> HttpResponse {
        let mut response = HttpResponse::build(self.status);
        if self.status == StatusCode::UNAUTHORIZED {
            // Not `Basic`: browsers answer a Basic challenge with a password dialog, which
            // would hang the dashboard's own fetches. Basic credentials are still accepted.
            response.insert_header(("WWW-Authenticate", "Bearer realm=\"aienv\""));
        }
        if let Some(seconds) = self
            .details
            .as_ref()
            .and_then(|d| d.get("retry_after"))
            .and_then(|v| v.as_u64())
        {
            response.insert_header(("Retry-After", seconds.to_string()));
        }
        response.json(ErrorBody {
            error: ErrorDetail {
                code: self.code.to_string(),
                message: self.message.clone(),
                details: self.details.clone(),
            },
        })
    }
}

fn yaml_details(error: &YamlError) -> serde_json::Value {
    json!({
        "file": error.file.display().to_string(),
        "line": error.line,
        "column": error.column,
        "field": error.field,
    })
}

impl From<YamlError> for ApiError {
    fn from(error: YamlError) -> ApiError {
        ApiError {
            status: StatusCode::UNPROCESSABLE_ENTITY,
            code: "invalid-yaml",
            details: Some(yaml_details(&error)),
            message: error.to_string(),
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> ApiError {
        use StatusCode as S;
        let message = error.to_string();
        let (status, code, details) = match &error {
            StoreError::NotFound(_) => (S::NOT_FOUND, "workspace-not-found", None),
            StoreError::NameTaken(name) => {
                (S::CONFLICT, "name-taken", Some(json!({ "name": name })))
            }
            StoreError::RevisionNotFound { .. } => (S::NOT_FOUND, "revision-not-found", None),
            StoreError::RevisionConflict {
                expected, actual, ..
            } => (
                S::CONFLICT,
                "revision-conflict",
                Some(json!({ "expected": expected, "actual": actual })),
            ),
            StoreError::EnvironmentNotFound { .. } => (S::NOT_FOUND, "environment-not-found", None),
            StoreError::Invalid { file, errors } => (
                S::UNPROCESSABLE_ENTITY,
                "validation-failed",
                Some(json!({
                    "file": file,
                    "fields": errors.errors.iter().map(|e| json!({"field": e.field, "message": e.message})).collect::<Vec<_>>(),
                })),
            ),
            StoreError::BadRequest(_) => (S::BAD_REQUEST, "bad-request", None),
            StoreError::Git(git) => {
                use aienv_actors::git::GitError as G;
                let code = match git {
                    G::Auth { .. } => "git-auth",
                    G::Unreachable { .. } => "git-unreachable",
                    G::UnknownRef { .. } => "git-ref",
                    G::BadUrl { .. } => "git-url",
                    G::NotInstalled => "git-missing",
                    G::Timeout { .. } => "git-timeout",
                    _ => "git-failed",
                };
                (S::UNPROCESSABLE_ENTITY, code, None)
            }
            StoreError::Yaml(yaml) => return ApiError::from(yaml.clone()),
            StoreError::Archive(archive) => match archive {
                ArchiveError::TooLarge(_) => (S::PAYLOAD_TOO_LARGE, "archive-too-large", None),
                ArchiveError::ChangedDuringExport(_) => {
                    (S::CONFLICT, "changed-during-export", None)
                }
                ArchiveError::Io { .. } => (S::INTERNAL_SERVER_ERROR, "io-error", None),
                _ => (S::UNPROCESSABLE_ENTITY, "archive-rejected", None),
            },
            StoreError::Io { .. } => (S::INTERNAL_SERVER_ERROR, "io-error", None),
            StoreError::Database(_) | StoreError::CorruptRecord { .. } => {
                (S::INTERNAL_SERVER_ERROR, "database-error", None)
            }
            StoreError::Unavailable => (S::SERVICE_UNAVAILABLE, "shutting-down", None),
            _ => (S::INTERNAL_SERVER_ERROR, "internal-error", None),
        };
        if status.is_server_error() {
            tracing::error!(%error, "request failed");
        }
        ApiError {
            status,
            code,
            message,
            details,
        }
    }
}

impl From<TransferError> for ApiError {
    fn from(error: TransferError) -> ApiError {
        use StatusCode as S;
        let error = match error {
            TransferError::Store(store) => return ApiError::from(store),
            other => other,
        };
        let message = error.to_string();
        let (status, code, details) = match &error {
            TransferError::PeerNotFound { name, close } => (
                S::NOT_FOUND,
                "peer-not-found",
                Some(json!({ "name": name, "close_matches": close })),
            ),
            TransferError::WorkspaceNotFound { name, close, .. } => (
                S::NOT_FOUND,
                "workspace-not-found",
                Some(json!({ "name": name, "close_matches": close })),
            ),
            TransferError::NotAClone(_) => (S::CONFLICT, "not-a-clone", None),
            TransferError::NameTaken(name) => {
                (S::CONFLICT, "name-taken", Some(json!({ "name": name })))
            }
            TransferError::JobNotFound(_) => (S::NOT_FOUND, "transfer-not-found", None),
            TransferError::WrongState { state, .. } => {
                (S::CONFLICT, "wrong-state", Some(json!({ "state": state })))
            }
            TransferError::BadRequest(_) => (S::CONFLICT, "transfer-conflict", None),
            TransferError::Conflict { paths, count, .. } => (
                S::CONFLICT,
                "conflict",
                Some(json!({ "paths": paths, "count": count })),
            ),
            TransferError::NoBase(_) => (S::CONFLICT, "no-base", None),
            TransferError::BaseDamaged { .. } => (S::CONFLICT, "base-damaged", None),
            TransferError::Unavailable => (S::SERVICE_UNAVAILABLE, "shutting-down", None),
            _ => (S::INTERNAL_SERVER_ERROR, "transfer-failed", None),
        };
        ApiError {
            status,
            code,
            message,
            details,
        }
    }
}

impl From<aienv_actors::runtime_supervisor::RuntimeError> for ApiError {
    fn from(error: aienv_actors::runtime_supervisor::RuntimeError) -> ApiError {
        use aienv_actors::runtime_supervisor::RuntimeError as E;
        use StatusCode as S;
        let message = error.to_string();
        let (status, code, details) = match &error {
            E::WorkspaceNotFound(_) => (S::NOT_FOUND, "workspace-not-found", None),
            E::StoreUnavailable(_) => (S::SERVICE_UNAVAILABLE, "store-unavailable", None),
            E::EnvironmentNotFound { name, known, .. } => (
                S::NOT_FOUND,
                "environment-not-found",
                Some(json!({ "name": name, "environments": known })),
            ),
            E::ToolNotFound { name, known, .. } => (
                S::NOT_FOUND,
                "tool-not-found",
                Some(json!({ "name": name, "tools": known })),
            ),
            E::NotRunning(_) => (S::CONFLICT, "not-running", None),
            E::DoesNotFit {
                environment,
                reason,
            } => (
                S::UNPROCESSABLE_ENTITY,
                "does-not-fit",
                Some(json!({ "environment": environment, "reason": reason })),
            ),
            E::BackendUnavailable { backend, .. } => (
                S::SERVICE_UNAVAILABLE,
                "backend-unavailable",
                Some(json!({ "backend": backend })),
            ),
            E::Unsupported(_) | E::BadRequest(_) => {
                (S::UNPROCESSABLE_ENTITY, "invalid-environment", None)
            }
            E::SetupFailed { step, log, .. } => (
                S::UNPROCESSABLE_ENTITY,
                "setup-failed",
                Some(json!({ "step": step, "log": log })),
            ),
            E::Gone => (S::SERVICE_UNAVAILABLE, "shutting-down", None),
            E::Sandbox(_) => (S::UNPROCESSABLE_ENTITY, "sandbox-refused", None),
            E::UnknownPlugin(_) => (S::UNPROCESSABLE_ENTITY, "unknown-runtime", None),
            E::Plugin { plugin, op, .. } => (
                S::UNPROCESSABLE_ENTITY,
                "plugin-failed",
                Some(json!({ "plugin": plugin, "op": op })),
            ),
            E::HookFailed { hook, log, .. } => (
                S::UNPROCESSABLE_ENTITY,
                "hook-failed",
                Some(json!({ "hook": hook, "log": log })),
            ),
            _ => (S::INTERNAL_SERVER_ERROR, "runtime-failed", None),
        };
        ApiError {
            status,
            code,
            message,
            details,
        }
    }
}

impl From<aienv_actors::peer_registry::TrustError> for ApiError {
    fn from(error: aienv_actors::peer_registry::TrustError) -> ApiError {
        use aienv_actors::peer_registry::TrustError as E;
        let (status, code) = match &error {
            E::NotFound(_) => (StatusCode::NOT_FOUND, "peer-not-found"),
            E::Ambiguous { .. } => (StatusCode::CONFLICT, "peer-ambiguous"),
            E::KeyMismatch { .. } => (StatusCode::CONFLICT, "key-mismatch"),
            E::KeyId(_) => (StatusCode::UNPROCESSABLE_ENTITY, "invalid-key-id"),
            E::Itself => (StatusCode::UNPROCESSABLE_ENTITY, "peer-is-self"),
            E::Database(_) | E::Unavailable => {
                (StatusCode::SERVICE_UNAVAILABLE, "registry-unavailable")
            }
        };
        ApiError::new(status, code, error.to_string())
    }
}

impl From<crate::login_gate::Throttled> for ApiError {
    fn from(error: crate::login_gate::Throttled) -> ApiError {
        use crate::login_gate::Throttled as T;
        let (status, code, retry_after) = match &error {
            T::Source { retry_after, .. } => (
                StatusCode::TOO_MANY_REQUESTS,
                "too-many-logins",
                *retry_after,
            ),
            T::Busy { retry_after } => {
                (StatusCode::SERVICE_UNAVAILABLE, "login-busy", *retry_after)
            }
        };
        ApiError {
            status,
            code,
            message: error.to_string(),
            details: Some(json!({ "retry_after": retry_after })),
        }
    }
}
