//! Detection: reads a workspace's project files and proposes an `environment.yaml`.
//!
//! Reads `requirements.txt`, `pyproject.toml`, `environment.yml`, `.python-version`,
//! `.devcontainer/devcontainer.json`, `Dockerfile` and `package.json` in the workspace root
//! and in each project directory, and looks for notebooks. Every read is bounded; nothing is
//! written (the caller shows the proposal before anything is saved).

use std::path::Path;

use crate::model::{
    DockerSpec, EnvironmentSpec, PortSpec, PythonManager, PythonSpec, RuntimeKind, SetupStep,
    ToolKind, ToolSpec,
};

/// Largest project file read.
const MAX_FILE: u64 = 1 << 20;
/// Most directory entries looked at while searching for notebooks.
const MAX_ENTRIES: usize = 20_000;

/// A proposal and what it was made from.
#[derive(Debug, Clone)]
pub struct Detection {
    /// The proposed environment.
    pub spec: EnvironmentSpec,
    /// One line per file read and what it contributed.
    pub findings: Vec<String>,
}

/// Proposes an environment for the workspace at `root` whose projects live in `projects`
/// (workspace-relative directories; the root is always looked at too).
pub fn detect(root: &Path, projects: &[String]) -> Detection {
    let mut spec = EnvironmentSpec::new("proposed by `aienv env detect`");
    spec.runtime = RuntimeKind::Auto;
    let mut findings = Vec::new();
    let mut dirs = vec![String::new()];
    dirs.extend(projects.iter().filter(|p| !p.is_empty()).cloned());
    // Every directory under `projects/` is a project too, listed or not.
    if let Ok(entries) = std::fs::read_dir(root.join("projects")) {
        let mut found: Vec<String> = entries
            .flatten()
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .map(|e| format!("projects/{}", e.file_name().to_string_lossy()))
            .collect();
        found.sort();
        dirs.extend(found);
    }
    let mut seen = std::collections::BTreeSet::new();
    dirs.retain(|d| seen.insert(d.clone()));
    let mut python = PythonSpec {
        version: None,
        manager: PythonManager::Venv,
        requirements: Vec::new(),
        projects: Vec::new(),
        conda_file: None,
    };
    let mut wants_python = false;
    let mut notebook_hint = false;

    for dir in &dirs {
        let rel = |name: &str| {
            if dir.is_empty() {
                name.to_string()
            } else {
                format!("{dir}/{name}")
            }
        };
        let base = root.join(dir);
        if let Some(text) = read_small(&base.join("requirements.txt")) {
            let file = rel("requirements.txt");
            wants_python = true;
            notebook_hint |= mentions_jupyter(&text);
            findings.push(format!(
                "{file}: pip requirements ({} packages)",
                text.lines()
                    .filter(|l| {
                        let l = l.trim();
                        !l.is_empty() && !l.starts_with('#') && !l.starts_with('-')
                    })
                    .count()
            ));
            python.requirements.push(file);
        }
        if let Some(text) = read_small(&base.join("pyproject.toml")) {
            wants_python = true;
            notebook_hint |= mentions_jupyter(&text);
            let name = toml_value(&text, "name").unwrap_or_else(|| "the project".into());
            findings.push(format!(
                "{}: Python project `{name}`, installed with pip",
                rel("pyproject.toml")
            ));
            if python.version.is_none() {
                python.version = toml_value(&text, "requires-python").and_then(|v| min_version(&v));
            }
            python.projects.push(if dir.is_empty() {
                ".".into()
            } else {
                dir.clone()
            });
        }
        for name in ["environment.yml", "environment.yaml"] {
            if let Some(text) = read_small(&base.join(name)) {
                wants_python = true;
                notebook_hint |= mentions_jupyter(&text);
                findings.push(format!("{}: conda environment", rel(name)));
                if python.conda_file.is_none() {
                    python.manager = PythonManager::Conda;
                    python.conda_file = Some(rel(name));
                }
                break;
            }
        }
        if let Some(text) = read_small(&base.join(".python-version")) {
            let version = text.trim().to_string();
            if !version.is_empty() && version.len() < 20 {
                findings.push(format!("{}: Python {version}", rel(".python-version")));
                python.version = Some(version);
            }
        }
        if let Some(text) = read_small(&base.join(".devcontainer/devcontainer.json")) {
            devcontainer(&mut spec, &mut findings, dir, &text);
        } else if base.join("Dockerfile").is_file() && spec.docker.is_none() {
            findings.push(format!(
                "{}: container image built from it",
                rel("Dockerfile")
            ));
            spec.docker = Some(DockerSpec {
                image: None,
                build: Some(rel("Dockerfile")),
                workdir: "/workspace".into(),
                command: Vec::new(),
            });
        }
        if let Some(text) = read_small(&base.join("package.json")) {
            node_project(&mut spec, &mut findings, dir, &base, &text);
        }
    }

    let notebooks = count_notebooks(root);
    if notebooks > 0 {
        findings.push(format!("{notebooks} notebook(s) (.ipynb)"));
    }
    if wants_python || notebooks > 0 {
        spec.python = Some(python);
    }
    if notebooks > 0 || notebook_hint {
        spec.tools.insert(
            0,
            ToolSpec {
                name: "lab".into(),
                kind: ToolKind::Jupyterlab,
                command: Vec::new(),
                shell: false,
                port: None,
                path: None,
                strip_prefix: None,
            },
        );
        if !notebook_hint {
            findings.push(
                "JupyterLab proposed for the notebooks: add `jupyterlab` to the requirements"
                    .into(),
            );
        }
    }
    spec.tools.push(ToolSpec {
        name: "terminal".into(),
        kind: ToolKind::Terminal,
        command: Vec::new(),
        shell: false,
        port: None,
        path: None,
        strip_prefix: None,
    });
    if root.join("scripts/init.sh").is_file() {
        findings.push("scripts/init.sh: run after set-up".into());
        spec.scripts.unix = Some("scripts/init.sh".into());
    }
    if root.join("scripts/init.ps1").is_file() {
        spec.scripts.windows = Some("scripts/init.ps1".into());
    }
    if findings.is_empty() {
        findings.push("no project files found: a plain environment with a terminal".into());
    }
    Detection { spec, findings }
}

