//! The slurm backend against a real two-node Slurm cluster on this host (`tests/slurm/cluster`:
//! slurmctld, two slurmd, munge, slurmrestd as the environments' user): an environment's HTTP
//! tool runs as a Slurm job sized from its allocation and answers through the node's proxy;
//! stop cancels the job; a job that fails shows Slurm's state and reason.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use aienv::api::RunRequest;
use common::eventually;
use common::runtime::{get, run, workspace, HELLO};
use common::slurm::Cluster;

/// Every log file of the node's environments, for a failure message.
fn job_logs(data: &Path) -> String {
    let mut out = String::new();
    let mut stack = vec![data.join("runtime")];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "log") {
                let text = std::fs::read_to_string(&path).unwrap_or_default();
                out.push_str(&format!("== {}\n{text}\n", path.display()));
            }
        }
    }
    out
}

#[actix_rt::test]
async fn slurm_environment_runs_its_tool_as_a_job_behind_the_proxy() {
    let temp = tempfile::tempdir().unwrap();
    // The job runs as the environments' user: it must reach the workspace and the log dir.
    std::fs::set_permissions(temp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let Some(cluster) = Cluster::start(&temp.path().join("slurm")) else {
        return;
    };
    let data = temp.path().join("data");
    let node = cluster.node(
        &data,
        &[
            format!("url: unix:{}", cluster.socket),
            "time_limit_minutes: 30".into(),
        ],
    );
    let spec = "schema_version: 1
runtime: slurm
resources: {cpus: {min: 1}, memory: {min: 300MiB}}
restart: {policy: 'no'}
tools:
  - {name: app, kind: http, command: [python3, hello.py]}
";
    workspace(&node, "hpc", &[("hello.py", HELLO)], "job", spec).await;
    let admin = node.admin();
    let statuses = run(&admin, "hpc").await;
    let status = &statuses[0];
    assert_eq!(status.state, "running", "{status:#?}\n{}", job_logs(&data));
    assert!(
        status
            .instance
            .as_deref()
            .is_some_and(|i| i.starts_with("slurm job ")),
        "{status:#?}"
    );
    assert!(
        status
            .notes
            .iter()
            .any(|n| n.contains("submitted as Slurm job")),
        "{status:#?}"
    );

    // Reached through the node's proxy at the compute node's address, with the node's login.
    let token = format!("Bearer {}", node.token());
    let (code, body) = get(&format!("{}/w/hpc/app/page", node.url), Some(&token)).await;
    assert_eq!(code, 200, "{body}");
    assert!(body.starts_with("hello /w/hpc/app/page"), "{body}");
    let (code, _) = get(&format!("{}/w/hpc/app/page", node.url), None).await;
    assert_eq!(code, 401);

    // Slurm sees the job with what the allocation asked for.
    let jobs = cluster.squeue();
    assert_eq!(jobs.len(), 1, "{jobs:?}");
    let fields: Vec<&str> = jobs[0].split_whitespace().collect();
    assert_eq!(
        (fields[1], fields[2], fields[3], fields[4]),
        ("1", "300M", "RUNNING", "aienv-hpc-job"),
        "{jobs:?}"
    );

    // The partition shows what the job holds: one of its two CPUs.
    let slurm = admin.slurm_partitions().await.unwrap();
    assert!(slurm.configured && slurm.error.is_none(), "{slurm:?}");
    let main = &slurm.partitions[0];
    assert_eq!(
        (
            main.name.as_str(),
            main.nodes,
            main.cpus,
            main.cpus_free,
            main.nodes_idle
        ),
        ("main", 2, 2, 1, 1),
        "{slurm:?}"
    );
    assert_eq!(main.memory_free, main.memory - (300 << 20), "{slurm:?}");

    // With the other node taken too, a second environment waits in Slurm's queue, says why,
    // and starts when the node is free again.
    let blocker = cluster.sbatch(&["--wrap=sleep 300"]);
    eventually("the blocking job runs", || async {
        cluster
            .squeue()
            .iter()
            .filter(|j| j.contains("RUNNING"))
            .count()
            == 2
    })
    .await;
    workspace(&node, "later", &[("hello.py", HELLO)], "job", spec).await;
    admin.run("later", &RunRequest::default()).await.unwrap();
    eventually("the environment is queued", || async {
        let status = &admin.status("later").await.unwrap()[0];
        status.state == "queued"
            && status
                .notes
                .iter()
                .any(|n| n.contains("PENDING (Resources)"))
    })
    .await;
    cluster.command("scancel").arg(&blocker).status().unwrap();
    eventually("the queued environment runs", || async {
        admin.status("later").await.unwrap()[0].state == "running"
    })
    .await;
    admin.stop("later", None).await.unwrap();

    // Stop cancels the job.
    admin.stop("hpc", None).await.unwrap();
    eventually("the job is cancelled", || async {
        cluster.squeue().is_empty()
    })
    .await;

    // A job that fails shows Slurm's state and reason.
    let failing = "schema_version: 1
runtime: slurm
scripts: {unix: setup.sh}
restart: {policy: 'no'}
tools:
  - {name: app, kind: http, command: [python3, hello.py]}
";
    workspace(
        &node,
        "broken",
        &[
            ("hello.py", HELLO),
            ("setup.sh", "echo broken >&2; exit 7\n"),
        ],
        "job",
        failing,
    )
    .await;
    let statuses = run(&admin, "broken").await;
    let status = &statuses[0];
    let text = format!("{status:?}");
    assert_eq!(status.state, "failed", "{status:#?}");
    assert!(
        text.contains("FAILED") && text.contains("NonZeroExitCode"),
        "{status:#?}"
    );

    // The same through slurmrestd on TCP with a JWT (`X-SLURM-USER-NAME`/`-TOKEN`).
    let Some(tcp) = cluster.jwt_endpoint() else {
        common::skip("slurm: no JWT plugin (Debian: slurm-wlm-jwt-plugin; tests/run installs it)");
        return;
    };
    let token_file = cluster.dir.join("rest/token");
    let jwt_data = temp.path().join("jwt-data");
    let jwt_node = cluster.node(
        &jwt_data,
        &[
            format!("url: {tcp}"),
            "user: aienv-env".into(),
            format!("token_file: {}", token_file.display()),
        ],
    );
    workspace(&jwt_node, "hpc", &[("hello.py", HELLO)], "job", spec).await;
    let jwt_admin = jwt_node.admin();
    let statuses = run(&jwt_admin, "hpc").await;
    assert_eq!(
        statuses[0].state,
        "running",
        "{:#?}\n{}",
        statuses[0],
        job_logs(&jwt_data)
    );
    let token = format!("Bearer {}", jwt_node.token());
    let (code, body) = get(&format!("{}/w/hpc/app/jwt", jwt_node.url), Some(&token)).await;
    assert_eq!(code, 200, "{body}");
    jwt_admin.stop("hpc", None).await.unwrap();
    // A token Slurm does not accept is refused with Slurm's words.
    std::fs::write(&token_file, "not-a-token").unwrap();
    let slurm = jwt_admin.slurm_partitions().await.unwrap();
    let error = slurm.error.unwrap_or_default();
    assert!(
        error.contains("token_file") && slurm.partitions.is_empty(),
        "{error}"
    );
}
