//! CI runs on the wire: `POST /ci/runs`, `GET /ci/runs`, webhook answers, events.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use aienv_actors::ci::{CiRun, JunitReport};

/// `POST /api/v1/ci/runs`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CiRunRequest {
    /// Workspace name or id.
    pub workspace: String,
    /// Environment (default: the workspace's first).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub environment: Option<String>,
    /// The command's argument vector.
    pub command: Vec<String>,
    /// Pull the workspace's git projects first (fast-forward only).
    #[serde(default)]
    pub pull: bool,
    /// Seconds the command may run (default 3600, at most 86400).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_seconds: Option<u64>,
    /// Run it on a trusted peer: its name or id, or `best` (the placement rule's choice).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on: Option<String>,
}

/// `POST /cluster/ci` (peers only): run a command for the asking peer, in its workspace.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerCiRequest {
    /// The asker's workspace id (cloned from it, or the clone here synced).
    pub workspace_id: Uuid,
    /// Its name (the clone's name here).
    pub workspace_name: String,
    /// Environment (default: the workspace's first).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub environment: Option<String>,
    /// The command's argument vector.
    pub command: Vec<String>,
    /// Pull the git projects first.
    #[serde(default)]
    pub pull: bool,
    /// Seconds the command may run.
    pub timeout_seconds: u64,
    /// Who asked, on the asking node.
    pub user: String,
}

/// A CI run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CiRunDto {
    /// Id.
    pub id: Uuid,
    /// Its number on this node.
    pub number: u64,
    /// Workspace id.
    pub workspace_id: Uuid,
    /// Workspace name.
    pub workspace: String,
    /// Environment (once it ran: the one used).
    pub environment: Option<String>,
    /// The command.
    pub command: Vec<String>,
    /// Whether git projects are pulled first.
    pub pull: bool,
    /// Seconds the command may run.
    pub timeout_seconds: u64,
    /// User, or `hook:<name>`.
    pub by: String,
    /// The webhook that started it.
    pub hook: Option<String>,
    /// The forge's event.
    pub event: Option<String>,
    /// The forge's delivery id.
    pub delivery: Option<String>,
    /// `queued`, `pulling`, `running`, `passed`, `failed`, `error`.
    pub state: String,
    /// The command's exit code.
    pub exit_code: Option<i32>,
    /// How the command ended.
    pub reason: Option<String>,
    /// Why the run did not get to its command.
    pub error: Option<String>,
    /// Where it ran.
    pub backend: Option<String>,
    /// Notes.
    pub notes: Vec<String>,
    /// Seconds per phase.
    pub timings: BTreeMap<String, f64>,
    /// JUnit reports the command wrote.
    pub junit: Vec<JunitDto>,
    /// The log: `GET /api/v1/ci/runs/{id}/log`.
    pub log_url: String,
    /// When asked for.
    pub created: DateTime<Utc>,
    /// When started.
    pub started: Option<DateTime<Utc>>,
    /// When finished.
    pub finished: Option<DateTime<Utc>>,
    /// The trusted peer it runs on (`on`); its log and reports are copied here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer: Option<String>,
    /// The run's id on that peer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote_run: Option<Uuid>,
    /// The peer it runs for (this node lends).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub for_peer: Option<String>,
}

/// A JUnit report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JunitDto {
    /// Workspace-relative path.
    pub path: String,
    /// Tests.
    pub tests: u64,
    /// Failures.
    pub failures: u64,
    /// Errors.
    pub errors: u64,
    /// Skipped.
    pub skipped: u64,
}

impl From<&JunitReport> for JunitDto {
    fn from(report: &JunitReport) -> JunitDto {
        JunitDto {
            path: report.path.clone(),
            tests: report.tests,
            failures: report.failures,
            errors: report.errors,
            skipped: report.skipped,
        }
    }
}

impl From<&CiRun> for CiRunDto {
    fn from(run: &CiRun) -> CiRunDto {
        CiRunDto {
            id: run.id,
            number: run.number,
            workspace_id: run.workspace_id,
            workspace: run.workspace.clone(),
            environment: run.environment.clone(),
            command: run.command.clone(),
            pull: run.pull,
            timeout_seconds: run.timeout_seconds,
            by: run.trigger.by.clone(),
            hook: run.trigger.hook.clone(),
            event: run.trigger.event.clone(),
            delivery: run.trigger.delivery.clone(),
            state: run.state.as_str().to_string(),
            exit_code: run.exit_code,
            reason: run.reason.clone(),
            error: run.error.clone(),
            backend: run.backend.clone(),
            notes: run.notes.clone(),
            timings: run.timings.clone(),
            junit: run.junit.iter().map(JunitDto::from).collect(),
            log_url: format!("/api/v1/ci/runs/{}/log", run.id),
            created: run.created,
            started: run.started,
            finished: run.finished,
            peer: run.peer.as_ref().map(|p| p.name.clone()),
            remote_run: run.remote_run,
            for_peer: run.borrower.as_ref().map(|b| b.peer_name.clone()),
        }
    }
}

/// The answer to a webhook delivery.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HookAnswer {
    /// The run it started (or, for a repeated delivery, started before); absent when the
    /// delivery started nothing (a ping, another branch).
    pub run_id: Option<Uuid>,
    /// Its number.
    pub number: Option<u64>,
    /// Whether the delivery had been seen before.
    pub duplicate: bool,
    /// Why nothing started, when nothing did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ignored: Option<String>,
}
