//! Snapshot benchmark: what taking a snapshot costs in time and in memory as the count of
//! files grows, in one process, through the chunk index a node uses (sled with the node's
//! settings, the memo on disk). For each count it takes the first snapshot (every file read),
//! one with nothing changed (the memo answers), one after 1 % of the files changed, and the
//! same one amended from the snapshot before the change and the paths it touched (as a sync's
//! commit takes it, without a walk), and reports each pass's time and the process's peak
//! resident memory during it (`VmHWM`, reset before each pass through
//! `/proc/self/clear_refs`); then the time of one pass reading the amended snapshot back
//! with its root hashed again (a sync reads its snapshots a dozen times over). Memory that is bounded by design
//! shows as a flat peak from one count to the next: the last column is what each file added
//! since the previous count.
//!
//! Run: `cargo bench --bench snapshot`. `BENCH_FILES` lists the counts (default
//! `50000,200000,400000`), `BENCH_DIR` where the trees go (default `/dev/shm`: tmpfs, so the
//! disk's write-back does not blur the times), `AIENV_STORE_CACHE_MIB` sled's page cache
//! (default 64, as a node's). Then sled alone, with the index's entries and nothing else, at
//! the same counts, in the index's layout (groups of entries per sled key) beside a key per
//! entry (the layout before): the part of the growth that is the store's own;
//! `BENCH_CHUNK_GROUP` sets its chunk places per group (default the index's, 32), to weigh
//! other sizes. Figures, not assertions.

use std::path::Path;
use std::time::Instant;

use aienv_actors::snapshot::RootHasher;
use aienv_actors::workspace_store::{
    file_clock_now, open_database, ChangeBuffer, ChunkIndex, GroupedTree, SledWatchdog, Taken,
    Touched, CHUNK_GROUP, FILE_GROUP,
};

fn status_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|line| line.strip_prefix(field))
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// Runs `pass` and returns its result, its seconds, and the peak resident MiB while it ran.
fn measured<T>(pass: impl FnOnce() -> T) -> (T, f64, f64) {
    // "5" resets the peak resident size to the current one (Linux 4.0 and later).
    let _ = std::fs::write("/proc/self/clear_refs", "5");
    let started = Instant::now();
    let result = pass();
    let seconds = started.elapsed().as_secs_f64();
    (result, seconds, status_kib("VmHWM:") as f64 / 1024.0)
}

/// `count` files of 0.5–2 KiB in directories of 200, as the transfer benchmark's many-file
/// tree.
fn build(root: &Path, count: u64) {
    let mut state = 0x5eed_u64;
    for i in 0..count {
        let dir = root.join(format!("d{:04}", i / 200));
        if i % 200 == 0 {
            std::fs::create_dir_all(&dir).unwrap();
        }
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let len = 512 + (state % 1536) as usize;
        let line = format!("{i} {state:x} ");
        let content: String = line.chars().cycle().take(len).collect();
        std::fs::write(dir.join(format!("f{i}.txt")), content).unwrap();
    }
}

