//! The shared state behind flows: PIN records, failure counters, single-use
//! token ids. The `Store` trait is shaped after what Redis does atomically
//! (counters with expiry, set-if-absent with expiry, get-and-delete), so every
//! backend offers the same guarantees. Every call is bounded by
//! `store.timeout`; a store that does not answer fails closed.

pub mod embedded;
pub mod memory;
pub mod redis;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use crate::config::{StoreKind, StoreSettings};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// The operation (`get`, `put`, …) and the `store.timeout` it outlasted.
    #[error("the store did not answer a {0} within {1:?}")]
    Timeout(&'static str, Duration),
    #[error("the store is unavailable: {0}")]
    Unavailable(String),
    #[error("corrupt value in the store at {0}")]
    Corrupt(String),
}

/// One recorded invalidation: credentials of `key` (a user, or an ended PIN
/// session) issued at or before `at` no longer count; the record itself ends
/// at `expires_ms` (Unix ms), when set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Revocation {
    pub key: String,
    pub at: i64,
    pub expires_ms: Option<i64>,
}

/// A counter's value after an increment, and when it expires (Unix ms).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Counter {
    pub value: i64,
    pub expires_at_ms: u64,
}

#[async_trait]
pub trait Store: Send + Sync {
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError>;
    /// Set a value, with an expiry or for good.
    async fn put(&self, key: &str, value: &[u8], ttl: Option<Duration>) -> Result<(), StoreError>;
    /// Set only if absent; true when this call set it.
    async fn put_if_absent(
        &self,
        key: &str,
        value: &[u8],
        ttl: Duration,
    ) -> Result<bool, StoreError>;
    /// Compare-and-set for records kept for good (one record per user,
    /// [`crate::flows::user`]): only while `key` still holds `expected`
    /// (`None`: nothing), set it to `value` (`None`: delete it), in one
    /// step on every backend; true when this call changed it.
    async fn replace(
        &self,
        key: &str,
        expected: Option<&[u8]>,
        value: Option<&[u8]>,
    ) -> Result<bool, StoreError>;
    /// Get and delete in one step: only one caller ever gets the value
    /// (OTPs and reset tokens).
    async fn take(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError>;
    async fn delete(&self, key: &str) -> Result<(), StoreError>;
    /// Add one; a new counter expires after `ttl`, an existing one keeps its expiry.
    async fn incr(&self, key: &str, ttl: Duration) -> Result<Counter, StoreError>;
    /// Subtract one, keeping the expiry; a counter that reaches zero is
    /// deleted (nothing is left behind after a success).
    async fn decr(&self, key: &str) -> Result<(), StoreError>;
    /// Set a new expiry on an existing key.
    async fn expire(&self, key: &str, ttl: Duration) -> Result<(), StoreError>;
    async fn ping(&self) -> Result<(), StoreError>;
    /// One field of a bucket: many small entries kept together, for indexes
    /// with millions of entries (Redis keeps a bucket as one small hash, a
    /// listpack, at a few dozen bytes per entry instead of ~100 per key).
    /// Backends without buckets keep each field under its own key,
    /// [`keys::field`].
    async fn field_get(&self, bucket: &str, field: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.get(&keys::field(bucket, field)).await
    }
    /// Set one field of a bucket, for good.
    async fn field_put(&self, bucket: &str, field: &str, value: &[u8]) -> Result<(), StoreError> {
        self.put(&keys::field(bucket, field), value, None).await
    }
    /// Delete one field only while it still holds `expected`, in one step;
    /// true when this call deleted it.
    async fn field_delete_if(
        &self,
        bucket: &str,
        field: &str,
        expected: &[u8],
    ) -> Result<bool, StoreError> {
        self.replace(&keys::field(bucket, field), Some(expected), None)
            .await
    }
    /// The time this store's expiries run on (Unix ms): the system's, or a
    /// test's fake clock ([`memory::MemoryStore::with_clock`]). Flows read
    /// the time here, so their deadlines and the store's agree.
    fn now_ms(&self) -> i64 {
        crate::util::clock::now_ms()
    }
    fn now(&self) -> i64 {
        self.now_ms().div_euclid(1000)
    }
    /// Every live entry as (key, value, expiry in Unix ms), for migrations.
    /// Only the file-backed and memory stores can list themselves.
    async fn entries(&self) -> Result<Vec<(String, Vec<u8>, Option<u64>)>, StoreError> {
        Err(StoreError::Unavailable(
            "this store cannot list its entries".into(),
        ))
    }
    /// Record that `sub`'s credentials up to `at` (Unix ms) are invalid, for
    /// every gateway; with a `ttl` the record ends after it (an ended PIN
    /// session), else it is kept for good (a user). `prefix` is the
    /// deployment's key prefix (the wrapper that owns it passes it; callers
    /// of the wrapper pass "").
    async fn revoke(
        &self,
        prefix: &str,
        sub: &str,
        at: i64,
        ttl: Option<Duration>,
    ) -> Result<(), StoreError> {
        let v = serde_json::json!({"sub": sub, "at": at}).to_string();
        self.put(
            &format!("{prefix}{}", keys::revoked(sub)),
            v.as_bytes(),
            ttl,
        )
        .await
    }
    /// Every live recorded invalidation. `at` is as stored: milliseconds, or
    /// seconds when an older version wrote it ([`crate::auth::revocations::stored_at_ms`]).
    async fn revocations(&self, prefix: &str) -> Result<Vec<Revocation>, StoreError> {
        Ok(self
            .entries()
            .await?
            .into_iter()
            .filter(|(k, _, _)| k.starts_with(prefix) && k.ends_with(":revoked"))
            .filter_map(|(_, v, exp)| {
                let j: serde_json::Value = serde_json::from_slice(&v).ok()?;
                Some(Revocation {
                    key: j["sub"].as_str()?.to_string(),
                    at: j["at"].as_i64()?,
                    expires_ms: exp.map(|e| e as i64),
                })
            })
            .collect())
    }
    /// A small index every gateway shares, for what admins list (locks):
    /// `member` → `value` in the registry `name`, ending after `ttl` (or
    /// kept). Not the truth of anything: listings check what they show.
    async fn register(
        &self,
        prefix: &str,
        name: &str,
        member: &str,
        value: &[u8],
        ttl: Option<Duration>,
    ) -> Result<(), StoreError> {
        self.put(&format!("{prefix}registry:{name}:{member}"), value, ttl)
            .await
    }
    async fn unregister(&self, prefix: &str, name: &str, member: &str) -> Result<(), StoreError> {
        self.delete(&format!("{prefix}registry:{name}:{member}"))
            .await
    }
    /// The live members of registry `name`, with their values.
    async fn registry(
        &self,
        prefix: &str,
        name: &str,
    ) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let p = format!("{prefix}registry:{name}:");
        Ok(self
            .entries()
            .await?
            .into_iter()
            .filter_map(|(k, v, _)| k.strip_prefix(&p).map(|m| (m.to_string(), v)))
            .collect())
    }
    /// Call `f` for invalidations other gateways record (stores shared by
    /// several gateways push them; a single-process store has nothing to push).
    fn watch_revocations(&self, _prefix: &str, _f: crate::store::OnRevoke) {}
    /// Drop expired entries, for backends that do not expire by themselves.
    async fn sweep(&self) -> Result<usize, StoreError> {
        Ok(0)
    }
}

