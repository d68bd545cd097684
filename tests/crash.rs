//! kill -9 in the middle of a burst of writes: on restart the index and the directories agree
//! and no acknowledged write is lost.

mod common;

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;

use aienv::api::{CreateWorkspace, UpdateWorkspace};
use aienv::client::ListQuery;
use common::TestNode;

#[actix_rt::test]
async fn kill_9_during_writes_loses_nothing_acknowledged() {
    let temp = tempfile::tempdir().unwrap();
    let data = temp.path().join("data");
    // Acknowledged state: workspace name → last acknowledged (revision, title).
    let acked: Rc<RefCell<BTreeMap<String, (u64, String)>>> = Rc::default();

    for round in 0..3 {
        let mut node = TestNode::spawn_on(&data, &[]);
        let client = node.admin();
        let writers = 6;
        let mut tasks = Vec::new();
        for writer in 0..writers {
            let client = client.clone();
            let acked = acked.clone();
            tasks.push(actix_rt::spawn(async move {
                for step in 0.. {
                    let name = format!("r{round}-w{writer}-{}", step / 3);
                    let result = if step % 3 == 0 {
                        client
                            .create(&CreateWorkspace {
                                name: name.clone(),
                                title: Some("v0".into()),
                                ..Default::default()
                            })
                            .await
                            .map(|c| (c.workspace.revision, c.workspace.title))
                    } else {
                        let title = format!("v{}", step % 3);
                        client
                            .update(
                                &name,
                                &UpdateWorkspace {
                                    title: Some(title),
                                    ..Default::default()
                                },
                            )
                            .await
                            .map(|w| (w.revision, w.title))
                    };
                    match result {
                        Ok(state) => {
                            acked.borrow_mut().insert(name, state);
                        }
                        Err(_) => return,
                    }
                }
            }));
        }
        // Let the burst run until a number of writes were acknowledged, then kill -9.
        let target = acked.borrow().len() + 15 + round * 10;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while acked.borrow().len() < target && std::time::Instant::now() < deadline {
            actix_rt::time::sleep(std::time::Duration::from_millis(2)).await;
        }
        node.kill9();
        for task in tasks {
            let _ = task.await;
        }

        let node = TestNode::spawn_on(&data, &[]);
        let client = node.admin();
        let listed = client.list_all(&ListQuery::default()).await.unwrap();
        let by_name: BTreeMap<&str, &aienv::api::WorkspaceDto> =
            listed.iter().map(|w| (w.name.as_str(), w)).collect();
        for (name, (revision, title)) in acked.borrow().iter() {
            let workspace = by_name
                .get(name.as_str())
                .unwrap_or_else(|| panic!("round {round}: acknowledged workspace {name} lost"));
            assert!(
                workspace.revision >= *revision,
                "round {round}: {name} at revision {} but revision {revision} was acknowledged",
                workspace.revision
            );
            if workspace.revision == *revision {
                assert_eq!(&workspace.title, title, "round {round}: {name}");
            }
        }
        // Index and directories agree.
        let mut dirs = node.dir_names("workspaces");
        let mut ids: Vec<String> = listed.iter().map(|w| w.id.to_string()).collect();
        dirs.sort();
        ids.sort();
        assert_eq!(dirs, ids, "round {round}: directories and index disagree");
        assert!(node.dir_names("staging").is_empty());
        assert!(node.dir_names("trash").is_empty());
        for workspace in &listed {
            let detail = client.get(&workspace.name).await.unwrap();
            let path = std::path::PathBuf::from(detail.workspace.path.unwrap());
            let text = std::fs::read_to_string(path.join("workspace.yaml")).unwrap();
            assert!(
                text.contains(&format!("revision: {}", workspace.revision)),
                "round {round}: {text}"
            );
        }
        drop(node);
    }
    assert!(acked.borrow().len() >= 30);
}

