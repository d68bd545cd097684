//! `hooks` in `workspace.yaml` and `environment.yaml`: commands run at moments of a
//! workspace's life, inside the sandbox its environments get.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::validate::ValidationErrors;

/// Longest hook command.
const MAX_COMMAND: usize = 16 * 1024;
/// Longest a hook may run.
const MAX_TIMEOUT: u64 = 24 * 3600;
/// How long a hook may run unless it says.
pub const DEFAULT_HOOK_TIMEOUT: u64 = 600;

/// The hooks of a workspace or an environment.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Hooks {
    /// After the workspace arrives by clone (workspace.yaml only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub post_clone: Option<HookCommand>,
    /// Before an environment's tools start, every start, after set-up; failing stops the run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pre_run: Option<HookCommand>,
    /// After an environment stopped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub post_stop: Option<HookCommand>,
}

/// One hook: a shell command line per platform.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HookCommand {
    /// Run by `/bin/sh -c` on Linux and macOS, in the workspace directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unix: Option<String>,
    /// Run by PowerShell on Windows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub windows: Option<String>,
    /// Seconds it may run before it is stopped and fails (default 600).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_seconds: Option<u64>,
}

/// When a hook runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HookMoment {
    /// After a clone arrived.
    PostClone,
    /// Before an environment starts.
    PreRun,
    /// After an environment stopped.
    PostStop,
}

impl HookMoment {
    /// Its name in YAML, logs and errors.
    pub fn as_str(self) -> &'static str {
        match self {
            HookMoment::PostClone => "post_clone",
            HookMoment::PreRun => "pre_run",
            HookMoment::PostStop => "post_stop",
        }
    }
}

impl Hooks {
    /// Whether no hook is set.
    pub fn is_empty(&self) -> bool {
        self.post_clone.is_none() && self.pre_run.is_none() && self.post_stop.is_none()
    }

    /// The hook for `moment`, when this platform has a command for it.
    pub fn unix(&self, moment: HookMoment) -> Option<(&str, std::time::Duration)> {
        let hook = match moment {
            HookMoment::PostClone => &self.post_clone,
            HookMoment::PreRun => &self.pre_run,
            HookMoment::PostStop => &self.post_stop,
        }
        .as_ref()?;
        let command = hook.unix.as_deref()?;
        let timeout = hook.timeout_seconds.unwrap_or(DEFAULT_HOOK_TIMEOUT);
        Some((command, std::time::Duration::from_secs(timeout)))
    }

    /// Checks lengths and timeouts; `post_clone` only where `clone_allowed`.
    pub fn validate(&self, errors: &mut ValidationErrors, clone_allowed: bool) {
        for (name, hook) in [
            ("post_clone", &self.post_clone),
            ("pre_run", &self.pre_run),
            ("post_stop", &self.post_stop),
        ] {
            let Some(hook) = hook else { continue };
            if name == "post_clone" && !clone_allowed {
                errors.add(
                    "hooks.post_clone",
                    "belongs in workspace.yaml: a clone arrives as a workspace, before any \
                     environment runs",
                );
            }
            for (platform, command) in [("unix", &hook.unix), ("windows", &hook.windows)] {
                let Some(command) = command else { continue };
                let field = format!("hooks.{name}.{platform}");
                if command.trim().is_empty() {
                    errors.add(field.clone(), "is empty");
                }
                errors.check_len(&field, command, MAX_COMMAND);
            }
            if hook
                .timeout_seconds
                .is_some_and(|t| t == 0 || t > MAX_TIMEOUT)
            {
                errors.add(
                    format!("hooks.{name}.timeout_seconds"),
                    format!("must be 1 to {MAX_TIMEOUT}"),
                );
            }
        }
    }
}