pub fn now_ms() -> u64 {
    crate::util::clock::now_ms() as u64
}

/// A callback for revocations pushed by other gateways: (key, at, expiry
/// in Unix ms when the entry ends).
pub type OnRevoke = Arc<dyn Fn(&str, i64, Option<i64>) + Send + Sync>;

/// Keys, in one place. Everything about one user shares the `{u:...}` hash
/// tag so multi-key operations stay on one Redis Cluster slot.
pub mod keys {
    use crate::util::digest::digest_b64;

    /// Subjects are hashed so that any `sub` (with braces, colons, ...) makes
    /// a well-formed key.
    fn user(sub: &str) -> String {
        format!("{{u:{}}}", user_locator(sub))
    }
    /// What names a user in keys (22 characters of base64url), and in the
    /// tokens that lead to a user's record (PIN sessions).
    pub fn user_locator(sub: &str) -> String {
        digest_b64(sub.as_bytes())[..22].to_string()
    }
    /// Everything kept for good about one user ([`crate::flows::user`]).
    pub fn user_record(sub: &str) -> String {
        format!("{}:user", user(sub))
    }
    /// The same key, from a locator ([`user_locator`]).
    pub fn user_record_at(locator: &str) -> String {
        format!("{{u:{locator}}}:user")
    }
    /// A user's last successful step-up (time and factor), for admins.
    pub fn last_step_up(sub: &str) -> String {
        format!("{}:lastsu", user(sub))
    }
    /// An OIDC sign-in started and not finished, by its `state`.
    pub fn oidc_pending(state: &str) -> String {
        format!("oidc:{}", digest_b64(state.as_bytes()))
    }
    pub fn pin(sub: &str) -> String {
        format!("{}:pin", user(sub))
    }
    pub fn failures(sub: &str) -> String {
        format!("{}:fail", user(sub))
    }
    pub fn ip_failures(ip: &str) -> String {
        format!("ip:{ip}:fail")
    }
    pub fn otp(sub: &str) -> String {
        format!("{}:otp", user(sub))
    }
    pub fn otp_cooldown(sub: &str) -> String {
        format!("{}:otp:cool", user(sub))
    }
    pub fn otp_hourly(sub: &str) -> String {
        format!("{}:otp:hour", user(sub))
    }
    pub fn otp_tries(sub: &str) -> String {
        format!("{}:otp:tries", user(sub))
    }
    pub fn otp_verified(sub: &str) -> String {
        format!("{}:otp:verified", user(sub))
    }
    pub fn revoked(sub: &str) -> String {
        format!("{}:revoked", user(sub))
    }
    /// A kept request (sealed), by its random id.
    pub fn kept(id: &str) -> String {
        format!("kept:{id}")
    }
    /// How many requests a user has kept in the last [`crate::flows::kept::TTL`].
    pub fn kept_count(sub: &str) -> String {
        format!("{}:kept", user(sub))
    }
    pub fn used_token(jti: &str) -> String {
        format!("used:{jti}")
    }
    pub fn profile(sub: &str) -> String {
        format!("{}:profile", user(sub))
    }
    /// Recovery lookups: `kind` is email, username or phone; `value`
    /// normalised. An entry is a field of a bucket, (bucket, field): the
    /// digest's first 3 characters pick one of 262,144 buckets per kind, the
    /// next 13 name the entry in it (96 bits in all), so at ten million users
    /// a bucket holds ~38 entries and each costs ~36 bytes of Redis.
    pub fn index(kind: &str, value: &str) -> (String, String) {
        in_bucket(kind, &digest_b64(value.as_bytes()))
    }
    /// (bucket, field) of the entry whose digest starts with `d` (≥ 16 characters).
    fn in_bucket(kind: &str, d: &str) -> (String, String) {
        (format!("idx:{kind}:{}", &d[..3]), d[3..16].to_string())
    }
    /// The key an earlier version kept one index entry under, by itself.
    pub fn index_unbucketed(kind: &str, value: &str) -> String {
        format!("idx:{kind}:{}", &digest_b64(value.as_bytes())[..22])
    }
    /// Where a backend without buckets keeps one field of one.
    pub fn field(bucket: &str, field: &str) -> String {
        format!("{bucket}#{field}")
    }
    /// An index entry's (bucket, field) from the key a store lists it under,
    /// in either form ([`field`] or [`index_unbucketed`]); None for other keys.
    pub fn index_entry(key: &str) -> Option<(String, String)> {
        let rest = key.strip_prefix("idx:")?;
        let (kind, id) = rest.split_once(':')?;
        if kind.is_empty() || kind.contains('#') {
            return None;
        }
        match id.split_once('#') {
            Some((b, f)) if b.len() == 3 && f.len() == 13 => {
                Some((format!("idx:{kind}:{b}"), f.to_string()))
            }
            None if id.len() == 22 && id.is_ascii() => Some(in_bucket(kind, id)),
            _ => None,
        }
    }
    pub fn pin_skip(sub: &str) -> String {
        format!("{}:pin:skip", user(sub))
    }
    pub fn pin_sessions(sub: &str) -> String {
        format!("{}:ps", user(sub))
    }
    pub fn pin_session(id: &str) -> String {
        format!("ps:{id}")
    }
    pub fn reset_token(digest: &str) -> String {
        format!("reset:{digest}")
    }
    pub fn reset_used(digest: &str) -> String {
        format!("reset:{digest}:used")
    }
    pub fn reset_otp(sub: &str) -> String {
        format!("{}:pinreset", user(sub))
    }
    pub fn reset_otp_tries(sub: &str) -> String {
        format!("{}:pinreset:tries", user(sub))
    }
    pub fn reset_otp_failures(sub: &str) -> String {
        format!("{}:pinreset:fail", user(sub))
    }
    pub fn ip_reset_failures(ip: &str) -> String {
        format!("ip:{ip}:pinreset:fail")
    }
    pub fn answers(sub: &str) -> String {
        format!("{}:sq", user(sub))
    }
    pub fn answer_failures(sub: &str) -> String {
        format!("{}:sq:fail", user(sub))
    }
    pub fn ip_answer_failures(ip: &str) -> String {
        format!("ip:{ip}:sq:fail")
    }
    pub fn pin_auth_token(digest: &str) -> String {
        format!("pat:{digest}")
    }
    pub fn forgot_cooldown(ident: &str) -> String {
        format!("forgot:{}:cool", &digest_b64(ident.as_bytes())[..22])
    }
    pub fn forgot_hourly(ident: &str) -> String {
        format!("forgot:{}:hour", &digest_b64(ident.as_bytes())[..22])
    }
    /// Forgot-PIN requests from one client address in the hour.
    pub fn forgot_ip(ip: &str) -> String {
        format!("ip:{ip}:forgot")
    }
    pub fn oidc_start_ip(ip: &str) -> String {
        format!("ip:{ip}:oidc")
    }
}

