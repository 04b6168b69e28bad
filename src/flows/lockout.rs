//! The lockout: guesses (PINs, codes, answers) are reserved before they are
//! evaluated, counted per user and per client IP in the store so every
//! gateway sees them, and locks follow each other with growing durations
//! until a run of `lockout.max_consecutive` failures suspends the factor.
//!
//! Must never: count a guess refused because of a lock, let concurrent
//! right guesses lock anyone, or evaluate more guesses than the limit.

use std::time::Duration;

use crate::config::Lockout;
use crate::flows::error::FlowError;
use crate::store::{keys, Store};
use crate::util::metrics;

/// How long the lockout remembers a run of failures (the streak of
/// consecutive failures and the number of locks that followed each other)
/// after the last one: long enough that spreading guesses out does not
/// reset it, short enough that it does not live forever.
pub const MEMORY: Duration = Duration::from_secs(30 * 86400);

/// What a lock key holds while its scope is suspended (no expiry).
pub(crate) const SUSPENDED: &[u8] = b"suspended";

/// Store keys of one lockout scope, all derived from its reservation counter
/// (`{u:…}:fail`, `ip:…:fail`, …), so a user's keys share one hash slot.
pub(crate) struct Keys {
    /// Reservations: guesses being evaluated plus failures in the window.
    slots: String,
    /// Failures in the window (expires with `slots`).
    failures: String,
    /// The lock: the Unix time it ends, with the lock's expiry, or
    /// [`SUSPENDED`] without one.
    lock: String,
    /// Consecutive failures without a success ([`MEMORY`]).
    streak: String,
    /// Consecutive locks without a success ([`MEMORY`]).
    locks: String,
}

impl Keys {
    fn of(slots: String) -> Keys {
        Keys {
            failures: format!("{slots}:n"),
            lock: format!("{slots}:lock"),
            streak: format!("{slots}:streak"),
            locks: format!("{slots}:locks"),
            slots,
        }
    }
}

/// Told (once, by the failure that starts it) that a run of failures ended
/// in a suspension, with the subject and the client IP: the gateway posts
/// the webhook and mails the user. Must not block.
pub type OnSuspend<'a> = &'a (dyn Fn(&str, &str) + Sync);

/// A reserved attempt: counted before the guess is evaluated, so concurrent
/// guesses can never exceed the limit. Settle it with `success` or `failure`.
pub struct Attempt<'a> {
    store: &'a dyn Store,
    lockout: &'a Lockout,
    user: Keys,
    ip: Keys,
    /// When the reservation counters expire (Unix ms): the window.
    user_window_ms: u64,
    ip_window_ms: u64,
    /// Whether a run of failures ends in a suspension (the PIN) or only in
    /// ever longer locks (recovery by answers or codes).
    suspends: bool,
    on_suspend: Option<OnSuspend<'a>>,
}

/// Reserve one attempt for `sub` from `ip`, or say until when they are
/// locked, or that the PIN is suspended. This is the PIN's lockout (email
/// codes share it): locks grow, and `lockout.max_consecutive` failures in a
/// row suspend it until [`clear_lockout`].
pub async fn reserve<'a>(
    store: &'a dyn Store,
    lockout: &'a Lockout,
    sub: &str,
    ip: &str,
) -> Result<Attempt<'a>, FlowError> {
    reserve_scope(
        store,
        lockout,
        keys::failures(sub),
        keys::ip_failures(ip),
        true,
    )
    .await
}

/// [`reserve`] on other counters (security answers and reset codes have
/// lockouts of their own). Their locks grow like the PIN's, but never end in
/// a suspension: anyone who knows an address could otherwise shut the
/// owner out of recovery for good.
pub async fn reserve_on<'a>(
    store: &'a dyn Store,
    lockout: &'a Lockout,
    user_key: String,
    ip_key: String,
) -> Result<Attempt<'a>, FlowError> {
    reserve_scope(store, lockout, user_key, ip_key, false).await
}

