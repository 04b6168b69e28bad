//! The PIN factor: rules for new PINs, Argon2id hashing on a bounded blocking
//! pool, enrollment, and verification behind the lockout.
//!
//! Must never: hash on an async worker, store a PIN other than as a PHC
//! string, or evaluate more guesses than the lockout allows, even under
//! concurrent attempts from many gateways.

use std::sync::Arc;
use std::time::Instant;

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use serde::{Deserialize, Serialize};

use crate::config::{Lockout, PinSettings};
use crate::metrics;
use crate::store::{keys, Store, StoreError};

/// Called on the hashing thread after each Argon2 run, to give its memory
/// block (19 MiB) back to the OS; the binary sets it for its allocator
/// (an idle hashing thread's heap would otherwise keep the block).
pub static RELEASE_MEMORY: std::sync::OnceLock<fn()> = std::sync::OnceLock::new();

fn release_memory() {
    if let Some(f) = RELEASE_MEMORY.get() {
        f();
    }
}

/// Runs Argon2 on its own threads, one per permitted core, started on first
/// use at the lowest scheduling priority (nice 19): PIN checks never stall
/// proxying, a storm of them queues instead of exhausting memory (each hash
/// uses ~19 MiB), and when cores are short the proxy workers win.
pub struct Hasher {
    parallel: usize,
    argon: Argon2<'static>,
    queue: std::sync::OnceLock<std::sync::mpsc::Sender<Job>>,
}

type Job = Box<dyn FnOnce(&Argon2<'static>) + Send>;

impl Hasher {
    pub fn new(parallel: usize) -> Hasher {
        Hasher {
            parallel: parallel.max(1),
            argon: Argon2::default(),
            queue: std::sync::OnceLock::new(),
        }
    }

    fn start(&self) -> std::sync::mpsc::Sender<Job> {
        let (tx, rx) = std::sync::mpsc::channel::<Job>();
        let rx = Arc::new(std::sync::Mutex::new(rx));
        for i in 0..self.parallel {
            let rx = rx.clone();
            let argon = self.argon.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("stepgate-pin-{i}"))
                .spawn(move || {
                    if let Err(e) = thread_priority::set_current_thread_priority(
                        thread_priority::ThreadPriority::Min,
                    ) {
                        tracing::debug!(target: "stepgate", error = ?e, "PIN hashing keeps the normal priority");
                    }
                    loop {
                        let job = match rx.lock().unwrap_or_else(|p| p.into_inner()).recv() {
                            Ok(job) => job,
                            Err(_) => return,
                        };
                        job(&argon);
                        release_memory();
                    }
                });
            if let Err(e) = spawned {
                tracing::error!(target: "stepgate", error = %e, "cannot start a PIN hashing thread");
            }
        }
        tx
    }

    /// Run `f` on a hashing thread and wait for its answer.
    async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Argon2<'static>) -> T + Send + 'static,
    ) -> Result<T, FlowError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move |argon| {
            let _ = tx.send(f(argon));
        });
        self.queue
            .get_or_init(|| self.start())
            .send(job)
            .map_err(|_| FlowError::Internal)?;
        rx.await.map_err(|_| FlowError::Internal)
    }

    pub async fn hash(self: &Arc<Self>, secret: String) -> Result<String, FlowError> {
        self.run(move |argon| {
            let salt = SaltString::generate(&mut rand::rngs::OsRng);
            argon
                .hash_password(secret.as_bytes(), &salt)
                .map(|h| h.to_string())
                .map_err(|_| FlowError::Internal)
        })
        .await?
    }

    pub async fn verify(self: &Arc<Self>, secret: String, phc: String) -> Result<bool, FlowError> {
        self.run(move |argon| {
            let parsed = PasswordHash::new(&phc).map_err(|_| FlowError::Internal)?;
            Ok(argon.verify_password(secret.as_bytes(), &parsed).is_ok())
        })
        .await?
    }
}

