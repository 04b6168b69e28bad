//! In-memory store for tests and throw-away runs. Loses everything on exit.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;

use super::{Counter, Store, StoreError};
use crate::util::clock::Clock;

/// Expiries run on `clock` (the system's, or a test's fake one).
#[derive(Default)]
pub struct MemoryStore {
    map: Mutex<HashMap<String, (Vec<u8>, u64)>>,
    clock: Clock,
}

impl MemoryStore {
    /// A store whose expiries (and [`Store::now_ms`]) follow `clock`.
    pub fn with_clock(clock: Clock) -> MemoryStore {
        MemoryStore {
            map: Mutex::default(),
            clock,
        }
    }

    fn now(&self) -> u64 {
        self.clock.now_ms().max(0) as u64
    }

    fn with<T>(&self, f: impl FnOnce(&mut HashMap<String, (Vec<u8>, u64)>, Time) -> T) -> T {
        let now = self.now();
        let mut m = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if m.len() > 10_000 {
            m.retain(|_, (_, exp)| *exp == 0 || *exp > now);
        }
        f(&mut m, Time(now))
    }
}

/// The store's time for one operation.
#[derive(Clone, Copy)]
struct Time(u64);

impl Time {
    fn deadline(self, ttl: Option<Duration>) -> u64 {
        ttl.map(|t| self.0 + t.as_millis() as u64).unwrap_or(0)
    }
    fn live(self, exp: u64) -> bool {
        exp == 0 || exp > self.0
    }
}

#[async_trait]
impl Store for MemoryStore {
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.with(|m, t| {
            m.get(key)
                .filter(|(_, e)| t.live(*e))
                .map(|(v, _)| v.clone())
        }))
    }
    async fn put(&self, key: &str, value: &[u8], ttl: Option<Duration>) -> Result<(), StoreError> {
        self.with(|m, t| m.insert(key.to_string(), (value.to_vec(), t.deadline(ttl))));
        Ok(())
    }
    async fn put_if_absent(
        &self,
        key: &str,
        value: &[u8],
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        Ok(self.with(|m, t| {
            if m.get(key).is_some_and(|(_, e)| t.live(*e)) {
                false
            } else {
                m.insert(key.to_string(), (value.to_vec(), t.deadline(Some(ttl))));
                true
            }
        }))
    }
    async fn replace(
        &self,
        key: &str,
        expected: Option<&[u8]>,
        value: Option<&[u8]>,
    ) -> Result<bool, StoreError> {
        Ok(self.with(|m, t| {
            let now = m
                .get(key)
                .filter(|(_, e)| t.live(*e))
                .map(|(v, _)| v.as_slice());
            if now != expected {
                return false;
            }
            match value {
                Some(v) => m.insert(key.to_string(), (v.to_vec(), 0)),
                None => m.remove(key),
            };
            true
        }))
    }
    async fn take(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.with(|m, t| m.remove(key).filter(|(_, e)| t.live(*e)).map(|(v, _)| v)))
    }
    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        self.with(|m, _| m.remove(key));
        Ok(())
    }
    async fn incr(&self, key: &str, ttl: Duration) -> Result<Counter, StoreError> {
        self.with(|m, t| {
            let (value, exp) = match m.get(key).filter(|(_, e)| t.live(*e)) {
                Some((v, e)) => (parse(key, v)? + 1, *e),
                None => (1, t.deadline(Some(ttl))),
            };
            m.insert(key.to_string(), (value.to_string().into_bytes(), exp));
            Ok(Counter {
                value,
                expires_at_ms: exp,
            })
        })
    }
    async fn decr(&self, key: &str) -> Result<(), StoreError> {
        self.with(|m, t| {
            if let Some((v, e)) = m.get(key).filter(|(_, e)| t.live(*e)).cloned() {
                match parse(key, &v)? - 1 {
                    n if n > 0 => {
                        m.insert(key.to_string(), (n.to_string().into_bytes(), e));
                    }
                    _ => {
                        m.remove(key);
                    }
                }
            }
            Ok(())
        })
    }
    async fn expire(&self, key: &str, ttl: Duration) -> Result<(), StoreError> {
        self.with(|m, t| {
            if let Some(entry) = m.get_mut(key) {
                entry.1 = t.deadline(Some(ttl));
            }
        });
        Ok(())
    }
    async fn ping(&self) -> Result<(), StoreError> {
        Ok(())
    }
    fn now_ms(&self) -> i64 {
        self.clock.now_ms()
    }
    async fn entries(&self) -> Result<Vec<(String, Vec<u8>, Option<u64>)>, StoreError> {
        Ok(self.with(|m, t| {
            m.iter()
                .filter(|(_, (_, e))| t.live(*e))
                .map(|(k, (v, e))| (k.clone(), v.clone(), (*e != 0).then_some(*e)))
                .collect()
        }))
    }
}

pub(crate) fn parse(key: &str, v: &[u8]) -> Result<i64, StoreError> {
    std::str::from_utf8(v)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| StoreError::Corrupt(key.to_string()))
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn memory_store_conforms() {
        super::super::conformance(&super::MemoryStore::default()).await;
        super::super::revocation_conformance(&super::MemoryStore::default()).await;
    }
}
