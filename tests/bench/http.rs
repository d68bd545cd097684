//! HTTP benchmark: the node against a bare actix-web "hello" server built for the purpose,
//! side by side in one run, under `wrk -t1 -c64`.
//!
//! Run: `cargo bench --bench http` (needs `wrk`; `BENCH_SECONDS` sets each run's length).
//! Prints requests/s, p99 latency and the ratio to the bare server for `GET /api/v1/health` and
//! `GET /api/v1/workspaces` (default page, 1,000 workspaces stored) on the plain loopback
//! listener and on the TLS listener (keep-alive), the node's idle resident
//! memory, and its start-up time to the first healthy answer. Figures, not assertions: these
//! machines are shared and noisy.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("bare-hello") {
        bare_hello();
        return;
    }
    if Command::new("wrk").arg("--version").output().is_err() {
        eprintln!("wrk is not installed (Debian: apt-get install wrk)");
        std::process::exit(1);
    }
    let seconds: u64 = std::env::var("BENCH_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10);
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!("aienv HTTP benchmark: wrk -t1 -c64 -d{seconds}s --latency, {cores} cores");

    let (mut bare, bare_url) =
        spawn_with_url(Command::new(std::env::current_exe().unwrap()).arg("bare-hello"));
    let temp = tempfile::tempdir().unwrap();
    let data = temp.path().join("data");

    // Start-up on an empty data dir.
    let (mut node, url, _, empty_startup) = start_node(&data);
    let token = std::fs::read_to_string(data.join("admin.token"))
        .unwrap()
        .trim()
        .to_string();
    print!("populating 1000 workspaces ... ");
    std::io::stdout().flush().unwrap();
    let populate = Instant::now();
    for i in 0..1000 {
        let body = format!(
            r#"{{"name":"ws-{i:04}","title":"Workspace {i}","description":"A benchmark workspace with a realistic description of a few words.","tags":["bench","t{}"],"type":"training","languages":["python"],"tools":["jupyterlab"]}}"#,
            i % 10
        );
        let (status, _) = http(
            &url,
            "POST",
            "/api/v1/workspaces",
            Some(&token),
            Some(&body),
        );
        assert_eq!(status, 201, "creating workspace {i}");
    }
    println!("{:.1} s", populate.elapsed().as_secs_f64());
    stop(&mut node);

    // Start-up with 1000 workspaces, then idle memory.
    let (mut node, url, tls_url, full_startup) = start_node(&data);
    std::thread::sleep(Duration::from_secs(2));
    let idle_rss = rss_kib(node.id());

    let bare_hello = wrk(&format!("{bare_url}/"), None, seconds);
    let health = wrk(&format!("{url}/api/v1/health"), None, seconds);
    let page = wrk(&format!("{url}/api/v1/workspaces"), Some(&token), seconds);
    // The LAN listener: TLS with keep-alive (wrk's connections stay open).
    let tls_health = wrk(&format!("{tls_url}/api/v1/health"), None, seconds);
    let tls_page = wrk(
        &format!("{tls_url}/api/v1/workspaces"),
        Some(&token),
        seconds,
    );
    let (_, body) = http(&url, "GET", "/api/v1/workspaces", Some(&token), None);
    let loaded_rss = rss_kib(node.id());

    println!();
    println!(
        "{:<44} {:>12} {:>10} {:>9} {:>8}",
        "route", "requests/s", "p99 ms", "ratio", "target"
    );
    let row = |name: &str, result: &(f64, f64), target: &str| {
        println!(
            "{:<44} {:>12.0} {:>10.2} {:>9.2} {:>8}",
            name,
            result.0,
            result.1,
            result.0 / bare_hello.0,
            target
        );
    };
    row("bare actix-web hello (ceiling)", &bare_hello, "");
    row("GET /api/v1/health", &health, ">= 0.60");
    row(
        &format!("GET /api/v1/workspaces (50 of 1000, {} B)", body.len()),
        &page,
        ">= 0.40",
    );
    row("GET /api/v1/health over TLS", &tls_health, ">= 0.60");
    row("GET /api/v1/workspaces over TLS", &tls_page, ">= 0.40");
    println!("p99 target: < 5 ms");
    println!(
        "TLS / plain HTTP on the same node: health {:.2}, workspace page {:.2}",
        tls_health.0 / health.0,
        tls_page.0 / page.0
    );
    println!();
    println!(
        "idle resident memory (1000 workspaces):   {:.1} MiB (target < 30 MiB)",
        idle_rss as f64 / 1024.0
    );
    println!(
        "resident memory after the load:           {:.1} MiB",
        loaded_rss as f64 / 1024.0
    );
    println!(
        "start-up to first healthy answer (empty): {:.0} ms (target < 300 ms)",
        empty_startup.as_secs_f64() * 1000.0
    );
    println!(
        "start-up to first healthy answer (1000):  {:.0} ms (target < 300 ms)",
        full_startup.as_secs_f64() * 1000.0
    );

    stop(&mut node);
    let _ = bare.kill();
    let _ = bare.wait();
}

