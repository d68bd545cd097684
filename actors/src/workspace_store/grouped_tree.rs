//! An ordered map of byte keys to byte values, kept in a sled tree as groups of neighbouring
//! entries: one sled key per group, not per entry.
//!
//! sled 0.34 splits a leaf page at 16 keys whatever their size, and keeps bookkeeping for every
//! page in memory (its page-table entry and cache infos) even while the page itself is paged
//! out. With a key per file record and per chunk place, that grew a node by 90–380 bytes for
//! every file indexed beyond the page cache's bound (the snapshot benchmark's "sled alone"
//! table, 16 and 64 MiB caches). Grouped, the same bookkeeping is shared by a group's entries,
//! and the entries themselves stay in the pages the cache bounds (a residue inside sled still
//! grows, 30–40 bytes a file there).
//!
//! Layout. A group's sled key is a lower bound of its entries' keys: the bound of the group it
//! was split from, or its first entry's key, or the empty key for a group started below every
//! other. Its entries are exactly those from its bound up to the next group's bound, in order.
//! Its value is the entries one after the other, each `key length (u32 LE), key, value length
//! (u32 LE), value`. A group is rewritten whole when its entries change, and split when it
//! holds more than its tree's `max_entries` or [`MAX_GROUP_BYTES`]; an emptied group is
//! removed. Groups never merge: deletions leave smaller groups, not more of them.
//!
//! Writers are serialised (a read-modify-write of a group must not lose a concurrent one);
//! every group rewrite is one atomic sled write (an insert, or a batch when it splits), so a
//! reader's lookup sees a group before or after it. An iteration that runs across a split may meet entries twice,
//! and skips any key not after the last one it gave.

use std::ops::Range;
use std::sync::{Arc, Mutex};

use super::error::StoreError;
use super::sled_watchdog::SledWatchdog;

/// Encoded bytes past which a group is split (a large file's record alone may exceed it:
/// then it is a group of its own).
pub const MAX_GROUP_BYTES: usize = 64 * 1024;

/// One entry, borrowed from the group it was read in (kept alive by reference count).
#[derive(Clone)]
pub struct Entry {
    group: sled::IVec,
    key: Range<usize>,
    value: Range<usize>,
}

impl Entry {
    /// The entry's key.
    pub fn key(&self) -> &[u8] {
        &self.group[self.key.clone()]
    }

    /// The entry's value.
    pub fn value(&self) -> &[u8] {
        &self.group[self.value.clone()]
    }
}

impl std::fmt::Debug for Entry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Entry")
            .field("key", &String::from_utf8_lossy(self.key()))
            .field("value_len", &self.value.len())
            .finish()
    }
}

/// Changes gathered for one [`GroupedTree::apply`], keys and values packed in one buffer: a
/// batch of many small changes costs its bytes, not two allocations each.
#[derive(Default)]
pub struct ChangeBuffer {
    bytes: Vec<u8>,
    /// Per change: where its key starts in `bytes`, the key's length, and the length of the
    /// value that follows the key ([`ChangeBuffer::REMOVE`]: the key is removed).
    items: Vec<(usize, u32, u32)>,
}

impl ChangeBuffer {
    const REMOVE: u32 = u32::MAX;

    /// Sets the key made of `key_parts`, one after the other, to `value`, or removes it
    /// (`None`). Of changes to one key, the last one put wins.
    pub fn put(&mut self, key_parts: &[&[u8]], value: Option<&[u8]>) {
        let start = self.bytes.len();
        for part in key_parts {
            self.bytes.extend_from_slice(part);
        }
        let key_len = u32::try_from(self.bytes.len() - start).expect("keys are short");
        let value_len = match value {
            Some(value) => {
                self.bytes.extend_from_slice(value);
                u32::try_from(value.len())
                    .ok()
                    .filter(|len| *len != Self::REMOVE)
                    .expect("values are under 4 GiB")
            }
            None => Self::REMOVE,
        };
        self.items.push((start, key_len, value_len));
    }

    /// The changes put.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// Whether none were put.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// The memory it holds for its changes, in bytes.
    pub fn size(&self) -> usize {
        self.bytes.len() + self.items.len() * std::mem::size_of::<(usize, u32, u32)>()
    }

