//! In-memory store for tests and throw-away runs. Loses everything on exit.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;

use super::{now_ms, Counter, Store, StoreError};

#[derive(Default)]
pub struct MemoryStore {
    map: Mutex<HashMap<String, (Vec<u8>, u64)>>,
}

fn deadline(ttl: Option<Duration>) -> u64 {
    ttl.map(|t| now_ms() + t.as_millis() as u64).unwrap_or(0)
}

fn live(exp: u64) -> bool {
    exp == 0 || exp > now_ms()
}

impl MemoryStore {
    fn with<T>(&self, f: impl FnOnce(&mut HashMap<String, (Vec<u8>, u64)>) -> T) -> T {
        let mut m = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if m.len() > 10_000 {
            m.retain(|_, (_, exp)| live(*exp));
        }
        f(&mut m)
    }
}

#[async_trait]
impl Store for MemoryStore {
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.with(|m| m.get(key).filter(|(_, e)| live(*e)).map(|(v, _)| v.clone())))
    }
    async fn put(&self, key: &str, value: &[u8], ttl: Option<Duration>) -> Result<(), StoreError> {
        self.with(|m| m.insert(key.to_string(), (value.to_vec(), deadline(ttl))));
        Ok(())
    }
    async fn put_if_absent(
        &self,
        key: &str,
        value: &[u8],
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        Ok(self.with(|m| {
            if m.get(key).is_some_and(|(_, e)| live(*e)) {
                false
            } else {
                m.insert(key.to_string(), (value.to_vec(), deadline(Some(ttl))));
                true
            }
        }))
    }
    async fn take(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.with(|m| m.remove(key).filter(|(_, e)| live(*e)).map(|(v, _)| v)))
    }
    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        self.with(|m| m.remove(key));
        Ok(())
    }
    async fn incr(&self, key: &str, ttl: Duration) -> Result<Counter, StoreError> {
        self.with(|m| {
            let (value, exp) = match m.get(key).filter(|(_, e)| live(*e)) {
                Some((v, e)) => (parse(key, v)? + 1, *e),
                None => (1, deadline(Some(ttl))),
            };
            m.insert(key.to_string(), (value.to_string().into_bytes(), exp));
            Ok(Counter {
                value,
                expires_at_ms: exp,
            })
        })
    }
    async fn decr(&self, key: &str) -> Result<(), StoreError> {
        self.with(|m| {
            if let Some((v, e)) = m.get(key).filter(|(_, e)| live(*e)).cloned() {
                let n = (parse(key, &v)? - 1).max(0);
                m.insert(key.to_string(), (n.to_string().into_bytes(), e));
            }
            Ok(())
        })
    }
    async fn expire(&self, key: &str, ttl: Duration) -> Result<(), StoreError> {
        self.with(|m| {
            if let Some(entry) = m.get_mut(key) {
                entry.1 = deadline(Some(ttl));
            }
        });
        Ok(())
    }
    async fn ping(&self) -> Result<(), StoreError> {
        Ok(())
    }
    async fn entries(&self) -> Result<Vec<(String, Vec<u8>, Option<u64>)>, StoreError> {
        Ok(self.with(|m| {
            m.iter()
                .filter(|(_, (_, e))| live(*e))
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
