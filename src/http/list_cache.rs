//! Serialized listing pages, reused until the store's view changes. Listing is the hottest
//! read (the dashboard and every peer poll it); building the same page again for each request
//! cost more than everything else in the request together.

use std::collections::HashMap;
use std::sync::Mutex;

use bytes::Bytes;

use aienv_actors::workspace_store::Viewer;

/// Most distinct pages kept for one view.
const MAX_PAGES: usize = 256;

/// Pages of the current view, keyed by who asks and the raw query string.
#[derive(Default)]
pub struct ListCache {
    state: Mutex<CacheState>,
}

#[derive(Default)]
struct CacheState {
    seq: u64,
    pages: HashMap<(Viewer, String), Bytes>,
}

impl ListCache {
    /// The page for (`seq`, `viewer`, `query`), built with `build` when not cached.
    pub fn get_or_build<E>(
        &self,
        seq: u64,
        viewer: &Viewer,
        query: &str,
        build: impl FnOnce() -> Result<Bytes, E>,
    ) -> Result<Bytes, E> {
        let key = (viewer.clone(), query.to_string());
        {
            let state = self.state.lock().unwrap_or_else(|e| e.into_inner());
            if state.seq == seq {
                if let Some(page) = state.pages.get(&key) {
                    return Ok(page.clone());
                }
            }
        }
        let page = build()?;
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if seq > state.seq {
            state.seq = seq;
            state.pages.clear();
        }
        if seq == state.seq && state.pages.len() < MAX_PAGES {
            state.pages.insert(key, page.clone());
        }
        Ok(page)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_are_reused_until_the_view_changes() {
        let cache = ListCache::default();
        let builds = std::cell::Cell::new(0);
        let get = |seq, query: &str| {
            cache
                .get_or_build::<()>(seq, &Viewer::Owner, query, || {
                    builds.set(builds.get() + 1);
                    Ok(Bytes::from(format!("{seq}{query}")))
                })
                .unwrap()
        };
        assert_eq!(get(1, "a"), "1a");
        assert_eq!(get(1, "a"), "1a");
        assert_eq!(get(1, "b"), "1b");
        assert_eq!(get(2, "a"), "2a");
        // An older view never replaces a newer one's pages.
        assert_eq!(get(1, "a"), "1a");
        assert_eq!(get(2, "a"), "2a");
        assert_eq!(builds.get(), 4);
        let anonymous = cache
            .get_or_build::<()>(2, &Viewer::Anonymous, "a", || Ok(Bytes::from("anon")))
            .unwrap();
        assert_eq!(anonymous, "anon");
    }
}