    /// The change at `index`: its key, and its value or `None` to remove the key.
    pub fn get(&self, index: usize) -> (&[u8], Option<&[u8]>) {
        let (start, key_len, value_len) = self.items[index];
        let key_end = start + key_len as usize;
        let value =
            (value_len != Self::REMOVE).then(|| &self.bytes[key_end..key_end + value_len as usize]);
        (&self.bytes[start..key_end], value)
    }

    /// Sorts the changes by key, in place, keeping each key's last change only.
    pub fn sort(&mut self) {
        let bytes = &self.bytes;
        let key =
            |&(start, key_len, _): &(usize, u32, u32)| &bytes[start..start + key_len as usize];
        self.items.reverse();
        // Stable: of equal keys the later change (first, reversed) is the one kept.
        self.items.sort_by(|a, b| key(a).cmp(key(b)));
        self.items
            .dedup_by(|later, earlier| key(later) == key(earlier));
    }

    /// Empties it, keeping its memory for the next changes.
    pub fn clear(&mut self) {
        self.bytes.clear();
        self.items.clear();
    }
}

/// The grouped map over one sled tree. Cloning is cheap and shares the writers' lock.
#[derive(Clone)]
pub struct GroupedTree {
    tree: sled::Tree,
    max_entries: usize,
    writer: Arc<Mutex<()>>,
    watchdog: Arc<SledWatchdog>,
}

impl GroupedTree {
    /// The map kept in `tree`, with groups of at most `max_entries` (at least 2), its
    /// writes watched by `watchdog`.
    pub fn new(tree: sled::Tree, max_entries: usize, watchdog: Arc<SledWatchdog>) -> GroupedTree {
        GroupedTree {
            tree,
            max_entries: max_entries.max(2),
            writer: Arc::default(),
            watchdog,
        }
    }

    /// The group that holds `key` if it is present: the last with a bound at or below it.
    fn group_of(&self, key: &[u8]) -> Result<Option<(sled::IVec, sled::IVec)>, StoreError> {
        Ok(self.tree.range(..=key).next_back().transpose()?)
    }

    /// The entry under `key`.
    pub fn get(&self, key: &[u8]) -> Result<Option<Entry>, StoreError> {
        self.get_near(key, &mut Near::default())
    }

    /// [`GroupedTree::get`] for keys asked in order: the group the last lookup found is kept
    /// in `near` and asked first, so neighbouring keys cost no lookup. The kept group is the
    /// one read then: a writer's later change to it is not seen through `near`.
    pub fn get_near(&self, key: &[u8], near: &mut Near) -> Result<Option<Entry>, StoreError> {
        if let Some((bound, group)) = &near.0 {
            if key >= &bound[..] {
                match find_in(group, bound, key)? {
                    Found::Entry(entry) => return Ok(Some(entry)),
                    Found::Absent => return Ok(None),
                    // Past its last entry: perhaps in a group after it.
                    Found::Past => {}
                }
            }
        }
        let Some((bound, group)) = self.group_of(key)? else {
            near.0 = None;
            return Ok(None);
        };
        let found = find_in(&group, &bound, key)?;
        near.0 = Some((bound, group));
        Ok(match found {
            Found::Entry(entry) => Some(entry),
            Found::Absent | Found::Past => None,
        })
    }

    /// Entries with keys at or after `start`, in order. The group holding `start` is the one
    /// its lookup found; the groups after it are read only when the caller goes past it (a
    /// sled iterator copies each leaf page it steps into, so a prefix lookup that ends inside
    /// its first group, as a chunk's places do, pays for one page, not two).
    pub fn range_from(&self, start: &[u8]) -> Entries {
        let (current, after, error) = match self.group_of(start) {
            Ok(Some((bound, group))) => (
                Some((bound.clone(), group, 0)),
                std::ops::Bound::Excluded(bound),
                None,
            ),
            Ok(None) => (None, std::ops::Bound::Unbounded, None),
            Err(error) => (None, std::ops::Bound::Unbounded, Some(error)),
        };
        Entries {
            tree: self.tree.clone(),
            after: Some(after),
            groups: None,
            current,
            start: start.to_vec(),
            previous: None,
            error,
        }
    }