/// Wraps a backend with the key prefix and the per-operation timeout.
pub struct Bounded {
    inner: Box<dyn Store>,
    prefix: String,
    timeout: Duration,
}

/// Run one store operation within `store.timeout`, its time observed in
/// `stepgate_store_seconds{op}` (a timed-out one at the timeout), so an
/// operator sees the store slowing down before its operations fail; a
/// failure names the operation.
macro_rules! bounded {
    ($self:ident, $op:literal, $call:expr) => {{
        let started = std::time::Instant::now();
        let r = match tokio::time::timeout($self.timeout, $call).await {
            // The backend's own error names what failed, this which operation.
            Ok(Err(StoreError::Unavailable(why))) => {
                Err(StoreError::Unavailable(format!("{why} (during a {})", $op)))
            }
            Ok(r) => r,
            Err(_) => {
                crate::util::metrics::STORE_ERRORS
                    .with_label_values(&["timeout"])
                    .inc();
                Err(StoreError::Timeout($op, $self.timeout))
            }
        };
        crate::util::metrics::STORE_SECONDS
            .with_label_values(&[$op])
            .observe(started.elapsed().as_secs_f64());
        r
    }};
}

impl Bounded {
    fn k(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }
}

#[async_trait]
impl Store for Bounded {
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        bounded!(self, "get", self.inner.get(&self.k(key)))
    }
    async fn put(&self, key: &str, value: &[u8], ttl: Option<Duration>) -> Result<(), StoreError> {
        bounded!(self, "put", self.inner.put(&self.k(key), value, ttl))
    }
    async fn put_if_absent(
        &self,
        key: &str,
        value: &[u8],
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        bounded!(
            self,
            "put_if_absent",
            self.inner.put_if_absent(&self.k(key), value, ttl)
        )
    }
    async fn replace(
        &self,
        key: &str,
        expected: Option<&[u8]>,
        value: Option<&[u8]>,
    ) -> Result<bool, StoreError> {
        bounded!(
            self,
            "replace",
            self.inner.replace(&self.k(key), expected, value)
        )
    }
    async fn take(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        bounded!(self, "take", self.inner.take(&self.k(key)))
    }
    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        bounded!(self, "delete", self.inner.delete(&self.k(key)))
    }
    async fn incr(&self, key: &str, ttl: Duration) -> Result<Counter, StoreError> {
        bounded!(self, "incr", self.inner.incr(&self.k(key), ttl))
    }
    async fn decr(&self, key: &str) -> Result<(), StoreError> {
        bounded!(self, "decr", self.inner.decr(&self.k(key)))
    }
    async fn expire(&self, key: &str, ttl: Duration) -> Result<(), StoreError> {
        bounded!(self, "expire", self.inner.expire(&self.k(key), ttl))
    }
    async fn ping(&self) -> Result<(), StoreError> {
        bounded!(self, "ping", self.inner.ping())
    }
    async fn field_get(&self, bucket: &str, field: &str) -> Result<Option<Vec<u8>>, StoreError> {
        bounded!(
            self,
            "field_get",
            self.inner.field_get(&self.k(bucket), field)
        )
    }
    async fn field_put(&self, bucket: &str, field: &str, value: &[u8]) -> Result<(), StoreError> {
        bounded!(
            self,
            "field_put",
            self.inner.field_put(&self.k(bucket), field, value)
        )
    }
    async fn field_delete_if(
        &self,
        bucket: &str,
        field: &str,
        expected: &[u8],
    ) -> Result<bool, StoreError> {
        bounded!(
            self,
            "field_delete_if",
            self.inner.field_delete_if(&self.k(bucket), field, expected)
        )
    }
    fn now_ms(&self) -> i64 {
        self.inner.now_ms()
    }
    async fn revoke(
        &self,
        _prefix: &str,
        sub: &str,
        at: i64,
        ttl: Option<Duration>,
    ) -> Result<(), StoreError> {
        bounded!(
            self,
            "revoke",
            self.inner.revoke(&self.prefix, sub, at, ttl)
        )
    }
    async fn revocations(&self, _prefix: &str) -> Result<Vec<Revocation>, StoreError> {
        self.inner.revocations(&self.prefix).await
    }
    fn watch_revocations(&self, _prefix: &str, f: crate::store::OnRevoke) {
        self.inner.watch_revocations(&self.prefix, f)
    }
    async fn register(
        &self,
        _prefix: &str,
        name: &str,
        member: &str,
        value: &[u8],
        ttl: Option<Duration>,
    ) -> Result<(), StoreError> {
        bounded!(
            self,
            "register",
            self.inner.register(&self.prefix, name, member, value, ttl)
        )
    }
    async fn unregister(&self, _prefix: &str, name: &str, member: &str) -> Result<(), StoreError> {
        bounded!(
            self,
            "unregister",
            self.inner.unregister(&self.prefix, name, member)
        )
    }
    async fn registry(
        &self,
        _prefix: &str,
        name: &str,
    ) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        bounded!(self, "registry", self.inner.registry(&self.prefix, name))
    }
    async fn sweep(&self) -> Result<usize, StoreError> {
        self.inner.sweep().await
    }
    async fn entries(&self) -> Result<Vec<(String, Vec<u8>, Option<u64>)>, StoreError> {
        Ok(self
            .inner
            .entries()
            .await?
            .into_iter()
            .filter_map(|(k, v, e)| k.strip_prefix(&self.prefix).map(|k| (k.to_string(), v, e)))
            .collect())
    }
}