#[actix_rt::test]
async fn start_up_reconciles_and_reports_each_repair() {
    let temp = tempfile::tempdir().unwrap();
    let data = temp.path().join("data");
    let mut node = TestNode::spawn_on(&data, &[]);
    let client = node.admin();
    for name in ["edited", "vanished", "half-deleted", "kept"] {
        client
            .create(&CreateWorkspace {
                name: name.into(),
                ..Default::default()
            })
            .await
            .unwrap();
    }
    let path_of = |name: &str| {
        let client = client.clone();
        let name = name.to_string();
        async move { std::path::PathBuf::from(client.get(&name).await.unwrap().workspace.path.unwrap()) }
    };
    let edited = path_of("edited").await;
    let vanished = path_of("vanished").await;
    let half_deleted = path_of("half-deleted").await;
    let kept = path_of("kept").await;
    node.stop();

    // What a crash (or a person) can leave behind:
    // a change written to disk but not indexed,
    let text = std::fs::read_to_string(edited.join("workspace.yaml")).unwrap();
    std::fs::write(
        edited.join("workspace.yaml"),
        text.replace("title: \"\"", "title: edited on disk"),
    )
    .unwrap();
    // a directory that disappeared,
    std::fs::remove_dir_all(&vanished).unwrap();
    // a deletion interrupted after the move to trash,
    std::fs::rename(
        &half_deleted,
        data.join("trash").join(half_deleted.file_name().unwrap()),
    )
    .unwrap();
    // a create interrupted after the rename but before indexing (a copy with a new id),
    let orphan_id = uuid::Uuid::new_v4();
    let orphan = data.join("workspaces").join(orphan_id.to_string());
    std::fs::create_dir(&orphan).unwrap();
    let kept_text = std::fs::read_to_string(kept.join("workspace.yaml")).unwrap();
    let kept_id = kept.file_name().unwrap().to_str().unwrap().to_string();
    std::fs::write(
        orphan.join("workspace.yaml"),
        kept_text
            .replace(&kept_id, &orphan_id.to_string())
            .replace("name: kept", "name: orphan"),
    )
    .unwrap();
    // an unreadable directory, and leftovers of an interrupted create and upload.
    std::fs::create_dir(data.join("workspaces/not-a-workspace")).unwrap();
    std::fs::create_dir(data.join("staging/create-123")).unwrap();
    std::fs::write(data.join("staging/upload-123.tar.zst"), b"partial").unwrap();

    let node = TestNode::spawn_on(&data, &[]);
    let client = node.admin();
    let repairs = client.node().await.unwrap().startup_repairs.unwrap();
    let joined = repairs.join("\n");
    for expected in [
        "`edited`: files changed on disk were indexed as revision 2",
        "dropped index entry of workspace `vanished`",
        "finished deleting workspace `half-deleted`",
        "indexed workspace `orphan`",
        "not-a-workspace",
        "removed unfinished staging directory create-123",
        "removed unfinished staging directory upload-123.tar.zst",
    ] {
        assert!(
            joined.contains(expected),
            "missing repair `{expected}` in:\n{joined}"
        );
    }
    let names: Vec<String> = client
        .list_all(&ListQuery::default())
        .await
        .unwrap()
        .into_iter()
        .map(|w| w.name)
        .collect();
    assert_eq!(names, ["edited", "kept", "orphan"]);
    let edited = client.get("edited").await.unwrap().workspace;
    assert_eq!(
        (edited.title.as_str(), edited.revision),
        ("edited on disk", 2)
    );
    assert_eq!(
        client
            .revisions("edited")
            .await
            .unwrap()
            .last()
            .unwrap()
            .change,
        "repaired"
    );
    assert!(node.dir_names("staging").is_empty() && node.dir_names("trash").is_empty());
    assert_eq!(node.dir_names("quarantine").len(), 1);

    // A second start finds nothing to repair.
    drop(node);
    let node = TestNode::spawn_on(&data, &[]);
    assert_eq!(
        node.admin().node().await.unwrap().startup_repairs.unwrap(),
        Vec::<String>::new()
    );
}

