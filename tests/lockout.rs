//! The PIN lockout over real sockets: per-user and per-IP limits (one user's
//! typos never lock out her colleagues behind the same address), guesses
//! refused because of a lock are not counted, and locks with memory: a run of
//! failures without a success ends in a suspension (`403 1198`) that only a
//! PIN reset or the admin unlock API lifts, with the user told by webhook
//! (tests/common/receiver.rs) and mail (a real SMTP server,
//! tests/common/smtp.rs).

mod common;

use common::api::*;
use common::receiver::{Receiver, Recorded};
use common::smtp::{Eml, SmtpServer};
use common::*;

use std::time::Duration;

use reqwest::blocking::Client;
use serde_json::Value;

const PIN: &str = "2580";
const NEW_PIN: &str = "3691";
const WRONG_PIN: &str = "1397";
const WEBHOOK_SECRET: &str = "test-webhook-secret-0123456789abcdef-0123456789";

/// A short lockout: 3 failures lock for 1 s, the next lock lasts 2 s, and
/// 6 failures in a row suspend the PIN.
const SHORT_LOCKOUT: &str = "lockout:\n  max_failures: 3\n  window: 1m\n  duration: 1s\n  max_duration: 2s\n  max_consecutive: 6\n";

fn gateway(extra: &str) -> Gateway {
    Gateway::start_with(GatewayOptions {
        extra_config: format!("{}{extra}", api_secret_config()),
        ..Default::default()
    })
}

fn user(g: &Gateway, sub: &str, email: &str) -> String {
    g.token(sub, &["--email", email, "--login-age", "0"])
}

fn webhook_config(r: &Receiver) -> String {
    format!(
        "webhook:\n  url: \"{}\"\n  secret: \"{WEBHOOK_SECRET}\"\n  timeout: 2s\n",
        r.url("/hook")
    )
}

fn assert_pin_works(g: &Gateway, c: &Client, at: &str, pin: &str, who: &str) {
    let r = put_pin(g, c, at, pin);
    let status = r.status();
    let text = r.text().unwrap();
    assert_eq!(status, 200, "{who} steps up: {text}");
    let body: Value = serde_json::from_str(&text).unwrap();
    assert!(body["SecondFactorValidationToken"].is_string(), "{body}");
}

