//! `aienv serve`: starts the actor system, the HTTP server and waits for a shutdown signal.

use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;
use std::sync::Arc;

use actix_web::body::{BoxBody, EitherBody, MessageBody};
use actix_web::dev::ServiceResponse;
use actix_web::http::header::{self, HeaderValue};
use actix_web::middleware::{from_fn, ErrorHandlerResponse, ErrorHandlers};
use actix_web::{web, App, HttpServer};
use chrono::Utc;

use aienv_actors::discovery::wire::Scheme;
use aienv_actors::discovery::{AnnouncerConfig, AnnouncerHandle};
use aienv_actors::event_bus::EventBus;
use aienv_actors::identity;
use aienv_actors::peer_registry::{KeyBook, PeerRegistryHandle, RegistryConfig};
use aienv_actors::runtime_supervisor::{RuntimeConfig, RuntimeSupervisorHandle};
use aienv_actors::shutdown::Shutdown;
use aienv_actors::transfer_queue::{Compression, TransferConfig, TransferQueueHandle};
use aienv_actors::workspace_store::{ImportLimits, StoreConfig, WorkspaceStoreHandle};

use crate::auth::{self, AccessPolicy, Authenticator};
use crate::config::Config;
use crate::http::{self, AppState, Limits, NodeFacts};
use crate::peer_client::HttpPeerClient;
use crate::transfer_client::HttpTransferClient;

/// How long the node keeps an idle keep-alive connection open (both listeners and the tool
/// origins). Its own clients keep theirs for less ([`crate::client::POOL_IDLE`]).
pub const KEEP_ALIVE: std::time::Duration = std::time::Duration::from_secs(15);

/// Why the node could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServeError {
    /// The data dir could not be prepared.
    #[error("data dir {path}: {source}")]
    DataDir {
        /// The data dir.
        path: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The node id could not be read or made.
    #[error(transparent)]
    Identity(#[from] identity::IdentityError),
    /// The admin token could not be read or made.
    #[error(transparent)]
    Auth(#[from] auth::AuthError),
    /// The workspace store could not start.
    #[error(transparent)]
    Store(#[from] aienv_actors::workspace_store::StoreError),
    /// The peer key book could not be read.
    #[error(transparent)]
    Keys(#[from] aienv_actors::peer_registry::KeyBookError),
    /// The TLS configuration could not be made from the node's key.
    #[error("TLS with the node's key: {0}")]
    Tls(#[from] rustls::Error),
    /// The HTTP server could not listen.
    #[error("cannot listen on {address}: {source}")]
    Bind {
        /// The address.
        address: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// The HTTP server failed.
    #[error("http server: {0}")]
    Server(std::io::Error),
}

/// Runs the node until SIGINT or SIGTERM. Must run inside an actix system.
/// Options of `aienv serve` that are not configuration.
#[derive(Debug, Clone, Default)]
pub struct ServeOptions {
    /// Serve the dashboard from disk (`--dev`).
    pub dev_ui: bool,
    /// Fault injection for tests.
    pub test_hooks: http::TestHooks,
}

/// At most one glibc malloc arena per core (glibc's default is eight per core). Snapshots
/// and clones allocate from tokio's blocking threads, each of which would otherwise get an
/// arena of its own that keeps its freed memory: with 50,000 files the nodes' peak resident
/// memory was 136 / 160 MiB (source / receiver) with the default and 100 / 105 MiB with two
/// arenas, at the same transfer and proxy speed. `MALLOC_ARENA_MAX`, when set, wins.
fn limit_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        let arenas = libc::c_int::try_from(cores.max(2)).unwrap_or(libc::c_int::MAX);
        // SAFETY: mallopt only sets a tuning value; it returns 0 when it refuses one.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, arenas);
        }
    }
}

/// The node holds up to 2,048 connections besides its stores, transfers and tools: a
/// soft limit of 1,024 open files (common) would refuse connections long before that, so
/// it is raised to the hard limit, as servers do.
fn raise_open_files_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain syscalls on a local struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 || limit.rlim_cur >= limit.rlim_max
        {
            return;
        }
        let before = limit.rlim_cur;
        limit.rlim_cur = limit.rlim_max;
        if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) == 0 {
            tracing::debug!(
                before,
                after = limit.rlim_max,
                "raised the open files limit"
            );
        }
    }
}

