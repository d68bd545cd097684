//! A watch on writes to the index (the chunk index's groups, the workspace records), against
//! sled 0.34's I/O pool deadlock (upstream issue 1412, "Deadlock under high load").
//!
//! Seen three times in five-round ext4 benchmarks, each in a clone's commit: a write holding
//! sled's segment accountant lock (`SegmentAccountant::next`, in `bump_tip`) waits for a
//! truncation of its log file that it queued on sled's I/O pool, while every pool thread
//! waits for that same lock in `write_to_log`. Nothing in the process can end it:
//! - the pool counts its idle threads as those waiting less those running a task, in an
//!   unsigned number, so once every thread runs a task the count wraps past zero to a huge
//!   value, and the pool, which adds a thread only while fewer than seven are idle, adds none
//!   however many tasks queue (a first version of this watch queued flushes to make it add
//!   one; in the third hang it queued them for minutes and the write stayed stuck);
//! - the truncation waits in the pool's private queue.
//!
//! So the watch tells. A write that lasts past [`STUCK_AFTER`] is logged as a warning. One
//! that lasts past [`DEADLOCKED_AFTER`] while every sled I/O thread sleeps and uses no CPU
//! for [`IDLE_FOR`], as does the writing thread, is the deadlock: no sled thread is doing
//! anything, yet a write waits.
//! Then the watch logs an error saying so and ends the node (exit status 1), so that its
//! service manager starts it again (`deploy/aienv.service`: `Restart=on-failure`). Nothing is
//! lost by that: sled recovers its log on start, an unflushed clone is checked again, and a
//! transfer resumes. A slow disk does not look like this: its writes keep sled's threads in
//! I/O (not asleep) or using CPU.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// A write lasting longer than this is logged as slow.
const STUCK_AFTER: Duration = Duration::from_secs(2);
/// A write lasting longer than this, with sled's I/O threads idle, is the deadlock.
const DEADLOCKED_AFTER: Duration = Duration::from_secs(60);
/// How long sled's I/O threads must have slept, using no CPU, for that.
const IDLE_FOR: Duration = Duration::from_secs(30);
/// How often the watch looks.
const PERIOD: Duration = Duration::from_secs(1);

/// When the watch calls a write stuck, and a deadlock.
#[derive(Debug, Clone, Copy)]
struct Limits {
    stuck_after: Duration,
    deadlocked_after: Duration,
    idle_for: Duration,
    period: Duration,
}

/// What sled's I/O threads are doing, as the watch samples it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct PoolActivity {
    /// Their CPU time so far, in clock ticks.
    ticks: u64,
    /// Whether every one of them, and the writing thread, sleeps (none runs nor waits for
    /// the disk: a flush's `fsync` on a slow disk keeps the writer in I/O).
    asleep: bool,
}

/// Samples sled's I/O threads and the writing thread (its id).
type Sample = Box<dyn Fn(i32) -> Option<PoolActivity> + Send>;
type OnDeadlock = Box<dyn Fn(Duration) + Send>;

/// The watch; its thread ends when it is dropped.
pub struct SledWatchdog {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

struct Shared {
    /// Writes in progress, by number: when each began, and its thread.
    writes: Mutex<HashMap<u64, (Instant, i32)>>,
    next: AtomicU64,
    /// Slow writes seen so far.
    slow: AtomicU64,
    stop: AtomicBool,
}

/// A write in progress; it ends when dropped.
pub struct Writing<'a> {
    shared: &'a Shared,
    id: u64,
}

impl SledWatchdog {
    /// Watches the writes the index marks, with sled's I/O threads read from `/proc`.
    pub fn start() -> Arc<SledWatchdog> {
        let limits = Limits {
            stuck_after: STUCK_AFTER,
            deadlocked_after: DEADLOCKED_AFTER,
            idle_for: IDLE_FOR,
            period: PERIOD,
        };
        SledWatchdog::start_with(
            limits,
            Box::new(sled_io_activity),
            Box::new(|stuck| {
                tracing::error!(
                    stuck_s = stuck.as_secs_f64(),
                    "a write to the index is stuck and sled's I/O threads are all asleep: this is sled 0.34's deadlock (upstream issue 1412), which nothing in this process can end; the node stops now so that its service manager starts it again (nothing is lost: the index's log is recovered, an unflushed clone is checked again, a transfer resumes); without one, start it again by hand"
                );
                std::process::exit(1);
            }),
        )
    }