/// Open the configured store.
pub fn open(s: &StoreSettings) -> Result<Arc<dyn Store>, String> {
    let inner: Box<dyn Store> = match &s.kind {
        StoreKind::Memory => Box::new(memory::MemoryStore::default()),
        StoreKind::Embedded { path } => Box::new(embedded::EmbeddedStore::open(path)?),
        StoreKind::Redis { url } => Box::new(redis::RedisStore::new(
            redis::Target::Single(url.clone()),
            s.password
                .as_ref()
                .map(|p| String::from_utf8_lossy(p.expose()).into_owned()),
            s.timeout,
        )?),
        StoreKind::RedisCluster { nodes } => Box::new(redis::RedisStore::new(
            redis::Target::Cluster(nodes.clone()),
            s.password
                .as_ref()
                .map(|p| String::from_utf8_lossy(p.expose()).into_owned()),
            s.timeout,
        )?),
    };
    Ok(Arc::new(Bounded {
        inner,
        prefix: s.key_prefix.clone(),
        timeout: s.timeout,
    }))
}

/// Copy what users would have to re-create (PIN records, verified email
/// authenticators, the recovery indexes that find their accounts) from one
/// store to another. Counters, codes and used token ids are short-lived and
/// stay behind.
pub async fn migrate(from: &dyn Store, to: &dyn Store) -> Result<Migrated, StoreError> {
    let mut n = Migrated::default();
    for (key, value, expires) in from.entries().await? {
        if let Some((bucket, field)) = keys::index_entry(&key) {
            to.field_put(&bucket, &field, &value).await?;
            n.index_entries += 1;
            continue;
        }
        let durable = key.ends_with(":pin")
            || crate::flows::user::is_record_key(&key)
            || key.contains(":otp:verified:");
        if !durable {
            continue;
        }
        let ttl = expires.map(|e| Duration::from_millis(e.saturating_sub(now_ms()).max(1)));
        to.put(&key, &value, ttl).await?;
        n.records += 1;
    }
    Ok(n)
}

