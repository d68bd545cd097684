//! Clone and sync between real nodes on loopback: byte-identical trees, only changed chunks
//! on the wire, corrupted chunks refetched, interrupted sources resumed, several sources,
//! malicious manifests refused, and a Python venv that runs at its new path.

mod common;

use std::collections::{BTreeMap, HashSet};
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use aienv::api::{CreateWorkspace, ShareRequest, TransferDto, TransferRequestDto};
use aienv::client::Client;
use aienv_actors::identity::NodeIdentity;
use aienv_actors::snapshot::{root_hash, EntryKind, Hash, Snapshot, SnapshotEntry, SnapshotLimits};
use common::{eventually, finished, TestNode};

/// A node whose only peer is `source` (polled over HTTP every 0.2 s).
fn node_with_peers(dir: &Path, name: &str, peers: &[&TestNode], extra: &[&str]) -> TestNode {
    let addresses: Vec<String> = peers.iter().map(|p| p.tls_url.clone()).collect();
    let mut args = vec!["--name", name, "--announce-interval", "0.2"];
    args.extend_from_slice(extra);
    TestNode::spawn_with_env(
        dir,
        &args,
        &[("AIENV_DISCOVERY_STATIC_PEERS", addresses.join(",").as_str())],
    )
}

/// Creates a shared workspace on `node` and returns its directory.
async fn shared_workspace(node: &TestNode, name: &str) -> PathBuf {
    let client = node.admin();
    let created = client
        .create(&CreateWorkspace {
            name: name.into(),
            ..CreateWorkspace::default()
        })
        .await
        .unwrap();
    client.share(name, &ShareRequest::default()).await.unwrap();
    PathBuf::from(created.workspace.path.expect("admins see the path"))
}

/// Waits until `client`'s node lists `workspace` in `peer`'s catalog.
async fn until_listed(client: &Client, peer: &str, workspace: &str, revision: u64) {
    eventually(
        &format!("{peer}/{workspace} is in the network catalog"),
        || async {
            client
                .network_catalog(&aienv::client::NetworkQuery::default())
                .await
                .unwrap()
                .iter()
                .any(|e| {
                    e.peer_name == peer
                        && e.workspace.name == workspace
                        && e.workspace.revision >= revision
                })
        },
    )
    .await;
}

async fn start(client: &Client, kind: &str, peer: Option<&str>, workspace: &str) -> TransferDto {
    client
        .start_transfer(&TransferRequestDto {
            kind: kind.into(),
            peer: peer.map(str::to_string),
            workspace: workspace.into(),
            ..TransferRequestDto::default()
        })
        .await
        .unwrap()
}

/// Waits until a quarter of a job's content is in place; returns the bytes in place then.
async fn until_a_quarter_arrived(client: &Client, id: uuid::Uuid) -> u64 {
    let arrived = std::rc::Rc::new(std::cell::Cell::new(0));
    eventually("a quarter of the transfer arrived", || {
        let client = client.clone();
        let arrived = arrived.clone();
        async move {
            let job = client.transfer(&id.to_string()).await.unwrap();
            arrived.set(job.progress.bytes_done);
            job.progress.bytes_done > job.progress.bytes_total / 4
        }
    })
    .await;
    arrived.get()
}

async fn done(client: &Client, id: uuid::Uuid) -> TransferDto {
    let job = finished(client, id).await;
    assert_eq!(job.state, "done", "transfer failed: {:?}", job.error);
    job
}

/// Every path under `root` (links not followed): kind, mode, and content hash or target.
fn tree(root: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let relative = path
                .strip_prefix(root)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            let metadata = std::fs::symlink_metadata(&path).unwrap();
            let mode = metadata.permissions().mode() & 0o777;
            let description = if metadata.file_type().is_symlink() {
                format!("link -> {}", std::fs::read_link(&path).unwrap().display())
            } else if metadata.is_dir() {
                stack.push(path.clone());
                format!("dir {mode:o}")
            } else {
                format!("file {mode:o} {}", Hash::of(&std::fs::read(&path).unwrap()))
            };
            out.insert(relative, description);
        }
    }
    out
}

fn clone_root(node: &TestNode, id: uuid::Uuid) -> PathBuf {
    node.data_dir.join("workspaces").join(id.to_string())
}

/// Deterministic incompressible bytes.
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}

fn decode(bytes: &[u8]) -> Snapshot {
    Snapshot::decode(bytes, &SnapshotLimits::default()).unwrap()
}

/// The chunks of `new` that `old` lacks, in bytes (what a sync must fetch).
fn new_chunk_bytes(old: &Snapshot, new: &Snapshot) -> u64 {
    let have: HashSet<Hash> = old
        .entries
        .iter()
        .flat_map(|e| e.file_chunks())
        .map(|(_, c)| c.hash)
        .collect();
    let mut counted = HashSet::new();
    new.entries
        .iter()
        .flat_map(|e| e.file_chunks())
        .filter(|(_, c)| !have.contains(&c.hash) && counted.insert(c.hash))
        .map(|(_, c)| u64::from(c.size))
        .sum()
}

