//! A two-node Slurm cluster on this host for the slurm backend's test and benchmark
//! (`tests/slurm/cluster` does the work).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/slurm/cluster")
}

/// A running test cluster, stopped when dropped.
pub struct Cluster {
    /// Its state, logs and `slurm.conf`.
    pub dir: PathBuf,
    /// slurmrestd's socket.
    pub socket: String,
}

impl Cluster {
    /// Starts a cluster in `dir` whose slurmrestd (and so every job) runs as `aienv-env`, or
    /// skips loudly (`None`) without root or Slurm.
    pub fn start(dir: &Path) -> Option<Cluster> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            super::skip("slurm: slurmd runs as root here; run the test as root (tests/run does)");
            return None;
        }
        for program in ["slurmctld", "slurmd", "slurmrestd", "squeue", "munged"] {
            let found = std::env::var("PATH")
                .unwrap_or_default()
                .split(':')
                .chain(["/usr/sbin"])
                .any(|d| Path::new(d).join(program).exists());
            if !found {
                super::skip(&format!(
                    "slurm: `{program}` is missing (Debian: apt-get install slurmctld slurmd slurmrestd slurm-client munge; tests/run does)"
                ));
                return None;
            }
        }
        let script = script();
        let output = Command::new(&script)
            .args(["start", dir.to_str().unwrap(), "aienv-env"])
            .output()
            .expect("running tests/slurm/cluster");
        assert!(
            output.status.success(),
            "starting the Slurm cluster failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let socket = String::from_utf8(output.stdout).unwrap().trim().to_string();
        Some(Cluster {
            dir: dir.to_path_buf(),
            socket,
        })
    }

    /// `http://127.0.0.1:PORT` of the slurmrestd that takes JWTs, when the plugin is installed
    /// (its token for `aienv-env` is in `rest/token`).
    pub fn jwt_endpoint(&self) -> Option<String> {
        std::fs::read_to_string(self.dir.join("rest/tcp"))
            .ok()
            .map(|s| s.trim().to_string())
    }

    /// Starts a node whose data lives in `data` with `settings` (YAML lines below
    /// `runtime.slurm`, such as `url: unix:...`). The data dir is opened to the jobs' user,
    /// who reaches the workspaces and log dirs in it.
    pub fn node(&self, data: &Path, settings: &[String]) -> super::TestNode {
        let config = data.with_extension("yaml");
        let body: String = settings
            .iter()
            .map(|line| format!("    {line}\n"))
            .collect();
        std::fs::write(&config, format!("runtime:\n  slurm:\n{body}")).unwrap();
        let node = super::TestNode::spawn_on(data, &["--config", config.to_str().unwrap()]);
        std::fs::set_permissions(data, std::fs::Permissions::from_mode(0o755)).unwrap();
        node
    }

    /// Submits `sbatch --parsable -c 1 --mem=100M --output=/dev/null ARGS` as root and returns
    /// the job id.
    pub fn sbatch(&self, args: &[&str]) -> String {
        let output = self
            .command("sbatch")
            .args(["--parsable", "-c", "1", "--mem=100M", "--output=/dev/null"])
            .args(args)
            .output()
            .expect("sbatch");
        assert!(output.status.success(), "{output:?}");
        String::from_utf8_lossy(&output.stdout).trim().to_string()
    }

    /// Runs a Slurm client command against this cluster.
    pub fn command(&self, program: &str) -> Command {
        let mut command = Command::new(program);
        command.env("SLURM_CONF", self.dir.join("slurm.conf"));
        command
    }

    /// `squeue` lines for the cluster's jobs: `id cpus memory state`.
    pub fn squeue(&self) -> Vec<String> {
        let output = self
            .command("squeue")
            .args(["-h", "-o", "%i %C %m %T %j"])
            .output()
            .expect("squeue");
        String::from_utf8_lossy(&output.stdout)
            .lines()
            .map(str::to_string)
            .collect()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let script = script();
        let _ = Command::new(script)
            .args(["stop", self.dir.to_str().unwrap()])
            .status();
    }
}
