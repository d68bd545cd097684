//! Secrets the node hands out and keeps in memory (sessions, single-use tickets): random ids,
//! each forgotten once it has not been used for its lifetime, bounded in number (the least
//! recently used goes first). A node restart forgets them all.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A fresh random id: 32 bytes from the OS, in hex.
pub fn new_token() -> String {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).expect("the OS provides randomness");
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

struct Entry<V> {
    value: V,
    used: Instant,
    lifetime: Duration,
}

impl<V> Entry<V> {
    fn live(&self) -> bool {
        self.used.elapsed() < self.lifetime
    }
}

/// Values under random ids, each living `lifetime` past its last use.
pub struct TokenMap<V> {
    entries: Mutex<HashMap<String, Entry<V>>>,
    max: usize,
}

impl<V> TokenMap<V> {
    /// A map holding at most `max` live entries.
    pub fn new(max: usize) -> TokenMap<V> {
        TokenMap {
            entries: Mutex::new(HashMap::new()),
            max,
        }
    }

    /// Stores `value` under a new id, for `lifetime` past its last use.
    pub fn insert(&self, value: V, lifetime: Duration) -> String {
        let id = new_token();
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries.retain(|_, e| e.live());
        if entries.len() >= self.max {
            if let Some(oldest) = entries
                .iter()
                .min_by_key(|(_, e)| e.used)
                .map(|(k, _)| k.clone())
            {
                entries.remove(&oldest);
            }
        }
        entries.insert(
            id.clone(),
            Entry {
                value,
                used: Instant::now(),
                lifetime,
            },
        );
        id
    }

    /// Removes `id` (a single-use ticket is spent whatever the caller makes of it); its value
    /// when it was still live.
    pub fn take(&self, id: &str) -> Option<V> {
        let entry = self
            .entries
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id)?;
        entry.live().then_some(entry.value)
    }

    /// Reads a live entry with `read`, counting it as used now.
    pub fn touch<R>(&self, id: &str, read: impl FnOnce(&V) -> R) -> Option<R> {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let entry = entries.get_mut(id)?;
        if !entry.live() {
            entries.remove(id);
            return None;
        }
        entry.used = Instant::now();
        Some(read(&entry.value))
    }

    /// Forgets `id`.
    pub fn remove(&self, id: &str) {
        self.entries
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_single_use_and_expiring() {
        let map = TokenMap::new(2);
        let a = map.insert("a", Duration::from_secs(60));
        let b = map.insert("b", Duration::from_secs(60));
        assert_eq!(map.touch(&a, |v| *v), Some("a"));
        // Full: the least recently used (b) goes.
        let c = map.insert("c", Duration::from_secs(60));
        assert_eq!(map.touch(&b, |v| *v), None);
        assert_eq!(map.take(&c), Some("c"));
        assert_eq!(map.take(&c), None);
        let gone = map.insert("d", Duration::ZERO);
        assert_eq!(map.take(&gone), None);
        assert_ne!(new_token(), new_token());
        assert_eq!(new_token().len(), 64);
    }
}