#[actix_rt::test]
async fn clone_is_identical_and_sync_moves_only_changed_chunks() {
    let temp = tempfile::tempdir().unwrap();
    let a = TestNode::spawn_on(&temp.path().join("a"), &["--name", "node-a"]);
    let root = shared_workspace(&a, "demo").await;
    std::fs::create_dir_all(root.join("data/nested/empty")).unwrap();
    std::fs::write(root.join("data/weights.bin"), noise(6 << 20, 1)).unwrap();
    std::fs::write(root.join("data/notes.txt"), "hello\n").unwrap();
    std::fs::write(root.join("data/gone.txt"), "to be deleted\n").unwrap();
    std::fs::write(root.join("data/moving.bin"), noise(300_000, 2)).unwrap();
    std::fs::write(root.join("data/empty-file"), "").unwrap();
    std::fs::write(root.join("run.sh"), "#!/bin/sh\necho hi\n").unwrap();
    std::fs::set_permissions(root.join("run.sh"), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(
        root.join("data/notes.txt"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    std::fs::set_permissions(
        root.join("data/nested"),
        std::fs::Permissions::from_mode(0o750),
    )
    .unwrap();
    std::os::unix::fs::symlink("/usr/bin/python3", root.join("data/python")).unwrap();
    std::os::unix::fs::symlink("../notes.txt", root.join("data/nested/notes-link")).unwrap();
    std::os::unix::fs::symlink("/nonexistent/target", root.join("data/dangling")).unwrap();

    let b = node_with_peers(&temp.path().join("b"), "node-b", &[&a], &[]);
    let client = b.admin();
    until_listed(&client, "node-a", "demo", 1).await;

    let job = start(&client, "clone", Some("node-a"), "demo").await;
    assert_eq!(job.kind, "clone");
    let job = done(&client, job.id).await;
    let local = job.local_id.unwrap();
    let cloned = clone_root(&b, local);
    assert_eq!(
        tree(&root),
        tree(&cloned),
        "the clone differs from its source"
    );
    let source_snapshot = decode(&a.admin().snapshot("demo").await.unwrap());
    let clone_snapshot = decode(&client.snapshot("demo").await.unwrap());
    assert_eq!(source_snapshot.root, clone_snapshot.root);
    assert_eq!(
        job.root.as_deref(),
        Some(source_snapshot.root.to_hex().as_str())
    );
    assert_eq!(job.progress.bytes_total, source_snapshot.total_bytes());
    assert_eq!(job.progress.bytes_from_peers, source_snapshot.total_bytes());
    let detail = client.get("demo").await.unwrap();
    let origin = detail.workspace.origin.expect("a clone records its origin");
    assert_eq!(origin.peer_name, "node-a");
    assert_eq!(origin.root, source_snapshot.root.to_hex());

    // Edit the source: middle of the large file, append, delete, rename, new file.
    let mut weights = std::fs::OpenOptions::new()
        .write(true)
        .open(root.join("data/weights.bin"))
        .unwrap();
    std::io::Seek::seek(&mut weights, std::io::SeekFrom::Start(3 << 20)).unwrap();
    weights.write_all(&noise(8192, 3)).unwrap();
    drop(weights);
    std::fs::OpenOptions::new()
        .append(true)
        .open(root.join("data/notes.txt"))
        .unwrap()
        .write_all(b"more\n")
        .unwrap();
    std::fs::remove_file(root.join("data/gone.txt")).unwrap();
    std::fs::rename(
        root.join("data/moving.bin"),
        root.join("data/nested/moved.bin"),
    )
    .unwrap();
    std::fs::write(root.join("data/new.txt"), "brand new\n").unwrap();
    let edited_snapshot = decode(&a.admin().snapshot("demo").await.unwrap());
    let expected = new_chunk_bytes(&source_snapshot, &edited_snapshot);
    assert!(
        expected > 0 && expected < (6 << 20) / 2,
        "the edit changes a few chunks: {expected}"
    );

    let job = start(&client, "sync", None, "demo").await;
    let job = done(&client, job.id).await;
    assert_eq!(
        tree(&root),
        tree(&cloned),
        "the synced clone differs from its source"
    );
    // The clone lacks `expected` bytes of chunks; of the changed chunk of the large file
    // only the parts around the 8 KiB edit travel (each part at most 64 KiB), the rest of it,
    // the renamed file and the unchanged chunks are copied locally.
    assert_eq!(
        job.progress.bytes_from_peers + job.progress.bytes_local,
        (6 << 20) + 300_000 + 21,
        "{:?}",
        job.progress
    );
    assert!(
        job.progress.bytes_from_peers <= 21 + 3 * 65_536 && expected > 200_000,
        "a sync fetches only the changed parts of the {expected} bytes of changed chunks: {:?}",
        job.progress
    );
    assert!(
        job.progress.bytes_fetched < expected / 2,
        "{:?}",
        job.progress
    );
    let synced = decode(&client.snapshot("demo").await.unwrap());
    assert_eq!(synced.root, edited_snapshot.root);

    // Nothing changed: nothing moves.
    let job = start(&client, "sync", None, "demo").await;
    let job = done(&client, job.id).await;
    assert_eq!(job.progress.bytes_fetched, 0);
    assert!(
        job.notes.iter().any(|n| n.contains("already up to date")),
        "{:?}",
        job.notes
    );

    // Clear errors for unknown peers and workspaces, with close matches.
    let error = client
        .start_transfer(&TransferRequestDto {
            kind: "clone".into(),
            peer: Some("node-aa".into()),
            workspace: "demo".into(),
            ..TransferRequestDto::default()
        })
        .await
        .unwrap_err();
    assert_eq!(error.code(), Some("peer-not-found"));
    assert!(error.to_string().contains("did you mean node-a"), "{error}");
    let error = client
        .start_transfer(&TransferRequestDto {
            kind: "clone".into(),
            peer: Some("node-a".into()),
            workspace: "dmeo".into(),
            ..TransferRequestDto::default()
        })
        .await
        .unwrap_err();
    assert!(error.to_string().contains("did you mean demo"), "{error}");
    // A second clone under the same name is refused before anything moves.
    let error = client
        .start_transfer(&TransferRequestDto {
            kind: "clone".into(),
            peer: Some("node-a".into()),
            workspace: "demo".into(),
            ..TransferRequestDto::default()
        })
        .await
        .unwrap_err();
    assert!(error.to_string().contains("--as"), "{error}");
}

/// A clone is planned and fetched a window of chunk places at a time (here 8, so the
/// workspace takes several): directories are given their modes after everything inside
/// them, however names interleave in byte order (`a`, `a-b`, `a.txt`, `a/x`), and a file
/// whose content an earlier window already wrote is copied from the staged tree, not
/// fetched again.
#[actix_rt::test]
async fn a_clone_is_planned_a_window_at_a_time() {
    let temp = tempfile::tempdir().unwrap();
    let a = TestNode::spawn_on(&temp.path().join("a"), &["--name", "node-a"]);
    let root = shared_workspace(&a, "windows").await;
    let duplicate = b"the same content, in two windows\n";
    std::fs::create_dir_all(root.join("a")).unwrap();
    std::fs::create_dir_all(root.join("a-b")).unwrap();
    std::fs::create_dir_all(root.join("ro/sub")).unwrap();
    std::fs::write(root.join("a.txt"), "a dot txt\n").unwrap();
    std::fs::write(root.join("a-b/y"), "y\n").unwrap();
    std::fs::write(root.join("a/0-first"), duplicate).unwrap();
    for i in 0..30 {
        std::fs::write(root.join(format!("a/x{i:02}")), format!("file {i}\n")).unwrap();
    }
    std::fs::write(root.join("a/large.bin"), noise(3 << 20, 9)).unwrap();
    std::fs::write(root.join("a/empty"), "").unwrap();
    std::os::unix::fs::symlink("x00", root.join("a/link")).unwrap();
    std::fs::write(root.join("ro/sub/inside"), "deep\n").unwrap();
    std::fs::write(root.join("zz-last"), duplicate).unwrap();
    for (dir, mode) in [("ro/sub", 0o500), ("ro", 0o555), ("a", 0o555)] {
        std::fs::set_permissions(root.join(dir), std::fs::Permissions::from_mode(mode)).unwrap();
    }

    let b = TestNode::spawn_with_env(
        &temp.path().join("b"),
        &["--name", "node-b", "--announce-interval", "0.2"],
        &[
            ("AIENV_DISCOVERY_STATIC_PEERS", a.tls_url.as_str()),
            ("AIENV_TRANSFER_PLAN_WINDOW", "8"),
        ],
    );
    let client = b.admin();
    until_listed(&client, "node-a", "windows", 1).await;
    let job = start(&client, "clone", Some("node-a"), "windows").await;
    let job = done(&client, job.id).await;
    let cloned = clone_root(&b, job.local_id.unwrap());
    let source_snapshot = decode(&a.admin().snapshot("windows").await.unwrap());
    assert_eq!(
        tree(&root),
        tree(&cloned),
        "the clone differs from its source"
    );
    assert_eq!(
        job.progress.bytes_local,
        duplicate.len() as u64,
        "the second copy comes from the staged tree: {:?}",
        job.progress
    );
    assert_eq!(
        job.progress.bytes_from_peers + job.progress.bytes_local,
        source_snapshot.total_bytes(),
        "{:?}",
        job.progress
    );
    assert_eq!(job.progress.files_done, source_snapshot.file_count());
    for dir in ["ro/sub", "ro", "a"] {
        for tree_root in [&root, &cloned] {
            let writable = std::fs::Permissions::from_mode(0o755);
            std::fs::set_permissions(tree_root.join(dir), writable).unwrap();
        }
    }
}

/// A changed chunk is rebuilt from the parts the clone already has and the ranges it lacks;
/// a range that arrives corrupted makes the rebuilt chunk fail its hash, and the chunk is
/// fetched whole instead: a source's part lists and ranges can never corrupt a file.
#[actix_rt::test]
async fn a_changed_chunk_is_rebuilt_from_its_parts_and_a_corrupted_range_is_caught() {
    if !common::needs_test_hooks() {
        return;
    }
    let temp = tempfile::tempdir().unwrap();
    let port = common::free_tcp_port().to_string();
    let mut a = TestNode::spawn_on(
        &temp.path().join("a"),
        &["--name", "node-a", "--http-port", &port],
    );
    let root = shared_workspace(&a, "weights").await;
    std::fs::write(root.join("data/shard.bin"), noise(12 << 20, 11)).unwrap();
    std::fs::write(root.join("data/module.py"), noise(60_000, 21)).unwrap();
    let b = node_with_peers(&temp.path().join("b"), "node-b", &[&a], &[]);
    let client = b.admin();
    until_listed(&client, "node-a", "weights", 1).await;
    let job = done(
        &client,
        start(&client, "clone", Some("node-a"), "weights").await.id,
    )
    .await;
    let cloned = clone_root(&b, job.local_id.unwrap());
    let before = decode(&a.admin().snapshot("weights").await.unwrap());

    // Two 100 KB overwrites far apart, and 300 KB appended.
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(root.join("data/shard.bin"))
        .unwrap();
    std::os::unix::fs::FileExt::write_all_at(&file, &noise(100_000, 12), 2 << 20).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&file, &noise(100_000, 13), 8 << 20).unwrap();
    drop(file);
    std::fs::OpenOptions::new()
        .append(true)
        .open(root.join("data/shard.bin"))
        .unwrap()
        .write_all(&noise(300_000, 14))
        .unwrap();
    let after = decode(&a.admin().snapshot("weights").await.unwrap());
    let changed = new_chunk_bytes(&before, &after);

    let job = done(&client, start(&client, "sync", None, "weights").await.id).await;
    assert_eq!(tree(&root), tree(&cloned));
    assert_eq!(job.progress.chunks_bad, 0, "{:?}", job.progress);
    eprintln!(
        "sync: {} bytes fetched ({} on the wire) for {changed} bytes of changed chunks",
        job.progress.bytes_from_peers, job.progress.bytes_fetched
    );
    // 500 KB of new content; whole chunks would have been `changed` bytes.
    assert!(
        job.progress.bytes_from_peers < 500_000 + 6 * 65_536 && changed > 1_500_000,
        "{changed} bytes of changed chunks; {:?}",
        job.progress
    );

    // A small file is one chunk: a line appended to a 60 KB source file fetches its last
    // part or two, not the file.
    std::fs::OpenOptions::new()
        .append(true)
        .open(root.join("data/module.py"))
        .unwrap()
        .write_all(b"\n# edited\n")
        .unwrap();
    let job = done(&client, start(&client, "sync", None, "weights").await.id).await;
    assert_eq!(tree(&root), tree(&cloned));
    assert!(
        job.progress.bytes_from_peers < 30_000,
        "60 KB file: {:?}",
        job.progress
    );

    // Again, with the source flipping a byte in the first range it sends.
    a.stop();
    let a = TestNode::spawn_on(
        &temp.path().join("a"),
        &[
            "--name",
            "node-a",
            "--http-port",
            &port,
            "--test-corrupt-chunks",
            "1",
        ],
    );
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(root.join("data/shard.bin"))
        .unwrap();
    std::os::unix::fs::FileExt::write_all_at(&file, &noise(50_000, 15), 5 << 20).unwrap();
    drop(file);
    let job = done(&client, start(&client, "sync", None, "weights").await.id).await;
    assert_eq!(tree(&root), tree(&cloned), "the clone matches its source");
    assert_eq!(job.progress.chunks_bad, 1, "{:?}", job.progress);
    drop(a);
}

#[actix_rt::test]
async fn a_corrupted_chunk_is_rejected_and_fetched_again() {
    if !common::needs_test_hooks() {
        return;
    }
    let temp = tempfile::tempdir().unwrap();
    let a = TestNode::spawn_on(
        &temp.path().join("a"),
        &["--name", "node-a", "--test-corrupt-chunks", "1"],
    );
    let root = shared_workspace(&a, "data").await;
    std::fs::write(root.join("data/blob.bin"), noise(3 << 20, 7)).unwrap();
    let b = node_with_peers(&temp.path().join("b"), "node-b", &[&a], &[]);
    let client = b.admin();
    until_listed(&client, "node-a", "data", 1).await;
    let job = start(&client, "clone", Some("node-a"), "data").await;
    let job = done(&client, job.id).await;
    assert_eq!(job.progress.chunks_bad, 1, "{:?}", job.progress);
    assert_eq!(tree(&root), tree(&clone_root(&b, job.local_id.unwrap())));
}

#[actix_rt::test]
async fn a_killed_source_is_resumed_after_restart_without_refetching() {
    if !common::needs_test_hooks() {
        return;
    }
    let temp = tempfile::tempdir().unwrap();
    let a_dir = temp.path().join("a");
    let mut a = TestNode::spawn_on(
        &a_dir,
        &["--name", "node-a", "--test-chunk-delay-ms", "100"],
    );
    let port = a.tls_url.rsplit(':').next().unwrap().to_string();
    let root = shared_workspace(&a, "big").await;
    for i in 0..6 {
        std::fs::write(
            root.join(format!("data/part{i}.bin")),
            noise(4 << 20, 10 + i),
        )
        .unwrap();
    }
    let b = node_with_peers(&temp.path().join("b"), "node-b", &[&a], &[]);
    let client = b.admin();
    until_listed(&client, "node-a", "big", 1).await;
    let job = start(&client, "clone", Some("node-a"), "big").await;
    let arrived = until_a_quarter_arrived(&client, job.id).await;
    a.kill9();
    // The outage is real for the receiver before the source comes back.
    eventually("node-b notices node-a is gone", || async {
        client
            .peers()
            .await
            .unwrap()
            .iter()
            .any(|p| p.name == "node-a" && p.state != "online")
    })
    .await;
    let a = TestNode::spawn_on(&a_dir, &["--name", "node-a", "--http-port", &port]);
    let job = done(&client, job.id).await;
    assert_eq!(tree(&root), tree(&clone_root(&b, job.local_id.unwrap())));
    // The job waited for the source and went on where it stopped: every byte of content
    // crossed the network once (chunks cut off in flight were not counted, and asked again).
    assert_eq!(
        job.progress.bytes_from_peers, job.progress.bytes_total,
        "nothing that arrived before the kill ({arrived} bytes) was fetched again: {:?}",
        job.progress
    );
    assert!(job.progress.bytes_fetched < job.progress.bytes_total + (1 << 20));
    drop(a);
}

/// Node A (in `dir/a`) serving `big` slowly (`parts` × 4 MiB of noise from `seed`), and node B
/// (in `dir/b`) with a clone of it a quarter arrived: (A, the workspace's root, B, the job,
/// bytes arrived).
async fn clone_under_way(
    dir: &Path,
    parts: u64,
    seed: u64,
) -> (TestNode, PathBuf, TestNode, TransferDto, u64) {
    let a = TestNode::spawn_on(
        &dir.join("a"),
        &["--name", "node-a", "--test-chunk-delay-ms", "100"],
    );
    let root = shared_workspace(&a, "big").await;
    for i in 0..parts {
        std::fs::write(
            root.join(format!("data/part{i}.bin")),
            noise(4 << 20, seed + i),
        )
        .unwrap();
    }
    let b = node_with_peers(&dir.join("b"), "node-b", &[&a], &[]);
    let client = b.admin();
    until_listed(&client, "node-a", "big", 1).await;
    let job = start(&client, "clone", Some("node-a"), "big").await;
    let arrived = until_a_quarter_arrived(&client, job.id).await;
    (a, root, b, job, arrived)
}

#[actix_rt::test]
async fn a_restarted_receiver_resumes_its_job() {
    if !common::needs_test_hooks() {
        return;
    }
    let temp = tempfile::tempdir().unwrap();
    let b_dir = temp.path().join("b");
    let (a, root, mut b, job, arrived) = clone_under_way(temp.path(), 6, 30).await;
    b.kill9();
    // A crash may tear what was written last: damage the start of every staged part.
    let staged = b_dir
        .join("transfers")
        .join(job.id.to_string())
        .join("tree/data");
    for i in 0..6 {
        if let Ok(file) = std::fs::OpenOptions::new()
            .write(true)
            .open(staged.join(format!("part{i}.bin")))
        {
            std::os::unix::fs::FileExt::write_all_at(&file, b"torn", 0).unwrap();
        }
    }
    let b = node_with_peers(&b_dir, "node-b", &[&a], &[]);
    let client = b.admin();
    let job = done(&client, job.id).await;
    assert_eq!(job.attempts, 2, "the restarted node ran the job again");
    assert!(
        job.notes.iter().any(|n| n.contains("resumed")),
        "{:?}",
        job.notes
    );
    assert_eq!(tree(&root), tree(&clone_root(&b, job.local_id.unwrap())));
    assert!(
        job.progress.bytes_present >= arrived,
        "what was written before the kill ({arrived}) is kept: {:?}",
        job.progress
    );
    // Torn chunks are found on resume and fetched again; nothing else is.
    assert!(
        job.progress.bytes_present + job.progress.bytes_from_peers
            <= job.progress.bytes_total + (6 << 22),
        "{:?}",
        job.progress
    );
}

#[actix_rt::test]
async fn two_sources_and_one_dies() {
    if !common::needs_test_hooks() {
        return;
    }
    let temp = tempfile::tempdir().unwrap();
    let mut a = TestNode::spawn_on(
        &temp.path().join("a"),
        &["--name", "node-a", "--test-chunk-delay-ms", "30"],
    );
    let root = shared_workspace(&a, "model").await;
    for i in 0..3 {
        std::fs::write(
            root.join(format!("data/shard{i}.bin")),
            noise(4 << 20, 20 + i),
        )
        .unwrap();
    }
    // C clones A first; the clone keeps A's sharing and root, so it is a second source.
    let c = node_with_peers(
        &temp.path().join("c"),
        "node-c",
        &[&a],
        &["--test-chunk-delay-ms", "30"],
    );
    until_listed(&c.admin(), "node-a", "model", 1).await;
    let job = start(&c.admin(), "clone", Some("node-a"), "model").await;
    done(&c.admin(), job.id).await;

    let b = node_with_peers(&temp.path().join("b"), "node-b", &[&a, &c], &[]);
    let client = b.admin();
    until_listed(&client, "node-a", "model", 1).await;
    until_listed(&client, "node-c", "model", 1).await;
    let job = start(&client, "clone", Some("node-a"), "model").await;
    eventually("both sources are used and some data arrived", || {
        let client = client.clone();
        let id = job.id.to_string();
        async move {
            let job = client.transfer(&id).await.unwrap();
            job.sources.len() == 2 && job.progress.bytes_done > 0
        }
    })
    .await;
    a.kill9();
    let job = done(&client, job.id).await;
    assert_eq!(job.sources, ["node-a", "node-c"]);
    assert_eq!(tree(&root), tree(&clone_root(&b, job.local_id.unwrap())));
}

/// Serves a node's `/node` and `/catalog` answers as recorded, and a crafted snapshot.
fn fake_peer(
    identity: &NodeIdentity,
    node_json: Vec<u8>,
    catalog_json: Vec<u8>,
    snapshot: Vec<u8>,
) -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = format!("https://{}", listener.local_addr().unwrap());
    // It holds the real node's key, as a compromised node would: TLS lets it in, the
    // manifest checks must not.
    let tls = std::sync::Arc::new(aienv::tls::server_config(identity).unwrap());
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            let Ok(connection) = rustls::ServerConnection::new(tls.clone()) else {
                continue;
            };
            let mut stream = rustls::StreamOwned::new(connection, stream);
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") && stream.read(&mut byte).unwrap_or(0) == 1 {
                head.push(byte[0]);
            }
            let head = String::from_utf8_lossy(&head).into_owned();
            let path = head
                .split_whitespace()
                .nth(1)
                .unwrap_or_default()
                .to_string();
            let (kind, body) = if path.ends_with("/snapshot") {
                ("application/octet-stream", snapshot.clone())
            } else if path.ends_with("/catalog") {
                ("application/json", catalog_json.clone())
            } else {
                ("application/json", node_json.clone())
            };
            let _ = write!(
                stream,
                "HTTP/1.1 200 OK\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = stream.write_all(&body);
            let _ = stream.flush();
            stream.conn.send_close_notify();
            let _ = stream.flush();
        }
    });
    address
}

