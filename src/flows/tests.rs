//! The flows driven directly, without a gateway or sockets: a [`Deps`] over
//! the in-memory store, and the real Argon2 hasher.

use super::deps::Deps;
use super::error::FlowError;
use super::lifecycle::{self, AuthTokenFor};
use super::{otp, pin};
use crate::auth::principal::Principal;
use crate::flows::profile::Profile;

fn alice() -> Principal {
    Principal {
        source: "jwt",
        sub: "alice".into(),
        otp_emails: vec!["alice@x.io".into()],
        email: Some("alice@x.io".into()),
        emails: vec!["alice@x.io".into()],
        session: "sid-1".into(),
        login_time: Some(crate::util::clock::now()),
        expires: crate::util::clock::now() + 600,
        username: None,
        phone: None,
        pin_session: None,
    }
}

async fn enrolled(d: &Deps, p: &Principal, pin_: &str) {
    pin::enroll(
        &*d.store,
        &d.hasher,
        &d.settings.pin,
        &p.sub,
        "10.0.0.1",
        pin_,
        pin_,
    )
    .await
    .expect("a first PIN enrolls");
}

#[tokio::test]
async fn a_pin_auth_token_sets_a_pin_once_and_only_once() {
    let d = Deps::for_tests("");
    let (token, _) = lifecycle::issue_auth_token(&d, "alice", AuthTokenFor::Server)
        .await
        .unwrap();
    let set = lifecycle::set_by_auth_token(&d, &token, "2580", "ua", "10.0.0.1").await;
    assert!(set.is_ok(), "{:?}", set.err());
    assert_eq!(
        lifecycle::set_by_auth_token(&d, &token, "1397", "ua", "10.0.0.1")
            .await
            .err(),
        Some(FlowError::AuthTokenInvalid),
        "a PINAuthToken is single use"
    );
    let p = alice();
    pin::verify(
        &*d.store,
        &d.hasher,
        &d.settings.lockout,
        &p.sub,
        "ip",
        "2580",
        None,
    )
    .await
    .expect("the PIN it set is the user's PIN");
}

#[tokio::test]
async fn a_pin_auth_token_for_a_stale_login_is_refused() {
    let d = Deps::for_tests("");
    let long_ago = crate::util::clock::now() - 86_400;
    let (token, _) = lifecycle::issue_auth_token(&d, "alice", AuthTokenFor::Login(long_ago))
        .await
        .unwrap();
    let r = lifecycle::set_by_auth_token(&d, &token, "2580", "ua", "10.0.0.1").await;
    assert_eq!(r.err(), Some(FlowError::LoginNotFresh));
}

#[tokio::test]
async fn changing_a_pin_needs_the_current_one() {
    let d = Deps::for_tests("");
    let p = alice();
    enrolled(&d, &p, "2580").await;
    let wrong = lifecycle::change(&d, &p, "10.0.0.1", "1111", "1397", None).await;
    assert!(
        matches!(wrong, Err(FlowError::WrongCurrentPin { .. })),
        "{wrong:?}"
    );
    lifecycle::change(&d, &p, "10.0.0.1", "2580", "1397", None)
        .await
        .expect("the right current PIN changes it");
    let lock = &d.settings.lockout;
    assert!(
        pin::verify(&*d.store, &d.hasher, lock, "alice", "ip", "1397", None)
            .await
            .is_ok()
    );
    assert!(matches!(
        pin::verify(&*d.store, &d.hasher, lock, "alice", "ip", "2580", None).await,
        Err(FlowError::WrongPin { .. })
    ));
}

#[tokio::test]
async fn pin_sessions_end_when_the_user_is_invalidated() {
    let d = Deps::for_tests("");
    let p = alice();
    let (token, s) = lifecycle::open_session(&d, Profile::of(&p), p.login_time, "Firefox")
        .await
        .unwrap();
    assert_eq!(lifecycle::load_session(&d, &token).await.unwrap().id, s.id);
    assert_eq!(lifecycle::sessions(&d, "alice").await.unwrap().len(), 1);
    lifecycle::invalidate_user(&d, "alice", "10.0.0.1")
        .await
        .unwrap();
    assert_eq!(
        lifecycle::load_session(&d, &token).await.err(),
        Some(FlowError::SessionInvalid)
    );
    assert!(lifecycle::sessions(&d, "alice").await.unwrap().is_empty());
}

