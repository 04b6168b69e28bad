//! Step-down: invalidating a user's step-ups on every gateway at once. The
//! store keeps, per user, the time of the last invalidation; each gateway
//! holds them in memory (loaded at start, and pushed by Redis pub/sub when
//! several gateways share a Redis), so checking a step-up token against them
//! costs no store round trip.
//!
//! Times are Unix **milliseconds**: a credential issued at or before an
//! invalidation is refused after it, and two invalidations in one second with
//! a step-up between them are told apart (seconds could not). Credentials and
//! stored values from before milliseconds are read conservatively (as early
//! and as late in their second as can be, respectively), see
//! [`legacy_issued_ms`] and [`stored_at_ms`].
//!
//! Must never: forget a per-user invalidation, or let an entry with an expiry
//! (an ended PIN session) outlive it here: expired entries read as absent and
//! are dropped. Nor answer before the store's invalidations were loaded
//! once: until then every credential counts as invalidated (a gateway that
//! started while its store was down would otherwise take an empty map for
//! "nobody was stepped down").

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use crate::store::{Store, StoreError};
use crate::util::clock::now_ms;

/// The revocation-map name of one PIN session.
pub fn session_revocation_key(id: &str) -> String {
    format!("ps:{id}")
}

/// When a credential that only says its issue second was issued, judged
/// conservatively: at the first millisecond of that second, so an
/// invalidation anywhere in that second still ends it (a credential is
/// refused when issued at or before an invalidation: the earlier it is
/// taken to be, the more invalidations end it).
pub fn legacy_issued_ms(secs: i64) -> i64 {
    secs.saturating_mul(1000)
}

/// Values below this were written in seconds (by versions before
/// milliseconds): 10^11 ms is 1973, 10^11 s is the year 5138.
const SECONDS_BELOW: i64 = 100_000_000_000;

/// An invalidation time as stored or pushed, in milliseconds. A value in
/// seconds meant "everything issued in or before that second", so it becomes
/// the last millisecond of that second (not its first: a step-up made
/// earlier in that second was refused before the upgrade and must stay so).
pub fn stored_at_ms(v: i64) -> i64 {
    if v < SECONDS_BELOW {
        v.saturating_mul(1000).saturating_add(999)
    } else {
        v
    }
}

/// One invalidation: credentials of `key` issued at or before `at_ms` no
/// longer count; `expires_ms`, when set, is when the entry itself ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Entry {
    at_ms: i64,
    expires_ms: Option<i64>,
}

impl Entry {
    fn live(&self, now_ms: i64) -> bool {
        self.expires_ms.is_none_or(|e| e > now_ms)
    }
}

#[derive(Default, Debug)]
pub struct Revocations {
    map: RwLock<HashMap<String, Entry>>,
    /// When expired entries were last dropped (Unix ms).
    swept_ms: std::sync::atomic::AtomicI64,
    /// Whether the store's invalidations were read once (see the module).
    loaded: std::sync::atomic::AtomicBool,
}

/// How often `note` drops expired entries.
const SWEEP_EVERY_MS: i64 = 60_000;

impl Revocations {
    /// Credentials of `key` (a user, or a PIN session's
    /// [`session_revocation_key`]) issued at or before this
    /// Unix time in milliseconds no longer count.
    pub fn revoked_before(&self, key: &str) -> Option<i64> {
        self.revoked_before_at(key, now_ms())
    }

    fn revoked_before_at(&self, key: &str, now_ms: i64) -> Option<i64> {
        if !self.loaded() {
            return Some(i64::MAX);
        }
        let m = self.map.read().unwrap_or_else(|p| p.into_inner());
        if m.is_empty() {
            return None;
        }
        m.get(key).filter(|e| e.live(now_ms)).map(|e| e.at_ms)
    }

    /// Record an invalidation seen here or pushed by another gateway. `at`
    /// may be in seconds (older gateways and stores) or milliseconds.
    pub fn note(&self, key: &str, at: i64, expires_ms: Option<i64>) {
        self.note_at(key, at, expires_ms, now_ms());
    }

    fn note_at(&self, key: &str, at: i64, expires_ms: Option<i64>, now_ms: i64) {
        if expires_ms.is_some_and(|e| e <= now_ms) {
            return;
        }
        let new = Entry {
            at_ms: stored_at_ms(at),
            expires_ms,
        };
        let mut m = self.map.write().unwrap_or_else(|p| p.into_inner());
        let e = m.entry(key.to_string()).or_insert(new);
        if !e.live(now_ms) {
            *e = new;
        }
        e.at_ms = e.at_ms.max(new.at_ms);
        // Kept for good if either says so, else as long as the later one.
        e.expires_ms = match (e.expires_ms, new.expires_ms) {
            (Some(a), Some(b)) => Some(a.max(b)),
            _ => None,
        };
        let swept = self.swept_ms.load(std::sync::atomic::Ordering::Relaxed);
        if now_ms - swept >= SWEEP_EVERY_MS {
            self.swept_ms
                .store(now_ms, std::sync::atomic::Ordering::Relaxed);
            m.retain(|_, e| e.live(now_ms));
        }
    }