#[actix_rt::test]
async fn malicious_manifests_are_refused_before_anything_is_written() {
    let temp = tempfile::tempdir().unwrap();
    let a = TestNode::spawn_on(&temp.path().join("a"), &["--name", "evil"]);
    shared_workspace(&a, "bait").await;
    let http = awc::Client::default();
    let node_json = http
        .get(format!("{}/api/v1/node", a.url))
        .send()
        .await
        .unwrap()
        .body()
        .await
        .unwrap()
        .to_vec();
    let catalog_json = http
        .get(format!("{}/api/v1/catalog", a.url))
        .send()
        .await
        .unwrap()
        .body()
        .await
        .unwrap()
        .to_vec();
    let id = a.admin().get("bait").await.unwrap().workspace.id;
    drop(a);
    let identity = aienv_actors::identity::load_or_create(&temp.path().join("a"), "evil").unwrap();

    let entry = |path: &str, kind: EntryKind, target: Option<&str>| SnapshotEntry {
        path: path.into(),
        kind,
        mode: if kind == EntryKind::Dir { 0o755 } else { 0o644 },
        size: if kind == EntryKind::File { 1 } else { 0 },
        hash: (kind == EntryKind::File).then(|| Hash::of(b"x")),
        target: target.map(str::to_string),
        chunks: Vec::new(),
    };
    let cases: Vec<(Vec<SnapshotEntry>, &str)> = vec![
        (
            vec![entry("../../escape", EntryKind::File, None)],
            "contains `..`",
        ),
        (
            vec![
                entry("link", EntryKind::Symlink, Some("/tmp")),
                entry("link/evil", EntryKind::File, None),
            ],
            "passes through the symbolic link",
        ),
        (vec![entry("a\\b", EntryKind::File, None)], "backslash"),
        (
            (0..600_000)
                .map(|i| entry(&format!("f{i:07}"), EntryKind::File, None))
                .collect(),
            "entries, more than the limit",
        ),
    ];
    for (index, (entries, expected)) in cases.into_iter().enumerate() {
        let mut snapshot = Snapshot::new(id, "bait".into(), 1, "/src".into(), Vec::new());
        snapshot.entries = entries;
        snapshot.root = root_hash(&snapshot.entries);
        let address = fake_peer(
            &identity,
            node_json.clone(),
            catalog_json.clone(),
            snapshot.encode(),
        );
        let b = TestNode::spawn_with_env(
            &temp.path().join(format!("b{index}")),
            &["--name", "victim", "--announce-interval", "0.2"],
            &[("AIENV_DISCOVERY_STATIC_PEERS", address.as_str())],
        );
        let client = b.admin();
        until_listed(&client, "evil", "bait", 1).await;
        let job = start(&client, "clone", Some("evil"), "bait").await;
        let job = finished(&client, job.id).await;
        assert_eq!(job.state, "failed");
        let error = job.error.unwrap_or_default();
        assert!(error.contains(expected), "`{error}` lacks `{expected}`");
        assert!(!temp.path().join("escape").exists());
        assert!(b.dir_names("workspaces").is_empty(), "no workspace appears");
        let staged = b.data_dir.join("transfers").join(job.id.to_string());
        assert!(
            !staged.join("tree").exists(),
            "nothing was staged for a refused manifest"
        );
    }
}