/// Everything a flow can answer besides success. Mapped to pages and JSON in
/// one place (`respond`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FlowError {
    /// Locked until this Unix time.
    Locked {
        until: i64,
    },
    WrongPin {
        remaining: u32,
    },
    NoPin,
    PinAlreadySet,
    /// The new PIN breaks a rule; the message says which.
    PinRule(String),
    PinMismatch,
    /// PIN enrollment needs a first-factor login newer than the window.
    LoginNotFresh,
    StoreUnavailable,
    Internal,
    /// The address is not one of the profile's (LoginRadius 1340).
    EmailNotInProfile,
    /// No mailer configured.
    NotConfigured,
    /// Ask again after this many seconds.
    Cooldown {
        retry_after: i64,
    },
    /// The hourly cap is reached until this Unix time (LoginRadius 1179).
    SendLimit {
        until: i64,
    },
    /// The mail server refused or was unreachable; nothing was consumed.
    MailFailed,
    /// No code pending: never sent, used, burned or expired.
    NoCode,
    WrongCode {
        remaining: u32,
    },
    /// The current PIN given to a change is wrong (LoginRadius 1241).
    WrongCurrentPin {
        remaining: u32,
    },
    /// PINAuthToken unknown or already used (1239) / expired (1240).
    AuthTokenInvalid,
    AuthTokenExpired,
    /// The reset link was already used (1242).
    ResetUsed,
    /// The reset token is unknown or expired.
    ResetInvalid,
    /// PIN session token unknown, revoked or from another device (1245) /
    /// expired (1246).
    SessionInvalid,
    SessionExpired,
    /// Security answers wrong or missing; tries left before their lockout.
    WrongAnswers {
        remaining: u32,
    },
    /// A security question id that the config does not offer.
    UnknownQuestion(String),
    /// `resetpinurl` is not on `pin.reset_urls`.
    ResetUrlNotAllowed,
    /// A feature this gateway's config turns off; the text says which.
    Disabled(&'static str),
    /// A security answer that cannot be stored; the text says why.
    BadAnswer(String),
    /// A reset code refused: wrong, used, expired or no such account (one
    /// answer for all, so it tells nothing about accounts).
    ResetCodeRefused,
}

impl From<StoreError> for FlowError {
    fn from(e: StoreError) -> Self {
        tracing::warn!(target: "stepgate", error = %e, "store operation failed");
        FlowError::StoreUnavailable
    }
}

/// Check a new PIN against the rules: digits only, length, not trivially weak.
pub fn check_new_pin(pin: &str, s: &PinSettings) -> Result<(), FlowError> {
    let n = pin.chars().count();
    if !pin.chars().all(|c| c.is_ascii_digit()) {
        return Err(FlowError::PinRule("A PIN is made of digits only.".into()));
    }
    if n < s.min_length || n > s.max_length {
        return Err(FlowError::PinRule(format!(
            "A PIN has {} to {} digits.",
            s.min_length, s.max_length
        )));
    }
    let d: Vec<i32> = pin.bytes().map(|b| (b - b'0') as i32).collect();
    let same = d.iter().all(|x| *x == d[0]);
    let step = d[1] - d[0];
    let sequence = step.abs() == 1 && d.windows(2).all(|w| w[1] - w[0] == step);
    let repeats =
        (1..=n / 2).any(|p| n.is_multiple_of(p) && p < n && d.chunks(p).all(|c| c == &d[..p]));
    if same || sequence || repeats {
        return Err(FlowError::PinRule(
            "This PIN is too easy to guess (repeated digits or a sequence). Choose another.".into(),
        ));
    }
    Ok(())
}

#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct PinRecord {
    pub phc: String,
    pub set_at: i64,
}

pub async fn load_record(store: &dyn Store, sub: &str) -> Result<Option<PinRecord>, FlowError> {
    match store.get(&keys::pin(sub)).await? {
        None => Ok(None),
        Some(raw) => serde_json::from_slice(&raw)
            .map(Some)
            .map_err(|_| FlowError::Internal),
    }
}

/// A reserved attempt: counted before the guess is evaluated, so concurrent
/// guesses can never exceed the limit. Settle it with `success` or `failure`.
pub struct Attempt<'a> {
    store: &'a dyn Store,
    lockout: &'a Lockout,
    user_key: String,
    ip_key: String,
    user_count: i64,
    ip_count: i64,
}

/// Reserve one attempt for `sub` from `ip`, or say until when they are locked.
pub async fn reserve<'a>(
    store: &'a dyn Store,
    lockout: &'a Lockout,
    sub: &str,
    ip: &str,
) -> Result<Attempt<'a>, FlowError> {
    reserve_on(store, lockout, keys::failures(sub), keys::ip_failures(ip)).await
}

