//! One record per user: the PIN, the recovery profile, the device PIN
//! sessions and the last step-up, in one stored value under one key
//! (`{u:…}:user`). A gateway at scale pays the store's per-key overhead
//! (~70–90 bytes in Redis) once per user instead of once per part.
//!
//! Every change is a compare-and-set of the whole record
//! ([`Store::replace`]), retried when another gateway changed it in between,
//! so no part's writer undoes another's. Users written by an earlier
//! version keep one key per part: while a user has no record, those keys
//! are read, and the first write (or read) moves them into the record and
//! deletes them.
//!
//! Must never: lose a part another writer set in between, or read a part
//! from an older key once the user has a record.

use crate::flows::error::FlowError;
use crate::store::{keys, Store, StoreError};

/// What a user record holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    /// The PIN ([`crate::flows::pin::PinRecord::encode`]).
    Pin,
    /// The recovery profile ([`crate::flows::profile`]).
    Profile,
    /// The device PIN sessions ([`crate::flows::lifecycle`]).
    Sessions,
    /// The last successful step-up, for admins.
    LastStepUp,
}

impl Part {
    const ALL: [Part; 4] = [Part::Pin, Part::Profile, Part::Sessions, Part::LastStepUp];

    fn tag(self) -> u8 {
        match self {
            Part::Pin => b'p',
            Part::Profile => b'f',
            Part::Sessions => b's',
            Part::LastStepUp => b'l',
        }
    }

    /// Where an earlier version kept this part.
    fn legacy_key(self, sub: &str) -> String {
        match self {
            Part::Pin => keys::pin(sub),
            Part::Profile => keys::profile(sub),
            Part::Sessions => keys::pin_sessions(sub),
            Part::LastStepUp => keys::last_step_up(sub),
        }
    }
}

/// The first byte of an encoded record: a version, and never the first
/// byte of a JSON value or of a compact PIN record.
const V1: u8 = 0xB1;

/// A user's parts. Parts this version does not know (written by a later
/// one) are kept as they are.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Record {
    parts: Vec<(u8, Vec<u8>)>,
}

impl Record {
    pub fn get(&self, p: Part) -> Option<&[u8]> {
        self.parts
            .iter()
            .find(|(t, _)| *t == p.tag())
            .map(|(_, v)| v.as_slice())
    }

    /// Set a part, or drop it with `None`.
    pub fn set(&mut self, p: Part, value: Option<Vec<u8>>) {
        let tag = p.tag();
        match (self.parts.iter().position(|(t, _)| *t == tag), value) {
            (Some(i), Some(v)) => self.parts[i].1 = v,
            (Some(i), None) => {
                self.parts.remove(i);
            }
            (None, Some(v)) => self.parts.push((tag, v)),
            (None, None) => {}
        }
    }

    pub fn is_empty(&self) -> bool {
        self.parts.is_empty()
    }

    /// Version byte, then per part: its tag, its length (LEB128), its bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut out =
            Vec::with_capacity(1 + self.parts.iter().map(|(_, v)| v.len() + 4).sum::<usize>());
        out.push(V1);
        for (tag, v) in &self.parts {
            out.push(*tag);
            let mut n = v.len();
            loop {
                let b = (n & 0x7f) as u8;
                n >>= 7;
                if n == 0 {
                    out.push(b);
                    break;
                }
                out.push(b | 0x80);
            }
            out.extend_from_slice(v);
        }
        out
    }

    /// None for bytes that are not a record.
    pub fn decode(raw: &[u8]) -> Option<Record> {
        let (&version, mut rest) = raw.split_first()?;
        if version != V1 {
            return None;
        }
        let mut parts = Vec::new();
        while let Some((&tag, r)) = rest.split_first() {
            let (mut n, mut shift, mut r) = (0usize, 0u32, r);
            loop {
                let (&b, more) = r.split_first()?;
                r = more;
                n |= usize::from(b & 0x7f).checked_shl(shift)?;
                if b & 0x80 == 0 {
                    break;
                }
                shift += 7;
                if shift > 28 {
                    return None;
                }
            }
            if r.len() < n || parts.iter().any(|(t, _)| *t == tag) {
                return None;
            }
            parts.push((tag, r[..n].to_vec()));
            rest = &r[n..];
        }
        Some(Record { parts })
    }
}

