//! Transfer benchmark: `aienv clone` and `aienv sync` between two nodes on loopback against
//! `cp -a`, `tar | zstd -1 -T0 | zstd -d | tar -x` and an rsync daemon pull for the first copy,
//! and against an rsync pull and Syncthing for a sync after a ~1 % change, side by side in one
//! run, each measured `BENCH_ROUNDS` times (default 5; medians reported), on the disk and on
//! tmpfs. Bytes on the wire are counted by the kernel (tcpdump on loopback) for every tool.
//!
//! Run (as root, for tcpdump): `cargo bench --bench transfer` (`apt-get install rsync zstd
//! syncthing tcpdump`; a missing tool's baseline is left out, and without tcpdump each tool's
//! own byte count is used). `BENCH_SCALE` (default 1.0) scales the tree: at 1.0 it is about
//! 1.1 GB in 17,000 files shaped like an ML workspace (a venv-like tree of small text and
//! larger binary files, two 200 MiB weight shards, a 100 MiB CSV). `BENCH_DIRS` lists where
//! to run (default `target/bench-transfer:/dev/shm`). `BENCH_FILES=N` replaces the tree with N
//! small files (the change then rewrites 1 % of them), and the nodes' peak resident memory is
//! reported at the end. `BENCH_LOCAL_EDIT=1` adds a file of the clone's own before each sync
//! (the sync then keeps it: the three-way merge). At the end the clone pushes another round's
//! change back (`aienv sync --push`), timed against an `rsync -a` push of it into a daemon,
//! with both nodes' peak memory over the push alone. Figures, not assertions.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use aienv::api::{CreateWorkspace, ShareRequest, TransferDto, TransferRequestDto};
use aienv::client::Client;

#[path = "../common/mod.rs"]
mod common;
mod syncthing;
mod wire;
use common::TestNode;

