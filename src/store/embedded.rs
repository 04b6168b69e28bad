//! The embedded store (the default): one redb file, so PIN records and
//! lockouts survive restarts without running anything else. redb is
//! synchronous, so every operation runs on the blocking pool. Values carry
//! their expiry (Unix ms, 0 = none) in front; expired entries read as absent
//! and are swept by `sweep`.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use redb::{Database, ReadableTable, ReadableTableMetadata, TableDefinition};

use super::memory::parse;
use super::{now_ms, Counter, Store, StoreError};

const KV: TableDefinition<&str, &[u8]> = TableDefinition::new("kv");

pub struct EmbeddedStore {
    db: Arc<Database>,
}

fn encode(value: &[u8], exp: u64) -> Vec<u8> {
    let mut v = Vec::with_capacity(8 + value.len());
    v.extend_from_slice(&exp.to_be_bytes());
    v.extend_from_slice(value);
    v
}

fn decode(raw: &[u8]) -> Option<(Vec<u8>, u64)> {
    let exp = u64::from_be_bytes(raw.get(..8)?.try_into().ok()?);
    (exp == 0 || exp > now_ms()).then(|| (raw[8..].to_vec(), exp))
}

fn unavailable(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

type Tx<'a> = redb::Table<'a, &'static str, &'static [u8]>;

/// The embedded store's page cache: tens of thousands of users' records.
const CACHE_BYTES: usize = 16 * 1024 * 1024;

impl EmbeddedStore {
    pub fn open(path: &Path) -> Result<EmbeddedStore, String> {
        if let Some(dir) = path.parent() {
            if !dir.as_os_str().is_empty() {
                std::fs::create_dir_all(dir)
                    .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
            }
        }
        // redb's page cache defaults to a 1 GiB ceiling; stepgate's records
        // are small and few, and the cache is resident memory.
        let db = redb::Builder::new()
            .set_cache_size(CACHE_BYTES)
            .create(path)
            .map_err(|e| format!("cannot open the embedded store {}: {e}", path.display()))?;
        let tx = db.begin_write().map_err(|e| e.to_string())?;
        tx.open_table(KV).map_err(|e| e.to_string())?;
        tx.commit().map_err(|e| e.to_string())?;
        Ok(EmbeddedStore { db: Arc::new(db) })
    }

    async fn read(&self, key: &str) -> Result<Option<(Vec<u8>, u64)>, StoreError> {
        let db = self.db.clone();
        let key = key.to_string();
        tokio::task::spawn_blocking(move || {
            let tx = db.begin_read().map_err(unavailable)?;
            let t = tx.open_table(KV).map_err(unavailable)?;
            Ok(t.get(key.as_str())
                .map_err(unavailable)?
                .and_then(|v| decode(v.value())))
        })
        .await
        .map_err(unavailable)?
    }

    /// Run `f` in one write transaction: atomic with respect to every other
    /// operation on this file.
    async fn write<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Tx<'_>) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || {
            let tx = db.begin_write().map_err(unavailable)?;
            let out = {
                let mut t = tx.open_table(KV).map_err(unavailable)?;
                f(&mut t)?
            };
            tx.commit().map_err(unavailable)?;
            Ok(out)
        })
        .await
        .map_err(unavailable)?
    }

    /// Delete expired entries; returns how many.
    pub fn sweep_now(&self) -> Result<usize, String> {
        let tx = self.db.begin_write().map_err(|e| e.to_string())?;
        let n = {
            let mut t = tx.open_table(KV).map_err(|e| e.to_string())?;
            let now = now_ms();
            let before = t.len().map_err(|e| e.to_string())?;
            t.retain(|_, v| {
                let exp = v
                    .get(..8)
                    .and_then(|b| b.try_into().ok())
                    .map(u64::from_be_bytes)
                    .unwrap_or(0);
                exp == 0 || exp > now
            })
            .map_err(|e| e.to_string())?;
            before - t.len().map_err(|e| e.to_string())?
        };
        tx.commit().map_err(|e| e.to_string())?;
        Ok(n as usize)
    }
}

fn current(t: &Tx<'_>, key: &str) -> Result<Option<(Vec<u8>, u64)>, StoreError> {
    Ok(t.get(key)
        .map_err(unavailable)?
        .and_then(|v| decode(v.value())))
}

fn deadline(ttl: Option<Duration>) -> u64 {
    ttl.map(|t| now_ms() + t.as_millis() as u64).unwrap_or(0)
}

