//! Unit tests of the PIN factor: rules, the stored record, verification
//! under the lockout; an in-memory store and no gateway.

use super::*;
use crate::store::memory::MemoryStore;
use std::time::Duration;

const PHC: &str = "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$2YlqZ8cN6rTrXL3oWP6KdNtK0mxXKsIhGHIVjWvZ5Pc";

#[test]
fn the_usual_record_is_stored_in_59_bytes_and_reads_back_the_same() {
    let r = PinRecord {
        phc: PHC.into(),
        set_at: 1_796_183_592,
    };
    let raw = r.encode();
    assert_eq!(raw.len(), 59);
    assert_eq!(PinRecord::decode(&raw), Some(r.clone()));
    let json = serde_json::to_vec(&r).unwrap();
    assert!(json.len() > 120, "{}", json.len());
    assert_eq!(PinRecord::decode(&json), Some(r));
}

#[test]
fn unusual_hashes_stay_json() {
    for phc in [
        "$argon2i$v=19$m=19456,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$2YlqZ8cN6rTrXL3oWP6KdNtK0mxXKsIhGHIVjWvZ5Pc",
        "$argon2id$v=19$m=19456,t=300,p=1$c29tZXNhbHRzb21lc2FsdA$2YlqZ8cN6rTrXL3oWP6KdNtK0mxXKsIhGHIVjWvZ5Pc",
        "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$2YlqZ8cN6rTrXL3oWP6KdNtK0mxXKsIhGHIVjWvZ5Pc",
        "$argon2id$v=19$m=19456,t=2,p=1,keyid=x$c29tZXNhbHRzb21lc2FsdA$2YlqZ8cN6rTrXL3oWP6KdNtK0mxXKsIhGHIVjWvZ5Pc",
    ] {
        let r = PinRecord {
            phc: phc.into(),
            set_at: 1,
        };
        assert_eq!(r.encode()[0], b'{', "{phc}");
        assert_eq!(PinRecord::decode(&r.encode()), Some(r));
    }
}

#[tokio::test]
async fn a_json_record_is_rewritten_compact_when_read_and_still_verifies() {
    let store = MemoryStore::default();
    let hasher = Arc::new(Hasher::new(1));
    let phc = hasher.hash("2580".into()).await.unwrap();
    let old = serde_json::to_vec(&PinRecord { phc, set_at: 5 }).unwrap();
    store.put(&keys::pin("ann"), &old, None).await.unwrap();
    let r = load_record(&store, "ann").await.unwrap().unwrap();
    // Moved into the user's record, compact.
    assert_eq!(store.get(&keys::pin("ann")).await.unwrap(), None);
    let now = crate::flows::user::read(&store, "ann", crate::flows::user::Part::Pin)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(now.len(), 59);
    assert_eq!(PinRecord::decode(&now), Some(r.clone()));
    assert!(hasher.verify("2580".into(), r.phc).await.unwrap());
}

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
        forgot_ip_limit: 10,
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

/// A lockout with these numbers; windows and locks in seconds.
fn lockout(
    max_failures: u32,
    ip_max_failures: u32,
    duration: u64,
    max_duration: u64,
    max_consecutive: u32,
) -> Lockout {
    Lockout {
        max_failures,
        window: Duration::from_secs(30),
        duration: Duration::from_secs(duration),
        ip_max_failures,
        max_duration: Duration::from_secs(max_duration),
        max_consecutive,
    }
}

async fn with_pin(store: &dyn Store, hasher: &Arc<Hasher>, sub: &str) {
    enroll(store, hasher, &settings(), sub, "1.1.1.1", "2580", "2580")
        .await
        .unwrap();
}

async fn try_pin(
    store: &dyn Store,
    hasher: &Arc<Hasher>,
    l: &Lockout,
    sub: &str,
    ip: &str,
    pin: &str,
) -> Result<(), FlowError> {
    verify(store, hasher, l, sub, ip, pin, None).await
}

/// Seconds from now until a lock ends.
fn locked_for(r: Result<(), FlowError>) -> i64 {
    match r {
        Err(FlowError::Locked { until }) => until - crate::util::clock::now(),
        other => panic!("expected a lock, got {other:?}"),
    }
}

/// Sleep until the lock in `r` (seconds left) is over.
async fn outlast(secs: i64) {
    tokio::time::sleep(Duration::from_millis(secs.max(0) as u64 * 1000 + 150)).await;
}