#[tokio::test]
async fn a_pin_session_is_stored_small_and_carries_the_users_profile() {
    let d = Deps::for_tests("");
    let p = alice();
    crate::flows::profile::remember(&*d.store, &p)
        .await
        .unwrap();
    let ua = "Mozilla/5.0 (X11; Linux x86_64; rv:133.0) Gecko/20100101 Firefox/133.0";
    let (token, s) = lifecycle::open_session(&d, Profile::of(&p), p.login_time, ua)
        .await
        .unwrap();
    // Kept in alice's record, beside her profile: no key of its own.
    assert_eq!(
        d.store
            .get(&crate::store::keys::pin_session(&s.id))
            .await
            .unwrap(),
        None
    );
    let part = crate::flows::user::read(&*d.store, "alice", crate::flows::user::Part::Sessions)
        .await
        .unwrap()
        .unwrap();
    let stored = String::from_utf8_lossy(&part);
    assert!(!stored.contains("alice@x.io"), "no profile copy: {stored}");
    assert!(part.len() < 110, "{} bytes: {stored}", part.len());
    // The token leads to the record; a token that names another user's
    // record, or a made-up secret, finds nothing.
    let (locator, _) = token.split_once('.').unwrap();
    assert_eq!(locator, crate::store::keys::user_locator("alice"));
    let forged = format!(
        "{}.{}",
        crate::store::keys::user_locator("bob"),
        token.split_once('.').unwrap().1
    );
    assert_eq!(
        lifecycle::load_session(&d, &forged).await.err(),
        Some(FlowError::SessionInvalid)
    );
    let guessed = format!("{locator}.{}", crate::auth::tokens::secret_token());
    assert_eq!(
        lifecycle::load_session(&d, &guessed).await.err(),
        Some(FlowError::SessionInvalid)
    );
    let loaded = lifecycle::load_session(&d, &token).await.unwrap();
    assert_eq!(loaded.profile, Profile::of(&p));
    assert_eq!(loaded.device, "Firefox on Linux");
}

#[tokio::test]
async fn a_user_keeps_at_most_max_sessions_and_the_oldest_ends() {
    let d = Deps::for_tests("");
    let p = alice();
    let mut tokens = Vec::new();
    for i in 0..=lifecycle::MAX_SESSIONS {
        let ua = format!("device {i}");
        let (token, _) = lifecycle::open_session(&d, Profile::of(&p), p.login_time, &ua)
            .await
            .unwrap();
        tokens.push(token);
    }
    let live = lifecycle::sessions(&d, "alice").await.unwrap();
    assert_eq!(live.len(), lifecycle::MAX_SESSIONS);
    assert_eq!(
        lifecycle::load_session(&d, &tokens[0]).await.err(),
        Some(FlowError::SessionInvalid),
        "the oldest device's session ended"
    );
    for t in &tokens[1..] {
        assert!(lifecycle::load_session(&d, t).await.is_ok());
    }
}

#[tokio::test]
async fn a_pin_session_stored_by_an_earlier_version_still_works() {
    let d = Deps::for_tests("");
    let token = "earlier-version-session-token";
    let id = crate::auth::tokens::token_digest(token);
    let now = d.store.now();
    let old = serde_json::json!({
        "id": id, "sub": "alice",
        "profile": {"sub": "alice", "emails": ["old@x.io"], "otp_emails": ["old@x.io"], "username": null, "phone": null},
        "created": now, "created_ms": now * 1000, "expires": now + 600,
        "ua": crate::flows::lifecycle::ua_digest("Firefox"), "device": "Firefox", "login_time": null
    });
    d.store
        .put(
            &crate::store::keys::pin_session(&id),
            old.to_string().as_bytes(),
            None,
        )
        .await
        .unwrap();
    let s = lifecycle::load_session(&d, token).await.unwrap();
    assert_eq!((s.id.as_str(), s.sub.as_str()), (id.as_str(), "alice"));
    assert_eq!(s.profile.emails, ["old@x.io"], "its own copy is used");
    assert_eq!(s.expires, now + 600);
}