pub(crate) async fn reserve_scope<'a>(
    store: &'a dyn Store,
    lockout: &'a Lockout,
    user_key: String,
    ip_key: String,
    suspends: bool,
) -> Result<Attempt<'a>, FlowError> {
    let (user, ip) = (Keys::of(user_key), Keys::of(ip_key));
    // A guess refused because of a lock is never counted.
    refuse_if_locked(store, &user, &ip).await?;
    let u = store.incr(&user.slots, lockout.window).await?;
    let i = match store.incr(&ip.slots, lockout.window).await {
        Ok(i) => i,
        Err(e) => {
            let _ = store.decr(&user.slots).await;
            return Err(e.into());
        }
    };
    let over = u.value > lockout.max_failures as i64 || i.value > lockout.ip_max_failures as i64;
    // Checked again after counting: a lock that started in between (on any
    // gateway) refuses this guess too.
    let locked = refuse_if_locked(store, &user, &ip).await;
    if over || locked.is_err() {
        // Not evaluated, so not counted: undo the reservation.
        let _ = store.decr(&user.slots).await;
        let _ = store.decr(&ip.slots).await;
        locked?;
        // Guesses in flight fill what the window allows; whether they fail
        // decides whether a lock starts. Ask to retry in a moment.
        return Err(FlowError::Locked {
            until: store.now() + 1,
        });
    }
    Ok(Attempt {
        store,
        lockout,
        user,
        ip,
        user_window_ms: u.expires_at_ms,
        ip_window_ms: i.expires_at_ms,
        suspends,
        on_suspend: None,
    })
}

/// What a lock key holds, as the answer to a guess.
pub(crate) fn lock_state(raw: Option<Vec<u8>>, now: i64) -> Option<FlowError> {
    let raw = raw?;
    if raw == SUSPENDED {
        return Some(FlowError::Suspended);
    }
    let until: i64 = std::str::from_utf8(&raw).ok()?.parse().ok()?;
    (until > now).then_some(FlowError::Locked { until })
}

/// Err(Suspended) or Err(Locked) when the user's or the IP's lock holds.
pub(crate) async fn refuse_if_locked(
    store: &dyn Store,
    user: &Keys,
    ip: &Keys,
) -> Result<(), FlowError> {
    let u = lock_state(store.get(&user.lock).await?, store.now());
    let i = lock_state(store.get(&ip.lock).await?, store.now());
    match (u, i) {
        (None, None) => Ok(()),
        (Some(FlowError::Suspended), _) | (_, Some(FlowError::Suspended)) => {
            Err(FlowError::Suspended)
        }
        (Some(FlowError::Locked { until: a }), Some(FlowError::Locked { until: b })) => {
            Err(FlowError::Locked { until: a.max(b) })
        }
        (Some(e), _) | (_, Some(e)) => Err(e),
    }
}

/// `base` doubled for each earlier lock in the run (`n` is this lock's
/// number, from 1), at most `cap`.
pub(crate) fn lock_duration(base: Duration, n: i64, cap: Duration) -> Duration {
    let doublings = (n.clamp(1, 32) - 1) as u32;
    base.saturating_mul(1u32 << doublings.min(31)).min(cap)
}

/// Time left until `expires_at_ms`, at least 1 ms.
pub(crate) fn until_ms(expires_at_ms: u64, now_ms: i64) -> Duration {
    Duration::from_millis(expires_at_ms.saturating_sub(now_ms.max(0) as u64).max(1))
}

pub(crate) async fn refresh(store: &dyn Store, key: &str) -> Result<i64, FlowError> {
    let c = store.incr(key, MEMORY).await?;
    if c.value > 1 {
        store.expire(key, MEMORY).await?;
    }
    Ok(c.value)
}

/// Lift every lock of the scope whose reservation counter is `user_key`:
/// the lock or suspension, the window's counts and the memory of the run.
pub async fn clear_on(store: &dyn Store, user_key: String) -> Result<(), FlowError> {
    let k = Keys::of(user_key);
    for key in [&k.lock, &k.streak, &k.locks, &k.failures, &k.slots] {
        store.delete(key).await?;
    }
    Ok(())
}

/// The registry of locks (see [`locks`]).
pub const LOCKS: &str = "locks";