/// A bare actix-web server answering "hello" on `/`, with as many workers as the node.
fn bare_hello() {
    actix_rt::System::new().block_on(async {
        let server = actix_web::HttpServer::new(|| {
            actix_web::App::new().route("/", actix_web::web::get().to(|| async { "hello" }))
        })
        .bind("127.0.0.1:0")
        .unwrap();
        println!("aienv: listening on http://{}", server.addrs()[0]);
        server.run().await.unwrap();
    });
}

fn spawn_with_url(command: &mut Command) -> (Child, String) {
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let url = line
        .trim()
        .strip_prefix("aienv: listening on ")
        .unwrap()
        .to_string();
    (child, url)
}

/// Starts a node and reads its two URLs (the banner is one write).
fn spawn_with_urls(command: &mut Command) -> (Child, String, String) {
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut reader = BufReader::new(child.stdout.take().unwrap());
    let mut read = |prefix: &str| {
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        line.trim().strip_prefix(prefix).unwrap().to_string()
    };
    let url = read("aienv: listening on ");
    let tls_url = read("aienv: peers and other machines: ");
    (child, url, tls_url)
}

/// Starts the node and measures the time from spawn to its first `200` on `/api/v1/health`;
/// returns its plain (loopback) and TLS URLs.
fn start_node(data: &Path) -> (Child, String, String, Duration) {
    let started = Instant::now();
    let (child, url, tls_url) = spawn_with_urls(
        Command::new(env!("CARGO_BIN_EXE_aienv"))
            .args([
                "serve",
                "--bind",
                "127.0.0.1",
                "--http-port",
                "0",
                "--local-port",
                "0",
                "--data-dir",
            ])
            .arg(data)
            .env("AIENV_LOG", "warn"),
    );
    loop {
        if let Ok((200, _)) = try_http(&url, "GET", "/api/v1/health", None, None) {
            return (child, url, tls_url, started.elapsed());
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

fn stop(child: &mut Child) {
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let _ = child.wait();
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// Runs wrk; returns (requests/s, p99 latency in ms).
fn wrk(url: &str, token: Option<&str>, seconds: u64) -> (f64, f64) {
    let mut command = Command::new("wrk");
    command.args(["-t1", "-c64", &format!("-d{seconds}s"), "--latency"]);
    if let Some(token) = token {
        command.args(["-H", &format!("Authorization: Bearer {token}")]);
    }
    let output = command.arg(url).output().unwrap();
    let text = String::from_utf8_lossy(&output.stdout);
    if text.contains("Non-2xx") {
        panic!("wrk saw errors against {url}:\n{text}");
    }
    let rate = text
        .lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("cannot read wrk output:\n{text}"));
    let p99 = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("99%"))
        .map(|v| parse_latency(v.trim()))
        .unwrap_or(f64::NAN);
    (rate, p99)
}

fn parse_latency(text: &str) -> f64 {
    let (number, factor) = if let Some(v) = text.strip_suffix("us") {
        (v, 0.001)
    } else if let Some(v) = text.strip_suffix("ms") {
        (v, 1.0)
    } else if let Some(v) = text.strip_suffix('s') {
        (v, 1000.0)
    } else {
        (text, 1.0)
    };
    number.parse::<f64>().unwrap_or(f64::NAN) * factor
}

fn http(
    url: &str,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> (u16, String) {
    try_http(url, method, path, token, body).unwrap()
}

/// A minimal HTTP/1.1 request over a fresh connection (the benchmark's own client must not
/// share code paths with the thing it measures).
fn try_http(
    url: &str,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> std::io::Result<(u16, String)> {
    let address = url.trim_start_matches("http://");
    let mut stream = TcpStream::connect(address)?;
    let body = body.unwrap_or("");
    let mut request = format!("{method} {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\nContent-Length: {}\r\n", body.len());
    if !body.is_empty() {
        request.push_str("Content-Type: application/json\r\n");
    }
    if let Some(token) = token {
        request.push_str(&format!("Authorization: Bearer {token}\r\n"));
    }
    request.push_str("\r\n");
    request.push_str(body);
    stream.write_all(request.as_bytes())?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let status = response
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other("no status"))?;
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}