    /// Entries whose keys start with `prefix`, in order.
    pub fn scan_prefix<'a>(
        &self,
        prefix: &'a [u8],
    ) -> impl Iterator<Item = Result<Entry, StoreError>> + 'a {
        self.range_from(prefix)
            .take_while(move |item| item.as_ref().map_or(true, |e| e.key().starts_with(prefix)))
    }

    /// Applies `changes` (emptied; for a key given twice, the later change wins): each group
    /// they fall in is rewritten once. Keys in random order fall in groups all over the
    /// tree, so the larger the batch, the fewer times each group is rewritten.
    pub fn apply(&self, changes: &mut ChangeBuffer) -> Result<(), StoreError> {
        if changes.is_empty() {
            return Ok(());
        }
        changes.sort();
        self.apply_sorted(changes)?;
        changes.clear();
        Ok(())
    }

    /// [`GroupedTree::apply`] of changes sorted by key, each key once.
    fn apply_sorted(&self, changes: &ChangeBuffer) -> Result<(), StoreError> {
        let _writing = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        let _watched = self.watchdog.writing();
        // One lookup per change at most (keys in random order fall in a group each), none for
        // a change at or before the last key of the group its predecessor fell in.
        let mut found = self.group_of(changes.get(0).0)?;
        let mut at = 0;
        while at < changes.len() {
            let (bound, group) = match found.take() {
                Some((bound, group)) => (bound, Some(group)),
                None => (sled::IVec::from(&[][..]), None),
            };
            let old = match &group {
                Some(group) => decode_all(group, &bound)?,
                None => Vec::new(),
            };
            let mut end = at + 1;
            while end < changes.len() {
                let key = changes.get(end).0;
                if old.last().is_some_and(|last| key <= last.key()) {
                    end += 1;
                    continue;
                }
                let next = self.group_of(key)?;
                let same = match &next {
                    Some((next_bound, _)) => group.is_some() && *next_bound == bound,
                    None => group.is_none(),
                };
                if !same {
                    // Its group lies after this one, whose rewrite (even split) leaves it
                    // as it was read.
                    found = next;
                    break;
                }
                end += 1;
            }
            let merged = merge(&old, (at..end).map(|index| changes.get(index)));
            match self.pieces(&merged).as_slice() {
                [] => {
                    if group.is_some() {
                        self.tree.remove(&bound)?;
                    }
                }
                [whole] => {
                    self.tree.insert(&bound, encode(whole))?;
                }
                pieces => {
                    let mut batch = sled::Batch::default();
                    for (index, piece) in pieces.iter().enumerate() {
                        let key = if index == 0 {
                            bound.to_vec()
                        } else {
                            piece[0].0.to_vec()
                        };
                        batch.insert(key, encode(piece));
                    }
                    self.tree.apply_batch(batch)?;
                }
            }
            at = end;
        }
        Ok(())
    }

    /// `entries` cut into groups: one unless it is over a bound, else filled to three quarters
    /// of each bound (room for later inserts without splitting again at once).
    fn pieces<'e, 'a>(
        &self,
        entries: &'e [(&'a [u8], &'a [u8])],
    ) -> Vec<&'e [(&'a [u8], &'a [u8])]> {
        let size = |(key, value): &(&[u8], &[u8])| 8 + key.len() + value.len();
        let bytes: usize = entries.iter().map(size).sum();
        if entries.is_empty() {
            return Vec::new();
        }
        if entries.len() <= self.max_entries && bytes <= MAX_GROUP_BYTES {
            return vec![entries];
        }
        let (most, most_bytes) = (self.max_entries * 3 / 4, MAX_GROUP_BYTES * 3 / 4);
        let mut pieces = Vec::new();
        let (mut start, mut piece_bytes) = (0, 0);
        for (index, entry) in entries.iter().enumerate() {
            let full = index - start >= most || piece_bytes + size(entry) > most_bytes;
            if index > start && full {
                pieces.push(&entries[start..index]);
                (start, piece_bytes) = (index, 0);
            }
            piece_bytes += size(entry);
        }
        pieces.push(&entries[start..]);
        pieces
    }
}

