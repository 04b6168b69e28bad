//! Authentication behaviour over real sockets: first-factor token checks,
//! step-up token binding, the strictness of stepgate's forms, enrollment
//! freshness, lockouts (per user, per IP, X-Forwarded-For trust, concurrency),
//! single-use and max_age rules, and the audit log.

mod common;
use common::api::api_get;
use common::*;

use std::sync::Barrier;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use reqwest::blocking::{Client, Response};

const PIN: &str = "2580";
const WRONG_PIN: &str = "1397";
const LOGIN_URL: &str = "https://idp.test/login?r={return_to}";

// ---------------------------------------------------------------------------
// Local helpers
// ---------------------------------------------------------------------------

fn opts_with_extra(extra_config: &str) -> GatewayOptions {
    GatewayOptions {
        extra_config: extra_config.to_string(),
        ..Default::default()
    }
}

fn opts_with_login_url() -> GatewayOptions {
    GatewayOptions {
        first_factor_extra: format!("  login_url: \"{LOGIN_URL}\"\n"),
        ..Default::default()
    }
}

/// Sign arbitrary claims with an HMAC key and algorithm.
fn sign(alg: jsonwebtoken::Algorithm, key: &[u8], claims: &serde_json::Value) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(alg),
        claims,
        &jsonwebtoken::EncodingKey::from_secret(key),
    )
    .unwrap()
}

fn valid_claims(sub: &str) -> serde_json::Value {
    let n = now();
    serde_json::json!({"sub": sub, "iat": n, "auth_time": n, "exp": n + 3600, "sid": format!("sid-{sub}")})
}

/// Replace the character at `i` of `s` with a different base64url character.
fn flip_char(s: &str, i: usize) -> String {
    let mut b = s.as_bytes().to_vec();
    b[i] = if b[i] == b'A' { b'B' } else { b'A' };
    String::from_utf8(b).unwrap()
}

/// Flip one character in the middle of a JWT's signature part.
fn tamper_signature(jwt: &str) -> String {
    let sig_start = jwt.rfind('.').unwrap() + 1;
    let mid = sig_start + (jwt.len() - sig_start) / 2;
    flip_char(jwt, mid)
}

/// Re-encode a JWT's payload after `edit`, keeping the original signature.
fn tamper_payload(jwt: &str, edit: impl FnOnce(&mut serde_json::Value)) -> String {
    let parts: Vec<&str> = jwt.split('.').collect();
    let mut claims: serde_json::Value =
        serde_json::from_slice(&B64.decode(parts[1]).unwrap()).unwrap();
    edit(&mut claims);
    format!(
        "{}.{}.{}",
        parts[0],
        B64.encode(serde_json::to_vec(&claims).unwrap()),
        parts[2]
    )
}

/// The CSRF token of the enrollment form (login must be fresh, no PIN yet).
fn setup_csrf(g: &Gateway, c: &Client, at: &str) -> String {
    let r = get_html(
        c,
        &g.url("/.stepgate/pin/setup?return_to=/admin/x"),
        &format!("access_token={at}"),
    );
    assert_eq!(r.status(), 200, "the enrollment form is offered");
    csrf_of(&r.text().unwrap())
}

/// The CSRF token of the PIN form (PIN already set).
fn pin_csrf(g: &Gateway, c: &Client, at: &str) -> String {
    let r = get_html(
        c,
        &g.url("/.stepgate/pin?return_to=/admin/x"),
        &format!("access_token={at}"),
    );
    assert_eq!(r.status(), 200, "the PIN form is offered");
    csrf_of(&r.text().unwrap())
}

fn post_setup(g: &Gateway, c: &Client, at: &str, fields: &[(&str, &str)]) -> Response {
    c.post(g.url("/.stepgate/pin/setup"))
        .header("Cookie", format!("access_token={at}"))
        .header("Accept", "text/html")
        .form(fields)
        .send()
        .unwrap()
}

/// POST /.stepgate/pin, optionally with an X-Forwarded-For header.
fn post_pin(
    g: &Gateway,
    c: &Client,
    at: &str,
    csrf: &str,
    pin: &str,
    return_to: &str,
    xff: Option<&str>,
) -> Response {
    let mut req = c
        .post(g.url("/.stepgate/pin"))
        .header("Cookie", format!("access_token={at}"))
        .header("Accept", "text/html")
        .form(&[("pin", pin), ("csrf", csrf), ("return_to", return_to)]);
    if let Some(x) = xff {
        req = req.header("X-Forwarded-For", x);
    }
    req.send().unwrap()
}

/// Enroll `at`'s user (if `enroll_first`) and step up with the PIN; returns
/// the step-up token from the cookie.
fn step_up(g: &Gateway, c: &Client, at: &str, enroll_first: bool) -> String {
    if enroll_first {
        enroll_pin(g, c, at, PIN);
    }
    let csrf = pin_csrf(g, c, at);
    let r = post_pin(g, c, at, &csrf, PIN, "/admin/x", None);
    assert_eq!(r.status(), 303, "right PIN is accepted");
    set_cookie(&r, "stepgate_su").expect("step-up cookie")
}

