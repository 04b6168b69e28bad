//! The JSON API under `/.stepgate/api/` over real sockets, as an API client
//! (a single-page app, a mobile app, a script) uses it: the RFC 9470
//! challenge on protected routes, the trigger, PIN and email-OTP step-ups
//! (mail through a real SMTP server, Python's `aiosmtpd`), tokens presented
//! in `X-Stepgate-Token`, single-use rules, back-channel validation with the
//! API secret, and every error code with its HTTP status.
//!
//! Missing `python3` or `aiosmtpd` is a failure, never a skip: the README's
//! test command, `scripts/test.sh`, installs them.

mod common;

use common::api::*;
use common::smtp::{smtp_mail_config, SmtpServer};
use common::*;

use reqwest::blocking::{Client, Response};
use serde_json::{json, Value};

const PIN: &str = "2580";
const WRONG_PIN: &str = "1397";
/// The user's addresses, as the identity provider puts them in the token.
const A: &str = "alice@x.test";
const B: &str = "alice.work@x.test";

const POLICY: &str = r#"
default: authenticated
rules:
  - name: transfer
    match: { path: "/transfer", methods: [POST] }
    require: step_up
    step_up: { methods: [pin, email_otp], max_age: 0 }
  - name: admin
    match: { path: "/admin/**" }
    require: step_up
    step_up: { methods: [pin], max_age: 5m }
  - name: billing
    match: { path: "/billing/**" }
    require: step_up
    step_up: { methods: [pin, email_otp], max_age: 10m }
"#;

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

/// A gateway with this file's policy and `extra` top-level config.
fn gateway(extra: &str) -> Gateway {
    Gateway::start_with(GatewayOptions {
        policy: POLICY.to_string(),
        extra_config: extra.to_string(),
        ..Default::default()
    })
}

fn alice(g: &Gateway) -> String {
    g.token("alice", &["--email", A, "--email", B])
}

/// `{SecondFactorValidationToken, ExpireIn}`: the token, after checking that
/// ExpireIn is an RFC 3339 time in the future.
fn token_of(r: Response) -> String {
    let body = assert_ok_json(r);
    let expire_in = body["ExpireIn"].as_str().expect("ExpireIn");
    let t = time::OffsetDateTime::parse(expire_in, &time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|e| panic!("ExpireIn {expire_in:?} is RFC 3339: {e}"));
    let left = t.unix_timestamp() - now();
    // The policy's longest max_age is 10 minutes.
    assert!(
        (500..=601).contains(&left),
        "ExpireIn is about 10 minutes ahead, got {left} s"
    );
    body["SecondFactorValidationToken"]
        .as_str()
        .expect("SecondFactorValidationToken")
        .to_string()
}

/// A PIN step-up through the API; the user must have a PIN.
fn pin_token(g: &Gateway, c: &Client, at: &str) -> String {
    token_of(put_pin(g, c, at, PIN))
}

/// The RFC 9470 challenge an API client gets; returns the JSON body.
fn assert_challenge(r: Response, acr_values: &str, max_age: u64, description: &str) -> Value {
    assert_eq!(r.status(), 401);
    assert_eq!(
        header(&r, "www-authenticate"),
        format!(
            "Bearer error=\"insufficient_user_authentication\", error_description=\"{description}\", acr_values=\"{acr_values}\", max_age={max_age}"
        )
    );
    assert!(header(&r, "content-type").starts_with("application/json"));
    let body: Value = r.json().unwrap();
    assert_eq!(body["error"], "insufficient_user_authentication");
    assert_eq!(body["error_description"], description);
    let methods: Vec<&str> = acr_values.split(' ').collect();
    assert_eq!(body["methods"], json!(methods));
    assert_eq!(body["max_age"], max_age);
    body
}

// ---------------------------------------------------------------------------
// Mail: a real SMTP server (tests/common/smtp.rs starts aiosmtpd)
// ---------------------------------------------------------------------------

/// Wait until `n` messages arrived; the code in the last one, after
/// checking it went to `to`.
fn code_sent(smtp: &SmtpServer, n: usize, to: &str) -> String {
    let m = smtp.wait_for_messages(n);
    assert_eq!(m.len(), n, "exactly {n} message(s) so far");
    let last = m.last().unwrap();
    let recipient = last.header("To").unwrap_or_default();
    assert!(
        recipient.contains(to),
        "the code went to {to}, not {recipient}"
    );
    last.code()
}

fn send_otp(g: &Gateway, c: &Client, at: &str, emailid: Option<&str>) -> Response {
    let url = match emailid {
        Some(e) => format!("{}?emailid={e}", api(g, "/stepup/otp/email")),
        None => api(g, "/stepup/otp/email"),
    };
    bearer(c.get(url), at).send().unwrap()
}

fn verify_otp(g: &Gateway, c: &Client, at: &str, body: Value) -> Response {
    bearer(c.put(api(g, "/stepup/otp/email")), at)
        .json(&body)
        .send()
        .unwrap()
}