#[tokio::test]
async fn an_earlier_versions_session_list_moves_into_the_record_and_its_sessions_still_end() {
    use crate::store::keys;
    let d = Deps::for_tests("");
    let token = "earlier-version-session-token";
    let id = crate::auth::tokens::token_digest(token);
    let now = d.store.now();
    let old = serde_json::json!({
        "s": "alice", "m": now * 1000, "e": now + 600,
        "u": crate::flows::lifecycle::ua_digest("Firefox"), "d": "Firefox"
    });
    let store = &*d.store;
    store
        .put(&keys::pin_session(&id), old.to_string().as_bytes(), None)
        .await
        .unwrap();
    let list = serde_json::json!([{"i": id, "e": now + 600}]).to_string();
    store
        .put(&keys::pin_sessions("alice"), list.as_bytes(), None)
        .await
        .unwrap();
    let listed = lifecycle::sessions(&d, "alice").await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].id, id);
    assert_eq!(
        store.get(&keys::pin_sessions("alice")).await.unwrap(),
        None,
        "moved"
    );
    // A new device: both are listed, the old one still works.
    let p = alice();
    let (new_token, new) = lifecycle::open_session(&d, Profile::of(&p), None, "Firefox")
        .await
        .unwrap();
    let listed = lifecycle::sessions(&d, "alice").await.unwrap();
    assert_eq!(
        listed.iter().map(|s| s.id.as_str()).collect::<Vec<_>>(),
        [new.id.as_str(), id.as_str()]
    );
    assert!(lifecycle::load_session(&d, token).await.is_ok());
    // Ending the old one drops its key and its place in the list.
    assert!(lifecycle::end_session(&d, &id, Some("alice"))
        .await
        .unwrap());
    assert_eq!(store.get(&keys::pin_session(&id)).await.unwrap(), None);
    assert_eq!(
        lifecycle::load_session(&d, token).await.err(),
        Some(FlowError::SessionInvalid)
    );
    let listed = lifecycle::sessions(&d, "alice").await.unwrap();
    assert_eq!(listed.len(), 1);
    // Another user cannot end alice's session by its id.
    assert!(!lifecycle::end_session(&d, &new.id, Some("bob"))
        .await
        .unwrap());
    assert!(lifecycle::load_session(&d, &new_token).await.is_ok());
    assert!(lifecycle::end_session(&d, &new.id, Some("alice"))
        .await
        .unwrap());
    assert_eq!(
        lifecycle::load_session(&d, &new_token).await.err(),
        Some(FlowError::SessionInvalid)
    );
}

#[tokio::test]
async fn an_email_code_is_mailed_and_used_once() {
    let mailbox = tempfile::tempdir().unwrap();
    let d = Deps::for_tests(&format!(
        "mail: {{ from: \"stepgate@x.io\", dir: \"{}\" }}\n",
        mailbox.path().display()
    ));
    let p = alice();
    otp::send(&d, &p, "alice@x.io", "10.0.0.1", false)
        .await
        .expect("a code goes out");
    let mail = std::fs::read_dir(mailbox.path())
        .unwrap()
        .map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap())
        .next()
        .expect("one message in the mailbox");
    let len = d.settings.email_otp.length;
    let code = mail
        .split(|c: char| !c.is_ascii_digit())
        .find(|w| w.len() == len)
        .expect("the code is in the mail")
        .to_string();
    assert!(
        otp::verify(&d, &p, "000000x", "10.0.0.1").await.is_err(),
        "a wrong code is refused"
    );
    otp::verify(&d, &p, &code, "10.0.0.1")
        .await
        .expect("the mailed code verifies");
    assert_eq!(
        otp::verify(&d, &p, &code, "10.0.0.1").await.err(),
        Some(FlowError::NoCode),
        "and only once"
    );
}

#[tokio::test]
async fn a_code_to_an_address_outside_the_profile_is_never_sent() {
    let mailbox = tempfile::tempdir().unwrap();
    let d = Deps::for_tests(&format!(
        "mail: {{ from: \"stepgate@x.io\", dir: \"{}\" }}\n",
        mailbox.path().display()
    ));
    let r = otp::send(&d, &alice(), "mallory@evil.example", "10.0.0.1", false).await;
    assert_eq!(r.err(), Some(FlowError::EmailNotInProfile));
    assert_eq!(std::fs::read_dir(mailbox.path()).unwrap().count(), 0);
}

