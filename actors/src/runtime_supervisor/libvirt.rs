//! The `libvirt` backend (cargo feature `libvirt`): one domain per environment, defined from
//! the environment (vCPUs and memory from the allocation, the disk image, the network, a
//! serial console), started, stopped (ACPI shutdown, then destroy after the grace time) and
//! undefined. libvirt calls block, so each runs on the blocking pool; the connection is kept
//! for the life of the domain (`test:///default` keeps its state per connection).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::future::LocalBoxFuture;
use futures_util::FutureExt;
use tokio::sync::mpsc;
use virt::connect::Connect;
use virt::domain::{Domain, DomainState};

use crate::model::RuntimeKind;

use super::backend::{Backend, Exit, Instance, LaunchPlan, Launched};
use super::terminal::{TerminalInput, TerminalTarget};
use super::RuntimeError;

/// `VIR_STREAM_NONBLOCK` (libvirt-stream.h); `virt` does not re-export its sys crate.
const VIR_STREAM_NONBLOCK: u32 = 1;
/// `VIR_DOMAIN_CONSOLE_FORCE` (libvirt-domain.h): take the console from another client.
const VIR_DOMAIN_CONSOLE_FORCE: u32 = 1;

/// The libvirt backend.
pub struct LibvirtBackend {
    default_uri: String,
}

impl LibvirtBackend {
    /// A backend connecting to `default_uri` unless an environment names another.
    pub fn new(default_uri: &str) -> LibvirtBackend {
        LibvirtBackend {
            default_uri: default_uri.to_string(),
        }
    }

    fn uri(&self, plan: &LaunchPlan) -> String {
        plan.spec
            .libvirt
            .as_ref()
            .and_then(|vm| vm.uri.clone())
            .unwrap_or_else(|| self.default_uri.clone())
    }
}

fn error(error: virt::error::Error) -> RuntimeError {
    RuntimeError::Libvirt(error.to_string())
}

async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, RuntimeError> + Send + 'static,
) -> Result<T, RuntimeError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| RuntimeError::Libvirt(e.to_string()))?
}

/// libvirt's default event loop, run on a thread of its own: remote connections deliver
/// stream data (the serial console) only through it. Registered once, before the first
/// connection; libvirt's own printing of errors to stderr is turned off at the same time
/// (every error is reported by the caller instead).
fn ensure_event_loop() {
    static START: std::sync::Once = std::sync::Once::new();
    START.call_once(|| {
        virt::error::clear_error_callback();
        if let Err(error) = virt::event::event_register_default_impl() {
            tracing::warn!(%error, "libvirt event loop unavailable; consoles will be silent");
            return;
        }
        let _ = std::thread::Builder::new()
            .name("aienv-libvirt-events".into())
            .spawn(|| loop {
                if virt::event::event_run_default_impl().is_err() {
                    std::thread::sleep(Duration::from_millis(100));
                }
            });
    });
}

fn open(uri: &str) -> Result<Connect, RuntimeError> {
    ensure_event_loop();
    Connect::open(Some(uri)).map_err(|e| RuntimeError::BackendUnavailable {
        backend: "libvirt",
        reason: format!(
            "cannot connect to {uri} ({e}); install libvirt (Debian: `apt install libvirt-daemon-system`) and start it (`systemctl start libvirtd`, or `virtlogd -d; libvirtd -d` without a service manager)"
        ),
    })
}

/// The domain's name for an environment.
pub fn domain_name(plan: &LaunchPlan) -> String {
    format!(
        "aienv-{}-{}",
        &plan.workspace_id.simple().to_string()[..12],
        plan.environment
    )
}