/// The same code with its first digit changed.
fn wrong(code: &str) -> String {
    let first = if code.starts_with('9') { '0' } else { '9' };
    format!("{first}{}", &code[1..])
}

// ---------------------------------------------------------------------------
// RFC 9470 challenge
// ---------------------------------------------------------------------------

#[test]
fn protected_routes_answer_api_clients_with_an_rfc9470_challenge() {
    let g = gateway("");
    let c = client();
    let at = alice(&g);
    let missing = "this resource requires a step-up authentication";
    let body = assert_challenge(
        protected(&g, &c, reqwest::Method::GET, "/admin/x?y=1", &at, None),
        "pin",
        300,
        missing,
    );
    assert_eq!(
        body["endpoints"],
        json!({
            "trigger": "/.stepgate/api/stepup/trigger",
            "pin": "/.stepgate/api/stepup/pin",
            "email_otp_send": "/.stepgate/api/stepup/otp/email",
            "email_otp_verify": "/.stepgate/api/stepup/otp/email",
            "present_token_in": "X-Stepgate-Token",
        })
    );
    assert_eq!(
        body["challenge"],
        "/.stepgate/challenge?return_to=%2Fadmin%2Fx%3Fy%3D1"
    );
    // Both factors, in the policy's order; and the single-use rule says max_age=0.
    assert_challenge(
        protected(&g, &c, reqwest::Method::GET, "/billing/invoices", &at, None),
        "pin email_otp",
        600,
        missing,
    );
    assert_challenge(
        protected(&g, &c, reqwest::Method::POST, "/transfer", &at, None),
        "pin email_otp",
        0,
        missing,
    );
    // A token that is not one: the description says so, and LoginRadius's
    // code for it (1193) is there for clients written to its API.
    let body = assert_challenge(
        protected(
            &g,
            &c,
            reqwest::Method::GET,
            "/admin/x",
            &at,
            Some("not.a.token"),
        ),
        "pin",
        300,
        "the step-up token is invalid or expired",
    );
    assert_eq!(body["ErrorCode"], 1193, "{body}");
    assert_eq!(
        body["Description"], "the step-up token is invalid or expired",
        "{body}"
    );
    // No token at all is not an invalid one.
    let body = assert_challenge(
        protected(&g, &c, reqwest::Method::GET, "/admin/x", &at, None),
        "pin",
        300,
        "this resource requires a step-up authentication",
    );
    assert!(body.get("ErrorCode").is_none(), "{body}");
    // A browser on the same route is sent to the challenge page instead.
    let r = c
        .get(g.url("/admin/x"))
        .header("Authorization", format!("Bearer {at}"))
        .header("Accept", "text/html")
        .send()
        .unwrap();
    assert_eq!(r.status(), 303);
    assert_eq!(
        header(&r, "location"),
        "/.stepgate/challenge?return_to=%2Fadmin%2Fx"
    );
}

// ---------------------------------------------------------------------------
// Trigger
// ---------------------------------------------------------------------------

#[test]
fn trigger_reports_the_pin_and_the_profile_addresses() {
    // Without mail settings, email codes cannot be offered.
    let g = gateway("");
    let c = client();
    let at = alice(&g);
    let get = |at: &str| {
        let v = assert_ok_json(
            bearer(c.get(api(&g, "/stepup/trigger")), at)
                .send()
                .unwrap(),
        );
        // LoginRadius's other factors: stepgate has none of them.
        assert_eq!(v["IsOTPAuthenticatorVerified"], false, "{v}");
        assert_eq!(v["OTPPhoneNo"], "", "{v}");
        json!({"IsPINSet": v["IsPINSet"], "IsEmailOtpAuthenticatorVerified": v["IsEmailOtpAuthenticatorVerified"], "Email": v["Email"]})
    };
    assert_eq!(
        get(&at),
        json!({"IsPINSet": false, "IsEmailOtpAuthenticatorVerified": false, "Email": [A, B]})
    );
    enroll_pin(&g, &c, &at, PIN);
    assert_eq!(
        get(&at),
        json!({"IsPINSet": true, "IsEmailOtpAuthenticatorVerified": false, "Email": [A, B]})
    );
    // Another user of the same gateway has no PIN and no addresses.
    let bob = g.token("bob", &[]);
    assert_eq!(
        get(&bob),
        json!({"IsPINSet": false, "IsEmailOtpAuthenticatorVerified": false, "Email": []})
    );
    // Addresses are compared and reported in lower case.
    let upper = g.token("carol", &["--email", "Carol@X.Test"]);
    assert_eq!(get(&upper)["Email"], json!(["carol@x.test"]));
}