#[actix_rt::test]
async fn a_cloned_venv_runs_at_its_new_path() {
    let python = Path::new("/usr/bin/python3");
    if !python.exists() {
        common::skip("/usr/bin/python3 is missing (install python3 and python3-venv)");
        return;
    }
    let temp = tempfile::tempdir().unwrap();
    let a = TestNode::spawn_on(&temp.path().join("a"), &["--name", "node-a"]);
    let root = shared_workspace(&a, "py").await;
    let venv = root.join("environments/.venv");
    let status = std::process::Command::new(python)
        .args(["-m", "venv"])
        .arg(&venv)
        .status()
        .unwrap();
    if !status.success() {
        common::skip("python3 -m venv failed (install python3-venv)");
        return;
    }
    // A link to an interpreter this host lacks must be reported, not left silently broken.
    std::fs::create_dir_all(root.join("environments/old/bin")).unwrap();
    std::os::unix::fs::symlink(
        "/opt/python3.99/bin/python3.99",
        root.join("environments/old/bin/python"),
    )
    .unwrap();

    let b = node_with_peers(&temp.path().join("b"), "node-b", &[&a], &[]);
    let client = b.admin();
    until_listed(&client, "node-a", "py", 1).await;
    let job = start(&client, "clone", Some("node-a"), "py").await;
    let job = done(&client, job.id).await;
    let cloned = clone_root(&b, job.local_id.unwrap());
    let new_venv = cloned.join("environments/.venv");
    let output = std::process::Command::new(new_venv.join("bin/python"))
        .args(["-c", "import sys; print(sys.prefix)"])
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    assert_eq!(
        String::from_utf8_lossy(&output.stdout).trim(),
        new_venv.to_string_lossy()
    );
    // pip is a console script whose shebang names the venv's interpreter by absolute path.
    let output = std::process::Command::new(new_venv.join("bin/pip"))
        .arg("--version")
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    assert!(
        String::from_utf8_lossy(&output.stdout).contains(&*new_venv.to_string_lossy()),
        "{output:?}"
    );
    let cfg = std::fs::read_to_string(new_venv.join("pyvenv.cfg")).unwrap();
    assert!(
        !cfg.contains(&*root.to_string_lossy()),
        "pyvenv.cfg still names the source: {cfg}"
    );
    let detail = client.get("py").await.unwrap();
    let origin = detail.workspace.origin.unwrap();
    assert!(
        origin.relocated.iter().any(|p| p.ends_with("bin/pip")),
        "{:?}",
        origin.relocated
    );
    assert!(
        origin
            .needs_rebuild
            .iter()
            .any(|r| r.contains("environment `old`") && r.contains("python3.99")),
        "{:?}",
        origin.needs_rebuild
    );
    // The source is untouched.
    let source_pip = std::fs::read_to_string(venv.join("bin/pip")).unwrap();
    assert!(source_pip.contains(&*venv.to_string_lossy()));

    // A script added at the source arrives relocated by a sync. The clone's snapshot after
    // that sync (amended from the one before it, not walked) is the baseline a sync with
    // nothing new checks first: answered without a manifest.
    let script = format!("#!{}/bin/python\nprint('tool')\n", venv.display());
    std::fs::write(venv.join("bin/tool"), script).unwrap();
    std::fs::set_permissions(
        venv.join("bin/tool"),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    done(&client, start(&client, "sync", None, "py").await.id).await;
    let tool = std::fs::read_to_string(new_venv.join("bin/tool")).unwrap();
    assert!(tool.contains(&*new_venv.to_string_lossy()), "{tool}");
    let job = done(&client, start(&client, "sync", None, "py").await.id).await;
    assert_eq!(job.progress.bytes_fetched, 0, "{:?}", job.notes);
    assert!(
        job.notes.iter().any(|n| n.contains("already up to date")),
        "{:?}",
        job.notes
    );
}

#[actix_rt::test]
async fn uploads_over_the_limit_are_refused_with_retry_after() {
    if !common::needs_test_hooks() {
        return;
    }
    let temp = tempfile::tempdir().unwrap();
    let a = TestNode::spawn_with_env(
        &temp.path().join("a"),
        &["--name", "node-a", "--test-chunk-delay-ms", "500"],
        &[
            ("AIENV_TRANSFER_MAX_UPLOADS_PER_PEER", "1"),
            ("AIENV_TRANSFER_MAX_UPLOADS", "2"),
        ],
    );
    let root = shared_workspace(&a, "data").await;
    std::fs::write(root.join("data/one.bin"), noise(100_000, 5)).unwrap();
    let snapshot = decode(&a.admin().snapshot("data").await.unwrap());
    let hash = snapshot.entries.iter().find_map(|e| e.hash).unwrap();
    // Each "peer" is a key of its own calling over mutual TLS: limits count per key.
    let peers: BTreeMap<&str, awc::Client> = ["peer-1", "p-1", "p-2", "p-3"]
        .into_iter()
        .map(|name| {
            let identity = common::node_identity(&temp.path().join(name), name);
            (name, common::tls_client(&identity, a.key))
        })
        .collect();
    let ask = |peer: &'static str| {
        let url = format!("{}/api/v1/workspaces/data/chunks", a.tls_url);
        let http = peers[peer].clone();
        async move {
            let mut response = http.post(url).send_body(hash.0.to_vec()).await.unwrap();
            let status = response.status().as_u16();
            let retry_after = response
                .headers()
                .get("retry-after")
                .map(|v| v.to_str().unwrap().to_string());
            let _ = response.body().await;
            (status, retry_after)
        }
    };
    // One peer: the second concurrent batch is over its limit.
    let (first, second) = futures_util::future::join(ask("peer-1"), ask("peer-1")).await;
    let mut statuses = [first.0, second.0];
    statuses.sort_unstable();
    assert_eq!(statuses, [200, 429], "{first:?} {second:?}");
    let refused = if first.0 == 429 { first } else { second };
    assert_eq!(refused.1.as_deref(), Some("1"));
    // Three peers: the node-wide limit of two answers 503.
    let (x, (y, z)) = futures_util::future::join(
        ask("p-1"),
        futures_util::future::join(ask("p-2"), ask("p-3")),
    )
    .await;
    let mut statuses = [x.0, y.0, z.0];
    statuses.sort_unstable();
    assert_eq!(statuses, [200, 200, 503]);
}