/// [`reserve`] on other counters (security answers have a lockout of their own).
pub async fn reserve_on<'a>(
    store: &'a dyn Store,
    lockout: &'a Lockout,
    user_key: String,
    ip_key: String,
) -> Result<Attempt<'a>, FlowError> {
    let u = store.incr(&user_key, lockout.window).await?;
    let i = store.incr(&ip_key, lockout.window).await?;
    let over_user = u.value > lockout.max_failures as i64;
    let over_ip = i.value > lockout.ip_max_failures as i64;
    if over_user || over_ip {
        let until_ms = match (over_user, over_ip) {
            (true, true) => u.expires_at_ms.max(i.expires_at_ms),
            (true, false) => u.expires_at_ms,
            _ => i.expires_at_ms,
        };
        return Err(FlowError::Locked {
            until: until_ms.div_ceil(1000) as i64,
        });
    }
    Ok(Attempt {
        store,
        lockout,
        user_key,
        ip_key,
        user_count: u.value,
        ip_count: i.value,
    })
}

impl Attempt<'_> {
    /// The guess was right: release the reservation.
    pub async fn success(self) -> Result<(), FlowError> {
        self.store.decr(&self.user_key).await?;
        self.store.decr(&self.ip_key).await?;
        Ok(())
    }

    /// The guess was wrong: the reservation stays a failure. At the limit the
    /// counter's expiry becomes the lockout duration. Returns the tries left
    /// for the user, or the lockout.
    pub async fn failure(self, sub: &str, ip: &str) -> Result<FlowError, FlowError> {
        let l = self.lockout;
        let now = crate::clock::now();
        let mut locked_until = None;
        if self.user_count >= l.max_failures as i64 {
            self.store.expire(&self.user_key, l.duration).await?;
            metrics::LOCKOUTS.with_label_values(&["user"]).inc();
            crate::audit::event("lockout", sub, ip, "user");
            locked_until = Some(now + l.duration.as_secs() as i64);
        }
        if self.ip_count >= l.ip_max_failures as i64 {
            self.store.expire(&self.ip_key, l.duration).await?;
            metrics::LOCKOUTS.with_label_values(&["ip"]).inc();
            crate::audit::event("lockout", sub, ip, "ip");
            locked_until = Some(now + l.duration.as_secs() as i64);
        }
        Ok(match locked_until {
            Some(until) => FlowError::Locked { until },
            None => FlowError::WrongPin {
                remaining: (l.max_failures as i64 - self.user_count).max(0) as u32,
            },
        })
    }
}

/// Verify `pin` for `sub`, under the lockout. Ok(()) on a right PIN.
pub async fn verify(
    store: &dyn Store,
    hasher: &Arc<Hasher>,
    lockout: &Lockout,
    sub: &str,
    ip: &str,
    pin: &str,
) -> Result<(), FlowError> {
    let record = load_record(store, sub).await?.ok_or(FlowError::NoPin)?;
    let attempt = reserve(store, lockout, sub, ip).await?;
    // A PIN longer than any allowed one cannot be right; still counted.
    let started = Instant::now();
    let ok = pin.len() <= 64 && hasher.verify(pin.to_string(), record.phc).await?;
    metrics::PIN_VERIFY_SECONDS.observe(started.elapsed().as_secs_f64());
    if ok {
        attempt.success().await?;
        crate::audit::event("pin_success", sub, ip, "");
        Ok(())
    } else {
        crate::audit::event("pin_failure", sub, ip, "");
        Err(attempt.failure(sub, ip).await?)
    }
}

/// Store `pin` as `sub`'s PIN (new or replacing), hashed.
pub async fn store_pin(
    store: &dyn Store,
    hasher: &Arc<Hasher>,
    sub: &str,
    pin: &str,
) -> Result<(), FlowError> {
    let phc = hasher.hash(pin.to_string()).await?;
    let rec = serde_json::to_vec(&PinRecord {
        phc,
        set_at: crate::clock::now(),
    })
    .map_err(|_| FlowError::Internal)?;
    store.put(&keys::pin(sub), &rec, None).await?;
    Ok(())
}

