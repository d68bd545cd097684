//! Host resources: CPU, memory, disk, GPUs, OS. Read from `/proc`, `/sys` and `nvidia-smi`;
//! every probe is allowed to find nothing (no GPU is a valid answer). Blocking: call it off
//! the async arbiters.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// What this host offers.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Resources {
    /// CPU model name.
    pub cpu_model: String,
    /// Logical CPU cores.
    pub cpu_cores: u32,
    /// Total memory in bytes.
    pub memory_total: u64,
    /// Available memory in bytes.
    pub memory_available: u64,
    /// Free disk in the data dir, bytes.
    pub disk_free: u64,
    /// GPUs.
    pub gpus: Vec<Gpu>,
    /// Operating system (`linux`).
    pub os: String,
    /// CPU architecture (`x86_64`).
    pub arch: String,
}

/// One GPU.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Gpu {
    /// `nvidia`, `amd`, `intel` or the PCI vendor id.
    pub vendor: String,
    /// Model name.
    pub model: String,
    /// Memory in bytes, when known (0 otherwise).
    pub memory: u64,
}

/// Detects this host's resources; `data_dir` decides which file system's free space counts.
pub fn detect(data_dir: &Path) -> Resources {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let (memory_total, memory_available) = parse_meminfo(&meminfo);
    let mut gpus = nvidia_gpus();
    if gpus.is_empty() {
        gpus = drm_gpus(Path::new("/sys/class/drm"));
    } else {
        // nvidia-smi named the NVIDIA cards; add the others from /sys.
        gpus.extend(
            drm_gpus(Path::new("/sys/class/drm"))
                .into_iter()
                .filter(|g| g.vendor != "nvidia"),
        );
    }
    Resources {
        cpu_model: parse_cpu_model(&cpuinfo),
        cpu_cores: std::thread::available_parallelism().map_or(1, |n| n.get() as u32),
        memory_total,
        memory_available,
        disk_free: disk_free(data_dir),
        gpus,
        os: std::env::consts::OS.to_string(),
        arch: std::env::consts::ARCH.to_string(),
    }
}

fn parse_cpu_model(cpuinfo: &str) -> String {
    cpuinfo
        .lines()
        .find_map(|line| {
            let (key, value) = line.split_once(':')?;
            matches!(
                key.trim(),
                "model name" | "Model" | "cpu model" | "Hardware"
            )
            .then(|| value.trim().to_string())
        })
        .unwrap_or_default()
}

/// `(MemTotal, MemAvailable)` in bytes.
fn parse_meminfo(meminfo: &str) -> (u64, u64) {
    let field = |name: &str| {
        meminfo
            .lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(':'))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map_or(0, |kib| kib * 1024)
    };
    (field("MemTotal"), field("MemAvailable"))
}

/// Bytes available to unprivileged writers on the file system holding `path` (0 when unknown).
pub fn disk_free(path: &Path) -> u64 {
    use std::os::unix::ffi::OsStrExt;
    let Ok(c_path) = std::ffi::CString::new(path.as_os_str().as_bytes()) else {
        return 0;
    };
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: c_path is NUL-terminated and stat is a valid out-pointer.
    if unsafe { libc::statvfs(c_path.as_ptr(), &mut stat) } != 0 {
        return 0;
    }
    stat.f_bavail as u64 * stat.f_frsize as u64
}