/// A clone is usable before its write-back is done; a crash in between is simulated by a
/// node that never finishes it (`AIENV_TEST_LEAVE_UNFLUSHED`) and is killed. At the next start
/// every file that arrived is read again: intact, the clone stays; torn, it is set aside
/// (and the node says so) instead of served.
#[actix_rt::test]
async fn a_clone_whose_write_back_a_crash_cut_short_is_checked_at_start() {
    let temp = tempfile::tempdir().unwrap();
    let a = TestNode::spawn_on(&temp.path().join("a"), &["--name", "node-a"]);
    let admin_a = a.admin();
    for name in ["intact", "torn"] {
        admin_a
            .create(&CreateWorkspace {
                name: name.into(),
                ..Default::default()
            })
            .await
            .unwrap();
        let root =
            std::path::PathBuf::from(admin_a.get(name).await.unwrap().workspace.path.unwrap());
        std::fs::write(root.join("small.txt"), format!("{name}\n")).unwrap();
        let large: Vec<u8> = (0..3u32 << 20)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        std::fs::write(root.join("weights.bin"), large).unwrap();
        admin_a
            .share(name, &aienv::api::ShareRequest::default())
            .await
            .unwrap();
    }
    let data_b = temp.path().join("b");
    let mut b = TestNode::spawn_with_env(
        &data_b,
        &["--name", "node-b", "--announce-interval", "0.2"],
        &[
            ("AIENV_DISCOVERY_STATIC_PEERS", a.tls_url.as_str()),
            ("AIENV_TEST_LEAVE_UNFLUSHED", "1"),
        ],
    );
    let admin_b = b.admin();
    let mut roots = BTreeMap::new();
    for name in ["intact", "torn"] {
        common::eventually(&format!("B sees {name}"), || async {
            admin_b
                .network_catalog(&aienv::client::NetworkQuery::default())
                .await
                .unwrap()
                .iter()
                .any(|e| e.workspace.name == name)
        })
        .await;
        let job = admin_b
            .start_transfer(&aienv::api::TransferRequestDto {
                kind: "clone".into(),
                peer: Some("node-a".into()),
                workspace: name.into(),
                ..Default::default()
            })
            .await
            .unwrap();
        let job = common::finished(&admin_b, job.id).await;
        assert_eq!(job.state, "done", "{job:?}");
        assert!(
            job.notes
                .iter()
                .any(|n| n.contains("usable") && n.contains("write-back")),
            "{:?}",
            job.notes
        );
        roots.insert(
            name,
            std::path::PathBuf::from(admin_b.get(name).await.unwrap().workspace.path.unwrap()),
        );
    }
    assert_eq!(
        std::fs::read_dir(data_b.join("unflushed")).unwrap().count(),
        2,
        "both clones wait for their write-back"
    );
    b.kill9();
    // What a cut write-back can leave: a file shorter than what arrived, or other bytes.
    let torn = roots["torn"].join("weights.bin");
    let mut bytes = std::fs::read(&torn).unwrap();
    bytes[2 << 20] ^= 0xff;
    std::fs::write(&torn, bytes).unwrap();

    let b = TestNode::spawn_with_env(
        &data_b,
        &["--name", "node-b", "--announce-interval", "0.2"],
        &[("AIENV_DISCOVERY_STATIC_PEERS", a.tls_url.as_str())],
    );
    let admin_b = b.admin();
    let names: Vec<String> = admin_b
        .list_all(&ListQuery::default())
        .await
        .unwrap()
        .into_iter()
        .map(|w| w.name)
        .collect();
    assert_eq!(names, ["intact"], "the torn clone is not served");
    assert_eq!(
        std::fs::read_to_string(roots["intact"].join("small.txt")).unwrap(),
        "intact\n"
    );
    let repairs = admin_b
        .node()
        .await
        .unwrap()
        .startup_repairs
        .unwrap_or_default();
    let said = repairs.join("\n");
    assert!(
        said.contains("weights.bin") && said.contains("clone it again"),
        "{said}"
    );
    assert!(said.contains("are intact"), "{said}");
    assert_eq!(
        std::fs::read_dir(data_b.join("unflushed")).unwrap().count(),
        0
    );
    assert!(
        std::fs::read_dir(data_b.join("quarantine"))
            .unwrap()
            .count()
            >= 1
    );
}