/// What [`migrate`] copied.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Migrated {
    /// User records and verified email authenticators.
    pub records: usize,
    /// Recovery index entries (forgot-PIN by email, username, phone).
    pub index_entries: usize,
}

/// Backend-independent checks every implementation must pass.
#[cfg(test)]
pub(crate) async fn conformance(s: &dyn Store) {
    let ttl = Duration::from_secs(60);
    assert_eq!(s.get("a").await.unwrap(), None);
    s.put("a", b"1", None).await.unwrap();
    assert_eq!(s.get("a").await.unwrap().as_deref(), Some(&b"1"[..]));
    assert!(!s.put_if_absent("a", b"2", ttl).await.unwrap());
    assert!(s.put_if_absent("b", b"2", ttl).await.unwrap());
    assert!(
        !s.replace("b", Some(b"3"), Some(b"4")).await.unwrap(),
        "not what is stored"
    );
    assert!(
        !s.replace("none", Some(b""), Some(b"4")).await.unwrap(),
        "nothing stored"
    );
    assert_eq!(s.get("none").await.unwrap(), None);
    assert!(s.replace("b", Some(b"2"), Some(b"2")).await.unwrap());
    // replace: create only when absent, change or delete only what is there.
    assert!(s.replace("r", None, Some(b"1")).await.unwrap());
    assert!(!s.replace("r", None, Some(b"2")).await.unwrap(), "exists");
    assert!(!s.replace("r", Some(b"9"), Some(b"2")).await.unwrap());
    assert!(s.replace("r", Some(b"1"), Some(b"2")).await.unwrap());
    assert_eq!(s.get("r").await.unwrap().as_deref(), Some(&b"2"[..]));
    assert!(!s.replace("r", Some(b"1"), None).await.unwrap());
    assert!(s.replace("r", Some(b"2"), None).await.unwrap());
    assert_eq!(s.get("r").await.unwrap(), None);
    assert!(!s.replace("r", Some(b"2"), None).await.unwrap(), "gone");
    assert_eq!(s.take("b").await.unwrap().as_deref(), Some(&b"2"[..]));
    assert_eq!(s.take("b").await.unwrap(), None);
    let c1 = s.incr("c", ttl).await.unwrap();
    let c2 = s.incr("c", Duration::from_secs(999)).await.unwrap();
    assert_eq!((c1.value, c2.value), (1, 2));
    // Backends that report a remaining TTL may differ by a few ms.
    assert!(
        c1.expires_at_ms.abs_diff(c2.expires_at_ms) < 50,
        "an existing counter keeps its expiry: {c1:?} {c2:?}"
    );
    s.decr("c").await.unwrap();
    assert_eq!(s.incr("c", ttl).await.unwrap().value, 2);
    // A counter that comes back to zero is gone, not kept at 0.
    s.decr("c").await.unwrap();
    s.decr("c").await.unwrap();
    assert_eq!(s.get("c").await.unwrap(), None, "a zero counter is deleted");
    s.decr("c").await.unwrap();
    assert_eq!(s.get("c").await.unwrap(), None, "never below zero");
    s.put("short", b"x", Some(Duration::from_millis(50)))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(80)).await;
    assert_eq!(s.get("short").await.unwrap(), None, "expired values vanish");
    s.put("e", b"x", None).await.unwrap();
    s.expire("e", Duration::from_millis(30)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(60)).await;
    assert_eq!(s.get("e").await.unwrap(), None);
    s.delete("a").await.unwrap();
    assert_eq!(s.get("a").await.unwrap(), None);
    // Buckets: fields are independent, deleted only while they hold what
    // the caller expects.
    assert_eq!(s.field_get("bk", "f1").await.unwrap(), None);
    s.field_put("bk", "f1", b"ann").await.unwrap();
    s.field_put("bk", "f2", b"bob").await.unwrap();
    assert_eq!(
        s.field_get("bk", "f1").await.unwrap().as_deref(),
        Some(&b"ann"[..])
    );
    s.field_put("bk", "f1", b"cy").await.unwrap();
    assert!(!s.field_delete_if("bk", "f1", b"ann").await.unwrap());
    assert_eq!(
        s.field_get("bk", "f1").await.unwrap().as_deref(),
        Some(&b"cy"[..])
    );
    assert!(s.field_delete_if("bk", "f1", b"cy").await.unwrap());
    assert_eq!(s.field_get("bk", "f1").await.unwrap(), None);
    assert!(!s.field_delete_if("bk", "f1", b"cy").await.unwrap(), "gone");
    assert_eq!(
        s.field_get("bk", "f2").await.unwrap().as_deref(),
        Some(&b"bob"[..])
    );
    s.ping().await.unwrap();
}

