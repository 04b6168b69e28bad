//! The Redis store: many gateways behave as one. Every operation is one
//! atomic server-side step (SET NX PX, GETDEL, a Lua script for counters with
//! expiry), so concurrent gateways can never count past a limit. Works on a
//! single Redis (a reconnecting multiplexed connection manager) and on Redis
//! Cluster (keys of one user share a `{u:…}` hash tag). TLS via `rediss://`.
//!
//! The connection is made lazily on a runtime of its own, so start-up does not
//! depend on Redis being up, and a Redis that comes back heals by itself.

use std::time::Duration;

use async_trait::async_trait;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::cluster_async::ClusterConnection;
use redis::{AsyncCommands, IntoConnectionInfo, Script};
use tokio::sync::OnceCell;

use super::{now_ms, Counter, Revocation, Store, StoreError};

#[derive(Clone)]
enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

#[derive(Clone)]
pub enum Target {
    Single(String),
    Cluster(Vec<String>),
}

pub struct RedisStore {
    target: Target,
    password: Option<String>,
    timeout: Duration,
    conn: OnceCell<Conn>,
    /// Where connection drivers run: outliving any one request's runtime.
    rt: tokio::runtime::Handle,
    incr: Script,
    decr: Script,
    replace: Script,
    field_delete_if: Script,
    revoke: Script,
    last_connect_error: std::sync::atomic::AtomicI64,
}

fn unavailable(e: impl std::fmt::Display) -> StoreError {
    crate::util::metrics::STORE_ERRORS
        .with_label_values(&["redis"])
        .inc();
    StoreError::Unavailable(e.to_string())
}

/// INCR, set the expiry on a new counter, and return value and remaining ms.
const INCR: &str = r#"
local v = redis.call('INCR', KEYS[1])
local t = redis.call('PTTL', KEYS[1])
if t < 0 then
  redis.call('PEXPIRE', KEYS[1], ARGV[1])
  t = tonumber(ARGV[1])
end
return {v, t}
"#;

/// DECR that keeps the expiry, and deletes a counter that reaches zero (a
/// zero counter says nothing a missing one does not, and would be kept).
const DECR: &str = r#"
local v = tonumber(redis.call('GET', KEYS[1]) or '0')
if v > 1 then redis.call('DECR', KEYS[1]) elseif v == 1 then redis.call('DEL', KEYS[1]) end
return 0
"#;

/// Compare-and-set of a record kept for good. ARGV[1]: '1' when a value is
/// expected (ARGV[2]), else the key must be absent; ARGV[3]: '1' to set
/// ARGV[4], else delete.
const REPLACE: &str = r#"
local cur = redis.call('GET', KEYS[1])
if ARGV[1] == '1' then
  if cur ~= ARGV[2] then return 0 end
elseif cur then
  return 0
end
if ARGV[3] == '1' then redis.call('SET', KEYS[1], ARGV[4]) else redis.call('DEL', KEYS[1]) end
return 1
"#;

/// HDEL of one field only while it holds ARGV[2].
const FIELD_DELETE_IF: &str = r#"
if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then
  return redis.call('HDEL', KEYS[1], ARGV[1])
end
return 0
"#;

impl RedisStore {
    pub fn new(
        target: Target,
        password: Option<String>,
        timeout: Duration,
    ) -> Result<RedisStore, String> {
        // Validate URLs now, so a typo fails at start-up, not on a request.
        match &target {
            Target::Single(u) => {
                u.as_str()
                    .into_connection_info()
                    .map_err(|e| format!("store.url: {e}"))?;
            }
            Target::Cluster(nodes) => {
                for n in nodes {
                    n.as_str()
                        .into_connection_info()
                        .map_err(|e| format!("store.nodes: {n}: {e}"))?;
                }
            }
        }
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("stepgate-redis")
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        let handle = rt.handle().clone();
        // The runtime lives as long as the process.
        std::thread::Builder::new()
            .name("stepgate-redis-rt".into())
            .spawn(move || rt.block_on(std::future::pending::<()>()))
            .map_err(|e| e.to_string())?;
        Ok(RedisStore::on(target, password, timeout, handle))
    }