#[actix_rt::test]
async fn a_clone_that_does_not_fit_is_refused_before_it_starts() {
    let temp = tempfile::tempdir().unwrap();
    let small = temp.path().join("small");
    std::fs::create_dir_all(&small).unwrap();
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=32m", "tmpfs"])
        .arg(&small)
        .status()
        .is_ok_and(|s| s.success());
    if !mounted {
        common::skip("cannot mount a small tmpfs to fill up (needs root)");
        return;
    }
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount")
                .arg("-l")
                .arg(&self.0)
                .status();
        }
    }
    let _unmount = Unmount(small.clone());
    let a = TestNode::spawn_on(&temp.path().join("a"), &["--name", "node-a"]);
    let root = shared_workspace(&a, "huge").await;
    std::fs::write(root.join("data/big.bin"), noise(40 << 20, 9)).unwrap();
    let b = node_with_peers(&small.join("b"), "node-b", &[&a], &[]);
    let client = b.admin();
    until_listed(&client, "node-a", "huge", 1).await;
    let job = start(&client, "clone", Some("node-a"), "huge").await;
    let job = finished(&client, job.id).await;
    assert_eq!(job.state, "failed");
    let error = job.error.unwrap();
    assert!(error.contains("not enough disk space"), "{error}");
    assert_eq!(job.progress.bytes_fetched, 0, "nothing was fetched");
    drop(b);
}