/// The domain XML for `plan` on a connection to `uri`.
pub fn domain_xml(plan: &LaunchPlan, uri: &str) -> String {
    let vm = plan.spec.libvirt.clone().unwrap_or_default();
    let kind = vm.domain_type.clone().unwrap_or_else(|| {
        if uri.starts_with("test:") {
            "test".into()
        } else if std::path::Path::new("/dev/kvm").exists() {
            "kvm".into()
        } else {
            "qemu".into()
        }
    });
    let memory_kib = plan.allocation.memory.unwrap_or(256 << 20) / 1024;
    let vcpus = plan.allocation.cpus.map_or(1, |c| c.ceil().max(1.0) as u32);
    let mut devices = String::new();
    if let Some(disk) = &vm.disk {
        let path = plan.root.join(disk);
        let format = if disk.ends_with(".qcow2") {
            "qcow2"
        } else {
            "raw"
        };
        devices.push_str(&format!(
            "<disk type='file' device='disk'><driver name='qemu' type='{format}'/><source file='{}'/><target dev='vda' bus='virtio'/></disk>",
            xml_escape(&path.display().to_string())
        ));
    }
    if let Some(network) = &vm.network {
        devices.push_str(&format!(
            "<interface type='network'><source network='{}'/><model type='virtio'/></interface>",
            xml_escape(network)
        ));
    }
    devices.push_str("<serial type='pty'><target port='0'/></serial><console type='pty'><target type='serial' port='0'/></console>");
    format!(
        "<domain type='{kind}'><name>{}</name><description>aienv environment {}/{}</description><memory unit='KiB'>{memory_kib}</memory><vcpu>{vcpus}</vcpu><os><type arch='{}'>hvm</type><boot dev='hd'/><bios useserial='yes' rebootTimeout='0'/></os><features><acpi/></features><on_poweroff>destroy</on_poweroff><on_crash>destroy</on_crash><devices>{devices}</devices></domain>",
        xml_escape(&domain_name(plan)),
        xml_escape(&plan.workspace_name),
        xml_escape(&plan.environment),
        std::env::consts::ARCH,
    )
}

fn xml_escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('\'', "&apos;")
        .replace('"', "&quot;")
}

impl Backend for LibvirtBackend {
    fn kind(&self) -> RuntimeKind {
        RuntimeKind::Libvirt
    }

    fn prepare<'a>(
        &'a self,
        plan: &'a LaunchPlan,
    ) -> LocalBoxFuture<'a, Result<Vec<String>, RuntimeError>> {
        async move {
            let mut notes = Vec::new();
            if !plan.spec.setup.is_empty() || plan.spec.python.is_some() {
                notes.push("set-up steps and Python environments run inside the VM's own OS; aienv does not run them for libvirt".into());
            }
            if plan.tools.iter().any(|t| t.runs()) {
                notes.push("tools inside a VM are not proxied: the node does not know the guest's address".into());
            }
            Ok(notes)
        }
        .boxed_local()
    }

    fn launch<'a>(
        &'a self,
        plan: &'a LaunchPlan,
        _progress: &'a dyn Fn(super::backend::Progress),
    ) -> LocalBoxFuture<'a, Result<Launched, RuntimeError>> {
        let uri = self.uri(plan);
        let xml = domain_xml(plan, &uri);
        let name = domain_name(plan);
        let environment = plan.environment.clone();
        let unavailable = plan
            .tools
            .iter()
            .filter(|t| t.runs())
            .map(|t| super::backend::Unavailable {
                tool: t.name.clone(),
                hint: "tools inside a libvirt VM are not proxied; use the VM's console".into(),
            })
            .collect();
        async move {
            let connection = {
                let (uri, name, xml) = (uri.clone(), name.clone(), xml.clone());
                blocking(move || {
                    let connection = open(&uri)?;
                    // A domain left by an earlier run of this node goes first.
                    if let Ok(old) = connection.lookup_domain_by_name(&name) {
                        let _ = old.destroy();
                        let _ = old.undefine();
                    }
                    let domain = connection.define_domain_xml(&xml).map_err(|e| {
                        RuntimeError::StartFailed {
                            environment: environment.clone(),
                            reason: format!("defining domain {name}: {e}"),
                        }
                    })?;
                    if let Err(e) = domain.create() {
                        let _ = domain.undefine();
                        return Err(RuntimeError::StartFailed {
                            environment,
                            reason: format!("starting domain {name}: {e}"),
                        });
                    }
                    Ok(SendConnect(connection))
                })
                .await?
            };
            tracing::info!(domain = %name, %uri, "domain started");
            Ok(Launched {
                instance: Box::new(LibvirtInstance {
                    connection: Arc::new(Mutex::new(connection)),
                    name,
                    uri,
                }),
                unavailable,
                pids: Default::default(),
            })
        }
        .boxed_local()
    }
}

struct SendConnect(Connect);

struct LibvirtInstance {
    connection: Arc<Mutex<SendConnect>>,
    name: String,
    uri: String,
}

impl LibvirtInstance {
    async fn with_domain<T: Send + 'static>(
        &self,
        work: impl FnOnce(&Domain) -> Result<T, RuntimeError> + Send + 'static,
    ) -> Result<T, RuntimeError> {
        let connection = self.connection.clone();
        let name = self.name.clone();
        blocking(move || {
            let connection = connection.lock().expect("libvirt connection lock");
            let domain = connection.0.lookup_domain_by_name(&name).map_err(error)?;
            work(&domain)
        })
        .await
    }
}

