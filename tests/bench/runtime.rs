//! Runtime benchmark: time from `run` to the first tool answering (process backend against
//! starting the same tool by hand; docker backend against `docker run`), the latency the
//! node's tool proxy adds (requests through `/w/<ws>/<tool>/` against the same requests
//! sent to the tool directly, p50/p99), and proxy throughput for one large download, beside
//! two bare relays on loopback (a 1 MiB copy loop, and `splice` through a pipe): what any
//! proxy that reaches the tool over a second loopback connection can do on this machine.
//!
//! Run: `cargo bench --bench runtime`. The tool is busybox's httpd (Debian: busybox-static),
//! so the figures measure aienv, not a slow tool. `BENCH_SCALE` (default 1.0) scales the
//! download (1 GiB at 1.0) and the request counts. Figures, not assertions.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;
use std::process::{Command, Stdio};
use std::ptr::null_mut;
use std::time::{Duration, Instant};

use aienv::api::RunRequest;
use futures_util::StreamExt;

#[path = "../common/mod.rs"]
mod common;
use common::runtime::workspace;
use common::TestNode;

fn main() {
    let scale: f64 = std::env::var("BENCH_SCALE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1.0);
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!("aienv runtime benchmark: scale {scale}, {cores} cores");
    let Some(busybox) = ["/bin/busybox", "/usr/bin/busybox"]
        .into_iter()
        .find(|p| Path::new(p).exists())
    else {
        println!("busybox is not installed (apt-get install busybox-static): nothing to measure");
        return;
    };
    actix_rt::System::new().block_on(run(busybox, scale));
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn wait_answering(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "nothing answers on {port}");
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// `BENCH_ROUNDS`, default 5.
fn bench_rounds() -> usize {
    std::env::var("BENCH_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .filter(|n| *n > 0)
        .unwrap_or(5)
}

fn median(samples: &[f64]) -> f64 {
    let mut sorted = samples.to_vec();
    sorted.sort_by(f64::total_cmp);
    percentile(&sorted, 0.5)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// How a bare relay moves the tool's answers to the client.
#[derive(Clone, Copy)]
enum Relay {
    /// `read` into a 1 MiB buffer and `write` it out, as the node's proxy does.
    Copy,
    /// `splice` the tool's socket into a 1 MiB pipe and the pipe into the client's socket:
    /// no copy through user space.
    Splice,
}

/// Starts a bare relay on a loopback port towards the tool on `tool_port`: no HTTP, no
/// checks, a thread per direction of each connection. Its throughput is the ceiling of any
/// proxy that reaches the tool over a second loopback connection on this machine.
fn bare_relay(tool_port: u16, how: Relay) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for client in listener.incoming().flatten() {
            std::thread::spawn(move || relay_connection(client, tool_port, how));
        }
    });
    port
}

fn relay_connection(client: TcpStream, tool_port: u16, how: Relay) {
    let tool = TcpStream::connect(("127.0.0.1", tool_port)).unwrap();
    for stream in [&client, &tool] {
        stream.set_nodelay(true).unwrap();
    }
    let (mut requests, mut to_tool) = (client.try_clone().unwrap(), tool.try_clone().unwrap());
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut requests, &mut to_tool);
        let _ = to_tool.shutdown(Shutdown::Write);
    });
    match how {
        Relay::Copy => {
            let (mut from, mut to) = (&tool, &client);
            let mut buffer = vec![0u8; 1 << 20];
            loop {
                match from.read(&mut buffer) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if to.write_all(&buffer[..n]).is_err() {
                            break;
                        }
                    }
                }
            }
        }
        Relay::Splice => splice_all(&tool, &client),
    }
    let _ = client.shutdown(Shutdown::Both);
}

/// Moves everything `from` sends into `to` through a pipe, until `from` ends or either fails.
fn splice_all(from: &TcpStream, to: &TcpStream) {
    let mut fds = [0i32; 2];
    // SAFETY: `fds` has room for the two descriptors pipe2 writes.
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    // SAFETY: pipe2 just opened both descriptors; each is owned (and closed) once, here.
    let (out, into) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    // SAFETY: plain fcntl on an open pipe; a smaller pipe only lowers throughput.
    unsafe { libc::fcntl(into.as_raw_fd(), libc::F_SETPIPE_SZ, 1 << 20) };
    // SAFETY (both calls): the descriptors are open for the call; null offsets mean "the
    // current position", as sockets and pipes require.
    let splice = |from: i32, to: i32, len: usize| unsafe {
        libc::splice(from, null_mut(), to, null_mut(), len, libc::SPLICE_F_MOVE)
    };
    loop {
        let got = splice(from.as_raw_fd(), into.as_raw_fd(), 1 << 20);
        if got <= 0 {
            return;
        }
        let mut left = got as usize;
        while left > 0 {
            let put = splice(out.as_raw_fd(), to.as_raw_fd(), left);
            if put <= 0 {
                return;
            }
            left -= put as usize;
        }
    }
}