/// Store a first PIN: refused with `PinAlreadySet` when one exists, also
/// when several first PINs race on any number of gateways (a short lock in
/// the store spans the check, the hash and the write).
pub async fn create_pin(
    store: &dyn Store,
    hasher: &Arc<Hasher>,
    sub: &str,
    pin: &str,
) -> Result<(), FlowError> {
    let lock = format!("{}:setting", keys::pin(sub));
    if !store
        .put_if_absent(&lock, b"1", std::time::Duration::from_secs(30))
        .await?
    {
        return Err(FlowError::PinAlreadySet);
    }
    let r = async {
        if load_record(store, sub).await?.is_some() {
            return Err(FlowError::PinAlreadySet);
        }
        store_pin(store, hasher, sub, pin).await
    }
    .await;
    let _ = store.delete(&lock).await;
    r
}

/// Enroll a first PIN. The caller has checked the login's freshness.
pub async fn enroll(
    store: &dyn Store,
    hasher: &Arc<Hasher>,
    settings: &PinSettings,
    sub: &str,
    ip: &str,
    pin: &str,
    confirm: &str,
) -> Result<(), FlowError> {
    if pin != confirm {
        return Err(FlowError::PinMismatch);
    }
    check_new_pin(pin, settings)?;
    create_pin(store, hasher, sub, pin).await?;
    metrics::ENROLLMENTS.inc();
    crate::audit::event("pin_set", sub, ip, "");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::memory::MemoryStore;
    use std::time::Duration;

    fn settings() -> PinSettings {
        PinSettings {
            required: false,
            login: true,
            session_ttl: Duration::from_secs(60),
            min_length: 4,
            max_length: 12,
            enroll_window: Duration::from_secs(600),
            login_ttl: Duration::from_secs(900),
            offer_setup: false,
            forgot: crate::config::ForgotMode::Link,
            reset_ttl: Duration::from_secs(900),
            reset_urls: Vec::new(),
            auth_token_ttl: Duration::from_secs(300),
        }
    }

    #[test]
    fn weak_and_malformed_pins_are_refused() {
        let s = settings();
        for bad in [
            "0000",
            "123456",
            "9876",
            "121212",
            "abcd",
            "12",
            "1234567890123",
        ] {
            assert!(check_new_pin(bad, &s).is_err(), "{bad}");
        }
        for good in ["2580", "739164", "1357"] {
            assert!(check_new_pin(good, &s).is_ok(), "{good}");
        }
    }

    #[tokio::test]
    async fn concurrent_wrong_pins_are_evaluated_exactly_up_to_the_limit() {
        let store: Arc<dyn Store> = Arc::new(MemoryStore::default());
        let hasher = Arc::new(Hasher::new(2));
        let lockout = Lockout {
            max_failures: 5,
            window: Duration::from_secs(900),
            duration: Duration::from_secs(900),
            ip_max_failures: 100,
        };
        enroll(
            &*store,
            &hasher,
            &settings(),
            "u",
            "1.1.1.1",
            "2580",
            "2580",
        )
        .await
        .unwrap();
        let mut tasks = Vec::new();
        for _ in 0..12 {
            let (store, hasher, lockout) = (store.clone(), hasher.clone(), lockout.clone());
            tasks.push(tokio::spawn(async move {
                verify(&*store, &hasher, &lockout, "u", "1.1.1.1", "1111").await
            }));
        }
        let mut wrong = 0;
        let mut locked = 0;
        for t in tasks {
            match t.await.unwrap() {
                Err(FlowError::WrongPin { .. }) => wrong += 1,
                Err(FlowError::Locked { .. }) => locked += 1,
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(
            (wrong, locked),
            (4, 8),
            "the 5th failure locks; only 5 guesses were evaluated"
        );
        // Even the right PIN is refused while locked.
        assert!(matches!(
            verify(&*store, &hasher, &lockout, "u", "1.1.1.1", "2580").await,
            Err(FlowError::Locked { .. })
        ));
    }

    #[tokio::test]
    async fn success_releases_the_reservation() {
        let store = MemoryStore::default();
        let hasher = Arc::new(Hasher::new(1));
        let lockout = Lockout {
            max_failures: 2,
            window: Duration::from_secs(900),
            duration: Duration::from_secs(900),
            ip_max_failures: 100,
        };
        enroll(&store, &hasher, &settings(), "u", "ip", "2580", "2580")
            .await
            .unwrap();
        for _ in 0..5 {
            verify(&store, &hasher, &lockout, "u", "ip", "2580")
                .await
                .unwrap();
        }
        assert_eq!(
            verify(&store, &hasher, &lockout, "u", "ip", "1111").await,
            Err(FlowError::WrongPin { remaining: 1 })
        );
    }
}