    fn on(
        target: Target,
        password: Option<String>,
        timeout: Duration,
        rt: tokio::runtime::Handle,
    ) -> RedisStore {
        RedisStore {
            target,
            password,
            timeout,
            conn: OnceCell::new(),
            rt,
            incr: Script::new(INCR),
            decr: Script::new(DECR),
            replace: Script::new(REPLACE),
            field_delete_if: Script::new(FIELD_DELETE_IF),
            revoke: Script::new(REVOKE),
            last_connect_error: Default::default(),
        }
    }

    async fn connect(&self) -> Result<Conn, StoreError> {
        let timeout = self.timeout;
        let password = self.password.clone();
        let fut = match &self.target {
            Target::Single(url) => {
                let mut info = url.as_str().into_connection_info().map_err(unavailable)?;
                if let Some(p) = password {
                    info.redis.password = Some(p);
                }
                let client = redis::Client::open(info).map_err(unavailable)?;
                let cfg = ConnectionManagerConfig::new()
                    .set_connection_timeout(timeout)
                    .set_response_timeout(timeout)
                    .set_number_of_retries(0)
                    .set_max_delay(1000);
                self.rt.spawn(async move {
                    ConnectionManager::new_with_config(client, cfg)
                        .await
                        .map(Conn::Single)
                })
            }
            Target::Cluster(nodes) => {
                let mut b = redis::cluster::ClusterClientBuilder::new(nodes.clone())
                    .connection_timeout(timeout)
                    .response_timeout(timeout)
                    .retries(1);
                if let Some(p) = password {
                    b = b.password(p);
                }
                let client = b.build().map_err(unavailable)?;
                self.rt
                    .spawn(async move { client.get_async_connection().await.map(Conn::Cluster) })
            }
        };
        let r = fut.await.map_err(unavailable)?.map_err(unavailable);
        if let Err(e) = &r {
            // Say why (refused password, TLS, DNS), at most every 10 s.
            let now = crate::util::clock::now();
            let last = self
                .last_connect_error
                .load(std::sync::atomic::Ordering::Relaxed);
            if now - last >= 10 {
                self.last_connect_error
                    .store(now, std::sync::atomic::Ordering::Relaxed);
                tracing::warn!(target: "stepgate", error = %e, "cannot connect to Redis");
            }
        }
        r
    }

    async fn conn(&self) -> Result<Conn, StoreError> {
        // A failed first connection is retried by the next operation.
        self.conn.get_or_try_init(|| self.connect()).await.cloned()
    }
}

/// Entries asked for per HSCAN / ZSCAN page.
const SCAN_PAGE: usize = 1000;

macro_rules! with_conn {
    ($self:ident, |$c:ident| $body:expr) => {{
        match $self.conn().await? {
            Conn::Single(mut $c) => $body.map_err(unavailable),
            Conn::Cluster(mut $c) => $body.map_err(unavailable),
        }
    }};
}

fn ms(d: Duration) -> u64 {
    (d.as_millis() as u64).max(1)
}

impl RedisStore {
    /// Every (field, value) of a hash (`HSCAN`) or (member, score) of a
    /// sorted set (`ZSCAN`), page by page, each page one command.
    async fn scan_pairs<V: redis::FromRedisValue>(
        &self,
        scan: &str,
        key: &str,
    ) -> Result<Vec<(String, V)>, StoreError> {
        let mut all = Vec::new();
        let mut cursor = 0u64;
        loop {
            let (next, page) = with_conn!(self, |c| redis::cmd(scan)
                .arg(key)
                .arg(cursor)
                .arg("COUNT")
                .arg(SCAN_PAGE)
                .query_async::<(u64, Vec<(String, V)>)>(&mut c)
                .await)?;
            all.extend(page);
            if next == 0 {
                return Ok(all);
            }
            cursor = next;
        }
    }
}

