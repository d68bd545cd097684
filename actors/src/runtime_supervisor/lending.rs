//! Lending: what this node lets trusted peers' environments hold together, and sizing one
//! more of them within it. The host's own rules ([`allocation::allocate`]) apply first; the
//! lending limits then bound the result, so a peer's environment always has a CPU quota and
//! a memory limit (never "unlimited") and the limits hold however many peers ask.

use crate::model::EnvironmentSpec;
use crate::resources::Resources;

use super::allocation::{self, gib, trim_float, Allocation, Held};

/// Who an environment (or a CI run) runs for, when a peer asked for it here.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Borrower {
    /// The peer's node id.
    pub peer: uuid::Uuid,
    /// The peer's name when it was trusted (its own word counts for nothing).
    pub peer_name: String,
    /// The person on that peer who asked.
    pub user: String,
}

/// Upper bounds on what peers' environments hold together; `None` is "all the host has".
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct LendLimits {
    /// CPU cores.
    pub cpus: Option<u32>,
    /// Memory, bytes.
    pub memory: Option<u64>,
    /// GPUs.
    pub gpus: Option<u32>,
}

/// CPU cores, memory and GPUs: what peers' environments hold, what is left to lend, what a
/// node has or an environment holds.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Amounts {
    /// CPU cores (quotas).
    pub cpus: f64,
    /// Memory, bytes.
    pub memory: u64,
    /// GPUs.
    pub gpus: u32,
}

impl Amounts {
    /// Adds a lent environment's allocation (always bounded: see [`fit`]).
    pub fn add(&mut self, allocation: &Allocation) {
        let held = Amounts::from(allocation);
        self.cpus += held.cpus;
        self.memory += held.memory;
        self.gpus += held.gpus;
    }
}

impl From<&Allocation> for Amounts {
    /// What an allocation holds; an unlimited quota or memory counts as none.
    fn from(allocation: &Allocation) -> Amounts {
        Amounts {
            cpus: allocation.cpus.unwrap_or(0.0),
            memory: allocation.memory.unwrap_or(0),
            gpus: allocation.gpus.len() as u32,
        }
    }
}

/// What is left to lend: the limits (or the host) less what is lent.
pub fn available(host: &Resources, limits: &LendLimits, lent: &Amounts) -> Amounts {
    let cpus = limits
        .cpus
        .map_or(host.cpu_cores, |c| c.min(host.cpu_cores)) as f64;
    let memory = limits.memory.unwrap_or(u64::MAX).min(
        host.memory_total
            .saturating_sub(allocation::host_reserve(host.memory_total)),
    );
    let gpus = limits
        .gpus
        .map_or(host.gpus.len() as u32, |g| g.min(host.gpus.len() as u32));
    Amounts {
        cpus: (cpus - lent.cpus).max(0.0),
        memory: memory.saturating_sub(lent.memory),
        gpus: gpus.saturating_sub(lent.gpus),
    }
}

