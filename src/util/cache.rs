//! The in-memory caches of verified tokens, reused assertions and
//! PINAuthTokens handed out: bounded by entry count (quick_cache's CLOCK-Pro
//! eviction, sharded, so no request takes a global lock and nothing is
//! cleared wholesale when full) and by a deadline per entry, checked on
//! every read.
//!
//! A cache here only ever saves work: a miss must always be answerable the
//! slow way, and nothing may be stored past the moment it stops being true.

use std::borrow::Borrow;
use std::hash::Hash;

/// Entries are (value, valid-until Unix seconds); a read at or after the
/// deadline is a miss and drops the entry.
pub struct Expiring<K, V> {
    inner: quick_cache::sync::Cache<K, (V, i64)>,
}

impl<K: Eq + Hash + Clone, V: Clone> Expiring<K, V> {
    pub fn new(capacity: usize) -> Self {
        Expiring {
            inner: quick_cache::sync::Cache::new(capacity.max(1)),
        }
    }

    /// The value under `key`, if it is still valid at `now`.
    pub fn get<Q>(&self, key: &Q, now: i64) -> Option<V>
    where
        Q: Hash + Eq + ?Sized + quick_cache::Equivalent<K> + ToOwned,
        K: Borrow<Q>,
    {
        let (v, until) = self.inner.get(key)?;
        if now < until {
            Some(v)
        } else {
            self.inner.remove(key);
            None
        }
    }

    /// Keep `value` under `key` until `until` (exclusive). An entry that
    /// would already be stale is not stored.
    pub fn insert(&self, key: K, value: V, until: i64, now: i64) {
        if until > now {
            self.inner.insert(key, (value, until));
        }
    }

    pub fn remove<Q>(&self, key: &Q)
    where
        Q: Hash + Eq + ?Sized + quick_cache::Equivalent<K>,
    {
        self.inner.remove(key);
    }

    /// Forget everything: only for when what made the entries true changed
    /// (a key set rotated), never because the cache is full.
    pub fn clear(&self) {
        self.inner.clear();
    }

    pub fn len(&self) -> usize {
        self.inner.len()
    }

    pub fn is_empty(&self) -> bool {
        self.inner.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_entry_lives_until_its_deadline_and_not_a_moment_longer() {
        let c: Expiring<String, u32> = Expiring::new(10);
        c.insert("a".into(), 1, 100, 50);
        assert_eq!(c.get("a", 99), Some(1));
        assert_eq!(c.get("a", 100), None, "the deadline is exclusive");
        assert_eq!(c.get("a", 99), None, "a stale read dropped it");
        c.insert("b".into(), 2, 10, 10);
        assert!(c.is_empty(), "already stale: not stored");
    }

    #[test]
    fn a_full_cache_evicts_some_entries_not_all() {
        let c: Expiring<u32, u32> = Expiring::new(100);
        for i in 0..1000 {
            c.insert(i, i, 10, 0);
        }
        assert!(c.len() <= 110, "bounded: {}", c.len());
        assert!(c.len() >= 50, "not cleared wholesale: {}", c.len());
        assert_eq!(c.get(&999, 1), Some(999), "the newest entry is kept");
    }
}