fn devcontainer(spec: &mut EnvironmentSpec, findings: &mut Vec<String>, dir: &str, text: &str) {
    let file = if dir.is_empty() {
        ".devcontainer/devcontainer.json".to_string()
    } else {
        format!("{dir}/.devcontainer/devcontainer.json")
    };
    let value: serde_json::Value = match serde_json::from_str(&strip_json_comments(text)) {
        Ok(value) => value,
        Err(error) => {
            findings.push(format!("{file}: not read ({error})"));
            return;
        }
    };
    let mut docker = DockerSpec {
        image: None,
        build: None,
        workdir: value
            .get("workspaceFolder")
            .and_then(|v| v.as_str())
            .filter(|v| v.starts_with('/'))
            .unwrap_or("/workspace")
            .to_string(),
        command: Vec::new(),
    };
    if let Some(image) = value.get("image").and_then(|v| v.as_str()) {
        docker.image = Some(image.to_string());
    }
    let dockerfile = value
        .get("build")
        .and_then(|b| b.get("dockerfile"))
        .or_else(|| value.get("dockerFile"))
        .and_then(|v| v.as_str());
    if let Some(dockerfile) = dockerfile {
        let devcontainer_dir = Path::new(&file).parent().unwrap_or(Path::new(""));
        let path = normalize(&devcontainer_dir.join(dockerfile));
        docker.build = Some(path);
    }
    findings.push(format!(
        "{file}: dev container ({})",
        docker
            .image
            .clone()
            .or_else(|| docker.build.clone().map(|b| format!("built from {b}")))
            .unwrap_or_else(|| "no image".into())
    ));
    if docker.image.is_some() || docker.build.is_some() {
        spec.runtime = RuntimeKind::Docker;
        spec.docker = Some(docker);
    }
    if let Some(ports) = value.get("forwardPorts").and_then(|v| v.as_array()) {
        for port in ports.iter().filter_map(|p| p.as_u64()) {
            if (1..=65535).contains(&port) {
                spec.ports.push(PortSpec {
                    port: port as u16,
                    host: None,
                });
            }
        }
    }
    for key in ["postCreateCommand", "onCreateCommand"] {
        let command = match value.get(key) {
            Some(serde_json::Value::String(command)) => command.clone(),
            Some(serde_json::Value::Array(parts)) => parts
                .iter()
                .filter_map(|p| p.as_str())
                .map(shell_quote)
                .collect::<Vec<_>>()
                .join(" "),
            _ => continue,
        };
        spec.setup.push(SetupStep {
            name: key.to_string(),
            run: command,
        });
    }
    if let Some(env) = value.get("containerEnv").and_then(|v| v.as_object()) {
        for (name, value) in env {
            if let Some(value) = value.as_str() {
                spec.env.insert(name.clone(), value.to_string());
            }
        }
    }
}