/// Browser request for a protected path with the access and step-up cookies.
fn browser_get(g: &Gateway, c: &Client, path: &str, at: &str, su: &str) -> Response {
    get_html(
        c,
        &g.url(path),
        &format!("access_token={at}; stepgate_su={su}"),
    )
}

/// The request reached the demo upstream, which echoes it: as JSON to API
/// clients (returned), as an HTML page to browsers (`Value::Null`).
fn assert_forwarded(r: Response, path: &str) -> serde_json::Value {
    assert_eq!(r.status(), 200, "forwarded upstream");
    if header(&r, "content-type").starts_with("text/html") {
        let page = r.text().unwrap();
        assert!(
            page.contains("<h1 id=\"app\">Demo app</h1>")
                && page.contains(&format!(" {path}</code>")),
            "the upstream's page for {path}: {page}"
        );
        return serde_json::Value::Null;
    }
    let echo: serde_json::Value = r.json().expect("the upstream's JSON echo");
    assert_eq!(echo["path"], path, "the upstream saw the request");
    echo
}

fn assert_browser_challenge(r: &Response, return_to_enc: &str) {
    assert_eq!(r.status(), 303, "browser is sent to the challenge");
    assert_eq!(
        header(r, "location"),
        format!("/.stepgate/challenge?return_to={return_to_enc}")
    );
}

fn assert_api_challenge(r: Response, max_age: u64) {
    assert_eq!(r.status(), 401, "API client is challenged");
    let www = header(&r, "www-authenticate");
    assert!(
        www.starts_with("Bearer error=\"insufficient_user_authentication\""),
        "RFC 9470 challenge, got {www:?}"
    );
    assert!(
        www.contains(&format!("max_age={max_age}")),
        "max_age={max_age} in {www:?}"
    );
    let body: serde_json::Value = r.json().unwrap();
    assert_eq!(body["error"], "insufficient_user_authentication");
}

fn assert_healthy(g: &Gateway, c: &Client) {
    let r = c.get(g.url("/.stepgate/health")).send().unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().unwrap(), "ok");
}

fn assert_still_serving(g: &Gateway, c: &Client) {
    assert_healthy(g, c);
    let good = g.token("still-here", &[]);
    let r = c
        .get(g.url("/app/ok"))
        .header("Authorization", format!("Bearer {good}"))
        .send()
        .unwrap();
    assert_forwarded(r, "/app/ok");
}

// ---------------------------------------------------------------------------
// 1. First-factor tokens
// ---------------------------------------------------------------------------

/// A bad first-factor token gets: 401 + WWW-Authenticate (invalid_token)
/// for API clients, 303 to the login URL with return_to for browsers (a
/// login_url is configured), on an authenticated route and a step-up route.
fn assert_first_factor_refused(g: &Gateway, c: &Client, bad: &str, reason: Option<&str>) {
    for path in ["/app/page?x=1", "/admin/x"] {
        let r = c
            .get(g.url(path))
            .header("Authorization", format!("Bearer {bad}"))
            .send()
            .unwrap();
        assert_eq!(r.status(), 401, "API client refused on {path}");
        let www = header(&r, "www-authenticate");
        assert!(
            www.starts_with("Bearer ") && www.contains("error=\"invalid_token\""),
            "WWW-Authenticate names invalid_token: {www:?}"
        );
        if let Some(reason) = reason {
            assert!(
                www.contains(&format!("error_description=\"{reason}\"")),
                "reason {reason} in {www:?}"
            );
            let body: serde_json::Value = r.json().unwrap();
            assert_eq!(body["error_description"], reason);
        }
    }
    // Browser with the token in the cookie: to the login page.
    let r = get_html(c, &g.url("/app/page?x=1"), &format!("access_token={bad}"));
    assert_eq!(r.status(), 303, "browser sent to login");
    assert_eq!(
        header(&r, "location"),
        format!(
            "https://idp.test/login?r=http%3A%2F%2F127.0.0.1%3A{}%2Fapp%2Fpage%3Fx%3D1",
            g.port
        )
    );
    // The upstream never saw it; the gateway keeps serving.
    assert_still_serving(g, c);
}

#[test]
fn first_factor_with_tampered_signature_is_refused() {
    let g = Gateway::start_with(opts_with_login_url());
    let c = client();
    let good = g.token("alice", &[]);
    assert_first_factor_refused(&g, &c, &tamper_signature(&good), Some("bad_signature"));
    // The payload changed under the original signature (a different user).
    let forged = tamper_payload(&good, |cl| cl["sub"] = "admin".into());
    assert_first_factor_refused(&g, &c, &forged, Some("bad_signature"));
}

#[test]
fn expired_first_factor_token_is_refused() {
    let g = Gateway::start_with(opts_with_login_url());
    let c = client();
    let expired = g.token("alice", &["--ttl=-100"]);
    assert_first_factor_refused(&g, &c, &expired, Some("expired"));
}

#[test]
fn not_yet_valid_first_factor_token_is_refused() {
    let g = Gateway::start_with(opts_with_login_url());
    let c = client();
    let mut claims = valid_claims("alice");
    claims["nbf"] = (now() + 3600).into();
    let t = sign(
        jsonwebtoken::Algorithm::HS256,
        FIRST_FACTOR_SECRET.as_bytes(),
        &claims,
    );
    assert_first_factor_refused(&g, &c, &t, Some("not_yet_valid"));
}