/// Sizes `spec` for a peer: the host's allocation, bounded by what is left to lend. Refuses
/// with the figures when the environment's minimum is more than that.
pub fn fit(
    name: &str,
    spec: &EnvironmentSpec,
    host: &Resources,
    held: &Held,
    limits: &LendLimits,
    lent: &Amounts,
) -> Result<Allocation, String> {
    let left = available(host, limits, lent);
    let lends = |what: &str, total: String, held: String| {
        format!("this node lends {total} {what} to peers, {held} of it held by peers' environments")
    };
    let cpu_total = limits
        .cpus
        .map_or(host.cpu_cores, |c| c.min(host.cpu_cores));
    // GPUs beyond what is left to lend count as held, so the host's rules never pick them.
    let mut held = held.clone();
    let free: Vec<u32> = (0..host.gpus.len() as u32)
        .filter(|g| !held.gpus.contains(g))
        .collect();
    held.gpus
        .extend(free.iter().skip(left.gpus as usize).copied());
    let mut allocation = allocation::allocate(name, spec, host, &held)?;

    let min_cpus = spec.resources.cpus.as_ref().map_or(0.0, |c| c.min);
    if left.cpus < min_cpus.max(0.01) {
        let needs = if min_cpus > 0.0 {
            format!("needs at least {} CPU cores", trim_float(min_cpus))
        } else {
            "needs CPU time".to_string()
        };
        return Err(format!(
            "{needs}; {} left: {}",
            trim_float(left.cpus),
            lends("CPU cores", cpu_total.to_string(), trim_float(lent.cpus))
        ));
    }
    let cpus = allocation.cpus.unwrap_or(cpu_total as f64);
    if cpus > left.cpus {
        allocation.notes.push(format!(
            "{} CPU cores instead of {}: what is left of what this node lends",
            trim_float(left.cpus),
            trim_float(cpus)
        ));
    }
    allocation.cpus = Some(cpus.min(left.cpus));
    let pinned = allocation.cpus.unwrap_or(1.0).ceil() as usize;
    if allocation.cpuset.len() > pinned {
        allocation.cpuset.truncate(pinned);
    }

    let min_memory = spec.resources.memory.as_ref().map_or(0, |m| m.min.0);
    let memory_total = limits.memory.unwrap_or(u64::MAX).min(
        host.memory_total
            .saturating_sub(allocation::host_reserve(host.memory_total)),
    );
    if left.memory < min_memory.max(64 << 20) {
        return Err(format!(
            "needs at least {} of memory; {} left: {}",
            gib(min_memory.max(64 << 20)),
            gib(left.memory),
            lends("of memory", gib(memory_total), gib(lent.memory))
        ));
    }
    let memory = allocation.memory.unwrap_or(left.memory);
    if memory > left.memory {
        allocation.notes.push(format!(
            "{} of memory instead of {}: what is left of what this node lends",
            gib(left.memory),
            gib(memory)
        ));
    }
    allocation.memory = Some(memory.min(left.memory));
    Ok(allocation)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::Gpu;

    fn host(cores: u32, memory_gib: u64, gpus: usize) -> Resources {
        Resources {
            cpu_cores: cores,
            memory_total: memory_gib << 30,
            memory_available: memory_gib << 30,
            gpus: (0..gpus)
                .map(|_| Gpu {
                    vendor: "nvidia".into(),
                    model: "H100".into(),
                    memory: 80 << 30,
                })
                .collect(),
            ..Resources::default()
        }
    }

    fn spec(yaml: &str) -> EnvironmentSpec {
        crate::yaml::from_str(
            &format!("schema_version: 1\n{yaml}"),
            std::path::Path::new("environment.yaml"),
        )
        .unwrap()
    }

    #[test]
    fn a_peer_environment_is_always_bounded_by_what_is_lent() {
        let limits = LendLimits {
            cpus: Some(4),
            memory: Some(8 << 30),
            gpus: Some(1),
        };
        let env = spec("tools: []\n");
        let allocation = fit(
            "e",
            &env,
            &host(16, 64, 2),
            &Held::default(),
            &limits,
            &Amounts::default(),
        )
        .unwrap();
        assert_eq!(allocation.cpus, Some(4.0));
        assert_eq!(allocation.memory, Some(8 << 30));
        assert!(allocation.gpus.len() <= 1);
    }

    #[test]
    fn what_is_lent_already_counts_and_refusals_give_the_figures() {
        let limits = LendLimits {
            cpus: Some(4),
            memory: Some(8 << 30),
            gpus: Some(0),
        };
        let lent = Amounts {
            cpus: 3.0,
            memory: 6 << 30,
            gpus: 0,
        };
        let env = spec("tools: []\nresources:\n  cpus: {min: 2}\n  memory: {min: 4GiB}\n");
        let error = fit(
            "e",
            &env,
            &host(16, 64, 2),
            &Held::default(),
            &limits,
            &lent,
        )
        .unwrap_err();
        assert!(
            error.contains("needs at least 2 CPU cores; 1 left"),
            "{error}"
        );
        assert!(error.contains("lends 4 CPU cores"), "{error}");
        let env = spec("tools: []\nresources:\n  memory: {min: 4GiB}\n");
        let error = fit(
            "e",
            &env,
            &host(16, 64, 2),
            &Held::default(),
            &limits,
            &lent,
        )
        .unwrap_err();
        assert!(
            error.contains("needs at least 4.0 GiB of memory; 2.0 GiB left"),
            "{error}"
        );
        // No GPU lent: a CUDA variant is skipped for the CPU one.
        let env =
            spec("tools: []\nvariants:\n  - name: cuda\n    requires: {gpus: 1}\n  - name: cpu\n");
        let allocation = fit(
            "e",
            &env,
            &host(16, 64, 2),
            &Held::default(),
            &limits,
            &Amounts::default(),
        )
        .unwrap();
        assert_eq!(allocation.variant.as_deref(), Some("cpu"));
        assert!(allocation.gpus.is_empty());
    }

    #[test]
    fn lent_gpus_are_counted_and_capped() {
        let limits = LendLimits {
            cpus: None,
            memory: None,
            gpus: Some(2),
        };
        let env = spec("tools: []\nresources:\n  gpus: {min: 1, preferred: 4}\n");
        let allocation = fit(
            "e",
            &env,
            &host(8, 32, 4),
            &Held::default(),
            &limits,
            &Amounts {
                gpus: 1,
                ..Amounts::default()
            },
        )
        .unwrap();
        assert_eq!(allocation.gpus.len(), 1);
        let error = fit(
            "e",
            &env,
            &host(8, 32, 4),
            &Held::default(),
            &limits,
            &Amounts {
                gpus: 2,
                ..Amounts::default()
            },
        )
        .unwrap_err();
        assert!(error.contains("needs at least 1 GPU"), "{error}");
    }
}