async fn counter(store: &dyn Store, key: &str) -> i64 {
    match store.get(key).await.unwrap() {
        Some(raw) => crate::store::memory::parse(key, &raw).unwrap(),
        None => 0,
    }
}

#[tokio::test]
async fn concurrent_wrong_pins_are_evaluated_exactly_up_to_the_limit() {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::default());
    let hasher = Arc::new(Hasher::new(2));
    let lockout = lockout(5, 100, 900, 86400, 20);
    with_pin(&*store, &hasher, "u").await;
    let mut tasks = Vec::new();
    for _ in 0..12 {
        let (store, hasher, lockout) = (store.clone(), hasher.clone(), lockout.clone());
        tasks.push(tokio::spawn(async move {
            try_pin(&*store, &hasher, &lockout, "u", "1.1.1.1", "1111").await
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
        try_pin(&*store, &hasher, &lockout, "u", "1.1.1.1", "2580").await,
        Err(FlowError::Locked { .. })
    ));
}

#[tokio::test]
async fn success_releases_the_reservation() {
    let store = MemoryStore::default();
    let hasher = Arc::new(Hasher::new(1));
    let lockout = lockout(2, 100, 900, 86400, 20);
    with_pin(&store, &hasher, "u").await;
    for _ in 0..5 {
        try_pin(&store, &hasher, &lockout, "u", "ip", "2580")
            .await
            .unwrap();
    }
    assert_eq!(
        try_pin(&store, &hasher, &lockout, "u", "ip", "1111").await,
        Err(FlowError::WrongPin { remaining: 1 })
    );
}

#[tokio::test]
async fn refused_while_locked_guesses_are_not_counted() {
    let store = MemoryStore::default();
    let hasher = Arc::new(Hasher::new(1));
    // Low IP limit, so that counting refused guesses would show at once.
    let l = lockout(2, 4, 60, 60, 20);
    with_pin(&store, &hasher, "ann").await;
    with_pin(&store, &hasher, "bob").await;
    for _ in 0..2 {
        let _ = try_pin(&store, &hasher, &l, "ann", "10.0.0.1", "1111").await;
    }
    // Ann is locked; she keeps trying, right and wrong.
    for pin in [
        "1111", "2580", "1111", "2580", "1111", "2580", "1111", "2580",
    ] {
        assert!(matches!(
            try_pin(&store, &hasher, &l, "ann", "10.0.0.1", pin).await,
            Err(FlowError::Locked { .. })
        ));
    }
    let ann = keys::failures("ann");
    assert_eq!(
        counter(&store, &format!("{ann}:streak")).await,
        2,
        "only evaluated guesses are failures"
    );
    // Bob, behind the same address, has his own tries: the IP saw 2
    // failures, not 10.
    assert_eq!(
        try_pin(&store, &hasher, &l, "bob", "10.0.0.1", "1111").await,
        Err(FlowError::WrongPin { remaining: 1 })
    );
    try_pin(&store, &hasher, &l, "bob", "10.0.0.1", "2580")
        .await
        .unwrap();
}

#[tokio::test]
async fn concurrent_right_pins_never_lock_the_user() {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::default());
    let hasher = Arc::new(Hasher::new(2));
    let l = lockout(5, 100, 900, 86400, 20);
    with_pin(&*store, &hasher, "u").await;
    let mut tasks = Vec::new();
    for _ in 0..40 {
        let (store, hasher, l) = (store.clone(), hasher.clone(), l.clone());
        tasks.push(tokio::spawn(async move {
            try_pin(&*store, &hasher, &l, "u", "1.1.1.1", "2580").await
        }));
    }
    let mut ok = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(()) => ok += 1,
            // Beyond what may be in flight at once: refused for a moment.
            Err(FlowError::Locked { until }) => {
                assert!(
                    until <= crate::util::clock::now() + 1,
                    "only a moment: {until}"
                )
            }
            other => panic!("{other:?}"),
        }
    }
    assert!(ok >= 1, "the guesses in flight were evaluated");
    // Nothing is locked and nothing was counted.
    let k = keys::failures("u");
    assert_eq!(store.get(&format!("{k}:lock")).await.unwrap(), None);
    assert_eq!(
        counter(&*store, &k).await,
        0,
        "every reservation was released"
    );
    try_pin(&*store, &hasher, &l, "u", "1.1.1.1", "2580")
        .await
        .unwrap();
    assert_eq!(
        try_pin(&*store, &hasher, &l, "u", "1.1.1.1", "1111").await,
        Err(FlowError::WrongPin { remaining: 4 })
    );
}