#[test]
fn alg_none_first_factor_token_is_refused() {
    let g = Gateway::start_with(opts_with_login_url());
    let c = client();
    let head = B64.encode(br#"{"alg":"none","typ":"JWT"}"#);
    let body = B64.encode(valid_claims("alice").to_string());
    for t in [format!("{head}.{body}."), format!("{head}.{body}")] {
        assert_first_factor_refused(&g, &c, &t, None);
    }
    // Same for "None"/"NONE" spellings.
    let head = B64.encode(br#"{"alg":"NONE","typ":"JWT"}"#);
    assert_first_factor_refused(&g, &c, &format!("{head}.{body}."), None);
}

#[test]
fn first_factor_signed_with_wrong_key_is_refused() {
    let g = Gateway::start_with(opts_with_login_url());
    let c = client();
    let t = sign(
        jsonwebtoken::Algorithm::HS256,
        b"another-secret-that-is-long-enough-0123456789",
        &valid_claims("alice"),
    );
    assert_first_factor_refused(&g, &c, &t, Some("bad_signature"));
}

#[test]
fn hs512_first_factor_is_refused_when_only_hs256_is_configured() {
    let g = Gateway::start_with(opts_with_login_url());
    let c = client();
    let t = sign(
        jsonwebtoken::Algorithm::HS512,
        FIRST_FACTOR_SECRET.as_bytes(),
        &valid_claims("alice"),
    );
    assert_first_factor_refused(&g, &c, &t, Some("algorithm_not_allowed"));
    // Control: the same claims with HS256 and the right key pass.
    let ok = sign(
        jsonwebtoken::Algorithm::HS256,
        FIRST_FACTOR_SECRET.as_bytes(),
        &valid_claims("alice"),
    );
    let r = c
        .get(g.url("/app/page"))
        .header("Authorization", format!("Bearer {ok}"))
        .send()
        .unwrap();
    assert_forwarded(r, "/app/page");
}

#[test]
fn bad_first_factor_without_login_url_gets_a_401_page_for_browsers() {
    let g = Gateway::start();
    let c = client();
    let good = g.token("alice", &[]);
    let mut nbf = valid_claims("alice");
    nbf["nbf"] = (now() + 3600).into();
    let bad = [
        tamper_signature(&good),
        g.token("alice", &["--ttl=-100"]),
        sign(
            jsonwebtoken::Algorithm::HS256,
            FIRST_FACTOR_SECRET.as_bytes(),
            &nbf,
        ),
        sign(
            jsonwebtoken::Algorithm::HS512,
            FIRST_FACTOR_SECRET.as_bytes(),
            &valid_claims("alice"),
        ),
        sign(
            jsonwebtoken::Algorithm::HS256,
            b"another-secret-that-is-long-enough-0123456789",
            &valid_claims("alice"),
        ),
    ];
    for t in &bad {
        let r = get_html(&c, &g.url("/app/page"), &format!("access_token={t}"));
        assert_eq!(r.status(), 401, "a sign-in page, not the app");
        assert!(header(&r, "content-type").starts_with("text/html"));
        assert!(header(&r, "location").is_empty());
        let r = c
            .get(g.url("/app/page"))
            .header("Authorization", format!("Bearer {t}"))
            .send()
            .unwrap();
        assert_eq!(r.status(), 401);
        assert!(header(&r, "www-authenticate").contains("error=\"invalid_token\""));
    }
    assert_still_serving(&g, &c);
}

#[test]
fn reserved_pages_send_browsers_with_a_bad_first_factor_to_login() {
    let g = Gateway::start_with(opts_with_login_url());
    let c = client();
    let bad = tamper_signature(&g.token("alice", &[]));
    let r = get_html(
        &c,
        &g.url("/.stepgate/pin?return_to=/admin/x"),
        &format!("access_token={bad}"),
    );
    assert_eq!(r.status(), 303);
    assert_eq!(
        header(&r, "location"),
        format!(
            "https://idp.test/login?r=http%3A%2F%2F127.0.0.1%3A{}%2Fadmin%2Fx",
            g.port
        )
    );
    assert_still_serving(&g, &c);
}

// ---------------------------------------------------------------------------
// 2. Step-up token binding
// ---------------------------------------------------------------------------

#[test]
fn step_up_cookie_of_another_user_asks_for_step_up_again() {
    let g = Gateway::start();
    let c = client();
    let alice = g.token("alice", &[]);
    let su = step_up(&g, &c, &alice, true);
    // Control: alice's own step-up opens the route.
    assert_forwarded(browser_get(&g, &c, "/admin/x", &alice, &su), "/admin/x");
    let bob = g.token("bob", &[]);
    assert_browser_challenge(&browser_get(&g, &c, "/admin/x", &bob, &su), "%2Fadmin%2Fx");
    assert_api_challenge(api_get(&g, &c, "/admin/x", &bob, &su), 300);
}

#[test]
fn step_up_cookie_of_another_session_of_the_same_user_asks_for_step_up_again() {
    let g = Gateway::start();
    let c = client();
    let s1 = g.token("alice", &["--sid", "session-one"]);
    let su = step_up(&g, &c, &s1, true);
    // Control: another access token of the *same* session is accepted.
    let s1_again = g.token("alice", &["--sid", "session-one"]);
    assert_ne!(s1, s1_again);
    assert_forwarded(browser_get(&g, &c, "/admin/x", &s1_again, &su), "/admin/x");
    let s2 = g.token("alice", &["--sid", "session-two"]);
    assert_browser_challenge(&browser_get(&g, &c, "/admin/x", &s2, &su), "%2Fadmin%2Fx");
    assert_api_challenge(api_get(&g, &c, "/admin/x", &s2, &su), 300);
}

#[test]
fn tampered_step_up_cookie_asks_for_step_up_again() {
    let g = Gateway::start();
    let c = client();
    let alice = g.token("alice", &[]);
    let su = step_up(&g, &c, &alice, true);
    assert_forwarded(browser_get(&g, &c, "/admin/x", &alice, &su), "/admin/x");
    let bad_sig = tamper_signature(&su);
    // Claims edited under the original signature: a longer life.
    let bad_payload = tamper_payload(&su, |cl| {
        cl["exp"] = (cl["exp"].as_i64().unwrap() + 86400).into();
    });
    // Same claims signed with the raw signing secret, not the key stepgate derives from it.
    let parts: Vec<&str> = su.split('.').collect();
    let claims: serde_json::Value = serde_json::from_slice(&B64.decode(parts[1]).unwrap()).unwrap();
    let wrong_key = sign(
        jsonwebtoken::Algorithm::HS256,
        SIGNING_SECRET.as_bytes(),
        &claims,
    );
    // alg: none with the very same claims.
    let none = format!(
        "{}.{}.",
        B64.encode(br#"{"alg":"none","typ":"JWT"}"#),
        parts[1]
    );
    // Other tokens of this session are not step-up tokens.
    let csrf = pin_csrf(&g, &c, &alice);
    for bad in [
        bad_sig,
        bad_payload,
        wrong_key,
        none,
        alice.clone(),
        csrf,
        "garbage".to_string(),
    ] {
        assert_browser_challenge(
            &browser_get(&g, &c, "/admin/x", &alice, &bad),
            "%2Fadmin%2Fx",
        );
        assert_api_challenge(api_get(&g, &c, "/admin/x", &alice, &bad), 300);
    }
}

// ---------------------------------------------------------------------------
// 3. Forms
// ---------------------------------------------------------------------------

#[test]
fn form_body_over_16_kib_is_refused_with_413() {
    let g = Gateway::start();
    let c = client();
    let at = g.token("alice", &[]);
    let csrf = setup_csrf(&g, &c, &at);
    let big = format!(
        "pin=2580&pin_confirm=2580&csrf={csrf}&return_to=%2F&pad={}",
        "a".repeat(17 * 1024)
    );
    // With a Content-Length.
    let r = c
        .post(g.url("/.stepgate/pin/setup"))
        .header("Cookie", format!("access_token={at}"))
        .header("Content-Type", "application/x-www-form-urlencoded")
        .body(big.clone())
        .send()
        .unwrap();
    assert_eq!(r.status(), 413);
    // Chunked, no Content-Length.
    let r = c
        .post(g.url("/.stepgate/pin/setup"))
        .header("Cookie", format!("access_token={at}"))
        .header("Content-Type", "application/x-www-form-urlencoded")
        .body(reqwest::blocking::Body::new(std::io::Cursor::new(
            big.into_bytes(),
        )))
        .send()
        .unwrap();
    assert_eq!(r.status(), 413);
    // Nothing was enrolled: the PIN page still sends to setup.
    let r = get_html(
        &c,
        &g.url("/.stepgate/pin?return_to=/admin/x"),
        &format!("access_token={at}"),
    );
    assert_eq!(r.status(), 303);
    assert!(header(&r, "location").starts_with("/.stepgate/pin/setup"));
    assert_healthy(&g, &c);
    // Exactly 16 KiB is still accepted (the limit is not off by one).
    let head = format!("pin=2580&pin_confirm=2580&csrf={csrf}&return_to=%2F&pad=");
    let exact = format!("{head}{}", "a".repeat(16 * 1024 - head.len()));
    assert_eq!(exact.len(), 16 * 1024);
    let r = c
        .post(g.url("/.stepgate/pin/setup"))
        .header("Cookie", format!("access_token={at}"))
        .header("Content-Type", "application/x-www-form-urlencoded")
        .body(exact)
        .send()
        .unwrap();
    assert_eq!(r.status(), 303, "a 16 KiB form is processed");
}

#[test]
fn form_with_malformed_percent_encoding_is_refused_with_400() {
    let g = Gateway::start();
    let c = client();
    let at = g.token("alice", &[]);
    let csrf = setup_csrf(&g, &c, &at);
    for body in [
        format!("pin=25%zz&pin_confirm=2580&csrf={csrf}"),
        format!("pin=2580&pin_confirm=2580&csrf={csrf}&return_to=%2"),
        format!("pin=%ff%fe&pin_confirm=2580&csrf={csrf}"),
    ] {
        let r = c
            .post(g.url("/.stepgate/pin/setup"))
            .header("Cookie", format!("access_token={at}"))
            .header("Content-Type", "application/x-www-form-urlencoded")
            .body(body.clone())
            .send()
            .unwrap();
        assert_eq!(r.status(), 400, "{body}");
    }
    // A repeated field is refused too, not guessed.
    let r = c
        .post(g.url("/.stepgate/pin/setup"))
        .header("Cookie", format!("access_token={at}"))
        .header("Content-Type", "application/x-www-form-urlencoded")
        .body(format!("pin=2580&pin=9999&pin_confirm=2580&csrf={csrf}"))
        .send()
        .unwrap();
    assert_eq!(r.status(), 400, "duplicate field");
    // The same PIN form, well encoded, goes through.
    enroll_pin(&g, &c, &at, PIN);
}

#[test]
fn form_without_csrf_or_with_csrf_of_another_session_is_refused_with_403() {
    let g = Gateway::start();
    let c = client();
    let s1 = g.token("alice", &["--sid", "s1"]);
    let s2 = g.token("alice", &["--sid", "s2"]);
    let bob = g.token("bob", &[]);
    let csrf_s2 = setup_csrf(&g, &c, &s2);
    let csrf_bob = setup_csrf(&g, &c, &bob);
    let csrf_s1 = setup_csrf(&g, &c, &s1);
    let (exp, mac) = csrf_s1.split_once('.').unwrap();
    let forged_mac = format!("{exp}.{}", flip_char(mac, mac.len() / 2));
    let forged_exp = format!("{}.{mac}", exp.parse::<i64>().unwrap() + 10);
    let setup = |csrf: Option<&str>| {
        let mut f = vec![
            ("pin", PIN),
            ("pin_confirm", PIN),
            ("return_to", "/admin/x"),
        ];
        if let Some(token) = csrf {
            f.push(("csrf", token));
        }
        post_setup(&g, &c, &s1, &f)
    };
    assert_eq!(setup(None).status(), 403, "missing csrf");
    assert_eq!(setup(Some("")).status(), 403, "empty csrf");
    assert_eq!(
        setup(Some(&csrf_s2)).status(),
        403,
        "csrf of another session"
    );
    assert_eq!(setup(Some(&csrf_bob)).status(), 403, "csrf of another user");
    assert_eq!(setup(Some(&forged_mac)).status(), 403, "forged csrf mac");
    assert_eq!(
        setup(Some(&forged_exp)).status(),
        403,
        "csrf with a moved expiry"
    );
    // Nothing enrolled yet: the own-session csrf still works.
    enroll_pin(&g, &c, &s1, PIN);
    // And the PIN form checks CSRF too: no PIN check happens without it.
    let r = c
        .post(g.url("/.stepgate/pin"))
        .header("Cookie", format!("access_token={s1}"))
        .form(&[("pin", PIN), ("return_to", "/admin/x")])
        .send()
        .unwrap();
    assert_eq!(r.status(), 403);
    assert!(set_cookie(&r, "stepgate_su").is_none());
    let r = post_pin(&g, &c, &s1, &csrf_s2, PIN, "/admin/x", None);
    assert_eq!(r.status(), 403);
    assert!(set_cookie(&r, "stepgate_su").is_none());
}

#[test]
fn return_to_another_origin_redirects_home_after_pin() {
    let g = Gateway::start();
    let c = client();
    let at = g.token("alice", &[]);
    enroll_pin(&g, &c, &at, PIN);
    let csrf = pin_csrf(&g, &c, &at);
    for evil in [
        "https://evil.example",
        "https://evil.example/admin/x",
        "//evil.example",
        "//evil.example/admin/x",
        "/\\evil.example",
        "http:evil.example",
    ] {
        let r = post_pin(&g, &c, &at, &csrf, PIN, evil, None);
        assert_eq!(r.status(), 303, "{evil}");
        assert_eq!(header(&r, "location"), "/", "{evil}");
        assert!(set_cookie(&r, "stepgate_su").is_some());
    }
    // Control: a same-origin path is kept.
    let r = post_pin(&g, &c, &at, &csrf, PIN, "/admin/x?y=1", None);
    assert_eq!(header(&r, "location"), "/admin/x?y=1");
}

#[test]
fn pin_and_confirmation_that_differ_get_400_and_the_form_again() {
    let g = Gateway::start();
    let c = client();
    let at = g.token("alice", &[]);
    let csrf = setup_csrf(&g, &c, &at);
    let r = post_setup(
        &g,
        &c,
        &at,
        &[
            ("pin", "2580"),
            ("pin_confirm", "2581"),
            ("csrf", &csrf),
            ("return_to", "/admin/x"),
        ],
    );
    assert_eq!(r.status(), 400);
    let page = r.text().unwrap();
    assert!(
        page.contains("name=\"pin_confirm\""),
        "the setup form again"
    );
    assert!(!csrf_of(&page).is_empty(), "with a fresh csrf");
    // No PIN was stored.
    let r = get_html(&c, &g.url("/.stepgate/pin"), &format!("access_token={at}"));
    assert_eq!(r.status(), 303);
    assert!(header(&r, "location").starts_with("/.stepgate/pin/setup"));
}

#[test]
fn weak_pins_are_refused_with_400() {
    let g = Gateway::start();
    let c = client();
    let at = g.token("alice", &[]);
    let csrf = setup_csrf(&g, &c, &at);
    for weak in ["1234", "0000", "9876", "121212", "12", "12ab"] {
        let r = post_setup(
            &g,
            &c,
            &at,
            &[
                ("pin", weak),
                ("pin_confirm", weak),
                ("csrf", &csrf),
                ("return_to", "/admin/x"),
            ],
        );
        assert_eq!(r.status(), 400, "{weak}");
        assert!(r.text().unwrap().contains("name=\"pin_confirm\""));
    }
    let r = get_html(&c, &g.url("/.stepgate/pin"), &format!("access_token={at}"));
    assert_eq!(r.status(), 303, "still no PIN");
    assert!(header(&r, "location").starts_with("/.stepgate/pin/setup"));
}

// ---------------------------------------------------------------------------
// 4. Enrollment freshness
// ---------------------------------------------------------------------------

#[test]
fn pin_enrollment_needs_a_fresh_login() {
    let g = Gateway::start();
    let c = client();
    let stale = g.token("alice", &["--login-age", "3600", "--sid", "same"]);
    let r = get_html(
        &c,
        &g.url("/.stepgate/pin/setup?return_to=/admin/x"),
        &format!("access_token={stale}"),
    );
    assert_eq!(r.status(), 403);
    assert!(!r.text().unwrap().contains("name=\"pin_confirm\""));
    // Posting directly (with a valid csrf of the same session) is refused too.
    let fresh = g.token("alice", &["--sid", "same"]);
    let csrf = setup_csrf(&g, &c, &fresh);
    let r = post_setup(
        &g,
        &c,
        &stale,
        &[
            ("pin", PIN),
            ("pin_confirm", PIN),
            ("csrf", &csrf),
            ("return_to", "/admin/x"),
        ],
    );
    assert_eq!(r.status(), 403);
    let r = get_html(
        &c,
        &g.url("/.stepgate/pin"),
        &format!("access_token={fresh}"),
    );
    assert_eq!(r.status(), 303, "no PIN was set by the stale login");
    // The fresh login gets the form and can enroll.
    let r = get_html(
        &c,
        &g.url("/.stepgate/pin/setup?return_to=/admin/x"),
        &format!("access_token={fresh}"),
    );
    assert_eq!(r.status(), 200);
    enroll_pin(&g, &c, &fresh, PIN);
}

// ---------------------------------------------------------------------------
// 5. Lockout
// ---------------------------------------------------------------------------

fn assert_locked(r: &Response) {
    assert_eq!(r.status(), 429, "locked");
    let ra: i64 = header(r, "retry-after")
        .parse()
        .expect("Retry-After in seconds");
    // 15 minutes, rounded up to the next second at most.
    assert!(ra > 0 && ra <= 901, "Retry-After {ra}");
    assert!(set_cookie(r, "stepgate_su").is_none());
}

#[test]
fn five_wrong_pins_lock_the_user_even_against_the_right_pin() {
    let g = Gateway::start_with(opts_with_extra("lockout:\n  ip_max_failures: 100\n"));
    let c = client();
    let at = g.token("alice", &[]);
    enroll_pin(&g, &c, &at, PIN);
    let csrf = pin_csrf(&g, &c, &at);
    for i in 1..=4 {
        let r = post_pin(&g, &c, &at, &csrf, WRONG_PIN, "/admin/x", None);
        assert_eq!(r.status(), 401, "wrong PIN #{i}");
        assert!(set_cookie(&r, "stepgate_su").is_none());
    }
    let r = post_pin(&g, &c, &at, &csrf, WRONG_PIN, "/admin/x", None);
    assert_locked(&r);
    let r = post_pin(&g, &c, &at, &csrf, PIN, "/admin/x", None);
    assert_locked(&r);
    // Another session of the same user is locked as well (per user).
    let other = g.token("alice", &["--sid", "another"]);
    let csrf2 = pin_csrf(&g, &c, &other);
    assert_locked(&post_pin(&g, &c, &other, &csrf2, PIN, "/admin/x", None));
    // Another user is not.
    let bob = g.token("bob", &[]);
    step_up(&g, &c, &bob, true);
}

#[test]
fn per_ip_lockout_counts_failures_across_users() {
    // The per-IP limit at its lowest (the per-user one); no user fails 5 times.
    let g = Gateway::start_with(opts_with_extra(
        "lockout:\n  max_failures: 5\n  ip_max_failures: 5\n",
    ));
    let c = client();
    let users: Vec<(String, String)> = (0..4)
        .map(|i| {
            let at = g.token(&format!("user{i}"), &[]);
            enroll_pin(&g, &c, &at, PIN);
            let csrf = pin_csrf(&g, &c, &at);
            (at, csrf)
        })
        .collect();
    for (n, i) in [0, 1, 2, 0].into_iter().enumerate() {
        let (at, csrf) = &users[i];
        let r = post_pin(&g, &c, at, csrf, WRONG_PIN, "/admin/x", None);
        assert_eq!(r.status(), 401, "failure #{} (user{i})", n + 1);
    }
    let (at, csrf) = &users[1];
    assert_locked(&post_pin(&g, &c, at, csrf, WRONG_PIN, "/admin/x", None));
    // user3 never failed, but the IP is locked.
    let (at, csrf) = &users[3];
    assert_locked(&post_pin(&g, &c, at, csrf, PIN, "/admin/x", None));
    // An untrusted peer cannot escape with X-Forwarded-For.
    for xff in ["198.51.100.9", "198.51.100.9, 203.0.113.5", "::1"] {
        assert_locked(&post_pin(&g, &c, at, csrf, PIN, "/admin/x", Some(xff)));
    }
    // The audit log says the IP was locked, naming the user of the 5th failure.
    assert_eq!(wait_for_events(&g, "lockout", "user1", 1), 1);
    let lock = &events(&g, "lockout", "user1")[0];
    assert_eq!(lock["detail"], "ip");
    assert_eq!(lock["ip"], "127.0.0.1");
}

#[test]
fn x_forwarded_for_from_a_trusted_proxy_sets_the_client_ip_for_lockout() {
    let g = Gateway::start_with(opts_with_extra(
        "trusted_proxies: [\"127.0.0.1\"]\nlockout:\n  max_failures: 5\n  ip_max_failures: 5\n",
    ));
    let c = client();
    let at = g.token("alice", &[]);
    enroll_pin(&g, &c, &at, PIN);
    let csrf = pin_csrf(&g, &c, &at);
    // The 5th failure from that address is another user's, so only the
    // address is locked (the per-IP limit is never below the per-user one).
    let bob = g.token("bob", &[]);
    enroll_pin(&g, &c, &bob, PIN);
    let bob_csrf = pin_csrf(&g, &c, &bob);
    let locked_ip = Some("203.0.113.7");
    for i in 1..=4 {
        let r = post_pin(&g, &c, &at, &csrf, WRONG_PIN, "/admin/x", locked_ip);
        assert_eq!(r.status(), 401, "failure #{i}");
    }
    assert_locked(&post_pin(
        &g, &c, &bob, &bob_csrf, WRONG_PIN, "/admin/x", locked_ip,
    ));
    assert_locked(&post_pin(&g, &c, &at, &csrf, PIN, "/admin/x", locked_ip));
    // The right-most untrusted address counts: a spoofed left entry does not help.
    assert_locked(&post_pin(
        &g,
        &c,
        &at,
        &csrf,
        PIN,
        "/admin/x",
        Some("192.0.2.1, 203.0.113.7"),
    ));
    // Another client behind the same proxy is not locked.
    let r = post_pin(&g, &c, &at, &csrf, PIN, "/admin/x", Some("203.0.113.8"));
    assert_eq!(r.status(), 303, "a different client IP is not locked");
    assert!(set_cookie(&r, "stepgate_su").is_some());
    // Nor is the proxy itself.
    let r = post_pin(&g, &c, &at, &csrf, PIN, "/admin/x", None);
    assert_eq!(r.status(), 303);
}

#[test]
fn concurrent_wrong_pins_are_evaluated_exactly_up_to_the_limit() {
    // Per-IP limit out of the way: the user limit (5) is what is measured.
    let g = Gateway::start_with(opts_with_extra("lockout:\n  ip_max_failures: 100\n"));
    let at = g.token("alice", &[]);
    let c = client();
    enroll_pin(&g, &c, &at, PIN);
    let csrf = pin_csrf(&g, &c, &at);
    const N: usize = 12;
    let barrier = Barrier::new(N);
    let statuses: Vec<u16> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..N)
            .map(|_| {
                let (g, at, csrf, barrier) = (&g, &at, &csrf, &barrier);
                s.spawn(move || {
                    let c = Client::builder()
                        .redirect(reqwest::redirect::Policy::none())
                        .timeout(Duration::from_secs(120))
                        .build()
                        .unwrap();
                    barrier.wait();
                    post_pin(g, &c, at, csrf, WRONG_PIN, "/admin/x", None)
                        .status()
                        .as_u16()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let wrong = statuses.iter().filter(|s| **s == 401).count();
    let locked = statuses.iter().filter(|s| **s == 429).count();
    assert_eq!(
        (wrong, locked),
        (4, N - 4),
        "exactly 5 guesses evaluated: 4 answered 'wrong', the 5th and all others 'locked'; got {statuses:?}"
    );
    // Exactly five guesses were evaluated (the audit log says so).
    let failures = wait_for_events(&g, "pin_failure", "alice", 5);
    assert_eq!(failures, 5, "guesses evaluated");
    assert_locked(&post_pin(&g, &c, &at, &csrf, PIN, "/admin/x", None));
}

// ---------------------------------------------------------------------------
// 6. Single use
// ---------------------------------------------------------------------------

#[test]
fn single_use_rule_accepts_a_step_up_token_only_once() {
    let g = Gateway::start();
    let c = client();
    let at = g.token("alice", &[]);
    // Browser: cookie.
    let su = step_up(&g, &c, &at, true);
    let post = |su: &str, html: bool| {
        let mut r = c
            .post(g.url("/admin/delete"))
            .header("Cookie", format!("access_token={at}; stepgate_su={su}"))
            .body("id=42");
        if html {
            r = r.header("Accept", "text/html");
        }
        r.send().unwrap()
    };
    let r = post(&su, true);
    assert_eq!(r.status(), 200, "the first POST is forwarded");
    assert!(r
        .text()
        .unwrap()
        .contains("<code id=\"path\">POST /admin/delete</code>"));
    // The challenge knows it is for a POST (its rule's factors are offered).
    assert_browser_challenge(&post(&su, true), "%2Fadmin%2Fdelete&method=POST");
    assert_api_challenge(post(&su, false), 0);
    // API client: X-Stepgate-Token, with a new step-up.
    let su2 = step_up(&g, &c, &at, false);
    let api_post = || {
        c.post(g.url("/admin/delete"))
            .header("Authorization", format!("Bearer {at}"))
            .header("X-Stepgate-Token", &su2)
            .body("id=42")
            .send()
            .unwrap()
    };
    let echo = assert_forwarded(api_post(), "/admin/delete");
    assert_eq!(echo["method"], "POST");
    assert_eq!(echo["body_bytes"], 5, "the body is forwarded untouched");
    assert_api_challenge(api_post(), 0);
    // The token is not consumed for rules with a max_age: /admin/x still opens.
    assert_forwarded(api_get(&g, &c, "/admin/x", &at, &su2), "/admin/x");
}

// ---------------------------------------------------------------------------
// 7. max_age
// ---------------------------------------------------------------------------

#[test]
fn step_up_older_than_max_age_is_challenged_again() {
    // A second rule with a long max_age keeps the token itself alive (its
    // lifetime is the longest max_age), so only the 2 s freshness can refuse it.
    let policy = r#"
default: authenticated
rules:
  - name: fresh
    match: { path: "/fresh/**" }
    require: step_up
    step_up: { methods: [pin], max_age: 2s }
  - name: admin
    match: { path: "/admin/**" }
    require: step_up
    step_up: { methods: [pin], max_age: 5m }
"#;
    let g = Gateway::start_with(GatewayOptions {
        policy: policy.to_string(),
        ..Default::default()
    });
    let c = client();
    let at = g.token("alice", &[]);
    enroll_pin(&g, &c, &at, PIN);
    let started = Instant::now();
    let su = step_up(&g, &c, &at, false);
    let r = browser_get(&g, &c, "/fresh/x", &at, &su);
    // Less than 2 s between issue and use means an age of at most 2 whole
    // seconds, so the token must pass; a machine stalled longer proves nothing.
    if started.elapsed() < Duration::from_secs(2) {
        assert_forwarded(r, "/fresh/x");
    } else {
        eprintln!("machine too slow to check the fresh side of max_age");
    }
    std::thread::sleep(Duration::from_secs(3));
    assert_browser_challenge(&browser_get(&g, &c, "/fresh/x", &at, &su), "%2Ffresh%2Fx");
    assert_api_challenge(api_get(&g, &c, "/fresh/x", &at, &su), 2);
    // The token is still valid where the rule allows 5 minutes.
    assert_forwarded(browser_get(&g, &c, "/admin/x", &at, &su), "/admin/x");
}

// ---------------------------------------------------------------------------
// 8. Audit log
// ---------------------------------------------------------------------------

/// Events of kind `event` for `user` in the gateway's JSON log.
fn events(g: &Gateway, event: &str, user: &str) -> Vec<serde_json::Value> {
    g.log()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["event"] == event && v["user"] == user)
        .collect()
}

/// Wait (generously) until at least `n` such events are logged; return the count.
fn wait_for_events(g: &Gateway, event: &str, user: &str, n: usize) -> usize {
    let start = Instant::now();
    loop {
        let k = events(g, event, user).len();
        if k >= n || start.elapsed() > Duration::from_secs(20) {
            // A moment more, so an extra (wrong) event would show too.
            std::thread::sleep(Duration::from_millis(200));
            return events(g, event, user).len();
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn audit_log_records_pin_failures_and_lockouts_with_the_user() {
    let g = Gateway::start_with(opts_with_extra("lockout:\n  ip_max_failures: 100\n"));
    let c = client();
    let at = g.token("mallory-target", &[]);
    let secret_guess = "86420975";
    enroll_pin(&g, &c, &at, "739164825");
    let csrf = pin_csrf(&g, &c, &at);
    for _ in 0..5 {
        post_pin(&g, &c, &at, &csrf, secret_guess, "/admin/x", None);
    }
    assert_eq!(
        wait_for_events(&g, "pin_failure", "mallory-target", 5),
        5,
        "one pin_failure per evaluated guess"
    );
    let lockouts = events(&g, "lockout", "mallory-target");
    assert_eq!(lockouts.len(), 1, "one lockout event: {lockouts:?}");
    assert_eq!(lockouts[0]["detail"], "user");
    assert_eq!(lockouts[0]["ip"], "127.0.0.1");
    let fail = &events(&g, "pin_failure", "mallory-target")[0];
    assert_eq!(fail["ip"], "127.0.0.1");
    assert_eq!(fail["target"], "audit");
    let log = g.log();
    assert!(!log.contains(secret_guess), "guessed PINs are not logged");
    assert!(!log.contains("739164825"), "the PIN is not logged");
}
