//! What an environment is launched with: its [`LaunchPlan`] — the command of each tool
//! (built-in JupyterLab and code-server lines, or the spec's own), their ports and base paths,
//! the environment's variables, the set-up hash — and the confinement its processes get.

use std::path::PathBuf;
use std::time::Duration;

use crate::model::{EnvironmentSpec, PythonManager, RuntimeKind, SandboxMode, ToolKind};
use crate::workspace_store::WorkspaceEntry;

use super::allocation::Allocation;
use super::backend::{expand, LaunchPlan, ToolPlan};
use super::error::RuntimeError;
use super::{sandbox, RuntimeConfig};

/// What this host offers for confinement, found once at start.
pub(super) struct Confinement {
    /// bubblewrap.
    bwrap: Option<PathBuf>,
    /// With a node running as root: the user to run as, or why there is none.
    run_as: Option<Result<sandbox::RunAs, String>>,
    /// The node user's home (hidden from environments).
    home: Option<PathBuf>,
}

impl Confinement {
    pub(super) fn detect(config: &RuntimeConfig) -> Confinement {
        // SAFETY: geteuid has no preconditions.
        let root = unsafe { libc::geteuid() } == 0;
        let run_as = root.then(|| sandbox::ensure_user(&config.run_as));
        if let Some(Err(error)) = &run_as {
            tracing::warn!(%error, "no user to run environments as; local environments cannot run");
        }
        Confinement {
            bwrap: sandbox::find_bwrap(),
            run_as,
            home: std::env::var_os("HOME")
                .map(PathBuf::from)
                .filter(|home| home.is_absolute() && home.as_path() != std::path::Path::new("/")),
        }
    }
}

/// How the environment's local processes are confined, or why they cannot run.
pub(super) fn sandbox_for(
    config: &RuntimeConfig,
    confinement: &Confinement,
    entry: &WorkspaceEntry,
    name: &str,
    spec: &EnvironmentSpec,
    kind: RuntimeKind,
    state_dir: &std::path::Path,
) -> Result<sandbox::Sandbox, RuntimeError> {
    let workspace = &entry.manifest.name;
    // A clone's content is its source's; a workspace made from a peer's template holds that
    // peer's content too.
    let cloned = entry.foreign_peer();
    let allowed = |w: &String| *w == *workspace || *w == entry.manifest.id.to_string();
    if let (RuntimeKind::Plugin(plugin), Some(origin)) = (kind, cloned) {
        if !config.allow_unsandboxed.iter().any(allowed) {
            return Err(RuntimeError::Sandbox(format!(
                "environment `{name}` of `{workspace}` would run through the runtime plugin `{}`, which the node cannot confine; `{workspace}` came from `{}`, so it runs there only when a local admin adds `{workspace}` to runtime.allow_unsandboxed",
                plugin.as_str(),
                origin
            )));
        }
    }
    if kind == RuntimeKind::Slurm {
        if let Some(origin) = cloned {
            if !config.allow_unsandboxed.iter().any(allowed) {
                return Err(RuntimeError::Sandbox(format!(
                    "environment `{name}` of `{workspace}` would run as a Slurm job, and a Slurm job runs unconfined on its compute node (bubblewrap does not follow it there); `{workspace}` came from `{}`, so it runs on Slurm only when a local admin adds `{workspace}` to runtime.allow_unsandboxed",
                    origin
                )));
            }
        }
    }
    let mut mode = spec.sandbox;
    if mode == SandboxMode::Off {
        if let Some(origin) = cloned {
            if !config.allow_unsandboxed.iter().any(allowed) {
                return Err(RuntimeError::Sandbox(format!(
                    "environment `{name}` of `{workspace}` asks for `sandbox: off`, but `{workspace}` came from `{}`: a workspace from a peer cannot switch its own sandbox off; a local admin can allow it by adding `{workspace}` to runtime.allow_unsandboxed",
                    origin
                )));
            }
        }
    }
    let run_as = match &confinement.run_as {
        None => None,
        Some(Ok(user)) => Some(user.clone()),
        Some(Err(error)) if kind == RuntimeKind::Process => {
            return Err(RuntimeError::Sandbox(format!(
                "the node runs as root and environments never do, but there is no user to run them as: {error} (set runtime.run_as to an existing user)"
            )))
        }
        Some(Err(_)) => None,
    };
    let bwrap = confinement.bwrap.clone();
    if bwrap.is_none() && kind == RuntimeKind::Process {
        let install = "install bubblewrap (Debian: apt-get install bubblewrap)";
        if run_as.is_some() {
            return Err(RuntimeError::Sandbox(format!(
                "the node runs as root and drops environments to `{}` with bubblewrap, which is not installed: {install}",
                config.run_as
            )));
        }
        if mode != SandboxMode::Off {
            if let Some(origin) = cloned {
                return Err(RuntimeError::Sandbox(format!(
                    "`{workspace}` came from `{}` and runs only confined (sandbox: {}), but bubblewrap is not installed: {install}",
                    origin,
                    mode.as_str()
                )));
            }
            mode = SandboxMode::Off;
        }
    }
    let mut hidden = vec![config.data_dir.clone()];
    hidden.extend(confinement.home.clone());
    if mode == SandboxMode::Strict {
        for dir in ["/home", "/root", "/mnt", "/media", "/srv", "/run/user"] {
            if std::path::Path::new(dir).is_dir() {
                hidden.push(PathBuf::from(dir));
            }
        }
    }
    hidden.sort();
    hidden.dedup();
    Ok(sandbox::Sandbox {
        mode,
        bwrap,
        run_as,
        hidden,
        writable: vec![entry.path.clone(), state_dir.to_path_buf()],
        home: state_dir.join("home"),
    })
}

