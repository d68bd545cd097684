//! `environments/<name>/environment.yaml`: how one environment of a workspace is set up and
//! which tools it offers. The runtime issue extends this with resources and variants.

use std::collections::{BTreeMap, BTreeSet};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::validate::{validate_relative_path, ValidationErrors};

/// File name of an environment spec inside `environments/<name>/`.
pub const ENVIRONMENT_FILE: &str = "environment.yaml";
/// The `schema_version` this build writes and reads.
pub const ENVIRONMENT_SCHEMA_VERSION: u32 = 1;

/// The contents of `environment.yaml`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "aienv environment.yaml")]
pub struct EnvironmentSpec {
    /// Format version of this file; this build understands 1.
    pub schema_version: u32,
    /// What the environment is for.
    #[serde(default)]
    pub description: String,
    /// Where the environment runs.
    #[serde(default)]
    pub runtime: RuntimeKind,
    /// The Python environment, when there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub python: Option<PythonSpec>,
    /// Ordered set-up steps, run once and again when this spec changes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub setup: Vec<SetupStep>,
    /// Environment variables for setup and tools.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// Tools the environment offers in the browser.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tools: Vec<ToolSpec>,
    /// Start the environment when the node starts.
    #[serde(default)]
    pub autostart: bool,
}

/// Where an environment runs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum RuntimeKind {
    /// Chosen by the node from what the host offers.
    #[default]
    Auto,
    /// Local processes.
    Process,
    /// A Docker container.
    Docker,
    /// A libvirt virtual machine.
    Libvirt,
}

/// A Python environment managed by aienv.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PythonSpec {
    /// Interpreter version wanted (`3.11`), when it matters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// Which tool builds the environment.
    #[serde(default)]
    pub manager: PythonManager,
    /// Requirement files, workspace-relative.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub requirements: Vec<String>,
    /// A conda `environment.yml`, workspace-relative.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conda_file: Option<String>,
}

/// Python environment managers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum PythonManager {
    /// `python -m venv` and pip.
    #[default]
    Venv,
    /// conda or mamba.
    Conda,
}

/// One set-up step.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SetupStep {
    /// Label shown in progress output.
    pub name: String,
    /// Command line, run by `sh -c` in the workspace root.
    pub run: String,
}

/// A tool offered in the browser.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ToolSpec {
    /// Tool name (slug), part of its URL.
    pub name: String,
    /// What the tool is.
    pub kind: ToolKind,
    /// Command and arguments; `$PORT` and `$BASE_PATH` are expanded.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub command: Vec<String>,
    /// Fixed port, when the tool cannot take one from `$PORT`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// Path to open below the tool's URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
}

/// Kinds of browser tools.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ToolKind {
    /// JupyterLab.
    Jupyterlab,
    /// VS Code in the browser (code-server).
    Vscode,
    /// The node's own terminal.
    Terminal,
    /// Any HTTP application.
    Http,
}

impl EnvironmentSpec {
    /// An empty spec of the current version.
    pub fn new(description: &str) -> EnvironmentSpec {
        EnvironmentSpec {
            schema_version: ENVIRONMENT_SCHEMA_VERSION,
            description: description.to_string(),
            runtime: RuntimeKind::Auto,
            python: None,
            setup: Vec::new(),
            env: BTreeMap::new(),
            tools: Vec::new(),
            autostart: false,
        }
    }

    /// Checks everything serde cannot: names, paths, ports, uniqueness.
    pub fn validate(&self) -> Result<(), ValidationErrors> {
        let mut errors = ValidationErrors::default();
        if self.schema_version != ENVIRONMENT_SCHEMA_VERSION {
            errors.add(
                "schema_version",
                format!(
                    "version {} is not supported; this aienv reads version {ENVIRONMENT_SCHEMA_VERSION}",
                    self.schema_version
                ),
            );
        }
        errors.check_len("description", &self.description, 10_000);
        if let Some(python) = &self.python {
            for (index, file) in python.requirements.iter().enumerate() {
                if let Err(message) = validate_relative_path(file) {
                    errors.add(format!("python.requirements[{index}]"), message);
                }
            }
            if let Some(file) = &python.conda_file {
                if let Err(message) = validate_relative_path(file) {
                    errors.add("python.conda_file", message);
                }
            }
        }
        for (index, step) in self.setup.iter().enumerate() {
            if step.run.trim().is_empty() {
                errors.add(format!("setup[{index}].run"), "is empty");
            }
        }
        for name in self.env.keys() {
            let valid = !name.is_empty()
                && !name.starts_with(|c: char| c.is_ascii_digit())
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !valid {
                errors.add(format!("env.{name}"), "is not a valid variable name");
            }
        }
        let mut names = BTreeSet::new();
        for (index, tool) in self.tools.iter().enumerate() {
            errors.check_slug(&format!("tools[{index}].name"), &tool.name);
            if !names.insert(&tool.name) {
                errors.add(
                    format!("tools[{index}].name"),
                    format!("`{}` is listed twice", tool.name),
                );
            }
            if tool.port == Some(0) {
                errors.add(
                    format!("tools[{index}].port"),
                    "must be between 1 and 65535",
                );
            }
            if tool.kind == ToolKind::Http && tool.command.is_empty() {
                errors.add(
                    format!("tools[{index}].command"),
                    "an http tool needs a command to start it",
                );
            }
        }
        errors.into_result()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::yaml;
    use std::path::Path;

    #[test]
    fn parse_and_validate() {
        let text = "schema_version: 1
runtime: process
python: {version: '3.11', requirements: [projects/main/requirements.txt]}
setup: [{name: deps, run: pip install -r requirements.txt}]
env: {OMP_NUM_THREADS: '4'}
tools:
  - {name: lab, kind: jupyterlab, command: [jupyter, lab, --port, $PORT]}
";
        let spec: EnvironmentSpec = yaml::from_str(text, Path::new("environment.yaml")).unwrap();
        spec.validate().unwrap();
        assert_eq!(spec.runtime, RuntimeKind::Process);

        let bad = text.replace("kind: jupyterlab", "kind: emacs");
        let error = yaml::from_str::<EnvironmentSpec>(&bad, Path::new("environment.yaml"))
            .unwrap_err()
            .to_string();
        assert!(error.contains("tools[0].kind"), "{error}");

        let mut spec = spec;
        spec.tools.push(spec.tools[0].clone());
        spec.env.insert("1BAD".into(), String::new());
        let error = spec.validate().unwrap_err().to_string();
        assert!(
            error.contains("tools[1].name") && error.contains("env.1BAD"),
            "{error}"
        );
    }
}
