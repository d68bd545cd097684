//! `/w/<workspace>/<tool>/…`: the reverse proxy to running tools, HTTP and WebSocket,
//! behind the node's login. Browsers use it on each tool's own origin
//! ([`super::tool_origin`]); on the dashboard's origin it only redirects them there, and
//! proxies for clients that send the node's credentials explicitly.
//!
//! The node signs the person into the tool: JupyterLab gets the token it was started with
//! (`Authorization: token …`); code-server runs with its own auth off, reachable only on
//! loopback. The node's own credentials (its cookies, its `Authorization`) never reach the
//! tool, and a tool cannot set the node's cookies.

use std::time::Duration;

use actix_web::http::header::{self, HeaderMap, HeaderName, HeaderValue};
use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use futures_util::{SinkExt, StreamExt};

use aienv_actors::runtime_supervisor::{ProxyMiss, ProxyTarget};

use crate::access::Action;
use crate::auth::Presented;

use super::tool_tickets::ToolKey;
use super::{upstream, ApiError, AppState};

/// Largest WebSocket message relayed (JupyterLab sends whole notebooks and images).
const MAX_WS_FRAME: usize = 64 << 20;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::resource(["/w/{ws}/{tool}", "/w/{ws}/{tool}/{tail:.*}"]).route(web::route().to(proxy)),
    );
}

thread_local! {
    /// One pooled client per worker: keep-alive connections to tools make the proxy cheap.
    static CLIENT: awc::Client = awc::Client::builder()
        .disable_redirects()
        .no_default_headers()
        .timeout(Duration::from_secs(300))
        .finish();
}

pub(super) const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "proxy-connection",
];

/// `/w/…` on the dashboard's origin. A browser is sent on to the tool's own origin with a
/// fresh ticket; only an explicit `Authorization` (the CLI, scripts), which no page can make
/// a browser add, is proxied here.
async fn proxy(
    state: web::Data<AppState>,
    request: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let key = ToolKey {
        workspace: request
            .match_info()
            .get("ws")
            .unwrap_or_default()
            .to_string(),
        tool: request
            .match_info()
            .get("tool")
            .unwrap_or_default()
            .to_string(),
    };
    // A trusted peer relaying to a tool of an environment it placed here (mutual TLS, the
    // key looked up; never a browser).
    if let Some(peer) = super::peers::trusted_caller(&state, &request) {
        return match super::cluster::lent_tool(&state, &peer, &key.workspace, &key.tool) {
            Some(target) => forward(request, payload, Route::Local(target?), &key).await,
            // Not (yet) running here for that peer: its workspace may still be arriving.
            None => Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "tool-not-running",
                format!(
                    "tool `{}` of `{}` does not run on {} for {} (yet)",
                    key.tool, key.workspace, state.node.name, peer.name
                ),
            )),
        };
    }
    super::extract::check_origin(&state, &request, "use this node's tools")?;
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|h| h.to_str().ok())
        .and_then(Presented::parse);
    if let Some(presented) = presented {
        let principal =
            super::extract::verify(&state, presented, super::extract::source_of(&request)).await?;
        super::permissions::authorize(&state, &principal, &key.workspace, Action::Use).await?;
        let target = route(&state, &key.workspace, &key.tool)?;
        return forward(request, payload, target, &key).await;
    }
    let session = request
        .cookie(super::session::COOKIE)
        .and_then(|cookie| state.sessions.get(cookie.value()));
    let Some((principal, _)) = session.filter(|_| is_navigation(&request)) else {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "tools open behind the node's login: log in on the node's dashboard first (or send its credentials)",
        ));
    };
    super::permissions::authorize(&state, &principal, &key.workspace, Action::Use).await?;
    let target = route(&state, &key.workspace, &key.tool)?;
    let next = match request.query_string() {
        "" => request.path().to_string(),
        query => format!("{}?{query}", request.path()),
    };
    let next = if next.starts_with(target.base_path()) {
        next
    } else {
        target.base_path().to_string()
    };
    let ports = state.tool_origins.ensure(&state, &key)?;
    let ticket = state.tool_tickets.issue(principal, key, next);
    Ok(HttpResponse::SeeOther()
        .insert_header((
            header::LOCATION,
            super::tool_origin::ToolOrigins::sign_in_url(&request, ports, &ticket),
        ))
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .finish())
}