pub(super) fn launch_plan(
    config: &RuntimeConfig,
    confinement: &Confinement,
    entry: &WorkspaceEntry,
    name: &str,
    spec: &EnvironmentSpec,
    kind: RuntimeKind,
    allocation: Allocation,
) -> Result<LaunchPlan, RuntimeError> {
    let variant = spec
        .variants
        .iter()
        .find(|v| Some(&v.name) == allocation.variant.as_ref());
    let mut env = spec.env.clone();
    if let Some(variant) = variant {
        env.extend(variant.env.clone());
    }
    for (key, value) in &allocation.env {
        env.entry(key.clone()).or_insert_with(|| value.clone());
    }
    let mut requirements: Vec<String> = spec
        .python
        .as_ref()
        .map(|p| p.requirements.clone())
        .unwrap_or_default();
    if let Some(variant) = variant {
        requirements.extend(variant.requirements.clone());
    }
    let image = variant
        .and_then(|v| v.image.clone())
        .or_else(|| spec.docker.as_ref().and_then(|d| d.image.clone()));
    let tools = tool_plans(entry, spec, kind)?;
    let state_dir = config.dir.join(entry.manifest.id.to_string()).join(name);
    let sandbox = sandbox_for(config, confinement, entry, name, spec, kind, &state_dir)?;
    Ok(LaunchPlan {
        sandbox,
        node_id: config.node_id,
        workspace_id: entry.manifest.id,
        workspace_name: entry.manifest.name.clone(),
        environment: name.to_string(),
        setup_hash: setup_hash(&entry.path, spec, kind, &allocation, &requirements),
        root: entry.path.clone(),
        state_dir,
        spec: spec.clone(),
        allocation,
        env,
        requirements,
        image,
        tools,
        stop_timeout: Duration::from_secs(spec.restart.stop_timeout_seconds.max(1) as u64),
        workspace_hooks: entry.manifest.hooks.clone(),
        origin: entry
            .origin
            .as_ref()
            .map(|o| format!("{}/{}", o.peer_name, o.workspace_name)),
    })
}