/// A temporary lock: 429 1198 with `LockedUntil`; returns the seconds left.
fn assert_locked(g: &Gateway, c: &Client, at: &str, pin: &str) -> i64 {
    let (h, body) = assert_error(put_pin(g, c, at, pin), 429, 1198);
    assert!(h.contains_key("retry-after"), "{h:?}");
    let until = time::OffsetDateTime::parse(
        body["LockedUntil"].as_str().expect("LockedUntil"),
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap()
    .unix_timestamp();
    until - now()
}

/// The suspension: 403 1198, saying what lifts it, with no end time.
fn assert_suspended(g: &Gateway, c: &Client, at: &str, pin: &str) {
    let (h, body) = assert_error(put_pin(g, c, at, pin), 403, 1198);
    assert!(body.get("LockedUntil").is_none(), "no end: {body}");
    assert!(!h.contains_key("retry-after"), "{h:?}");
    let d = body["Description"].as_str().unwrap();
    assert!(
        d.contains("reset") && d.contains("administrator"),
        "says what lifts it: {d}"
    );
    assert!(
        body["Message"].as_str().unwrap().contains("suspended"),
        "{body}"
    );
}

fn sleep_past(secs: i64) {
    std::thread::sleep(Duration::from_millis(secs.max(0) as u64 * 1000 + 300));
}

/// Six wrong PINs in a row with `SHORT_LOCKOUT`: 1236 ×2, a 1 s lock, then
/// 1236 ×2 and the suspension.
fn suspend(g: &Gateway, c: &Client, at: &str) {
    for _ in 0..2 {
        assert_error(put_pin(g, c, at, WRONG_PIN), 401, 1236);
    }
    let left = assert_locked(g, c, at, WRONG_PIN);
    assert!((0..=2).contains(&left), "the first lock is short: {left}");
    sleep_past(left);
    for _ in 0..2 {
        assert_error(put_pin(g, c, at, WRONG_PIN), 401, 1236);
    }
    assert_suspended(g, c, at, WRONG_PIN);
}

fn events(hook: &Receiver, event: &str, uid: &str) -> Vec<Recorded> {
    hook.requests()
        .into_iter()
        .filter(|r| {
            let j = r.json();
            j["Event"] == event && j["Uid"] == uid
        })
        .collect()
}

fn mails_to(smtp: &SmtpServer, to: &str) -> Vec<Eml> {
    smtp.messages()
        .into_iter()
        .filter(|m| m.header("To").unwrap_or_default().contains(to))
        .collect()
}

/// The ResetToken in the last link-mode mail.
fn reset_token(mail: &Eml) -> String {
    let text = mail.part("text/plain").expect("a text part");
    let at = text.find("token=").expect("a reset link") + "token=".len();
    text[at..]
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
        .collect()
}

#[test]
fn one_users_typos_do_not_lock_others_behind_the_same_ip() {
    // The shipped defaults: 5 per user, 100 per address.
    let g = gateway("");
    let c = client();
    let ann = user(&g, "ann", "ann@x.io");
    let bob = user(&g, "bob", "bob@x.io");
    enroll_pin(&g, &c, &ann, PIN);
    enroll_pin(&g, &c, &bob, PIN);
    for _ in 0..4 {
        assert_error(put_pin(&g, &c, &ann, WRONG_PIN), 401, 1236);
    }
    let left = assert_locked(&g, &c, &ann, WRONG_PIN);
    assert!((890..=901).contains(&left), "15 minutes: {left}");
    // She keeps trying while locked: refused, and not counted anywhere.
    for pin in [PIN, WRONG_PIN].repeat(10) {
        assert_locked(&g, &c, &ann, pin);
    }
    // Bob, behind the same address (127.0.0.1), steps up, and has all his
    // tries.
    assert_pin_works(&g, &c, &bob, PIN, "bob");
    let (_, b) = assert_error(put_pin(&g, &c, &bob, WRONG_PIN), 401, 1236);
    assert!(
        b["Description"]
            .as_str()
            .unwrap()
            .starts_with("4 attempt(s) left"),
        "{b}"
    );
    assert_pin_works(&g, &c, &bob, PIN, "bob");
}

#[test]
fn concurrent_right_pins_never_lock_the_user() {
    let g = gateway("");
    let ann = user(&g, "ann", "ann@x.io");
    let c = client();
    enroll_pin(&g, &c, &ann, PIN);
    const N: usize = 30;
    let barrier = std::sync::Barrier::new(N);
    let statuses: Vec<u16> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..N)
            .map(|_| {
                let (g, ann, barrier) = (&g, &ann, &barrier);
                s.spawn(move || {
                    let c = Client::builder()
                        .timeout(Duration::from_secs(120))
                        .build()
                        .unwrap();
                    barrier.wait();
                    put_pin(g, &c, ann, PIN).status().as_u16()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert!(
        statuses.iter().all(|s| *s == 200 || *s == 429),
        "right PINs: accepted, or refused for a moment: {statuses:?}"
    );
    assert!(statuses.contains(&200), "{statuses:?}");
    // Nobody is locked, and no try was used up.
    assert_pin_works(&g, &c, &ann, PIN, "ann");
    let (_, b) = assert_error(put_pin(&g, &c, &ann, WRONG_PIN), 401, 1236);
    assert!(
        b["Description"]
            .as_str()
            .unwrap()
            .starts_with("4 attempt(s) left"),
        "{b}"
    );
}

#[test]
fn a_suspended_user_gets_1198_until_a_pin_reset_and_is_told_by_webhook_and_mail() {
    let hook = Receiver::start();
    let smtp = SmtpServer::start();
    let g = gateway(&format!(
        "{SHORT_LOCKOUT}{}{}public_url: \"https://app.example.test\"\n",
        webhook_config(&hook),
        smtp.mail_config()
    ));
    let c = client();
    let ann = user(&g, "ann", "ann@x.io");
    let bob = user(&g, "bob", "bob@x.io");
    enroll_pin(&g, &c, &ann, PIN);
    enroll_pin(&g, &c, &bob, PIN);
    // A step-up records the recovery profile (the address to tell).
    assert_pin_works(&g, &c, &ann, PIN, "ann");

    suspend(&g, &c, &ann);
    // Suspended: even the right PIN, however long she waits.
    assert_suspended(&g, &c, &ann, PIN);
    sleep_past(2);
    assert_suspended(&g, &c, &ann, PIN);
    // Bob, from the same address, is not concerned.
    assert_pin_works(&g, &c, &bob, PIN, "bob");

    // Told once, by webhook and by mail.
    hook.wait_for_matching(1, Duration::from_secs(20), |r| {
        r.json()["Event"] == "PINSuspended"
    });
    let ev = events(&hook, "PINSuspended", "ann");
    assert_eq!(ev.len(), 1, "one event");
    assert_eq!(ev[0].header("X-Stepgate-Event"), Some("PINSuspended"));
    assert_eq!(ev[0].json()["Data"]["ConsecutiveFailures"], 6);
    let mails = common::smtp::wait_for_eml(1, || mails_to(&smtp, "ann@x.io"));
    assert_eq!(mails.len(), 1, "one mail");
    let subject = mails[0].header("Subject").unwrap_or_default().to_string();
    assert!(subject.contains("suspended"), "{subject}");
    let text = mails[0].part("text/plain").unwrap();
    assert!(
        text.contains("Forgot PIN")
            && text.contains("https://app.example.test/.stepgate/pin/forgot"),
        "{text}"
    );

    // The browser's PIN page says it in words.
    let cookie = format!("access_token={ann}");
    let page = get_html(&c, &g.url("/.stepgate/pin?return_to=/admin/x"), &cookie);
    assert_eq!(page.status(), 200);
    let csrf = csrf_of(&page.text().unwrap());
    let r = c
        .post(g.url("/.stepgate/pin"))
        .header("Cookie", &cookie)
        .header("Accept", "text/html")
        .form(&[("pin", PIN), ("csrf", &csrf), ("return_to", "/admin/x")])
        .send()
        .unwrap();
    assert_eq!(r.status(), 403);
    let html = r.text().unwrap();
    assert!(
        html.contains("Your PIN is suspended after too many wrong tries.")
            && html.contains("Forgot PIN")
            && html.contains("helpdesk"),
        "{html}"
    );

    // A reset (the forgot-PIN link) lifts it.
    assert_posted(forgot_email(&g, &c, "ann@x.io", None));
    let mails = common::smtp::wait_for_eml(2, || mails_to(&smtp, "ann@x.io"));
    let token = reset_token(&mails[1]);
    assert_posted(reset_by_token(&g, &c, &token, NEW_PIN));
    let ann = user(&g, "ann", "ann@x.io");
    assert_pin_works(&g, &c, &ann, NEW_PIN, "ann after the reset");
    // And the run of failures starts again: 2 tries left after one wrong.
    let (_, b) = assert_error(put_pin(&g, &c, &ann, WRONG_PIN), 401, 1236);
    assert!(
        b["Description"]
            .as_str()
            .unwrap()
            .starts_with("2 attempt(s) left"),
        "{b}"
    );
}

#[test]
fn the_admin_unlock_api_lifts_a_suspension() {
    let hook = Receiver::start();
    let g = gateway(&format!("{SHORT_LOCKOUT}{}", webhook_config(&hook)));
    let c = client();
    let ann = user(&g, "ann", "ann@x.io");
    enroll_pin(&g, &c, &ann, PIN);
    suspend(&g, &c, &ann);
    hook.wait_for_matching(1, Duration::from_secs(20), |r| {
        r.json()["Event"] == "PINSuspended"
    });

    let unlock = |secret: Option<&str>| {
        let rb = c.post(api(&g, "/manage/account/ann/unlock"));
        match secret {
            Some(s) => bearer(rb, s),
            None => rb,
        }
        .send()
        .unwrap()
    };
    // Only with the API secret.
    assert_error(unlock(None), 401, 907);
    assert_error(unlock(Some("not-the-secret")), 401, 907);
    assert_suspended(&g, &c, &ann, PIN);
    let r = c.get(api(&g, "/manage/account/ann/unlock")).send().unwrap();
    assert_eq!(r.status(), 405);

    assert_posted(unlock(Some(API_SECRET)));
    assert_pin_works(&g, &c, &ann, PIN, "ann after the unlock");
    hook.wait_for_matching(1, Duration::from_secs(20), |r| {
        r.json()["Event"] == "PINUnlocked"
    });
    // The memory of the run is gone too: the next lock is the short one.
    for _ in 0..2 {
        assert_error(put_pin(&g, &c, &ann, WRONG_PIN), 401, 1236);
    }
    let left = assert_locked(&g, &c, &ann, WRONG_PIN);
    assert!((0..=2).contains(&left), "{left}");
}