#[test]
fn trigger_says_email_otp_is_available_when_mail_is_configured() {
    // Without MFA (the default mode) every profile address can take a code.
    let g = gateway("mail:\n  from: \"stepgate@gateway.test\"\n  dir: mailbox\n");
    let c = client();
    let at = alice(&g);
    let v = assert_ok_json(
        bearer(c.get(api(&g, "/stepup/trigger")), &at)
            .send()
            .unwrap(),
    );
    let body = json!({"IsPINSet": v["IsPINSet"], "IsEmailOtpAuthenticatorVerified": v["IsEmailOtpAuthenticatorVerified"], "Email": v["Email"]});
    assert_eq!(
        body,
        json!({"IsPINSet": false, "IsEmailOtpAuthenticatorVerified": true, "Email": [A, B]})
    );
    // A user without addresses has no email authenticator.
    let bob = g.token("bob", &[]);
    let body = assert_ok_json(
        bearer(c.get(api(&g, "/stepup/trigger")), &bob)
            .send()
            .unwrap(),
    );
    assert_eq!(body["IsEmailOtpAuthenticatorVerified"], false);
}

// ---------------------------------------------------------------------------
// PIN step-up
// ---------------------------------------------------------------------------

#[test]
fn pin_step_up_returns_a_token_that_opens_the_protected_route() {
    let g = gateway("");
    let c = client();
    let at = alice(&g);
    enroll_pin(&g, &c, &at, PIN);
    let su = pin_token(&g, &c, &at);
    let r = protected(&g, &c, reqwest::Method::GET, "/admin/x", &at, Some(&su));
    let echo = forwarded(r, "/admin/x");
    assert_eq!(echoed(&echo, "x-stepgate-user").as_deref(), Some("alice"));
    assert_eq!(echoed(&echo, "x-stepgate-amr").as_deref(), Some("pin"));
    assert_eq!(echoed(&echo, "x-stepgate-rule").as_deref(), Some("admin"));
    assert_eq!(
        echoed(&echo, "x-stepgate-token"),
        None,
        "the token stays with stepgate"
    );
    let auth_time: i64 = echoed(&echo, "x-stepgate-auth-time")
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        (now() - auth_time).abs() <= 60,
        "auth_time is the step-up's time"
    );
    // The same token opens the other rule that accepts a PIN.
    let r = protected(&g, &c, reqwest::Method::GET, "/billing/x", &at, Some(&su));
    forwarded(r, "/billing/x");
    // Field names are matched case-insensitively, as LoginRadius clients vary.
    let r = bearer(c.put(api(&g, "/stepup/pin")), &at)
        .json(&json!({ "pin": PIN }))
        .send()
        .unwrap();
    token_of(r);
    // The token is bound to the first-factor session it was made in.
    let other_session = alice(&g);
    assert_challenge(
        protected(
            &g,
            &c,
            reqwest::Method::GET,
            "/admin/x",
            &other_session,
            Some(&su),
        ),
        "pin",
        300,
        "the step-up token belongs to another session",
    );
}

