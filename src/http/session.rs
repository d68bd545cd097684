//! Browser sessions for the dashboard: a login (user password or admin token) becomes an
//! HttpOnly, SameSite=Strict cookie; mutating requests made with the cookie must also carry the
//! session's CSRF token in `X-CSRF-Token`.

use std::time::Duration;

use actix_web::cookie::{Cookie, SameSite};
use actix_web::{web, HttpRequest, HttpResponse};
use serde::{Deserialize, Serialize};

use crate::auth::{Presented, Principal};

use super::tokens::{new_token, TokenMap};
use super::{ApiError, AppState, Caller};

/// Name of the session cookie.
pub const COOKIE: &str = "aienv_session";
/// Header carrying the CSRF token.
pub const CSRF_HEADER: &str = "x-csrf-token";
/// How long a session lives without use.
const IDLE: Duration = Duration::from_secs(12 * 3600);
const MAX_SESSIONS: usize = 10_000;

/// Live sessions, in memory: a node restart logs browsers out.
pub struct Sessions {
    sessions: TokenMap<Session>,
    tickets: TokenMap<Principal>,
}

impl Default for Sessions {
    fn default() -> Sessions {
        Sessions {
            sessions: TokenMap::new(MAX_SESSIONS),
            tickets: TokenMap::new(MAX_TICKETS),
        }
    }
}

/// Path of the dashboard's single-use sign-in links.
pub const SIGN_IN_PATH: &str = "/_aienv/sign-in";
/// How long a sign-in link from the API (`aienv open`) works.
pub const TICKET_TTL: Duration = Duration::from_secs(60);
const MAX_TICKETS: usize = 1024;

struct Session {
    principal: Principal,
    csrf: String,
}

impl Sessions {
    fn create(&self, principal: Principal) -> (String, String) {
        let csrf = new_token();
        let session = Session {
            principal,
            csrf: csrf.clone(),
        };
        (self.sessions.insert(session, IDLE), csrf)
    }

    /// The session's principal and CSRF token, refreshing its idle timer.
    pub fn get(&self, id: &str) -> Option<(Principal, String)> {
        self.sessions
            .touch(id, |s| (s.principal.clone(), s.csrf.clone()))
    }

    /// A link token that signs `principal` in once, within `ttl`.
    pub fn issue_ticket(&self, principal: Principal, ttl: Duration) -> String {
        self.tickets.insert(principal, ttl)
    }

    /// Spends a ticket (whatever the outcome).
    fn redeem_ticket(&self, ticket: &str) -> Option<Principal> {
        self.tickets.take(ticket)
    }

    fn remove(&self, id: &str) {
        self.sessions.remove(id);
    }
}

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::resource("/session")
            .route(web::get().to(current))
            .route(web::post().to(login))
            .route(web::delete().to(logout)),
    )
    .route("/session/ticket", web::post().to(ticket));
}

/// The sign-in link's route, on the dashboard's origin (outside `/api/v1`).
pub fn configure_sign_in(cfg: &mut web::ServiceConfig) {
    cfg.route(SIGN_IN_PATH, web::get().to(sign_in));
}

/// `POST /session/ticket`: a link that opens the dashboard signed in as the caller, once.
async fn ticket(
    state: web::Data<AppState>,
    login: super::Login,
    request: HttpRequest,
) -> HttpResponse {
    let ticket = state.sessions.issue_ticket(login.0, TICKET_TTL);
    let info = request.connection_info();
    HttpResponse::Ok().json(crate::api::SignInLinkDto {
        url: format!(
            "{}://{}{SIGN_IN_PATH}?ticket={ticket}",
            info.scheme(),
            info.host()
        ),
        expires_in_seconds: TICKET_TTL.as_secs(),
    })
}

/// The query of a sign-in link (dashboard and tool origins alike).
#[derive(Deserialize)]
pub(super) struct SignInQuery {
    pub(super) ticket: String,
}

