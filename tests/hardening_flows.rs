//! The auth-logic flaws of issue 12 (5, 6, 7, 9 and parts of 10) over real
//! sockets, each named for the behaviour that closes it: links that follow
//! only hosts the config names, PINAuthTokens only for fresh logins,
//! security answers only with what the PIN protects, exact step-downs,
//! back-channel validation bound to a user, a per-address limit on forgot
//! PIN, ended PIN sessions whose invalidation expires with them, and
//! host-scoped rules on the challenge page.
//!
//! Mail goes through a real SMTP server (Python's `aiosmtpd`), Redis is a
//! real `redis-server`; missing either is a failure, never a skip: the
//! README's test command, `scripts/test.sh`, installs them.

mod common;

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::api::*;
use common::metrics::{metrics_config, wait_for_metric_sum};
use common::redis::{redis_store, Redis};
use common::smtp::SmtpServer;
use common::*;
use reqwest::blocking::{Client, Response};
use serde_json::{json, Value};

const PIN: &str = "2580";
const WRONG_PIN: &str = "1397";
const SUB: &str = "ann";
const EMAIL: &str = "a@x.io";
const USERNAME: &str = "ann";

const QUESTIONS: &str = r#"security_questions:
  - { id: q1, question: "What was the name of your first school?" }
"#;

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

/// A gateway with the default policy, the API secret and `extra` config.
fn gateway(extra: &str) -> Gateway {
    gateway_with(DEFAULT_POLICY, extra)
}

fn gateway_with(policy: &str, extra: &str) -> Gateway {
    Gateway::start_with(GatewayOptions {
        policy: policy.to_string(),
        extra_config: format!("{}{extra}", api_secret_config()),
        ..Default::default()
    })
}

/// Ann's first-factor token from a login `age` seconds ago.
fn ann_logged_in(g: &Gateway, age: u32) -> String {
    g.token(
        SUB,
        &[
            "--email",
            EMAIL,
            "--username",
            USERNAME,
            "--login-age",
            &age.to_string(),
        ],
    )
}

fn ann(g: &Gateway) -> String {
    ann_logged_in(g, 0)
}

fn now_ms() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis()
}

fn rfc3339(s: &str) -> i64 {
    time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|e| panic!("{s:?} is RFC 3339: {e}"))
        .unix_timestamp()
}

/// A PIN step-up through the API: the SecondFactorValidationToken.
fn pin_step_up(g: &Gateway, c: &Client, at: &str) -> String {
    assert_ok_json(put_pin(g, c, at, PIN))["SecondFactorValidationToken"]
        .as_str()
        .expect("SecondFactorValidationToken")
        .to_string()
}

fn invalidate(g: &Gateway, c: &Client, uid: &str) {
    assert_posted(
        bearer(
            c.post(api(g, &format!("/manage/account/{uid}/invalidate"))),
            API_SECRET,
        )
        .send()
        .unwrap(),
    );
}

/// POST /stepup/validate with the API secret and `body`; `query` appended.
fn validate(g: &Gateway, c: &Client, query: &str, body: Value) -> Response {
    bearer(
        c.post(format!("{}{query}", api(g, "/stepup/validate"))),
        API_SECRET,
    )
    .json(&body)
    .send()
    .unwrap()
}

fn is_valid(g: &Gateway, c: &Client, query: &str, body: Value) -> bool {
    assert_ok_json(validate(g, c, query, body))["IsValid"]
        .as_bool()
        .expect("IsValid")
}

/// PUT /account/securityquestion with `extra` body fields and headers.
fn set_answers(
    g: &Gateway,
    c: &Client,
    at: &str,
    pin: Option<&str>,
    step_up: Option<&str>,
) -> Response {
    let mut body =
        json!({ "securityquestionanswer": [{ "QuestionId": "q1", "Answer": "Saint Mary's" }] });
    if let Some(p) = pin {
        body["PIN"] = json!(p);
    }
    let mut rb = bearer(c.put(api(g, "/account/securityquestion")), at).json(&body);
    if let Some(su) = step_up {
        rb = rb.header("X-Stepgate-Token", su);
    }
    rb.send().unwrap()
}