#[test]
fn wrong_pins_count_down_then_lock_with_locked_until_and_retry_after() {
    let g = gateway("");
    let c = client();
    let at = alice(&g);
    enroll_pin(&g, &c, &at, PIN);
    for left in (1..=4).rev() {
        let (_, body) = assert_error(put_pin(&g, &c, &at, WRONG_PIN), 401, 1236);
        let d = body["Description"].as_str().unwrap();
        assert!(
            d.starts_with(&format!("{left} attempt(s) left")),
            "{left} attempts left: {d}"
        );
    }
    // The fifth wrong PIN locks.
    let before = now();
    let (h, body) = assert_error(put_pin(&g, &c, &at, WRONG_PIN), 429, 1198);
    let until = time::OffsetDateTime::parse(
        body["LockedUntil"].as_str().expect("LockedUntil"),
        &time::format_description::well_known::Rfc3339,
    )
    .expect("LockedUntil is RFC 3339")
    .unix_timestamp();
    // Default lockout: 15 minutes (its end rounded up to the second).
    assert!(
        (before + 890..=now() + 901).contains(&until),
        "locked for 15 minutes: until {until}, now {before}"
    );
    let retry: i64 = h["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((880..=901).contains(&retry), "Retry-After {retry}");
    // Locked: even the right PIN is refused, and no token comes out.
    let (h, body) = assert_error(put_pin(&g, &c, &at, PIN), 429, 1198);
    assert!(h.contains_key("retry-after"));
    assert!(body.get("SecondFactorValidationToken").is_none());
}

#[test]
fn pin_step_up_without_a_pin_is_403_1235() {
    let g = gateway("");
    let c = client();
    let at = alice(&g);
    assert_error(put_pin(&g, &c, &at, PIN), 403, 1235);
}

// ---------------------------------------------------------------------------
// Request shape errors
// ---------------------------------------------------------------------------

#[test]
fn malformed_json_and_missing_or_mistyped_fields_are_400_901() {
    let g = gateway(&api_secret_config());
    let c = client();
    let at = alice(&g);
    enroll_pin(&g, &c, &at, PIN);
    let raw = |route: &str, body: &str| {
        bearer(c.put(api(&g, route)), &at)
            .header("Content-Type", "application/json")
            .body(body.to_string())
            .send()
            .unwrap()
    };
    for route in ["/stepup/pin", "/stepup/otp/email"] {
        for body in ["{\"PIN\": ", "not json", "", "[\"2580\"]", "\"2580\""] {
            let (_, b) = assert_error(raw(route, body), 400, 901);
            assert_eq!(b["Message"], "Malformed JSON", "{route} {body:?}");
        }
    }
    let (_, b) = assert_error(raw("/stepup/pin", "{}"), 400, 901);
    assert_eq!(b["Message"], "Missing field");
    assert!(b["Description"].as_str().unwrap().contains("pin"));
    let (_, b) = assert_error(raw("/stepup/pin", "{\"PIN\": 2580}"), 400, 901);
    assert_eq!(b["Message"], "Invalid field");
    let (_, b) = assert_error(
        raw("/stepup/otp/email", "{\"EmailId\": \"alice@x.test\"}"),
        400,
        901,
    );
    assert_eq!(b["Message"], "Missing field");
    assert!(b["Description"].as_str().unwrap().contains("otp"));
    // Validation: the token field is required too.
    let v = c
        .post(api(&g, "/stepup/validate"))
        .header("Authorization", format!("Bearer {API_SECRET}"))
        .json(&json!({}))
        .send()
        .unwrap();
    let (_, b) = assert_error(v, 400, 901);
    assert!(b["Description"]
        .as_str()
        .unwrap()
        .contains("secondfactorvalidationtoken"));
    // None of these counted as a wrong PIN: the right one still works.
    pin_token(&g, &c, &at);
}

#[test]
fn bodies_over_16_kib_get_a_json_413() {
    let g = gateway(&api_secret_config());
    let c = client();
    let at = alice(&g);
    let big = format!("{{\"PIN\": \"{}\"}}", "1".repeat(17 * 1024));
    // Declared with Content-Length.
    let r = bearer(c.put(api(&g, "/stepup/pin")), &at)
        .header("Content-Type", "application/json")
        .body(big.clone())
        .send()
        .unwrap();
    assert_error(r, 413, 901);
    // Streamed (chunked, no Content-Length).
    let r = bearer(c.put(api(&g, "/stepup/otp/email")), &at)
        .header("Content-Type", "application/json")
        .body(reqwest::blocking::Body::new(std::io::Cursor::new(
            big.clone().into_bytes(),
        )))
        .send()
        .unwrap();
    assert_error(r, 413, 901);
    let r = c
        .post(api(&g, "/stepup/validate"))
        .header("Authorization", format!("Bearer {API_SECRET}"))
        .body(big)
        .send()
        .unwrap();
    assert_error(r, 413, 901);
    // Exactly 16 KiB is still read (and then judged on its content).
    let mut exact = format!("{{\"PIN\": \"{PIN}\", \"pad\": \"");
    exact.push_str(&" ".repeat(16 * 1024 - exact.len() - 2));
    exact.push_str("\"}");
    assert_eq!(exact.len(), 16 * 1024);
    let r = bearer(c.put(api(&g, "/stepup/pin")), &at)
        .body(exact)
        .send()
        .unwrap();
    assert_error(r, 403, 1235);
}

#[test]
fn missing_or_invalid_access_token_is_401_906() {
    let g = gateway("");
    let c = client();
    let other_key = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &json!({"sub": "alice", "iat": now(), "exp": now() + 3600, "sid": "s1"}),
        &jsonwebtoken::EncodingKey::from_secret(b"not-the-gateway-secret-0123456789abcdef"),
    )
    .unwrap();
    let expired = g.token("alice", &["--ttl=-3600"]);
    let calls: Vec<(&str, &str)> = vec![
        ("GET", "/stepup/trigger"),
        ("PUT", "/stepup/pin"),
        ("GET", "/stepup/otp/email"),
        ("PUT", "/stepup/otp/email"),
    ];
    for (method, route) in calls {
        for at in [
            None,
            Some("garbage"),
            Some(other_key.as_str()),
            Some(expired.as_str()),
        ] {
            let mut rb = c
                .request(method.parse().unwrap(), api(&g, route))
                .json(&json!({"PIN": PIN, "OTP": "123456"}));
            if let Some(at) = at {
                rb = bearer(rb, at);
            }
            let (h, _) = assert_error(rb.send().unwrap(), 401, 906);
            let www = h["www-authenticate"].to_str().unwrap();
            assert!(
                www.starts_with("Bearer realm=\"stepgate\""),
                "{method} {route} with {at:?}: {www}"
            );
        }
    }
    // The API reads the access token from Authorization only: the cookie
    // alone is refused, so a cross-site link cannot send codes in the
    // user's name (GET /stepup/otp/email) or spend their cooldown.
    let at = alice(&g);
    let r = c
        .get(api(&g, "/stepup/otp/email"))
        .header("Cookie", format!("access_token={at}"))
        .send()
        .unwrap();
    assert_eq!(r.status(), 401);
    let body: serde_json::Value = r.json().unwrap();
    assert_eq!(body["ErrorCode"], 906);
    let r = c
        .get(api(&g, "/stepup/trigger"))
        .header("Authorization", format!("Bearer {at}"))
        .send()
        .unwrap();
    assert_ok_json(r);
}

