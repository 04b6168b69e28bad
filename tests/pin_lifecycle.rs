//! The PIN lifecycle half of the JSON API over real sockets: change, forgot
//! (reset link or code by email through a real SMTP server, Python's
//! `aiosmtpd`; code by SMS through a real HTTP "SMS gateway"), reset by
//! ResetToken, code or security answers, PINAuthToken with `pin.required`,
//! device PIN sessions and PIN login, invalidation, signed webhooks (checked
//! with HMAC-SHA256 here), the recovery metrics and the audit log.
//!
//! The SMS gateway and the webhook endpoint are `tests/fixtures/
//! http_receiver.py` (tests/common/receiver.rs), which records every POST and
//! can be told to answer 500 or not at all.
//!
//! Missing `python3` or `aiosmtpd` is a failure, never a skip: the README's
//! test command, `scripts/test.sh`, installs them.

mod common;

use common::api::*;
use common::metrics::{metric_sum, metrics_config, wait_for_metric_sum};
use common::receiver::{Mode, Receiver, Recorded};
use common::smtp::{digits_after, Eml, SmtpServer};
use common::*;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use reqwest::blocking::{Client, Response};
use serde_json::{json, Value};
use sha2::Sha256;

const PIN: &str = "2580";
const NEW_PIN: &str = "3691";
const WRONG_PIN: &str = "1397";
const WEBHOOK_SECRET: &str = "test-webhook-secret-0123456789abcdef-0123456789";
const SMS_SECRET: &str = "sms-gateway-secret-42";

/// The user, as the identity provider describes them in the token.
const SUB: &str = "ann";
const EMAIL: &str = "a@x.io";
const USERNAME: &str = "ann";
const PHONE: &str = "+15550102000";

/// An authenticated route (the default policy's `default: authenticated`).
const APP: &str = "/app/x";

const QUESTIONS: &str = r#"security_questions:
  - { id: q1, question: "What was the name of your first school?" }
  - { id: q2, question: "What is your favourite colour?" }
  - { id: q3, question: "In which city were you born?" }
"#;

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

/// A gateway with the default policy, the API secret and `extra` config.
fn gateway(extra: &str) -> Gateway {
    Gateway::start_with(GatewayOptions {
        extra_config: format!("{}{extra}", api_secret_config()),
        ..Default::default()
    })
}

/// Ann's first-factor token, logged in just now.
fn ann(g: &Gateway) -> String {
    g.token(
        SUB,
        &[
            "--email",
            EMAIL,
            "--username",
            USERNAME,
            "--phone",
            PHONE,
            "--login-age",
            "0",
        ],
    )
}

/// Ann's first-factor token from a login an hour ago.
fn ann_stale(g: &Gateway) -> String {
    g.token(
        SUB,
        &[
            "--email",
            EMAIL,
            "--username",
            USERNAME,
            "--phone",
            PHONE,
            "--login-age",
            "3600",
        ],
    )
}

fn rfc3339(s: &str) -> i64 {
    time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|e| panic!("{s:?} is RFC 3339: {e}"))
        .unix_timestamp()
}

/// `pin` is the user's PIN: the step-up gives a token, which is returned.
fn assert_pin_works(g: &Gateway, c: &Client, at: &str, pin: &str) -> String {
    let body = assert_ok_json(put_pin(g, c, at, pin));
    body["SecondFactorValidationToken"]
        .as_str()
        .expect("SecondFactorValidationToken")
        .to_string()
}

/// `pin` is not the user's PIN: 401 1236.
fn assert_pin_refused(g: &Gateway, c: &Client, at: &str, pin: &str) {
    assert_error(put_pin(g, c, at, pin), 401, 1236);
}

/// The access token was refused by the proxy (401, `invalid_token`).
fn assert_unauthenticated(r: Response) {
    let status = r.status();
    let text = r.text().unwrap();
    assert_eq!(status, 401, "refused: {text}");
    let body: Value = serde_json::from_str(&text).expect("JSON");
    assert_eq!(body["error"], "invalid_token", "{body}");
}

/// POST /manage/pinauthtoken with the API secret: the PINAuthToken.
fn pin_auth_token(g: &Gateway, c: &Client, uid: &str) -> String {
    let body = assert_ok_json(
        bearer(c.post(api(g, "/manage/pinauthtoken")), API_SECRET)
            .json(&json!({ "Uid": uid }))
            .send()
            .unwrap(),
    );
    let left = rfc3339(body["ExpireIn"].as_str().expect("ExpireIn")) - now();
    assert!(
        (240..=301).contains(&left),
        "a PINAuthToken lives 5 minutes: {left} s"
    );
    body["PINAuthToken"]
        .as_str()
        .filter(|t| !t.is_empty())
        .expect("PINAuthToken")
        .to_string()
}

/// Set Ann's PIN with a PINAuthToken from device `ua`; returns the device
/// session token and the stepgate access token.
fn set_pin_for_device(g: &Gateway, c: &Client, pin: &str, ua: &str) -> (String, String) {
    let t = pin_auth_token(g, c, SUB);
    let body = assert_ok_json(set_by_auth_token(g, c, &t, pin, ua));
    assert_eq!(body["IsPosted"], true, "{body}");
    assert_eq!(body["Profile"]["Uid"], SUB, "{body}");
    let session = body["session_token"]
        .as_str()
        .expect("session_token")
        .to_string();
    let access = body["access_token"]
        .as_str()
        .expect("access_token")
        .to_string();
    assert!(access.starts_with("sgs."), "a stepgate session: {access}");
    assert!(rfc3339(body["session_expires_in"].as_str().unwrap()) > now());
    assert!(rfc3339(body["expires_in"].as_str().unwrap()) > now());
    (session, access)
}

/// A PIN login that works; returns the `sgs.` access token.
fn pin_login_ok(g: &Gateway, c: &Client, session: &str, pin: &str, ua: &str) -> String {
    let body = assert_ok_json(login_pin(g, c, session, pin, ua));
    assert_eq!(body["Profile"]["Uid"], SUB, "{body}");
    let t = body["access_token"].as_str().expect("access_token");
    assert!(t.starts_with("sgs."), "a stepgate session: {t}");
    let exp = rfc3339(body["expires_in"].as_str().expect("expires_in"));
    assert!(
        (now() + 800..=now() + 901).contains(&exp),
        "login_ttl is 15 minutes: expires {exp}"
    );
    t.to_string()
}