fn lock_member(scope: &str, kind: &str, who: &str) -> String {
    format!("{scope}:{kind}:{who}")
}

/// A lock as admins see it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct LockInfo {
    /// `user` or `ip`.
    pub scope: String,
    /// `pin` (PIN and email codes) or `recovery` (security answers, reset codes).
    pub kind: String,
    pub uid: Option<String>,
    pub ip: Option<String>,
    /// Unix time the lock ends; `None` while suspended.
    pub locked_until: Option<i64>,
    pub suspended: bool,
}

/// Every lock and suspension in force, on every gateway sharing the store:
/// the registry's entries, each checked against its lock (one that ended or
/// was lifted is dropped from the registry).
pub async fn locks(store: &dyn Store) -> Result<Vec<LockInfo>, FlowError> {
    let mut out = Vec::new();
    for (member, raw) in store.registry("", LOCKS).await? {
        let Ok(v) = serde_json::from_slice::<serde_json::Value>(&raw) else {
            continue;
        };
        let Some(lock_key) = v["lock_key"].as_str() else {
            continue;
        };
        let state = store.get(lock_key).await?;
        let (suspended, until) = match state.as_deref() {
            None => {
                let _ = store.unregister("", LOCKS, &member).await;
                continue;
            }
            Some(SUSPENDED) => (true, None),
            Some(b) => (
                false,
                std::str::from_utf8(b)
                    .ok()
                    .and_then(|t| t.parse::<i64>().ok()),
            ),
        };
        out.push(LockInfo {
            scope: v["scope"].as_str().unwrap_or("user").to_string(),
            kind: v["kind"].as_str().unwrap_or("pin").to_string(),
            uid: v["sub"].as_str().map(str::to_string),
            ip: v["ip"].as_str().map(str::to_string),
            locked_until: until,
            suspended,
        });
    }
    out.sort_by(|a, b| (&a.scope, &a.uid, &a.ip, &a.kind).cmp(&(&b.scope, &b.uid, &b.ip, &b.kind)));
    Ok(out)
}

/// Lift `sub`'s PIN lockout, suspension included, on every gateway: after a
/// PIN reset (the user proved a recovery channel) or an admin unlock.
pub async fn clear_lockout(store: &dyn Store, sub: &str) -> Result<(), FlowError> {
    clear_on(store, keys::failures(sub)).await
}

impl<'a> Attempt<'a> {
    /// Who to tell when this attempt's failure starts a suspension.
    pub fn on_suspend(mut self, f: Option<OnSuspend<'a>>) -> Self {
        self.on_suspend = f;
        self
    }

    /// The guess was right: release the reservation; the run of failures
    /// (and with it the growth of locks) starts again.
    pub async fn success(self) -> Result<(), FlowError> {
        self.store.decr(&self.user.slots).await?;
        self.store.decr(&self.ip.slots).await?;
        self.store.delete(&self.user.locks).await?;
        if self.suspends {
            self.store.delete(&self.user.streak).await?;
        }
        Ok(())
    }

    /// The guess was not evaluated (an internal error): release the
    /// reservation without a verdict.
    pub async fn abandon(self) {
        let _ = self.store.decr(&self.user.slots).await;
        let _ = self.store.decr(&self.ip.slots).await;
    }