#[actix_rt::test]
async fn the_empty_chunk_is_always_served_and_unknown_hashes_are_missing() {
    use aienv_actors::chunk_frame::{FrameDecoder, FrameKind};
    use aienv_actors::snapshot::Hash;
    let temp = tempfile::tempdir().unwrap();
    let a = TestNode::spawn_on(&temp.path().join("a"), &[]);
    let root = shared_workspace(&a, "data").await;
    std::fs::write(root.join("data/empty.txt"), b"").unwrap();
    let empty = Hash::of(b"");
    let unknown = Hash::of(b"never stored anywhere");
    let peer = common::node_identity(&temp.path().join("peer"), "peer");
    let mut body = empty.0.to_vec();
    body.extend_from_slice(&unknown.0);
    let mut response = common::tls_client(&peer, a.key)
        .post(format!("{}/api/v1/workspaces/data/chunks", a.tls_url))
        .send_body(body)
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let bytes = response.body().await.unwrap();
    let mut decoder = FrameDecoder::default();
    decoder.push(&bytes);
    let first = decoder.next_frame().unwrap().unwrap();
    assert_eq!(
        (first.kind, first.hash, first.raw_len),
        (FrameKind::Raw, empty, 0)
    );
    let second = decoder.next_frame().unwrap().unwrap();
    assert_eq!((second.kind, second.hash), (FrameKind::Missing, unknown));
}