/// RFC 6750 §3.1: when a request carried an access token that failed, the
/// challenge says `error="invalid_token"` (so a client knows to get a new
/// token rather than to sign in). Protected routes do; the API must answer
/// the same token with the same challenge.
#[test]
fn a_rejected_access_token_gets_the_same_challenge_from_the_api_as_from_protected_routes() {
    let g = gateway("");
    let c = client();
    let expired = g.token("alice", &["--ttl=-3600"]);
    for at in ["garbage", expired.as_str()] {
        let on_route = c
            .get(g.url("/admin/x"))
            .header("Authorization", format!("Bearer {at}"))
            .send()
            .unwrap();
        assert_eq!(on_route.status(), 401);
        let expected = header(&on_route, "www-authenticate");
        assert!(expected.contains("error=\"invalid_token\""), "{expected}");
        let r = bearer(c.get(api(&g, "/stepup/trigger")), at)
            .send()
            .unwrap();
        let (h, _) = assert_error(r, 401, 906);
        assert_eq!(
            h["www-authenticate"].to_str().unwrap(),
            expected,
            "the API's challenge for the token {at:.20}…"
        );
    }
    // Without any token, both say only the realm.
    let r = c.get(api(&g, "/stepup/trigger")).send().unwrap();
    let (h, _) = assert_error(r, 401, 906);
    assert_eq!(h["www-authenticate"], "Bearer realm=\"stepgate\"");
}

#[test]
fn unknown_routes_and_methods_get_json_errors() {
    let g = gateway("");
    let c = client();
    let at = alice(&g);
    let r = bearer(c.get(api(&g, "/stepup/nothing")), &at)
        .send()
        .unwrap();
    assert_error(r, 404, 901);
    let r = bearer(c.delete(api(&g, "/stepup/pin")), &at)
        .send()
        .unwrap();
    assert_error(r, 405, 901);
    let r = bearer(c.post(api(&g, "/stepup/trigger")), &at)
        .send()
        .unwrap();
    assert_error(r, 405, 901);
    let r = c.get(api(&g, "/stepup/validate")).send().unwrap();
    assert_error(r, 405, 901);
}

// ---------------------------------------------------------------------------
// Email OTP through a real SMTP server
// ---------------------------------------------------------------------------

#[test]
fn email_otp_send_and_verify_through_real_smtp_gives_a_token() {
    let smtp = SmtpServer::start();
    let g = gateway(&smtp.mail_config());
    let c = client();
    let at = alice(&g);
    // The second address of the profile, as chosen from the trigger's list.
    let trigger = assert_ok_json(
        bearer(c.get(api(&g, "/stepup/trigger")), &at)
            .send()
            .unwrap(),
    );
    assert_eq!(trigger["IsEmailOtpAuthenticatorVerified"], true);
    assert_eq!(trigger["Email"], json!([A, B]));
    let r = send_otp(&g, &c, &at, Some(B));
    assert_eq!(assert_ok_json(r), json!({"IsPosted": true}));
    let code = code_sent(&smtp, 1, B);
    let su = token_of(verify_otp(&g, &c, &at, json!({"EmailId": B, "OTP": code})));
    let echo = forwarded(
        protected(&g, &c, reqwest::Method::GET, "/billing/x", &at, Some(&su)),
        "/billing/x",
    );
    assert_eq!(echoed(&echo, "x-stepgate-user").as_deref(), Some("alice"));
    assert_eq!(echoed(&echo, "x-stepgate-amr").as_deref(), Some("otp"));
    assert_eq!(echoed(&echo, "x-stepgate-rule").as_deref(), Some("billing"));
    // /admin takes PINs only: an email step-up does not open it.
    assert_challenge(
        protected(&g, &c, reqwest::Method::GET, "/admin/x", &at, Some(&su)),
        "pin",
        300,
        "this resource requires a different step-up method",
    );
    // The code was used: replaying it gives no second token.
    let (_, body) = assert_error(
        verify_otp(&g, &c, &at, json!({"EmailId": B, "OTP": code})),
        400,
        1252,
    );
    assert!(body.get("SecondFactorValidationToken").is_none());
}

#[test]
fn email_otp_without_emailid_goes_to_the_primary_address() {
    let smtp = SmtpServer::start();
    let g = gateway(&smtp.mail_config());
    let c = client();
    let at = alice(&g);
    assert_ok_json(send_otp(&g, &c, &at, None));
    let code = code_sent(&smtp, 1, A);
    // LoginRadius spells it `Otp` in the MFA variant; EmailId is optional.
    token_of(verify_otp(&g, &c, &at, json!({"Otp": code})));
}