/// A group's entries with `changes` (sorted, unique keys) laid over them.
fn merge<'a>(
    old: &'a [Entry],
    changes: impl ExactSizeIterator<Item = (&'a [u8], Option<&'a [u8]>)>,
) -> Vec<(&'a [u8], &'a [u8])> {
    let mut merged = Vec::with_capacity(old.len() + changes.len());
    let (mut old, mut changes) = (old.iter().peekable(), changes.peekable());
    loop {
        let order = match (old.peek(), changes.peek()) {
            (None, None) => break,
            (Some(_), None) => std::cmp::Ordering::Less,
            (None, Some(_)) => std::cmp::Ordering::Greater,
            (Some(entry), Some((key, _))) => entry.key().cmp(key),
        };
        if order == std::cmp::Ordering::Less {
            let entry = old.next().expect("peeked");
            merged.push((entry.key(), entry.value()));
            continue;
        }
        if order == std::cmp::Ordering::Equal {
            old.next();
        }
        let (key, value) = changes.next().expect("peeked");
        if let Some(value) = value {
            merged.push((key, value));
        }
    }
    merged
}

fn encode(entries: &[(&[u8], &[u8])]) -> Vec<u8> {
    let mut out = Vec::with_capacity(entries.iter().map(|(k, v)| 8 + k.len() + v.len()).sum());
    for (key, value) in entries {
        out.extend_from_slice(&(key.len() as u32).to_le_bytes());
        out.extend_from_slice(key);
        out.extend_from_slice(&(value.len() as u32).to_le_bytes());
        out.extend_from_slice(value);
    }
    out
}

fn decode_all(group: &sled::IVec, bound: &[u8]) -> Result<Vec<Entry>, StoreError> {
    let mut entries = Vec::new();
    let mut offset = 0;
    while offset < group.len() {
        entries.push(decode_at(group, &mut offset, bound)?);
    }
    Ok(entries)
}

/// The entry at `offset` of `group` (stored under `bound`, named in the error).
fn decode_at(group: &sled::IVec, offset: &mut usize, bound: &[u8]) -> Result<Entry, StoreError> {
    let corrupt = || StoreError::CorruptRecord {
        key: format!("the group at {}", String::from_utf8_lossy(bound)),
        message: format!("an entry at byte {offset} runs past the group's end"),
    };
    let field = |at: &mut usize| -> Option<Range<usize>> {
        let len = u32::from_le_bytes(group.get(*at..*at + 4)?.try_into().ok()?) as usize;
        let start = *at + 4;
        let end = start.checked_add(len).filter(|end| *end <= group.len())?;
        *at = end;
        Some(start..end)
    };
    let mut at = *offset;
    let key = field(&mut at).ok_or_else(corrupt)?;
    let value = field(&mut at).ok_or_else(corrupt)?;
    *offset = at;
    Ok(Entry {
        group: group.clone(),
        key,
        value,
    })
}

/// The group a lookup found, kept for the next ([`GroupedTree::get_near`]).
#[derive(Default)]
pub struct Near(Option<(sled::IVec, sled::IVec)>);

/// Where `key` is in a group.
enum Found {
    Entry(Entry),
    /// Not there, though the group holds a later key: nowhere in the tree either.
    Absent,
    /// After the group's last entry.
    Past,
}

fn find_in(group: &sled::IVec, bound: &[u8], key: &[u8]) -> Result<Found, StoreError> {
    let mut offset = 0;
    while offset < group.len() {
        let entry = decode_at(group, &mut offset, bound)?;
        match entry.key().cmp(key) {
            std::cmp::Ordering::Less => continue,
            std::cmp::Ordering::Equal => return Ok(Found::Entry(entry)),
            std::cmp::Ordering::Greater => return Ok(Found::Absent),
        }
    }
    Ok(Found::Past)
}

/// Iterator of [`GroupedTree::range_from`].
pub struct Entries {
    tree: sled::Tree,
    /// Where the groups after the first one start, until they are read.
    after: Option<std::ops::Bound<sled::IVec>>,
    groups: Option<sled::Iter>,
    current: Option<(sled::IVec, sled::IVec, usize)>,
    start: Vec<u8>,
    previous: Option<Entry>,
    error: Option<StoreError>,
}