fn main() {
    let scale: f64 = std::env::var("BENCH_SCALE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1.0);
    let dirs = std::env::var("BENCH_DIRS").unwrap_or_else(|_| {
        format!(
            "{}/target/bench-transfer:/dev/shm",
            env!("CARGO_MANIFEST_DIR")
        )
    });
    let dirs: Vec<&str> = dirs.split(':').filter(|d| !d.is_empty()).collect();
    if dirs.len() > 1 {
        // One process per place: a second actix system in the same thread after the first
        // could no longer open connections (awc: "connector has been disconnected"), and each
        // place's memory figures are then its own.
        for dir in dirs {
            let status = Command::new(std::env::current_exe().unwrap())
                .args(std::env::args().skip(1))
                .env("BENCH_DIRS", dir)
                .status()
                .unwrap();
            assert!(status.success(), "the run on {dir} failed");
        }
        return;
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!("aienv transfer benchmark: scale {scale}, {cores} cores");
    let rsync = Command::new("rsync").arg("--version").output().is_ok();
    if !rsync {
        println!("rsync is not installed: its baselines are left out (apt-get install rsync)");
    }
    let syncthing = syncthing::available();
    if !syncthing {
        println!(
            "syncthing is not installed: its sync baseline is left out (apt-get install syncthing)"
        );
    }
    let tcpdump = wire::Capture::start(Path::new("/tmp"), 9)
        .map(|c| c.stop())
        .is_some();
    if !tcpdump {
        println!("tcpdump is missing or may not capture (it needs root or CAP_NET_RAW): bytes on the wire are each tool's own count (apt-get install tcpdump)");
    }
    let tools = Tools {
        rsync,
        syncthing,
        tcpdump,
    };
    for dir in dirs {
        let base = PathBuf::from(dir).join(format!("aienv-bench-{}", std::process::id()));
        std::fs::create_dir_all(&base).unwrap();
        let result =
            std::panic::catch_unwind(|| actix_rt::System::new().block_on(run(&base, scale, tools)));
        let _ = Command::new("rm").arg("-rf").arg(&base).status();
        if let Err(panic) = result {
            std::panic::resume_unwind(panic);
        }
    }
}

async fn run(base: &Path, scale: f64, tools: Tools) {
    let fs = Command::new("stat")
        .args(["-f", "-c", "%T"])
        .arg(base)
        .output()
        .unwrap();
    println!(
        "\n== {} ({}) ==",
        base.parent().unwrap().display(),
        String::from_utf8_lossy(&fs.stdout).trim()
    );
    let rounds = rounds();
    let a_dir = base.join("a");
    let b_dir = base.join("b");
    // The source lists the receiver as a static peer (discovery is off), so that it can
    // fetch a push from the receiver's clone at the end; the receiver's port is picked now.
    let b_port = common::free_tcp_port();
    let b_url = format!("https://127.0.0.1:{b_port}");
    let mut a = start_node(
        &a_dir,
        "bench-a",
        0,
        &[("AIENV_DISCOVERY_STATIC_PEERS", b_url.as_str())],
    );
    let root;
    {
        let client = a.admin();
        let created = client
            .create(&CreateWorkspace {
                name: "bench".into(),
                ..CreateWorkspace::default()
            })
            .await
            .unwrap();
        root = PathBuf::from(created.workspace.path.unwrap());
    }
    let started = Instant::now();
    let many = many_files();
    let (files, bytes) = match many {
        Some(count) => build_many(&root.join("data"), count),
        None => build_tree(&root.join("data"), scale),
    };
    println!(
        "tree: {files} files, {:.0} MB, written in {:.1} s",
        bytes as f64 / 1e6,
        started.elapsed().as_secs_f64()
    );
    sync_fs(base);

    // The source indexes its content when shared (hashing everything once).
    let started = Instant::now();
    a.admin()
        .share("bench", &ShareRequest::default())
        .await
        .unwrap();
    let snapshot = a.admin().snapshot("bench").await.unwrap();
    println!(
        "first snapshot (hash + chunk everything): {:.2} s; manifest {:.1} MB compressed",
        started.elapsed().as_secs_f64(),
        snapshot.len() as f64 / 1e6
    );
    let started = Instant::now();
    let _ = a.admin().snapshot("bench").await.unwrap();
    println!(
        "next snapshot (stat only): {:.3} s",
        started.elapsed().as_secs_f64()
    );

    let b = start_node(
        &b_dir,
        "bench-b",
        b_port,
        &[("AIENV_DISCOVERY_STATIC_PEERS", a.tls_url.as_str())],
    );
    wait_listed(&b.admin()).await;
    let client = b.admin();

    // First copies, `rounds` times each, every one into a fresh directory on the same file
    // system (removed, and everything flushed, before the next). Each baseline is timed when
    // it returns and when its data is on disk (`sync`); aienv when the clone is usable (listed,
    // its files in place) and when the job ends (durable). On tmpfs the two are the same.
    let daemon = tools.rsync.then(|| rsync_daemon(base, &root));
    let rsync_dir = base.join("rsync");
    let mut baselines: Vec<(&str, Vec<(f64, f64)>)> = vec![
        ("cp -a", Vec::new()),
        ("tar | zstd -1 -T0 | zstd -d | tar -x", Vec::new()),
    ];
    if daemon.is_some() {
        baselines.push(("rsync -a (daemon)", Vec::new()));
    }
    let mut clones: Vec<(f64, f64)> = Vec::new();
    // CPU seconds of each copy: per baseline, and aienv's source and receiver nodes.
    let mut baseline_cpu: Vec<Vec<f64>> = vec![Vec::new(); baselines.len()];
    let mut clone_cpu: Vec<(f64, f64)> = Vec::new();
    let daemon_pid = daemon.as_ref().map(|(d, _)| d.0.id());
    let node_pids = (a.pid().unwrap(), b.pid().unwrap());
    let mut last_clone = None;
    println!(
        "\n{:<6} {:>16} {:>16} {:>16} {:>16}",
        "round", "cp -a (+sync)", "tar|zstd (+sync)", "rsync (+sync)", "aienv usable/dur"
    );
    for round in 0..rounds {
        let copy_dir = base.join("cp");
        let cpu = CpuMeter::start(&[]);
        baselines[0].1.push(timed(base, || {
            run_ok(Command::new("cp").arg("-a").arg(&root).arg(&copy_dir))
        }));
        baseline_cpu[0].push(cpu.seconds());
        remove_tree(&copy_dir);
        let tar_dir = base.join("tar");
        std::fs::create_dir_all(&tar_dir).unwrap();
        let cpu = CpuMeter::start(&[]);
        baselines[1].1.push(timed(base, || {
            run_ok(Command::new("sh").arg("-c").arg(format!(
                "tar -C '{}' -cf - . | zstd -q -1 -T0 | zstd -q -d | tar -C '{}' -xf -",
                root.display(),
                tar_dir.display()
            )))
        }));
        baseline_cpu[1].push(cpu.seconds());
        remove_tree(&tar_dir);
        if let Some((_, port)) = &daemon {
            let port = *port;
            let cpu = CpuMeter::start(&daemon_pid.into_iter().collect::<Vec<_>>());
            baselines[2].1.push(timed(base, || {
                run_ok(
                    Command::new("rsync")
                        .arg("-a")
                        .arg(format!("rsync://127.0.0.1:{port}/ws/"))
                        .arg(&rsync_dir),
                )
            }));
            baseline_cpu[2].push(cpu.seconds());
            // The last round's copy stays: the syncs below update it.
            if round + 1 < rounds {
                remove_tree(&rsync_dir);
            }
        }
        if let Some(path) = last_clone.take() {
            client.delete("bench").await.unwrap();
            // The node moves a deleted tree into its trash and removes it from there in the
            // background: wait until the trash is empty too, so the removal neither overlaps
            // the next clone (its time and CPU) nor leaves it chunks to copy locally.
            let trash = b_dir.join("trash");
            let emptied =
                || std::fs::read_dir(&trash).map_or(true, |mut entries| entries.next().is_none());
            let deadline = Instant::now() + Duration::from_secs(300);
            while Path::new(&path).exists() || !emptied() {
                assert!(Instant::now() < deadline, "the deleted clone stayed");
                actix_rt::time::sleep(Duration::from_millis(50)).await;
            }
        }
        flush_all();
        let source_cpu = CpuMeter::start(&[node_pids.0]);
        let receiver_cpu = CpuMeter::start(&[node_pids.1]);
        let started = Instant::now();
        let (job, usable) = transfer_usable(&client, "clone", Some("bench-a"), "bench").await;
        let durable = started.elapsed().as_secs_f64();
        clones.push((usable.map_or(durable, |u| u.as_secs_f64()), durable));
        clone_cpu.push((source_cpu.seconds(), receiver_cpu.seconds()));
        last_clone = client
            .get("bench")
            .await
            .ok()
            .and_then(|w| w.workspace.path.clone());
        let cell =
            |r: Option<&(f64, f64)>| r.map_or("-".to_string(), |(s, d)| format!("{s:.2} / {d:.2}"));
        println!(
            "{:<6} {:>16} {:>16} {:>16} {:>16}   {:.0} MB fetched",
            round + 1,
            cell(baselines[0].1.last()),
            cell(baselines[1].1.last()),
            cell(baselines.get(2).and_then(|b| b.1.last())),
            cell(clones.last()),
            job.progress.bytes_fetched as f64 / 1e6
        );
    }
    let fastest = baselines
        .iter()
        .map(|(name, runs)| (*name, median(runs.iter().map(|r| r.1))))
        .min_by(|x, y| x.1.total_cmp(&y.1))
        .unwrap();
    let tar = median(baselines[1].1.iter().map(|r| r.1));
    let usable = median(clones.iter().map(|c| c.0));
    let durable = median(clones.iter().map(|c| c.1));
    println!("medians of {rounds}, durable (after sync):");
    for (name, runs) in &baselines {
        let m = median(runs.iter().map(|r| r.1));
        println!(
            "  {name:<40} {m:>6.2} s {:>6.0} MB/s {:>7.0} files/s",
            bytes as f64 / 1e6 / m,
            files as f64 / m
        );
    }
    println!(
        "  {:<40} {usable:>6.2} s usable, {durable:.2} s durable ({:.0} MB/s)",
        "aienv clone",
        bytes as f64 / 1e6 / durable
    );
    // CPU time does not depend on what else the machine is doing as much as wall time does.
    let cpu_cells: Vec<String> = baselines
        .iter()
        .zip(&baseline_cpu)
        .map(|((name, _), runs)| format!("{name} {:.2}", median(runs.iter().copied())))
        .collect();
    let (source, receiver) = (
        median(clone_cpu.iter().map(|c| c.0)),
        median(clone_cpu.iter().map(|c| c.1)),
    );
    println!(
        "CPU seconds per copy, medians (user + system of the tool's processes; the kernel's write-back threads not counted): {}; aienv clone {:.2} (source {source:.2} + receiver {receiver:.2}; per round {})",
        cpu_cells.join(", "),
        median(clone_cpu.iter().map(|c| c.0 + c.1)),
        clone_cpu
            .iter()
            .map(|(s, r)| format!("{s:.2}+{r:.2}"))
            .collect::<Vec<_>>()
            .join(" ")
    );
    println!(
        "aienv clone / fastest ({}): usable {:.2}, durable {:.2} (target ≤ 1.1 on disk); durable / tar|zstd: {:.2} (target ≤ 1.0 on tmpfs)",
        fastest.0,
        usable / fastest.1,
        durable / fastest.1,
        durable / tar
    );

    // Syncthing mirrors the tree into a directory of its own, for the bytes a change moves.
    let syncthing = if tools.syncthing {
        let started = Instant::now();
        let pair = syncthing::Syncthing::start(base, &root, &base.join("syncthing"), "data").await;
        println!(
            "\nsyncthing: first copy in {:.1} s (for reference; its receiver fsyncs every file)",
            started.elapsed().as_secs_f64()
        );
        pair.pause();
        Some(pair)
    } else {
        None
    };

    // The 1 % change, `rounds` times, each different: 8 MiB inside one shard, 1 MiB appended
    // to the other, 170 small files edited, 10 added. Bytes on the wire are the kernel's count
    // of TCP payload sent from each source's port (tcpdump), the same for every tool.
    let mut syncs: Vec<SyncRound> = Vec::new();
    println!(
        "\n{:<6} {:>9} {:>18} {:>18} {:>18}",
        "round", "changed", "aienv s / MB", "rsync+sync s / MB", "syncthing s / MB"
    );
    for round in 0..rounds {
        let changed = match many {
            Some(count) => change_many(&root.join("data"), count, round),
            None => change_tree(&root.join("data"), scale, round),
        };
        if let (true, Some(clone)) = (local_edit(), &last_clone) {
            // A change of the clone's own, which the sync keeps (the three-way merge).
            std::fs::write(
                Path::new(clone).join(format!("data/local-{round}.txt")),
                "the clone's own\n",
            )
            .unwrap();
        }
        flush_all();
        let port = a
            .tls_url
            .rsplit(':')
            .next()
            .unwrap()
            .trim_end_matches('/')
            .parse()
            .unwrap();
        let capture = tools.capture(base, port);
        let (source_cpu, receiver_cpu) = (
            CpuMeter::start(&[node_pids.0]),
            CpuMeter::start(&[node_pids.1]),
        );
        let started = Instant::now();
        let job = transfer(&client, "sync", None, "bench").await;
        let seconds = started.elapsed().as_secs_f64();
        let aienv_cpu = (source_cpu.seconds(), receiver_cpu.seconds());
        let aienv = Measured::new(seconds, capture, job.progress.bytes_fetched);
        let mut rsync_cpu = None;
        let rsync = match &daemon {
            Some((_, port)) => {
                flush_all();
                let capture = tools.capture(base, *port);
                let cpu = CpuMeter::start(&daemon_pid.into_iter().collect::<Vec<_>>());
                let started = Instant::now();
                let (_, own) = rsync_pull(*port, &rsync_dir);
                rsync_cpu = Some(cpu.seconds());
                flush_all();
                Some(Measured::new(started.elapsed().as_secs_f64(), capture, own))
            }
            None => None,
        };
        let syncthing = match &syncthing {
            Some(pair) => {
                flush_all();
                let capture = tools.capture(base, pair.port);
                pair.resume();
                let before = pair.received().await;
                let seconds = pair.rescan_and_wait().await;
                let own = pair.received().await - before;
                pair.pause();
                Some(Measured::new(seconds, capture, own))
            }
            None => None,
        };
        let cell = |m: &Option<Measured>| {
            m.as_ref().map_or("-".to_string(), |m| {
                format!("{:.2} / {:.2}", m.seconds, m.wire as f64 / 1e6)
            })
        };
        println!(
            "{:<6} {:>7.1}MB {:>18} {:>18} {:>18}",
            round + 1,
            changed as f64 / 1e6,
            cell(&Some(aienv.clone())),
            cell(&rsync),
            cell(&syncthing)
        );
        syncs.push(SyncRound {
            aienv,
            rsync,
            syncthing,
            from_peers: job.progress.bytes_from_peers,
            local: job.progress.bytes_local,
            aienv_cpu,
            rsync_cpu,
        });
    }
    let counted = if tools.tcpdump {
        "TCP payload from the source's port, counted by the kernel (tcpdump)"
    } else {
        "each tool's own count (tcpdump is missing or may not capture)"
    };
    println!("medians of {rounds}; wire bytes: {counted}");
    let time = |pick: Pick| median(syncs.iter().filter_map(pick).map(|m| m.seconds));
    let wire = |pick: Pick| median(syncs.iter().filter_map(pick).map(|m| m.wire as f64));
    let own = |pick: Pick| median(syncs.iter().filter_map(pick).map(|m| m.own as f64));
    let rows: [(&str, Pick); 3] = [
        ("aienv sync", |r| Some(&r.aienv)),
        ("rsync -a (daemon) + sync", |r| r.rsync.as_ref()),
        ("syncthing (scan → in sync)", |r| r.syncthing.as_ref()),
    ];
    for (name, pick) in rows {
        if syncs.iter().filter_map(pick).next().is_none() {
            continue;
        }
        println!(
            "  {name:<28} {:>6.2} s {:>8.2} MB on the wire ({:.2} % of the tree; its own count {:.2} MB)",
            time(pick),
            wire(pick) / 1e6,
            wire(pick) * 100.0 / bytes as f64,
            own(pick) / 1e6
        );
    }
    println!(
        "  aienv: {:.2} MB of content fetched, {:.2} MB rebuilt or copied here (medians)",
        median(syncs.iter().map(|r| r.from_peers as f64)) / 1e6,
        median(syncs.iter().map(|r| r.local as f64)) / 1e6
    );
    // CPU time is steadier than wall time on a shared machine.
    let rsync_cpu: Vec<f64> = syncs.iter().filter_map(|r| r.rsync_cpu).collect();
    println!(
        "CPU seconds per sync, medians: aienv {:.2} (source {:.2} + receiver {:.2}; per round {}){}",
        median(syncs.iter().map(|r| r.aienv_cpu.0 + r.aienv_cpu.1)),
        median(syncs.iter().map(|r| r.aienv_cpu.0)),
        median(syncs.iter().map(|r| r.aienv_cpu.1)),
        syncs
            .iter()
            .map(|r| format!("{:.2}+{:.2}", r.aienv_cpu.0, r.aienv_cpu.1))
            .collect::<Vec<_>>()
            .join(" "),
        if rsync_cpu.is_empty() {
            String::new()
        } else {
            format!(
                ", rsync -a (daemon and client) {:.2}",
                median(rsync_cpu.iter().copied())
            )
        }
    );
    if daemon.is_some() {
        let ratios: Vec<String> = syncs
            .iter()
            .filter_map(|r| Some(r.aienv.seconds / r.rsync.as_ref()?.seconds))
            .map(|r| format!("{r:.2}"))
            .collect();
        println!(
            "aienv sync / rsync: time {:.2} (target ≤ 1.0; per round {}), bytes {:.2} (target ≤ 1.5)",
            time(rows[0].1) / time(rows[1].1),
            ratios.join(", "),
            wire(rows[0].1) / wire(rows[1].1)
        );
    }
    if syncthing.is_some() {
        println!(
            "aienv sync / syncthing bytes: {:.2} (target ≤ 1.0)",
            wire(rows[0].1) / wire(rows[2].1)
        );
    }
    drop(syncthing);

    let started = Instant::now();
    let job = transfer(&client, "sync", None, "bench").await;
    let idle_seconds = started.elapsed().as_secs_f64();
    assert_eq!(job.progress.bytes_fetched, 0);
    print!("no-change sync: aienv {idle_seconds:.3} s");
    if let Some((_, port)) = &daemon {
        let (seconds, _) = rsync_pull(*port, &rsync_dir);
        print!(
            ", rsync {seconds:.3} s, ratio {:.2} (target ≤ 0.5)",
            idle_seconds / seconds
        );
    }
    println!();
    // Peak resident memory of each node over the whole run (snapshot, clones, syncs).
    for (name, node) in [("source", &a), ("receiver", &b)] {
        let pid = node.pid().unwrap();
        println!(
            "{name} node: peak resident memory {:.1} MiB, now {:.1} MiB ({files} files)",
            status_kib(pid, "VmHWM:") as f64 / 1024.0,
            status_kib(pid, "VmRSS:") as f64 / 1024.0
        );
    }
    push_back(
        &a,
        &b,
        base,
        &root,
        many,
        scale,
        rounds,
        daemon.as_ref().map(|d| d.1),
    )
    .await;
    drop(daemon);
    drop(b);
    a.stop();
}

/// The clone pushes a change of its own back (`aienv sync --push`): the source, as the
/// origin, fetches it from the clone, verifies it and commits it. Timed against an `rsync -a`
/// push of the same change from the clone into the last rsync copy (a writable module of the
/// same daemon), with each node's peak resident memory over the push alone.
#[allow(clippy::too_many_arguments)]
async fn push_back(
    a: &TestNode,
    b: &TestNode,
    base: &Path,
    root: &Path,
    many: Option<u64>,
    scale: f64,
    rounds: usize,
    daemon: Option<u16>,
) {
    let (source, receiver) = (a.admin(), b.admin());
    let trusted = source.trust_peer(&b.key.to_readable(), None).await.unwrap();
    source
        .set_access(
            "bench",
            &aienv::api::AccessUpdate {
                writers: Some(vec![trusted.name.clone()]),
                ..aienv::api::AccessUpdate::default()
            },
        )
        .await
        .unwrap();
    let clone = PathBuf::from(receiver.get("bench").await.unwrap().workspace.path.unwrap());
    let rsync_push = |port: u16| {
        let output = Command::new("rsync")
            .args(["-a", "--delete"])
            .arg(format!("{}/data/", clone.display()))
            .arg(format!("rsync://127.0.0.1:{port}/copy/data/"))
            .output()
            .unwrap();
        assert!(output.status.success(), "{output:?}");
    };
    // The rsync copy starts as the clone is (its own files and modification times), so
    // that rsync's push moves the change alone, as aienv's does.
    if let Some(port) = daemon {
        rsync_push(port);
    }
    // A change the source has not seen: another round's.
    let changed = match many {
        Some(count) => change_many(&clone.join("data"), count, rounds),
        None => change_tree(&clone.join("data"), scale, rounds),
    };
    let rsync_seconds = daemon.map(|port| {
        flush_all();
        let started = Instant::now();
        rsync_push(port);
        sync_fs(base);
        started.elapsed().as_secs_f64()
    });
    flush_all();
    let pids = [a.pid().unwrap(), b.pid().unwrap()];
    for pid in pids {
        let _ = std::fs::write(format!("/proc/{pid}/clear_refs"), "5");
    }
    let cpu = (CpuMeter::start(&pids[..1]), CpuMeter::start(&pids[1..]));
    let started = Instant::now();
    let pushed = receiver.push("bench", false).await.unwrap();
    let seconds = started.elapsed().as_secs_f64();
    let cpu = (cpu.0.seconds(), cpu.1.seconds());
    assert_eq!(pushed.state, "done", "{pushed:?}");
    assert!(
        root.join("data").exists(),
        "the source's workspace is still there"
    );
    print!(
        "\npush back ({:.1} MB changed in {} paths): aienv {seconds:.2} s, CPU {:.2} (source {:.2} + clone {:.2})",
        changed as f64 / 1e6,
        pushed.changes,
        cpu.0 + cpu.1,
        cpu.0,
        cpu.1
    );
    if let Some(rsync) = rsync_seconds {
        print!(
            "; rsync -a push into a daemon + sync {rsync:.2} s, ratio {:.2}",
            seconds / rsync
        );
    }
    println!();
    for (name, pid) in [("source (origin)", pids[0]), ("receiver (clone)", pids[1])] {
        println!(
            "  {name}: peak resident memory over the push {:.1} MiB",
            status_kib(pid, "VmHWM:") as f64 / 1024.0
        );
    }
}

/// A field of `/proc/PID/status`, in KiB (0 when unreadable).
fn status_kib(pid: u32, key: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// What the run can use besides aienv.
#[derive(Clone, Copy)]
struct Tools {
    rsync: bool,
    syncthing: bool,
    tcpdump: bool,
}

impl Tools {
    /// A capture of what `port` sends, where tcpdump can capture.
    fn capture(&self, base: &Path, port: u16) -> Option<wire::Capture> {
        if !self.tcpdump {
            return None;
        }
        wire::Capture::start(base, port)
    }
}

/// One tool's sync of one round.
#[derive(Clone)]
struct Measured {
    seconds: f64,
    /// Bytes on the wire: the kernel's count, or the tool's own without tcpdump.
    wire: u64,
    /// The tool's own count of what it received.
    own: u64,
}

impl Measured {
    fn new(seconds: f64, capture: Option<wire::Capture>, own: u64) -> Measured {
        let wire = match capture {
            Some(capture) => {
                let count = capture.stop();
                if count.dropped > 0 {
                    println!(
                        "  (tcpdump: {} segments dropped by the kernel)",
                        count.dropped
                    );
                }
                count.bytes
            }
            None => own,
        };
        Measured { seconds, wire, own }
    }
}

/// One tool's figures of a round.
type Pick = fn(&SyncRound) -> Option<&Measured>;

struct SyncRound {
    aienv: Measured,
    rsync: Option<Measured>,
    syncthing: Option<Measured>,
    from_peers: u64,
    local: u64,
    /// CPU seconds of the source and the receiver node over the sync.
    aienv_cpu: (f64, f64),
    /// CPU seconds of the rsync daemon and client over the pull.
    rsync_cpu: Option<f64>,
}

/// `BENCH_ROUNDS` (default 5): how many times each copy and each sync is measured.
fn rounds() -> usize {
    std::env::var("BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&n| n > 0)
        .unwrap_or(5)
}

fn median(values: impl Iterator<Item = f64>) -> f64 {
    let mut values: Vec<f64> = values.collect();
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_by(f64::total_cmp);
    let middle = values.len() / 2;
    if values.len() % 2 == 1 {
        values[middle]
    } else {
        (values[middle - 1] + values[middle]) / 2.0
    }
}

fn remove_tree(path: &Path) {
    let _ = Command::new("rm").arg("-rf").arg(path).status();
}

/// `BENCH_LOCAL_EDIT=1`: before each sync the clone gets a file of its own, so the sync
/// keeps the clone's changes (the three-way merge) rather than taking the source as it is.
fn local_edit() -> bool {
    std::env::var_os("BENCH_LOCAL_EDIT").is_some()
}

/// `BENCH_FILES=N`: the tree is N small files instead (memory and time at scale).
fn many_files() -> Option<u64> {
    std::env::var("BENCH_FILES").ok()?.parse().ok()
}

/// N files of 0.5–2 KiB in directories of 200; returns (files, bytes).
fn build_many(root: &Path, count: u64) -> (u64, u64) {
    let mut random = Random(0x3a11);
    let text_block = text_sample();
    let mut bytes = 0;
    for i in 0..count {
        let dir = root.join(format!("d{:04}", i / 200));
        if i % 200 == 0 {
            std::fs::create_dir_all(&dir).unwrap();
        }
        let len = 512 + (random.next() % 1536) as usize;
        let content = text(&text_block, len, &mut random);
        bytes += content.len() as u64;
        std::fs::write(dir.join(format!("f{i}.txt")), content).unwrap();
    }
    (count, bytes)
}

/// Rewrites 1 % of the small files (other ones and other content each round); returns the
/// bytes written.
fn change_many(root: &Path, count: u64, round: usize) -> u64 {
    let mut random = Random(0x77 + round as u64);
    let text_block = text_sample();
    let mut changed = 0;
    for i in (round as u64 % 100..count).step_by(100) {
        let content = text(&text_block, 1024, &mut random);
        changed += content.len() as u64;
        std::fs::write(root.join(format!("d{:04}/f{i}.txt", i / 200)), content).unwrap();
    }
    changed
}

/// Writes the tree and returns (files, bytes).
fn build_tree(root: &Path, scale: f64) -> (u64, u64) {
    let mut random = Random(0x5eed);
    let mut files = 0u64;
    let mut bytes = 0u64;
    let venv = root.join("venv/lib/python3.11/site-packages");
    let small_files = (17_000.0 * scale) as u64;
    let text_block = text_sample();
    for i in 0..small_files {
        let package = format!("pkg{:03}/sub{:02}", i % 300, (i / 300) % 20);
        let dir = venv.join(package);
        std::fs::create_dir_all(&dir).unwrap();
        let roll = random.next() % 100;
        let (name, content) = if roll < 62 {
            let len = 1_000 + (random.next() % 9_000) as usize;
            (format!("mod{i}.py"), text(&text_block, len, &mut random))
        } else if roll < 92 {
            let len = 8_000 + (random.next() % 40_000) as usize;
            (format!("mod{i}.py"), text(&text_block, len, &mut random))
        } else if roll < 99 {
            let len = 64_000 + (random.next() % 136_000) as usize;
            (format!("ext{i}.so"), random.bytes(len))
        } else {
            let len = 1_000_000 + (random.next() % 1_500_000) as usize;
            (format!("lib{i}.so"), random.bytes(len))
        };
        bytes += content.len() as u64;
        std::fs::write(dir.join(name), content).unwrap();
        files += 1;
    }
    let shard = (200.0 * scale * 1024.0 * 1024.0) as usize;
    for i in 0..2 {
        let path = root.join(format!("model-0000{i}-of-00002.safetensors"));
        let mut file = std::fs::File::create(&path).unwrap();
        let mut left = shard;
        while left > 0 {
            let piece = random.bytes(left.min(8 << 20));
            file.write_all(&piece).unwrap();
            left -= piece.len();
        }
        bytes += shard as u64;
        files += 1;
    }
    let csv_len = (100.0 * scale * 1024.0 * 1024.0) as usize;
    let mut csv = std::io::BufWriter::new(std::fs::File::create(root.join("train.csv")).unwrap());
    let mut written = 0;
    let mut row = 0u64;
    while written < csv_len {
        let line = format!(
            "{row},{:.6},{:.6},{},label_{}\n",
            (random.next() % 1_000_000) as f64 / 7.0,
            (random.next() % 1_000_000) as f64 / 13.0,
            random.next() % 10_000,
            random.next() % 10
        );
        csv.write_all(line.as_bytes()).unwrap();
        written += line.len();
        row += 1;
    }
    csv.flush().unwrap();
    bytes += written as u64;
    files += 1;
    (files, bytes)
}

/// Applies the 1 % change (elsewhere and with other content each round); returns the bytes
/// changed or added.
fn change_tree(root: &Path, scale: f64, round: usize) -> u64 {
    let mut random = Random(0xc4a9 + round as u64);
    let mut changed = 0;
    let shard = root.join("model-00000-of-00002.safetensors");
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&shard)
        .unwrap();
    let offset = ((80.0 + 10.0 * round as f64) * scale * 1024.0 * 1024.0) as u64;
    std::os::unix::fs::FileExt::write_all_at(&file, &random.bytes(8 << 20), offset).unwrap();
    changed += 8 << 20;
    let mut other = std::fs::OpenOptions::new()
        .append(true)
        .open(root.join("model-00001-of-00002.safetensors"))
        .unwrap();
    other.write_all(&random.bytes(1 << 20)).unwrap();
    changed += 1 << 20;
    let venv = root.join("venv/lib/python3.11/site-packages");
    let mut edited = 0;
    let text_block = text_sample();
    'outer: for package in 0..300 {
        let dir = venv.join(format!("pkg{package:03}/sub00"));
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.extension().is_some_and(|e| e == "py") {
                let mut content = std::fs::read(&path).unwrap();
                content.extend_from_slice(b"\n# edited\n");
                changed += content.len() as u64;
                std::fs::write(&path, content).unwrap();
                edited += 1;
                if edited == 170 {
                    break 'outer;
                }
                break;
            }
        }
    }
    for i in 0..10 {
        let content = text(&text_block, 5_000, &mut random);
        changed += content.len() as u64;
        std::fs::write(venv.join(format!("pkg000/new{round}-{i}.py")), content).unwrap();
    }
    changed
}

fn text_sample() -> Vec<u8> {
    let words = [
        "def", "return", "self", "import", "numpy", "as", "np", "class", "for", "in", "range",
        "if", "else", "tensor", "shape", "=", "(", ")", ":", "\n    ", "\n", "x", "y", "0", "1",
        "None", "True", "value", "data", "model",
    ];
    let mut random = Random(42);
    let mut out = Vec::new();
    while out.len() < 64 * 1024 {
        out.extend_from_slice(words[(random.next() % words.len() as u64) as usize].as_bytes());
        out.push(b' ');
    }
    out
}

fn text(sample: &[u8], len: usize, random: &mut Random) -> Vec<u8> {
    let start = (random.next() as usize) % (sample.len() - 1);
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        let take = (len - out.len()).min(sample.len() - start);
        out.extend_from_slice(&sample[start..start + take]);
    }
    out
}