/// Whether a browser is navigating (a page load, not a script's request): only then is it
/// sent on to sign in elsewhere. Clients that send no `Sec-Fetch-Mode` count as navigating.
pub fn is_navigation(request: &HttpRequest) -> bool {
    matches!(request.method().as_str(), "GET" | "HEAD")
        && request
            .headers()
            .get("sec-fetch-mode")
            .is_none_or(|m| m.as_bytes() == b"navigate")
}

/// Where a tool's requests go: to the tool on this host, or to the trusted peer that runs
/// its environment for this node (which relays them to the tool there).
#[derive(Debug, Clone)]
pub enum Route {
    /// A tool of an environment running here.
    Local(ProxyTarget),
    /// A tool of an environment placed on a peer.
    Peer(super::cluster::PeerTool),
}

impl Route {
    /// `/w/<workspace>/<tool>/`, the same on both nodes.
    pub fn base_path(&self) -> &str {
        match self {
            Route::Local(target) => &target.base_path,
            Route::Peer(peer) => &peer.base_path,
        }
    }
}

/// Whether a tool can be reached now (`Ok`), is known but not running, or unknown here.
pub fn reachable(state: &AppState, workspace: &str, tool: &str) -> Result<(), ProxyMiss> {
    match state.runtimes.view().proxy_target(workspace, tool) {
        Ok(_) => Ok(()),
        Err(miss) => match super::cluster::placed_tool(state, workspace, tool) {
            Some(Ok(_)) => Ok(()),
            Some(Err(why)) => Err(ProxyMiss::NotRunning(why)),
            None => Err(miss),
        },
    }
}

/// Where `tool` of `workspace` is reached now, or why it cannot be.
pub fn route(state: &AppState, workspace: &str, tool: &str) -> Result<Route, ApiError> {
    let local = state.runtimes.view().proxy_target(workspace, tool);
    if let Ok(target) = local {
        return Ok(Route::Local(target));
    }
    match super::cluster::placed_tool(state, workspace, tool) {
        Some(Ok(peer)) => return Ok(Route::Peer(peer)),
        Some(Err(why)) => {
            return Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "tool-not-running",
                why,
            ))
        }
        None => {}
    }
    match local {
        Ok(target) => Ok(Route::Local(target)),
        Err(ProxyMiss::Unknown) => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "tool-not-found",
            format!("no running tool `{tool}` in workspace `{workspace}`: start it with `aienv run {workspace}`"),
        )),
        Err(ProxyMiss::NotRunning(why)) => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "tool-not-running",
            why,
        )),
    }
}

/// Relays one request (HTTP or WebSocket) to the tool, here or through a peer.
pub async fn forward(
    request: HttpRequest,
    payload: web::Payload,
    route: Route,
    key: &ToolKey,
) -> Result<HttpResponse, ApiError> {
    let (workspace, tool) = (&key.workspace, &key.tool);
    // `/w/ws/tool` without the slash: tools resolve relative links against the directory.
    let base_path = route.base_path().to_string();
    let base_without_slash = base_path.trim_end_matches('/');
    if request.path() == base_without_slash {
        let location = match request.query_string() {
            "" => base_path.clone(),
            query => format!("{base_path}?{query}"),
        };
        return Ok(HttpResponse::PermanentRedirect()
            .insert_header((header::LOCATION, location))
            .finish());
    }
    let target = match route {
        Route::Local(target) => target,
        Route::Peer(peer) => return super::cluster::relay_tool(request, payload, peer, key).await,
    };
    let upstream_path = if target.strip_prefix {
        let rest = request
            .path()
            .strip_prefix(base_without_slash)
            .unwrap_or("/");
        if rest.is_empty() {
            "/".to_string()
        } else {
            rest.to_string()
        }
    } else {
        request.path().to_string()
    };
    let query = request.query_string();
    let path_and_query = if query.is_empty() {
        upstream_path
    } else {
        format!("{upstream_path}?{query}")
    };
    let is_websocket = request
        .headers()
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    if is_websocket {
        return websocket(&request, payload, &target, &path_and_query).await;
    }
    let headers = forward_headers(&request, &target);
    let length = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let chunked = request.headers().contains_key(header::TRANSFER_ENCODING);
    let body = match (length, chunked) {
        (_, true) => upstream::RequestBody::Chunked(payload),
        (Some(length), false) if length > 0 => upstream::RequestBody::Sized(length, payload),
        _ => upstream::RequestBody::Empty,
    };
    let response = upstream::send(
        target.upstream,
        request.method(),
        &path_and_query,
        &headers,
        body,
    )
    .await
    .map_err(|e| {
        if e.kind() == std::io::ErrorKind::InvalidInput {
            ApiError::bad_request("invalid-body", e.to_string())
        } else {
            ApiError::new(
                StatusCode::BAD_GATEWAY,
                "tool-unreachable",
                format!("tool `{tool}` of `{workspace}` did not answer: {e}"),
            )
        }
    })?;
    let mut builder = HttpResponse::build(response.status);
    for (name, value) in &response.headers {
        if HOP_BY_HOP.contains(&name.as_str())
            || name == header::CONTENT_LENGTH
            || (name == header::SET_COOKIE && is_node_cookie(value.as_bytes()))
        {
            continue;
        }
        builder.append_header((name.clone(), value.clone()));
    }
    match response.length {
        Some(length) => Ok(builder.body(actix_web::body::SizedStream::new(length, response.body))),
        None => Ok(builder.streaming(response.body)),
    }
}

