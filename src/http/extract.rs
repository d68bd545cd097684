//! Request extractors for who is asking.

use std::future::Future;
use std::pin::Pin;

use actix_web::dev::Payload;
use actix_web::http::header::{AUTHORIZATION, HOST, ORIGIN};
use actix_web::http::StatusCode;
use actix_web::{web, FromRequest, HttpRequest};

use aienv_actors::workspace_store::Viewer;

use crate::auth::{Presented, Principal};

use super::{ApiError, AppState};

/// The caller, logged in or anonymous. Wrong credentials are refused with 401 rather than
/// treated as anonymous, so a typo is noticed.
pub struct Caller(pub Option<Principal>);

impl Caller {
    /// Which workspaces this caller may see.
    pub fn viewer(&self) -> Viewer {
        match self.0 {
            Some(_) => Viewer::Owner,
            None => Viewer::Anonymous,
        }
    }

    /// Whether the caller is logged in.
    pub fn is_logged_in(&self) -> bool {
        self.0.is_some()
    }
}

impl FromRequest for Caller {
    type Error = ApiError;
    type Future = Pin<Box<dyn Future<Output = Result<Caller, ApiError>>>>;

    fn from_request(request: &HttpRequest, _: &mut Payload) -> Self::Future {
        let state = request.app_data::<web::Data<AppState>>().cloned();
        let header = request
            .headers()
            .get(AUTHORIZATION)
            .map(|value| value.to_str().map(str::to_string));
        let session = request
            .cookie(super::session::COOKIE)
            .map(|c| c.value().to_string());
        let csrf = request
            .headers()
            .get(super::session::CSRF_HEADER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let safe = matches!(request.method().as_str(), "GET" | "HEAD" | "OPTIONS");
        Box::pin(async move {
            let Some(header) = header else {
                // A browser session: valid cookie, and for changes the CSRF token as well.
                let Some(id) = session else {
                    return Ok(Caller(None));
                };
                let state = state.expect("app state is registered");
                let Some((principal, token)) = state.sessions.get(&id) else {
                    return Err(ApiError::unauthorized());
                };
                if !safe && csrf.as_deref() != Some(token.as_str()) {
                    return Err(ApiError::new(
                        actix_web::http::StatusCode::FORBIDDEN,
                        "csrf-failed",
                        "this change lacks the session's X-CSRF-Token header",
                    ));
                }
                return Ok(Caller(Some(principal)));
            };
            let state = state.expect("app state is registered");
            let presented = header
                .ok()
                .and_then(|h| Presented::parse(&h))
                .ok_or_else(ApiError::unauthorized)?;
            Ok(Caller(Some(verify(&state, presented).await?)))
        })
    }
}

/// Refuses a browser request whose `Origin` is not this node (WebSocket upgrades and the
/// tool proxy, which a CSRF header cannot protect); `what` names what was refused.
pub fn check_origin(state: &AppState, request: &HttpRequest, what: &str) -> Result<(), ApiError> {
    let Some(origin) = request.headers().get(ORIGIN) else {
        return Ok(());
    };
    let origin = origin.to_str().unwrap_or_default();
    let host = request
        .headers()
        .get(HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or_default();
    if state.access.allows_origin(origin, host) {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "origin-not-allowed",
            format!("browser pages from `{origin}` may not {what}"),
        ))
    }
}

/// Checks credentials from an `Authorization` header (argon2 hashes off the worker thread).
pub async fn verify(state: &AppState, presented: Presented) -> Result<Principal, ApiError> {
    let auth = state.auth.clone();
    let principal = if auth.is_cheap(&presented) {
        auth.verify(&presented)
    } else {
        web::block(move || auth.verify(&presented))
            .await
            .map_err(|_| ApiError::unauthorized())?
    };
    principal.ok_or_else(|| {
        tracing::warn!("refused wrong credentials");
        ApiError::unauthorized()
    })
}

/// A logged-in caller; extraction fails with 401 otherwise.
pub struct Login(pub Principal);

impl Login {
    /// Name for the revision history.
    pub fn name(&self) -> &str {
        self.0.name()
    }
}

impl FromRequest for Login {
    type Error = ApiError;
    type Future = Pin<Box<dyn Future<Output = Result<Login, ApiError>>>>;

    fn from_request(request: &HttpRequest, payload: &mut Payload) -> Self::Future {
        let caller = Caller::from_request(request, payload);
        Box::pin(async move {
            match caller.await? {
                Caller(Some(principal)) => Ok(Login(principal)),
                Caller(None) => Err(ApiError::unauthorized()),
            }
        })
    }
}