fn node_project(
    spec: &mut EnvironmentSpec,
    findings: &mut Vec<String>,
    dir: &str,
    base: &Path,
    text: &str,
) {
    let file = if dir.is_empty() {
        "package.json".to_string()
    } else {
        format!("{dir}/package.json")
    };
    let Ok(value) = serde_json::from_str::<serde_json::Value>(text) else {
        findings.push(format!("{file}: not valid JSON, skipped"));
        return;
    };
    let cd = if dir.is_empty() {
        String::new()
    } else {
        format!("cd {} && ", shell_quote(dir))
    };
    let install = if base.join("package-lock.json").is_file() {
        "npm ci"
    } else {
        "npm install"
    };
    spec.setup.push(SetupStep {
        name: format!("{install} ({file})"),
        run: format!("{cd}{install}"),
    });
    let scripts = value.get("scripts").and_then(|s| s.as_object());
    let script = ["dev", "start", "serve"]
        .into_iter()
        .find(|s| scripts.is_some_and(|all| all.contains_key(*s)));
    findings.push(format!(
        "{file}: Node.js project{}",
        script.map_or(String::new(), |s| format!(", served by `npm run {s}`"))
    ));
    if let Some(script) = script {
        let name = if dir.is_empty() {
            "app".to_string()
        } else {
            dir.rsplit('/').next().unwrap_or("app").to_string()
        };
        let name = if crate::model::is_slug(&name) {
            name
        } else {
            "app".into()
        };
        if spec.tools.iter().all(|t| t.name != name) {
            spec.tools.push(ToolSpec {
                name,
                kind: ToolKind::Http,
                command: vec![format!("{cd}npm run {script}")],
                shell: true,
                port: None,
                path: None,
                strip_prefix: Some(true),
            });
        }
    }
}

fn read_small(path: &Path) -> Option<String> {
    let meta = std::fs::symlink_metadata(path).ok()?;
    if !meta.is_file() || meta.len() > MAX_FILE {
        return None;
    }
    std::fs::read_to_string(path).ok()
}

fn mentions_jupyter(text: &str) -> bool {
    let text = text.to_ascii_lowercase();
    ["jupyterlab", "notebook", "jupyter"]
        .iter()
        .any(|word| text.contains(word))
}

/// `key = "value"` anywhere in a TOML file (good enough for `name` and `requires-python`).
fn toml_value(text: &str, key: &str) -> Option<String> {
    text.lines().find_map(|line| {
        let (k, v) = line.split_once('=')?;
        (k.trim() == key).then(|| v.trim().trim_matches(['"', '\'']).to_string())
    })
}

/// `>=3.10` → `3.10`.
fn min_version(spec: &str) -> Option<String> {
    let start = spec.find(|c: char| c.is_ascii_digit())?;
    let version: String = spec[start..]
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '.')
        .collect();
    (!version.is_empty()).then_some(version)
}

fn count_notebooks(root: &Path) -> usize {
    let mut count = 0;
    let mut seen = 0;
    let mut stack = vec![(root.to_path_buf(), 0)];
    while let Some((dir, depth)) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            seen += 1;
            if seen > MAX_ENTRIES {
                return count;
            }
            let name = entry.file_name();
            let name = name.to_string_lossy();
            let Ok(kind) = entry.file_type() else {
                continue;
            };
            if kind.is_dir() {
                let skip = name.starts_with('.')
                    || matches!(
                        name.as_ref(),
                        "node_modules" | "__pycache__" | "venv" | "data"
                    );
                if !skip && depth < 4 {
                    stack.push((entry.path(), depth + 1));
                }
            } else if kind.is_file() && name.ends_with(".ipynb") {
                count += 1;
            }
        }
    }
    count
}

fn strip_json_comments(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    let mut in_string = false;
    while let Some(c) = chars.next() {
        if in_string {
            out.push(c);
            if c == '\\' {
                if let Some(next) = chars.next() {
                    out.push(next);
                }
            } else if c == '"' {
                in_string = false;
            }
            continue;
        }
        match (c, chars.peek()) {
            ('"', _) => {
                in_string = true;
                out.push(c);
            }
            ('/', Some('/')) => {
                for next in chars.by_ref() {
                    if next == '\n' {
                        out.push('\n');
                        break;
                    }
                }
            }
            ('/', Some('*')) => {
                chars.next();
                let mut last = ' ';
                for next in chars.by_ref() {
                    if last == '*' && next == '/' {
                        break;
                    }
                    last = next;
                }
            }
            _ => out.push(c),
        }
    }
    // Trailing commas, which devcontainer.json allows.
    let mut cleaned = String::with_capacity(out.len());
    let bytes: Vec<char> = out.chars().collect();
    for (index, c) in bytes.iter().enumerate() {
        if *c == ',' {
            let next = bytes[index + 1..].iter().find(|c| !c.is_whitespace());
            if matches!(next, Some('}') | Some(']')) {
                continue;
            }
        }
        cleaned.push(*c);
    }
    cleaned
}

