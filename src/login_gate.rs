//! Bounds the work wrong passwords can cost: argon2 runs off the request path on a fixed
//! number of slots (half the cores, at least one), so a flood of logins never takes the
//! CPU every other request needs; each source may have two verifications in flight and
//! twenty failures a minute; past 64 waiting, logins are turned away at once. Tokens and
//! passwords verified in the last minutes are checked without argon2 and pass untouched.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::auth::{Authenticator, Presented, Principal};

/// Verifications one source may have running or waiting.
pub const MAX_IN_FLIGHT_PER_SOURCE: u32 = 2;
/// Failed logins one source may make per window.
pub const MAX_FAILURES_PER_SOURCE: u32 = 20;
/// The failure window.
pub const FAILURE_WINDOW: Duration = Duration::from_secs(60);
/// Verifications waiting node-wide before new ones are turned away.
pub const MAX_WAITING: usize = 64;
const MAX_SOURCES: usize = 4096;

/// Why a login was not even tried.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Throttled {
    /// This source has too many logins in flight or failed too often.
    #[error("too many logins from {address}: try again in {retry_after} s")]
    Source {
        /// The source address.
        address: IpAddr,
        /// Seconds to wait.
        retry_after: u64,
    },
    /// The node has too many logins waiting.
    #[error("too many logins at once: try again in {retry_after} s")]
    Busy {
        /// Seconds to wait.
        retry_after: u64,
    },
}

#[derive(Debug)]
struct SourceState {
    in_flight: u32,
    window: Instant,
    failures: u32,
}

/// The gate every password check goes through.
pub struct LoginGate {
    slots: tokio::sync::Semaphore,
    waiting: AtomicUsize,
    sources: Mutex<HashMap<IpAddr, SourceState>>,
}

impl Default for LoginGate {
    fn default() -> LoginGate {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        LoginGate::new((cores / 2).max(1))
    }
}

/// Releases a source's place (and the node-wide one) however the check ends.
struct Place<'a> {
    gate: &'a LoginGate,
    source: IpAddr,
    failed: bool,
}

impl Drop for Place<'_> {
    fn drop(&mut self) {
        self.gate.waiting.fetch_sub(1, Ordering::SeqCst);
        let mut sources = self.gate.sources.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(state) = sources.get_mut(&self.source) {
            state.in_flight = state.in_flight.saturating_sub(1);
            if self.failed {
                state.failures += 1;
            }
        }
    }
}

impl LoginGate {
    /// A gate with `slots` argon2 verifications at once.
    pub fn new(slots: usize) -> LoginGate {
        LoginGate {
            slots: tokio::sync::Semaphore::new(slots.max(1)),
            waiting: AtomicUsize::new(0),
            sources: Mutex::new(HashMap::new()),
        }
    }

    /// Checks `presented` from `source`: `Ok(None)` for wrong credentials.
    pub async fn check(
        &self,
        auth: &Arc<Authenticator>,
        presented: Presented,
        source: IpAddr,
    ) -> Result<Option<Principal>, Throttled> {
        if auth.is_cheap(&presented) {
            return Ok(auth.verify(&presented));
        }
        {
            let mut sources = self.sources.lock().unwrap_or_else(|e| e.into_inner());
            if sources.len() >= MAX_SOURCES {
                sources.retain(|_, s| s.in_flight > 0 || s.window.elapsed() < FAILURE_WINDOW);
            }
            let state = sources.entry(source).or_insert(SourceState {
                in_flight: 0,
                window: Instant::now(),
                failures: 0,
            });
            if state.window.elapsed() >= FAILURE_WINDOW {
                state.window = Instant::now();
                state.failures = 0;
            }
            if state.failures >= MAX_FAILURES_PER_SOURCE {
                let left = FAILURE_WINDOW.saturating_sub(state.window.elapsed());
                return Err(Throttled::Source {
                    address: source,
                    retry_after: left.as_secs().max(1),
                });
            }
            if state.in_flight >= MAX_IN_FLIGHT_PER_SOURCE {
                return Err(Throttled::Source {
                    address: source,
                    retry_after: 1,
                });
            }
            state.in_flight += 1;
        }
        let waiting = self.waiting.fetch_add(1, Ordering::SeqCst);
        let mut place = Place {
            gate: self,
            source,
            failed: false,
        };
        if waiting >= MAX_WAITING {
            return Err(Throttled::Busy { retry_after: 1 });
        }
        let _slot = self
            .slots
            .acquire()
            .await
            .map_err(|_| Throttled::Busy { retry_after: 1 })?;
        let auth = auth.clone();
        let principal = tokio::task::spawn_blocking(move || auth.verify(&presented))
            .await
            .unwrap_or(None);
        place.failed = principal.is_none();
        Ok(principal)
    }
}