    /// The guess was wrong: the reservation stays a failure. The
    /// `max_failures`-th failure in the window locks the user for
    /// `lockout.duration`, doubled for each lock since the last success (at
    /// most `max_duration`); the `ip_max_failures`-th locks the IP for
    /// `duration`; the `max_consecutive`-th in a row suspends the PIN.
    /// Returns the tries left for the user, or the lock, or the suspension.
    pub async fn failure(self, sub: &str, ip: &str) -> Result<FlowError, FlowError> {
        let l = self.lockout;
        let s = self.store;
        let user_failures = s
            .incr(
                &self.user.failures,
                until_ms(self.user_window_ms, s.now_ms()),
            )
            .await?
            .value;
        let ip_failures = s
            .incr(&self.ip.failures, until_ms(self.ip_window_ms, s.now_ms()))
            .await?
            .value;
        let ip_lock = if ip_failures >= l.ip_max_failures as i64 {
            self.lock(&self.ip, l.duration, sub, ip, "ip").await?.0
        } else {
            None
        };
        let streak = if self.suspends {
            refresh(s, &self.user.streak).await?
        } else {
            0
        };
        let user = if self.suspends && streak >= l.max_consecutive as i64 {
            s.put(&self.user.lock, SUSPENDED, None).await?;
            self.note(&self.user, "user", sub, ip, None).await;
            // Exactly one failure reaches the cap (the counter is atomic).
            if streak == l.max_consecutive as i64 {
                metrics::LOCKOUTS.with_label_values(&["suspended"]).inc();
                crate::util::audit::event(
                    "pin_suspended",
                    sub,
                    ip,
                    &format!("{streak} failures in a row"),
                );
                if let Some(f) = self.on_suspend {
                    f(sub, ip);
                }
            }
            Some(FlowError::Suspended)
        } else if user_failures >= l.max_failures as i64 {
            let n = match s.get(&self.user.locks).await? {
                Some(raw) => crate::store::memory::parse(&self.user.locks, &raw)? + 1,
                None => 1,
            };
            let d = lock_duration(l.duration, n, l.max_duration);
            let (state, started) = self.lock(&self.user, d, sub, ip, "user").await?;
            if started {
                refresh(s, &self.user.locks).await?;
            }
            state
        } else {
            None
        };
        Ok(match (user, ip_lock) {
            (Some(FlowError::Suspended), _) => FlowError::Suspended,
            (Some(FlowError::Locked { until: a }), Some(FlowError::Locked { until: b })) => {
                FlowError::Locked { until: a.max(b) }
            }
            (Some(e), _) | (None, Some(e)) => e,
            (None, None) => FlowError::WrongPin {
                remaining: (l.max_failures as i64 - user_failures).max(0) as u32,
            },
        })
    }

    /// Enter a lock in the registry admins list (`stepgate admin locks`):
    /// who, which lockout, until when (`None`: suspended). Best effort: the
    /// lock holds whether or not the index could be written.
    async fn note(
        &self,
        k: &Keys,
        scope: &str,
        sub: &str,
        ip: &str,
        until: Option<(i64, Duration)>,
    ) {
        let kind = if self.suspends { "pin" } else { "recovery" };
        let who = if scope == "ip" { ip } else { sub };
        let value = serde_json::json!({
            "scope": scope,
            "kind": kind,
            "sub": (scope != "ip").then_some(sub),
            "ip": (scope == "ip").then_some(ip),
            "until": until.map(|(u, _)| u),
            "lock_key": k.lock,
        });
        let _ = self
            .store
            .register(
                "",
                LOCKS,
                &lock_member(scope, kind, who),
                value.to_string().as_bytes(),
                until.map(|(_, d)| d),
            )
            .await;
    }

    /// Start a lock of `d` on scope `k`, unless one holds already. Returns
    /// the lock that holds, and whether this call started it. The lock is
    /// written before the window's counters go, so a guess counted in
    /// between sees it.
    async fn lock(
        &self,
        k: &Keys,
        d: Duration,
        sub: &str,
        ip: &str,
        scope: &str,
    ) -> Result<(Option<FlowError>, bool), FlowError> {
        let s = self.store;
        // Rounded up: the lock never reads as over before its key expires.
        let until = (s.now_ms().max(0) as u64 + d.as_millis() as u64).div_ceil(1000) as i64;
        if !s
            .put_if_absent(&k.lock, until.to_string().as_bytes(), d)
            .await?
        {
            return Ok((lock_state(s.get(&k.lock).await?, s.now()), false));
        }
        s.delete(&k.slots).await?;
        s.delete(&k.failures).await?;
        self.note(k, scope, sub, ip, Some((until, d))).await;
        metrics::LOCKOUTS.with_label_values(&[scope]).inc();
        crate::util::audit::event("lockout", sub, ip, scope);
        tracing::info!(target: "stepgate", user = sub, ip, scope, seconds = d.as_secs(), "lockout started");
        Ok((Some(FlowError::Locked { until }), true))
    }
}
