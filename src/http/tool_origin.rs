//! Each opened tool gets an origin of its own: a listener pair (plain HTTP on 127.0.0.1 for
//! this machine, TLS on `http.bind` for the LAN) on ports of `http.tool_ports`, started on
//! first use and stopped when the tool is gone. The browser's same-origin rule then keeps a
//! tool page's scripts away from the dashboard's API, its cookie-less WebSockets and every
//! other tool.
//!
//! A tool origin answers only for its tool: a person is signed in by redeeming a ticket from
//! the dashboard (`/_aienv/sign-in?ticket=…`), which sets a session cookie bound to this tool.
//! The dashboard's own session cookie, which the browser sends here too (cookies ignore
//! ports), grants nothing and never reaches the tool.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr, TcpListener};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix_web::cookie::{Cookie, SameSite};
use actix_web::dev::ServerHandle;
use actix_web::http::header;
use actix_web::http::StatusCode;
use actix_web::middleware::from_fn;
use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};

use aienv_actors::runtime_supervisor::ProxyMiss;

use crate::access::Action;
use crate::auth::{Presented, Principal};

use super::tool_tickets::{ToolKey, COOKIE_PREFIX};
use super::{tool_proxy, ApiError, AppState};

/// Path on a tool origin that redeems a ticket.
pub const SIGN_IN_PATH: &str = "/_aienv/sign-in";
/// How long a listener outlives its tool (a restart keeps the port and open tabs working).
const LINGER: Duration = Duration::from_secs(600);

/// Where tool origins listen.
#[derive(Clone)]
pub struct OriginSettings {
    /// Address of the TLS listeners (`http.bind`).
    pub bind: IpAddr,
    /// Whether a plain-HTTP loopback listener is opened as well (`http.local_http`).
    pub local_http: bool,
    /// Ports to take them from, inclusive; `(0, 0)` lets the OS choose.
    pub ports: (u16, u16),
    /// The node's TLS configuration.
    pub tls: rustls::ServerConfig,
    /// The dashboard's TLS port, where a visitor who is not signed in is sent.
    pub dashboard_port: u16,
    /// The dashboard's loopback port.
    pub dashboard_local_port: Option<u16>,
}

/// The ports of one tool's origin.
#[derive(Debug, Clone, Copy)]
pub struct OriginPorts {
    /// TLS, on `http.bind`.
    pub tls: u16,
    /// Plain HTTP, on 127.0.0.1.
    pub local: Option<u16>,
}

impl OriginPorts {
    /// The port a browser that reached the node by `scheme` should use.
    fn for_scheme(&self, scheme: &str) -> u16 {
        match (scheme, self.local) {
            ("http", Some(local)) => local,
            _ => self.tls,
        }
    }
}

struct Listener {
    ports: OriginPorts,
    server: ServerHandle,
    idle_since: Option<Instant>,
}

/// The running tool origins.
pub struct ToolOrigins {
    settings: OriginSettings,
    listeners: Mutex<HashMap<ToolKey, Listener>>,
    next_port: Mutex<u16>,
    arbiter: actix::ArbiterHandle,
}

/// What a tool origin's handlers know about their tool.
struct OriginTool {
    key: ToolKey,
    dashboard_port: u16,
    dashboard_local_port: Option<u16>,
}

impl ToolOrigins {
    /// Tool origins whose servers run on `arbiter`.
    pub fn new(settings: OriginSettings, arbiter: actix::ArbiterHandle) -> ToolOrigins {
        let first = settings.ports.0;
        ToolOrigins {
            settings,
            listeners: Mutex::new(HashMap::new()),
            next_port: Mutex::new(first),
            arbiter,
        }
    }