/// Wait (generously: 30 s) until `n` messages reached the SMTP server;
/// on timeout, show what the gateway logged about sending.
fn wait_for_mail(g: &Gateway, smtp: &SmtpServer, n: usize) -> Vec<Eml> {
    let start = Instant::now();
    loop {
        let m = smtp.messages();
        if m.len() >= n {
            return m;
        }
        if start.elapsed() > Duration::from_secs(30) {
            let log = g.log();
            let sending: Vec<&str> = log
                .lines()
                .filter(|l| l.contains("pin_reset") || l.contains("forgot") || l.contains("mail"))
                .collect();
            panic!(
                "expected {n} message(s), found {} after 30 s; the gateway logged:\n{}",
                m.len(),
                sending.join("\n")
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The ResetToken in a link-mode mail: what follows `<base>?token=` (or
/// `&token=`) in the text part, after checking the HTML part has the link.
fn reset_token_in(mail: &Eml, base: &str) -> String {
    let text = mail.part("text/plain").expect("a text part");
    let at = text
        .find(base)
        .unwrap_or_else(|| panic!("the mail links to {base}:\n{text}"));
    let rest = &text[at + base.len()..];
    let rest = rest
        .strip_prefix("?token=")
        .or_else(|| rest.strip_prefix("&token="))
        .unwrap_or_else(|| panic!("`token=` follows {base}:\n{text}"));
    let token: String = rest
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
        .collect();
    assert!(token.len() >= 32, "a long random token: {token:?}");
    let html = mail.part("text/html").expect("an HTML part");
    assert!(html.contains(&token), "the HTML part has the same link");
    token
}

/// The six-digit code after `Your code:` in a code-mode mail.
fn code_in(mail: &Eml) -> String {
    let text = mail.part("text/plain").expect("a text part");
    let code = digits_after(text, "Your code:")
        .unwrap_or_else(|| panic!("no `Your code:` in the mail:\n{text}"));
    assert_eq!(code.len(), 6, "a six-digit code: {code}");
    code
}

/// The same code with its last digit changed.
fn wrong(code: &str) -> String {
    let last = code.chars().last().unwrap().to_digit(10).unwrap();
    format!("{}{}", &code[..code.len() - 1], (last + 1) % 10)
}

/// The six digits after `code: ` in an SMS text.
fn code_in_sms(message: &str) -> String {
    let code = digits_after(message, "code:")
        .unwrap_or_else(|| panic!("no `code:` in the SMS: {message}"));
    assert_eq!(code.len(), 6, "a six-digit code: {code}");
    code
}

/// PUT /account/securityquestion; `pin`: the current PIN, which a user who
/// has one sends when the request carries no recent step-up.
fn set_answers(
    g: &Gateway,
    c: &Client,
    at: &str,
    pin: Option<&str>,
    answers: &[(&str, &str)],
) -> Response {
    let list: Vec<Value> = answers
        .iter()
        .map(|(q, a)| json!({ "QuestionId": q, "Answer": a }))
        .collect();
    let mut body = json!({ "securityquestionanswer": list });
    if let Some(p) = pin {
        body["PIN"] = json!(p);
    }
    bearer(c.put(api(g, "/account/securityquestion")), at)
        .json(&body)
        .send()
        .unwrap()
}

fn questions(g: &Gateway, c: &Client, query: &str) -> Vec<(String, String)> {
    let body = assert_ok_json(
        c.get(api(g, &format!("/securityquestion?{query}")))
            .send()
            .unwrap(),
    );
    body.as_array()
        .unwrap_or_else(|| panic!("a list: {body}"))
        .iter()
        .map(|q| {
            (
                q["QuestionId"].as_str().expect("QuestionId").to_string(),
                q["Question"].as_str().expect("Question").to_string(),
            )
        })
        .collect()
}

fn reset_by_answers(g: &Gateway, c: &Client, kind: &str, id: Value, answers: Value) -> Response {
    let field = match kind {
        "email" => "Email",
        "phone" => "Phone",
        _ => "UserName",
    };
    let mut body = json!({ "PIN": NEW_PIN, "SecurityAnswer": answers });
    body[field] = id;
    put_json(g, c, &format!("/pin/reset/securityanswer/{kind}"), body)
}

/// Audit events of this kind in the gateway log.
fn audit(g: &Gateway, event: &str) -> Vec<Value> {
    g.log()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["target"] == "audit" && v["event"] == event)
        .collect()
}

/// Wait (generously) until `n` such events are logged; return them.
fn wait_for_audit(g: &Gateway, event: &str, n: usize) -> Vec<Value> {
    let start = Instant::now();
    loop {
        let got = audit(g, event);
        if got.len() >= n {
            return got;
        }
        if start.elapsed() > Duration::from_secs(20) {
            panic!(
                "expected {n} `{event}` audit event(s), found {}:\n{}",
                got.len(),
                g.log()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Check `X-Stepgate-Signature: t=<unix>,v1=<hex>` against HMAC-SHA256
/// over `"<t>.<body>"` with `secret`, as a receiver would (in constant time).
fn signature_valid(secret: &[u8], signature: &str, body: &[u8]) -> bool {
    let mut t = None;
    let mut v1 = None;
    for part in signature.split(',') {
        match part.trim().split_once('=') {
            Some(("t", v)) => t = Some(v.to_string()),
            Some(("v1", v)) => v1 = Some(v.to_string()),
            _ => {}
        }
    }
    let (Some(t), Some(v1)) = (t, v1) else {
        return false;
    };
    if v1.len() != 64 {
        return false;
    }
    let Ok(expected) = (0..32)
        .map(|i| u8::from_str_radix(&v1[2 * i..2 * i + 2], 16))
        .collect::<Result<Vec<u8>, _>>()
    else {
        return false;
    };
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).unwrap();
    mac.update(t.as_bytes());
    mac.update(b".");
    mac.update(body);
    mac.verify_slice(&expected).is_ok()
}

fn signature_time(signature: &str) -> i64 {
    signature
        .split(',')
        .find_map(|p| p.trim().strip_prefix("t="))
        .expect("t= in the signature")
        .parse()
        .expect("t is a number")
}

/// `webhook:` config pointing at `r`.
fn webhook_config(r: &Receiver) -> String {
    format!(
        "webhook:\n  url: \"{}\"\n  secret: \"{WEBHOOK_SECRET}\"\n  timeout: 2s\n",
        r.url("/hook")
    )
}

/// `sms:` config pointing at `r`.
fn sms_config(r: &Receiver, timeout: &str) -> String {
    format!(
        "sms:\n  webhook_url: \"{}\"\n  timeout: {timeout}\n  secret: \"{SMS_SECRET}\"\n",
        r.url("/send")
    )
}

// ---------------------------------------------------------------------------
// Change PIN
// ---------------------------------------------------------------------------

#[test]
fn change_pin_with_the_right_old_pin_replaces_it() {
    let g = gateway("");
    let c = client();
    let at = ann(&g);
    enroll_pin(&g, &c, &at, PIN);
    assert_pin_works(&g, &c, &at, PIN);

    assert_posted(change_pin(&g, &c, &at, PIN, NEW_PIN));

    assert_pin_works(&g, &c, &at, NEW_PIN);
    assert_pin_refused(&g, &c, &at, PIN);
    // Field names are case-insensitive.
    assert_posted(
        bearer(c.put(api(&g, "/pin/change")), &at)
            .json(&json!({ "oldpin": NEW_PIN, "newpin": PIN }))
            .send()
            .unwrap(),
    );
    assert_pin_works(&g, &c, &at, PIN);
}

#[test]
fn change_pin_with_a_wrong_old_pin_is_1241_and_counts_toward_the_pin_lockout() {
    // The IP limit is raised so the lock seen is the user's.
    let (metrics, mport) = metrics_config();
    let g = gateway(&format!("lockout:\n  ip_max_failures: 100\n{metrics}"));
    let c = client();
    let at = ann(&g);
    enroll_pin(&g, &c, &at, PIN);

    // One wrong step-up, then wrong current PINs: one shared counter.
    let (_, b) = assert_error(put_pin(&g, &c, &at, WRONG_PIN), 401, 1236);
    assert!(b["Description"]
        .as_str()
        .unwrap()
        .starts_with("4 attempt(s) left"));
    for left in (1..=3).rev() {
        let (_, b) = assert_error(change_pin(&g, &c, &at, WRONG_PIN, NEW_PIN), 401, 1241);
        let d = b["Description"].as_str().unwrap();
        assert!(
            d.starts_with(&format!("{left} attempt(s) left")),
            "{left} attempt(s) left: {d}"
        );
    }
    // The fifth failure locks.
    let (h, b) = assert_error(change_pin(&g, &c, &at, WRONG_PIN, NEW_PIN), 429, 1198);
    assert!(h.contains_key("retry-after"), "{h:?}");
    assert!(rfc3339(b["LockedUntil"].as_str().expect("LockedUntil")) > now());
    // Locked: the right current PIN changes nothing, and step-ups are locked too.
    assert_error(change_pin(&g, &c, &at, PIN, NEW_PIN), 429, 1198);
    assert_error(put_pin(&g, &c, &at, PIN), 429, 1198);
    assert_error(put_pin(&g, &c, &at, NEW_PIN), 429, 1198);

    // Counted by outcome.
    let ops = "stepgate_pin_operations_total";
    let changes =
        |outcome| metric_sum(mport, ops, &[("operation", "change"), ("outcome", outcome)]);
    assert_eq!(changes("refused"), 3.0);
    assert_eq!(changes("locked"), 2.0);
    assert_eq!(changes("success"), 0.0);
}

#[test]
fn change_pin_refuses_weak_pins_missing_tokens_and_users_without_a_pin() {
    let g = gateway("");
    let c = client();
    let at = ann(&g);
    enroll_pin(&g, &c, &at, PIN);

    for weak in ["1111", "1234", "9876", "1212", "12a4", "12"] {
        assert_error(change_pin(&g, &c, &at, PIN, weak), 400, 1248);
    }
    // The same PIN again is not a change.
    assert_error(change_pin(&g, &c, &at, PIN, PIN), 400, 1248);
    assert_pin_works(&g, &c, &at, PIN);

    // No access token, a bad one, or only the cookie (the API reads
    // Authorization only): 401 906, nothing changes.
    let body = json!({ "OldPIN": PIN, "NewPIN": NEW_PIN });
    let r = c.put(api(&g, "/pin/change")).json(&body).send().unwrap();
    let (h, _) = assert_error(r, 401, 906);
    assert!(h.contains_key("www-authenticate"));
    assert_error(
        bearer(c.put(api(&g, "/pin/change")), "not-a-token")
            .json(&body)
            .send()
            .unwrap(),
        401,
        906,
    );
    assert_error(
        c.put(api(&g, "/pin/change"))
            .header("Cookie", format!("access_token={at}"))
            .json(&body)
            .send()
            .unwrap(),
        401,
        906,
    );
    assert_pin_works(&g, &c, &at, PIN);
    assert_pin_refused(&g, &c, &at, NEW_PIN);

    // A user without a PIN: 403 1235.
    let bob = g.token("bob", &["--email", "b@x.io"]);
    assert_error(change_pin(&g, &c, &bob, PIN, NEW_PIN), 403, 1235);
}

#[test]
fn change_pin_ends_the_other_pin_sessions_and_keeps_the_callers() {
    let g = gateway("");
    let c = client();
    let at = ann(&g);
    // Device A: PIN set with a PINAuthToken (opens A's PIN session).
    let (session_a, _) = set_pin_for_device(&g, &c, PIN, "device-A");
    // Device B: a PIN step-up in the browser opens B's PIN session.
    let session_b = browser_pin_session(&g, &c, &at, PIN, "device-B");
    assert_ne!(session_a, session_b);

    // Both sessions allow a PIN login.
    let sgs_a = pin_login_ok(&g, &c, &session_a, PIN, "device-A");
    let sgs_b = pin_login_ok(&g, &c, &session_b, PIN, "device-B");
    forwarded(get_as(&g, &c, APP, &sgs_b), APP);

    // Change from device A, signed in by PIN login.
    let r = bearer(c.put(api(&g, "/pin/change")), &sgs_a)
        .header("User-Agent", "device-A")
        .json(&json!({ "OldPIN": PIN, "NewPIN": NEW_PIN }))
        .send()
        .unwrap();
    assert_posted(r);

    // B's session is over, and so is the stepgate session opened from it.
    assert_error(
        login_pin(&g, &c, &session_b, NEW_PIN, "device-B"),
        401,
        1245,
    );
    assert_unauthenticated(get_as(&g, &c, APP, &sgs_b));
    // A's session is kept and takes the new PIN only.
    assert_error(login_pin(&g, &c, &session_a, PIN, "device-A"), 401, 1236);
    let sgs_a2 = pin_login_ok(&g, &c, &session_a, NEW_PIN, "device-A");
    forwarded(get_as(&g, &c, APP, &sgs_a2), APP);
    forwarded(get_as(&g, &c, APP, &sgs_a), APP);

    // With the first-factor token, the device's stepgate_ps cookie names the
    // session to keep: device C keeps its own and ends A's.
    let session_c = browser_pin_session(&g, &c, &at, NEW_PIN, "device-C");
    let r = bearer(c.put(api(&g, "/pin/change")), &at)
        .header("User-Agent", "device-C")
        .header("Cookie", format!("stepgate_ps={session_c}"))
        .json(&json!({ "OldPIN": NEW_PIN, "NewPIN": PIN }))
        .send()
        .unwrap();
    assert_posted(r);
    assert_error(login_pin(&g, &c, &session_a, PIN, "device-A"), 401, 1245);
    assert_unauthenticated(get_as(&g, &c, APP, &sgs_a2));
    pin_login_ok(&g, &c, &session_c, PIN, "device-C");
}

// ---------------------------------------------------------------------------
// Forgot and reset
// ---------------------------------------------------------------------------

#[test]
fn forgot_by_email_sends_a_single_use_reset_link() {
    let smtp = SmtpServer::start();
    let g = gateway(&smtp.mail_config());
    let c = client();
    let at = ann(&g);
    enroll_pin(&g, &c, &at, PIN);
    // A step-up records the recovery profile (enrollment does too).
    assert_pin_works(&g, &c, &at, PIN);

    // Not on pin.reset_urls (empty here): refused before anything is sent.
    assert_error(
        forgot_email(&g, &c, EMAIL, Some("https://evil.example/reset")),
        400,
        1259,
    );

    // Signed out: no access token at all; the address case does not matter.
    assert_posted(forgot_email(&g, &c, "A@X.io", None));
    let mails = wait_for_mail(&g, &smtp, 1);
    assert_eq!(mails.len(), 1);
    assert!(
        mails[0].header("To").unwrap_or_default().contains(EMAIL),
        "to the profile's address: {:?}",
        mails[0].header("To")
    );
    let base = g.url("/.stepgate/pin/reset");
    let token = reset_token_in(&mails[0], &base);

    // The cooldown (30 s by default) is per identifier.
    assert_error(forgot_email(&g, &c, EMAIL, None), 429, 1179);

    assert_posted(reset_by_token(&g, &c, &token, NEW_PIN));
    assert_pin_works(&g, &c, &at, NEW_PIN);
    assert_pin_refused(&g, &c, &at, PIN);

    // Single use, and told apart from garbage.
    assert_error(reset_by_token(&g, &c, &token, "4826"), 400, 1242);
    assert_error(
        reset_by_token(&g, &c, "not-a-reset-token-at-all", "4826"),
        400,
        1256,
    );
    let mut flipped = token.clone().into_bytes();
    flipped[0] = if flipped[0] == b'A' { b'B' } else { b'A' };
    assert_error(
        reset_by_token(&g, &c, &String::from_utf8(flipped).unwrap(), "4826"),
        400,
        1256,
    );
    // None of that changed the PIN.
    assert_pin_works(&g, &c, &at, NEW_PIN);
}

#[test]
fn forgot_for_an_unknown_account_answers_the_same_and_sends_nothing() {
    let smtp = SmtpServer::start();
    let g = gateway(&smtp.mail_config());
    let c = client();

    // Ann has a PIN but never stepped up, enrolled by page, or set answers:
    // no recovery profile, so she is unknown too.
    set_pin_for_device(&g, &c, PIN, "device-A");
    for (route, body) in [
        ("/pin/forgot/email", json!({ "Email": "nobody@x.io" })),
        ("/pin/forgot/email", json!({ "Email": EMAIL })),
        ("/pin/forgot/username", json!({ "UserName": "nobody" })),
    ] {
        assert_posted(post_json(&g, &c, route, body));
    }
    // The cooldown applies to unknown identifiers too (same answer as for
    // a real account).
    assert_error(
        post_json(
            &g,
            &c,
            "/pin/forgot/email",
            json!({ "Email": "nobody@x.io" }),
        ),
        429,
        1179,
    );
    assert_eq!(wait_for_audit(&g, "pin_forgot_unknown", 3).len(), 3);

    // A known account right after: its mail is the only one that arrives.
    let bob = g.token("bob", &["--email", "b@x.io", "--login-age", "0"]);
    enroll_pin(&g, &c, &bob, PIN);
    assert_posted(forgot_email(&g, &c, "b@x.io", None));
    let mails = wait_for_mail(&g, &smtp, 1);
    std::thread::sleep(Duration::from_secs(1));
    let mails_later = smtp.messages();
    assert_eq!(
        mails_later.len(),
        1,
        "only bob's mail was sent: {:?}",
        mails_later
            .iter()
            .map(|m| m.header("To"))
            .collect::<Vec<_>>()
    );
    assert!(mails[0].header("To").unwrap_or_default().contains("b@x.io"));

    // Phone recovery without an SMS gateway: 501 1233.
    assert_error(
        post_json(&g, &c, "/pin/forgot/otp", json!({ "Phone": PHONE })),
        501,
        1233,
    );
    // Not an address / not a phone number: 400 901.
    assert_error(
        post_json(&g, &c, "/pin/forgot/email", json!({ "Email": "nobody" })),
        400,
        901,
    );
}

#[test]
fn recovery_without_its_settings_is_501_1233() {
    let g = gateway("");
    let c = client();
    let at = ann(&g);
    enroll_pin(&g, &c, &at, PIN);
    // No mail settings.
    assert_error(forgot_email(&g, &c, EMAIL, None), 501, 1233);
    assert_error(
        post_json(
            &g,
            &c,
            "/pin/forgot/username",
            json!({ "UserName": USERNAME }),
        ),
        501,
        1233,
    );
    // No SMS gateway.
    assert_error(
        post_json(&g, &c, "/pin/forgot/otp", json!({ "Phone": PHONE })),
        501,
        1233,
    );
    // No security questions.
    assert_error(
        c.get(api(&g, "/securityquestion?email=a%40x.io"))
            .send()
            .unwrap(),
        501,
        1233,
    );
    assert_error(
        set_answers(&g, &c, &at, Some(PIN), &[("q1", "x")]),
        501,
        1233,
    );
}

#[test]
fn forgot_mail_goes_to_the_address_asked_for_with_links_on_the_public_url() {
    let smtp = SmtpServer::start();
    let g = gateway(&format!(
        "public_url: \"https://gw.example.com\"\n{}",
        smtp.mail_config()
    ));
    let c = client();
    let at = g.token(
        SUB,
        &[
            "--email",
            EMAIL,
            "--email",
            "ann.work@x.io",
            "--username",
            USERNAME,
            "--login-age",
            "0",
        ],
    );
    enroll_pin(&g, &c, &at, PIN);

    // The second address, asked for: the mail goes there.
    assert_posted(forgot_email(&g, &c, "ann.work@x.io", None));
    let mails = wait_for_mail(&g, &smtp, 1);
    let to = mails[0].header("To").unwrap_or_default().to_string();
    assert!(to.contains("ann.work@x.io") && !to.contains(EMAIL), "{to}");
    // Links are built on public_url, not on the request's origin.
    let token = reset_token_in(&mails[0], "https://gw.example.com/.stepgate/pin/reset");
    assert!(!mails[0].all_text().contains("127.0.0.1"));

    // By username: the first address.
    assert_posted(post_json(
        &g,
        &c,
        "/pin/forgot/username",
        json!({ "UserName": USERNAME }),
    ));
    let mails = wait_for_mail(&g, &smtp, 2);
    let to = mails[1].header("To").unwrap_or_default().to_string();
    assert!(to.contains(EMAIL) && !to.contains("ann.work"), "{to}");

    // Each link is its own token; both reset the PIN.
    let token2 = reset_token_in(&mails[1], "https://gw.example.com/.stepgate/pin/reset");
    assert_ne!(token, token2);
    assert_posted(reset_by_token(&g, &c, &token, NEW_PIN));
    assert_pin_works(&g, &c, &at, NEW_PIN);
    assert_posted(reset_by_token(&g, &c, &token2, PIN));
    assert_pin_works(&g, &c, &at, PIN);
}

#[test]
fn forgot_requests_share_the_email_otp_hourly_cap_per_identifier() {
    let smtp = SmtpServer::start();
    let g = gateway(&format!(
        "{}email_otp:\n  resend_cooldown: 1s\n  max_sends_per_hour: 2\n",
        smtp.mail_config()
    ));
    let c = client();
    let at = ann(&g);
    enroll_pin(&g, &c, &at, PIN);
    for n in 1..=2 {
        assert_posted(forgot_email(&g, &c, EMAIL, None));
        wait_for_mail(&g, &smtp, n);
        // Past the one-second cooldown.
        std::thread::sleep(Duration::from_millis(1500));
    }
    let (_, b) = assert_error(forgot_email(&g, &c, EMAIL, None), 429, 1179);
    assert!(
        b["Description"].as_str().unwrap().contains("until"),
        "the hourly cap, not the cooldown: {b}"
    );
    // Per identifier: the username is a separate one.
    assert_posted(post_json(
        &g,
        &c,
        "/pin/forgot/username",
        json!({ "UserName": USERNAME }),
    ));
    wait_for_mail(&g, &smtp, 3);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(smtp.messages().len(), 3);
}

#[test]
fn forgot_reset_links_go_to_an_allowed_resetpinurl() {
    let smtp = SmtpServer::start();
    let g = gateway(&format!(
        "{}pin:\n  reset_urls: [\"https://app.example.com/reset\", \"https://id.example.com/pin/\"]\n",
        smtp.mail_config()
    ));
    let c = client();
    let at = ann(&g);
    enroll_pin(&g, &c, &at, PIN);

    for bad in [
        "https://app.example.com/reset2",
        "https://app.example.com.evil.io/reset",
        "https://id.example.com/pinx",
        "javascript:alert(1)",
    ] {
        assert_error(forgot_email(&g, &c, EMAIL, Some(bad)), 400, 1259);
    }

    // An exact entry: `?token=`.
    assert_posted(forgot_email(
        &g,
        &c,
        EMAIL,
        Some("https://app.example.com/reset"),
    ));
    let mails = wait_for_mail(&g, &smtp, 1);
    let token = reset_token_in(&mails[0], "https://app.example.com/reset");
    assert!(
        !mails[0].all_text().contains("/.stepgate/pin/reset"),
        "only the app's link"
    );

    // Under a prefix, with a query of its own: `&token=` (by username).
    let r = post_json(
        &g,
        &c,
        "/pin/forgot/username",
        json!({ "UserName": USERNAME, "resetpinurl": "https://id.example.com/pin/reset?lang=en" }),
    );
    assert_posted(r);
    let mails = wait_for_mail(&g, &smtp, 2);
    let token2 = reset_token_in(&mails[1], "https://id.example.com/pin/reset?lang=en");
    assert_ne!(token, token2);

    // Both tokens are real ResetTokens.
    assert_posted(reset_by_token(&g, &c, &token, NEW_PIN));
    assert_pin_works(&g, &c, &at, NEW_PIN);
    assert_posted(reset_by_token(&g, &c, &token2, PIN));
    assert_pin_works(&g, &c, &at, PIN);
}

#[test]
fn forgot_by_username_in_code_mode_resets_with_the_mailed_code() {
    // The IP limit is raised so the lock seen is the account's.
    let smtp = SmtpServer::start();
    let g = gateway(&format!(
        "{}pin:\n  forgot: otp\nlockout:\n  ip_max_failures: 100\n",
        smtp.mail_config()
    ));
    let c = client();
    let at = ann(&g);
    enroll_pin(&g, &c, &at, PIN);

    let reset = |route: &str, field: &str, id: &str, code: &str| {
        let mut body = json!({ "PIN": NEW_PIN, "OTP": code });
        body[field] = json!(id);
        put_json(&g, &c, &format!("/pin/reset/otp/{route}"), body)
    };
    let by_username = |code: &str| reset("username", "UserName", USERNAME, code);
    // Every refusal is the same 401 1253. No code sent yet: 1st failure.
    assert_error(by_username("123456"), 401, 1253);

    // Usernames are matched case-insensitively.
    assert_posted(post_json(
        &g,
        &c,
        "/pin/forgot/username",
        json!({ "UserName": "ANN" }),
    ));
    let mails = wait_for_mail(&g, &smtp, 1);
    assert!(mails[0].header("To").unwrap_or_default().contains(EMAIL));
    assert!(
        !mails[0].all_text().contains("token="),
        "code mode sends no link"
    );
    let code = code_in(&mails[0]);

    // A wrong code (2nd failure); the right code for an unknown name (not
    // Ann's count); the mailed code through the phone route, though the
    // number is Ann's (3rd failure): all the same 1253.
    assert_error(by_username(&wrong(&code)), 401, 1253);
    assert_error(reset("username", "UserName", "nobody", &code), 401, 1253);
    assert_error(reset("phone", "Phone", PHONE, &code), 401, 1253);
    assert_pin_works(&g, &c, &at, PIN);

    assert_posted(by_username(&code));
    assert_pin_works(&g, &c, &at, NEW_PIN);
    assert_pin_refused(&g, &c, &at, PIN);
    // The code works once (4th failure).
    assert_error(by_username(&code), 401, 1253);

    // The 5th refusal locks the account's resets by code, whatever the route.
    let (h, _) = assert_error(by_username("000000"), 429, 1198);
    assert!(h.contains_key("retry-after"));
    assert_posted(forgot_email(&g, &c, EMAIL, None));
    let mails = wait_for_mail(&g, &smtp, 2);
    let code = code_in(&mails[1]);
    assert_error(reset("email", "Email", EMAIL, &code), 429, 1198);
    assert_pin_works(&g, &c, &at, NEW_PIN);
}

#[test]
fn reset_code_refusals_lock_per_client_address() {
    // The per-address limit lowered to the per-user one (default: 100).
    let g = gateway("lockout:\n  ip_max_failures: 5\n");
    let c = client();
    // Unknown names from one address: four 1253, then the address is locked.
    for n in 1..=4 {
        let r = put_json(
            &g,
            &c,
            "/pin/reset/otp/username",
            json!({ "PIN": NEW_PIN, "UserName": format!("nobody{n}"), "OTP": "123456" }),
        );
        assert_error(r, 401, 1253);
    }
    let r = put_json(
        &g,
        &c,
        "/pin/reset/otp/email",
        json!({ "PIN": NEW_PIN, "Email": "nobody5@x.io", "OTP": "123456" }),
    );
    assert_error(r, 429, 1198);
    let r = put_json(
        &g,
        &c,
        "/pin/reset/otp/phone",
        json!({ "PIN": NEW_PIN, "Phone": "+15550109999", "OTP": "123456" }),
    );
    assert_error(r, 429, 1198);
    let e = wait_for_audit(&g, "lockout", 1);
    assert_eq!(e[0]["detail"], "ip", "{e:?}");
}

#[test]
fn forgot_by_phone_sends_the_code_through_the_sms_gateway() {
    let sms = Receiver::start();
    let smtp = SmtpServer::start();
    let g = gateway(&format!("{}{}", sms_config(&sms, "5s"), smtp.mail_config()));
    let c = client();
    let at = ann(&g);
    enroll_pin(&g, &c, &at, PIN);

    // Any common spelling of the number.
    assert_posted(post_json(
        &g,
        &c,
        "/pin/forgot/otp",
        json!({ "Phone": "+1 (555) 010-2000" }),
    ));
    let got = sms.wait_for(1, Duration::from_secs(20));
    assert_eq!(got.len(), 1);
    let m = &got[0];
    assert_eq!(m.path, "/send");
    assert_eq!(
        m.header("Authorization"),
        Some(format!("Bearer {SMS_SECRET}").as_str())
    );
    assert!(m
        .header("Content-Type")
        .unwrap_or_default()
        .starts_with("application/json"));
    let body = m.json();
    assert_eq!(body["to"], PHONE, "{body}");
    let message = body["message"].as_str().expect("message");
    let code = code_in_sms(message);
    assert!(message.contains("15 min"), "{message}");
    assert!(smtp.messages().is_empty(), "phone recovery sends no mail");

    let reset = |phone: &str, code: &str| {
        put_json(
            &g,
            &c,
            "/pin/reset/otp/phone",
            json!({ "PIN": NEW_PIN, "Phone": phone, "OTP": code }),
        )
    };
    assert_error(reset(PHONE, &wrong(&code)), 401, 1253);
    // A texted code is redeemed by phone only.
    assert_error(
        put_json(
            &g,
            &c,
            "/pin/reset/otp/email",
            json!({ "PIN": NEW_PIN, "Email": EMAIL, "OTP": code }),
        ),
        401,
        1253,
    );
    assert_posted(reset("+1 555 010 2000", &code));
    assert_pin_works(&g, &c, &at, NEW_PIN);
    assert_pin_refused(&g, &c, &at, PIN);
    assert_error(reset(PHONE, &code), 401, 1253);

    // An unknown number: the same answer, no text message. A phone reset
    // sends no link, so `resetpinurl` is not checked.
    assert_posted(post_json(
        &g,
        &c,
        "/pin/forgot/otp",
        json!({ "Phone": "+15550109999", "resetpinurl": "https://evil.example/" }),
    ));
    wait_for_audit(&g, "pin_forgot_unknown", 1);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(sms.requests().len(), 1, "no SMS for an unknown number");
}

#[test]
fn a_failing_sms_gateway_is_not_revealed_and_is_counted() {
    let sms = Receiver::start_with(Mode::Status(500));
    let (metrics, mport) = metrics_config();
    // A short cooldown, so asking again after it is quick to test.
    let g = gateway(&format!(
        "{}{metrics}email_otp:\n  resend_cooldown: 10s\n",
        sms_config(&sms, "5s")
    ));
    let c = client();
    let at = ann(&g);
    enroll_pin(&g, &c, &at, PIN);
    let failed = [("channel", "sms"), ("outcome", "failed")];
    let sent = [("channel", "sms"), ("outcome", "sent")];
    let name = "stepgate_recovery_messages_total";
    let failed_before = metric_sum(mport, name, &failed);

    let forgot = |phone: &str| post_json(&g, &c, "/pin/forgot/otp", json!({ "Phone": phone }));
    // The caller cannot tell the send failed (no account enumeration).
    let asked = Instant::now();
    assert_posted(forgot(PHONE));
    assert_posted(forgot("+15550109999"));
    let got = sms.wait_for(1, Duration::from_secs(20));
    let first_code = code_in_sms(got[0].json()["message"].as_str().unwrap());
    wait_for_metric_sum(mport, name, &failed, failed_before + 1.0);
    let events = wait_for_audit(&g, "pin_reset_send_failed", 1);
    assert_eq!(events[0]["user"], SUB);
    assert!(
        events[0]["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("500"),
        "{}",
        events[0]
    );
    // The cooldown stays, as for an unknown number: a retry tells nothing.
    assert_error(forgot(PHONE), 429, 1179);
    assert_error(forgot("+15550109999"), 429, 1179);
    assert!(
        asked.elapsed() < Duration::from_secs(10),
        "the retries above came within the cooldown"
    );
    // The undelivered code was dropped (in the background, right after the
    // failure was logged: a moment for that).
    std::thread::sleep(Duration::from_millis(300));
    assert_error(
        put_json(
            &g,
            &c,
            "/pin/reset/otp/phone",
            json!({ "PIN": NEW_PIN, "Phone": PHONE, "OTP": first_code }),
        ),
        401,
        1253,
    );

    // After the cooldown the user asks again, and this time it is delivered.
    sms.set_mode(Mode::Ok);
    if let Some(left) = Duration::from_millis(10_500).checked_sub(asked.elapsed()) {
        std::thread::sleep(left);
    }
    assert_posted(forgot(PHONE));
    let got = sms.wait_for(2, Duration::from_secs(20));
    let code = code_in_sms(got[1].json()["message"].as_str().unwrap());
    wait_for_metric_sum(mport, name, &sent, 1.0);
    assert_posted(put_json(
        &g,
        &c,
        "/pin/reset/otp/phone",
        json!({ "PIN": NEW_PIN, "Phone": PHONE, "OTP": code }),
    ));
    assert_pin_works(&g, &c, &at, NEW_PIN);
    assert_eq!(metric_sum(mport, name, &failed), failed_before + 1.0);
}

#[test]
fn a_refused_reset_mail_is_not_revealed_and_is_counted() {
    let refuse = SmtpServer::start_on(free_port(), smtp::Handler::Refuse);
    let (metrics, mport) = metrics_config();
    let g = gateway(&format!("{}{metrics}", refuse.mail_config()));
    let c = client();
    let at = ann(&g);
    enroll_pin(&g, &c, &at, PIN);
    let failed = [("channel", "email"), ("outcome", "failed")];
    let name = "stepgate_recovery_messages_total";

    assert_posted(forgot_email(&g, &c, EMAIL, None));
    wait_for_metric_sum(mport, name, &failed, 1.0);
    let e = wait_for_audit(&g, "pin_reset_send_failed", 1);
    assert_eq!(e[0]["user"], SUB);
    assert_eq!(
        metric_sum(mport, name, &[("channel", "email"), ("outcome", "sent")]),
        0.0
    );
    // The cooldown (30 s) stays, as it does for unknown names.
    assert_error(forgot_email(&g, &c, EMAIL, None), 429, 1179);
    assert_posted(forgot_email(&g, &c, "nobody@x.io", None));
    assert_error(forgot_email(&g, &c, "nobody@x.io", None), 429, 1179);
}

#[test]
fn reset_credentials_are_single_use_under_concurrency() {
    let smtp = SmtpServer::start();
    let g = gateway(&smtp.mail_config());
    let c = client();
    let at = ann(&g);
    enroll_pin(&g, &c, &at, PIN);
    assert_posted(forgot_email(&g, &c, EMAIL, None));
    let mails = wait_for_mail(&g, &smtp, 1);
    let token = reset_token_in(&mails[0], &g.url("/.stepgate/pin/reset"));

    // A weak PIN does not use the token up.
    assert_error(reset_by_token(&g, &c, &token, "0000"), 400, 1248);

    // Eight racers with the same ResetToken, each with its own PIN.
    let pins = [
        "3691", "4826", "5937", "6048", "7159", "8260", "9371", "1482",
    ];
    let barrier = std::sync::Barrier::new(pins.len());
    let results: Vec<(String, u16, Value)> = std::thread::scope(|s| {
        let handles: Vec<_> = pins
            .iter()
            .map(|pin| {
                let (g, token, barrier) = (&g, &token, &barrier);
                s.spawn(move || {
                    let c = client();
                    barrier.wait();
                    let r = reset_by_token(g, &c, token, pin);
                    let status = r.status().as_u16();
                    (pin.to_string(), status, r.json::<Value>().unwrap())
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let winners: Vec<&(String, u16, Value)> = results.iter().filter(|r| r.1 == 200).collect();
    assert_eq!(winners.len(), 1, "exactly one reset: {results:?}");
    // Every loser hears that the link was used.
    for (_, status, body) in results.iter().filter(|r| r.1 != 200) {
        assert_eq!(*status, 400, "{body}");
        assert_eq!(body["ErrorCode"], 1242, "a used token: {body}");
    }
    assert_pin_works(&g, &c, &at, &winners[0].0);

    // The same for PINAuthTokens.
    let token = pin_auth_token(&g, &c, "bob");
    let barrier = std::sync::Barrier::new(pins.len());
    let results: Vec<(u16, Value)> = std::thread::scope(|s| {
        let handles: Vec<_> = pins
            .iter()
            .map(|pin| {
                let (g, token, barrier) = (&g, &token, &barrier);
                s.spawn(move || {
                    let c = client();
                    barrier.wait();
                    let r = set_by_auth_token(g, &c, token, pin, "app");
                    let status = r.status().as_u16();
                    (status, r.json::<Value>().unwrap())
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(
        results.iter().filter(|r| r.0 == 200).count(),
        1,
        "exactly one PIN set: {results:?}"
    );
    for (status, body) in results.iter().filter(|r| r.0 != 200) {
        assert!(
            (*status, body["ErrorCode"].as_u64()) == (401, Some(1239))
                || (*status, body["ErrorCode"].as_u64()) == (400, Some(1247)),
            "used token or PIN already set: {status} {body}"
        );
    }
}

#[test]
fn a_pin_reset_lifts_the_users_pin_lockout() {
    let smtp = SmtpServer::start();
    let g = gateway(&format!(
        "{}pin:\n  forgot: otp\nlockout:\n  ip_max_failures: 100\n",
        smtp.mail_config()
    ));
    let c = client();
    let at = ann(&g);
    enroll_pin(&g, &c, &at, PIN);
    for _ in 0..4 {
        assert_pin_refused(&g, &c, &at, WRONG_PIN);
    }
    assert_error(put_pin(&g, &c, &at, WRONG_PIN), 429, 1198);
    assert_error(put_pin(&g, &c, &at, PIN), 429, 1198);

    assert_posted(forgot_email(&g, &c, EMAIL, None));
    let code = code_in(&wait_for_mail(&g, &smtp, 1)[0]);
    // A weak PIN uses no try.
    let reset = |pin: &str| {
        put_json(
            &g,
            &c,
            "/pin/reset/otp/email",
            json!({ "PIN": pin, "Email": EMAIL, "OTP": code }),
        )
    };
    assert_error(reset("0000"), 400, 1248);
    assert_posted(reset(NEW_PIN));
    assert_pin_works(&g, &c, &at, NEW_PIN);
}

#[test]
fn an_sms_gateway_that_never_answers_times_out_in_the_background() {
    let sms = Receiver::start_with(Mode::Hang);
    let (metrics, mport) = metrics_config();
    let g = gateway(&format!("{}{metrics}", sms_config(&sms, "1s")));
    let c = client();
    let at = ann(&g);
    enroll_pin(&g, &c, &at, PIN);
    let failed = [("channel", "sms"), ("outcome", "failed")];

    // The answer does not wait for the SMS gateway.
    assert_posted(post_json(
        &g,
        &c,
        "/pin/forgot/otp",
        json!({ "Phone": PHONE }),
    ));
    sms.wait_for(1, Duration::from_secs(20));
    wait_for_metric_sum(mport, "stepgate_recovery_messages_total", &failed, 1.0);
    let events = wait_for_audit(&g, "pin_reset_send_failed", 1);
    assert!(
        events[0]["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("did not answer"),
        "{}",
        events[0]
    );
    sms.set_mode(Mode::Ok);
}

// ---------------------------------------------------------------------------
// Security questions
// ---------------------------------------------------------------------------

#[test]
fn security_questions_are_listed_set_with_a_fresh_login_and_reset_the_pin() {
    let g = gateway(QUESTIONS);
    let c = client();
    let at = ann(&g);
    enroll_pin(&g, &c, &at, PIN);
    let all: Vec<(String, String)> = [
        ("q1", "What was the name of your first school?"),
        ("q2", "What is your favourite colour?"),
        ("q3", "In which city were you born?"),
    ]
    .iter()
    .map(|(q, t)| (q.to_string(), t.to_string()))
    .collect();

    // Every configured question, in order, for any name: the list tells
    // nothing about accounts.
    for query in [
        "email=nobody%40x.io",
        "username=nobody",
        "phone=%2B15550109999",
        "email=a%40x.io",
    ] {
        assert_eq!(questions(&g, &c, query), all, "{query}");
    }
    // No identifier: 400 901.
    assert_error(
        c.get(api(&g, "/securityquestion")).send().unwrap(),
        400,
        901,
    );

    // Setting answers needs an access token, and (Ann has a PIN) the PIN
    // or a recent step-up: a fresh login does not know the PIN.
    assert_error(
        c.put(api(&g, "/account/securityquestion"))
            .json(&json!({ "securityquestionanswer": [] }))
            .send()
            .unwrap(),
        401,
        906,
    );
    let stale = ann_stale(&g);
    for who in [&stale, &at] {
        assert_error(
            set_answers(&g, &c, who, None, &[("q1", "Saint Mary's School")]),
            403,
            1261,
        );
    }
    assert_error(
        set_answers(&g, &c, &at, Some(PIN), &[("q9", "x")]),
        400,
        1258,
    );
    // No answers, or a blank one: 400 1260.
    assert_error(set_answers(&g, &c, &at, Some(PIN), &[]), 400, 1260);
    assert_error(
        set_answers(&g, &c, &at, Some(PIN), &[("q1", "   ")]),
        400,
        1260,
    );
    assert_posted(set_answers(
        &g,
        &c,
        &at,
        Some(PIN),
        &[("q1", "Saint Mary's School"), ("q3", "Lisbon")],
    ));

    // Still the whole list, for Ann's names too.
    assert_eq!(questions(&g, &c, "email=a%40x.io"), all);
    assert_eq!(questions(&g, &c, "username=ANN"), all);
    assert_eq!(questions(&g, &c, "phone=%2B15550102000"), all);

    // A stale login with a fresh step-up token may change them too.
    let su = assert_pin_works(&g, &c, &stale, PIN);
    let r = bearer(c.put(api(&g, "/account/securityquestion")), &stale)
        .header("X-Stepgate-Token", su)
        .json(&json!({ "securityquestionanswer": [{ "QuestionId": "q3", "Answer": "Porto" }] }))
        .send()
        .unwrap();
    assert_posted(r);
    // The old q3 answer no longer works (q1 is kept).
    assert_error(
        reset_by_answers(
            &g,
            &c,
            "email",
            json!(EMAIL),
            json!({ "q1": "saint mary's school", "q3": "lisbon" }),
        ),
        401,
        1257,
    );

    // Reset: answers are compared trimmed, spaces collapsed, any case;
    // answers to questions Ann did not answer are ignored.
    let r = reset_by_answers(
        &g,
        &c,
        "email",
        json!(EMAIL),
        json!({ "q1": "  saint   MARY'S\tschool ", "q2": "anything", "q3": "PORTO" }),
    );
    assert_posted(r);
    assert_pin_works(&g, &c, &at, NEW_PIN);
    assert_pin_refused(&g, &c, &at, PIN);

    // By username and phone as well.
    let r = put_json(
        &g,
        &c,
        "/pin/reset/securityanswer/username",
        json!({ "PIN": PIN, "UserName": USERNAME, "SecurityAnswer": { "q1": "saint mary's school", "q3": "porto" } }),
    );
    assert_posted(r);
    assert_pin_works(&g, &c, &at, PIN);
    let r = put_json(
        &g,
        &c,
        "/pin/reset/securityanswer/phone",
        json!({ "PIN": NEW_PIN, "Phone": PHONE, "SecurityAnswer": { "q1": "Saint Mary's School", "q3": "Porto" } }),
    );
    assert_posted(r);
    assert_pin_works(&g, &c, &at, NEW_PIN);
}

#[test]
fn wrong_security_answers_are_1257_then_lock_with_1198() {
    let g = gateway(QUESTIONS);
    let c = client();
    let at = ann(&g);
    enroll_pin(&g, &c, &at, PIN);
    assert_posted(set_answers(
        &g,
        &c,
        &at,
        Some(PIN),
        &[("q1", "Saint Mary's School"), ("q2", "Green")],
    ));
    let right = json!({ "q1": "saint mary's school", "q2": "green" });
    let attempts = [
        json!({ "q1": "saint mary's school", "q2": "blue" }), // one of two wrong
        json!({ "q1": "saint mary's school" }),               // one missing
        json!({}),
        json!({ "q1": "x", "q2": "green" }),
    ];
    for (i, a) in attempts.iter().enumerate() {
        let (_, b) = assert_error(
            reset_by_answers(&g, &c, "email", json!(EMAIL), a.clone()),
            401,
            1257,
        );
        let d = b["Description"].as_str().unwrap();
        assert!(d.starts_with(&format!("{} attempt(s) left", 4 - i)), "{d}");
    }
    assert_error(
        reset_by_answers(
            &g,
            &c,
            "email",
            json!(EMAIL),
            json!({ "q1": "y", "q2": "z" }),
        ),
        429,
        1198,
    );
    // Locked: even the right answers are refused, by any identifier.
    assert_error(
        reset_by_answers(&g, &c, "email", json!(EMAIL), right.clone()),
        429,
        1198,
    );
    assert_error(
        reset_by_answers(&g, &c, "username", json!(USERNAME), right),
        429,
        1198,
    );
    // The PIN is unchanged, and its own lockout is a separate one.
    assert_pin_works(&g, &c, &at, PIN);
    assert_pin_refused(&g, &c, &at, NEW_PIN);
}

#[test]
fn reset_by_answers_for_an_unknown_account_is_refused_like_wrong_answers() {
    let g = gateway(QUESTIONS);
    let c = client();
    let (_, b) = assert_error(
        reset_by_answers(
            &g,
            &c,
            "email",
            json!("nobody@x.io"),
            json!({ "q1": "a", "q2": "b" }),
        ),
        401,
        1257,
    );
    assert!(b["Description"]
        .as_str()
        .unwrap()
        .starts_with("4 attempt(s) left"));
}

// ---------------------------------------------------------------------------
// PINAuthToken and pin.required
// ---------------------------------------------------------------------------

#[test]
fn required_pins_are_set_with_the_pinauthtoken_from_the_1243_answer() {
    let g = gateway("pin:\n  required: true\n");
    let c = client();
    let at = ann(&g);

    // Browsers are sent to the setup page.
    let r = c
        .get(g.url(APP))
        .header("Cookie", format!("access_token={at}"))
        .header("Accept", "text/html")
        .send()
        .unwrap();
    assert_eq!(r.status(), 303);
    let loc = header(&r, "location");
    assert!(
        loc.starts_with("/.stepgate/pin/setup?return_to="),
        "to setup: {loc}"
    );
    assert!(loc.contains("%2Fapp%2Fx"), "coming back here: {loc}");

    // API clients get 403 1243 with a PINAuthToken.
    let one_1243 = || {
        let (_, b) = assert_error(get_as(&g, &c, APP, &at), 403, 1243);
        let left = rfc3339(b["ExpireIn"].as_str().expect("ExpireIn")) - now();
        assert!((240..=301).contains(&left), "5 minutes: {left}");
        b["PINAuthToken"]
            .as_str()
            .filter(|t| !t.is_empty())
            .expect("PINAuthToken")
            .to_string()
    };
    let token = one_1243();
    // A client that asks again within a minute gets the same token: no new
    // token (and store write) per request.
    assert_eq!(one_1243(), token, "the same PINAuthToken within a minute");
    let spare = pin_auth_token(&g, &c, SUB);
    assert_ne!(token, spare);

    // A weak PIN does not use the token up.
    assert_error(set_by_auth_token(&g, &c, &token, "1111", "app"), 400, 1248);
    let body = assert_ok_json(set_by_auth_token(&g, &c, &token, PIN, "app"));
    assert_eq!(body["IsPosted"], true);
    assert_eq!(body["Profile"]["Uid"], SUB);
    let session = body["session_token"].as_str().expect("session_token");
    let sgs = body["access_token"].as_str().expect("access_token");
    assert!(!session.is_empty() && sgs.starts_with("sgs."), "{body}");

    // Now the route forwards, for the first-factor token and the new session.
    let echo = forwarded(get_as(&g, &c, APP, &at), APP);
    assert_eq!(echoed(&echo, "x-stepgate-user").as_deref(), Some(SUB));
    let echo = forwarded(get_as(&g, &c, APP, sgs), APP);
    assert_eq!(echoed(&echo, "x-stepgate-user").as_deref(), Some(SUB));
    assert_pin_works(&g, &c, &at, PIN);

    // A used token: 1239; another one after the PIN is set: 1247; garbage: 1239.
    assert_error(set_by_auth_token(&g, &c, &token, NEW_PIN, "app"), 401, 1239);
    assert_error(set_by_auth_token(&g, &c, &spare, NEW_PIN, "app"), 400, 1247);
    assert_error(
        set_by_auth_token(&g, &c, "garbage", NEW_PIN, "app"),
        401,
        1239,
    );
    assert_error(
        c.post(api(&g, "/pin/set/pinauthtoken"))
            .json(&json!({ "PIN": NEW_PIN }))
            .send()
            .unwrap(),
        401,
        1239,
    );
    assert_pin_works(&g, &c, &at, PIN);
}

#[test]
fn pinauthtokens_need_the_api_secret() {
    let g = gateway("");
    let c = client();
    let body = json!({ "Uid": SUB });
    let (h, _) = assert_error(
        c.post(api(&g, "/manage/pinauthtoken"))
            .json(&body)
            .send()
            .unwrap(),
        401,
        907,
    );
    assert!(h.contains_key("www-authenticate"));
    assert_error(
        bearer(c.post(api(&g, "/manage/pinauthtoken")), "wrong-secret")
            .json(&body)
            .send()
            .unwrap(),
        401,
        907,
    );
    // A user's access token is not the API secret either.
    let at = ann(&g);
    assert_error(
        bearer(c.post(api(&g, "/manage/pinauthtoken")), &at)
            .json(&body)
            .send()
            .unwrap(),
        401,
        907,
    );
    // With it: a token that sets the PIN once.
    let t = pin_auth_token(&g, &c, SUB);
    assert_ok_json(set_by_auth_token(&g, &c, &t, PIN, "app"));
    assert_pin_works(&g, &c, &at, PIN);
}

// ---------------------------------------------------------------------------
// PIN login and sessions
// ---------------------------------------------------------------------------

#[test]
fn pin_login_gives_a_session_accepted_as_the_first_factor() {
    let g = gateway("");
    let c = client();
    let (session, _) = set_pin_for_device(&g, &c, PIN, "device-A");

    let sgs = pin_login_ok(&g, &c, &session, PIN, "device-A");
    let echo = forwarded(get_as(&g, &c, APP, &sgs), APP);
    assert_eq!(echoed(&echo, "x-stepgate-user").as_deref(), Some(SUB));
    // The browser form: the same token as the stepgate_session cookie.
    let r = c
        .get(g.url(APP))
        .header("Cookie", format!("stepgate_session={sgs}"))
        .header("Accept", "application/json")
        .send()
        .unwrap();
    let echo = forwarded(r, APP);
    assert_eq!(echoed(&echo, "x-stepgate-user").as_deref(), Some(SUB));

    // Wrong PIN, other device, unknown session.
    assert_error(
        login_pin(&g, &c, &session, WRONG_PIN, "device-A"),
        401,
        1236,
    );
    assert_error(login_pin(&g, &c, &session, PIN, "device-B"), 401, 1245);
    assert_error(
        login_pin(&g, &c, "no-such-session", PIN, "device-A"),
        401,
        1245,
    );

    // Ending the session ends the stepgate session at once.
    assert_posted(
        c.get(api(&g, "/session_token/invalidate"))
            .query(&[("session_token", session.as_str())])
            .send()
            .unwrap(),
    );
    assert_unauthenticated(get_as(&g, &c, APP, &sgs));
    assert_error(
        bearer(c.get(api(&g, "/stepup/trigger")), &sgs)
            .send()
            .unwrap(),
        401,
        906,
    );
    assert_error(login_pin(&g, &c, &session, PIN, "device-A"), 401, 1245);
    assert_error(
        c.get(api(&g, "/session_token/invalidate"))
            .query(&[("session_token", session.as_str())])
            .send()
            .unwrap(),
        401,
        1245,
    );
}

#[test]
fn manage_account_invalidate_ends_pin_sessions_stepgate_sessions_and_step_ups() {
    let g = gateway("");
    let c = client();
    let at = ann(&g);
    let (session, _) = set_pin_for_device(&g, &c, PIN, "device-A");
    let sgs = pin_login_ok(&g, &c, &session, PIN, "device-A");
    let su = assert_pin_works(&g, &c, &at, PIN);
    let admin = |su: &str| protected(&g, &c, reqwest::Method::GET, "/admin/x", &at, Some(su));
    forwarded(admin(&su), "/admin/x");
    forwarded(get_as(&g, &c, APP, &sgs), APP);

    // Without or with a wrong secret: 401 907, nothing ends.
    let url = api(&g, &format!("/manage/account/{SUB}/invalidate"));
    assert_error(c.post(&url).send().unwrap(), 401, 907);
    assert_error(bearer(c.post(&url), "wrong").send().unwrap(), 401, 907);
    forwarded(get_as(&g, &c, APP, &sgs), APP);

    assert_posted(bearer(c.post(&url), API_SECRET).send().unwrap());

    assert_unauthenticated(get_as(&g, &c, APP, &sgs));
    assert_error(login_pin(&g, &c, &session, PIN, "device-A"), 401, 1245);
    let r = admin(&su);
    assert_eq!(r.status(), 401, "the step-up token is dead");
    assert!(header(&r, "www-authenticate").contains("insufficient_user_authentication"));
    // The identity provider's own token is not stepgate's to end; a new
    // step-up works at once.
    forwarded(get_as(&g, &c, APP, &at), APP);
    let su2 = assert_pin_works(&g, &c, &at, PIN);
    forwarded(admin(&su2), "/admin/x");
}

#[test]
fn with_pin_login_off_a_pinauthtoken_sets_the_pin_without_sessions() {
    let g = gateway("pin:\n  login: false\n");
    let c = client();
    let at = ann(&g);
    let t = pin_auth_token(&g, &c, SUB);
    let body = assert_ok_json(set_by_auth_token(&g, &c, &t, PIN, "device-A"));
    assert_eq!(body["IsPosted"], true);
    assert_eq!(body["Profile"]["Uid"], SUB);
    for k in [
        "session_token",
        "session_expires_in",
        "access_token",
        "expires_in",
    ] {
        assert!(body.get(k).is_none(), "no {k}: {body}");
    }
    assert_pin_works(&g, &c, &at, PIN);
    assert_error(login_pin(&g, &c, "any-session", PIN, "device-A"), 501, 1233);
}

// ---------------------------------------------------------------------------
// Webhooks
// ---------------------------------------------------------------------------

#[test]
fn the_signature_check_used_here_matches_a_known_answer() {
    // HMAC-SHA256("key", "1700000000.{}"), computed independently (Python's hmac).
    let sig = "t=1700000000,v1=9d713ed406bb7076d4123f0dc2c39d2df5c654ed4b0cd56b52c8b4c940bd63ae";
    assert!(signature_valid(b"key", sig, b"{}"));
    assert!(!signature_valid(b"key", sig, b"{ }"));
    assert!(!signature_valid(b"kez", sig, b"{}"));
    assert!(!signature_valid(
        b"key",
        "t=1700000001,v1=9d713ed406bb7076d4123f0dc2c39d2df5c654ed4b0cd56b52c8b4c940bd63ae",
        b"{}"
    ));
    assert!(!signature_valid(b"key", "t=1700000000", b"{}"));
}

#[test]
fn lifecycle_events_are_posted_to_the_webhook_signed_with_hmac_sha256() {
    let hook = Receiver::start();
    let g = gateway(&format!("{}{QUESTIONS}", webhook_config(&hook)));
    let c = client();
    let at = ann(&g);

    // SetPIN (PINAuthToken), opening a PIN session.
    let (session, _) = set_pin_for_device(&g, &c, PIN, "device-A");
    // ChangePIN with the first-factor token ends that session: SessionInvalidated.
    assert_posted(change_pin(&g, &c, &at, PIN, NEW_PIN));
    assert_error(login_pin(&g, &c, &session, NEW_PIN, "device-A"), 401, 1245);
    // ResetPIN (security answers), which steps the user down: StepDown.
    assert_posted(set_answers(&g, &c, &at, Some(NEW_PIN), &[("q1", "Lisbon")]));
    assert_posted(reset_by_answers(
        &g,
        &c,
        "email",
        json!(EMAIL),
        json!({ "q1": "lisbon" }),
    ));
    // StepDown from the back channel.
    assert_posted(
        bearer(
            c.post(api(&g, &format!("/manage/account/{SUB}/invalidate"))),
            API_SECRET,
        )
        .send()
        .unwrap(),
    );
    // SetPIN on the setup page, for another user.
    let bob = g.token("bob", &["--email", "b@x.io", "--login-age", "0"]);
    enroll_pin(&g, &c, &bob, PIN);

    hook.wait_for(7, Duration::from_secs(30));
    std::thread::sleep(Duration::from_millis(500));
    let got: Vec<Recorded> = hook.requests();
    assert_eq!(
        got.len(),
        7,
        "{:?}",
        got.iter().map(|r| r.text()).collect::<Vec<_>>()
    );

    let mut ids = BTreeSet::new();
    let mut seen: Vec<(String, String, Value)> = Vec::new();
    for r in &got {
        assert_eq!(r.path, "/hook");
        assert!(r
            .header("Content-Type")
            .unwrap_or_default()
            .starts_with("application/json"));
        let sig = r.header("X-Stepgate-Signature").expect("a signature");
        assert!(
            signature_valid(WEBHOOK_SECRET.as_bytes(), sig, &r.body),
            "the signature verifies: {sig} over {}",
            r.text()
        );
        assert!(
            (signature_time(sig) - now()).abs() <= 120,
            "t is now: {sig}"
        );
        // Anything else must not verify: another body, another secret, or
        // another time.
        let tampered = r.text().replacen("\"Uid\":\"", "\"Uid\":\"x", 1);
        assert_ne!(tampered.as_bytes(), r.body.as_slice());
        assert!(!signature_valid(
            WEBHOOK_SECRET.as_bytes(),
            sig,
            tampered.as_bytes()
        ));
        assert!(!signature_valid(
            b"another-secret-0123456789abcdef0123",
            sig,
            &r.body
        ));
        let t = signature_time(sig);
        let moved = sig.replacen(&format!("t={t}"), &format!("t={}", t + 1), 1);
        assert!(!signature_valid(WEBHOOK_SECRET.as_bytes(), &moved, &r.body));

        let body = r.json();
        let event = body["Event"].as_str().expect("Event").to_string();
        assert_eq!(r.header("X-Stepgate-Event"), Some(event.as_str()));
        let id = body["Id"].as_str().expect("Id").to_string();
        assert_eq!(r.header("X-Stepgate-Delivery"), Some(id.as_str()));
        assert!(ids.insert(id), "delivery ids are unique");
        assert!((body["Time"].as_i64().expect("Time") - now()).abs() <= 120);
        assert!(body["Data"].is_object(), "{body}");
        seen.push((
            event,
            body["Uid"].as_str().expect("Uid").to_string(),
            body["Data"].clone(),
        ));
    }
    let count = |e: &str, uid: &str| seen.iter().filter(|s| s.0 == e && s.1 == uid).count();
    let data = |e: &str, uid: &str| {
        seen.iter()
            .find(|s| s.0 == e && s.1 == uid)
            .map(|s| s.2.clone())
            .unwrap_or_else(|| panic!("a {e} event for {uid}: {seen:?}"))
    };
    assert_eq!(count("SetPIN", SUB), 1, "{seen:?}");
    assert_eq!(data("SetPIN", SUB)["Method"], "pinauthtoken");
    assert_eq!(count("SetPIN", "bob"), 1, "{seen:?}");
    assert_eq!(data("SetPIN", "bob")["Method"], "setup");
    assert_eq!(count("ChangePIN", SUB), 1, "{seen:?}");
    assert_eq!(data("ChangePIN", SUB)["EndedSessions"], 1);
    assert_eq!(count("SessionInvalidated", SUB), 1, "{seen:?}");
    assert_eq!(count("ResetPIN", SUB), 1, "{seen:?}");
    assert_eq!(data("ResetPIN", SUB)["Method"], "security_answers");
    assert_eq!(count("StepDown", SUB), 2, "{seen:?}");
}

#[test]
fn webhook_deliveries_are_retried_with_the_same_id_and_counted() {
    let hook = Receiver::start_with(Mode::Status(500));
    let (metrics, mport) = metrics_config();
    let g = gateway(&format!("{}{metrics}", webhook_config(&hook)));
    let c = client();
    let invalidate = || {
        assert_posted(
            bearer(
                c.post(api(&g, &format!("/manage/account/{SUB}/invalidate"))),
                API_SECRET,
            )
            .send()
            .unwrap(),
        )
    };

    // Refused every time: three attempts, then counted as failed.
    invalidate();
    let got = hook.wait_for(3, Duration::from_secs(30));
    wait_for_metric_sum(
        mport,
        "stepgate_webhooks_total",
        &[("outcome", "failed")],
        1.0,
    );
    std::thread::sleep(Duration::from_millis(500));
    let got2 = hook.requests();
    assert_eq!(got2.len(), 3, "three attempts, no more");
    let delivery = got[0].header("X-Stepgate-Delivery").unwrap().to_string();
    for r in &got2 {
        assert_eq!(r.header("X-Stepgate-Delivery"), Some(delivery.as_str()));
        assert_eq!(r.body, got[0].body, "the same body each time");
        let sig = r.header("X-Stepgate-Signature").unwrap();
        assert!(signature_valid(WEBHOOK_SECRET.as_bytes(), sig, &r.body));
    }
    assert_eq!(
        metric_sum(
            mport,
            "stepgate_webhooks_total",
            &[("outcome", "delivered")]
        ),
        0.0
    );

    // Refused once, then accepted: delivered on the second attempt.
    hook.set_mode_for(Mode::Status(500), 1);
    invalidate();
    let got = hook.wait_for(5, Duration::from_secs(30));
    wait_for_metric_sum(
        mport,
        "stepgate_webhooks_total",
        &[("outcome", "delivered")],
        1.0,
    );
    assert_eq!(
        got[3].header("X-Stepgate-Delivery"),
        got[4].header("X-Stepgate-Delivery")
    );
    assert_ne!(
        got[3].header("X-Stepgate-Delivery"),
        Some(delivery.as_str())
    );
    assert_eq!(got[4].json()["Event"], "StepDown");
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(hook.requests().len(), 5, "no attempt after a delivery");
    assert_eq!(
        metric_sum(mport, "stepgate_webhooks_total", &[("outcome", "failed")]),
        1.0
    );
}

// ---------------------------------------------------------------------------
// Audit log
// ---------------------------------------------------------------------------

#[test]
fn lifecycle_steps_are_audited_without_secrets() {
    let smtp = SmtpServer::start();
    let g = gateway(&format!("{}{QUESTIONS}", smtp.mail_config()));
    let c = client();
    let at = ann(&g);

    let (session, _) = set_pin_for_device(&g, &c, PIN, "device-A");
    pin_login_ok(&g, &c, &session, PIN, "device-A");
    assert_posted(change_pin(&g, &c, &at, PIN, NEW_PIN));
    assert_posted(set_answers(
        &g,
        &c,
        &at,
        Some(NEW_PIN),
        &[("q2", "Ultramarine")],
    ));
    assert_posted(forgot_email(&g, &c, "nobody@x.io", None));
    assert_posted(forgot_email(&g, &c, EMAIL, None));
    let mails = wait_for_mail(&g, &smtp, 1);
    let token = reset_token_in(&mails[0], &g.url("/.stepgate/pin/reset"));
    assert_posted(reset_by_token(&g, &c, &token, "4826"));

    let one = |event: &str| {
        let e = wait_for_audit(&g, event, 1);
        assert_eq!(e.len(), 1, "one `{event}`: {e:?}");
        e[0].clone()
    };
    let e = one("pin_session_opened");
    assert_eq!(e["user"], SUB);
    let e = one("pin_login");
    assert_eq!(
        (e["user"].as_str(), e["ip"].as_str()),
        (Some(SUB), Some("127.0.0.1"))
    );
    let e = one("pin_changed");
    assert_eq!(e["user"], SUB);
    assert_eq!(e["ip"], "127.0.0.1");
    assert!(e["detail"].as_str().unwrap().starts_with("1 other"), "{e}");
    assert_eq!(one("pin_session_ended")["user"], SUB);
    let e = one("security_answers_set");
    assert_eq!(e["user"], SUB);
    let e = one("pin_forgot_unknown");
    assert_eq!(e["user"], "");
    assert_eq!(e["detail"], "email");
    let e = one("pin_reset_sent");
    assert_eq!(
        (e["user"].as_str(), e["detail"].as_str()),
        (Some(SUB), Some("email"))
    );
    let e = one("pin_reset");
    assert_eq!(
        (e["user"].as_str(), e["detail"].as_str()),
        (Some(SUB), Some("token"))
    );
    assert_eq!(one("invalidate")["user"], SUB);

    // Reset tokens, session tokens and answers are never logged.
    let log = g.log();
    for secret in [
        token.as_str(),
        session.as_str(),
        "ultramarine",
        "Ultramarine",
    ] {
        assert!(!log.contains(secret), "the log does not contain {secret:?}");
    }
}