/// The key of `{prefix-less}` user records, for `store migrate`.
pub fn is_record_key(key: &str) -> bool {
    key.starts_with("{u:") && key.ends_with("}:user")
}

/// A record as read: the stored bytes it was read from (what a change must
/// still find there), and the older keys it was put together from.
struct Loaded {
    raw: Option<Vec<u8>>,
    record: Record,
    legacy: Vec<Part>,
}

async fn load(store: &dyn Store, sub: &str) -> Result<Loaded, FlowError> {
    if let Some(raw) = store.get(&keys::user_record(sub)).await? {
        let record = Record::decode(&raw)
            .ok_or_else(|| FlowError::from(StoreError::Corrupt(keys::user_record(sub))))?;
        return Ok(Loaded {
            raw: Some(raw),
            record,
            legacy: Vec::new(),
        });
    }
    let mut out = Loaded {
        raw: None,
        record: Record::default(),
        legacy: Vec::new(),
    };
    for p in Part::ALL {
        if let Some(v) = store.get(&p.legacy_key(sub)).await? {
            out.record.set(p, Some(v));
            out.legacy.push(p);
        }
    }
    Ok(out)
}

/// Store `new` if the record is still what `l` read; then drop the older
/// keys it was put together from.
async fn commit(store: &dyn Store, sub: &str, l: &Loaded, new: &Record) -> Result<bool, FlowError> {
    let value = (!new.is_empty()).then(|| new.encode());
    if !store
        .replace(&keys::user_record(sub), l.raw.as_deref(), value.as_deref())
        .await?
    {
        return Ok(false);
    }
    for p in &l.legacy {
        store.delete(&p.legacy_key(sub)).await?;
    }
    Ok(true)
}

/// `sub`'s whole record (empty for a user stepgate knows nothing of).
pub async fn read_all(store: &dyn Store, sub: &str) -> Result<Record, FlowError> {
    let l = load(store, sub).await?;
    if !l.legacy.is_empty() {
        // Moved now, best effort: what was read is right either way.
        let _ = commit(store, sub, &l, &l.record).await;
    }
    Ok(l.record)
}

/// The record a locator names ([`keys::user_locator`]), as stored: for
/// tokens that lead to their user (PIN sessions), which only this version
/// issues, so no older keys are looked at.
pub async fn read_at(store: &dyn Store, locator: &str) -> Result<Option<Record>, FlowError> {
    let key = keys::user_record_at(locator);
    match store.get(&key).await? {
        Some(raw) => {
            Ok(Some(Record::decode(&raw).ok_or_else(|| {
                FlowError::from(StoreError::Corrupt(key))
            })?))
        }
        None => Ok(None),
    }
}

/// One part of `sub`'s record.
pub async fn read(store: &dyn Store, sub: &str, part: Part) -> Result<Option<Vec<u8>>, FlowError> {
    Ok(read_all(store, sub).await?.get(part).map(<[u8]>::to_vec))
}

/// How often a change is tried again when other writers keep changing the
/// record in between.
const TRIES: usize = 16;

/// Change `sub`'s record with `f`, which sees the record as it is and may
/// be called again (with the newer record) when another writer changed it
/// in between. What `f` returns from the call that was stored is returned.
pub async fn update<T>(
    store: &dyn Store,
    sub: &str,
    mut f: impl FnMut(&mut Record) -> T,
) -> Result<T, FlowError> {
    for _ in 0..TRIES {
        let l = load(store, sub).await?;
        let mut r = l.record.clone();
        let out = f(&mut r);
        if r == l.record && l.legacy.is_empty() {
            return Ok(out);
        }
        if commit(store, sub, &l, &r).await? {
            return Ok(out);
        }
    }
    Err(FlowError::from(StoreError::Unavailable(format!(
        "the record of one user changed {TRIES} times while it was being written"
    ))))
}

/// Set (or with `None` drop) one part of `sub`'s record.
pub async fn write(
    store: &dyn Store,
    sub: &str,
    part: Part,
    value: Option<Vec<u8>>,
) -> Result<(), FlowError> {
    update(store, sub, |r| r.set(part, value.clone())).await
}