#[tokio::test]
async fn one_users_typos_do_not_lock_others_behind_the_same_ip() {
    // The shipped defaults.
    let secret = "0123456789abcdef0123456789abcdef";
    let settings = crate::config::from_str(
        std::path::Path::new("/tmp/gw.yaml"),
        &format!("upstream: http://127.0.0.1:9000\npolicy: p.yaml\nfirst_factor: {{ jwt: {{ secret: \"{secret}\" }} }}\nsigning: {{ secret: \"{secret}\" }}\n"),
    )
    .unwrap();
    let l = settings.lockout;
    let store = MemoryStore::default();
    let hasher = Arc::new(Hasher::new(1));
    with_pin(&store, &hasher, "ann").await;
    with_pin(&store, &hasher, "bob").await;
    let mut last = Ok(());
    for _ in 0..l.max_failures {
        last = try_pin(&store, &hasher, &l, "ann", "192.0.2.7", "1111").await;
    }
    assert!(matches!(last, Err(FlowError::Locked { .. })), "{last:?}");
    // Her colleague behind the same NAT is not locked, and keeps all his tries.
    try_pin(&store, &hasher, &l, "bob", "192.0.2.7", "2580")
        .await
        .unwrap();
    assert_eq!(
        try_pin(&store, &hasher, &l, "bob", "192.0.2.7", "1111").await,
        Err(FlowError::WrongPin {
            remaining: l.max_failures - 1
        })
    );
    // Many users' failures from one address still lock the address.
    let ip = lockout(1000, 3, 60, 60, 20);
    with_pin(&store, &hasher, "u0").await;
    with_pin(&store, &hasher, "u1").await;
    for u in ["bob", "u0"] {
        let r = try_pin(&store, &hasher, &ip, u, "198.51.100.1", "1111").await;
        assert!(matches!(r, Err(FlowError::WrongPin { .. })), "{r:?}");
    }
    let r = try_pin(&store, &hasher, &ip, "u1", "198.51.100.1", "1111").await;
    assert!(matches!(r, Err(FlowError::Locked { .. })), "{r:?}");
    let r = try_pin(&store, &hasher, &ip, "bob", "198.51.100.1", "2580").await;
    assert!(matches!(r, Err(FlowError::Locked { .. })), "{r:?}");
}

#[test]
fn an_ip_limit_below_the_user_limit_is_a_config_error() {
    let secret = "0123456789abcdef0123456789abcdef";
    let base = format!("upstream: http://127.0.0.1:9000\npolicy: p.yaml\nfirst_factor: {{ jwt: {{ secret: \"{secret}\" }} }}\nsigning: {{ secret: \"{secret}\" }}\n");
    let load = |lockout: &str| {
        crate::config::from_str(
            std::path::Path::new("/tmp/gw.yaml"),
            &format!("{base}lockout:\n{lockout}"),
        )
    };
    let e = load("  max_failures: 5\n  ip_max_failures: 4\n").unwrap_err();
    assert!(
        e.iter()
            .any(|d| d.message.contains("ip_max_failures") && d.pos.line == 7),
        "{e:?}"
    );
    assert!(load("  max_failures: 5\n  ip_max_failures: 5\n").is_ok());
    for bad in [
        "  max_consecutive: 0\n",
        "  max_consecutive: 101\n",
        "  duration: 1h\n  max_duration: 30m\n",
    ] {
        assert!(load(bad).is_err(), "{bad}");
    }
    let l = load("  max_duration: 2h\n  max_consecutive: 50\n")
        .unwrap()
        .lockout;
    assert_eq!(
        (l.max_duration, l.max_consecutive),
        (Duration::from_secs(7200), 50)
    );
}