    fn start_with(limits: Limits, sample: Sample, on_deadlock: OnDeadlock) -> Arc<SledWatchdog> {
        let shared = Arc::new(Shared {
            writes: Mutex::default(),
            next: AtomicU64::new(0),
            slow: AtomicU64::new(0),
            stop: AtomicBool::new(false),
        });
        let watched = shared.clone();
        let thread = std::thread::Builder::new()
            .name("sled-watchdog".into())
            .spawn(move || watch(&watched, limits, &sample, &on_deadlock))
            .inspect_err(|error| tracing::warn!(%error, "the index's write watch could not start"))
            .ok();
        Arc::new(SledWatchdog { shared, thread })
    }

    /// Marks a write on this thread as in progress until the returned value is dropped.
    pub fn writing(&self) -> Writing<'_> {
        let id = self.shared.next.fetch_add(1, Ordering::Relaxed);
        // SAFETY: gettid takes nothing and cannot fail.
        let thread = unsafe { libc::gettid() };
        self.shared
            .writes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, (Instant::now(), thread));
        Writing {
            shared: &self.shared,
            id,
        }
    }

    /// Slow writes seen so far.
    #[cfg(test)]
    fn slow(&self) -> u64 {
        self.shared.slow.load(Ordering::Relaxed)
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

fn watch(shared: &Shared, limits: Limits, sample: &Sample, on_deadlock: &OnDeadlock) {
    // The slow write being watched (when it began), and since when sled's I/O threads have
    // been seen asleep with the CPU time they had then.
    let mut slow: Option<Instant> = None;
    let mut idle: Option<(Instant, u64)> = None;
    // The write a deadlock was called for (once each; in the node the call does not return).
    let mut called: Option<Instant> = None;
    while !shared.stop.load(Ordering::Relaxed) {
        std::thread::park_timeout(limits.period);
        let oldest = shared
            .writes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .min()
            .copied();
        match oldest {
            Some((began, thread)) if began.elapsed() >= limits.stuck_after => {
                if slow != Some(began) {
                    if let Some(earlier) = slow {
                        ended_log(earlier);
                    }
                    tracing::warn!(
                        waited_s = began.elapsed().as_secs_f64(),
                        "a write to the index has not ended yet (a busy disk, or sled 0.34's deadlock, upstream issue 1412: then the node stops itself once sure)"
                    );
                    shared.slow.fetch_add(1, Ordering::Relaxed);
                    slow = Some(began);
                    idle = None;
                }
                idle = match (sample(thread), idle) {
                    (Some(now), Some((since, ticks))) if now.asleep && now.ticks == ticks => {
                        Some((since, ticks))
                    }
                    (Some(now), _) if now.asleep => Some((Instant::now(), now.ticks)),
                    _ => None,
                };
                let idle_long = idle.is_some_and(|(since, _)| since.elapsed() >= limits.idle_for);
                if began.elapsed() >= limits.deadlocked_after && idle_long && called != Some(began)
                {
                    on_deadlock(began.elapsed());
                    called = Some(began);
                }
            }
            _ => {
                if let Some(began) = slow.take() {
                    ended_log(began);
                }
                idle = None;
            }
        }
    }
}

/// Says that the slow write that began at `began` ended.
fn ended_log(began: Instant) {
    tracing::warn!(
        took_s = began.elapsed().as_secs_f64(),
        "the write to the index that had not ended has ended"
    );
}

/// sled's I/O threads (named `sled-io-N`) and the thread `writer`, from `/proc/self/task`:
/// their CPU time and whether all sleep. `None` when no I/O thread is found or `/proc`
/// cannot be read: then no deadlock is called.
fn sled_io_activity(writer: i32) -> Option<PoolActivity> {
    let mut activity = PoolActivity {
        ticks: 0,
        asleep: true,
    };
    let mut found = false;
    for task in std::fs::read_dir("/proc/self/task").ok()?.flatten() {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        let is_writer = task.file_name().to_str() == Some(writer.to_string().as_str());
        if !comm.starts_with("sled-io-") && !is_writer {
            continue;
        }
        let stat = std::fs::read_to_string(task.path().join("stat")).ok()?;
        let (state, ticks) = task_state(&stat)?;
        activity.asleep &= state == 'S';
        activity.ticks += ticks;
        found |= !is_writer;
    }
    found.then_some(activity)
}

/// A `/proc/…/stat` line's state and user + system CPU ticks (fields 3, 14 and 15; the name
/// before them is in parentheses and may hold spaces).
fn task_state(stat: &str) -> Option<(char, u64)> {
    let fields: Vec<&str> = stat
        .get(stat.rfind(')')? + 1..)?
        .split_whitespace()
        .collect();
    let state = fields.first()?.chars().next()?;
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((state, utime + stime))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        // Far longer than the short writes below, so that a busy machine descheduling the
        // test for a moment does not make one of them look stuck.
        Limits {
            stuck_after: Duration::from_millis(500),
            deadlocked_after: Duration::from_millis(800),
            // Far longer than the pool's changes below are apart.
            idle_for: Duration::from_millis(1000),
            period: Duration::from_millis(10),
        }
    }

    fn until(what: &str, mut done: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !done() {
            assert!(Instant::now() < deadline, "{what}");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// The watch with sled's threads as `pool` says, counting the deadlocks it calls.
    fn watchdog(pool: Arc<Mutex<PoolActivity>>) -> (Arc<SledWatchdog>, Arc<AtomicU64>) {
        let called = Arc::new(AtomicU64::new(0));
        let counted = called.clone();
        let watchdog = SledWatchdog::start_with(
            limits(),
            Box::new(move |_| Some(*pool.lock().unwrap())),
            Box::new(move |_| {
                counted.fetch_add(1, Ordering::Relaxed);
            }),
        );
        (watchdog, called)
    }

    #[test]
    fn a_slow_write_is_told_and_a_deadlock_only_when_sleds_threads_do_nothing() {
        let pool = Arc::new(Mutex::new(PoolActivity {
            ticks: 0,
            asleep: true,
        }));
        let (watchdog, deadlocks) = watchdog(pool.clone());
        // Short writes: none is slow.
        for _ in 0..20 {
            let _writing = watchdog.writing();
            std::thread::sleep(Duration::from_millis(5));
        }
        // Absence is only seen by waiting: past the threshold after the last short write.
        std::thread::sleep(Duration::from_millis(600));
        assert_eq!(watchdog.slow(), 0, "a short write is not slow");

        // A long write while sled's threads keep working (using CPU, or in I/O): slow, never
        // a deadlock.
        let writing = watchdog.writing();
        until("the slow write was told", || watchdog.slow() == 1);
        for round in 0..100u64 {
            *pool.lock().unwrap() = PoolActivity {
                ticks: round,
                asleep: round % 7 != 0,
            };
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(deadlocks.load(Ordering::Relaxed), 0, "a working pool");
        // The same write with the pool asleep and idle: the deadlock, once.
        pool.lock().unwrap().asleep = true;
        until("the deadlock was called", || {
            deadlocks.load(Ordering::Relaxed) == 1
        });
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(deadlocks.load(Ordering::Relaxed), 1, "called once a write");
        assert_eq!(watchdog.slow(), 1);
        drop(writing);
        drop(watchdog);
    }

    #[test]
    fn sleds_threads_are_read_from_proc() {
        assert_eq!(
            task_state("4242 (sled-io-1 x) S 1 2 3 4 5 6 7 8 9 10 17 5 0 0"),
            Some(('S', 22))
        );
        assert_eq!(task_state("4242 (x) D"), None);
        // This process, once sled has started its pool.
        let db = sled::Config::new().temporary(true).open().unwrap();
        db.insert(b"k", b"v").unwrap();
        db.flush().unwrap();
        // SAFETY: gettid takes nothing and cannot fail.
        let me = unsafe { libc::gettid() };
        let activity = sled_io_activity(me).expect("sled's I/O threads are found");
        assert!(!activity.asleep, "this thread runs while it reads them");
    }
}