/// The state of a domain, as a word.
pub fn state_of(domain: &Domain) -> Result<DomainState, RuntimeError> {
    match domain.state().map_err(error)?.0 {
        virt::enumutil::Enum::Known(state) => Ok(state),
        virt::enumutil::Enum::Unknown(_) => Ok(DomainState::NoState),
    }
}

impl Instance for LibvirtInstance {
    fn describe(&self) -> String {
        format!("domain {} on {}", self.name, self.uri)
    }

    fn terminal(&self) -> TerminalTarget {
        TerminalTarget::Console {
            uri: self.uri.clone(),
            domain: self.name.clone(),
        }
    }

    fn next_exit(&mut self) -> LocalBoxFuture<'_, Exit> {
        async move {
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                let state = self.with_domain(state_of).await;
                match state {
                    Ok(DomainState::Running | DomainState::Blocked | DomainState::Paused) => {}
                    Ok(other) => {
                        return Exit {
                            tool: None,
                            code: None,
                            detail: format!("domain is {other:?}"),
                        }
                    }
                    Err(e) => {
                        return Exit {
                            tool: None,
                            code: None,
                            detail: e.to_string(),
                        }
                    }
                }
            }
        }
        .boxed_local()
    }

    fn restart<'a>(
        &'a mut self,
        _: Option<&'a str>,
    ) -> LocalBoxFuture<'a, Result<Option<u32>, RuntimeError>> {
        async move {
            self.with_domain(|d| {
                if d.is_active().unwrap_or(false) {
                    d.destroy().map_err(error)?;
                }
                d.create().map_err(error)
            })
            .await?;
            Ok(None)
        }
        .boxed_local()
    }

    fn stop(self: Box<Self>, grace: Duration) -> LocalBoxFuture<'static, Result<(), RuntimeError>> {
        async move {
            let _ = self
                .with_domain(|d| {
                    if d.is_active().unwrap_or(false) {
                        // An OS that ignores ACPI is destroyed after the grace time.
                        let _ = d.shutdown();
                    }
                    Ok(())
                })
                .await;
            let deadline = tokio::time::Instant::now() + grace;
            while tokio::time::Instant::now() < deadline {
                let active = self
                    .with_domain(|d| Ok(d.is_active().unwrap_or(false)))
                    .await?;
                if !active {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            self.with_domain(|d| {
                if d.is_active().unwrap_or(false) {
                    d.destroy().map_err(error)?;
                }
                d.undefine().map_err(error)
            })
            .await?;
            tracing::info!(domain = %self.name, "domain stopped and undefined");
            Ok(())
        }
        .boxed_local()
    }
}

/// Bridges the serial console of `domain` to the terminal channels, on a thread of its own
/// (libvirt streams block).
pub fn console(
    uri: &str,
    domain: &str,
    mut input: mpsc::Receiver<TerminalInput>,
    output: mpsc::Sender<Vec<u8>>,
) -> Result<(), RuntimeError> {
    let connection = open(uri)?;
    let dom = connection.lookup_domain_by_name(domain).map_err(error)?;
    let stream = virt::stream::Stream::new(&connection, VIR_STREAM_NONBLOCK).map_err(error)?;
    dom.open_console(None, &stream, VIR_DOMAIN_CONSOLE_FORCE)
        .map_err(error)?;
    std::thread::Builder::new()
        .name("aienv-console".into())
        .spawn(move || {
            let _keep = (&connection, &dom);
            let mut buffer = vec![0u8; 16 * 1024];
            loop {
                let mut idle = true;
                match stream.recv(&mut buffer) {
                    Ok(n) if n > 0 => {
                        idle = false;
                        if output.blocking_send(buffer[..n as usize].to_vec()).is_err() {
                            break;
                        }
                    }
                    Ok(0) => break,
                    Ok(_) => {} // -2: nothing yet
                    Err(_) => break,
                }
                match input.try_recv() {
                    Ok(TerminalInput::Data(bytes)) => {
                        idle = false;
                        if stream.send(&bytes).is_err() {
                            break;
                        }
                    }
                    Ok(TerminalInput::Resize { .. }) => {}
                    Err(mpsc::error::TryRecvError::Empty) => {}
                    Err(mpsc::error::TryRecvError::Disconnected) => break,
                }
                if idle {
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
            let _ = stream.abort();
        })
        .map_err(|e| RuntimeError::io("starting the console thread", e))?;
    Ok(())
}
