//! Adaptation: sizes an environment to this host. From the host's resources, what running
//! environments already hold, and the environment's wants, picks the variant and computes
//! the allocation (CPU quota and set, memory limit, GPUs, thread variables), or refuses
//! with the figures when even the minimum does not fit.

use std::collections::BTreeMap;

use crate::model::{EnvironmentSpec, VariantSpec};
use crate::resources::Resources;

/// What an environment gets.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Allocation {
    /// The variant chosen, when the spec has variants.
    pub variant: Option<String>,
    /// CPU quota in cores; `None` means unlimited.
    pub cpus: Option<f64>,
    /// Cores the environment is pinned to (empty: not pinned).
    pub cpuset: Vec<u32>,
    /// Memory limit in bytes; `None` means unlimited.
    pub memory: Option<u64>,
    /// GPUs (indexes into the host's GPU list, as `CUDA_VISIBLE_DEVICES` counts them).
    pub gpus: Vec<u32>,
    /// Variables that size thread pools and pick devices.
    pub env: BTreeMap<String, String>,
    /// Decisions worth telling the person (a variant skipped, less than preferred).
    pub notes: Vec<String>,
}

/// What running environments hold already.
#[derive(Debug, Clone, Default)]
pub struct Held {
    /// Memory limits of running environments, bytes.
    pub memory: u64,
    /// How many running environments are pinned to each core.
    pub cores: BTreeMap<u32, u32>,
    /// GPUs given to running environments.
    pub gpus: Vec<u32>,
}

impl Held {
    /// Adds an allocation to what is held.
    pub fn add(&mut self, allocation: &Allocation) {
        self.memory += allocation.memory.unwrap_or(0);
        for core in &allocation.cpuset {
            *self.cores.entry(*core).or_default() += 1;
        }
        self.gpus.extend(&allocation.gpus);
    }
}

/// Memory kept for the host itself: a tenth of it, at least 512 MiB.
pub fn host_reserve(total: u64) -> u64 {
    (total / 10).max(512 << 20).min(total / 2)
}

/// Variables that size thread pools of numeric libraries.
const THREAD_VARS: [&str; 5] = [
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "NUMEXPR_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
];