pub async fn serve(config: Config, options: ServeOptions) -> Result<(), ServeError> {
    let dev_ui = options.dev_ui;
    raise_open_files_limit();
    limit_malloc_arenas();
    let started = Utc::now();
    let started_instant = std::time::Instant::now();
    create_private_dir(&config.data_dir)?;
    // Absolute from here on: workspace paths are handed out (and embedded in clones'
    // snapshots for relocation), so they must not depend on the working directory.
    let data_dir =
        std::fs::canonicalize(&config.data_dir).map_err(|source| ServeError::DataDir {
            path: config.data_dir.display().to_string(),
            source,
        })?;
    let node_identity = Arc::new(identity::load_or_create(&data_dir, &config.name)?);
    let node_id = node_identity.id;
    let token = auth::load_or_create_token(&data_dir)?;

    let git = git_for_node(&data_dir, &config.git)?;
    let bus = EventBus::new(config.http.event_buffer.max(1));
    let (store, report) = WorkspaceStoreHandle::start(
        &StoreConfig {
            data_dir: data_dir.clone(),
            cache_bytes: config.store.cache_mib * 1024 * 1024,
            import_limits: ImportLimits {
                max_content_bytes: config.http.max_upload_bytes.saturating_mul(64),
                ..ImportLimits::default()
            },
            git,
        },
        bus.clone(),
    )?;
    for repair in &report.repairs {
        tracing::warn!(repair = %repair, "start-up repair");
    }
    tracing::info!(
        workspaces = report.workspaces,
        repairs = report.repairs.len(),
        "workspace store ready"
    );

    let address = SocketAddr::new(config.http.bind, config.http.port);
    let listener = std::net::TcpListener::bind(address)
        .map_err(|source| ServeError::Bind { address, source })?;
    let bound = listener.local_addr().map_err(ServeError::Server)?;
    // Plain HTTP only where nothing crosses a network: this machine's CLI and browser.
    let local_listener = if config.http.local_http {
        let local = SocketAddr::new(IpAddr::from([127, 0, 0, 1]), config.http.local_port);
        let listener = std::net::TcpListener::bind(local).map_err(|source| ServeError::Bind {
            address: local,
            source,
        })?;
        Some(listener)
    } else {
        None
    };
    let local_bound = match &local_listener {
        Some(listener) => Some(listener.local_addr().map_err(ServeError::Server)?),
        None => None,
    };
    let tls_config = crate::tls::server_config(&node_identity)?;
    // Tools' own origins run their listeners on a thread of their own.
    let tool_origins = http::ToolOrigins::new(
        http::OriginSettings {
            bind: config.http.bind,
            local_http: config.http.local_http,
            ports: config.http.tool_port_range().unwrap_or((0, 0)),
            tls: tls_config.clone(),
            dashboard_port: bound.port(),
            dashboard_local_port: local_bound.map(|a| a.port()),
        },
        actix::Arbiter::new().handle(),
    );
    let workspace_access = crate::access::AccessBook::new(store.open_tree("workspace_access")?);
    let keys = KeyBook::open(
        store.open_tree("peer_keys")?,
        store.open_tree("trusted_peers")?,
    )?;

    let interval = std::time::Duration::from_millis(config.discovery.announce_interval_ms);
    let peers = PeerRegistryHandle::start(
        RegistryConfig {
            node_id,
            interval,
            static_peers: config.discovery.static_peers.clone(),
            node_key: node_identity.key,
        },
        keys,
        Rc::new(HttpPeerClient::new(node_identity.clone())),
        bus.clone(),
    );
    let announcer = AnnouncerHandle::start(
        AnnouncerConfig {
            enabled: config.discovery.enabled,
            group: config.discovery.group,
            port: config.discovery.port,
            interfaces: config.discovery.interfaces.clone(),
            interval,
            node_id,
            name: config.name.clone(),
            http_port: bound.port(),
            scheme: Scheme::Https,
            key: node_identity.key,
            trusted: peers.view().trusted.to_vec(),
            data_dir: data_dir.clone(),
        },
        store.clone(),
        aienv_actors::discovery::Registry {
            seen: peers.addr().recipient(),
            goodbye: peers.addr().recipient(),
        },
        bus.clone(),
    );

    // Environments run on their own thread: process and container supervision never waits
    // behind a transfer's work, nor the other way round.
    let runtimes = {
        let config = RuntimeConfig {
            libvirt_uri: config.runtime.libvirt_uri.clone(),
            run_as: config.runtime.run_as.clone(),
            allow_unsandboxed: config.runtime.allow_unsandboxed.clone(),
            slurm: config.runtime.slurm.to_runtime(),
            lend: config.cluster.limits(),
            autostart: config.runtime.autostart,
            plugin_timeout: std::time::Duration::from_secs(
                config.runtime.plugin_timeout_seconds.max(1),
            ),
            ..RuntimeConfig::new(&data_dir, node_id)
        };
        let (store, bus) = (store.clone(), bus.clone());
        let (sender, receiver) = tokio::sync::oneshot::channel();
        let arbiter = actix::Arbiter::new();
        arbiter.spawn(async move {
            let _ = sender.send(RuntimeSupervisorHandle::start(config, store, bus));
        });
        receiver.await.expect("the runtime arbiter starts")
    };

    // Transfers run on their own thread too: fetching and writing never compete with the
    // registry's and announcer's timers.
    let transfers = {
        let config = TransferConfig {
            max_jobs: config.transfer.max_jobs.max(1),
            window: config.transfer.window.max(1),
            plan_window: config.transfer.plan_window.max(1),
            compress: match config.transfer.compress {
                crate::config::CompressSetting::Auto => Compression::Auto,
                crate::config::CompressSetting::Always => Compression::Always,
                crate::config::CompressSetting::Never => Compression::Never,
            },
            source_wait: std::time::Duration::from_secs(config.transfer.source_wait_seconds),
            ..TransferConfig::new(&data_dir)
        };
        let (store, peers, bus) = (store.clone(), peers.clone(), bus.clone());
        // A clone's post_clone hook runs confined, by the runtime supervisor.
        let post_clone = Some(runtimes.post_clone_recipient());
        let identity = node_identity.clone();
        let (sender, receiver) = tokio::sync::oneshot::channel();
        let arbiter = actix::Arbiter::new();
        arbiter.spawn(async move {
            let handle = TransferQueueHandle::start(
                config,
                store,
                peers,
                Rc::new(HttpTransferClient::new(identity)),
                bus,
                post_clone,
            );
            let _ = sender.send(handle);
        });
        receiver.await.expect("the transfer arbiter starts")
    };

    let placements = aienv_actors::cluster::PlacementsHandle::start(
        aienv_actors::cluster::PlacementConfig {
            lost_after: std::time::Duration::from_secs(config.cluster.lost_after_seconds.max(2)),
            ..aienv_actors::cluster::PlacementConfig::default()
        },
        store.open_tree("placements")?,
        peers.clone(),
        Rc::new(crate::cluster_client::HttpClusterClient::new(
            node_identity.clone(),
        )),
        bus.clone(),
    );

    let ci = aienv_actors::ci::CiRunsHandle::start(
        aienv_actors::ci::CiConfig {
            max_running: config.ci.max_running.max(1),
            keep: config.ci.keep_runs.max(1),
            ..aienv_actors::ci::CiConfig::new(&data_dir)
        },
        store.open_tree("ci_runs")?,
        store.open_tree("ci_deliveries")?,
        store.clone(),
        runtimes.clone(),
        aienv_actors::ci::CiLinks {
            transfers: transfers.subscribe(),
            peers: peers.clone(),
            remote: Rc::new(crate::cluster_client::HttpCiRemote::new(
                node_identity.clone(),
            )),
        },
        bus.clone(),
    );
    let shutdown = Shutdown::new();
    crate::notify::start(
        &config.ci.notify,
        &bus,
        &config.name,
        node_id,
        shutdown.clone(),
    );
    let snapshot_history = aienv_actors::snapshot_history::SnapshotHistory::new(&data_dir);
    snapshot_history.prune(|id| store.get(&id.to_string()).is_ok());
    let state = web::Data::new(AppState {
        ci,
        ci_hooks: Arc::new(config.ci.hooks.clone()),
        placements,
        cluster: http::ClusterPolicy {
            accept: config.cluster.accept == crate::config::AcceptSetting::Trusted,
        },
        loans: http::Loans::default(),
        pushing: http::PushGrants::default(),
        store,
        runtimes: runtimes.clone(),
        transfers,
        snapshot_history,
        uploads: Arc::new(http::Uploads::new(
            config.transfer.max_uploads,
            config.transfer.max_uploads_per_peer,
            options.test_hooks,
        )),
        peers,
        announcer: announcer.clone(),
        bus,
        auth: Arc::new(Authenticator::new(token, &data_dir)),
        workspace_access,
        login_gate: crate::login_gate::LoginGate::default(),
        access: AccessPolicy {
            allow_public: config.http.allow_public,
            hostnames: config
                .http
                .hostnames
                .iter()
                .map(|h| h.to_ascii_lowercase())
                .chain([
                    config.name.to_ascii_lowercase(),
                    crate::config::host_name().to_ascii_lowercase(),
                ])
                .collect(),
            allowed_origins: config.http.allowed_origins.clone(),
        },
        shutdown: shutdown.clone(),
        node: NodeFacts {
            id: node_id,
            key: node_identity.key,
            certificate_sha256: node_identity.cert_sha256.clone(),
            legacy_id: node_identity.legacy_id,
            name: config.name.clone(),
            data_dir: data_dir.clone(),
            started,
            started_instant,
            startup_repairs: report.repairs.clone(),
        },
        limits: Limits {
            max_body_bytes: config.http.max_body_bytes,
            max_upload_bytes: config.http.max_upload_bytes,
        },
        list_cache: http::ListCache::default(),
        sessions: http::Sessions::default(),
        pairing: http::Pairing::default(),
        tool_tickets: http::ToolTickets::default(),
        tool_origins,
        identity: node_identity.clone(),
        ui_dir: dev_ui.then(|| {
            let source = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("web-ui");
            if source.is_dir() {
                source
            } else {
                std::path::PathBuf::from("web-ui")
            }
        }),
    });

    let workers = if config.http.workers == 0 {
        std::thread::available_parallelism().map_or(2, |n| n.get())
    } else {
        config.http.workers
    };
    let app_state = state.clone();
    let mut server = HttpServer::new(move || {
        App::new()
            .wrap(ErrorHandlers::new().default_handler(json_error_body))
            .wrap(from_fn(http::network_guard))
            .configure(http::configure(app_state.clone()))
    })
    .workers(workers)
    // Without it, a response written as headers then body waits for the client's delayed
    // ACK (40 ms on Linux): every small answer through the tool proxy paid that.
    .tcp_nodelay(true)
    // Bounds on what slow or idle clients can hold: headers within 10 s, an idle
    // keep-alive connection for 15 s, at most 2,048 connections and 64 TLS handshakes in
    // progress per worker (the rest wait in the listen backlog).
    .client_request_timeout(std::time::Duration::from_secs(10))
    .client_disconnect_timeout(std::time::Duration::from_secs(2))
    .keep_alive(KEEP_ALIVE)
    .max_connections(2048)
    .max_connection_rate(64)
    .disable_signals()
    .shutdown_timeout(5)
    // The key a TLS client proved is all a request learns of which peer it comes from.
    .on_connect(crate::tls::peer_key)
    .listen_rustls_0_23(listener, tls_config)
    .map_err(|source| ServeError::Bind { address, source })?;
    if let (Some(listener), Some(local)) = (local_listener, local_bound) {
        server = server.listen(listener).map_err(|source| ServeError::Bind {
            address: local,
            source,
        })?;
    }
    let server = server.run();
    let handle = server.handle();

    // Machine-readable first lines on stdout: scripts and tests read the addresses from
    // them (the first is where this machine's CLI talks to the node).
    let first = match local_bound {
        Some(local) => format!("http://{local}"),
        None => format!("https://{bound}"),
    };
    // One write: a reader that takes only the first line and goes away never makes a later
    // line fail.
    {
        use std::io::Write;
        let mut banner = format!(
            "aienv: listening on {first}\n\
             aienv: peers and other machines: https://{bound}\n\
             aienv: node id {node_id}\n\
             aienv: key id {}\n\
             aienv: certificate SHA-256 {} (compare it with the browser's warning on another machine)\n",
            node_identity.key, node_identity.cert_sha256
        );
        banner.push_str(&dashboard_lines(
            &state,
            local_bound,
            bound,
            config.http.bind,
        ));
        let mut stdout = std::io::stdout().lock();
        let _ = stdout.write_all(banner.as_bytes());
        let _ = stdout.flush();
    }
    tracing::info!(
        %bound,
        local = ?local_bound,
        node = %config.name,
        id = %node_id,
        key = %node_identity.key,
        data_dir = %data_dir.display(),
        token_file = %data_dir.join(auth::TOKEN_FILE).display(),
        "node started"
    );

    // Tool origins close when their tool is gone.
    {
        let (state, shutdown) = (state.clone(), shutdown.clone());
        actix_web::rt::spawn(async move {
            let mut ticks = tokio::time::interval(std::time::Duration::from_secs(5));
            loop {
                tokio::select! {
                    _ = ticks.tick() => state.tool_origins.sweep(&state),
                    _ = shutdown.wait() => break,
                }
            }
        });
    }

    let signal_shutdown = shutdown.clone();
    let origins_state = state.clone();
    actix_web::rt::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutting down");
        announcer.goodbye().await;
        // Tools and containers stop with the node (autostart ones come back with it).
        match runtimes
            .stop(None, None, std::time::Duration::from_secs(30))
            .await
        {
            Ok(stopped) if !stopped.is_empty() => {
                tracing::info!(environments = stopped.len(), "environments stopped")
            }
            Ok(_) => {}
            Err(error) => tracing::warn!(%error, "stopping environments"),
        }
        // Transfers stop where they are and resume at the next start.
        origins_state
            .transfers
            .shut_down(std::time::Duration::from_secs(10))
            .await;
        origins_state.tool_origins.stop_all().await;
        signal_shutdown.trigger();
        handle.stop(true).await;
    });
    server.await.map_err(ServeError::Server)?;
    shutdown.trigger();
    tracing::info!("node stopped");
    Ok(())
}