/// Part lists and ranges are exactly the spec's: the parts of the served chunk as the cut
/// makes them, a range's bytes, and `missing` for a range past the chunk's end or an unknown
/// chunk; a workspace not shared with the asker is not found.
#[actix_rt::test]
async fn parts_and_ranges_are_served_as_specified() {
    use aienv_actors::chunk_frame::{FrameDecoder, FrameKind};
    use aienv_actors::chunk_parts::{self, Range};
    let temp = tempfile::tempdir().unwrap();
    let a = TestNode::spawn_on(&temp.path().join("a"), &[]);
    let root = shared_workspace(&a, "data").await;
    let content = noise(300_000, 21);
    std::fs::write(root.join("data/blob.bin"), &content).unwrap();
    let hash = Hash::of(&content);
    let unknown = Hash::of(b"never stored anywhere");
    let peer = common::node_identity(&temp.path().join("peer"), "peer");
    let client = common::tls_client(&peer, a.key);
    // Take the snapshot, so the file is indexed.
    a.admin().snapshot("data").await.unwrap();

    let mut body = hash.0.to_vec();
    body.extend_from_slice(&unknown.0);
    let mut response = client
        .post(format!("{}/api/v1/workspaces/data/chunks/parts", a.tls_url))
        .send_body(body)
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let answer = response.body().await.unwrap();
    let lists = chunk_parts::decode_lists(&answer, &[(hash, 300_000), (unknown, 70_000)]).unwrap();
    assert_eq!(lists[0].as_deref(), Some(&chunk_parts::cut(&content)[..]));
    assert_eq!(lists[1], None);

    let ranges = [
        Range {
            hash,
            offset: 1000,
            len: 5000,
        },
        Range {
            hash,
            offset: 299_990,
            len: 20,
        },
        Range {
            hash: unknown,
            offset: 0,
            len: 10,
        },
    ];
    let mut response = client
        .post(format!(
            "{}/api/v1/workspaces/data/chunks/ranges?compress=none",
            a.tls_url
        ))
        .send_body(chunk_parts::encode_ranges(&ranges))
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let mut decoder = FrameDecoder::default();
    decoder.push(&response.body().await.unwrap());
    let first = decoder.next_frame().unwrap().unwrap();
    assert_eq!(
        (first.kind, first.hash, first.raw_len),
        (FrameKind::Raw, hash, 5000)
    );
    assert_eq!(first.into_data().unwrap(), &content[1000..6000]);
    for expected in [hash, unknown] {
        let frame = decoder.next_frame().unwrap().unwrap();
        assert_eq!((frame.kind, frame.hash), (FrameKind::Missing, expected));
    }
    decoder.finish().unwrap();

    // Not shared with this peer: as for chunks, the workspace is not found.
    a.admin()
        .share(
            "data",
            &ShareRequest {
                mode: Some("peers".into()),
                peers: vec!["someone-else".into()],
            },
        )
        .await
        .unwrap();
    for (what, body) in [
        ("parts", hash.0.to_vec()),
        ("ranges", chunk_parts::encode_ranges(&ranges[..1])),
    ] {
        let response = client
            .post(format!(
                "{}/api/v1/workspaces/data/chunks/{what}",
                a.tls_url
            ))
            .send_body(body)
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 404, "{what}");
    }
}

