//! Export → import round trips byte for byte; every kind of malicious archive is refused with
//! a clear error and leaves nothing behind.

mod common;

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use aienv::api::CreateWorkspace;
use aienv_actors::snapshot::{EntryKind, Hash, Snapshot, SnapshotEntry};
use aienv_actors::workspace_store::{
    ArchiveManifest, ARCHIVE_FORMAT_VERSION, CONTENT_PREFIX, MANIFEST_ENTRY,
};
use common::TestNode;

/// Every path under `root` with (kind, mode, content hash or link target).
fn tree(root: &Path) -> BTreeMap<String, (String, u32, String)> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let relative = path.strip_prefix(root).unwrap().display().to_string();
            let meta = std::fs::symlink_metadata(&path).unwrap();
            let mode = meta.permissions().mode() & 0o7777;
            let value = if meta.file_type().is_symlink() {
                (
                    "link".into(),
                    0,
                    std::fs::read_link(&path).unwrap().display().to_string(),
                )
            } else if meta.is_dir() {
                stack.push(path.clone());
                ("dir".into(), mode, String::new())
            } else {
                (
                    "file".into(),
                    mode,
                    blake3::hash(&std::fs::read(&path).unwrap())
                        .to_hex()
                        .to_string(),
                )
            };
            out.insert(relative, value);
        }
    }
    out
}