struct Random(u64);

impl Random {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn bytes(&mut self, len: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(len + 8);
        while out.len() < len {
            out.extend_from_slice(&self.next().to_le_bytes());
        }
        out.truncate(len);
        out
    }
}

/// A child process killed when dropped (also when a measurement panics).
struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn rsync_daemon(base: &Path, root: &Path) -> (Daemon, u16) {
    let port = common::free_tcp_port();
    let config = base.join("rsyncd.conf");
    std::fs::write(
        &config,
        format!(
            "use chroot = no\nuid = root\ngid = root\n[ws]\npath = {}\nread only = yes\n[copy]\npath = {}\nread only = no\n",
            root.display(),
            base.join("rsync").display()
        ),
    )
    .unwrap();
    let child = Daemon(
        Command::new("rsync")
            .args([
                "--daemon",
                "--no-detach",
                "--address",
                "127.0.0.1",
                "--port",
                &port.to_string(),
                "--config",
            ])
            .arg(&config)
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "rsync daemon did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    (child, port)
}

/// Pulls into `target`, returning seconds and bytes received.
fn rsync_pull(port: u16, target: &Path) -> (f64, u64) {
    let started = Instant::now();
    let output = Command::new("rsync")
        .args(["-a", "--delete", "--stats"])
        .arg(format!("rsync://127.0.0.1:{port}/ws/"))
        .arg(target)
        .output()
        .unwrap();
    let seconds = started.elapsed().as_secs_f64();
    assert!(output.status.success(), "{output:?}");
    let stats = String::from_utf8_lossy(&output.stdout);
    let received = stats
        .lines()
        .find_map(|l| l.strip_prefix("Total bytes received: "))
        .map(|v| v.replace(',', "").trim().parse().unwrap_or(0))
        .unwrap_or(0);
    (seconds, received)
}

/// Seconds until `work` returns, and until its data is on disk.
fn timed(base: &Path, work: impl FnOnce()) -> (f64, f64) {
    flush_all();
    let started = Instant::now();
    work();
    let returned = started.elapsed().as_secs_f64();
    sync_fs(base);
    (returned, started.elapsed().as_secs_f64())
}

/// CPU time (user + system) spent from its start: by this process's children that were
/// waited for (a baseline's commands), and by the given processes and the children they
/// waited for (a node; the rsync daemon, which forks one child per pull).
struct CpuMeter {
    pids: Vec<u32>,
    start: f64,
}

impl CpuMeter {
    fn start(pids: &[u32]) -> CpuMeter {
        CpuMeter {
            pids: pids.to_vec(),
            start: Self::now(pids),
        }
    }

    fn seconds(&self) -> f64 {
        Self::now(&self.pids) - self.start
    }

    fn now(pids: &[u32]) -> f64 {
        // SAFETY: getrusage only writes the struct it is given; sysconf reads a constant.
        let (children, ticks) = unsafe {
            let mut usage: libc::rusage = std::mem::zeroed();
            libc::getrusage(libc::RUSAGE_CHILDREN, &mut usage);
            let seconds = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
            (
                seconds(usage.ru_utime) + seconds(usage.ru_stime),
                libc::sysconf(libc::_SC_CLK_TCK) as f64,
            )
        };
        let processes: f64 = pids
            .iter()
            .map(|pid| {
                // Fields after the command's closing parenthesis: utime, stime, cutime and
                // cstime are the 12th to 15th (fields 14 to 17 of proc(5)).
                let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
                let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
                after
                    .split_whitespace()
                    .skip(11)
                    .take(4)
                    .filter_map(|v| v.parse::<f64>().ok())
                    .sum::<f64>()
                    / ticks
            })
            .sum();
        children + processes
    }
}

/// Writes back everything dirty, so the next measurement starts clean.
fn flush_all() {
    let _ = Command::new("sync").status();
}

fn run_ok(command: &mut Command) {
    let status = command.status().unwrap();
    assert!(status.success(), "{command:?} failed");
}

fn sync_fs(path: &Path) {
    let _ = Command::new("sync").arg("-f").arg(path).status();
}

async fn transfer(client: &Client, kind: &str, peer: Option<&str>, workspace: &str) -> TransferDto {
    transfer_usable(client, kind, peer, workspace).await.0
}

/// A transfer to its end, and, for a clone, how long until the workspace was listed here
/// (usable) — the job itself ends once the clone is on disk.
async fn transfer_usable(
    client: &Client,
    kind: &str,
    peer: Option<&str>,
    workspace: &str,
) -> (TransferDto, Option<Duration>) {
    let started = Instant::now();
    let mut usable = None;
    {
        let job = client
            .start_transfer(&TransferRequestDto {
                kind: kind.into(),
                peer: peer.map(str::to_string),
                workspace: workspace.into(),
                ..TransferRequestDto::default()
            })
            .await
            .unwrap();
        loop {
            let job = client.transfer(&job.id.to_string()).await.unwrap();
            if usable.is_none()
                && kind == "clone"
                && job.state == "materializing"
                && client.get(workspace).await.is_ok()
            {
                usable = Some(started.elapsed());
            }
            if job.is_finished() {
                assert_eq!(job.state, "done", "{:?}", job.error);
                return (job, usable);
            }
            actix_rt::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

async fn wait_listed(client: &Client) {
    {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let catalog = client
                .network_catalog(&aienv::client::NetworkQuery::default())
                .await
                .unwrap();
            if catalog.iter().any(|e| e.workspace.name == "bench") {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the share did not reach the second node"
            );
            actix_rt::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// A node on `data` with its TLS listener on `port` (0: any), polled over HTTP by its static
/// peers (`env`); stopped on drop.
fn start_node(data: &Path, name: &str, port: u16, env: &[(&str, &str)]) -> TestNode {
    let mut command = Command::new(common::binary());
    command
        .args(["serve", "--http-port", &port.to_string()])
        .args([
            "--local-port",
            "0",
            "--bind",
            "127.0.0.1",
            "--no-discovery",
            "--announce-interval",
            "0.2",
            "--name",
            name,
            "--data-dir",
        ])
        .arg(data)
        .env(
            "AIENV_LOG",
            std::env::var("BENCH_LOG")
                .unwrap_or_else(|_| "warn,aienv_actors::transfer_queue::runner=info".into()),
        )
        .env_remove("AIENV_CONFIG")
        .env("XDG_CONFIG_HOME", data.join("no-config"))
        .envs(env.iter().copied());
    TestNode::start(command, data)
}