fn reset_by_answers(g: &Gateway, c: &Client, new_pin: &str) -> Response {
    put_json(
        g,
        c,
        "/pin/reset/securityanswer/email",
        json!({ "PIN": new_pin, "Email": EMAIL, "SecurityAnswer": { "q1": "saint mary's" } }),
    )
}

/// The `{ErrorCode 1243}` answer of a protected route to an API client.
fn pin_required_answer(g: &Gateway, c: &Client, at: &str) -> Value {
    assert_error(get_as(g, c, "/app/x", at), 403, 1243).1
}

// ---------------------------------------------------------------------------
// 5. Links follow public_url, or a host the config names
// ---------------------------------------------------------------------------

#[test]
fn forgot_pin_mail_never_links_to_a_host_the_request_made_up() {
    let smtp = SmtpServer::start();
    let (metrics, mport) = metrics_config();
    let g = gateway(&format!("{}{metrics}", smtp.mail_config()));
    let c = client();
    let at = ann(&g);
    enroll_pin(&g, &c, &at, PIN);
    pin_step_up(&g, &c, &at); // records the recovery profile

    // No public_url, and a Host the config does not name: the caller hears
    // what an unknown account hears; nothing is sent, the operator is told.
    let r = c
        .post(api(&g, "/pin/forgot/email"))
        .header("Host", "attacker.example")
        .json(&json!({ "Email": EMAIL }))
        .send()
        .unwrap();
    assert_posted(r);
    wait_for_metric_sum(
        mport,
        "stepgate_recovery_messages_total",
        &[("channel", "email"), ("outcome", "no_public_url")],
        1.0,
    );
    let start = Instant::now();
    while !g.log().contains("set `public_url`") {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the log says to set public_url:\n{}",
            g.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    // The gateway's own listen address is one the config names: that link
    // is built (by username: the address's cooldown is running).
    assert_posted(post_json(
        &g,
        &c,
        "/pin/forgot/username",
        json!({ "UserName": USERNAME }),
    ));
    let mails = smtp.wait_for_messages(1);
    std::thread::sleep(Duration::from_millis(500));
    let mails_later = smtp.messages();
    assert_eq!(mails_later.len(), 1, "one mail: the listen address's");
    let text = mails[0].all_text();
    assert!(!text.contains("attacker.example"), "{text}");
    assert!(
        text.contains(&g.url("/.stepgate/pin/reset?token=")),
        "a link to the gateway itself: {text}"
    );
}

// ---------------------------------------------------------------------------
// 6. A PINAuthToken needs a fresh login
// ---------------------------------------------------------------------------

#[test]
fn a_stale_login_gets_1243_without_a_pinauthtoken_and_is_told_to_sign_in_again() {
    let g = gateway("pin:\n  required: true\n");
    let c = client();
    let stale = ann_logged_in(&g, 86400);
    let b = pin_required_answer(&g, &c, &stale);
    assert!(b.get("PINAuthToken").is_none(), "no PINAuthToken: {b}");
    assert!(b.get("ExpireIn").is_none(), "{b}");
    let d = b["Description"].as_str().unwrap();
    assert!(d.contains("sign in again"), "{d}");
    // A fresh login gets one.
    let b = pin_required_answer(&g, &c, &ann(&g));
    assert!(
        b["PINAuthToken"].as_str().is_some_and(|t| !t.is_empty()),
        "{b}"
    );
}

#[test]
fn a_pinauthtoken_of_a_login_gone_stale_is_refused_and_server_tokens_still_work() {
    let g = gateway("pin:\n  required: true\n  enroll_window: 2s\n");
    let c = client();
    let at = ann(&g);
    let b = pin_required_answer(&g, &c, &at);
    let token = b["PINAuthToken"]
        .as_str()
        .expect("PINAuthToken")
        .to_string();
    // The login is older than the window now; the token has minutes left.
    std::thread::sleep(Duration::from_millis(3100));
    let (_, e) = assert_error(set_by_auth_token(&g, &c, &token, PIN, "app"), 403, 1250);
    assert!(e.get("session_token").is_none());
    assert!(
        pin_required_answer(&g, &c, &at)
            .get("PINAuthToken")
            .is_none(),
        "no new one either"
    );
    // The back end's token (API secret) is the server's word: it works.
    let t = assert_ok_json(
        bearer(c.post(api(&g, "/manage/pinauthtoken")), API_SECRET)
            .json(&json!({ "Uid": SUB }))
            .send()
            .unwrap(),
    )["PINAuthToken"]
        .as_str()
        .unwrap()
        .to_string();
    let body = assert_ok_json(set_by_auth_token(&g, &c, &t, PIN, "app"));
    // Its PIN session lives no longer than any PIN session (7 days).
    let session_exp = rfc3339(body["session_expires_in"].as_str().unwrap());
    assert!(session_exp <= now() + 7 * 86400 + 1, "{body}");
    let access_exp = rfc3339(body["expires_in"].as_str().unwrap());
    assert!(access_exp <= now() + 15 * 60 + 1, "{body}");
}

// ---------------------------------------------------------------------------
// 7. Security answers need what the PIN protects
// ---------------------------------------------------------------------------

#[test]
fn security_answers_of_a_user_with_a_pin_need_a_step_up_or_the_current_pin() {
    let g = gateway(QUESTIONS);
    let c = client();
    let at = ann(&g);
    enroll_pin(&g, &c, &at, PIN);
    pin_step_up(&g, &c, &at); // the recovery profile, for the reset below

    // A fresh login alone does not know the PIN: refused, and the reset
    // by answers it would have opened stays shut.
    let (_, b) = assert_error(set_answers(&g, &c, &at, None, None), 403, 1261);
    assert!(b["Description"].as_str().unwrap().contains("PIN"), "{b}");
    assert_error(reset_by_answers(&g, &c, "3691"), 401, 1257);

    // A wrong current PIN: 1241, counted toward the PIN lockout.
    let (_, b) = assert_error(set_answers(&g, &c, &at, Some(WRONG_PIN), None), 401, 1241);
    assert!(
        b["Description"].as_str().unwrap().starts_with("4 attempt"),
        "one wrong PIN: {b}"
    );

    // The current PIN, or a step-up of this session: accepted.
    assert_posted(set_answers(&g, &c, &at, Some(PIN), None));
    let stale = ann_logged_in(&g, 86400);
    let su = pin_step_up(&g, &c, &stale);
    assert_posted(set_answers(&g, &c, &stale, None, Some(&su)));
    // Another session's step-up is not this one's.
    let other = g.token(
        SUB,
        &["--email", EMAIL, "--login-age", "0", "--sid", "other"],
    );
    assert_error(set_answers(&g, &c, &other, None, Some(&su)), 403, 1261);
    // Step-down: the invalidated step-up no longer counts.
    invalidate(&g, &c, SUB);
    assert_error(set_answers(&g, &c, &stale, None, Some(&su)), 403, 1261);

    // What was set with the PIN resets it.
    assert_posted(reset_by_answers(&g, &c, "3691"));
}

#[test]
fn security_answers_of_a_user_without_a_pin_need_a_fresh_login_or_a_step_up() {
    let g = gateway(QUESTIONS);
    let c = client();
    assert_error(
        set_answers(&g, &c, &ann_logged_in(&g, 86400), None, None),
        403,
        1250,
    );
    assert_posted(set_answers(&g, &c, &ann(&g), None, None));
}

#[test]
fn the_account_page_saves_answers_only_with_the_current_pin() {
    let g = gateway(QUESTIONS);
    let c = client();
    let at = ann(&g);
    enroll_pin(&g, &c, &at, PIN);
    let cookie = format!("access_token={at}");
    let post = |pin: Option<&str>| {
        let page = get_html(&c, &g.url("/.stepgate/account"), &cookie);
        assert_eq!(page.status(), 200);
        let html = page.text().unwrap();
        assert!(html.contains("name=\"pin\""), "a PIN field: {html}");
        let csrf = csrf_of(&html);
        let mut form = vec![("q_q1", "Saint Mary's"), ("csrf", csrf.as_str())];
        if let Some(p) = pin {
            form.push(("pin", p));
        }
        c.post(g.url("/.stepgate/account/questions"))
            .header("Cookie", &cookie)
            .header("Accept", "text/html")
            .form(&form)
            .send()
            .unwrap()
    };
    assert_eq!(post(None).status(), 403, "a fresh login alone");
    assert_eq!(post(Some(WRONG_PIN)).status(), 401, "a wrong PIN");
    let r = post(Some(PIN));
    assert_eq!(r.status(), 303);
    assert_eq!(header(&r, "location"), "/.stepgate/account?done=questions");
}

// ---------------------------------------------------------------------------
// 9. Exact step-down
// ---------------------------------------------------------------------------

const EMAIL_OR_PIN: &str = r#"
default: authenticated
rules:
  - name: admin
    match: { path: "/admin/**" }
    require: step_up
    step_up: { methods: [pin, email_otp], max_age: 5m }
"#;

/// Invalidate, step up (an email code, so the three steps fit in one
/// second), invalidate again at once: the step-up counted in between, and
/// is refused after the second invalidation. Repeated until the three ran
/// within one wall-clock second, the case seconds could not tell apart.
#[test]
fn a_step_up_between_two_invalidations_in_one_second_is_refused_after_the_second() {
    let smtp = SmtpServer::start();
    let g = gateway_with(
        EMAIL_OR_PIN,
        &format!(
            "{}email_otp:\n  resend_cooldown: 1s\n  max_sends_per_hour: 50\n",
            smtp.mail_config()
        ),
    );
    let c = client();
    let at = ann(&g);
    let mut same_second = false;
    for round in 1..=8 {
        let r = bearer(c.get(api(&g, "/stepup/otp/email")), &at)
            .send()
            .unwrap();
        assert_posted(r);
        let code = smtp.wait_for_messages(round)[round - 1].code();
        // Start at the beginning of a second.
        std::thread::sleep(Duration::from_millis(1000 - (now_ms() % 1000) as u64 + 5));
        let t0 = now_ms();
        invalidate(&g, &c, SUB);
        let r = bearer(c.put(api(&g, "/stepup/otp/email")), &at)
            .json(&json!({ "OTP": code }))
            .send()
            .unwrap();
        let su = assert_ok_json(r)["SecondFactorValidationToken"]
            .as_str()
            .unwrap()
            .to_string();
        let between = api_get(&g, &c, "/admin/x", &at, &su).status();
        invalidate(&g, &c, SUB);
        let t1 = now_ms();
        assert_eq!(
            between, 200,
            "the step-up counts after the first invalidation"
        );
        let after = api_get(&g, &c, "/admin/x", &at, &su);
        assert_eq!(after.status(), 401, "refused after the second");
        assert!(header(&after, "www-authenticate").contains("revoked"));
        assert!(!is_valid(
            &g,
            &c,
            "",
            json!({ "secondfactorvalidationtoken": su, "Uid": SUB })
        ));
        if t0 / 1000 == t1 / 1000 {
            same_second = true;
            break;
        }
        // The resend cooldown is a second.
        std::thread::sleep(Duration::from_millis(1100));
    }
    assert!(same_second, "the three steps never fit in one second");
}

#[test]
fn pin_step_ups_right_after_a_step_down_count_and_the_next_one_ends_them() {
    let g = gateway("");
    let c = client();
    let at = ann(&g);
    enroll_pin(&g, &c, &at, PIN);
    invalidate(&g, &c, SUB);
    let su = pin_step_up(&g, &c, &at);
    assert_eq!(api_get(&g, &c, "/admin/x", &at, &su).status(), 200);
    invalidate(&g, &c, SUB);
    assert_eq!(api_get(&g, &c, "/admin/x", &at, &su).status(), 401);
}

// ---------------------------------------------------------------------------
// 10a. validate needs the uid
// ---------------------------------------------------------------------------

#[test]
fn validate_needs_a_uid_and_never_answers_for_another_users_token() {
    let g = gateway("");
    let c = client();
    let at = ann(&g);
    enroll_pin(&g, &c, &at, PIN);
    let su = pin_step_up(&g, &c, &at);
    let (_, b) = assert_error(
        validate(&g, &c, "", json!({ "secondfactorvalidationtoken": su })),
        400,
        901,
    );
    assert!(b["Description"].as_str().unwrap().contains("Uid"), "{b}");
    assert_error(
        validate(
            &g,
            &c,
            "",
            json!({ "secondfactorvalidationtoken": su, "Uid": "" }),
        ),
        400,
        901,
    );
    // Another user's token is not valid for this user.
    assert!(!is_valid(
        &g,
        &c,
        "",
        json!({ "secondfactorvalidationtoken": su, "Uid": "bob" })
    ));
    assert!(!is_valid(
        &g,
        &c,
        "?uid=bob",
        json!({ "secondfactorvalidationtoken": su })
    ));
    // Its own user, by body or query, names in any case.
    for (q, body) in [
        ("", json!({ "secondfactorvalidationtoken": su, "Uid": SUB })),
        ("", json!({ "SecondFactorValidationToken": su, "uid": SUB })),
        ("?uid=ann", json!({ "secondfactorvalidationtoken": su })),
        ("?UID=ann", json!({ "secondfactorvalidationtoken": su })),
    ] {
        assert!(is_valid(&g, &c, q, body.clone()), "{q} {body}");
    }
}

// ---------------------------------------------------------------------------
// 10b. forgot PIN is limited per client address
// ---------------------------------------------------------------------------

#[test]
fn forgot_pin_is_limited_per_client_address_on_the_api_and_the_page() {
    let smtp = SmtpServer::start();
    // The default limit: 10 an hour per address.
    let g = gateway(&format!(
        "{}trusted_proxies: [\"127.0.0.1/32\"]\n",
        smtp.mail_config()
    ));
    let c = client();
    let from = |ip: &str, route: &str, body: Value| {
        c.post(api(&g, route))
            .header("X-Forwarded-For", ip)
            .json(&body)
            .send()
            .unwrap()
    };
    // Ten names, each new to the per-name cooldown: all answered.
    for n in 0..10 {
        let (route, body) = if n % 2 == 0 {
            (
                "/pin/forgot/email",
                json!({ "Email": format!("user{n}@x.io") }),
            )
        } else {
            (
                "/pin/forgot/username",
                json!({ "UserName": format!("user{n}") }),
            )
        };
        assert_posted(from("192.0.2.1", route, body));
    }
    // The eleventh from that address: 429 1179, saying when it resets.
    let r = from(
        "192.0.2.1",
        "/pin/forgot/username",
        json!({ "UserName": "eleven" }),
    );
    let (h, b) = assert_error(r, 429, 1179);
    let retry: i64 = h["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((3000..=3601).contains(&retry), "about an hour: {retry}");
    assert!(b["Description"].as_str().unwrap().contains("until"), "{b}");
    // The page from that address too.
    let page = c
        .get(g.url("/.stepgate/pin/forgot"))
        .header("X-Forwarded-For", "192.0.2.1")
        .send()
        .unwrap();
    let nonce = set_cookie(&page, "stepgate_pre").expect("a nonce cookie");
    let csrf = csrf_of(&page.text().unwrap());
    let r = c
        .post(g.url("/.stepgate/pin/forgot"))
        .header("X-Forwarded-For", "192.0.2.1")
        .header("Cookie", format!("stepgate_pre={nonce}"))
        .form(&[("identifier", "five@x.io"), ("csrf", &csrf)])
        .send()
        .unwrap();
    assert_eq!(r.status(), 429);
    // Another address is not limited by it.
    assert_posted(from(
        "192.0.2.2",
        "/pin/forgot/email",
        json!({ "Email": "six@x.io" }),
    ));
}

// ---------------------------------------------------------------------------
// 10c. An ended PIN session's invalidation expires with the session
// ---------------------------------------------------------------------------

#[test]
fn an_ended_pin_sessions_invalidation_expires_and_the_users_stay() {
    let dir = tempfile::tempdir().unwrap();
    let redis = Redis::start(dir.path(), &[]);
    let g = Gateway::start_with(GatewayOptions {
        extra_config: format!(
            "{}pin:\n  session_ttl: 1h\n  login_ttl: 10m\n",
            api_secret_config()
        ),
        store: redis_store(&redis.url(), ""),
        ..Default::default()
    });
    let c = client();
    let t = assert_ok_json(
        bearer(c.post(api(&g, "/manage/pinauthtoken")), API_SECRET)
            .json(&json!({ "Uid": SUB }))
            .send()
            .unwrap(),
    )["PINAuthToken"]
        .as_str()
        .unwrap()
        .to_string();
    let body = assert_ok_json(set_by_auth_token(&g, &c, &t, PIN, "device-A"));
    let session = body["session_token"].as_str().unwrap().to_string();
    let sgs = body["access_token"].as_str().unwrap().to_string();
    assert_posted(
        c.get(api(&g, "/session_token/invalidate"))
            .query(&[("session_token", &session)])
            .send()
            .unwrap(),
    );
    // The stepgate session from it ends at once.
    assert_eq!(get_as(&g, &c, "/app/x", &sgs).status(), 401);
    invalidate(&g, &c, "bob");

    // In Redis: both invalidations, and only the session's has an expiry,
    // about its remaining hour plus login_ttl and the margin.
    let hash: Vec<String> = redis
        .cli(&["HKEYS", "stepgate:revocations"])
        .lines()
        .map(str::to_string)
        .collect();
    assert_eq!(hash.len(), 2, "{hash:?}");
    assert!(hash.contains(&"bob".to_string()), "{hash:?}");
    let session_key = hash.iter().find(|k| k.starts_with("ps:")).expect("ps:…");
    let expiring = redis.cli(&[
        "ZRANGE",
        "{stepgate:revocations}:expiry",
        "0",
        "-1",
        "WITHSCORES",
    ]);
    let lines: Vec<&str> = expiring.lines().collect();
    assert_eq!(lines.len(), 2, "one expiring entry: {expiring}");
    assert_eq!(lines[0], session_key);
    let left_ms = lines[1].parse::<f64>().unwrap() as i128 - now_ms() as i128;
    let expected = (3600 + 600 + 3600) * 1000;
    assert!(
        (expected - 60_000..=expected).contains(&left_ms),
        "expires with the session: {left_ms} ms left"
    );
}

// ---------------------------------------------------------------------------
// 10d. The challenge page looks the rule up with the request's host
// ---------------------------------------------------------------------------

const HOST_SCOPED: &str = r#"
default: authenticated
rules:
  - name: mail-admin
    match: { host: "mail.example.com", path: "/admin/**" }
    require: step_up
    step_up: { methods: [email_otp], max_age: 5m }
  - name: admin
    match: { path: "/admin/**" }
    require: step_up
    step_up: { methods: [pin], max_age: 5m }
"#;

#[test]
fn the_challenge_offers_the_factors_of_the_host_scoped_rule() {
    let g = gateway_with(HOST_SCOPED, "");
    let c = client();
    let at = ann(&g);
    let challenge = |host: Option<&str>| {
        let mut rb = c
            .get(g.url("/.stepgate/challenge?return_to=/admin/x"))
            .header("Cookie", format!("access_token={at}"))
            .header("Accept", "text/html");
        if let Some(h) = host {
            rb = rb.header("Host", h);
        }
        let r = rb.send().unwrap();
        assert_eq!(r.status(), 303, "one factor: straight to it");
        header(&r, "location")
    };
    assert!(
        challenge(Some("mail.example.com")).starts_with("/.stepgate/email?"),
        "the email-only rule of mail.example.com"
    );
    assert!(
        challenge(Some("Mail.Example.com:8080")).starts_with("/.stepgate/email?"),
        "any case, any port"
    );
    assert!(
        challenge(None).starts_with("/.stepgate/pin?"),
        "other hosts: the PIN rule"
    );
}