/// How long the banner's sign-in link works (it is as good as the admin token, once).
const BANNER_LINK_TTL: std::time::Duration = std::time::Duration::from_secs(3600);

/// The banner's lines for people: where the dashboard is, on this machine (with a link that
/// signs in once, as Jupyter prints one) and from the LAN.
fn dashboard_lines(
    state: &web::Data<AppState>,
    local: Option<SocketAddr>,
    bound: SocketAddr,
    bind: IpAddr,
) -> String {
    let mut lines = String::new();
    let here = match local {
        Some(local) => format!("http://{local}"),
        None => format!("https://127.0.0.1:{}", bound.port()),
    };
    let ticket = state
        .sessions
        .issue_ticket(crate::auth::Principal::Admin, BANNER_LINK_TTL);
    lines.push_str(&format!(
        "aienv: dashboard on this machine: {here}/\n\
         aienv:   signed in as admin, once, within an hour: {here}{}?ticket={ticket}\n\
         aienv:   (later: `aienv open`)\n",
        http::SIGN_IN_PATH
    ));
    let addresses: Vec<String> = if bind.is_unspecified() {
        aienv_actors::discovery::beacon::list_interfaces()
            .into_iter()
            .filter(|i| i.up && !i.loopback)
            .map(|i| format!("https://{}:{}/", i.address, bound.port()))
            .collect()
    } else if bind.is_loopback() {
        Vec::new()
    } else {
        vec![format!("https://{bound}/")]
    };
    if !addresses.is_empty() {
        lines.push_str(&format!(
            "aienv: dashboard from other machines: {} (sign in as a node user: `aienv user add NAME`)\n",
            addresses.join(" ")
        ));
    }
    lines
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut terminate = signal(SignalKind::terminate()).expect("SIGTERM handler installs");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate.recv() => {}
    }
}