async fn run(busybox: &str, scale: f64) {
    let node = TestNode::spawn();
    let admin = node.admin();
    let big = ((1u64 << 30) as f64 * scale) as u64;
    let spec = format!(
        "schema_version: 1\nruntime: process\nhealth: {{interval_seconds: 60}}\ntools: [{{name: web, kind: http, strip_prefix: true, command: [{busybox}, httpd, -f, -p, $PORT, -h, www]}}, {{name: py, kind: http, strip_prefix: true, command: [python3, -m, http.server, $PORT, --bind, 127.0.0.1, --directory, www]}}]\n"
    );
    // Run timing uses an environment with the busybox tool alone (the Python one takes
    // 0.25 s to start by itself).
    let quick = format!(
        "schema_version: 1\nruntime: process\nhealth: {{interval_seconds: 60}}\ntools: [{{name: web, kind: http, strip_prefix: true, command: [{busybox}, httpd, -f, -p, $PORT, -h, www]}}]\n"
    );
    workspace(
        &node,
        "quick",
        &[("www/index.html", "hello\n")],
        "web",
        &quick,
    )
    .await;
    let root = workspace(
        &node,
        "bench",
        &[("www/index.html", "hello\n")],
        "web",
        &spec,
    )
    .await;
    {
        let mut file = std::fs::File::create(Path::new(&root).join("www/big.bin")).unwrap();
        let block = vec![0x5au8; 1 << 20];
        let mut left = big;
        while left > 0 {
            let n = left.min(block.len() as u64) as usize;
            file.write_all(&block[..n]).unwrap();
            left -= n as u64;
        }
    }

    // 1. Run to first answer, process backend, against starting the tool by hand.
    let rounds = 10;
    let mut aienv_ms = Vec::new();
    let mut direct_ms = Vec::new();
    for _ in 0..rounds {
        let started = Instant::now();
        let statuses = admin
            .run(
                "quick",
                &RunRequest {
                    wait: true,
                    ..RunRequest::default()
                },
            )
            .await
            .unwrap();
        assert_eq!(statuses[0].state, "running", "{statuses:#?}");
        aienv_ms.push(started.elapsed().as_secs_f64() * 1000.0);
        admin.stop("quick", None).await.unwrap();

        let port = free_port();
        let started = Instant::now();
        let mut child = Command::new(busybox)
            .args(["httpd", "-f", "-p", &port.to_string(), "-h", "www"])
            .current_dir(&root)
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        wait_answering(port);
        direct_ms.push(started.elapsed().as_secs_f64() * 1000.0);
        let _ = child.kill();
        let _ = child.wait();
    }
    aienv_ms.sort_by(f64::total_cmp);
    direct_ms.sort_by(f64::total_cmp);
    let (a, d) = (percentile(&aienv_ms, 0.5), percentile(&direct_ms, 0.5));
    println!("\nrun -> first answer, process backend ({rounds} rounds, median):");
    println!("  aienv run (set-up recorded, spawn, health probe): {a:8.1} ms");
    println!("  the tool started by hand, first TCP answer:        {d:8.1} ms");
    println!("  aienv's own share: {:.1} ms (target < 300 ms)", a - d);

    // 2. Docker backend against `docker run`, when an engine and the test image exist.
    docker_run(&node, &admin, busybox).await;

    // 3. Proxy latency: the same small request through the proxy and directly.
    let statuses = admin
        .run(
            "bench",
            &RunRequest {
                wait: true,
                ..RunRequest::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(statuses[0].state, "running");
    // The tools' own ports, from their processes' command lines.
    let port_of = |tool: usize, flag: &str| {
        let pid = statuses[0].tools[tool].pid.unwrap();
        let cmdline = std::fs::read_to_string(format!("/proc/{pid}/cmdline")).unwrap();
        let args: Vec<&str> = cmdline.split('\0').collect();
        let at = args.iter().position(|a| *a == flag).unwrap();
        args[at + 1].parse::<u16>().unwrap()
    };
    let port = port_of(0, "-p");
    let py_port = port_of(1, "http.server");
    let auth = format!("Bearer {}", node.token());
    let client = awc::Client::builder()
        .timeout(Duration::from_secs(600))
        .finish();
    let proxied = format!("{}/w/bench/web/index.html", node.url);
    let direct = format!("http://127.0.0.1:{port}/index.html");
    // The way a browser reaches the tool: its own origin, signed in by a ticket.
    let ticket = admin.tool_ticket("bench", "web").await.unwrap();
    let signed = awc::Client::builder()
        .disable_redirects()
        .finish()
        .get(&ticket.url)
        .send()
        .await
        .unwrap();
    let cookie = common::set_cookie(signed.headers(), "aienv_tool_");
    let origin = ticket.url.split("/_aienv/").next().unwrap().to_string();
    let own_origin = format!("{origin}/w/bench/web/index.html");
    let requests = ((2000.0 * scale) as usize).max(200);
    let mut through = Vec::with_capacity(requests);
    let mut straight = Vec::with_capacity(requests);
    let mut via_origin = Vec::with_capacity(requests);
    for i in 0..requests + 50 {
        for (url, times, header) in [
            (&proxied, &mut through, ("Authorization", auth.as_str())),
            (&direct, &mut straight, ("Authorization", auth.as_str())),
            (&own_origin, &mut via_origin, ("Cookie", cookie.as_str())),
        ] {
            let started = Instant::now();
            let mut response = client
                .get(url.as_str())
                .insert_header(header)
                .send()
                .await
                .unwrap();
            let body = response.body().await.unwrap();
            assert_eq!(&body[..], b"hello\n");
            if i >= 50 {
                times.push(started.elapsed().as_secs_f64() * 1000.0);
            }
        }
    }
    through.sort_by(f64::total_cmp);
    straight.sort_by(f64::total_cmp);
    via_origin.sort_by(f64::total_cmp);
    println!("\nproxy latency ({requests} small GETs each, interleaved, keep-alive):");
    println!("            p50        p99");
    println!(
        "  direct  {:7.3} ms {:7.3} ms",
        percentile(&straight, 0.5),
        percentile(&straight, 0.99)
    );
    println!(
        "  proxy   {:7.3} ms {:7.3} ms",
        percentile(&through, 0.5),
        percentile(&through, 0.99)
    );
    println!(
        "  added   {:7.3} ms {:7.3} ms (target < 1 ms at p50); ratio p50 {:.2}x",
        percentile(&through, 0.5) - percentile(&straight, 0.5),
        percentile(&through, 0.99) - percentile(&straight, 0.99),
        percentile(&through, 0.5) / percentile(&straight, 0.5)
    );
    println!(
        "  tool origin (browsers: own port, session cookie) {:7.3} ms {:7.3} ms; added {:.3} ms at p50",
        percentile(&via_origin, 0.5),
        percentile(&via_origin, 0.99),
        percentile(&via_origin, 0.5) - percentile(&straight, 0.5)
    );

    // 4. Throughput of one large download, from a tool that sends with sendfile (busybox
    //    httpd: the hardest baseline) and from a Python tool (as JupyterLab serves files),
    //    through the node, directly, and through the two bare relays. Rounds alternate the
    //    four paths; medians, as single runs here vary by a third.
    let rounds = bench_rounds();
    for (label, tool, tool_port) in [
        ("busybox httpd (sendfile)", "web", port),
        ("python http.server", "py", py_port),
    ] {
        println!(
            "\nproxy throughput, one {} MiB download from {label} ({rounds} rounds, median):",
            big >> 20
        );
        let paths = [
            ("proxy", format!("{}/w/bench/{tool}/big.bin", node.url)),
            ("direct", format!("http://127.0.0.1:{tool_port}/big.bin")),
            (
                "bare relay, copy",
                format!(
                    "http://127.0.0.1:{}/big.bin",
                    bare_relay(tool_port, Relay::Copy)
                ),
            ),
            (
                "bare relay, splice",
                format!(
                    "http://127.0.0.1:{}/big.bin",
                    bare_relay(tool_port, Relay::Splice)
                ),
            ),
        ];
        let mut seconds = vec![Vec::new(); paths.len()];
        for _ in 0..rounds {
            for (index, (_, url)) in paths.iter().enumerate() {
                let started = Instant::now();
                let mut response = client
                    .get(url.as_str())
                    .insert_header(("Authorization", auth.as_str()))
                    .send()
                    .await
                    .unwrap();
                let mut total = 0u64;
                while let Some(chunk) = response.next().await {
                    total += chunk.unwrap().len() as u64;
                }
                assert_eq!(total, big, "{url}");
                seconds[index].push(started.elapsed().as_secs_f64());
            }
        }
        let rate = |seconds: f64| big as f64 / seconds / (1 << 20) as f64;
        let direct = median(&seconds[1]);
        for ((name, _), samples) in paths.iter().zip(&seconds) {
            let per_round = samples
                .iter()
                .map(|s| format!("{:.0}", rate(*s)))
                .collect::<Vec<_>>()
                .join(", ");
            println!(
                "  {name:<19} {:8.0} MiB/s, {:3.0}% of direct (per round {per_round})",
                rate(median(samples)),
                100.0 * direct / median(samples)
            );
        }
        let best_relay = median(&seconds[2]).min(median(&seconds[3]));
        println!(
            "  proxy keeps {:.0}% of direct throughput (target >= 80%); the better bare relay {:.0}%: the proxy reaches {:.0}% of it",
            100.0 * direct / median(&seconds[0]),
            100.0 * direct / best_relay,
            100.0 * best_relay / median(&seconds[0])
        );
    }
    admin.stop("bench", None).await.unwrap();
}

async fn docker_run(node: &TestNode, admin: &aienv::client::Client, busybox: &str) {
    let image = "aienv-test-busybox:1";
    let docker_ok = Command::new("docker")
        .args(["image", "inspect", image])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !docker_ok {
        println!("\ndocker: no engine or no `{image}` image (`cargo test --test runtime_docker` imports it): left out");
        return;
    }
    let spec = format!(
        "schema_version: 1\nruntime: docker\ndocker: {{image: '{image}'}}\nhealth: {{interval_seconds: 60}}\nrestart: {{stop_timeout_seconds: 1}}\ntools: [{{name: web, kind: http, strip_prefix: true, command: [httpd, -f, -p, $PORT, -h, /workspace/www]}}]\n"
    );
    let root = workspace(
        node,
        "dbench",
        &[("www/index.html", "hello\n")],
        "web",
        &spec,
    )
    .await;
    let _ = busybox;
    let rounds = 5;
    let mut aienv_ms = Vec::new();
    let mut direct_ms = Vec::new();
    for round in 0..rounds {
        let started = Instant::now();
        let statuses = admin
            .run(
                "dbench",
                &RunRequest {
                    wait: true,
                    ..RunRequest::default()
                },
            )
            .await
            .unwrap();
        assert_eq!(statuses[0].state, "running", "{statuses:#?}");
        aienv_ms.push(started.elapsed().as_secs_f64() * 1000.0);
        admin.stop("dbench", None).await.unwrap();

        let port = free_port();
        let name = format!("aienv-bench-{}-{round}", std::process::id());
        let started = Instant::now();
        let status = Command::new("docker")
            .args(["run", "-d", "--rm", "--name", &name, "-p"])
            .arg(format!("127.0.0.1:{port}:{port}"))
            .arg("-v")
            .arg(format!("{root}:/workspace"))
            .args([
                image,
                "httpd",
                "-f",
                "-p",
                &port.to_string(),
                "-h",
                "/workspace/www",
            ])
            .stdout(Stdio::null())
            .status()
            .unwrap();
        assert!(status.success());
        // Answering: an HTTP response, not just docker-proxy's accept.
        let url = format!("http://127.0.0.1:{port}/index.html");
        let client = awc::Client::default();
        loop {
            if let Ok(response) = client.get(&url).send().await {
                if response.status().is_success() {
                    break;
                }
            }
            actix_rt::time::sleep(Duration::from_millis(2)).await;
        }
        direct_ms.push(started.elapsed().as_secs_f64() * 1000.0);
        let _ = Command::new("docker")
            .args(["rm", "-f", &name])
            .stdout(Stdio::null())
            .status();
    }
    aienv_ms.sort_by(f64::total_cmp);
    direct_ms.sort_by(f64::total_cmp);
    let (a, d) = (percentile(&aienv_ms, 0.5), percentile(&direct_ms, 0.5));
    println!("\nrun -> first answer, docker backend ({rounds} rounds, median):");
    println!("  aienv run (create, start, publish, probe): {a:8.1} ms");
    println!("  docker run -d -p, polled until it answers: {d:8.1} ms");
    println!("  ratio {:.2}x", a / d);
}
