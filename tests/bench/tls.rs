//! TLS benchmark: what mutual TLS costs between nodes, side by side in one run.
//!
//! Run: `cargo bench --bench tls` (`BENCH_MIB`, default 512: the workspace's size; data on
//! tmpfs under /dev/shm when it exists, so the disk is not what is measured).
//!
//! 1. Chunk throughput: every chunk of a workspace fetched by the same client with the same
//!    batches and window of 4 requests in flight, once over plain HTTP (the node's loopback
//!    listener) and once over mutual TLS (its LAN listener, presenting a node certificate),
//!    alternately, three times each; prints MiB/s and the ratio (target >= 0.85).
//! 2. A real clone over mutual TLS between two nodes, for reference.
//! 3. Handshake time: 200 new connections with a full mutual TLS handshake vs a TCP connect.
//!
//! Figures, not assertions: these machines are shared and noisy.

use std::io::Write;
use std::net::TcpStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use aienv::api::{CreateWorkspace, ShareRequest};
use aienv_actors::identity::{KeyFingerprint, NodeIdentity};
use aienv_actors::snapshot::{Hash, Snapshot, SnapshotLimits};
use futures_util::StreamExt;

#[path = "../common/mod.rs"]
mod common;

use common::TestNode;

fn main() {
    let mib: u64 = std::env::var("BENCH_MIB")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(512);
    let base = if std::path::Path::new("/dev/shm").is_dir() {
        std::path::PathBuf::from("/dev/shm")
    } else {
        std::env::temp_dir()
    };
    let temp = tempfile::tempdir_in(&base).unwrap();
    println!(
        "aienv TLS benchmark: {mib} MiB workspace, data on {} ({}), {} cores",
        base.display(),
        if base.starts_with("/dev/shm") {
            "tmpfs"
        } else {
            "temp dir"
        },
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    actix_rt::System::new().block_on(async move {
        let a = TestNode::spawn_on(&temp.path().join("a"), &["--name", "bench-a"]);
        let admin = a.admin();
        let created = admin
            .create(&CreateWorkspace {
                name: "big".into(),
                ..CreateWorkspace::default()
            })
            .await
            .unwrap();
        let root = std::path::PathBuf::from(created.workspace.path.unwrap());
        write_noise(&root.join("data/weights.bin"), mib << 20);
        admin.share("big", &ShareRequest::default()).await.unwrap();
        let bytes = admin.snapshot("big").await.unwrap();
        let snapshot = Snapshot::decode(&bytes, &SnapshotLimits::default()).unwrap();
        let mut chunks: Vec<(Hash, u32)> = Vec::new();
        for entry in &snapshot.entries {
            chunks.extend(entry.chunks.iter().map(|c| (c.hash, c.size)));
            if entry.chunks.is_empty() {
                if let Some(hash) = entry.hash {
                    chunks.push((hash, entry.size as u32));
                }
            }
        }
        let total: u64 = chunks.iter().map(|c| u64::from(c.1)).sum();
        let batches = batches(&chunks);
        println!(
            "{} chunks, {:.0} MiB, {} batch requests",
            chunks.len(),
            total as f64 / (1 << 20) as f64,
            batches.len()
        );

        let identity = common::node_identity(&temp.path().join("caller"), "bench-caller");
        let plain = awc::Client::builder()
            .timeout(Duration::from_secs(120))
            .finish();
        let mtls = tls_client(&identity, a.key);
        // Warm the page cache and the chunk index once.
        fetch(&plain, &a.url, &batches).await;
        let mut plain_rates = Vec::new();
        let mut tls_rates = Vec::new();
        for _ in 0..3 {
            plain_rates.push(rate(total, fetch(&plain, &a.url, &batches).await));
            tls_rates.push(rate(total, fetch(&mtls, &a.tls_url, &batches).await));
        }
        let plain_best = plain_rates.iter().cloned().fold(0.0, f64::max);
        let tls_best = tls_rates.iter().cloned().fold(0.0, f64::max);
        println!();
        println!("chunk batches, window 4, compress=none (best of 3; all runs MiB/s)");
        println!("  plain HTTP (loopback listener): {plain_best:>8.0} MiB/s   {plain_rates:.0?}");
        println!("  mutual TLS (LAN listener):      {tls_best:>8.0} MiB/s   {tls_rates:.0?}");
        println!(
            "  ratio mutual TLS / plain:       {:>8.2}   (target >= 0.85)",
            tls_best / plain_best
        );

        // A real clone between two nodes over mutual TLS.
        let b = TestNode::spawn_with_env(
            &temp.path().join("b"),
            &["--name", "bench-b", "--announce-interval", "0.2"],
            &[("AIENV_DISCOVERY_STATIC_PEERS", a.tls_url.as_str())],
        );
        let b_admin = b.admin();
        common::eventually("B lists A's workspace", || async {
            !b_admin
                .network_catalog(&aienv::client::NetworkQuery::default())
                .await
                .unwrap()
                .is_empty()
        })
        .await;
        let started = Instant::now();
        let job = common::transfer(&b_admin, "clone", Some("bench-a"), "big").await;
        let elapsed = started.elapsed();
        assert_eq!(job.state, "done", "{job:?}");
        let job = format!("{} chunks fetched", job.progress.chunks_fetched);
        println!();
        println!(
            "clone over mutual TLS (node to node, verified, materialized): {:.2} s, {:.0} MiB/s ({})",
            elapsed.as_secs_f64(),
            rate(total, elapsed),
            job
        );

        // Handshakes.
        let address = a.tls_url.trim_start_matches("https://").to_string();
        let config = Arc::new(aienv::tls::client_config(Some(&identity), a.key).unwrap());
        let mut tcp = Vec::new();
        let mut full = Vec::new();
        for _ in 0..200 {
            let started = Instant::now();
            let stream = TcpStream::connect(&address).unwrap();
            tcp.push(started.elapsed());
            drop(stream);
            let started = Instant::now();
            handshake(&address, config.clone());
            full.push(started.elapsed());
        }
        tcp.sort();
        full.sort();
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        println!();
        println!(
            "connect + mutual TLS handshake (200): median {:.2} ms, p99 {:.2} ms; TCP connect alone: median {:.3} ms",
            ms(full[100]),
            ms(full[197]),
            ms(tcp[100])
        );
        drop(b);
        drop(a);
    });
}

fn write_noise(path: &std::path::Path, bytes: u64) {
    let mut file = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut block = vec![0u8; 1 << 20];
    let mut written = 0;
    while written < bytes {
        for word in block.chunks_mut(8) {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            word.copy_from_slice(&state.to_le_bytes());
        }
        file.write_all(&block).unwrap();
        written += block.len() as u64;
    }
    file.flush().unwrap();
}

/// Batches of at most 1024 chunks and 8 MiB, as the transfer queue makes them.
fn batches(chunks: &[(Hash, u32)]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut body = Vec::new();
    let (mut count, mut bytes) = (0, 0u64);
    for (hash, size) in chunks {
        if count > 0 && (count >= 1024 || bytes + u64::from(*size) > 8 << 20) {
            out.push(std::mem::take(&mut body));
            count = 0;
            bytes = 0;
        }
        body.extend_from_slice(&hash.0);
        count += 1;
        bytes += u64::from(*size);
    }
    if !body.is_empty() {
        out.push(body);
    }
    out
}

fn tls_client(identity: &NodeIdentity, key: KeyFingerprint) -> awc::Client {
    let config = aienv::tls::client_config(Some(identity), key).unwrap();
    awc::Client::builder()
        .timeout(Duration::from_secs(120))
        .connector(awc::Connector::new().rustls_0_23(Arc::new(config)))
        .finish()
}

/// Fetches every batch, 4 in flight; returns the time taken.
async fn fetch(client: &awc::Client, base: &str, batches: &[Vec<u8>]) -> Duration {
    let started = Instant::now();
    let url = format!("{base}/api/v1/workspaces/big/chunks?compress=none");
    let received: u64 = futures_util::stream::iter(batches.iter().cloned())
        .map(|body| {
            let request = client.post(&url).content_type("application/octet-stream");
            async move {
                let mut response = request.send_body(body).await.unwrap();
                assert_eq!(response.status().as_u16(), 200);
                let mut n = 0u64;
                while let Some(piece) = response.next().await {
                    n += piece.unwrap().len() as u64;
                }
                n
            }
        })
        .buffer_unordered(4)
        .fold(0u64, |sum, n| async move { sum + n })
        .await;
    assert!(received > 0);
    started.elapsed()
}

fn rate(bytes: u64, elapsed: Duration) -> f64 {
    bytes as f64 / (1 << 20) as f64 / elapsed.as_secs_f64()
}

/// One connection with a full mutual TLS handshake (no session resumption: a new config
/// cache per connection is what a first contact costs).
fn handshake(address: &str, config: Arc<rustls::ClientConfig>) {
    let mut config = (*config).clone();
    config.resumption = rustls::client::Resumption::disabled();
    let config = Arc::new(config);
    let mut stream = TcpStream::connect(address).unwrap();
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let mut connection = rustls::ClientConnection::new(config, name).unwrap();
    while connection.is_handshaking() {
        connection.complete_io(&mut stream).unwrap();
    }
}