fn create_private_dir(path: &std::path::Path) -> Result<(), ServeError> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
        .map_err(|source| ServeError::DataDir {
            path: path.display().to_string(),
            source,
        })
}

/// Gives every error response that is not already JSON (404 from unknown methods, 405, errors
/// raised by actix itself) the API's one error shape.
fn json_error_body<B: MessageBody + 'static>(
    response: ServiceResponse<B>,
) -> actix_web::Result<ErrorHandlerResponse<B>> {
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    // Tools' own answers pass through the proxy untouched.
    let proxied = response.request().path().starts_with("/w/") && !is_json;
    if is_json || proxied || response.status().as_u16() == 101 {
        return Ok(ErrorHandlerResponse::Response(
            response.map_into_left_body(),
        ));
    }
    let status = response.status();
    let code = match status.as_u16() {
        400 => "bad-request",
        404 => "route-not-found",
        405 => "method-not-allowed",
        413 => "body-too-large",
        415 => "unsupported-media-type",
        _ if status.is_server_error() => "internal-error",
        _ => "request-refused",
    };
    let message = status
        .canonical_reason()
        .unwrap_or("request failed")
        .to_lowercase();
    let body = serde_json::json!({"error": {"code": code, "message": message}}).to_string();
    let (request, mut response) = response.into_parts();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    let response = response.set_body(BoxBody::new(body));
    let response: ServiceResponse<EitherBody<B, BoxBody>> =
        ServiceResponse::new(request, response).map_into_right_body();
    Ok(ErrorHandlerResponse::Response(response))
}

/// Writes the node's git credentials where its helper reads them (the data dir, which
/// environments never see) and the `Git` that hands git that helper.
fn git_for_node(
    data_dir: &std::path::Path,
    section: &crate::config::GitSection,
) -> Result<aienv_actors::git::Git, ServeError> {
    let file = data_dir.join("git-credentials.json");
    crate::git_credentials::write_file(&file, &section.credentials).map_err(|source| {
        ServeError::DataDir {
            path: file.display().to_string(),
            source,
        }
    })?;
    let helper = std::env::current_exe().ok().map(|exe| {
        format!(
            "!{} git-credential --file {}",
            aienv_actors::runtime_supervisor::detect::shell_quote(&exe.display().to_string()),
            aienv_actors::runtime_supervisor::detect::shell_quote(&file.display().to_string())
        )
    });
    let mut git = aienv_actors::git::Git::new(helper);
    git.network_timeout = std::time::Duration::from_secs(section.timeout_seconds.max(1));
    Ok(git)
}