/// NVIDIA GPUs from `nvidia-smi` (the NVML command-line front end), bounded in time.
fn nvidia_gpus() -> Vec<Gpu> {
    let child = Command::new("nvidia-smi")
        .args([
            "--query-gpu=name,memory.total",
            "--format=csv,noheader,nounits",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn();
    let Ok(mut child) = child else {
        return Vec::new();
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        match child.try_wait() {
            Ok(Some(status)) if status.success() => break,
            Ok(Some(_)) | Err(_) => return Vec::new(),
            Ok(None) if std::time::Instant::now() > deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return Vec::new();
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
    let mut output = String::new();
    if let Some(mut stdout) = child.stdout.take() {
        use std::io::Read;
        let _ = stdout.read_to_string(&mut output);
    }
    parse_nvidia_smi(&output)
}

fn parse_nvidia_smi(output: &str) -> Vec<Gpu> {
    output
        .lines()
        .filter_map(|line| {
            let (name, memory) = line.rsplit_once(',')?;
            let mib: u64 = memory.trim().parse().ok()?;
            Some(Gpu {
                vendor: "nvidia".into(),
                model: name.trim().to_string(),
                memory: mib * 1024 * 1024,
            })
        })
        .collect()
}

/// GPUs from `/sys/class/drm/card*/device` (AMD, Intel, and NVIDIA without nvidia-smi).
fn drm_gpus(drm: &Path) -> Vec<Gpu> {
    let Ok(entries) = std::fs::read_dir(drm) else {
        return Vec::new();
    };
    let mut cards: Vec<_> = entries
        .flatten()
        .filter(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            name.starts_with("card") && name[4..].bytes().all(|b| b.is_ascii_digit())
        })
        .map(|e| e.path())
        .collect();
    cards.sort();
    cards
        .into_iter()
        .filter_map(|card| {
            let device = card.join("device");
            let read = |name: &str| {
                std::fs::read_to_string(device.join(name))
                    .map(|s| s.trim().to_string())
                    .unwrap_or_default()
            };
            let vendor_id = read("vendor");
            if vendor_id.is_empty() {
                return None;
            }
            let vendor = match vendor_id.as_str() {
                "0x10de" => "nvidia",
                "0x1002" => "amd",
                "0x8086" => "intel",
                other => other,
            }
            .to_string();
            let memory = read("mem_info_vram_total").parse().unwrap_or(0);
            let model = read("product_name");
            let model = if model.is_empty() {
                format!("{vendor} {}", read("device"))
            } else {
                model
            };
            Some(Gpu {
                vendor,
                model,
                memory,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parsers() {
        assert_eq!(
            parse_cpu_model("processor\t: 0\nmodel name\t: AMD EPYC 9654 96-Core Processor\n"),
            "AMD EPYC 9654 96-Core Processor"
        );
        assert_eq!(
            parse_meminfo("MemTotal:       16384 kB\nMemFree: 1 kB\nMemAvailable:    8192 kB\n"),
            (16384 * 1024, 8192 * 1024)
        );
        assert_eq!(
            parse_nvidia_smi("NVIDIA H200, 143771\nNVIDIA A100-SXM4-80GB, 81920\n"),
            vec![
                Gpu {
                    vendor: "nvidia".into(),
                    model: "NVIDIA H200".into(),
                    memory: 143771 * 1024 * 1024
                },
                Gpu {
                    vendor: "nvidia".into(),
                    model: "NVIDIA A100-SXM4-80GB".into(),
                    memory: 81920 * 1024 * 1024
                },
            ]
        );
        assert!(parse_nvidia_smi("NVIDIA-SMI has failed\n").is_empty());
    }

    #[test]
    fn drm_cards() {
        let dir = tempfile::tempdir().unwrap();
        let card = dir.path().join("card0/device");
        std::fs::create_dir_all(&card).unwrap();
        std::fs::write(card.join("vendor"), "0x1002\n").unwrap();
        std::fs::write(card.join("device"), "0x744c\n").unwrap();
        std::fs::write(card.join("mem_info_vram_total"), "25753026560\n").unwrap();
        std::fs::create_dir_all(dir.path().join("card0-DP-1")).unwrap();
        let gpus = drm_gpus(dir.path());
        assert_eq!(
            gpus,
            vec![Gpu {
                vendor: "amd".into(),
                model: "amd 0x744c".into(),
                memory: 25753026560
            }]
        );
        assert!(drm_gpus(&dir.path().join("missing")).is_empty());
    }

    #[test]
    fn detects_this_host() {
        let resources = detect(Path::new("/"));
        assert!(resources.cpu_cores >= 1);
        assert!(resources.memory_total > 0);
        assert!(resources.disk_free > 0);
        assert_eq!(resources.os, std::env::consts::OS);
    }
}