fn normalize(path: &Path) -> String {
    let mut parts: Vec<String> = Vec::new();
    for component in path.components() {
        match component {
            std::path::Component::ParentDir => {
                parts.pop();
            }
            std::path::Component::Normal(part) => parts.push(part.to_string_lossy().into()),
            _ => {}
        }
    }
    parts.join("/")
}

/// Quotes `text` for `sh` when it needs it.
pub fn shell_quote(text: &str) -> String {
    if !text.is_empty()
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:@%+,".contains(c))
    {
        text.to_string()
    } else {
        format!("'{}'", text.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(root: &Path, files: &[(&str, &str)]) {
        for (path, text) in files {
            let path = root.join(path);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, text).unwrap();
        }
    }

    #[test]
    fn notebook_project_gets_jupyterlab() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            &[
                ("projects/main/requirements.txt", "numpy\njupyterlab>=4\n"),
                ("projects/main/analysis.ipynb", "{}"),
            ],
        );
        let found = detect(dir.path(), &["projects/main".into()]);
        let python = found.spec.python.as_ref().unwrap();
        assert_eq!(python.manager, PythonManager::Venv);
        assert_eq!(python.requirements, vec!["projects/main/requirements.txt"]);
        assert_eq!(found.spec.tools[0].kind, ToolKind::Jupyterlab);
        assert_eq!(found.spec.tools.last().unwrap().kind, ToolKind::Terminal);
        assert!(
            found.findings.iter().any(|f| f.contains("2 packages")),
            "{:?}",
            found.findings
        );
        found.spec.validate().unwrap();
    }

    #[test]
    fn pyproject_project_is_installed_with_its_python() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            &[(
                "pyproject.toml",
                "[project]\nname = \"trainer\"\nrequires-python = \">=3.10\"\ndependencies = [\"torch\"]\n",
            )],
        );
        let found = detect(dir.path(), &[]);
        let python = found.spec.python.as_ref().unwrap();
        assert_eq!(python.projects, vec!["."]);
        assert_eq!(python.version.as_deref(), Some("3.10"));
        assert!(found
            .spec
            .tools
            .iter()
            .all(|t| t.kind != ToolKind::Jupyterlab));
        assert!(
            found.findings[0].contains("`trainer`"),
            "{:?}",
            found.findings
        );
        found.spec.validate().unwrap();
    }

    #[test]
    fn conda_project_uses_conda() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            &[(
                "projects/sci/environment.yml",
                "name: sci\ndependencies:\n  - python=3.11\n  - notebook\n",
            )],
        );
        let found = detect(dir.path(), &["projects/sci".into()]);
        let python = found.spec.python.as_ref().unwrap();
        assert_eq!(python.manager, PythonManager::Conda);
        assert_eq!(
            python.conda_file.as_deref(),
            Some("projects/sci/environment.yml")
        );
        assert_eq!(found.spec.tools[0].kind, ToolKind::Jupyterlab);
        found.spec.validate().unwrap();
    }

    #[test]
    fn devcontainer_project_runs_in_docker() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            &[
                (
                    ".devcontainer/devcontainer.json",
                    "{\n  // comment\n  \"name\": \"dev\",\n  \"build\": {\"dockerfile\": \"../Dockerfile\"},\n  \"forwardPorts\": [8000, 6006],\n  \"postCreateCommand\": \"pip install -e .\", /* trailing */\n  \"containerEnv\": {\"MODE\": \"dev\"},\n}\n",
                ),
                ("Dockerfile", "FROM python:3.11\n"),
                ("package.json", "{\"scripts\": {\"dev\": \"vite\"}}"),
            ],
        );
        let found = detect(dir.path(), &[]);
        assert_eq!(found.spec.runtime, RuntimeKind::Docker);
        let docker = found.spec.docker.as_ref().unwrap();
        assert_eq!(docker.build.as_deref(), Some("Dockerfile"));
        assert_eq!(found.spec.ports.len(), 2);
        assert_eq!(found.spec.setup[0].run, "pip install -e .");
        assert_eq!(found.spec.env["MODE"], "dev");
        assert!(found.spec.setup.iter().any(|s| s.run == "npm install"));
        assert!(found.spec.tools.iter().any(|t| t.name == "app" && t.shell));
        found.spec.validate().unwrap();
    }

    #[test]
    fn empty_directory_gets_a_terminal() {
        let dir = tempfile::tempdir().unwrap();
        let found = detect(dir.path(), &[]);
        assert!(found.spec.python.is_none());
        assert_eq!(found.spec.tools.len(), 1);
        assert!(found.findings[0].contains("no project files"));
    }
}