/// Replace one part with `new` only while it still is `was`: rewriting a
/// part read in an earlier version's encoding never undoes a change another
/// writer made in between. Best effort: the part as read is right either way.
pub async fn rewrite(store: &dyn Store, sub: &str, part: Part, was: &[u8], new: Vec<u8>) {
    let _ = update(store, sub, |r| {
        if r.get(part) == Some(was) {
            r.set(part, Some(new.clone()));
        }
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::memory::MemoryStore;

    #[test]
    fn records_read_back_and_junk_is_refused() {
        let mut r = Record::default();
        r.set(Part::Pin, Some(vec![1; 59]));
        r.set(Part::Profile, Some(b"{}".to_vec()));
        r.set(Part::Sessions, Some(vec![7; 300]));
        let raw = r.encode();
        assert_eq!(Record::decode(&raw), Some(r.clone()));
        assert_eq!(raw.len(), 1 + (1 + 1 + 59) + (1 + 1 + 2) + (1 + 2 + 300));
        for cut in 1..raw.len() {
            if let Some(d) = Record::decode(&raw[..cut]) {
                assert_ne!(d, r, "a cut record never reads as the whole");
            }
        }
        assert_eq!(Record::decode(b"{\"phc\":1}"), None);
        assert_eq!(Record::decode(&[V1, b'p', 5, 1]), None, "too short");
        assert_eq!(Record::decode(&[V1, b'p', 0, b'p', 0]), None, "twice");
        assert_eq!(Record::decode(&[V1]), Some(Record::default()));
        r.set(Part::Profile, None);
        assert_eq!(r.get(Part::Profile), None);
        assert_eq!(r.get(Part::Pin), Some(&[1u8; 59][..]));
    }

    #[tokio::test]
    async fn parts_kept_under_older_keys_move_into_the_record_once() {
        let store = MemoryStore::default();
        store.put(&keys::pin("ann"), b"PIN", None).await.unwrap();
        store
            .put(&keys::profile("ann"), b"PROF", None)
            .await
            .unwrap();
        assert_eq!(
            read(&store, "ann", Part::Pin).await.unwrap().as_deref(),
            Some(&b"PIN"[..])
        );
        // Moved: the older keys are gone, the record holds both.
        assert_eq!(store.get(&keys::pin("ann")).await.unwrap(), None);
        assert_eq!(store.get(&keys::profile("ann")).await.unwrap(), None);
        let all = read_all(&store, "ann").await.unwrap();
        assert_eq!(all.get(Part::Profile), Some(&b"PROF"[..]));
        // A key an earlier version writes after the move is not read.
        store.put(&keys::pin("ann"), b"OLD", None).await.unwrap();
        assert_eq!(
            read(&store, "ann", Part::Pin).await.unwrap().as_deref(),
            Some(&b"PIN"[..])
        );
        // A user stepgate knows nothing of has no record, and reading
        // writes none.
        assert!(read_all(&store, "bo").await.unwrap().is_empty());
        assert_eq!(store.get(&keys::user_record("bo")).await.unwrap(), None);
        // Dropping every part drops the record.
        write(&store, "ann", Part::Pin, None).await.unwrap();
        write(&store, "ann", Part::Profile, None).await.unwrap();
        assert_eq!(store.get(&keys::user_record("ann")).await.unwrap(), None);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_writers_of_different_parts_keep_each_others_changes() {
        let store = std::sync::Arc::new(MemoryStore::default());
        let mut tasks = Vec::new();
        for i in 0..40u8 {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                let part = [Part::Pin, Part::Profile, Part::Sessions, Part::LastStepUp]
                    [usize::from(i % 4)];
                update(&*store, "ann", |r| {
                    let mut v = r.get(part).map(<[u8]>::to_vec).unwrap_or_default();
                    v.push(i);
                    r.set(part, Some(v));
                })
                .await
                .unwrap();
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        let r = read_all(&*store, "ann").await.unwrap();
        for (k, part) in Part::ALL.into_iter().enumerate() {
            let mut got = r.get(part).unwrap().to_vec();
            got.sort_unstable();
            let want: Vec<u8> = (0..40u8).filter(|i| usize::from(i % 4) == k).collect();
            assert_eq!(got, want, "{part:?}: every writer's change is there");
        }
    }

    #[tokio::test]
    async fn a_record_that_is_not_one_fails_closed() {
        let store = MemoryStore::default();
        store
            .put(&keys::user_record("ann"), b"garbage", None)
            .await
            .unwrap();
        assert!(matches!(
            read(&store, "ann", Part::Pin).await,
            Err(FlowError::StoreUnavailable)
        ));
    }
}