/// Whether a cookie (`name=value…`) is one of the node's: a tool may neither read them nor
/// set them (which would reach the dashboard and the other tools, as cookies ignore ports).
pub(super) fn is_node_cookie(cookie: &[u8]) -> bool {
    let name = cookie.trim_ascii_start();
    name.len() >= NODE_COOKIE_PREFIX.len()
        && name[..NODE_COOKIE_PREFIX.len()].eq_ignore_ascii_case(NODE_COOKIE_PREFIX.as_bytes())
}

/// Every cookie of the node (dashboard session, tool sessions) starts with it.
const NODE_COOKIE_PREFIX: &str = "aienv_";

/// The request's headers as the tool should see them.
fn forward_headers(request: &HttpRequest, target: &ProxyTarget) -> HeaderMap {
    let mut headers = HeaderMap::new();
    let connection_listed: Vec<String> = request
        .headers()
        .get_all(header::CONNECTION)
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(',').map(|s| s.trim().to_ascii_lowercase()))
        .collect();
    for (name, value) in request.headers() {
        let lower = name.as_str();
        if HOP_BY_HOP.contains(&lower)
            || connection_listed.iter().any(|c| c == lower)
            || name == header::AUTHORIZATION
            || name == header::CONTENT_LENGTH
            || lower.starts_with("sec-websocket-")
        {
            continue;
        }
        if name == header::COOKIE {
            if let Some(kept) = strip_node_cookies(value) {
                headers.append(header::COOKIE, kept);
            }
            continue;
        }
        headers.append(name.clone(), value.clone());
    }
    if let Some(token) = &target.token {
        if let Ok(value) = HeaderValue::from_str(&format!("token {token}")) {
            headers.insert(header::AUTHORIZATION, value);
        }
    }
    let info = request.connection_info();
    let forwarded = [
        (
            "x-forwarded-for",
            info.realip_remote_addr().unwrap_or("").to_string(),
        ),
        ("x-forwarded-proto", info.scheme().to_string()),
        ("x-forwarded-host", info.host().to_string()),
    ];
    for (name, value) in forwarded {
        if let Ok(value) = HeaderValue::from_str(&value) {
            headers.insert(HeaderName::from_static(name), value);
        }
    }
    if target.strip_prefix {
        if let Ok(value) = HeaderValue::from_str(target.base_path.trim_end_matches('/')) {
            headers.insert(HeaderName::from_static("x-forwarded-prefix"), value);
        }
    }
    headers
}

/// The `Cookie` header without the node's cookies (`None` when nothing is left): a tool
/// holding another tool's session cookie could replay it on that tool's origin.
pub(super) fn strip_node_cookies(value: &HeaderValue) -> Option<HeaderValue> {
    let text = value.to_str().ok()?;
    let kept: Vec<&str> = text
        .split(';')
        .map(str::trim)
        .filter(|c| !c.is_empty() && !is_node_cookie(c.as_bytes()))
        .collect();
    if kept.is_empty() {
        None
    } else {
        HeaderValue::from_str(&kept.join("; ")).ok()
    }
}

/// Relays a WebSocket between the browser and the tool, message by message.
async fn websocket(
    request: &HttpRequest,
    payload: web::Payload,
    target: &ProxyTarget,
    path_and_query: &str,
) -> Result<HttpResponse, ApiError> {
    let url = format!("ws://{}{path_and_query}", target.upstream);
    let mut upstream = CLIENT.with(|client| client.ws(&url));
    for (name, value) in forward_headers(request, target).iter() {
        upstream = upstream.set_header(name.clone(), value.clone());
    }
    bridge_websocket(request, payload, upstream).await
}

