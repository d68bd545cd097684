//! A watch on writes to the index (the chunk index's groups, the workspace records), against
//! sled 0.34's I/O pool deadlock (upstream issue 1412, "Deadlock under high load").
//!
//! Seen twice in five-round ext4 benchmarks: a write holding sled's segment accountant lock
//! (`SegmentAccountant::next`) waits for a truncation of its log file that it queued on
//! sled's I/O pool, while every pool thread waits for that same lock in `write_to_log`. The
//! pool adds a thread only when a task is queued behind more than seven others and fewer
//! than seven threads are idle, and a new thread takes the oldest queued task first. So
//! while a write is stuck, each task queued behind the others brings a new thread that takes
//! one task off the front, and the truncation comes nearer to a thread that runs it, after
//! which the lock is let go. The watch queues one flush a second (what sled's own flusher
//! does twice a second anyway) while a write has lasted longer than it should, and says so
//! in the log. It cannot make the deadlock happen on demand, so that it lets a stuck write
//! go is the reading of sled's code above, not something a test here shows; what the test
//! shows is that it queues its flushes while, and only while, a write lasts too long.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use futures_util::FutureExt;

/// A write lasting longer than this is taken as stuck. A slow write loses nothing by it: a
/// flush more, and maybe a pool thread that ends when idle.
const STUCK_AFTER: Duration = Duration::from_secs(2);
/// How often the watch looks, and queues a flush while a write is stuck.
const PERIOD: Duration = Duration::from_secs(1);

/// The watch; its thread ends when it is dropped.
pub struct SledWatchdog {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

struct Shared {
    /// Writes in progress, by number: when each began.
    writes: Mutex<HashMap<u64, Instant>>,
    next: AtomicU64,
    /// Flushes queued so far.
    nudges: AtomicU64,
    stop: AtomicBool,
}

/// A write in progress; it ends when dropped.
pub struct Writing<'a> {
    shared: &'a Shared,
    id: u64,
}

impl SledWatchdog {
    /// Watches writes to `tree`'s database.
    pub fn start(tree: sled::Tree) -> Arc<SledWatchdog> {
        SledWatchdog::start_with(tree, STUCK_AFTER, PERIOD)
    }

    fn start_with(tree: sled::Tree, stuck_after: Duration, period: Duration) -> Arc<SledWatchdog> {
        let shared = Arc::new(Shared {
            writes: Mutex::default(),
            next: AtomicU64::new(0),
            nudges: AtomicU64::new(0),
            stop: AtomicBool::new(false),
        });
        let watched = shared.clone();
        let thread = std::thread::Builder::new()
            .name("sled-watchdog".into())
            .spawn(move || watch(&watched, &tree, stuck_after, period))
            .inspect_err(|error| tracing::warn!(%error, "the index's write watch could not start"))
            .ok();
        Arc::new(SledWatchdog { shared, thread })
    }

    /// Marks a write as in progress until the returned value is dropped.
    pub fn writing(&self) -> Writing<'_> {
        let id = self.shared.next.fetch_add(1, Ordering::Relaxed);
        self.shared
            .writes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, Instant::now());
        Writing {
            shared: &self.shared,
            id,
        }
    }

    /// Flushes queued so far.
    #[cfg(test)]
    fn nudges(&self) -> u64 {
        self.shared.nudges.load(Ordering::Relaxed)
    }
}

impl Drop for Writing<'_> {
    fn drop(&mut self) {
        self.shared
            .writes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.id);
    }
}

impl Drop for SledWatchdog {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            thread.thread().unpark();
            let _ = thread.join();
        }
    }
}

fn watch(shared: &Shared, tree: &sled::Tree, stuck_after: Duration, period: Duration) {
    // The oldest write when the watch last queued a flush for it, and how many.
    let mut episode: Option<(Instant, u64)> = None;
    while !shared.stop.load(Ordering::Relaxed) {
        std::thread::park_timeout(period);
        let oldest = shared
            .writes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .min()
            .copied();
        match oldest {
            Some(began) if began.elapsed() >= stuck_after => {
                let nudges = match episode {
                    Some((seen, nudges)) if seen == began => nudges + 1,
                    earlier => {
                        if let Some((ended, nudges)) = earlier {
                            ended_log(ended, nudges);
                        }
                        tracing::warn!(
                            waited_s = began.elapsed().as_secs_f64(),
                            "a write to the index has not ended; queueing flushes on sled's I/O pool until it does (sled issue 1412)"
                        );
                        1
                    }
                };
                episode = Some((began, nudges));
                shared.nudges.fetch_add(1, Ordering::Relaxed);
                // Polled once: the flush is queued on the pool; its answer is not awaited.
                let _ = tree.flush_async().now_or_never();
            }
            _ => {
                if let Some((began, nudges)) = episode.take() {
                    ended_log(began, nudges);
                }
            }
        }
    }
}

/// Says that the write that began at `began`, for which `nudges` flushes were queued, ended.
fn ended_log(began: Instant, nudges: u64) {
    tracing::warn!(
        took_s = began.elapsed().as_secs_f64(),
        nudges,
        "the write to the index that had not ended has ended"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Until the flushes counted so far pass `count` (each test has its own watch).
    fn until_nudged(watchdog: &SledWatchdog, count: u64) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while watchdog.nudges() < count {
            assert!(Instant::now() < deadline, "no flush was queued");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn flushes_are_queued_while_and_only_while_a_write_lasts_too_long() {
        let db = sled::Config::new().temporary(true).open().unwrap();
        // Far longer than the short writes below, so that a busy machine descheduling the
        // test for a moment does not make one of them look stuck.
        let watchdog = SledWatchdog::start_with(
            (*db).clone(),
            Duration::from_millis(500),
            Duration::from_millis(10),
        );
        // Short writes: none lasts long enough.
        for _ in 0..20 {
            let _writing = watchdog.writing();
            std::thread::sleep(Duration::from_millis(5));
        }
        // Absence is only seen by waiting: past the threshold after the last short write.
        std::thread::sleep(Duration::from_millis(600));
        assert_eq!(watchdog.nudges(), 0, "a short write is not stuck");

        // One that lasts: flushes are queued, and the database still answers.
        let writing = watchdog.writing();
        until_nudged(&watchdog, 3);
        db.insert(b"k", b"v").unwrap();
        assert_eq!(db.get(b"k").unwrap().as_deref(), Some(&b"v"[..]));
        drop(writing);
        // None after it ended (one may have been queued as it ended).
        std::thread::sleep(Duration::from_millis(50));
        let after = watchdog.nudges();
        std::thread::sleep(Duration::from_millis(200));
        assert_eq!(watchdog.nudges(), after, "no flush once the write ended");
        drop(watchdog);
    }
}