    /// The origin of `key`, started if it is not running.
    pub fn ensure(
        &self,
        state: &web::Data<AppState>,
        key: &ToolKey,
    ) -> Result<OriginPorts, ApiError> {
        let mut listeners = self.listeners.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(listener) = listeners.get(key) {
            return Ok(listener.ports);
        }
        let unavailable =
            |what: String| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "no-tool-port", what);
        let tls = self.bind(self.settings.bind).map_err(|e| {
            unavailable(format!(
                "no free port in http.tool_ports for tool `{}` of `{}`: {e}",
                key.tool, key.workspace
            ))
        })?;
        let local = if self.settings.local_http {
            Some(self.bind(IpAddr::from([127, 0, 0, 1])).map_err(|e| {
                unavailable(format!(
                    "no free loopback port in http.tool_ports for tool `{}`: {e}",
                    key.tool
                ))
            })?)
        } else {
            None
        };
        let port = |l: &TcpListener| l.local_addr().map(|a| a.port()).unwrap_or(0);
        let ports = OriginPorts {
            tls: port(&tls),
            local: local.as_ref().map(port),
        };
        let tool = Arc::new(OriginTool {
            key: key.clone(),
            dashboard_port: self.settings.dashboard_port,
            dashboard_local_port: self.settings.dashboard_local_port,
        });
        // Built here (the sockets are bound already); its workers start on the origins'
        // own thread, so nothing here waits for them.
        let server = start_server(state.clone(), tool, tls, local, self.settings.tls.clone())
            .map_err(|e| unavailable(format!("the tool origin did not start: {e}")))?;
        let handle = server.handle();
        self.arbiter.spawn(async move {
            if let Err(error) = server.await {
                tracing::warn!(%error, "tool origin stopped");
            }
        });
        tracing::info!(workspace = %key.workspace, tool = %key.tool, tls = ports.tls, local = ?ports.local, "tool origin opened");
        listeners.insert(
            key.clone(),
            Listener {
                ports,
                server: handle,
                idle_since: None,
            },
        );
        Ok(ports)
    }

    /// The next free port of the range on `address`.
    fn bind(&self, address: IpAddr) -> std::io::Result<TcpListener> {
        let (first, last) = self.settings.ports;
        if first == 0 {
            return TcpListener::bind(SocketAddr::new(address, 0));
        }
        let mut next = self.next_port.lock().unwrap_or_else(|e| e.into_inner());
        let count = u32::from(last - first) + 1;
        let mut last_error = None;
        for _ in 0..count {
            let port = *next;
            *next = if port >= last { first } else { port + 1 };
            match TcpListener::bind(SocketAddr::new(address, port)) {
                Ok(listener) => return Ok(listener),
                Err(error) => last_error = Some(error),
            }
        }
        Err(last_error.unwrap_or_else(|| std::io::Error::other("empty port range")))
    }

    /// Stops the origins of tools that are gone, or stopped for longer than [`LINGER`].
    pub fn sweep(&self, state: &AppState) {
        let mut listeners = self.listeners.lock().unwrap_or_else(|e| e.into_inner());
        listeners.retain(|key, listener| {
            let keep = match super::tool_proxy::reachable(state, &key.workspace, &key.tool) {
                Ok(_) => {
                    listener.idle_since = None;
                    true
                }
                Err(ProxyMiss::NotRunning(_)) => {
                    listener
                        .idle_since
                        .get_or_insert_with(Instant::now)
                        .elapsed()
                        < LINGER
                }
                Err(ProxyMiss::Unknown) => false,
            };
            if !keep {
                tracing::info!(workspace = %key.workspace, tool = %key.tool, "tool origin closed");
                let server = listener.server.clone();
                self.arbiter.spawn(async move { server.stop(false).await });
            }
            keep
        });
    }

    /// Stops every tool origin (node shutdown).
    pub async fn stop_all(&self) {
        let servers: Vec<ServerHandle> = self
            .listeners
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain()
            .map(|(_, l)| l.server)
            .collect();
        for server in servers {
            server.stop(false).await;
        }
    }

    /// Where a browser that reached the node as `request` signs into `key`'s origin with
    /// `ticket`.
    pub fn sign_in_url(request: &HttpRequest, ports: OriginPorts, ticket: &str) -> String {
        let info = request.connection_info();
        let scheme = info.scheme();
        let host = with_port(info.host(), ports.for_scheme(scheme));
        format!("{scheme}://{host}{SIGN_IN_PATH}?ticket={ticket}")
    }
}

fn start_server(
    state: web::Data<AppState>,
    tool: Arc<OriginTool>,
    tls: TcpListener,
    local: Option<TcpListener>,
    tls_config: rustls::ServerConfig,
) -> std::io::Result<actix_web::dev::Server> {
    let tool = web::Data::from(tool);
    let mut server = HttpServer::new(move || {
        App::new()
            .wrap(from_fn(super::network_guard))
            .app_data(state.clone())
            .app_data(tool.clone())
            .default_service(web::to(serve))
    })
    .workers(2)
    .tcp_nodelay(true)
    .client_request_timeout(Duration::from_secs(10))
    .client_disconnect_timeout(Duration::from_secs(2))
    .keep_alive(crate::serve::KEEP_ALIVE)
    .max_connections(1024)
    .max_connection_rate(64)
    .disable_signals()
    .shutdown_timeout(2)
    .listen_rustls_0_23(tls, tls_config)?;
    if let Some(local) = local {
        server = server.listen(local)?;
    }
    Ok(server.run())
}

/// `host[:port]` with its port replaced.
fn with_port(host: &str, port: u16) -> String {
    let name = if host.starts_with('[') {
        host.split_inclusive(']').next().unwrap_or(host)
    } else {
        match host.rsplit_once(':') {
            Some((name, p)) if p.bytes().all(|b| b.is_ascii_digit()) => name,
            _ => host,
        }
    };
    format!("{name}:{port}")
}

