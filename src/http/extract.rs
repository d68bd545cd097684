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
        let source = source_of(request);
        // A page of another origin (a tool's, whose requests carry the dashboard's cookie
        // too: cookies ignore ports) gets nothing with the cookie, not even a read.
        let foreign = match (&session, &state) {
            (Some(_), Some(state)) => check_origin(state, request, "use this node's API").err(),
            _ => None,
        };
        Box::pin(async move {
            let Some(header) = header else {
                // A browser session: valid cookie, and for changes the CSRF token as well.
                let Some(id) = session else {
                    return Ok(Caller(None));
                };
                if let Some(refused) = foreign {
                    return Err(refused);
                }
                let state = state.expect("app state is registered");
                let Some((principal, token)) = state.sessions.get(&id) else {
                    return Err(ApiError::unauthorized());
                };
                // A user removed since signing in is signed out.
                super::permissions::role(&state, &principal)?;
                let csrf_ok = csrf.as_deref().is_some_and(|sent| {
                    crate::auth::constant_time_eq(sent.as_bytes(), token.as_bytes())
                });
                if !safe && !csrf_ok {
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
            Ok(Caller(Some(verify(&state, presented, source).await?)))
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

/// Where a request comes from (for per-source limits).
pub fn source_of(request: &HttpRequest) -> std::net::IpAddr {
    request
        .peer_addr()
        .map_or(std::net::IpAddr::from([0, 0, 0, 0]), |a| a.ip())
}

/// Checks credentials from an `Authorization` header, through the login gate (argon2 off
/// the worker threads, bounded per source and node-wide).
pub async fn verify(
    state: &AppState,
    presented: Presented,
    source: std::net::IpAddr,
) -> Result<Principal, ApiError> {
    let principal = state
        .login_gate
        .check(&state.auth, presented, source)
        .await?;
    principal.ok_or_else(|| {
        tracing::warn!(%source, "refused wrong credentials");
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
