//! Slurm backend benchmark: from `aienv run` of an environment with `runtime: slurm` to the
//! first answer of its tool through the node's proxy, against `sbatch` of the same command
//! polled until it answers, on the two-node cluster `tests/slurm/cluster` starts on this host.
//!
//! Run (as root, with Debian's Slurm packages): `cargo bench --bench slurm`. The tool is
//! busybox's httpd (Debian: busybox-static). `BENCH_ROUNDS` (default 5). Figures, not
//! assertions.

use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use aienv::api::RunRequest;

#[path = "../common/mod.rs"]
mod common;
use common::runtime::{get, workspace};
use common::slurm::Cluster;

fn main() {
    let rounds: usize = std::env::var("BENCH_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    println!("aienv slurm benchmark: {rounds} rounds");
    let Some(busybox) = ["/bin/busybox", "/usr/bin/busybox"]
        .into_iter()
        .find(|p| Path::new(p).exists())
    else {
        println!("busybox is not installed (apt-get install busybox-static): nothing to measure");
        return;
    };
    actix_rt::System::new().block_on(run(busybox, rounds));
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

async fn run(busybox: &str, rounds: usize) {
    let temp = tempfile::tempdir().unwrap();
    std::fs::set_permissions(temp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let Some(cluster) = Cluster::start(&temp.path().join("slurm")) else {
        println!("no Slurm cluster (see above): nothing to measure");
        return;
    };
    let node = cluster.node(
        &temp.path().join("data"),
        &[format!("url: unix:{}", cluster.socket)],
    );
    let spec = format!(
        "schema_version: 1\nruntime: slurm\nresources: {{cpus: {{min: 1}}, memory: {{min: 100MiB}}}}\nrestart: {{policy: 'no'}}\nhealth: {{interval_seconds: 60}}\ntools: [{{name: web, kind: http, strip_prefix: true, command: [{busybox}, httpd, -f, -p, $PORT, -h, www]}}]\n"
    );
    let root = workspace(&node, "hpc", &[("www/index.html", "hello\n")], "job", &spec).await;
    let admin = node.admin();
    let token = format!("Bearer {}", node.token());
    let idle = |cluster: &Cluster| {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !cluster.squeue().is_empty() {
            assert!(
                Instant::now() < deadline,
                "jobs left: {:?}",
                cluster.squeue()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    let mut aienv_ms = Vec::new();
    let mut sbatch_ms = Vec::new();
    for _ in 0..rounds {
        let started = Instant::now();
        let statuses = admin
            .run(
                "hpc",
                &RunRequest {
                    wait: true,
                    timeout_seconds: Some(120),
                    ..RunRequest::default()
                },
            )
            .await
            .unwrap();
        assert_eq!(statuses[0].state, "running", "{statuses:#?}");
        let (code, _) = get(&format!("{}/w/hpc/web/", node.url), Some(&token)).await;
        assert_eq!(code, 200);
        aienv_ms.push(started.elapsed().as_secs_f64() * 1000.0);
        admin.stop("hpc", None).await.unwrap();
        idle(&cluster);

        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let started = Instant::now();
        let job = cluster.sbatch(&[
            &format!("--chdir={root}"),
            &format!("--wrap={busybox} httpd -f -p {port} -h www"),
        ]);
        let deadline = Instant::now() + Duration::from_secs(120);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "sbatch job {job} never answered");
            std::thread::sleep(Duration::from_millis(1));
        }
        sbatch_ms.push(started.elapsed().as_secs_f64() * 1000.0);
        cluster.command("scancel").arg(&job).status().unwrap();
        idle(&cluster);
    }
    let (a, s) = (median(&mut aienv_ms), median(&mut sbatch_ms));
    println!("\nsubmit -> first tool answer ({rounds} rounds, median):");
    println!("  aienv run, runtime: slurm, answer through the node's proxy: {a:8.1} ms");
    println!("  sbatch --wrap of the same command, polled until it answers: {s:8.1} ms");
    println!("  ratio {:.2} (aienv's own share {:.1} ms)", a / s, a - s);
}