/// Picks the variant and sizes `spec` (named `name`) to `host`, given what is `held`.
pub fn allocate(
    name: &str,
    spec: &EnvironmentSpec,
    host: &Resources,
    held: &Held,
) -> Result<Allocation, String> {
    let mut allocation = Allocation::default();
    let free_gpus: Vec<(u32, &str)> = host
        .gpus
        .iter()
        .enumerate()
        .map(|(index, gpu)| (index as u32, gpu.vendor.as_str()))
        .filter(|(index, _)| !held.gpus.contains(index))
        .collect();

    // Variant: the first whose needs this host meets.
    let mut vendor = None;
    if !spec.variants.is_empty() {
        let mut skipped = Vec::new();
        let mut chosen = None;
        for variant in &spec.variants {
            if variant_fits(variant, &free_gpus) {
                chosen = Some(variant);
                break;
            }
            skipped.push(variant);
        }
        let Some(chosen) = chosen else {
            let needs: Vec<String> = spec.variants.iter().map(describe_variant).collect();
            return Err(format!(
                "no variant fits: {}; this host has {}",
                needs.join("; "),
                describe_gpus(host, held)
            ));
        };
        for variant in skipped {
            allocation.notes.push(format!(
                "variant `{}` skipped: {}, and this host has {}; using `{}`",
                variant.name,
                describe_variant(variant)
                    .split_once(": ")
                    .map_or(String::new(), |(_, needs)| needs.to_string()),
                describe_gpus(host, held),
                chosen.name
            ));
        }
        vendor = chosen.requires.gpu_vendor.clone();
        allocation.variant = Some(chosen.name.clone());
    }

    // CPUs: time-shared, so only the host's size refuses; cores are pinned least-used first.
    let cores = host.cpu_cores.max(1);
    if let Some(want) = &spec.resources.cpus {
        if want.min > cores as f64 {
            return Err(format!(
                "needs at least {} CPU cores; this host has {cores}",
                trim_float(want.min)
            ));
        }
        let granted = want.preferred().min(cores as f64);
        if granted < want.preferred() {
            allocation.notes.push(format!(
                "{} CPU cores instead of the preferred {} (this host has {cores})",
                trim_float(granted),
                trim_float(want.preferred())
            ));
        }
        allocation.cpus = Some(granted);
        let pinned = (granted.ceil() as u32).min(cores);
        if pinned < cores {
            let mut by_use: Vec<u32> = (0..cores).collect();
            by_use.sort_by_key(|core| (held.cores.get(core).copied().unwrap_or(0), *core));
            allocation.cpuset = by_use.into_iter().take(pinned as usize).collect();
            allocation.cpuset.sort_unstable();
            if allocation
                .cpuset
                .iter()
                .any(|core| held.cores.get(core).copied().unwrap_or(0) > 0)
            {
                allocation
                    .notes
                    .push("shares CPU cores with other running environments".to_string());
            }
        }
    }
    let threads = allocation
        .cpus
        .map_or(cores, |cpus| (cpus.floor() as u32).max(1));
    for var in THREAD_VARS {
        if !spec.env.contains_key(var) {
            allocation.env.insert(var.to_string(), threads.to_string());
        }
    }

    // Memory: what is free now, less the host's reserve and other environments' limits.
    if let Some(want) = &spec.resources.memory {
        let reserve = host_reserve(host.memory_total);
        let free = host
            .memory_total
            .saturating_sub(reserve)
            .saturating_sub(held.memory)
            .min(host.memory_available.saturating_sub(reserve / 2));
        if want.min.0 > free {
            return Err(format!(
                "needs at least {} of memory; {} is free for environments here ({} in all, {} kept for the host, {} held by running environments)",
                gib(want.min.0),
                gib(free),
                gib(host.memory_total),
                gib(reserve),
                gib(held.memory)
            ));
        }
        let granted = want.preferred().0.min(free);
        if granted < want.preferred().0 {
            allocation.notes.push(format!(
                "{} of memory instead of the preferred {}",
                gib(granted),
                gib(want.preferred().0)
            ));
        }
        allocation.memory = Some(granted);
    }

    // GPUs: whole devices, never shared; of the variant's vendor when it names one.
    let usable: Vec<u32> = free_gpus
        .iter()
        .filter(|(_, gpu_vendor)| vendor.as_deref().is_none_or(|v| v == *gpu_vendor))
        .map(|(index, _)| *index)
        .collect();
    let wanted_gpus = spec
        .resources
        .gpus
        .as_ref()
        .map(|want| (want.min, want.preferred()));
    let variant_gpus = spec
        .variants
        .iter()
        .find(|v| Some(&v.name) == allocation.variant.as_ref())
        .map_or(0, |v| v.requires.gpus);
    let (min, preferred) = wanted_gpus.unwrap_or((variant_gpus, variant_gpus));
    let (min, preferred) = (min.max(variant_gpus), preferred.max(variant_gpus));
    if min as usize > usable.len() {
        return Err(format!(
            "needs at least {min} GPU{}; this host has {}",
            if min == 1 { "" } else { "s" },
            describe_gpus(host, held)
        ));
    }
    allocation.gpus = usable.into_iter().take(preferred as usize).collect();
    if (allocation.gpus.len() as u32) < preferred {
        allocation.notes.push(format!(
            "{} GPU(s) instead of the preferred {preferred}",
            allocation.gpus.len()
        ));
    }
    if !host.gpus.is_empty() || !allocation.gpus.is_empty() {
        let list: Vec<String> = allocation.gpus.iter().map(u32::to_string).collect();
        allocation
            .env
            .insert("CUDA_VISIBLE_DEVICES".into(), list.join(","));
    }
    let _ = name;
    Ok(allocation)
}

/// What an environment asks a scheduler for (a Slurm job), which places it on a machine
/// that has it: the preferred CPUs, memory and GPUs, the first variant (with its GPUs), no
/// pinning, and thread variables for the CPUs asked. Nothing of this host is counted.
pub fn requested(spec: &EnvironmentSpec) -> Allocation {
    let mut allocation = Allocation::default();
    let variant = spec.variants.first();
    if let Some(variant) = variant {
        allocation.variant = Some(variant.name.clone());
    }
    allocation.cpus = spec.resources.cpus.as_ref().map(|want| want.preferred());
    allocation.memory = spec
        .resources
        .memory
        .as_ref()
        .map(|want| want.preferred().0);
    let gpus = spec
        .resources
        .gpus
        .as_ref()
        .map_or(0, |want| want.preferred())
        .max(variant.map_or(0, |v| v.requires.gpus));
    allocation.gpus = (0..gpus).collect();
    let threads = allocation
        .cpus
        .map_or(1, |cpus| (cpus.floor() as u32).max(1));
    for var in THREAD_VARS {
        if !spec.env.contains_key(var) {
            allocation.env.insert(var.to_string(), threads.to_string());
        }
    }
    allocation
        .notes
        .push("sized by what it asks for; the scheduler picks the machine".to_string());
    allocation
}