#[async_trait]
impl Store for RedisStore {
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        with_conn!(self, |c| c.get::<_, Option<Vec<u8>>>(key).await)
    }
    async fn put(&self, key: &str, value: &[u8], ttl: Option<Duration>) -> Result<(), StoreError> {
        match ttl {
            Some(t) => with_conn!(self, |c| c.pset_ex::<_, _, ()>(key, value, ms(t)).await),
            None => with_conn!(self, |c| c.set::<_, _, ()>(key, value).await),
        }
    }
    async fn put_if_absent(
        &self,
        key: &str,
        value: &[u8],
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        let mut cmd = redis::cmd("SET");
        cmd.arg(key).arg(value).arg("NX").arg("PX").arg(ms(ttl));
        let r: Option<String> = with_conn!(self, |c| cmd.query_async(&mut c).await)?;
        Ok(r.is_some())
    }
    async fn replace(
        &self,
        key: &str,
        expected: Option<&[u8]>,
        value: Option<&[u8]>,
    ) -> Result<bool, StoreError> {
        let mut inv = self.replace.key(key);
        let flag = |b: bool| if b { "1" } else { "0" };
        inv.arg(flag(expected.is_some()))
            .arg(expected.unwrap_or_default())
            .arg(flag(value.is_some()))
            .arg(value.unwrap_or_default());
        let n: i64 = with_conn!(self, |c| inv.invoke_async(&mut c).await)?;
        Ok(n == 1)
    }
    async fn take(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let mut cmd = redis::cmd("GETDEL");
        cmd.arg(key);
        with_conn!(self, |c| cmd.query_async::<Option<Vec<u8>>>(&mut c).await)
    }
    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        with_conn!(self, |c| c.del::<_, ()>(key).await)
    }
    async fn incr(&self, key: &str, ttl: Duration) -> Result<Counter, StoreError> {
        let mut inv = self.incr.key(key);
        inv.arg(ms(ttl));
        let (value, pttl): (i64, i64) = with_conn!(self, |c| inv.invoke_async(&mut c).await)?;
        Ok(Counter {
            value,
            expires_at_ms: now_ms() + pttl.max(0) as u64,
        })
    }
    async fn decr(&self, key: &str) -> Result<(), StoreError> {
        let inv = self.decr.key(key);
        with_conn!(self, |c| inv.invoke_async::<i64>(&mut c).await).map(|_| ())
    }
    async fn expire(&self, key: &str, ttl: Duration) -> Result<(), StoreError> {
        with_conn!(self, |c| c.pexpire::<_, ()>(key, ms(ttl) as i64).await)
    }
    async fn ping(&self) -> Result<(), StoreError> {
        let cmd = redis::cmd("PING");
        with_conn!(self, |c| cmd.query_async::<String>(&mut c).await).map(|_| ())
    }
    /// A bucket is one hash: small ones Redis keeps as listpacks.
    async fn field_get(&self, bucket: &str, field: &str) -> Result<Option<Vec<u8>>, StoreError> {
        with_conn!(self, |c| c
            .hget::<_, _, Option<Vec<u8>>>(bucket, field)
            .await)
    }
    async fn field_put(&self, bucket: &str, field: &str, value: &[u8]) -> Result<(), StoreError> {
        with_conn!(self, |c| c.hset::<_, _, _, ()>(bucket, field, value).await)
    }
    async fn field_delete_if(
        &self,
        bucket: &str,
        field: &str,
        expected: &[u8],
    ) -> Result<bool, StoreError> {
        let mut inv = self.field_delete_if.key(bucket);
        inv.arg(field).arg(expected);
        let n: i64 = with_conn!(self, |c| inv.invoke_async(&mut c).await)?;
        Ok(n == 1)
    }
    /// One hash of invalidations, and a message to every gateway. Entries
    /// with a TTL are also in a sorted set by expiry (same cluster slot), and
    /// every revoke drops the entries that expired: the hash stays as small
    /// as the live invalidations.
    async fn revoke(
        &self,
        prefix: &str,
        sub: &str,
        at: i64,
        ttl: Option<Duration>,
    ) -> Result<(), StoreError> {
        let name = format!("{prefix}revocations");
        let now = now_ms();
        let exp = ttl.map(|t| now + ms(t));
        let mut inv = self.revoke.key(&name);
        inv.key(expiry_set(&name))
            .arg(sub)
            .arg(at)
            .arg(exp.map(|e| e.to_string()).unwrap_or_default())
            .arg(now);
        with_conn!(self, |c| inv.invoke_async::<i64>(&mut c).await)?;
        let message = match exp {
            Some(e) => format!("{at}/{e} {sub}"),
            None => format!("{at} {sub}"),
        };
        with_conn!(self, |c| c.publish::<_, _, ()>(&name, message).await)
    }
    /// A hash of members and a sorted set of their ends (the hash's name is
    /// its own hash tag, so both live on one Cluster slot).
    async fn register(
        &self,
        prefix: &str,
        name: &str,
        member: &str,
        value: &[u8],
        ttl: Option<Duration>,
    ) -> Result<(), StoreError> {
        let key = format!("{prefix}registry:{name}");
        with_conn!(self, |c| c.hset::<_, _, _, ()>(&key, member, value).await)?;
        match ttl {
            Some(t) => {
                let end = (now_ms() + ms(t)) as f64;
                with_conn!(self, |c| c
                    .zadd::<_, _, _, ()>(expiry_set(&key), member, end)
                    .await)
            }
            None => with_conn!(self, |c| c.zrem::<_, _, ()>(expiry_set(&key), member).await),
        }
    }
    async fn unregister(&self, prefix: &str, name: &str, member: &str) -> Result<(), StoreError> {
        let key = format!("{prefix}registry:{name}");
        with_conn!(self, |c| c.hdel::<_, _, ()>(&key, member).await)?;
        with_conn!(self, |c| c.zrem::<_, _, ()>(expiry_set(&key), member).await)
    }
    async fn registry(
        &self,
        prefix: &str,
        name: &str,
    ) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let key = format!("{prefix}registry:{name}");
        let now = now_ms() as f64;
        let ended = with_conn!(self, |c| c
            .zrangebyscore::<_, _, _, Vec<String>>(expiry_set(&key), "-inf", now)
            .await)?;
        for m in &ended {
            let _ = self.unregister(prefix, name, m).await;
        }
        let all = with_conn!(self, |c| c.hgetall::<_, Vec<(String, Vec<u8>)>>(&key).await)?;
        Ok(all
            .into_iter()
            .filter(|(m, _)| !ended.contains(m))
            .collect())
    }
    async fn revocations(&self, prefix: &str) -> Result<Vec<Revocation>, StoreError> {
        let name = format!("{prefix}revocations");
        // Read in pages (HSCAN, ZSCAN), each its own command within
        // `store.timeout`: the per-user entries are kept for good, and one
        // HGETALL of a large map would outlast the timeout on every try.
        let all: Vec<(String, i64)> = self.scan_pairs("HSCAN", &name).await?;
        let expiring: std::collections::HashMap<String, i64> = self
            .scan_pairs::<f64>("ZSCAN", &expiry_set(&name))
            .await?
            .into_iter()
            .map(|(k, e)| (k, e as i64))
            .collect();
        let now = now_ms() as i64;
        Ok(all
            .into_iter()
            .map(|(key, at)| Revocation {
                expires_ms: expiring.get(&key).copied(),
                key,
                at,
            })
            .filter(|r| r.expires_ms.is_none_or(|e| e > now))
            .collect())
    }
    /// Subscribe on a connection of its own; after every (re)connection the
    /// whole hash is read again, so nothing published while away is missed.
    fn watch_revocations(&self, prefix: &str, f: crate::store::OnRevoke) {
        let name = format!("{prefix}revocations");
        let url = match &self.target {
            Target::Single(u) => u.clone(),
            Target::Cluster(nodes) => nodes[0].clone(),
        };
        let password = self.password.clone();
        // The task outlives `self`: it reads the hash on a store of its own.
        let reader = RedisStore::on(
            self.target.clone(),
            password.clone(),
            self.timeout,
            self.rt.clone(),
        );
        self.rt.spawn(async move {
            use futures_util::StreamExt;
            loop {
                let attempt = async {
                    let mut info = url.as_str().into_connection_info().map_err(unavailable)?;
                    if let Some(p) = &password {
                        info.redis.password = Some(p.clone());
                    }
                    let mut pubsub = redis::Client::open(info).map_err(unavailable)?.get_async_pubsub().await.map_err(unavailable)?;
                    pubsub.subscribe(&name).await.map_err(unavailable)?;
                    for r in reader.revocations(prefix_of(&name)).await? {
                        f(&r.key, r.at, r.expires_ms);
                    }
                    let mut stream = pubsub.on_message();
                    while let Some(msg) = stream.next().await {
                        if let Ok(text) = msg.get_payload::<String>() {
                            if let Some((at, exp, sub)) = parse_message(&text) {
                                f(sub, at, exp);
                            }
                        }
                    }
                    Ok::<(), StoreError>(())
                };
                if let Err(e) = attempt.await {
                    tracing::warn!(target: "stepgate", error = %e, "revocation subscription lost; retrying");
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        });
    }
}

/// HSET the invalidation; keep the expiry set in step (an entry without a
/// TTL leaves it); drop up to 1000 entries that expired. KEYS: hash, set.
/// ARGV: key, at, expiry in ms or "", now in ms.
const REVOKE: &str = r#"
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
if ARGV[3] ~= '' then
  redis.call('ZADD', KEYS[2], ARGV[3], ARGV[1])
else
  redis.call('ZREM', KEYS[2], ARGV[1])
end
local gone = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', ARGV[4], 'LIMIT', 0, 1000)
for _, k in ipairs(gone) do
  redis.call('HDEL', KEYS[1], k)
  redis.call('ZREM', KEYS[2], k)
end
return #gone
"#;

/// The sorted set of expiring entries of hash `name`, on the same Redis
/// Cluster slot: it shares the hash's tag, or makes the whole hash name its
/// tag (a key without a tag is hashed whole). A `store.key_prefix` with an
/// unbalanced `}` cannot be a tag: use one without braces, or a real tag.
fn expiry_set(name: &str) -> String {
    let tagged = name
        .find('{')
        .and_then(|i| name[i + 1..].find('}'))
        .is_some_and(|len| len > 0);
    if tagged {
        format!("{name}:expiry")
    } else {
        format!("{{{name}}}:expiry")
    }
}

/// `"{at} {key}"`, or `"{at}/{expires_ms} {key}"` for an entry that ends.
fn parse_message(text: &str) -> Option<(i64, Option<i64>, &str)> {
    let (head, key) = text.split_once(' ')?;
    match head.split_once('/') {
        Some((at, exp)) => Some((at.parse().ok()?, Some(exp.parse().ok()?), key)),
        None => Some((head.parse().ok()?, None, key)),
    }
}

fn prefix_of(channel: &str) -> &str {
    channel.strip_suffix("revocations").unwrap_or("")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::{Child, Command, Stdio};

    struct Server(Child);
    impl Drop for Server {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    fn redis_server() -> (Server, u16) {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server is installed by scripts/test.sh");
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        (Server(child), port)
    }

    #[tokio::test]
    async fn redis_store_conforms() {
        let (_srv, port) = redis_server();
        let s = RedisStore::new(
            Target::Single(format!("redis://127.0.0.1:{port}/0")),
            None,
            Duration::from_secs(2),
        )
        .unwrap();
        super::super::conformance(&s).await;
        super::super::revocation_conformance(&s).await;
        // The revoke after the session's entry expired pruned the hash.
        let Conn::Single(mut c) = s.conn().await.unwrap() else {
            unreachable!("a single Redis")
        };
        let n: i64 = redis::cmd("HLEN")
            .arg("revocations")
            .query_async(&mut c)
            .await
            .unwrap();
        assert_eq!(n, 2, "alice and bob; the ended session's entry is gone");
    }

    #[test]
    fn the_expiry_set_shares_the_hash_slot() {
        assert_eq!(expiry_set("sg:revocations"), "{sg:revocations}:expiry");
        assert_eq!(expiry_set("{sg}:revocations"), "{sg}:revocations:expiry");
    }

    #[test]
    fn revocation_messages_carry_an_optional_expiry() {
        assert_eq!(
            parse_message("1700000000123 alice"),
            Some((1_700_000_000_123, None, "alice"))
        );
        assert_eq!(
            parse_message("1700000000123/1700000600000 ps:abc"),
            Some((1_700_000_000_123, Some(1_700_000_600_000), "ps:abc"))
        );
        // Older gateways publish seconds; subjects may contain spaces.
        assert_eq!(
            parse_message("1700000000 a b"),
            Some((1_700_000_000, None, "a b"))
        );
        assert_eq!(parse_message("x alice"), None);
    }

    #[tokio::test]
    async fn a_dead_redis_fails_within_the_timeout_and_heals() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let s = RedisStore::new(
            Target::Single(format!("redis://127.0.0.1:{port}/0")),
            None,
            Duration::from_millis(200),
        )
        .unwrap();
        assert!(s.ping().await.is_err(), "nothing listens yet");
        let child = Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
            ])
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let _srv = Server(child);
        let mut ok = false;
        for _ in 0..50 {
            if s.ping().await.is_ok() {
                ok = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(ok, "the store connects once Redis is up");
    }
}