/// A snapshot asked for `since` a root the source served before comes as a delta that
/// rebuilds it exactly; an unknown root gets the whole snapshot, a malformed one a 400; and a
/// sync after a small change in a tree of many files moves a delta, not the whole manifest.
#[actix_rt::test]
async fn a_sync_gets_the_snapshot_as_a_delta_from_the_one_it_holds() {
    use aienv_actors::snapshot_delta::SnapshotDelta;
    let temp = tempfile::tempdir().unwrap();
    let a = TestNode::spawn_on(&temp.path().join("a"), &["--name", "node-a"]);
    let root = shared_workspace(&a, "many").await;
    for i in 0..2000 {
        let dir = root.join(format!("data/d{}", i % 20));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(format!("f{i}.txt")), format!("file {i}\n")).unwrap();
    }
    let b = node_with_peers(&temp.path().join("b"), "node-b", &[&a], &[]);
    let client = b.admin();
    until_listed(&client, "node-a", "many", 1).await;
    let job = done(
        &client,
        start(&client, "clone", Some("node-a"), "many").await.id,
    )
    .await;
    let cloned = clone_root(&b, job.local_id.unwrap());
    let full_before = a.admin().snapshot("many").await.unwrap();
    let before = decode(&full_before);

    std::fs::write(root.join("data/d3/f3.txt"), "changed\n").unwrap();
    std::fs::remove_file(root.join("data/d4/f4.txt")).unwrap();
    std::fs::write(root.join("data/new.txt"), "new\n").unwrap();

    // Over HTTP, as another node asks.
    let peer = common::node_identity(&temp.path().join("peer"), "peer");
    let http = common::tls_client(&peer, a.key);
    let url = format!("{}/api/v1/workspaces/many/snapshot", a.tls_url);
    let since = |root: &dyn std::fmt::Display| http.get(format!("{url}?since={root}")).send();
    let mut response = since(&before.root).await.unwrap();
    assert_eq!(response.status().as_u16(), 200);
    assert_eq!(
        response.headers().get("content-type").unwrap(),
        "application/vnd.aienv.snapshot-delta+msgpack+zstd"
    );
    let delta = response.body().await.unwrap();
    let rebuilt = SnapshotDelta::decode_onto(&delta, &before, &SnapshotLimits::default()).unwrap();
    let after = decode(&a.admin().snapshot("many").await.unwrap());
    assert_eq!(rebuilt, after);
    assert!(
        delta.len() * 20 < full_before.len(),
        "delta {} bytes, whole {}",
        delta.len(),
        full_before.len()
    );
    let mut response = since(&Hash::of(b"never served")).await.unwrap();
    assert_eq!(
        response.headers().get("content-type").unwrap(),
        "application/vnd.aienv.snapshot+msgpack+zstd"
    );
    assert_eq!(decode(&response.body().await.unwrap()), after);
    let response = since(&"xyz").await.unwrap();
    assert_eq!(response.status().as_u16(), 400);
    // A kept snapshot damaged on the source's disk (its head reads, its entries do not)
    // gives no delta: the whole snapshot, not an error.
    let kept = a.data_dir.join(format!(
        "served/{}/{}",
        before.workspace_id,
        before.root.to_hex()
    ));
    let bytes = std::fs::read(&kept).unwrap();
    #[derive(serde::Serialize)]
    struct Damaged<'a> {
        format: u32,
        workspace_id: uuid::Uuid,
        name: &'a str,
        revision: u64,
        source_root: &'a str,
        root: Hash,
        entries: [u32; 3],
    }
    let damaged = aienv_actors::packed::to_vec(&Damaged {
        format: 1,
        workspace_id: before.workspace_id,
        name: &before.name,
        revision: before.revision,
        source_root: &before.source_root,
        root: before.root,
        entries: [1, 2, 3],
    });
    std::fs::write(&kept, damaged).unwrap();
    let mut response = since(&before.root).await.unwrap();
    assert_eq!(response.status().as_u16(), 200);
    assert_eq!(
        response.headers().get("content-type").unwrap(),
        "application/vnd.aienv.snapshot+msgpack+zstd"
    );
    assert_eq!(decode(&response.body().await.unwrap()), after);
    std::fs::write(&kept, &bytes).unwrap();

    // The sync: the clone's base is the snapshot it cloned, so the delta is what travels.
    let job = done(&client, start(&client, "sync", None, "many").await.id).await;
    assert_eq!(tree(&root), tree(&cloned));
    assert!(
        job.progress.bytes_fetched < 2_000,
        "a delta and two small files: {:?}",
        job.progress
    );

    // A base this node cannot read back (damaged on disk): the sync stops with an error that
    // names the file and the way out, since without it the clone's own changes cannot be told
    // from the origin's; a forced sync takes the origin as it is, whole, and records it again.
    let base = temp
        .path()
        .join("b/transfers/bases")
        .join(format!("{}.snapshot", job.local_id.unwrap()));
    assert!(base.exists(), "{}", base.display());
    std::fs::write(&base, b"not a snapshot").unwrap();
    std::fs::write(root.join("data/d5/f5.txt"), "changed again\n").unwrap();
    let failed = finished(&client, start(&client, "sync", None, "many").await.id).await;
    let error = failed.error.unwrap_or_default();
    assert!(
        failed.state == "failed"
            && error.contains(&base.display().to_string())
            && error.contains("--force"),
        "{error}"
    );
    let forced = client
        .start_transfer(&TransferRequestDto {
            kind: "sync".into(),
            workspace: "many".into(),
            force: true,
            ..TransferRequestDto::default()
        })
        .await
        .unwrap();
    let job = done(&client, forced.id).await;
    assert_eq!(tree(&root), tree(&cloned));
    assert!(
        job.progress.bytes_fetched > 10_000,
        "the whole snapshot: {:?}",
        job.progress
    );
    assert!(decode_base(&base), "the base is recorded again");
}

/// Whether `path` holds a snapshot (a clone's base).
fn decode_base(path: &Path) -> bool {
    aienv_actors::snapshot::Snapshot::decode(
        &std::fs::read(path).unwrap(),
        &aienv_actors::snapshot::SnapshotLimits::default(),
    )
    .is_ok()
}

#[actix_rt::test]
async fn paths_that_differ_only_by_case_clone_onto_a_case_sensitive_file_system() {
    let temp = tempfile::tempdir().unwrap();
    let a = TestNode::spawn_on(&temp.path().join("a"), &["--name", "node-a"]);
    let root = shared_workspace(&a, "data").await;
    std::fs::write(root.join("data/README"), b"upper").unwrap();
    std::fs::write(root.join("data/readme"), b"lower").unwrap();
    // Sharing says which nodes cannot clone it, and why.
    let shared = a
        .admin()
        .share("data", &ShareRequest::default())
        .await
        .unwrap();
    assert!(
        shared.warnings.len() == 1
            && shared.warnings[0].contains("`data/README` and `data/readme`")
            && shared.warnings[0].contains("ignores case"),
        "{:?}",
        shared.warnings
    );
    let b = node_with_peers(&temp.path().join("b"), "node-b", &[&a], &[]);
    let client = b.admin();
    until_listed(&client, "node-a", "data", 1).await;
    let job = start(&client, "clone", Some("node-a"), "data").await;
    let job = done(&client, job.id).await;
    assert_eq!(job.state, "done", "{job:?}");
    let clone = clone_root(&b, job.local_id.unwrap());
    assert_eq!(std::fs::read(clone.join("data/README")).unwrap(), b"upper");
    assert_eq!(std::fs::read(clone.join("data/readme")).unwrap(), b"lower");
}

#[actix_rt::test]
async fn a_node_stopped_gracefully_pauses_its_transfers_and_resumes_them() {
    if !common::needs_test_hooks() {
        return;
    }
    let temp = tempfile::tempdir().unwrap();
    let b_dir = temp.path().join("b");
    let (a, root, mut b, job, _) = clone_under_way(temp.path(), 4, 60).await;
    // SIGTERM: the queue is told, the runner stops and the job stays queued, not cancelled.
    b.stop();
    let b = node_with_peers(&b_dir, "node-b", &[&a], &[]);
    let client = b.admin();
    let job = done(&client, job.id).await;
    assert_eq!(job.state, "done", "{job:?}");
    assert!(
        job.notes
            .iter()
            .any(|n| n.contains("paused by the node's shutdown")),
        "{:?}",
        job.notes
    );
    assert_eq!(tree(&root), tree(&clone_root(&b, job.local_id.unwrap())));
}