fn variant_fits(variant: &VariantSpec, free_gpus: &[(u32, &str)]) -> bool {
    let matching = free_gpus
        .iter()
        .filter(|(_, vendor)| {
            variant
                .requires
                .gpu_vendor
                .as_deref()
                .is_none_or(|v| v == *vendor)
        })
        .count();
    matching >= variant.requires.gpus as usize
}

fn describe_variant(variant: &VariantSpec) -> String {
    let needs = match (variant.requires.gpus, &variant.requires.gpu_vendor) {
        (0, None) => "needs nothing".to_string(),
        (n, Some(vendor)) => format!("needs {} {vendor} GPU{}", n.max(1), plural(n.max(1))),
        (n, None) => format!("needs {n} GPU{}", plural(n)),
    };
    format!("`{}`: {needs}", variant.name)
}

fn describe_gpus(host: &Resources, held: &Held) -> String {
    if host.gpus.is_empty() {
        return "no GPU".to_string();
    }
    let free = host.gpus.len() - held.gpus.len().min(host.gpus.len());
    let models: Vec<String> = host
        .gpus
        .iter()
        .map(|gpu| format!("{} {}", gpu.vendor, gpu.model))
        .collect();
    format!(
        "{} GPU{} ({}), {free} free",
        host.gpus.len(),
        plural(host.gpus.len() as u32),
        models.join(", ")
    )
}

fn plural(n: u32) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

pub(crate) fn trim_float(value: f64) -> String {
    if value.fract() == 0.0 {
        format!("{value:.0}")
    } else {
        format!("{value:.2}")
            .trim_end_matches('0')
            .trim_end_matches('.')
            .to_string()
    }
}