/// Connects `upstream` (with the browser's subprotocols) and relays messages both ways.
pub(super) async fn bridge_websocket(
    request: &HttpRequest,
    payload: web::Payload,
    upstream: awc::ws::WebsocketsRequest,
) -> Result<HttpResponse, ApiError> {
    let protocols: Vec<String> = request
        .headers()
        .get(header::SEC_WEBSOCKET_PROTOCOL)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.split(',').map(|p| p.trim().to_string()).collect())
        .unwrap_or_default();
    let mut upstream = upstream.max_frame_size(MAX_WS_FRAME);
    if !protocols.is_empty() {
        upstream = upstream.protocols(&protocols);
    }
    let (response, framed) = upstream.connect().await.map_err(|e| {
        ApiError::new(
            StatusCode::BAD_GATEWAY,
            "tool-unreachable",
            format!("the tool refused the WebSocket: {e}"),
        )
    })?;
    let chosen = response
        .headers()
        .get(header::SEC_WEBSOCKET_PROTOCOL)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let offered: Vec<&str> = chosen.iter().map(String::as_str).collect();
    let (reply, mut session, incoming) =
        actix_ws::handle_with_protocols(request, payload, &offered)
            .map_err(|e| ApiError::bad_request("not-a-websocket", e.to_string()))?;
    let mut incoming = incoming
        .max_frame_size(MAX_WS_FRAME)
        .aggregate_continuations();
    let (mut sink, mut stream) = framed.split();
    actix_web::rt::spawn(async move {
        use awc::ws::{Frame, Message};
        let mut partial: Option<(bool, Vec<u8>)> = None;
        loop {
            tokio::select! {
                from_browser = incoming.next() => {
                    let message = match from_browser {
                        Some(Ok(actix_ws::AggregatedMessage::Text(text))) => Message::Text(text),
                        Some(Ok(actix_ws::AggregatedMessage::Binary(bytes))) => Message::Binary(bytes),
                        Some(Ok(actix_ws::AggregatedMessage::Ping(bytes))) => Message::Ping(bytes),
                        Some(Ok(actix_ws::AggregatedMessage::Pong(bytes))) => Message::Pong(bytes),
                        Some(Ok(actix_ws::AggregatedMessage::Close(reason))) => {
                            let _ = sink.send(Message::Close(reason)).await;
                            break;
                        }
                        None | Some(Err(_)) => {
                            let _ = sink.send(Message::Close(None)).await;
                            break;
                        }
                    };
                    if sink.send(message).await.is_err() {
                        break;
                    }
                }
                from_tool = stream.next() => {
                    let sent = match from_tool {
                        Some(Ok(Frame::Text(bytes))) => match std::str::from_utf8(&bytes) {
                            Ok(text) => session.text(text.to_string()).await,
                            Err(_) => session.binary(bytes).await,
                        },
                        Some(Ok(Frame::Binary(bytes))) => session.binary(bytes).await,
                        Some(Ok(Frame::Ping(bytes))) => session.pong(&bytes).await,
                        Some(Ok(Frame::Pong(_))) => Ok(()),
                        Some(Ok(Frame::Continuation(item))) => {
                            use actix_ws::Item;
                            match item {
                                Item::FirstText(bytes) => { partial = Some((true, bytes.to_vec())); Ok(()) }
                                Item::FirstBinary(bytes) => { partial = Some((false, bytes.to_vec())); Ok(()) }
                                Item::Continue(bytes) => {
                                    if let Some((_, buffer)) = &mut partial {
                                        if buffer.len() + bytes.len() <= MAX_WS_FRAME {
                                            buffer.extend_from_slice(&bytes);
                                        }
                                    }
                                    Ok(())
                                }
                                Item::Last(bytes) => match partial.take() {
                                    Some((is_text, mut buffer)) => {
                                        buffer.extend_from_slice(&bytes);
                                        match (is_text, String::from_utf8(buffer)) {
                                            (true, Ok(text)) => session.text(text).await,
                                            (_, Ok(text)) => session.binary(text.into_bytes()).await,
                                            (_, Err(e)) => session.binary(e.into_bytes()).await,
                                        }
                                    }
                                    None => Ok(()),
                                },
                            }
                        }
                        Some(Ok(Frame::Close(reason))) => {
                            let _ = session.close(reason).await;
                            return;
                        }
                        None | Some(Err(_)) => {
                            let _ = session.close(None).await;
                            return;
                        }
                    };
                    if sent.is_err() {
                        let _ = sink.send(Message::Close(None)).await;
                        break;
                    }
                }
            }
        }
    });
    Ok(reply)
}