    /// Invalidate every credential of `key` issued up to `at_ms`, here and
    /// (through the store) on every gateway. `ttl`: how long the entry is
    /// needed (an ended PIN session's: until its last credential expired);
    /// None keeps it for good (a user's).
    pub async fn revoke(
        &self,
        store: &dyn Store,
        key: &str,
        at_ms: i64,
        ttl: Option<Duration>,
    ) -> Result<(), StoreError> {
        store.revoke("", key, at_ms, ttl).await?;
        self.note(
            key,
            at_ms,
            ttl.map(|t| now_ms().saturating_add(t.as_millis() as i64)),
        );
        crate::util::audit::event("step_down", key, "", "all step-ups invalidated");
        Ok(())
    }

    /// A map for a store known to hold no invalidations yet (a fresh
    /// in-memory store, in tests): its answers count at once.
    pub fn for_empty_store() -> Revocations {
        let r = Revocations::default();
        r.loaded.store(true, std::sync::atomic::Ordering::Release);
        r
    }

    /// Whether the store's invalidations were loaded; until then
    /// [`Self::revoked_before`] says every credential was invalidated.
    pub fn loaded(&self) -> bool {
        self.loaded.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Subscribe to what other gateways do, then load what the store knows.
    pub async fn start(self: &Arc<Self>, store: &dyn Store) -> Result<usize, StoreError> {
        let me = self.clone();
        store.watch_revocations(
            "",
            Arc::new(move |key: &str, at: i64, exp: Option<i64>| me.note(key, at, exp)),
        );
        self.load(store).await
    }

    /// Read every invalidation the store holds (again); the first success
    /// makes this gateway's answers count.
    pub async fn load(&self, store: &dyn Store) -> Result<usize, StoreError> {
        let all = store.revocations("").await?;
        let n = all.len();
        for r in all {
            self.note(&r.key, r.at, r.expires_ms);
        }
        self.loaded
            .store(true, std::sync::atomic::Ordering::Release);
        Ok(n)
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.map.read().unwrap().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: i64 = 1_700_000_000_000;

    fn loaded() -> Revocations {
        Revocations::for_empty_store()
    }

    #[test]
    fn before_the_store_was_read_every_credential_counts_as_invalidated() {
        let r = Revocations::default();
        assert_eq!(r.revoked_before_at("alice", T), Some(i64::MAX));
        r.note_at("bob", T, None, T);
        assert_eq!(
            r.revoked_before_at("alice", T),
            Some(i64::MAX),
            "a pushed entry is not the whole map"
        );
        r.loaded.store(true, std::sync::atomic::Ordering::Release);
        assert_eq!(r.revoked_before_at("alice", T), None);
        assert_eq!(r.revoked_before_at("bob", T), Some(T));
    }

    #[test]
    fn old_values_in_seconds_are_read_as_the_end_of_that_second() {
        assert_eq!(stored_at_ms(1_700_000_000), 1_700_000_000_999);
        assert_eq!(stored_at_ms(T), T);
        assert_eq!(legacy_issued_ms(1_700_000_000), T);
        let r = loaded();
        r.note_at("alice", 1_700_000_000, None, T);
        assert_eq!(r.revoked_before_at("alice", T), Some(T + 999));
    }

    #[test]
    fn the_later_invalidation_wins() {
        let r = loaded();
        r.note_at("alice", T + 600, None, T);
        r.note_at("alice", T + 100, None, T);
        assert_eq!(r.revoked_before_at("alice", T + 700), Some(T + 600));
        assert_eq!(r.revoked_before_at("bob", T + 700), None);
    }

    #[test]
    fn an_entry_with_an_expiry_is_forgotten_after_it() {
        let r = loaded();
        r.note_at("ps:s1", T, Some(T + 1000), T);
        r.note_at("alice", T, None, T);
        assert_eq!(r.revoked_before_at("ps:s1", T + 999), Some(T));
        assert_eq!(r.revoked_before_at("ps:s1", T + 1000), None, "expired");
        // Noting anything a sweep period later drops it from memory.
        r.note_at("bob", T, None, T + SWEEP_EVERY_MS + 1);
        assert_eq!(r.len(), 2, "alice and bob stay; the session is gone");
        assert_eq!(
            r.revoked_before_at("alice", T + SWEEP_EVERY_MS + 2),
            Some(T)
        );
        // An entry that arrives already expired is not kept at all.
        r.note_at("ps:s2", T, Some(T + 5), T + 10);
        assert_eq!(r.revoked_before_at("ps:s2", T + 10), None);
    }

    #[test]
    fn a_permanent_invalidation_is_never_shortened_by_an_expiring_one() {
        let r = loaded();
        r.note_at("k", T, None, T);
        r.note_at("k", T + 5, Some(T + 10), T);
        assert_eq!(r.revoked_before_at("k", T + 1_000_000), Some(T + 5));
    }
}
