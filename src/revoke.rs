//! Step-down: invalidating a user's step-ups on every gateway at once. The
//! store keeps, per user, the time of the last invalidation; each gateway
//! holds them in memory (loaded at start, and pushed by Redis pub/sub when
//! several gateways share a Redis), so checking a step-up token against them
//! costs no store round trip.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use crate::store::{Store, StoreError};

#[derive(Default, Debug)]
pub struct Revocations {
    map: RwLock<HashMap<String, i64>>,
}

impl Revocations {
    /// Step-ups of `sub` made at or before this Unix time no longer count.
    pub fn revoked_before(&self, sub: &str) -> Option<i64> {
        let m = self.map.read().unwrap_or_else(|p| p.into_inner());
        if m.is_empty() {
            return None;
        }
        m.get(sub).copied()
    }

    /// Record an invalidation seen here or pushed by another gateway.
    pub fn note(&self, sub: &str, at: i64) {
        let mut m = self.map.write().unwrap_or_else(|p| p.into_inner());
        let e = m.entry(sub.to_string()).or_insert(at);
        *e = (*e).max(at);
    }

    /// Invalidate every step-up of `sub` made up to now, here and (through
    /// the store) on every gateway.
    pub async fn revoke(&self, store: &dyn Store, sub: &str, at: i64) -> Result<(), StoreError> {
        store.revoke("", sub, at).await?;
        self.note(sub, at);
        crate::audit::event("step_down", sub, "", "all step-ups invalidated");
        Ok(())
    }

    /// Load what the store knows, and subscribe to what other gateways do.
    pub async fn start(self: &Arc<Self>, store: &dyn Store) -> Result<usize, StoreError> {
        let me = self.clone();
        store.watch_revocations("", Arc::new(move |sub: &str, at: i64| me.note(sub, at)));
        let all = store.revocations("").await?;
        let n = all.len();
        for (sub, at) in all {
            self.note(&sub, at);
        }
        Ok(n)
    }
}

/// A callback for revocations pushed by other gateways.
pub type OnRevoke = Arc<dyn Fn(&str, i64) + Send + Sync>;