/// Bytes as GiB or MiB with one decimal.
pub fn gib(bytes: u64) -> String {
    if bytes >= 1 << 30 {
        format!("{:.1} GiB", bytes as f64 / (1u64 << 30) as f64)
    } else {
        format!("{:.0} MiB", bytes as f64 / (1u64 << 20) as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::Gpu;
    use crate::yaml;
    use std::path::Path;

    fn host(cores: u32, memory_gib: u64, gpus: &[&str]) -> Resources {
        Resources {
            cpu_cores: cores,
            memory_total: memory_gib << 30,
            memory_available: (memory_gib << 30) * 9 / 10,
            gpus: gpus
                .iter()
                .map(|vendor| Gpu {
                    vendor: vendor.to_string(),
                    model: "test".into(),
                    memory: 0,
                })
                .collect(),
            ..Resources::default()
        }
    }

    fn spec(text: &str) -> EnvironmentSpec {
        let spec: EnvironmentSpec =
            yaml::from_str(&format!("schema_version: 1\n{text}"), Path::new("env.yaml")).unwrap();
        spec.validate().unwrap();
        spec
    }

    const VARIANTS: &str = "variants:
  - {name: cuda, requires: {gpus: 1, gpu_vendor: nvidia}, env: {TORCH_DEVICE: cuda}}
  - {name: cpu}
resources: {cpus: {min: 2, preferred: 8}, memory: {min: 2GiB, preferred: 16GiB}}
";

    #[test]
    fn no_gpu_picks_the_cpu_variant_with_a_note() {
        let allocation = allocate(
            "train",
            &spec(VARIANTS),
            &host(4, 32, &[]),
            &Held::default(),
        )
        .unwrap();
        assert_eq!(allocation.variant.as_deref(), Some("cpu"));
        assert!(
            allocation.notes[0].contains("variant `cuda` skipped"),
            "{:?}",
            allocation.notes
        );
        assert!(
            allocation.notes[0].contains("no GPU"),
            "{:?}",
            allocation.notes
        );
        assert_eq!(allocation.cpus, Some(4.0));
        assert!(allocation.cpuset.is_empty(), "all cores: not pinned");
        assert_eq!(allocation.env["OMP_NUM_THREADS"], "4");
        assert_eq!(allocation.memory, Some(16 << 30));
        assert!(allocation.gpus.is_empty());
        assert!(!allocation.env.contains_key("CUDA_VISIBLE_DEVICES"));
    }

    #[test]
    fn a_gpu_host_gets_the_cuda_variant_and_a_device() {
        let allocation = allocate(
            "train",
            &spec(VARIANTS),
            &host(16, 64, &["intel", "nvidia"]),
            &Held::default(),
        )
        .unwrap();
        assert_eq!(allocation.variant.as_deref(), Some("cuda"));
        assert_eq!(
            allocation.gpus,
            vec![1],
            "the nvidia card, not the intel one"
        );
        assert_eq!(allocation.env["CUDA_VISIBLE_DEVICES"], "1");
        assert_eq!(allocation.cpus, Some(8.0));
        assert_eq!(allocation.cpuset, (0..8).collect::<Vec<_>>());
        assert_eq!(allocation.env["MKL_NUM_THREADS"], "8");
        assert!(allocation.notes.is_empty(), "{:?}", allocation.notes);

        // A second environment gets the other cores; the GPU is taken, so it falls back.
        let mut held = Held::default();
        held.add(&allocation);
        let second = allocate(
            "b",
            &spec(VARIANTS),
            &host(16, 64, &["intel", "nvidia"]),
            &held,
        )
        .unwrap();
        assert_eq!(second.variant.as_deref(), Some("cpu"));
        assert_eq!(second.cpuset, (8..16).collect::<Vec<_>>());
        assert_eq!(
            second.env["CUDA_VISIBLE_DEVICES"], "",
            "GPUs hidden from the cpu variant"
        );
    }

    #[test]
    fn minimums_that_do_not_fit_are_refused_with_figures() {
        let error = allocate(
            "big",
            &spec("resources: {memory: {min: 64GiB}}"),
            &host(8, 16, &[]),
            &Held::default(),
        )
        .unwrap_err();
        assert!(
            error.contains("needs at least 64.0 GiB of memory"),
            "{error}"
        );
        assert!(error.contains("16.0 GiB in all"), "{error}");

        let error = allocate(
            "big",
            &spec("resources: {cpus: {min: 32}}"),
            &host(8, 16, &[]),
            &Held::default(),
        )
        .unwrap_err();
        assert_eq!(error, "needs at least 32 CPU cores; this host has 8");

        let error = allocate(
            "big",
            &spec("resources: {gpus: {min: 2}}"),
            &host(8, 16, &["nvidia"]),
            &Held::default(),
        )
        .unwrap_err();
        assert!(
            error.contains("needs at least 2 GPUs; this host has 1 GPU (nvidia test), 1 free"),
            "{error}"
        );

        let error = allocate(
            "gpu-only",
            &spec("variants: [{name: cuda, requires: {gpus: 1}}]"),
            &host(8, 16, &[]),
            &Held::default(),
        )
        .unwrap_err();
        assert_eq!(
            error,
            "no variant fits: `cuda`: needs 1 GPU; this host has no GPU"
        );
    }

    #[test]
    fn memory_held_by_others_counts() {
        let held = Held {
            memory: 12 << 30,
            ..Held::default()
        };
        let allocation = allocate(
            "m",
            &spec("resources: {memory: {min: 1GiB, preferred: 8GiB}}"),
            &host(4, 16, &[]),
            &held,
        )
        .unwrap();
        let memory = allocation.memory.unwrap();
        assert!((1 << 30..8 << 30).contains(&memory), "{memory}");
        assert!(allocation
            .notes
            .iter()
            .any(|n| n.contains("instead of the preferred 8.0 GiB")));
    }

    #[test]
    fn no_wants_means_no_limits_and_all_threads() {
        let allocation = allocate("plain", &spec(""), &host(6, 8, &[]), &Held::default()).unwrap();
        assert_eq!(allocation.cpus, None);
        assert_eq!(allocation.memory, None);
        assert_eq!(allocation.env["OMP_NUM_THREADS"], "6");
        let allocation = allocate(
            "own",
            &spec("env: {OMP_NUM_THREADS: '1'}"),
            &host(6, 8, &[]),
            &Held::default(),
        )
        .unwrap();
        assert!(
            !allocation.env.contains_key("OMP_NUM_THREADS"),
            "the spec's own value wins"
        );
    }

    #[test]
    fn a_scheduler_is_asked_for_what_the_spec_prefers_whatever_this_host_has() {
        let asked = requested(&spec(
            "resources: {cpus: {min: 2, preferred: 64}, memory: {min: 1GiB, preferred: 512GiB}, gpus: {min: 1, preferred: 2}}\nvariants: [{name: cuda, requires: {gpus: 4, gpu_vendor: nvidia}}, {name: cpu}]\n",
        ));
        assert_eq!(asked.variant.as_deref(), Some("cuda"));
        assert_eq!(asked.cpus, Some(64.0));
        assert_eq!(asked.memory, Some(512 << 30));
        assert_eq!(asked.gpus.len(), 4);
        assert!(asked.cpuset.is_empty());
        assert_eq!(asked.env["OMP_NUM_THREADS"], "64");
        let bare = requested(&spec(""));
        assert_eq!((bare.cpus, bare.memory, bare.gpus.len()), (None, None, 0));
        assert_eq!(bare.env["OMP_NUM_THREADS"], "1");
    }
}