#[test]
fn email_otp_refusals_carry_their_error_codes() {
    let smtp = SmtpServer::start();
    let g = gateway(&smtp.mail_config());
    let c = client();
    let at = alice(&g);
    // An address outside the profile: nothing is sent.
    let (_, b) = assert_error(send_otp(&g, &c, &at, Some("mallory@evil.test")), 400, 1340);
    assert!(b["Description"]
        .as_str()
        .unwrap()
        .contains("Nothing was sent"));
    // No code asked for yet.
    assert_error(
        verify_otp(&g, &c, &at, json!({"EmailId": A, "OTP": "123456"})),
        400,
        1252,
    );
    assert_ok_json(send_otp(&g, &c, &at, Some(A)));
    let code = code_sent(&smtp, 1, A);
    // A second send within the cooldown.
    let (h, b) = assert_error(send_otp(&g, &c, &at, Some(A)), 429, 1179);
    let retry: i64 = h["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=30).contains(&retry), "Retry-After {retry}");
    assert!(b["Description"].as_str().unwrap().contains("seconds"));
    // Verifying with an address outside the profile.
    assert_error(
        verify_otp(
            &g,
            &c,
            &at,
            json!({"EmailId": "mallory@evil.test", "OTP": code}),
        ),
        400,
        1340,
    );
    // A wrong code, with the tries left.
    let (_, b) = assert_error(
        verify_otp(&g, &c, &at, json!({"EmailId": A, "OTP": wrong(&code)})),
        401,
        1253,
    );
    assert!(
        b["Description"]
            .as_str()
            .unwrap()
            .starts_with("4 attempt(s) left"),
        "{b}"
    );
    // The right one still works once; then it is gone.
    token_of(verify_otp(&g, &c, &at, json!({"EmailId": A, "OTP": code})));
    assert_error(
        verify_otp(&g, &c, &at, json!({"EmailId": A, "OTP": code})),
        400,
        1252,
    );
    assert_eq!(smtp.messages().len(), 1, "only one mail was sent");
}

#[test]
fn email_otp_send_failure_is_502_1251_and_missing_mail_settings_501_1233() {
    // Nothing listens on this port: the send fails and uses nothing up.
    let g = gateway(&smtp_mail_config(free_port()));
    let c = client();
    let at = alice(&g);
    assert_error(send_otp(&g, &c, &at, Some(A)), 502, 1251);
    assert_error(send_otp(&g, &c, &at, Some(A)), 502, 1251);
    drop(g);
    let g = gateway("");
    let at = alice(&g);
    assert_error(send_otp(&g, &c, &at, Some(A)), 501, 1233);
}

#[test]
fn email_otp_in_mfa_mode_verifies_the_authenticator_first() {
    let smtp = SmtpServer::start();
    let g = gateway(&format!("{}email_otp:\n  mode: mfa\n", smtp.mail_config()));
    let c = client();
    let at = alice(&g);
    let trigger = |at: &str| {
        assert_ok_json(
            bearer(c.get(api(&g, "/stepup/trigger")), at)
                .send()
                .unwrap(),
        )
    };
    assert_eq!(trigger(&at)["IsEmailOtpAuthenticatorVerified"], false);
    assert_ok_json(send_otp(&g, &c, &at, Some(B)));
    let code = code_sent(&smtp, 1, B);
    token_of(verify_otp(&g, &c, &at, json!({"EmailId": B, "OTP": code})));
    assert_eq!(trigger(&at)["IsEmailOtpAuthenticatorVerified"], true);
    assert_eq!(trigger(&at)["Email"], json!([A, B]));
    // Enrolling another address needs a recent login; the verified one does not.
    let stale = g.token(
        "alice",
        &["--email", A, "--email", B, "--login-age", "86400"],
    );
    assert_error(send_otp(&g, &c, &stale, Some(A)), 403, 1250);
    assert_eq!(smtp.messages().len(), 1, "nothing was sent");
}

// ---------------------------------------------------------------------------
// Single-use rules
// ---------------------------------------------------------------------------

#[test]
fn single_use_rule_accepts_a_token_once() {
    let g = gateway("");
    let c = client();
    let at = alice(&g);
    enroll_pin(&g, &c, &at, PIN);
    let su = pin_token(&g, &c, &at);
    let r = protected(&g, &c, reqwest::Method::POST, "/transfer", &at, Some(&su));
    let echo = forwarded(r, "/transfer");
    assert_eq!(
        echoed(&echo, "x-stepgate-rule").as_deref(),
        Some("transfer")
    );
    assert_challenge(
        protected(&g, &c, reqwest::Method::POST, "/transfer", &at, Some(&su)),
        "pin email_otp",
        0,
        "this resource requires a new step-up for every request",
    );
    // A new step-up opens it again, once.
    let su2 = pin_token(&g, &c, &at);
    let r = protected(&g, &c, reqwest::Method::POST, "/transfer", &at, Some(&su2));
    forwarded(r, "/transfer");
    let r = protected(&g, &c, reqwest::Method::POST, "/transfer", &at, Some(&su2));
    assert_eq!(r.status(), 401);
}

/// A POST with a body is first judged as every method `_method` in it could
/// make it; when one of those is denied, that judgement is `deny`, and only
/// reading the body narrows it to the POST's own rule. A used single-use
/// token was once judged again without that narrowing, matched nothing to
/// ask a step-up for, and went on upstream: a replay without limit.
#[test]
fn a_used_single_use_token_is_refused_when_the_body_could_name_a_denied_method() {
    let g = Gateway::start_with(GatewayOptions {
        policy: r#"
default: authenticated
rules:
  - name: close
    match: { path: "/account/close", methods: [POST] }
    require: step_up
    step_up: { methods: [pin], max_age: 0 }
  - name: account-writes
    match: { path: "/account/**", methods: [DELETE, PUT, PATCH] }
    require: deny
"#
        .to_string(),
        ..Default::default()
    });
    let c = client();
    let at = alice(&g);
    enroll_pin(&g, &c, &at, PIN);
    let su = assert_ok_json(put_pin(&g, &c, &at, PIN))["SecondFactorValidationToken"]
        .as_str()
        .expect("a step-up token")
        .to_string();
    let post = |body: &'static str, content_type: &str| {
        bearer(c.post(g.url("/account/close")), &at)
            .header("Accept", "application/json")
            .header("X-Stepgate-Token", &su)
            .header("Content-Type", content_type)
            .body(body)
            .send()
            .unwrap()
    };
    let echo = forwarded(
        post(r#"{"confirm":true}"#, "application/json"),
        "/account/close",
    );
    assert_eq!(echoed(&echo, "x-stepgate-rule").as_deref(), Some("close"));
    for (body, content_type) in [
        (r#"{"confirm":true}"#, "application/json"),
        ("confirm=yes", "application/x-www-form-urlencoded"),
    ] {
        assert_challenge(
            post(body, content_type),
            "pin",
            0,
            "this resource requires a new step-up for every request",
        );
    }
    // The body that does name a denied method is denied, used token or not.
    let r = post("_method=DELETE", "application/x-www-form-urlencoded");
    assert_eq!(r.status(), 403);
}

// ---------------------------------------------------------------------------
// Back-channel validation
// ---------------------------------------------------------------------------

fn validate(g: &Gateway, c: &Client, secret: Option<&str>, body: Value) -> Response {
    let mut rb = c.post(api(g, "/stepup/validate")).json(&body);
    if let Some(s) = secret {
        rb = rb.header("Authorization", format!("Bearer {s}"));
    }
    rb.send().unwrap()
}

fn is_valid(g: &Gateway, c: &Client, body: Value) -> bool {
    let b = assert_ok_json(validate(g, c, Some(API_SECRET), body));
    b["IsValid"].as_bool().expect("IsValid is a boolean")
}

/// `s` with the character at byte `i` replaced by another base64url one.
fn flip(s: &str, i: usize) -> String {
    let mut b = s.as_bytes().to_vec();
    b[i] = if b[i] == b'A' { b'B' } else { b'A' };
    String::from_utf8(b).unwrap()
}

#[test]
fn validate_with_the_api_secret_says_whether_a_token_is_valid() {
    let g = gateway(&api_secret_config());
    let c = client();
    let at = alice(&g);
    enroll_pin(&g, &c, &at, PIN);
    let su = pin_token(&g, &c, &at);
    assert!(is_valid(
        &g,
        &c,
        json!({"secondfactorvalidationtoken": su, "uid": "alice"})
    ));
    // LoginRadius's casing works as well.
    assert!(is_valid(
        &g,
        &c,
        json!({"SecondFactorValidationToken": su, "Uid": "alice"})
    ));
    // The uid is required: a back end must say whose token it checks.
    let (_, b) = assert_error(
        validate(
            &g,
            &c,
            Some(API_SECRET),
            json!({"secondfactorvalidationtoken": su}),
        ),
        400,
        901,
    );
    assert!(b["Description"].as_str().unwrap().contains("Uid"), "{b}");
    // Bound to a user: another one does not pass.
    assert!(!is_valid(
        &g,
        &c,
        json!({"secondfactorvalidationtoken": su, "uid": "bob"})
    ));
    let r = c
        .post(format!("{}?uid=bob", api(&g, "/stepup/validate")))
        .header("Authorization", format!("Bearer {API_SECRET}"))
        .json(&json!({"secondfactorvalidationtoken": su}))
        .send()
        .unwrap();
    assert_eq!(assert_ok_json(r)["IsValid"], false, "uid in the query");
    // Tampered: in the signature, in the payload, or not a token at all.
    let sig = su.rfind('.').unwrap() + 1;
    let tampered_sig = flip(&su, sig + (su.len() - sig) / 2);
    assert!(!is_valid(
        &g,
        &c,
        json!({"secondfactorvalidationtoken": tampered_sig, "uid": "alice"})
    ));
    let tampered_payload = flip(&su, su.find('.').unwrap() + 5);
    assert!(!is_valid(
        &g,
        &c,
        json!({"secondfactorvalidationtoken": tampered_payload, "uid": "alice"})
    ));
    assert!(!is_valid(
        &g,
        &c,
        json!({"secondfactorvalidationtoken": "", "uid": "alice"})
    ));
    assert!(
        !is_valid(
            &g,
            &c,
            json!({"secondfactorvalidationtoken": at, "uid": "alice"})
        ),
        "an access token is not a step-up token"
    );
}

#[test]
fn validate_without_or_with_a_wrong_secret_is_401_907() {
    let g = gateway(&api_secret_config());
    let c = client();
    let at = alice(&g);
    enroll_pin(&g, &c, &at, PIN);
    let su = pin_token(&g, &c, &at);
    let body = json!({"secondfactorvalidationtoken": su});
    let longer = format!("{API_SECRET}x");
    let wrong_secrets = [
        None,
        Some(""),
        Some("wrong"),
        Some(&API_SECRET[..API_SECRET.len() - 1]),
        Some(longer.as_str()),
    ];
    for s in wrong_secrets {
        let (h, b) = assert_error(validate(&g, &c, s, body.clone()), 401, 907);
        assert_eq!(h["www-authenticate"], "Bearer realm=\"stepgate-api\"");
        assert!(b.get("IsValid").is_none());
    }
    // Basic instead of Bearer, and the user's access token, are not the secret.
    let r = c
        .post(api(&g, "/stepup/validate"))
        .header("Authorization", format!("Basic {API_SECRET}"))
        .json(&body)
        .send()
        .unwrap();
    assert_error(r, 401, 907);
    assert_error(validate(&g, &c, Some(&at), body.clone()), 401, 907);
    // The secret comes before the body is looked at.
    let r = c
        .post(api(&g, "/stepup/validate"))
        .body("not json")
        .send()
        .unwrap();
    assert_error(r, 401, 907);
}

/// RFC 9110 §11.1: the authentication scheme is case-insensitive. The
/// gateway reads access tokens after `Bearer ` or `bearer `; the API secret
/// and other spellings must be read the same way.
#[test]
fn the_bearer_scheme_is_read_case_insensitively() {
    let g = gateway(&api_secret_config());
    let c = client();
    let at = alice(&g);
    enroll_pin(&g, &c, &at, PIN);
    let su = pin_token(&g, &c, &at);
    for scheme in ["Bearer", "bearer", "BEARER"] {
        let r = c
            .post(api(&g, "/stepup/validate"))
            .header("Authorization", format!("{scheme} {API_SECRET}"))
            .json(&json!({"secondfactorvalidationtoken": su, "uid": "alice"}))
            .send()
            .unwrap();
        assert_eq!(
            r.status(),
            200,
            "API secret after `{scheme} `: {}",
            r.text().unwrap()
        );
        let r = c
            .get(api(&g, "/stepup/trigger"))
            .header("Authorization", format!("{scheme} {at}"))
            .send()
            .unwrap();
        assert_eq!(
            r.status(),
            200,
            "access token after `{scheme} `: {}",
            r.text().unwrap()
        );
    }
}

#[test]
fn validate_without_a_configured_api_secret_is_501_1233() {
    let g = gateway("");
    let c = client();
    let at = alice(&g);
    enroll_pin(&g, &c, &at, PIN);
    let su = pin_token(&g, &c, &at);
    for s in [None, Some(API_SECRET)] {
        assert_error(
            validate(&g, &c, s, json!({"secondfactorvalidationtoken": su})),
            501,
            1233,
        );
    }
}

// ---------------------------------------------------------------------------
// Store failures
// ---------------------------------------------------------------------------

/// The embedded store answers with an error (a failure counter that is not a
/// number, written into the redb file while the gateway was stopped): the
/// PIN step-up fails closed with 503 1254 and Retry-After.
#[test]
fn store_errors_fail_closed_with_503_1254() {
    let mut g = Gateway::start_with(GatewayOptions {
        policy: POLICY.to_string(),
        // 2 s, not 250 ms: the 503 here must come from the bad record, not
        // from a slow commit on a loaded machine.
        store: "  kind: embedded\n  path: store.redb\n  timeout: 2s\n".to_string(),
        ..Default::default()
    });
    let c = client();
    let at = alice(&g);
    enroll_pin(&g, &c, &at, PIN);
    pin_token(&g, &c, &at);
    g.stop();
    {
        const KV: redb::TableDefinition<&str, &[u8]> = redb::TableDefinition::new("kv");
        let db = redb::Database::create(g.dir.path().join("store.redb")).unwrap();
        let tx = db.begin_write().unwrap();
        {
            let mut t = tx.open_table(KV).unwrap();
            // Eight bytes of expiry (0: none), then the value.
            let mut v = 0u64.to_be_bytes().to_vec();
            v.extend_from_slice(b"not a number");
            let key = format!("stepgate:{}", stepgate::store::keys::failures("alice"));
            t.insert(key.as_str(), v.as_slice()).unwrap();
        }
        tx.commit().unwrap();
    }
    g.launch();
    let (h, _) = assert_error(put_pin(&g, &c, &at, PIN), 503, 1254);
    assert_eq!(h["retry-after"], "5");
    // The PIN record itself still reads: the trigger answers.
    let t = assert_ok_json(
        bearer(c.get(api(&g, "/stepup/trigger")), &at)
            .send()
            .unwrap(),
    );
    assert_eq!(t["IsPINSet"], true);
}
