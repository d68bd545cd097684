//! The domain model: the files a workspace is made of, as Rust types.
//!
//! These types are the single source of truth for `workspace.yaml` and `environment.yaml`;
//! the JSON Schemas in `schemas/` are generated from them (derive `JsonSchema`).

pub mod command;
mod environment;
mod hooks;
mod template;
mod validate;
mod workspace;

pub use environment::{
    ByteSize, DockerSpec, EnvironmentSpec, HealthSpec, LibvirtSpec, PluginName, PortSpec,
    PythonManager, PythonSpec, ResourceWants, RestartPolicy, RestartSpec, RuntimeKind, SandboxMode,
    SetupScripts, SetupStep, ToolKind, ToolSpec, VariantRequires, VariantSpec, VolumeSpec, Want,
    ENVIRONMENT_FILE, ENVIRONMENT_SCHEMA_VERSION,
};
pub use hooks::{HookCommand, HookMoment, Hooks, DEFAULT_HOOK_TIMEOUT};
pub use template::{substitute, valid_value, TemplateParameter, TemplateSpec};
pub use validate::{is_slug, validate_relative_path, FieldError, ValidationErrors, MAX_SLUG_LEN};
pub use workspace::{
    GitSource, Project, Sharing, SharingMode, WorkspaceKind, WorkspaceManifest, WORKSPACE_FILE,
    WORKSPACE_SCHEMA_VERSION,
};