/// `GET /_aienv/sign-in?ticket=…`: trades a ticket for a session and opens the dashboard.
async fn sign_in(
    state: web::Data<AppState>,
    request: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let query = web::Query::<SignInQuery>::from_query(request.query_string())
        .map_err(|e| ApiError::bad_request("invalid-query", e.to_string()))?;
    let principal = state.sessions.redeem_ticket(&query.ticket).ok_or_else(|| {
        ApiError::new(
            actix_web::http::StatusCode::UNAUTHORIZED,
            "ticket-invalid",
            "this sign-in link was used already or has expired: run `aienv open` on the node's machine for a new one, or sign in with a password or the admin token",
        )
    })?;
    super::permissions::role(&state, &principal)?;
    let (id, _) = state.sessions.create(principal);
    Ok(HttpResponse::SeeOther()
        .cookie(session_cookie(&request, id))
        .insert_header((actix_web::http::header::LOCATION, "/"))
        .insert_header((actix_web::http::header::CACHE_CONTROL, "no-store"))
        .insert_header((actix_web::http::header::REFERRER_POLICY, "no-referrer"))
        .finish())
}

/// The session cookie: HttpOnly, SameSite=Strict, and Secure when set over TLS (from another
/// machine), so the browser never sends it in clear, not even to a plain-HTTP URL of the
/// same host.
fn session_cookie(request: &HttpRequest, id: String) -> Cookie<'static> {
    let over_tls = request.connection_info().scheme() == "https";
    Cookie::build(COOKIE, id)
        .http_only(true)
        .same_site(SameSite::Strict)
        .secure(over_tls)
        .path("/")
        .finish()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LoginRequest {
    user: Option<String>,
    password: Option<String>,
    token: Option<String>,
}

/// A session as the dashboard sees it.
#[derive(Debug, Serialize, Deserialize)]
pub struct SessionDto {
    /// Who is logged in.
    pub user: String,
    /// Their role now: `admin`, `member` or `viewer`.
    pub role: String,
    /// Send as `X-CSRF-Token` with every change.
    pub csrf_token: String,
}

async fn login(
    state: web::Data<AppState>,
    request: HttpRequest,
    body: web::Json<LoginRequest>,
) -> Result<HttpResponse, ApiError> {
    let presented = match body.into_inner() {
        LoginRequest {
            token: Some(token),
            user: None,
            password: None,
        } => Presented::Bearer(token),
        LoginRequest {
            user: Some(user),
            password: Some(password),
            token: None,
        } => Presented::Basic { user, password },
        _ => {
            return Err(ApiError::bad_request(
                "invalid-field",
                "send either `user` and `password`, or `token`",
            ))
        }
    };
    let principal = state
        .login_gate
        .check(&state.auth, presented, super::extract::source_of(&request))
        .await?
        .ok_or_else(|| {
            tracing::warn!("refused a dashboard login");
            ApiError::new(
                actix_web::http::StatusCode::UNAUTHORIZED,
                "login-failed",
                "wrong user name, password or token",
            )
        })?;
    let user = principal.name().to_string();
    let role = super::permissions::role(&state, &principal)?;
    let (id, csrf) = state.sessions.create(principal);
    Ok(HttpResponse::Ok()
        .cookie(session_cookie(&request, id))
        .json(SessionDto {
            user,
            role: role.as_str().to_string(),
            csrf_token: csrf,
        }))
}

async fn current(
    state: web::Data<AppState>,
    request: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    super::extract::check_origin(&state, &request, "read this node's session")?;
    let session = request
        .cookie(COOKIE)
        .and_then(|c| state.sessions.get(c.value()))
        .ok_or_else(ApiError::unauthorized)?;
    let role = super::permissions::role(&state, &session.0)?;
    Ok(HttpResponse::Ok().json(SessionDto {
        user: session.0.name().to_string(),
        role: role.as_str().to_string(),
        csrf_token: session.1,
    }))
}

async fn logout(state: web::Data<AppState>, request: HttpRequest, _caller: Caller) -> HttpResponse {
    if let Some(cookie) = request.cookie(COOKIE) {
        state.sessions.remove(cookie.value());
    }
    let mut expired = Cookie::build(COOKIE, "").path("/").finish();
    expired.make_removal();
    HttpResponse::NoContent().cookie(expired).finish()
}