impl Iterator for Entries {
    type Item = Result<Entry, StoreError>;

    fn next(&mut self) -> Option<Self::Item> {
        if let Some(error) = self.error.take() {
            return Some(Err(error));
        }
        loop {
            if let Some((bound, group, offset)) = &mut self.current {
                if *offset < group.len() {
                    let entry = match decode_at(group, offset, bound) {
                        Ok(entry) => entry,
                        Err(error) => {
                            self.current = None;
                            return Some(Err(error));
                        }
                    };
                    let after_previous = self
                        .previous
                        .as_ref()
                        .is_none_or(|previous| entry.key() > previous.key());
                    if entry.key() >= self.start.as_slice() && after_previous {
                        self.previous = Some(entry.clone());
                        return Some(Ok(entry));
                    }
                    continue;
                }
                self.current = None;
            }
            if let Some(after) = self.after.take() {
                let all = (after, std::ops::Bound::<sled::IVec>::Unbounded);
                self.groups = Some(self.tree.range::<sled::IVec, _>(all));
            }
            match self.groups.as_mut()?.next()? {
                Ok((bound, group)) => self.current = Some((bound, group, 0)),
                Err(error) => return Some(Err(error.into())),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn tree(max_entries: usize) -> GroupedTree {
        let db = sled::Config::new().temporary(true).open().unwrap();
        let tree = db.open_tree("t").unwrap();
        GroupedTree::new(tree.clone(), max_entries, SledWatchdog::start())
    }

    fn contents(tree: &GroupedTree) -> Vec<(Vec<u8>, Vec<u8>)> {
        tree.range_from(b"")
            .map(|e| e.map(|e| (e.key().to_vec(), e.value().to_vec())))
            .collect::<Result<_, _>>()
            .unwrap()
    }

    /// Random batches of inserts, overwrites and removals (keys given twice in one batch
    /// included) against a `BTreeMap`: every lookup, range and prefix scan agrees, groups
    /// stay within their bounds, and every group's entries lie between its bound and the
    /// next group's.
    #[test]
    fn random_changes_read_back_as_a_plain_ordered_map() {
        let mut next = crate::test_random(0x2545_f491_4f6c_dd1d);
        let mut random = |n: u64| next() % n;
        for max in [2, 3, 8, 64] {
            let grouped = tree(max);
            let mut model = BTreeMap::new();
            for round in 0..60 {
                let mut changes = Vec::new();
                for _ in 0..random(200) {
                    // Short keys from a small alphabet: many neighbours, shared prefixes,
                    // the empty key too.
                    let len = random(4) as usize;
                    let key: Vec<u8> = (0..len).map(|_| b"ab/c"[random(4) as usize]).collect();
                    let value = (random(3) > 0).then(|| {
                        // Now and then a value past the byte bound.
                        let size = if random(50) == 0 {
                            MAX_GROUP_BYTES
                        } else {
                            random(20) as usize
                        };
                        vec![round as u8; size]
                    });
                    changes.push((key, value));
                }
                let mut buffer = ChangeBuffer::default();
                for (key, value) in &changes {
                    match value {
                        Some(value) => model.insert(key.clone(), value.clone()),
                        None => model.remove(key),
                    };
                    // Keys put in parts, as the index builds them.
                    let (head, tail) = key.split_at(key.len() / 2);
                    buffer.put(&[head, tail], value.as_deref());
                }
                assert_eq!(buffer.len(), changes.len());
                grouped.apply(&mut buffer).unwrap();
                assert!(buffer.is_empty());
                let expected: Vec<_> = model.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
                assert_eq!(contents(&grouped), expected, "max {max}, round {round}");
                // Asked in order, then out of order, each from the group the last found.
                let mut near = Near::default();
                let probes = [&b""[..], b"a", b"ab", b"b/", b"c", b"cc", b"zz"];
                for probe in probes.into_iter().chain(probes.into_iter().rev()) {
                    let found = grouped.get(probe).unwrap().map(|e| e.value().to_vec());
                    assert_eq!(found.as_ref(), model.get(probe), "get {probe:?}");
                    let found = grouped.get_near(probe, &mut near).unwrap();
                    let found = found.map(|e| e.value().to_vec());
                    assert_eq!(found.as_ref(), model.get(probe), "get near {probe:?}");
                    let from: Vec<_> = grouped
                        .range_from(probe)
                        .map(|e| e.unwrap().key().to_vec())
                        .collect();
                    let model_from: Vec<_> = model
                        .range(probe.to_vec()..)
                        .map(|(k, _)| k.clone())
                        .collect();
                    assert_eq!(from, model_from, "range from {probe:?}");
                    let prefixed: Vec<_> = grouped
                        .scan_prefix(probe)
                        .map(|e| e.unwrap().key().to_vec())
                        .collect();
                    let model_prefixed: Vec<_> = model_from
                        .into_iter()
                        .filter(|k| k.starts_with(probe))
                        .collect();
                    assert_eq!(prefixed, model_prefixed, "prefix {probe:?}");
                }
                let groups: Vec<_> = grouped.tree.iter().map(Result::unwrap).collect();
                for (index, (bound, group)) in groups.iter().enumerate() {
                    let entries = decode_all(group, bound).unwrap();
                    assert!(!entries.is_empty(), "an emptied group is removed");
                    let bytes: usize = entries
                        .iter()
                        .map(|e| 8 + e.key().len() + e.value().len())
                        .sum();
                    assert!(
                        entries.len() <= max && (bytes <= MAX_GROUP_BYTES || entries.len() == 1),
                        "group of {} entries, {bytes} bytes, max {max}",
                        entries.len()
                    );
                    let next = groups.get(index + 1).map(|(next, _)| next);
                    for entry in &entries {
                        assert!(entry.key() >= &bound[..]);
                        assert!(next.is_none_or(|next| entry.key() < &next[..]));
                    }
                }
            }
        }
    }

    /// Keys a file's worth at a time in order, as a snapshot records them: groups fill to
    /// three quarters of their bound, so sled holds a key per group, not per entry.
    #[test]
    fn in_order_inserts_fill_groups() {
        let grouped = tree(64);
        for batch in 0..10 {
            let mut changes = ChangeBuffer::default();
            for i in 0..1000 {
                let key = format!("f{:06}", batch * 1000 + i);
                changes.put(&[key.as_bytes()], Some(&[1; 90]));
            }
            grouped.apply(&mut changes).unwrap();
        }
        assert_eq!(contents(&grouped).len(), 10_000);
        let groups = grouped.tree.len();
        assert!(
            (10_000 / 64..=10_000 / 40).contains(&groups),
            "{groups} groups"
        );
    }

    /// Writers on several threads whose keys interleave (so they rewrite the same groups)
    /// lose none of each other's entries.
    #[test]
    fn concurrent_writers_lose_nothing() {
        let grouped = tree(8);
        std::thread::scope(|scope| {
            for thread in 0..4u32 {
                let grouped = grouped.clone();
                scope.spawn(move || {
                    for batch in 0..40u32 {
                        let mut changes = ChangeBuffer::default();
                        for i in 0..25u32 {
                            let n = (batch * 25 + i) * 4 + thread;
                            changes.put(&[format!("{n:06}").as_bytes()], Some(&[thread as u8]));
                        }
                        grouped.apply(&mut changes).unwrap();
                    }
                });
            }
        });
        let keys: Vec<_> = contents(&grouped).into_iter().map(|(k, _)| k).collect();
        let expected: Vec<_> = (0..4000u32)
            .map(|n| format!("{n:06}").into_bytes())
            .collect();
        assert_eq!(keys, expected);
    }

    /// A damaged group is reported as a corrupt record naming where it is, not a panic.
    #[test]
    fn a_damaged_group_is_an_error() {
        let grouped = tree(8);
        let mut changes = ChangeBuffer::default();
        changes.put(&[b"key"], Some(b"value"));
        grouped.apply(&mut changes).unwrap();
        grouped.tree.insert(b"", &[200u8, 0, 0, 0, 1][..]).unwrap();
        let error = grouped.get(b"key").unwrap_err().to_string();
        assert!(error.contains("runs past the group's end"), "{error}");
        assert!(grouped.range_from(b"").next().unwrap().is_err());
    }
}