/// Invalidations every backend must keep the same way: for good without a
/// TTL, and gone (from `revocations`) once a TTL ran out.
#[cfg(test)]
pub(crate) async fn revocation_conformance(s: &dyn Store) {
    s.revoke("", "alice", 1_700_000_000_123, None)
        .await
        .unwrap();
    s.revoke(
        "",
        "ps:s1",
        1_700_000_000_456,
        Some(Duration::from_millis(60)),
    )
    .await
    .unwrap();
    let mut all = s.revocations("").await.unwrap();
    all.sort_by(|a, b| a.key.cmp(&b.key));
    assert_eq!(all.len(), 2, "{all:?}");
    assert_eq!(
        (all[0].key.as_str(), all[0].at),
        ("alice", 1_700_000_000_123)
    );
    assert_eq!(all[0].expires_ms, None);
    assert_eq!(
        (all[1].key.as_str(), all[1].at),
        ("ps:s1", 1_700_000_000_456)
    );
    let left = all[1].expires_ms.expect("an expiry") - now_ms() as i64;
    assert!((0..=60).contains(&left), "{left} ms left");
    tokio::time::sleep(Duration::from_millis(90)).await;
    // A later revoke (which lets backends prune) and a read: the ended
    // session's entry is gone, the user's stays.
    s.revoke("", "bob", 1_700_000_000_789, None).await.unwrap();
    let mut keys: Vec<String> = s
        .revocations("")
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.key)
        .collect();
    keys.sort();
    assert_eq!(keys, ["alice", "bob"]);
}

#[cfg(test)]
mod tests {
    use super::keys;

    #[test]
    fn an_index_entry_is_read_back_from_either_form_of_its_key() {
        let (bucket, field) = keys::index("email", "ann@x.io");
        assert_eq!((bucket.len(), field.len()), ("idx:email:".len() + 3, 13));
        let want = Some((bucket.clone(), field.clone()));
        assert_eq!(keys::index_entry(&keys::field(&bucket, &field)), want);
        assert_eq!(
            keys::index_entry(&keys::index_unbucketed("email", "ann@x.io")),
            want
        );
        for other in ["{u:abc}:user", "idx:email:short", "idx:email", "idx::x#y"] {
            assert_eq!(keys::index_entry(other), None, "{other}");
        }
    }
}