/// Waits until the clock files are stamped with has moved well past `path`'s mtime: the
/// index then trusts its stamp instead of reading it again (files stamped inside its racy
/// window are re-read).
fn past_racy_window(path: &Path) {
    let written = std::fs::metadata(path).unwrap().modified().unwrap();
    let margin = std::time::Duration::from_millis(50);
    while file_clock_now()
        .duration_since(written)
        .map_or(true, |since| since < margin)
    {
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
}

/// The file `build` wrote last.
fn last_file(root: &Path, count: u64) -> std::path::PathBuf {
    let i = count - 1;
    root.join(format!("d{:04}/f{i}.txt", i / 200))
}

/// Rewrites every hundredth file; the paths it touched.
fn change(root: &Path, count: u64) -> Touched {
    let mut touched = Touched::default();
    for i in (0..count).step_by(100) {
        let path = format!("d{:04}/f{i}.txt", i / 200);
        std::fs::write(root.join(&path), format!("changed {i}\n").repeat(40)).unwrap();
        touched.changed(&path);
    }
    touched
}

fn main() {
    let counts: Vec<u64> = std::env::var("BENCH_FILES")
        .unwrap_or_else(|_| "50000,200000,400000".into())
        .split(',')
        .filter_map(|n| n.trim().parse().ok())
        .collect();
    let base = std::env::var("BENCH_DIR").unwrap_or_else(|_| "/dev/shm".into());
    let cache_mib: u64 = std::env::var("AIENV_STORE_CACHE_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(64);
    if let Some(count) = std::env::var("BENCH_SLED_ALONE")
        .ok()
        .and_then(|n| n.parse().ok())
    {
        let grouped = std::env::var("BENCH_SLED_LAYOUT").as_deref() != Ok("keys");
        let (seconds, peak) = sled_insert(count, &base, cache_mib, grouped);
        println!("{seconds} {peak}");
        return;
    }
    println!(
        "snapshot benchmark: trees under {base}, sled cache {cache_mib} MiB; peak = VmHWM during the pass"
    );
    println!(
        "{:>8} {:>22} {:>22} {:>22} {:>22} {:>14} {:>16}",
        "files",
        "first: s / peak MiB",
        "unchanged: s / MiB",
        "1 % changed: s / MiB",
        "amended: s / MiB",
        "read back: ms",
        "B/file added"
    );
    let mut previous: Option<(u64, f64)> = None;
    for &count in &counts {
        let temp = tempfile::Builder::new()
            .prefix("aienv-bench-snapshot-")
            .tempdir_in(&base)
            .unwrap();
        let root = temp.path().join("ws");
        build(&root, count);
        // Past the racy window: the unchanged pass is then answered by the memo.
        past_racy_window(&last_file(&root, count));
        let db = open_database(&temp.path().join("index"), cache_mib * 1024 * 1024).unwrap();
        let index = ChunkIndex::open(&db, &temp.path().join("snapshots")).unwrap();
        let workspace = uuid::Uuid::new_v4();
        let take = || index.take(workspace, "bench", 1, &root).unwrap();
        let (first, first_s, first_mib) = measured(take);
        let (same, same_s, same_mib) = measured(take);
        assert_eq!(same.root, first.root, "nothing changed");
        assert_eq!(first.file_count, count);
        let touched = change(&root, count);
        let (changed, changed_s, changed_mib) = measured(take);
        assert_eq!(changed.stats.files_hashed, count.div_ceil(100));
        // The same snapshot amended from the one before the change and the paths it touched,
        // as a sync's commit takes it (its written files recorded, here by the pass above).
        let (amended, amended_s, amended_mib) = measured(|| {
            index
                .amend(workspace, "bench", 1, &root, &same, &touched)
                .unwrap()
        });
        assert_eq!(amended.root, changed.root, "amended as walked");
        let read_ms = read_back(&amended);
        let peak = first_mib.max(same_mib).max(changed_mib).max(amended_mib);
        let added = previous
            .map(|(files, mib)| {
                format!(
                    "{:.0}",
                    (peak - mib) * 1024.0 * 1024.0 / (count - files) as f64
                )
            })
            .unwrap_or_else(|| "-".into());
        println!(
            "{count:>8} {:>22} {:>22} {:>22} {:>22} {read_ms:>14.0} {added:>16}",
            format!("{first_s:.2} / {first_mib:.0}"),
            format!("{same_s:.2} / {same_mib:.0}"),
            format!("{changed_s:.2} / {changed_mib:.0}"),
            format!("{amended_s:.2} / {amended_mib:.0}"),
        );
        previous = Some((count, peak));
        drop((first, same, changed, amended, index, db));
    }
    sled_alone(&counts);
}

/// One pass over a kept snapshot as a sync makes a dozen of (every entry read back from the
/// memo's file, its root hashed again), in milliseconds: the median of five.
fn read_back(taken: &Taken) -> f64 {
    let mut times: Vec<f64> = (0..5)
        .map(|_| {
            let started = Instant::now();
            let mut root = RootHasher::new();
            taken
                .entries()
                .unwrap()
                .for_each(
                    |e| e,
                    |entry| {
                        root.push(entry);
                        Ok::<(), std::io::Error>(())
                    },
                )
                .unwrap();
            assert_eq!(root.finish(), taken.root, "read back whole");
            started.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    times.sort_by(f64::total_cmp);
    times[2]
}

/// sled by itself, with the node's settings: per file, the two entries the chunk index
/// writes (the record under workspace + path, about 90 bytes; the chunk's place under hash +
/// workspace + path, 12 bytes), nothing else, in batches of 4,096 files as the index writes
/// them. In groups as the index keeps them, and with a key per entry as it did before. What
/// grows here with the count of files grows in a node whatever the rest of it holds. Each
/// count and layout runs in a process of its own: memory an earlier pass freed but kept would
/// hide it.
fn sled_alone(counts: &[u64]) {
    println!("sled alone (the index's two entries per file, a process per count and layout), peak = VmHWM");
    println!(
        "{:>8} {:>26} {:>26}",
        "files", "grouped: s / MiB / B/file", "key each: s / MiB / B/file"
    );
    let mut previous: Option<(u64, [f64; 2])> = None;
    for &count in counts {
        let run = |layout: &str| {
            let output = std::process::Command::new(std::env::current_exe().unwrap())
                .env("BENCH_SLED_ALONE", count.to_string())
                .env("BENCH_SLED_LAYOUT", layout)
                .output()
                .unwrap();
            assert!(output.status.success(), "sled alone: {output:?}");
            let text = String::from_utf8_lossy(&output.stdout);
            let mut fields = text.split_whitespace().map(|f| f.parse::<f64>().unwrap());
            (fields.next().unwrap(), fields.next().unwrap())
        };
        let results = [run("groups"), run("keys")];
        let cells: Vec<String> = results
            .iter()
            .enumerate()
            .map(|(layout, (seconds, peak))| {
                let added = previous
                    .map(|(n, peaks)| {
                        format!(
                            "{:.0}",
                            (peak - peaks[layout]) * 1024.0 * 1024.0 / (count - n) as f64
                        )
                    })
                    .unwrap_or_else(|| "-".into());
                format!("{seconds:.2} / {peak:.0} / {added}")
            })
            .collect();
        println!("{count:>8} {:>26} {:>26}", cells[0], cells[1]);
        previous = Some((count, [results[0].1, results[1].1]));
    }
}

/// Inserts `count` files' entries into a fresh index, grouped or a key each; returns the
/// seconds and the peak MiB.
fn sled_insert(count: u64, base: &str, cache_mib: u64, grouped: bool) -> (f64, f64) {
    let temp = tempfile::Builder::new()
        .prefix("aienv-bench-sled-")
        .tempdir_in(base)
        .unwrap();
    let db = open_database(&temp.path().join("index"), cache_mib * 1024 * 1024).unwrap();
    let (files, chunks) = (
        db.open_tree("files").unwrap(),
        db.open_tree("chunks").unwrap(),
    );
    let watchdog = SledWatchdog::start();
    let (file_groups, chunk_groups) = (
        GroupedTree::new(files.clone(), FILE_GROUP, watchdog.clone()),
        GroupedTree::new(
            chunks.clone(),
            std::env::var("BENCH_CHUNK_GROUP")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(CHUNK_GROUP),
            watchdog,
        ),
    );
    let workspace = uuid::Uuid::new_v4();
    let record = [0x55u8; 90];
    let ((), seconds, peak) = measured(|| {
        let mut start = 0;
        while start < count {
            let end = (start + 4096).min(count);
            let (mut record_changes, mut chunk_changes) =
                (ChangeBuffer::default(), ChangeBuffer::default());
            for i in start..end {
                let path = format!("d{:04}/f{i}.txt", i / 200);
                let hash = blake3::hash(path.as_bytes());
                let key = [workspace.as_bytes(), path.as_bytes()];
                let chunk = [&hash.as_bytes()[..], workspace.as_bytes(), path.as_bytes()];
                if grouped {
                    record_changes.put(&key, Some(&record));
                    chunk_changes.put(&chunk, Some(&[0u8; 12]));
                } else {
                    files.insert(key.concat(), &record[..]).unwrap();
                    chunks.insert(chunk.concat(), &[0u8; 12]).unwrap();
                }
            }
            if grouped {
                chunk_groups.apply(&mut chunk_changes).unwrap();
                file_groups.apply(&mut record_changes).unwrap();
            }
            start = end;
        }
        db.flush().unwrap();
    });
    (seconds, peak)
}