/// Time moved by hand: a code expires, a lock ends, a kept request goes,
/// without a test waiting for any of it.
#[tokio::test]
async fn states_and_deadlines_follow_the_clock_the_flows_and_the_store_share() {
    use crate::util::clock::Clock;
    use std::time::Duration;
    let mailbox = tempfile::tempdir().unwrap();
    let clock = Clock::fake(crate::util::clock::now_ms());
    let d = Deps::for_tests_at(
        &format!(
            "mail: {{ from: \"stepgate@x.io\", dir: \"{}\" }}\nlockout: {{ max_failures: 3, duration: 10m, window: 10m }}\n",
            mailbox.path().display()
        ),
        clock.clone(),
    );
    let p = alice();

    // An emailed code: good until its TTL, gone after it.
    otp::send(&d, &p, "alice@x.io", "10.0.0.1", false)
        .await
        .unwrap();
    let mail = std::fs::read_dir(mailbox.path())
        .unwrap()
        .map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap())
        .next()
        .unwrap();
    let len = d.settings.email_otp.length;
    let code = mail
        .split(|c: char| !c.is_ascii_digit())
        .find(|w| w.len() == len)
        .unwrap()
        .to_string();
    assert!(matches!(
        otp::state(&d, &p).await,
        Ok(otp::OtpState::Sent(_))
    ));
    clock.advance(d.settings.email_otp.ttl + Duration::from_secs(1));
    assert_eq!(
        otp::state(&d, &p).await,
        Ok(otp::OtpState::NoCode),
        "expired"
    );
    assert_eq!(
        otp::verify(&d, &p, &code, "10.0.0.1").await.err(),
        Some(FlowError::NoCode),
        "an expired code is refused"
    );

    // A lock: refused while it holds, the right PIN works once it ended.
    assert_eq!(
        pin::state(&*d.store, "alice").await,
        Ok(pin::PinState::NotSet)
    );
    enrolled(&d, &p, "2580").await;
    let set_at = clock.now();
    assert_eq!(
        pin::state(&*d.store, "alice").await,
        Ok(pin::PinState::Set { set_at })
    );
    let verify = |pin_: &'static str| {
        let d = &d;
        async move {
            pin::verify(
                &*d.store,
                &d.hasher,
                &d.settings.lockout,
                "alice",
                "10.0.0.1",
                pin_,
                None,
            )
            .await
        }
    };
    for _ in 0..2 {
        assert!(matches!(
            verify("1397").await,
            Err(FlowError::WrongPin { .. })
        ));
    }
    let until = match verify("1397").await {
        Err(FlowError::Locked { until }) => until,
        other => panic!("the third failure locks: {other:?}"),
    };
    // (rounded up to the second: it never reads as over before its key expires)
    assert!(
        (600..=601).contains(&(until - clock.now())),
        "the lock ends on the flows' clock: {} s from it",
        until - clock.now()
    );
    assert!(matches!(
        verify("2580").await,
        Err(FlowError::Locked { .. })
    ));
    assert_eq!(
        pin::state(&*d.store, "alice").await,
        Ok(pin::PinState::Locked { set_at, until })
    );
    clock.advance(Duration::from_secs(601));
    assert_eq!(
        pin::state(&*d.store, "alice").await,
        Ok(pin::PinState::Set { set_at }),
        "the lock ended on the clock"
    );
    assert_eq!(verify("2580").await, Ok(()), "the lock ended");

    // A kept request waits 10 minutes, not longer.
    let k = super::kept::Kept {
        method: "POST".into(),
        target: "/transfer".into(),
        host: "app.test".into(),
        content_type: Some("application/x-www-form-urlencoded".into()),
        body: b"amount=1".to_vec(),
        sub: p.sub.clone(),
        ssn: crate::auth::tokens::session_hash(&p),
        created_ms: d.store.now_ms(),
    };
    let id = super::kept::keep(&d, &k).await.unwrap();
    clock.advance(Duration::from_secs(599));
    assert!(super::kept::peek(&d, &id, &p).await.is_ok());
    clock.advance(Duration::from_secs(2));
    assert_eq!(
        super::kept::take(&d, &id, &p).await,
        Err(FlowError::KeptGone),
        "gone after 10 minutes"
    );
}

/// Before the store's invalidations were read, which PIN sessions were ended
/// is not known: listing them, or a PIN change that ends the others, is
/// "unavailable", never an empty list or a half-done change.
#[tokio::test]
async fn before_the_invalidations_are_read_sessions_and_pin_changes_wait() {
    let mut d = Deps::for_tests("");
    let p = alice();
    enrolled(&d, &p, "2580").await;
    d.revocations = std::sync::Arc::default();
    assert!(matches!(
        lifecycle::sessions(&d, "alice").await,
        Err(FlowError::StoreUnavailable)
    ));
    assert!(matches!(
        lifecycle::change(&d, &p, "10.0.0.1", "2580", "1397", None).await,
        Err(FlowError::StoreUnavailable)
    ));
    // Nothing was changed: the old PIN still is the PIN.
    d.revocations = std::sync::Arc::new(crate::auth::revocations::Revocations::for_empty_store());
    assert!(lifecycle::change(&d, &p, "10.0.0.1", "2580", "1397", None)
        .await
        .is_ok());
}
