//! Built-in workspace templates: starting files, environments and metadata.

use std::collections::BTreeMap;

use crate::model::{
    EnvironmentSpec, Project, PythonManager, PythonSpec, ToolKind, ToolSpec, WorkspaceKind,
    WorkspaceManifest,
};

/// A template's contribution to a new workspace.
pub struct Template {
    /// Files to create, workspace-relative.
    pub files: Vec<(&'static str, &'static str)>,
    /// Environments to create.
    pub environments: BTreeMap<String, EnvironmentSpec>,
}

/// Names of the built-in templates, for help texts and errors.
pub const TEMPLATE_NAMES: [&str; 3] = ["empty", "python", "notebook"];

/// Applies template `name` to `manifest` and returns what it adds, or `None` when unknown.
pub fn apply(name: &str, manifest: &mut WorkspaceManifest) -> Option<Template> {
    let mut environments = BTreeMap::new();
    let files = match name {
        "empty" => Vec::new(),
        "python" | "notebook" => {
            let notebook = name == "notebook";
            let mut spec = EnvironmentSpec::new("Python virtual environment for projects/main");
            spec.python = Some(PythonSpec {
                projects: Vec::new(),
                version: None,
                manager: PythonManager::Venv,
                requirements: vec!["projects/main/requirements.txt".into()],
                conda_file: None,
            });
            // The node builds the venv from `python` (outside the workspace, sized to the
            // host it runs on), then runs `scripts/init.sh`.
            spec.scripts.unix = Some("scripts/init.sh".into());
            spec.tools.push(ToolSpec {
                shell: false,
                strip_prefix: None,
                name: "terminal".into(),
                kind: ToolKind::Terminal,
                command: Vec::new(),
                port: None,
                path: None,
            });
            if notebook {
                spec.tools.push(ToolSpec {
                    shell: false,
                    strip_prefix: None,
                    name: "lab".into(),
                    kind: ToolKind::Jupyterlab,
                    command: Vec::new(),
                    port: None,
                    path: None,
                });
            }
            environments.insert("default".to_string(), spec);
            manifest.projects.push(Project {
                name: "main".into(),
                path: "projects/main".into(),
                git: None,
            });
            push_unique(&mut manifest.languages, "python");
            if notebook {
                push_unique(&mut manifest.tools, "jupyterlab");
                if manifest.kind == WorkspaceKind::General {
                    manifest.kind = WorkspaceKind::Notebook;
                }
                vec![
                    ("projects/main/requirements.txt", "jupyterlab\n"),
                    (
                        "projects/main/README.md",
                        "# main\n\nNotebooks live here.\n",
                    ),
                    (
                        "scripts/init.sh",
                        "#!/bin/sh\n# Runs once after the workspace is set up.\n",
                    ),
                ]
            } else {
                vec![
                    ("projects/main/requirements.txt", ""),
                    ("projects/main/main.py", "print(\"hello from aienv\")\n"),
                    (
                        "scripts/init.sh",
                        "#!/bin/sh\n# Runs once after the workspace is set up.\n",
                    ),
                ]
            }
        }
        _ => return None,
    };
    Some(Template {
        files,
        environments,
    })
}

fn push_unique(list: &mut Vec<String>, value: &str) {
    if !list.iter().any(|v| v == value) {
        list.push(value.to_string());
    }
}
