//! A command run headless in an environment (a CI run): set the environment up as a start
//! would, then run the command where its set-up runs — the process sandbox, or a container of
//! its image — with its output in a log, and report how it ended. No tool starts, and the
//! environment's `pre_run`/`post_stop` hooks do not run (they belong to starts and stops).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use actix::prelude::*;

use crate::model::RuntimeKind;

use super::hooks::Finished;
use super::{allocation, plan, select_environments, RuntimeError, RuntimeSupervisor};

/// Runs `command` (a shell command line) in an environment of `workspace`.
#[derive(Message)]
#[rtype(result = "Result<CommandOutcome, RuntimeError>")]
pub struct RunCommand {
    /// Workspace name or id.
    pub workspace: String,
    /// Environment (`None`: the workspace's first).
    pub environment: Option<String>,
    /// The shell command line.
    pub command: String,
    /// Where its output (and the set-up's) goes.
    pub log: PathBuf,
    /// How long the command may run.
    pub timeout: Duration,
    /// Variables beside the environment's own.
    pub vars: Vec<(String, String)>,
    /// A run for a peer: sized within the lending limits, beside what peers already hold.
    pub borrower: Option<super::Borrower>,
}

/// How a command run went.
#[derive(Debug, Clone)]
pub struct CommandOutcome {
    /// The environment it ran in.
    pub environment: String,
    /// Where it ran (`process`, `docker`, ...).
    pub backend: RuntimeKind,
    /// How the command ended.
    pub finished: Finished,
    /// Seconds spent setting the environment up.
    pub setup_seconds: f64,
    /// Seconds the command ran.
    pub command_seconds: f64,
    /// What the person should know (sizing, set-up notes).
    pub notes: Vec<String>,
}

/// A headless command ended: its allocation is free again.
#[derive(Message)]
#[rtype(result = "()")]
struct CommandDone(u64);

impl Handler<CommandDone> for RuntimeSupervisor {
    type Result = ();

    fn handle(&mut self, CommandDone(id): CommandDone, _: &mut Self::Context) {
        self.commands.remove(&id);
    }
}

impl Handler<RunCommand> for RuntimeSupervisor {
    type Result = ResponseFuture<Result<CommandOutcome, RuntimeError>>;

    fn handle(&mut self, message: RunCommand, ctx: &mut Self::Context) -> Self::Result {
        let prepared = (|| {
            let entry = self.store.get(&message.workspace)?;
            let names = select_environments(&entry, message.environment.as_deref())?;
            let Some(name) = names.into_iter().next() else {
                return Err(RuntimeError::BadRequest(format!(
                    "workspace `{}` has no environments: add one (`aienv env detect {}` proposes one)",
                    entry.manifest.name, entry.manifest.name
                )));
            };
            let spec = entry.environments[&name].clone();
            // A VM or a Slurm job is not where a headless command runs: the process sandbox
            // on this node is.
            let kind = match Self::choose_backend(&spec, None) {
                RuntimeKind::Docker => RuntimeKind::Docker,
                _ => RuntimeKind::Process,
            };
            let backend = self.backend(kind)?;
            if self.host.cpu_cores == 0 {
                self.host = crate::resources::detect(&self.config.data_dir);
            }
            let none = super::EnvKey {
                workspace: uuid::Uuid::nil(),
                environment: String::new(),
            };
            let allocation = match &message.borrower {
                Some(_) => super::lending::fit(
                    &name,
                    &spec,
                    &self.host,
                    &self.held(&none),
                    &self.config.lend,
                    &self.lent(&none),
                ),
                None => allocation::allocate(&name, &spec, &self.host, &self.held(&none)),
            }
            .map_err(|reason| RuntimeError::DoesNotFit {
                environment: name.clone(),
                reason,
            })?;
            let plan = plan::launch_plan(
                &self.config,
                &self.confinement,
                &entry,
                &name,
                &spec,
                kind,
                allocation,
            )?;
            Ok((name, kind, backend, plan))
        })();
        // What the command holds counts against later starts (and, for a peer's, against
        // the lending limits) until it ends.
        let held = prepared.as_ref().ok().map(|(_, _, _, plan)| {
            self.next_run += 1;
            self.commands.insert(
                self.next_run,
                (plan.allocation.clone(), message.borrower.is_some()),
            );
            self.next_run
        });
        let supervisor = ctx.address();
        Box::pin(async move {
            let result = run_prepared(prepared, message).await;
            if let Some(id) = held {
                supervisor.do_send(CommandDone(id));
            }
            result
        })
    }
}

/// The environment's name, backend kind and backend, and the plan a command runs under.
type Prepared = (
    String,
    RuntimeKind,
    std::rc::Rc<dyn super::backend::Backend>,
    super::backend::LaunchPlan,
);

async fn run_prepared(
    prepared: Result<Prepared, RuntimeError>,
    message: RunCommand,
) -> Result<CommandOutcome, RuntimeError> {
    let (name, kind, backend, plan) = prepared?;
    let mut notes = plan.allocation.notes.clone();
    let before = std::fs::metadata(plan.setup_log()).map_or(0, |m| m.len());
    let started = Instant::now();
    let prepared = backend.prepare(&plan).await;
    let setup_seconds = started.elapsed().as_secs_f64();
    // The run's log tells all: what set-up wrote this time goes in too.
    if let Ok(setup) = std::fs::read(plan.setup_log()) {
        let from = (before as usize).min(setup.len());
        super::logs::append(&message.log, &String::from_utf8_lossy(&setup[from..]));
    }
    notes.extend(prepared?);
    let started = Instant::now();
    let finished = backend
        .run_command(
            &plan,
            "command",
            &message.command,
            &message.vars,
            &message.log,
            message.timeout,
        )
        .await?;
    Ok(CommandOutcome {
        environment: name,
        backend: kind,
        finished,
        setup_seconds,
        command_seconds: started.elapsed().as_secs_f64(),
        notes,
    })
}