#[async_trait]
impl Store for EmbeddedStore {
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.read(key).await?.map(|(v, _)| v))
    }
    async fn put(&self, key: &str, value: &[u8], ttl: Option<Duration>) -> Result<(), StoreError> {
        let (key, raw) = (key.to_string(), encode(value, deadline(ttl)));
        self.write(move |t| {
            t.insert(key.as_str(), raw.as_slice())
                .map_err(unavailable)?;
            Ok(())
        })
        .await
    }
    async fn put_if_absent(
        &self,
        key: &str,
        value: &[u8],
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        let (key, raw) = (key.to_string(), encode(value, deadline(Some(ttl))));
        self.write(move |t| {
            if current(t, &key)?.is_some() {
                return Ok(false);
            }
            t.insert(key.as_str(), raw.as_slice())
                .map_err(unavailable)?;
            Ok(true)
        })
        .await
    }
    async fn replace(
        &self,
        key: &str,
        expected: Option<&[u8]>,
        value: Option<&[u8]>,
    ) -> Result<bool, StoreError> {
        let key = key.to_string();
        let expected = expected.map(<[u8]>::to_vec);
        let raw = value.map(|v| encode(v, deadline(None)));
        self.write(move |t| {
            if current(t, &key)?.map(|(v, _)| v) != expected {
                return Ok(false);
            }
            match &raw {
                Some(raw) => {
                    t.insert(key.as_str(), raw.as_slice())
                        .map_err(unavailable)?;
                }
                None => {
                    t.remove(key.as_str()).map_err(unavailable)?;
                }
            }
            Ok(true)
        })
        .await
    }
    async fn take(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let key = key.to_string();
        self.write(move |t| {
            let v = current(t, &key)?;
            t.remove(key.as_str()).map_err(unavailable)?;
            Ok(v.map(|(v, _)| v))
        })
        .await
    }
    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        let key = key.to_string();
        self.write(move |t| {
            t.remove(key.as_str()).map_err(unavailable)?;
            Ok(())
        })
        .await
    }
    async fn incr(&self, key: &str, ttl: Duration) -> Result<Counter, StoreError> {
        let key = key.to_string();
        self.write(move |t| {
            let (value, exp) = match current(t, &key)? {
                Some((v, e)) => (parse(&key, &v)? + 1, e),
                None => (1, deadline(Some(ttl))),
            };
            t.insert(
                key.as_str(),
                encode(value.to_string().as_bytes(), exp).as_slice(),
            )
            .map_err(unavailable)?;
            Ok(Counter {
                value,
                expires_at_ms: exp,
            })
        })
        .await
    }
    async fn decr(&self, key: &str) -> Result<(), StoreError> {
        let key = key.to_string();
        self.write(move |t| {
            if let Some((v, e)) = current(t, &key)? {
                match parse(&key, &v)? - 1 {
                    n if n > 0 => {
                        t.insert(key.as_str(), encode(n.to_string().as_bytes(), e).as_slice())
                            .map_err(unavailable)?;
                    }
                    _ => {
                        t.remove(key.as_str()).map_err(unavailable)?;
                    }
                }
            }
            Ok(())
        })
        .await
    }
    async fn expire(&self, key: &str, ttl: Duration) -> Result<(), StoreError> {
        let key = key.to_string();
        self.write(move |t| {
            if let Some((v, _)) = current(t, &key)? {
                t.insert(key.as_str(), encode(&v, deadline(Some(ttl))).as_slice())
                    .map_err(unavailable)?;
            }
            Ok(())
        })
        .await
    }
    async fn ping(&self) -> Result<(), StoreError> {
        self.read("__ping").await.map(|_| ())
    }
    async fn entries(&self) -> Result<Vec<(String, Vec<u8>, Option<u64>)>, StoreError> {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || {
            let tx = db.begin_read().map_err(unavailable)?;
            let t = tx.open_table(KV).map_err(unavailable)?;
            let mut out = Vec::new();
            for item in t.iter().map_err(unavailable)? {
                let (k, v) = item.map_err(unavailable)?;
                if let Some((value, exp)) = decode(v.value()) {
                    out.push((k.value().to_string(), value, (exp != 0).then_some(exp)));
                }
            }
            Ok(out)
        })
        .await
        .map_err(unavailable)?
    }
    async fn sweep(&self) -> Result<usize, StoreError> {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || EmbeddedStore { db }.sweep_now().map_err(unavailable))
            .await
            .map_err(unavailable)?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn embedded_store_conforms_and_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.redb");
        {
            let s = EmbeddedStore::open(&path).unwrap();
            super::super::conformance(&s).await;
            super::super::revocation_conformance(
                &EmbeddedStore::open(&dir.path().join("r.redb")).unwrap(),
            )
            .await;
            s.put("keep", b"v", None).await.unwrap();
            s.put("gone", b"v", Some(Duration::from_millis(1)))
                .await
                .unwrap();
            tokio::time::sleep(Duration::from_millis(5)).await;
            // `short` and `e` from the conformance run, and `gone`.
            assert_eq!(s.sweep_now().unwrap(), 3);
        }
        let s = EmbeddedStore::open(&path).unwrap();
        assert_eq!(s.get("keep").await.unwrap().as_deref(), Some(&b"v"[..]));
    }
}