#[actix_rt::test]
async fn export_import_round_trip_is_byte_identical() {
    let node = TestNode::spawn();
    let client = node.admin();
    let created = client
        .create(&CreateWorkspace {
            name: "src".into(),
            template: Some("python".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    let root = PathBuf::from(created.workspace.path.unwrap());
    std::fs::create_dir_all(root.join("data/deep/er")).unwrap();
    let blob: Vec<u8> = (0..3_000_000u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    std::fs::write(root.join("data/deep/er/weights.bin"), &blob).unwrap();
    std::fs::write(root.join("data/empty"), b"").unwrap();
    std::fs::write(
        root.join(format!("data/{}", "long-name-".repeat(20))),
        b"long",
    )
    .unwrap();
    std::fs::write(root.join("scripts/run.sh"), b"#!/bin/sh\necho hi\n").unwrap();
    std::fs::set_permissions(
        root.join("scripts/run.sh"),
        std::fs::Permissions::from_mode(0o750),
    )
    .unwrap();
    std::fs::create_dir_all(root.join(".venv/bin")).unwrap();
    std::os::unix::fs::symlink("/usr/bin/python3", root.join(".venv/bin/python")).unwrap();
    std::os::unix::fs::symlink("python", root.join(".venv/bin/python3")).unwrap();
    std::os::unix::fs::symlink("../../data/empty", root.join(".venv/bin/inside")).unwrap();

    let out = tempfile::tempdir().unwrap();
    let archive = out.path().join("src.tar.zst");
    let bytes = client.export("src", &archive, |_| {}).await.unwrap();
    assert_eq!(bytes, std::fs::metadata(&archive).unwrap().len());

    // Same name: refused, nothing changes.
    let clash = client.import(&archive, None, |_| {}).await.unwrap_err();
    assert_eq!(clash.code(), Some("name-taken"));
    assert!(node.dir_names("staging").is_empty());

    let imported = client.import(&archive, Some("copy"), |_| {}).await.unwrap();
    assert_eq!(imported.workspace.name, "copy");
    assert_ne!(
        imported.workspace.id, created.workspace.id,
        "a copy on the same node gets a new id"
    );
    let summary = imported.import.unwrap();
    assert_eq!(summary.external_links.len(), 1);
    assert_eq!(summary.external_links[0].path, ".venv/bin/python");
    assert_eq!(summary.external_links[0].target, "/usr/bin/python3");

    let copy_root = PathBuf::from(imported.workspace.path.unwrap());
    let mut original = tree(&root);
    let mut copy = tree(&copy_root);
    // workspace.yaml differs by design (new name and id); everything else is identical.
    original.remove("workspace.yaml");
    copy.remove("workspace.yaml");
    assert_eq!(original, copy);

    // The archive itself starts with the manifest.
    let decoder = zstd::Decoder::new(std::fs::File::open(&archive).unwrap()).unwrap();
    let mut tar = tar::Archive::new(decoder);
    let first = tar.entries().unwrap().next().unwrap().unwrap();
    assert_eq!(first.path().unwrap().to_str(), Some(MANIFEST_ENTRY));

    // Imported to another node under the same name, it keeps its id.
    let other = TestNode::spawn();
    let again = other.admin().import(&archive, None, |_| {}).await.unwrap();
    assert_eq!(
        (again.workspace.name.as_str(), again.workspace.id),
        ("src", created.workspace.id)
    );
}

/// One raw tar entry of a hand-made archive.
struct Raw {
    name: Vec<u8>,
    kind: tar::EntryType,
    mode: u32,
    data: Vec<u8>,
    link: Option<Vec<u8>>,
}

fn raw(name: &str, kind: tar::EntryType, data: &[u8]) -> Raw {
    Raw {
        name: name.as_bytes().to_vec(),
        kind,
        mode: 0o644,
        data: data.to_vec(),
        link: None,
    }
}

fn file_entry(path: &str, data: &[u8]) -> SnapshotEntry {
    SnapshotEntry {
        path: path.into(),
        kind: EntryKind::File,
        mode: 0o644,
        size: data.len() as u64,
        hash: Some(Hash::of(data)),
        target: None,
        chunks: Vec::new(),
    }
}

/// A large file's entry cut at `cuts` (any cut is valid; the chunker's are not required).
fn chunked_entry(path: &str, data: &[u8], cuts: &[usize]) -> SnapshotEntry {
    let mut chunks = Vec::new();
    let mut start = 0;
    for &end in cuts.iter().chain([&data.len()]) {
        chunks.push(aienv_actors::snapshot::ChunkRef {
            hash: Hash::of(&data[start..end]),
            size: (end - start) as u32,
        });
        start = end;
    }
    SnapshotEntry {
        path: path.into(),
        kind: EntryKind::File,
        mode: 0o644,
        size: data.len() as u64,
        hash: Some(aienv_actors::snapshot::chunk_list_hash(&chunks)),
        target: None,
        chunks,
    }
}

const WORKSPACE_YAML: &str = "schema_version: 1\nid: 6a1f0e2c-3b4d-4e5f-8a9b-0c1d2e3f4a5b\nname: evil\nrevision: 1\ncreated: 2026-01-01T00:00:00Z\nupdated: 2026-01-01T00:00:00Z\n";

/// Builds a `.tar.zst` with a manifest and raw entries, bypassing every safety check of the
/// tar crate's builder.
fn build(manifest_entries: Vec<SnapshotEntry>, entries: Vec<Raw>, with_manifest: bool) -> Vec<u8> {
    let manifest = ArchiveManifest {
        format: "aienv-archive".into(),
        version: ARCHIVE_FORMAT_VERSION,
        created: chrono::Utc::now(),
        snapshot: Snapshot::new(
            uuid::Uuid::new_v4(),
            "evil".into(),
            1,
            "/elsewhere/evil".into(),
            manifest_entries,
        ),
    };
    build_raw(&rmp_serde_bytes(&manifest), entries, with_manifest)
}

/// Builds a `.tar.zst` from manifest bytes and raw entries.
fn build_raw(manifest_bytes: &[u8], entries: Vec<Raw>, with_manifest: bool) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    let mut all = Vec::new();
    if with_manifest {
        all.push(raw(MANIFEST_ENTRY, tar::EntryType::Regular, manifest_bytes));
    }
    all.extend(entries);
    for entry in all {
        let mut header = tar::Header::new_gnu();
        {
            let bytes = header.as_mut_bytes();
            bytes[..entry.name.len()].copy_from_slice(&entry.name);
        }
        header.set_entry_type(entry.kind);
        header.set_mode(entry.mode);
        header.set_size(entry.data.len() as u64);
        if let Some(link) = &entry.link {
            let bytes = header.as_mut_bytes();
            bytes[157..157 + link.len()].copy_from_slice(link);
        }
        header.set_cksum();
        builder.append(&header, entry.data.as_slice()).unwrap();
    }
    let tar_bytes = builder.into_inner().unwrap();
    zstd::encode_all(tar_bytes.as_slice(), 3).unwrap()
}

fn rmp_serde_bytes(manifest: &impl serde::Serialize) -> Vec<u8> {
    // The manifest is MessagePack with named fields, as the node writes it.
    let mut out = Vec::new();
    let mut serializer = rmp_serde::Serializer::new(&mut out).with_struct_map();
    serde::Serialize::serialize(manifest, &mut serializer).unwrap();
    out
}

#[actix_rt::test]
async fn malicious_archives_are_refused_and_leave_nothing_behind() {
    let node = TestNode::spawn();
    let client = node.admin();
    let dir = tempfile::tempdir().unwrap();
    let outside = dir.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    let ws = format!("{CONTENT_PREFIX}workspace.yaml");
    let yaml = WORKSPACE_YAML.as_bytes();
    let good = || {
        (
            file_entry("workspace.yaml", yaml),
            raw(&ws, tar::EntryType::Regular, yaml),
        )
    };

    let mut cases: Vec<(&str, Vec<u8>, &str)> = Vec::new();
    let (entry, content) = good();
    let mut absolute = raw(
        &format!("{}/pwned", outside.display()),
        tar::EntryType::Regular,
        b"x",
    );
    absolute.name = format!("{}/pwned", outside.display()).into_bytes();
    cases.push((
        "absolute path",
        build(vec![entry], vec![content, absolute], true),
        "absolute path",
    ));

    let (entry, content) = good();
    cases.push((
        "dot-dot",
        build(
            vec![entry],
            vec![
                content,
                raw("workspace/../../pwned", tar::EntryType::Regular, b"x"),
            ],
            true,
        ),
        "contains `..`",
    ));

    let (entry, content) = good();
    let mut link = raw("workspace/hard", tar::EntryType::Link, b"");
    link.link = Some(b"/etc/passwd".to_vec());
    let mut hard_entry = file_entry("hard", b"root");
    hard_entry.size = 0;
    cases.push((
        "hardlink outside",
        build(vec![entry, hard_entry], vec![content, link], true),
        "hard link",
    ));

    let (entry, content) = good();
    cases.push((
        "device file",
        build(
            vec![entry],
            vec![content, raw("workspace/dev", tar::EntryType::Char, b"")],
            true,
        ),
        "character device",
    ));

    let (entry, content) = good();
    cases.push((
        "fifo",
        build(
            vec![entry],
            vec![content, raw("workspace/pipe", tar::EntryType::Fifo, b"")],
            true,
        ),
        "FIFO",
    ));

    let (entry, content) = good();
    let mut setuid = raw("workspace/suid", tar::EntryType::Regular, b"x");
    setuid.mode = 0o4755;
    cases.push((
        "setuid",
        build(
            vec![entry, file_entry("suid", b"x")],
            vec![content, setuid],
            true,
        ),
        "setuid",
    ));

    let (entry, content) = good();
    let (_, again) = good();
    cases.push((
        "duplicate",
        build(vec![entry], vec![content, again], true),
        "more than once",
    ));

    let (entry, content) = good();
    let mut symlink = raw("workspace/escape", tar::EntryType::Symlink, b"");
    symlink.link = Some(outside.display().to_string().into_bytes());
    let link_entry = SnapshotEntry {
        path: "escape".into(),
        kind: EntryKind::Symlink,
        mode: 0o777,
        size: 0,
        hash: None,
        target: Some(outside.display().to_string()),
        chunks: Vec::new(),
    };
    cases.push((
        "write through symlink",
        build(
            vec![entry, link_entry, file_entry("escape/pwned", b"x")],
            vec![
                content,
                symlink,
                raw("workspace/escape/pwned", tar::EntryType::Regular, b"x"),
            ],
            true,
        ),
        "through the symbolic link",
    ));

    let (entry, content) = good();
    cases.push((
        "hash mismatch",
        build(
            vec![entry, file_entry("data.bin", b"expected")],
            vec![
                content,
                raw("workspace/data.bin", tar::EntryType::Regular, b"tampered"),
            ],
            true,
        ),
        "BLAKE3",
    ));

    let (entry, content) = good();
    cases.push((
        "unlisted entry",
        build(
            vec![entry],
            vec![
                content,
                raw("workspace/extra", tar::EntryType::Regular, b"x"),
            ],
            true,
        ),
        "not listed",
    ));

    let (entry, content) = good();
    cases.push((
        "missing entry",
        build(vec![entry, file_entry("gone", b"x")], vec![content], true),
        "does not contain it",
    ));

    // A large file is checked chunk by chunk: one flipped byte in its second chunk is found.
    let big: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    let mut tampered = big.clone();
    tampered[2_500_000] ^= 1;
    let (entry, content) = good();
    cases.push((
        "tampered chunk",
        build(
            vec![
                entry,
                chunked_entry("big.bin", &big, &[1_000_000, 2_000_000]),
            ],
            vec![
                content,
                raw("workspace/big.bin", tar::EntryType::Regular, &tampered),
            ],
            true,
        ),
        "BLAKE3",
    ));

    // One policy for trees: a sticky directory is refused here as in a transfer.
    let (entry, content) = good();
    let mut sticky = raw("workspace/tmp", tar::EntryType::Directory, b"");
    sticky.mode = 0o1777;
    let sticky_entry = SnapshotEntry {
        path: "tmp".into(),
        kind: EntryKind::Dir,
        mode: 0o1777,
        size: 0,
        hash: None,
        target: None,
        chunks: Vec::new(),
    };
    cases.push((
        "sticky dir",
        build(vec![entry, sticky_entry], vec![content, sticky], true),
        "sticky",
    ));

    // A version this build does not know.
    let future = rmp_serde_bytes(&serde_json::json!({"format": "aienv-archive", "version": 9}));
    let (_, content) = good();
    cases.push((
        "future version",
        build_raw(&future, vec![content], true),
        "version 9 is not supported",
    ));

    let (_, content) = good();
    cases.push((
        "no manifest",
        build(vec![], vec![content], false),
        "does not start with its manifest",
    ));
    cases.push((
        "not zstd",
        b"this is not an archive".to_vec(),
        "not a valid .tar.zst",
    ));

    for (label, bytes, expected) in cases {
        let path = dir
            .path()
            .join(format!("{}.tar.zst", label.replace(' ', "-")));
        std::fs::write(&path, &bytes).unwrap();
        let error = client.import(&path, None, |_| {}).await.unwrap_err();
        let message = error.to_string();
        assert!(
            matches!(error.status(), Some(422) | Some(400)),
            "{label}: unexpected status: {message}"
        );
        assert!(
            message.contains(expected),
            "{label}: `{message}` should mention `{expected}`"
        );
        assert!(
            node.dir_names("staging").is_empty(),
            "{label}: staging left behind"
        );
        assert!(
            node.dir_names("workspaces").is_empty(),
            "{label}: a workspace appeared"
        );
        assert!(
            std::fs::read_dir(&outside).unwrap().next().is_none(),
            "{label}: wrote outside"
        );
    }
    assert!(!dir.path().join("pwned").exists());

    // The well-formed archive built the same way is accepted (the checks above are not
    // rejecting everything).
    let (entry, content) = good();
    let path = dir.path().join("good.tar.zst");
    std::fs::write(&path, build(vec![entry], vec![content], true)).unwrap();
    let imported = client.import(&path, None, |_| {}).await.unwrap();
    assert_eq!(imported.workspace.name, "evil");
}

/// Archives written before the manifest became the transfer snapshot (format 1: entries with
/// whole-file hashes in hex, in walk order) still import, checked by the same tree policy.
#[actix_rt::test]
async fn format_1_archives_still_import() {
    let node = TestNode::spawn();
    let client = node.admin();
    let dir = tempfile::tempdir().unwrap();
    let yaml = WORKSPACE_YAML.as_bytes();
    let big: Vec<u8> = (0..2_500_000u32).map(|i| (i % 253) as u8).collect();
    let v1 = |path: &str, kind: &str, data: &[u8], target: Option<&str>| {
        let mut entry = serde_json::json!({
            "path": path, "kind": kind, "mode": if kind == "dir" { 0o755 } else { 0o644 },
            "size": if kind == "file" { data.len() } else { 0 },
        });
        if kind == "file" {
            entry["blake3"] = blake3::hash(data).to_hex().to_string().into();
        }
        if let Some(target) = target {
            entry["target"] = target.into();
        }
        entry
    };
    let manifest = |entries: Vec<serde_json::Value>| {
        rmp_serde_bytes(&serde_json::json!({
            "format": "aienv-archive", "version": 1,
            "workspace_id": "6a1f0e2c-3b4d-4e5f-8a9b-0c1d2e3f4a5b",
            "workspace_name": "old", "revision": 3,
            "created": "2026-01-01T00:00:00Z",
            "entries": entries,
        }))
    };
    // Walk order (a directory's children before the next directory), not byte order.
    let entries = vec![
        v1("workspace.yaml", "file", yaml, None),
        v1("data", "dir", b"", None),
        v1("data/big.bin", "file", &big, None),
        v1("data/empty", "file", b"", None),
        v1("data/link", "symlink", b"", Some("big.bin")),
    ];
    let contents = || {
        let mut link = raw("workspace/data/link", tar::EntryType::Symlink, b"");
        link.link = Some(b"big.bin".to_vec());
        let mut data = raw("workspace/data", tar::EntryType::Directory, b"");
        data.mode = 0o755;
        vec![
            raw("workspace/workspace.yaml", tar::EntryType::Regular, yaml),
            data,
            raw("workspace/data/big.bin", tar::EntryType::Regular, &big),
            raw("workspace/data/empty", tar::EntryType::Regular, b""),
            link,
        ]
    };
    let path = dir.path().join("old.tar.zst");
    std::fs::write(
        &path,
        build_raw(&manifest(entries.clone()), contents(), true),
    )
    .unwrap();
    let imported = client.import(&path, None, |_| {}).await.unwrap();
    assert_eq!(imported.import.unwrap().source_revision, 3);
    let root = PathBuf::from(imported.workspace.path.unwrap());
    assert_eq!(std::fs::read(root.join("data/big.bin")).unwrap(), big);
    assert_eq!(
        std::fs::read_link(root.join("data/link")).unwrap(),
        Path::new("big.bin")
    );

    // The same checks hold for format 1: a wrong whole-file hash and a setgid file are refused.
    let mut wrong = entries.clone();
    wrong[2]["blake3"] = blake3::hash(b"other").to_hex().to_string().into();
    let mut setgid = entries;
    setgid[3]["mode"] = 0o2644.into();
    for (label, entries, expected) in [
        ("wrong hash", wrong, "BLAKE3"),
        ("setgid", setgid, "setuid, setgid"),
    ] {
        let path = dir.path().join(format!("{label}.tar.zst"));
        std::fs::write(&path, build_raw(&manifest(entries), contents(), true)).unwrap();
        let message = client
            .import(&path, Some("again"), |_| {})
            .await
            .unwrap_err()
            .to_string();
        assert!(message.contains(expected), "{label}: {message}");
        assert!(
            node.dir_names("staging").is_empty(),
            "{label}: staging left"
        );
    }
}