/// Each tool's command line, port and base path: the spec's own command, else the built-in
/// one for its kind, with `$PORT` and `$BASE_PATH` expanded.
fn tool_plans(
    entry: &WorkspaceEntry,
    spec: &EnvironmentSpec,
    kind: RuntimeKind,
) -> Result<Vec<ToolPlan>, RuntimeError> {
    let in_container = kind == RuntimeKind::Docker;
    // A container's or a compute node's tools are reached from outside their host.
    let remote = in_container || kind == RuntimeKind::Slurm;
    let root_inside = if in_container {
        spec.docker
            .as_ref()
            .map_or("/workspace".to_string(), |d| d.workdir.clone())
    } else {
        entry.path.display().to_string()
    };
    let listen = if remote { "0.0.0.0" } else { "127.0.0.1" };
    let mut tools = Vec::new();
    for tool in &spec.tools {
        let port = match tool.port {
            Some(port) => port,
            None if tool.kind == ToolKind::Terminal => 0,
            None => free_port().map_err(|e| RuntimeError::io("finding a free port", e))?,
        };
        let base_path = format!("/w/{}/{}/", entry.manifest.name, tool.name);
        let command: Vec<String> = if !tool.command.is_empty() {
            tool.command.clone()
        } else {
            built_in_command(tool.kind, listen, &root_inside, in_container)
        };
        tools.push(ToolPlan {
            name: tool.name.clone(),
            kind: tool.kind,
            argv: command
                .iter()
                .map(|a| expand(a, port, &base_path))
                .collect(),
            shell: tool.shell,
            port,
            token: (tool.kind == ToolKind::Jupyterlab).then(random_token),
            health_path: tool.path.clone().unwrap_or_default(),
            strip_prefix: tool.strips_prefix(),
            base_path,
        });
    }
    Ok(tools)
}

/// The command of a tool kind that aienv knows how to start (JupyterLab, code-server) when the
/// spec gives none: listening on `listen`, serving `root` under `$BASE_PATH`.
fn built_in_command(kind: ToolKind, listen: &str, root: &str, in_container: bool) -> Vec<String> {
    match kind {
        ToolKind::Jupyterlab => {
            let mut argv: Vec<String> = [
                "jupyter",
                "lab",
                "--no-browser",
                &format!("--ip={listen}"),
                "--port=$PORT",
                "--ServerApp.base_url=$BASE_PATH",
                "--ServerApp.allow_remote_access=True",
                "--ServerApp.trust_xheaders=True",
                &format!("--ServerApp.root_dir={root}"),
            ]
            .map(String::from)
            .to_vec();
            // Local tools never run as root; containers usually do.
            if in_container {
                argv.push("--allow-root".into());
            }
            argv
        }
        ToolKind::Vscode => [
            "code-server",
            &format!("--bind-addr={listen}:$PORT"),
            "--auth=none",
            "--disable-telemetry",
            "--disable-update-check",
            root,
        ]
        .map(String::from)
        .to_vec(),
        _ => Vec::new(),
    }
}

/// A free TCP port on loopback (the kernel's choice; released before the tool binds it).
pub fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind(("127.0.0.1", 0))?
        .local_addr()?
        .port())
}

fn random_token() -> String {
    let mut bytes = [0u8; 24];
    getrandom::fill(&mut bytes).expect("the OS random source works");
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Hash of everything set-up depends on: the spec, the backend, the variant, and the
/// contents of the files set-up reads.
fn setup_hash(
    root: &std::path::Path,
    spec: &EnvironmentSpec,
    kind: RuntimeKind,
    allocation: &Allocation,
    requirements: &[String],
) -> String {
    let mut hasher = blake3::Hasher::new();
    hasher.update(&rmp_serde::to_vec(spec).unwrap_or_default());
    hasher.update(kind.as_str().as_bytes());
    hasher.update(allocation.variant.as_deref().unwrap_or("").as_bytes());
    let mut files: Vec<String> = requirements.to_vec();
    if let Some(python) = &spec.python {
        files.extend(
            python
                .projects
                .iter()
                .map(|p| format!("{p}/pyproject.toml")),
        );
        if python.manager == PythonManager::Conda {
            files.extend(python.conda_file.clone());
        }
    }
    files.extend(spec.scripts.unix.clone());
    if let Some(build) = spec.docker.as_ref().and_then(|d| d.build.clone()) {
        files.push(build);
    }
    for file in files {
        hasher.update(file.as_bytes());
        if let Ok(bytes) = std::fs::read(root.join(&file)) {
            hasher.update(&bytes);
        }
    }
    hasher.finalize().to_hex().to_string()
}