/// Every request to a tool origin.
async fn serve(
    state: web::Data<AppState>,
    tool: web::Data<OriginTool>,
    request: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let key = &tool.key;
    own_origin_only(&request)?;
    if request.path() == SIGN_IN_PATH {
        return sign_in(&state, &tool, &request);
    }
    let Some(principal) = signed_in(&state, &tool, &request).await? else {
        return not_signed_in(&tool, &request);
    };
    let target = tool_proxy::route(&state, &key.workspace, &key.tool)?;
    let base = target.base_path().trim_end_matches('/');
    let path = request.path();
    if path == "/" {
        return Ok(HttpResponse::SeeOther()
            .insert_header((header::LOCATION, target.base_path().to_string()))
            .finish());
    }
    if path != base && !path.starts_with(target.base_path()) {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not-this-tool",
            format!(
                "this origin serves only tool `{}` of `{}` (under {})",
                key.tool,
                key.workspace,
                target.base_path()
            ),
        ));
    }
    // Checked on every request: a removed member or a changed role applies at once.
    super::permissions::authorize(&state, &principal, &key.workspace, Action::Use).await?;
    tool_proxy::forward(request, payload, target, key).await
}

/// Refuses requests a page of another origin makes here (another tool, the dashboard, a
/// site on the internet): a tool answers only its own pages.
fn own_origin_only(request: &HttpRequest) -> Result<(), ApiError> {
    let Some(origin) = request.headers().get(header::ORIGIN) else {
        return Ok(());
    };
    let origin = origin.to_str().unwrap_or_default();
    let info = request.connection_info();
    let own = format!("{}://{}", info.scheme(), info.host());
    if origin.eq_ignore_ascii_case(&own) {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "origin-not-allowed",
            format!("pages from `{origin}` may not use this tool"),
        ))
    }
}

/// The cookie this listener's sessions use (ports are part of the name: cookies ignore them).
fn cookie_name(request: &HttpRequest) -> String {
    format!(
        "{COOKIE_PREFIX}{}",
        request.app_config().local_addr().port()
    )
}

fn sign_in(
    state: &AppState,
    tool: &OriginTool,
    request: &HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let query = web::Query::<super::session::SignInQuery>::from_query(request.query_string())
        .map_err(|e| ApiError::bad_request("invalid-query", e.to_string()))?;
    let (principal, next) = state
        .tool_tickets
        .redeem(&query.ticket, &tool.key)
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::UNAUTHORIZED,
                "ticket-invalid",
                "this sign-in link was used already, has expired or is for another tool: open the tool again from the dashboard or with `aienv open`",
            )
        })?;
    let session = state
        .tool_tickets
        .start_session(principal, tool.key.clone());
    let cookie = Cookie::build(cookie_name(request), session)
        .http_only(true)
        .same_site(SameSite::Strict)
        .secure(request.connection_info().scheme() == "https")
        .path("/")
        .finish();
    Ok(HttpResponse::SeeOther()
        .cookie(cookie)
        .insert_header((header::LOCATION, next))
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .insert_header((header::REFERRER_POLICY, "no-referrer"))
        .finish())
}

/// Who is signed in here: this tool's session cookie, or the node's credentials sent
/// explicitly (`Authorization`, which no page can make a browser add on its own).
async fn signed_in(
    state: &AppState,
    tool: &OriginTool,
    request: &HttpRequest,
) -> Result<Option<Principal>, ApiError> {
    if let Some(cookie) = request.cookie(&cookie_name(request)) {
        if let Some(principal) = state.tool_tickets.session(cookie.value(), &tool.key) {
            return Ok(Some(principal));
        }
    }
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|h| h.to_str().ok())
        .and_then(Presented::parse);
    match presented {
        Some(presented) => {
            super::extract::verify(state, presented, super::extract::source_of(request))
                .await
                .map(Some)
        }
        None => Ok(None),
    }
}

/// A visitor without a session: a browser navigating here is sent through the dashboard
/// (which signs it in again, or asks it to log in); anything else is refused.
fn not_signed_in(tool: &OriginTool, request: &HttpRequest) -> Result<HttpResponse, ApiError> {
    if !tool_proxy::is_navigation(request) {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "open this tool from the node's dashboard or with `aienv open` to sign in",
        ));
    }
    let base = format!("/w/{}/{}/", tool.key.workspace, tool.key.tool);
    let path = request.path();
    let path = if path.starts_with(&base) { path } else { &base };
    let info = request.connection_info();
    let (scheme, port) = match (info.scheme(), tool.dashboard_local_port) {
        ("http", Some(local)) => ("http", local),
        _ => ("https", tool.dashboard_port),
    };
    let query = match request.query_string() {
        "" => String::new(),
        query => format!("?{query}"),
    };
    let location = format!("{scheme}://{}{path}{query}", with_port(info.host(), port));
    Ok(HttpResponse::SeeOther()
        .insert_header((header::LOCATION, location))
        .finish())
}

#[cfg(test)]
mod tests {
    use super::with_port;

    #[test]
    fn ports_are_replaced_in_host_headers() {
        assert_eq!(with_port("127.0.0.1:37779", 40000), "127.0.0.1:40000");
        assert_eq!(with_port("gpu-box.lab", 40000), "gpu-box.lab:40000");
        assert_eq!(with_port("[::1]:37778", 40000), "[::1]:40000");
        assert_eq!(with_port("[fe80::1]", 1), "[fe80::1]:1");
    }
}