#[tokio::test]
async fn consecutive_locks_grow() {
    let store = MemoryStore::default();
    let hasher = Arc::new(Hasher::new(1));
    let l = lockout(2, 100, 1, 2, 20);
    with_pin(&store, &hasher, "u").await;
    let two_wrong = || async {
        assert_eq!(
            try_pin(&store, &hasher, &l, "u", "ip", "1111").await,
            Err(FlowError::WrongPin { remaining: 1 })
        );
        locked_for(try_pin(&store, &hasher, &l, "u", "ip", "1111").await)
    };
    let first = two_wrong().await;
    assert!(
        (1..=2).contains(&first),
        "the first lock is `duration`: {first}"
    );
    outlast(first).await;
    let second = two_wrong().await;
    assert!(
        (2..=3).contains(&second),
        "the next one lasts twice as long: {second}"
    );
    outlast(second).await;
    let third = two_wrong().await;
    assert!((2..=3).contains(&third), "capped at max_duration: {third}");
    outlast(third).await;
    // A success ends the run: the next lock is short again.
    try_pin(&store, &hasher, &l, "u", "ip", "2580")
        .await
        .unwrap();
    let after = two_wrong().await;
    assert!((1..=2).contains(&after), "{after}");
}

#[tokio::test]
async fn consecutive_failures_end_in_suspension_until_reset() {
    let store = MemoryStore::default();
    let hasher = Arc::new(Hasher::new(1));
    let l = lockout(2, 100, 1, 1, 5);
    with_pin(&store, &hasher, "u").await;
    let told = std::sync::Mutex::new(Vec::new());
    let notice = |sub: &str, ip: &str| told.lock().unwrap().push(format!("{sub}@{ip}"));
    let wrong = || verify(&store, &hasher, &l, "u", "ip", "1111", Some(&notice));
    for _ in 0..2 {
        let _ = wrong().await;
        let _ = wrong().await;
        outlast(1).await;
    }
    assert_eq!(
        wrong().await,
        Err(FlowError::Suspended),
        "the 5th failure in a row"
    );
    assert_eq!(*told.lock().unwrap(), vec!["u@ip".to_string()]);
    // Suspended: nothing is evaluated, however long one waits.
    outlast(1).await;
    for pin in ["2580", "1111"] {
        assert_eq!(
            try_pin(&store, &hasher, &l, "u", "ip", pin).await,
            Err(FlowError::Suspended)
        );
    }
    assert_eq!(told.lock().unwrap().len(), 1, "told once");
    // A reset (or an admin) lifts it, with the memory of the run.
    clear_lockout(&store, "u").await.unwrap();
    try_pin(&store, &hasher, &l, "u", "ip", "2580")
        .await
        .unwrap();
    assert_eq!(
        try_pin(&store, &hasher, &l, "u", "ip", "1111").await,
        Err(FlowError::WrongPin { remaining: 1 })
    );
}

#[tokio::test]
async fn a_success_ends_the_run_of_failures() {
    let store = MemoryStore::default();
    let hasher = Arc::new(Hasher::new(1));
    let l = lockout(10, 100, 60, 60, 3);
    with_pin(&store, &hasher, "u").await;
    for _ in 0..2 {
        let _ = try_pin(&store, &hasher, &l, "u", "ip", "1111").await;
    }
    try_pin(&store, &hasher, &l, "u", "ip", "2580")
        .await
        .unwrap();
    for _ in 0..2 {
        assert!(matches!(
            try_pin(&store, &hasher, &l, "u", "ip", "1111").await,
            Err(FlowError::WrongPin { .. })
        ));
    }
    assert_eq!(
        try_pin(&store, &hasher, &l, "u", "ip", "1111").await,
        Err(FlowError::Suspended),
        "three in a row"
    );
}

#[tokio::test]
async fn recovery_lockouts_grow_but_never_suspend() {
    let store = MemoryStore::default();
    let l = lockout(1, 100, 1, 2, 1);
    let fail = || async {
        let a = reserve_on(&store, &l, "{u:x}:sq:fail".into(), "ip:1:sq:fail".into())
            .await
            .unwrap();
        locked_for(Err(a.failure("x", "1").await.unwrap()))
    };
    let first = fail().await;
    assert!((1..=2).contains(&first), "{first}");
    outlast(first).await;
    let second = fail().await;
    assert!((2..=3).contains(&second), "{second}");
    let r = reserve_on(&store, &l, "{u:x}:sq:fail".into(), "ip:1:sq:fail".into()).await;
    assert!(matches!(r, Err(FlowError::Locked { .. })));
}
