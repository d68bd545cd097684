//! Errors of the RuntimeSupervisor and its backends.

use crate::workspace_store::StoreError;

/// The supervisor only looks workspaces up: what can go wrong there, in its own terms.
impl From<StoreError> for RuntimeError {
    fn from(error: StoreError) -> RuntimeError {
        match error {
            StoreError::NotFound(name) => RuntimeError::WorkspaceNotFound(name),
            other => RuntimeError::StoreUnavailable(other.to_string()),
        }
    }
}

/// Everything running an environment can fail with.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RuntimeError {
    /// No workspace has this name or id.
    #[error("no workspace named or with id `{0}`")]
    WorkspaceNotFound(String),
    /// The workspace store could not answer.
    #[error("workspace store: {0}")]
    StoreUnavailable(String),
    /// The workspace has no such environment.
    #[error("workspace `{workspace}` has no environment `{name}`{}", list(.known))]
    EnvironmentNotFound {
        /// The workspace.
        workspace: String,
        /// What was asked for.
        name: String,
        /// Its environments.
        known: Vec<String>,
    },
    /// The environment is not running.
    #[error("environment `{0}` is not running: start it with `aienv run`")]
    NotRunning(String),
    /// The workspace has no such tool.
    #[error("`{workspace}` has no tool `{name}`{}", list(.known))]
    ToolNotFound {
        /// The workspace.
        workspace: String,
        /// What was asked for.
        name: String,
        /// Its tools.
        known: Vec<String>,
    },
    /// Even the environment's minimum does not fit on this host.
    #[error("environment `{environment}` does not fit on this host: {reason}")]
    DoesNotFit {
        /// The environment.
        environment: String,
        /// What is missing, with figures.
        reason: String,
    },
    /// A backend this host lacks.
    #[error("the {backend} backend is not available here: {reason}")]
    BackendUnavailable {
        /// The backend.
        backend: &'static str,
        /// Why, with what to install.
        reason: String,
    },
    /// `runtime:` names a plugin this node does not have.
    #[error("{0}")]
    UnknownPlugin(String),
    /// A runtime plugin's call failed (it crashed, hung, printed garbage or said why).
    #[error("runtime plugin `{plugin}` failed at `{op}`: {message}{}", stderr_note(.stderr))]
    Plugin {
        /// The plugin.
        plugin: String,
        /// The call.
        op: String,
        /// What went wrong.
        message: String,
        /// The end of what it printed on stderr.
        stderr: String,
    },
    /// The spec cannot run on the chosen backend.
    #[error("{0}")]
    Unsupported(String),
    /// A set-up step failed.
    #[error("set-up of `{environment}` failed at {step}: {reason} (log: {log})")]
    SetupFailed {
        /// The environment.
        environment: String,
        /// The step.
        step: String,
        /// Exit status or error.
        reason: String,
        /// The log file.
        log: String,
    },
    /// A hook (`pre_run`, `post_stop`, `post_clone`) failed.
    #[error(
        "the {hook} hook of {owner} failed: {reason}; its output ends:\n{output}\n(log: {log})"
    )]
    HookFailed {
        /// `pre_run`, `post_stop` or `post_clone`.
        hook: String,
        /// `workspace `w`` or `environment `e` of `w``.
        owner: String,
        /// Exit status, time-out or error.
        reason: String,
        /// The last lines it printed.
        output: String,
        /// The log file.
        log: String,
    },
    /// Starting failed.
    #[error("starting `{environment}` failed: {reason}")]
    StartFailed {
        /// The environment.
        environment: String,
        /// Why.
        reason: String,
    },
    /// The Docker engine failed.
    #[error("docker: {0}")]
    Docker(String),
    /// libvirt failed.
    #[error("libvirt: {0}")]
    Libvirt(String),
    /// slurmrestd refused or failed a request.
    #[error("slurm: {0}")]
    Slurm(String),
    /// A file or process operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The request is invalid.
    #[error("{0}")]
    BadRequest(String),
    /// The environment cannot run with the confinement it asks for (or must have).
    #[error("{0}")]
    Sandbox(String),
    /// The supervisor is gone (node shutting down).
    #[error("the runtime supervisor is not running")]
    Gone,
}

impl From<crate::fsio::FsError> for RuntimeError {
    fn from(error: crate::fsio::FsError) -> RuntimeError {
        RuntimeError::Io {
            what: format!("{} {}", error.action, error.path.display()),
            source: error.source,
        }
    }
}

impl RuntimeError {
    /// An I/O error with context.
    pub fn io(what: impl Into<String>, source: std::io::Error) -> RuntimeError {
        RuntimeError::Io {
            what: what.into(),
            source,
        }
    }
}

fn list(known: &[String]) -> String {
    if known.is_empty() {
        String::new()
    } else {
        format!(" (it has: {})", known.join(", "))
    }
}

fn stderr_note(stderr: &str) -> String {
    if stderr.is_empty() {
        String::new()
    } else {
        format!("; its stderr ends: {stderr}")
    }
}
