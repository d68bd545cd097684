//! Applying an allocation to local processes: a cgroup v2 group where the node may create
//! one (CPU quota, memory limit, CPU set), otherwise an address-space-independent data
//! limit (`RLIMIT_DATA`) and CPU affinity. Every child is also told to die with the node.

use std::ffi::CString;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};

use super::allocation::Allocation;

/// How limits are enforced for one environment (the default: none, for a shell whose limits
/// someone else enforces, such as a Slurm job's).
#[derive(Debug, Clone, Default)]
pub struct Limits {
    cgroup: Option<PathBuf>,
    memory: Option<u64>,
    cpuset: Vec<u32>,
}

impl Limits {
    /// Prepares limits for an environment (`name` is unique per environment).
    pub fn new(name: &str, allocation: &Allocation) -> Limits {
        let cgroup = if allocation.memory.is_some() || allocation.cpus.is_some() {
            create_cgroup(name, allocation)
        } else {
            None
        };
        Limits {
            cgroup,
            memory: allocation.memory,
            cpuset: allocation.cpuset.clone(),
        }
    }

    /// How the limits are enforced, for status.
    pub fn mechanism(&self) -> &'static str {
        match (
            &self.cgroup,
            self.memory.is_some() || !self.cpuset.is_empty(),
        ) {
            (Some(_), _) => "cgroup v2",
            (None, true) => "rlimit + CPU affinity (no writable cgroup v2 here)",
            (None, false) => "none (nothing asked for)",
        }
    }

    /// Makes `command` start in its own process group, inside the limits, and die with the
    /// node.
    pub fn apply(&self, command: &mut std::process::Command, new_session: bool) {
        let procs = self.cgroup.as_ref().and_then(|dir| {
            CString::new(
                dir.join("cgroup.procs")
                    .into_os_string()
                    .into_encoded_bytes(),
            )
            .ok()
        });
        let memory = if self.cgroup.is_none() {
            self.memory
        } else {
            None
        };
        let cpuset = if self.cgroup.is_none() {
            self.cpuset.clone()
        } else {
            Vec::new()
        };
        if !new_session {
            command.process_group(0);
        }
        // SAFETY: only async-signal-safe calls (open, write, close, prctl, setrlimit,
        // sched_setaffinity, setsid) run between fork and exec; everything is allocated
        // before the fork.
        unsafe {
            command.pre_exec(move || {
                if new_session && libc::setsid() < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                if let Some(procs) = &procs {
                    let fd = libc::open(procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                    if fd >= 0 {
                        libc::write(fd, b"0".as_ptr().cast(), 1);
                        libc::close(fd);
                    }
                }
                if let Some(bytes) = memory {
                    let limit = libc::rlimit {
                        rlim_cur: bytes,
                        rlim_max: bytes,
                    };
                    libc::setrlimit(libc::RLIMIT_DATA, &limit);
                }
                if !cpuset.is_empty() {
                    let mut set: libc::cpu_set_t = std::mem::zeroed();
                    for core in &cpuset {
                        libc::CPU_SET(*core as usize, &mut set);
                    }
                    libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
                }
                Ok(())
            });
        }
    }

    /// Removes the cgroup (after every process in it ended).
    pub fn release(&self) {
        if let Some(dir) = &self.cgroup {
            let _ = std::fs::remove_dir(dir);
        }
    }
}

/// Creates `<cgroup2 mount>/aienv/<name>` with the limits, when the node is allowed to.
fn create_cgroup(name: &str, allocation: &Allocation) -> Option<PathBuf> {
    let mount = cgroup2_mount()?;
    let own = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    // Only from the root group: below it the "no internal processes" rule would need the
    // node itself moved, which is the service manager's business.
    if !own.lines().any(|l| l == "0::/") {
        return None;
    }
    let controllers = std::fs::read_to_string(mount.join("cgroup.controllers")).ok()?;
    let wanted: Vec<&str> = ["cpu", "memory", "cpuset"]
        .into_iter()
        .filter(|c| controllers.split_whitespace().any(|have| have == *c))
        .collect();
    if !wanted.contains(&"memory") || !wanted.contains(&"cpu") {
        return None;
    }
    let enable: String = wanted.iter().map(|c| format!("+{c} ")).collect();
    let parent = mount.join("aienv");
    std::fs::create_dir_all(&parent).ok()?;
    std::fs::write(mount.join("cgroup.subtree_control"), &enable).ok()?;
    std::fs::write(parent.join("cgroup.subtree_control"), &enable).ok()?;
    let dir = parent.join(name);
    std::fs::create_dir_all(&dir).ok()?;
    let write = |file: &str, value: String| std::fs::write(dir.join(file), value).is_ok();
    let mut ok = true;
    if let Some(bytes) = allocation.memory {
        ok &= write("memory.max", bytes.to_string());
    }
    if let Some(cpus) = allocation.cpus {
        ok &= write("cpu.max", format!("{} 100000", (cpus * 100_000.0) as u64));
    }
    if !allocation.cpuset.is_empty() && wanted.contains(&"cpuset") {
        let list: Vec<String> = allocation.cpuset.iter().map(u32::to_string).collect();
        ok &= write("cpuset.cpus", list.join(","));
    }
    if ok {
        Some(dir)
    } else {
        let _ = std::fs::remove_dir(&dir);
        None
    }
}

fn cgroup2_mount() -> Option<PathBuf> {
    let mounts = std::fs::read_to_string("/proc/self/mounts").ok()?;
    mounts.lines().find_map(|line| {
        let mut fields = line.split_whitespace();
        let (_, path, kind) = (fields.next()?, fields.next()?, fields.next()?);
        (kind == "cgroup2" && Path::new(path).join("cgroup.controllers").exists())
            .then(|| PathBuf::from(path))
    })
}
