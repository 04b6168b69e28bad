//! Regression tests for the findings of an attacker's review of binding,
//! kept requests and LoginRadius paths (fixed in "Hardening after an
//! attacker's review…"). Each test sends what the attacker sent, through the
//! real `stepgate serve`, to a real app that records every request it gets
//! (`tests/fixtures/transfer_app.py`), and checks that stepgate refuses it
//! and the app saw nothing, where before the fix the request reached the
//! app with other values or as another method than the step-up approved.
//!
//! Requests reqwest cannot send as the attacker wrote them (two headers of
//! one name in a set order, a body cut short, paths sent byte for byte) go
//! over a raw `TcpStream`.

mod common;

use common::api::{api_secret_config, bearer, API_SECRET};
use common::transfer::*;
use common::*;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use reqwest::blocking::{Client, Response};
use serde_json::{json, Value};

const PIN: &str = "2580";
const EMAIL: &str = "alice@x.test";
const FORM: &str = "application/x-www-form-urlencoded";
const JSON: &str = "application/json";

/// The policy the attacker reviewed.
const POLICY: &str = r#"
default: authenticated
rules:
  - name: transfer5
    match: { path: "/transfer5", methods: [POST] }
    require: step_up
    step_up: { methods: [pin], max_age: 5m, bind: [amount, to_account] }
  - name: settings
    match: { path: "/settings", methods: [POST] }
    require: step_up
    step_up: { methods: [pin], max_age: 0 }
  - name: account-delete
    match: { path: "/account/*", methods: [DELETE] }
    require: step_up
    step_up: { methods: [pin], max_age: 0 }
  - name: doc-delete
    match: { path: "/doc/*", methods: [DELETE] }
    require: step_up
    step_up: { methods: [email_otp], max_age: 5m }
  - name: doc-post
    match: { path: "/doc/*", methods: [POST] }
    require: step_up
    step_up: { methods: [pin], max_age: 5m }
"#;

// ---------------------------------------------------------------------------
// The recording app
// ---------------------------------------------------------------------------

fn gateway(app: &App) -> Gateway {
    Gateway::start_in_front_of(
        &app.url(),
        GatewayOptions {
            policy: POLICY.to_string(),
            extra_config: api_secret_config(),
            ..Default::default()
        },
    )
}

/// alice's fresh first-factor token, her PIN set up.
fn alice(g: &Gateway, c: &Client) -> String {
    let at = g.token("alice", &["--email", EMAIL]);
    enroll_pin(g, c, &at, PIN);
    at
}

// ---------------------------------------------------------------------------
// API clients
// ---------------------------------------------------------------------------

/// An API client's POST (JSON accepted, the access token as a bearer, the
/// step-up token when given), with this content type (none: no header)
/// and more headers.
#[allow(clippy::too_many_arguments)]
fn api_post(
    g: &Gateway,
    c: &Client,
    at: &str,
    su: Option<&str>,
    target: &str,
    content_type: Option<&str>,
    body: impl Into<Vec<u8>>,
    more: &[(&str, &str)],
) -> Response {
    let mut rb = bearer(c.post(g.url(target)), at)
        .header("Accept", "application/json")
        .body(body.into());
    if let Some(ct) = content_type {
        rb = rb.header("Content-Type", ct);
    }
    if let Some(su) = su {
        rb = rb.header("X-Stepgate-Token", su);
    }
    for (k, v) in more {
        rb = rb.header(*k, *v);
    }
    rb.send().unwrap()
}

/// Status and body text.
fn read(r: Response) -> (u16, String) {
    let s = r.status().as_u16();
    (s, r.text().unwrap())
}

/// 400 `invalid_request` as JSON.
fn assert_400(r: Response, what: &str) -> Value {
    let (status, text) = read(r);
    assert_eq!(status, 400, "{what} is refused: {text}");
    let v: Value = serde_json::from_str(&text).unwrap_or_else(|_| panic!("{what}: JSON: {text}"));
    assert_eq!(v["error"], "invalid_request", "{what}: {v}");
    v
}

/// 401, a step-up is needed (RFC 9470); the JSON body.
fn assert_401(r: Response, what: &str) -> Value {
    let www = header(&r, "www-authenticate");
    let (status, text) = read(r);
    assert_eq!(status, 401, "{what}: a step-up is needed: {text}");
    assert!(
        www.contains("insufficient_user_authentication"),
        "{what}: {www}"
    );
    serde_json::from_str(&text).unwrap_or_else(|_| panic!("{what}: JSON: {text}"))
}

// ---------------------------------------------------------------------------
// Browsers
// ---------------------------------------------------------------------------

struct Answer {
    status: u16,
    location: String,
    body: String,
}

fn answer(r: Response) -> Answer {
    let location = header(&r, "location");
    Answer {
        status: r.status().as_u16(),
        location,
        body: r.text().unwrap(),
    }
}

/// Accept: text/html and the first-factor cookie.
struct Browser<'a> {
    g: &'a Gateway,
    c: Client,
    at: String,
}

impl Browser<'_> {
    fn get(&self, path: &str) -> Answer {
        answer(
            self.c
                .get(self.g.url(path))
                .header("Cookie", format!("access_token={}", self.at))
                .header("Accept", "text/html")
                .send()
                .unwrap(),
        )
    }

    fn post(&self, path: &str, content_type: &str, body: &[u8], more: &[(&str, &str)]) -> Answer {
        let mut rb = self
            .c
            .post(self.g.url(path))
            .header("Cookie", format!("access_token={}", self.at))
            .header("Accept", "text/html")
            .header("Content-Type", content_type)
            .body(body.to_vec());
        for (k, v) in more {
            rb = rb.header(*k, *v);
        }
        answer(rb.send().unwrap())
    }
}

/// A browser's POST to the challenge, kept: its redirect; returns the PIN
/// page's URL (the challenge's query, as the page links it).
fn kept_pin_url(a: &Answer, what: &str) -> String {
    assert_eq!(a.status, 303, "{what}: {}", a.body);
    assert!(
        a.location.starts_with("/.stepgate/challenge?"),
        "{what}: {}",
        a.location
    );
    assert!(
        param(&a.location, "kept").is_some_and(|k| !k.is_empty()),
        "{what}: kept: {}",
        a.location
    );
    assert!(param(&a.location, "resend").is_none(), "{}", a.location);
    format!("/.stepgate/pin?{}", a.location.split_once('?').unwrap().1)
}

/// Not kept, and why (`resend=why`) in the redirect to the challenge.
fn assert_not_kept(a: &Answer, why: &str, what: &str) {
    assert_eq!(a.status, 303, "{what}: {}", a.body);
    assert!(
        a.location.starts_with("/.stepgate/challenge?"),
        "{what}: {}",
        a.location
    );
    assert_eq!(
        param(&a.location, "resend").as_deref(),
        Some(why),
        "{what}: {}",
        a.location
    );
    assert!(
        param(&a.location, "kept").is_none(),
        "{what}: {}",
        a.location
    );
}

// ---------------------------------------------------------------------------
// Raw HTTP
// ---------------------------------------------------------------------------

/// Send `request` as is (it should say `Connection: close`) and read the
/// answer to its end: status, head, body.
fn raw(port: u16, request: &[u8]) -> (u16, String, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.write_all(request).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, head.to_string(), body.to_string())
}

/// A zlib stream (`Content-Encoding: deflate`) of `data` in one stored
/// block: what an app inflates to `data`.
fn zlib_stored(data: &[u8]) -> Vec<u8> {
    assert!(data.len() < 65536);
    let n = data.len() as u16;
    let mut out = vec![0x78, 0x01, 0x01];
    out.extend_from_slice(&n.to_le_bytes());
    out.extend_from_slice(&(!n).to_le_bytes());
    out.extend_from_slice(data);
    let (mut a, mut b) = (1u32, 0u32);
    for &byte in data {
        a = (a + byte as u32) % 65521;
        b = (b + a) % 65521;
    }
    out.extend_from_slice(&((b << 16) | a).to_be_bytes());
    out
}

fn bob_100() -> Value {
    json!({"amount": "100", "to_account": "bob"})
}

// ---------------------------------------------------------------------------
// 1. Two Content-Type headers
// ---------------------------------------------------------------------------

#[test]
fn two_content_type_headers_are_refused_at_the_edge() {
    let app = App::start();
    let g = gateway(&app);
    let c = client();
    let at = alice(&g, &c);
    let su = api_pin_token(&g, &c, &at, PIN, Some(bob_100()));

    // stepgate would read the form, an app that takes the last header the
    // JSON (and the other way round).
    let body = "amount=100&to_account=bob";
    let request = format!(
        "POST /transfer5 HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: Bearer {at}\r\nX-Stepgate-Token: {su}\r\nAccept: application/json\r\nContent-Type: {FORM}\r\nContent-Type: {JSON}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len(),
        port = g.port,
    );
    let (status, head, text) = raw(g.port, request.as_bytes());
    assert_eq!(status, 400, "two Content-Types: {head}\n{text}");
    let v: Value = serde_json::from_str(&text).unwrap_or_else(|_| panic!("JSON: {text}"));
    assert_eq!(v["reason"], "many_content_types", "{v}");
    assert!(
        app.settled_to("/transfer5").is_empty(),
        "the app saw nothing"
    );

    // Control: the same request with one Content-Type is admitted.
    let r = api_post(&g, &c, &at, Some(&su), "/transfer5", Some(FORM), body, &[]);
    let (status, text) = read(r);
    assert_eq!(status, 201, "one Content-Type: {text}");
    assert_eq!(app.settled_to("/transfer5").len(), 1);
}

// ---------------------------------------------------------------------------
// 2. Content-Encoding
// ---------------------------------------------------------------------------

#[test]
fn a_compressed_body_is_never_judged_kept_or_checked_for_method() {
    let app = App::start();
    let g = gateway(&app);
    let c = client();
    let at = alice(&g, &c);
    let su = api_pin_token(&g, &c, &at, PIN, Some(bob_100()));
    let deflate = [("Content-Encoding", "deflate")];

    // The bound rule: whatever its bytes read as, the app reads what they
    // inflate to. Bytes that read as the approved transfer are not judged
    // (before the fix they were, and the request went on)…
    let r = api_post(
        &g,
        &c,
        &at,
        Some(&su),
        "/transfer5",
        Some(FORM),
        "amount=100&to_account=bob",
        &deflate,
    );
    assert_400(r, "the approved form labelled deflate");
    // … nor is a real zlib stream of another transfer.
    let body = zlib_stored(b"amount=100&to_account=mallory");
    let r = api_post(
        &g,
        &c,
        &at,
        Some(&su),
        "/transfer5",
        Some(FORM),
        body,
        &deflate,
    );
    assert_400(r, "a deflated bound form");
    let body = zlib_stored(br#"{"amount":"100","to_account":"mallory"}"#);
    let r = api_post(
        &g,
        &c,
        &at,
        Some(&su),
        "/transfer5",
        Some(JSON),
        body,
        &deflate,
    );
    assert_400(r, "a deflated bound JSON body");
    assert!(app.settled_to("/transfer5").is_empty());

    // A browser's compressed form is not kept: it must be sent again.
    let b = Browser {
        g: &g,
        c: client(),
        at: at.clone(),
    };
    let a = b.post(
        "/settings",
        FORM,
        &zlib_stored(b"theme=dark"),
        &[("Content-Encoding", "deflate")],
    );
    assert_not_kept(&a, "upload", "a deflated form for /settings");
    assert!(app.settled_to("/settings").is_empty());

    // The `_method` check cannot tell what it inflates to: judged as the
    // DELETE it may be.
    let body = zlib_stored(b"_method=DELETE");
    let r = api_post(&g, &c, &at, None, "/account/1", Some(FORM), body, &deflate);
    assert_401(r, "a deflated form POST to /account/1");
    assert!(app.settled_to("/account/1").is_empty());
}

// ---------------------------------------------------------------------------
// 3. Other spellings of a bound name
// ---------------------------------------------------------------------------

#[test]
fn every_spelling_an_app_reads_as_a_bound_name_is_refused() {
    let app = App::start();
    let g = gateway(&app);
    let c = client();
    let at = alice(&g, &c);
    let su = api_pin_token(&g, &c, &at, PIN, Some(bob_100()));

    for body in [
        // PHP drops leading whitespace: ` amount`.
        "amount=100&to_account=bob&+amount=9",
        "amount=100&to_account=bob&%20amount=9",
        // PHP reads `.`, ` ` and an unmatched `[` as `_`.
        "amount=100&to_account=bob&to.account=mallory",
        "amount=100&to_account=bob&to+account=mallory",
        "amount=100&to_account=bob&to[account=mallory",
        // Arrays (PHP, qs): `amount[]`, `amount[0]`.
        "amount=100&to_account=bob&amount[]=9",
        "amount=100&to_account=bob&amount%5B%5D=9",
        "amount[0]=9&amount=100&to_account=bob",
        // Rack 2 splits on `;` too.
        "amount=100&x=1;amount=9&to_account=bob",
    ] {
        let r = api_post(&g, &c, &at, Some(&su), "/transfer5", Some(FORM), body, &[]);
        assert_400(r, body);
    }
    assert!(
        app.settled_to("/transfer5").is_empty(),
        "none of those reached the app"
    );

    // Control: the approved values, an unbound field beside them.
    let body = "amount=100&to_account=bob&memo=x";
    let r = api_post(&g, &c, &at, Some(&su), "/transfer5", Some(FORM), body, &[]);
    let (status, text) = read(r);
    assert_eq!(status, 201, "the approved transfer: {text}");
    let got = app.settled_to("/transfer5");
    assert_eq!(got.len(), 1, "once: {got:?}");
    assert_eq!(got[0].body, body.as_bytes());
}

// ---------------------------------------------------------------------------
// 4. `;` in the query
// ---------------------------------------------------------------------------

#[test]
fn a_bound_name_after_a_semicolon_in_the_query_is_refused() {
    let app = App::start();
    let g = gateway(&app);
    let c = client();
    let at = alice(&g, &c);
    let su = api_pin_token(&g, &c, &at, PIN, Some(bob_100()));

    let target = "/transfer5?amount=100&to_account=bob&x=1;amount=999";
    let r = api_post(&g, &c, &at, Some(&su), target, None, "", &[]);
    assert_400(r, target);
    // The same bytes on the wire, in case a client library re-encodes.
    let request = format!(
        "POST {target} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nAuthorization: Bearer {at}\r\nX-Stepgate-Token: {su}\r\nAccept: application/json\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        g.port
    );
    let (status, head, text) = raw(g.port, request.as_bytes());
    assert_eq!(status, 400, "{target} over TCP: {head}\n{text}");
    assert!(app.settled_to("/transfer5").is_empty());

    // Control: without the `;` piece it is the approved transfer.
    let target = "/transfer5?amount=100&to_account=bob&x=1";
    let (status, text) = read(api_post(&g, &c, &at, Some(&su), target, None, "", &[]));
    assert_eq!(status, 201, "{target}: {text}");
    assert_eq!(app.settled_to("/transfer5").len(), 1);
}

// ---------------------------------------------------------------------------
// 5. `_method` in any body, under any spelling
// ---------------------------------------------------------------------------

#[test]
fn a_method_override_in_any_body_or_spelling_needs_the_deletes_step_up() {
    let app = App::start();
    let g = gateway(&app);
    let c = client();
    let at = alice(&g, &c);

    let cases: &[(&str, &str, Option<&str>, &str)] = &[
        (
            "a body without Content-Type",
            "/account/1",
            None,
            "_method=DELETE",
        ),
        (
            "multipart/mixed",
            "/account/1",
            Some("multipart/mixed; boundary=XyZ"),
            "_method=DELETE",
        ),
        (
            "a JSON body",
            "/account/1",
            Some(JSON),
            r#"{"_method":"DELETE"}"#,
        ),
        (
            "an escaped name in the query",
            "/account/1?%5Fmethod=DELETE",
            Some(JSON),
            r#"{"a":1}"#,
        ),
        (
            "PHP's `.` for `_` in a form",
            "/account/1",
            Some(FORM),
            ".method=DELETE",
        ),
    ];
    for (what, target, ct, body) in cases {
        let r = api_post(&g, &c, &at, None, target, *ct, *body, &[]);
        assert_401(r, what);
    }
    assert!(
        app.settled_to("/account/1").is_empty(),
        "no override reached the app"
    );

    // Control: a JSON body without `_method` is a plain POST (authenticated).
    let r = api_post(
        &g,
        &c,
        &at,
        None,
        "/account/1",
        Some(JSON),
        r#"{"a":1}"#,
        &[],
    );
    let (status, text) = read(r);
    assert_eq!(status, 201, "a plain POST is forwarded: {text}");
    let got = app.settled_to("/account/1");
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].method, "POST");
}

// ---------------------------------------------------------------------------
// 6. Step-ups neither of which covers the other
// ---------------------------------------------------------------------------

#[test]
fn an_override_to_a_method_needing_other_factors_is_denied() {
    let app = App::start();
    let g = gateway(&app);
    let c = client();
    let at = alice(&g, &c);
    let su = api_pin_token(&g, &c, &at, PIN, None);

    // POST /doc/* needs the PIN, DELETE /doc/* an emailed code: a PIN
    // step-up must not let a POST run as the DELETE.
    let r = api_post(
        &g,
        &c,
        &at,
        Some(&su),
        "/doc/1",
        Some(FORM),
        "_method=DELETE",
        &[],
    );
    let (status, text) = read(r);
    assert_eq!(status, 403, "denied: {text}");
    let v: Value = serde_json::from_str(&text).unwrap_or_else(|_| panic!("JSON: {text}"));
    assert_eq!(v["error"], "forbidden", "{v}");
    assert!(app.settled_to("/doc/1").is_empty(), "the app saw nothing");

    // Control: the same PIN step-up admits a POST that is only a POST.
    let r = api_post(&g, &c, &at, Some(&su), "/doc/1", Some(FORM), "title=x", &[]);
    let (status, text) = read(r);
    assert_eq!(status, 201, "a plain POST with the PIN: {text}");
    assert_eq!(app.settled_to("/doc/1").len(), 1);
}

// ---------------------------------------------------------------------------
// 7. Cross-site requests are not kept; the page names what a kept one sends
// ---------------------------------------------------------------------------

#[test]
fn a_cross_site_post_is_not_kept_and_the_page_names_a_kept_one() {
    let app = App::start();
    let g = gateway(&app);
    let c = client();
    let b = Browser {
        g: &g,
        at: alice(&g, &c),
        c,
    };
    let body = b"theme=dark&lang=en";

    for (what, more) in [
        (
            "Origin of another site",
            [("Origin", "https://evil.example")],
        ),
        (
            "Sec-Fetch-Site: cross-site",
            [("Sec-Fetch-Site", "cross-site")],
        ),
    ] {
        let a = b.post("/settings", FORM, body, &more);
        assert_not_kept(&a, "cross", what);
    }
    assert!(app.settled_to("/settings").is_empty());

    // The site's own form is kept, and the PIN page says what it sends.
    let own = g.url("");
    let a = b.post(
        "/settings",
        FORM,
        body,
        &[("Origin", &own), ("Sec-Fetch-Site", "same-origin")],
    );
    let pin_url = kept_pin_url(&a, "a same-origin POST");
    let page = b.get(&pin_url);
    assert_eq!(page.status, 200, "{pin_url}: {}", page.body);
    let html = unescape(&page.body);
    let i = html
        .find("id=\"kept-request\"")
        .unwrap_or_else(|| panic!("the page names the kept request:\n{html}"));
    let named = &html[i..][..html[i..].find("</span>").unwrap()];
    assert!(named.contains("POST /settings"), "{named}");
    assert!(named.contains("theme, lang"), "the field names: {named}");
    assert!(app.settled_to("/settings").is_empty());
}

// ---------------------------------------------------------------------------
// 8. Secrets out of the logs
// ---------------------------------------------------------------------------

#[test]
fn a_cut_off_body_does_not_log_the_query() {
    let app = App::start();
    let g = gateway(&app);
    let request = format!(
        "POST /.stepgate/api/pin/set/pinauthtoken?pinauthtoken=SECRET-XYZ HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"PIN\":\"12",
        g.port
    );
    {
        let mut s = TcpStream::connect(("127.0.0.1", g.port)).unwrap();
        s.write_all(request.as_bytes()).unwrap();
        s.flush().unwrap();
        std::thread::sleep(Duration::from_millis(100));
        // Dropped: the connection closes 90 bytes short.
    }
    // Wait for Pingora's error line about the failed request (it names the
    // request: before the fix with its query).
    let pingora_line = |log: &str| {
        log.lines()
            .any(|l| l.contains("pingora_proxy") && l.contains("/pin/set/pinauthtoken"))
    };
    let start = Instant::now();
    while !pingora_line(&g.log()) && start.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(200));
    let log = g.log();
    assert!(
        !log.contains("SECRET-XYZ"),
        "the PINAuthToken is in the log:\n{log}"
    );
    assert!(
        pingora_line(&log),
        "Pingora logged the cut-off request (so the check above means something):\n{log}"
    );
}

// ---------------------------------------------------------------------------
// 9. Lossy decodings
// ---------------------------------------------------------------------------

#[test]
fn values_are_compared_as_exact_text_never_a_lossy_reading() {
    let app = App::start();
    let g = gateway(&app);
    let c = client();
    let at = alice(&g, &c);

    // Escapes that are not UTF-8: refused, whatever was approved (also the
    // replacement character a lossy decoding yields).
    for approved in ["bob", "bob\u{FFFD}"] {
        let su = api_pin_token(
            &g,
            &c,
            &at,
            PIN,
            Some(json!({"amount": "100", "to_account": approved})),
        );
        for body in [
            "amount=100&to_account=bob%FE",
            "amount=100&to_account=bob%FF",
        ] {
            let r = api_post(&g, &c, &at, Some(&su), "/transfer5", Some(FORM), body, &[]);
            assert_400(r, &format!("{body} (approved: {approved:?})"));
        }
    }
    assert!(app.settled_to("/transfer5").is_empty());

    // A JSON number too large for a float is itself, not its rounding
    // (which read as "1e+20" before the fix, approved by a "1e+20").
    let other = r#"{"amount":100000000000000000001,"to_account":"bob"}"#;
    let su = api_pin_token(
        &g,
        &c,
        &at,
        PIN,
        Some(json!({"amount": "1e+20", "to_account": "bob"})),
    );
    let r = api_post(&g, &c, &at, Some(&su), "/transfer5", Some(JSON), other, &[]);
    assert_401(r, "a large number against its float rounding");
    let approved = "100000000000000000000";
    let su = api_pin_token(
        &g,
        &c,
        &at,
        PIN,
        Some(json!({"amount": approved, "to_account": "bob"})),
    );
    let r = api_post(&g, &c, &at, Some(&su), "/transfer5", Some(JSON), other, &[]);
    let v = assert_401(r, "another amount");
    assert_eq!(
        v["binding"],
        json!({"amount": "100000000000000000001", "to_account": "bob"}),
        "{v}"
    );
    assert!(app.settled_to("/transfer5").is_empty());

    // Control: the approved number itself.
    let same = r#"{"amount":100000000000000000000,"to_account":"bob"}"#;
    let r = api_post(&g, &c, &at, Some(&su), "/transfer5", Some(JSON), same, &[]);
    let (status, text) = read(r);
    assert_eq!(status, 201, "the approved amount: {text}");
    let got = app.settled_to("/transfer5");
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].body, same.as_bytes());
}

// ---------------------------------------------------------------------------
// 10. Replays carry none of the step-up POST's body framing
// ---------------------------------------------------------------------------

#[test]
fn a_replayed_request_drops_the_step_up_posts_content_encoding() {
    let app = App::start();
    let g = gateway(&app);
    let c = client();
    let b = Browser {
        g: &g,
        at: alice(&g, &c),
        c,
    };
    let body = b"theme=dark&lang=en";
    let a = b.post("/settings", FORM, body, &[]);
    let pin_url = kept_pin_url(&a, "a browser's POST to /settings");
    let page = b.get(&pin_url);
    assert_eq!(page.status, 200, "{pin_url}: {}", page.body);
    let form = form_of(&page.body, "/.stepgate/pin", &[("pin", PIN)]);
    // A plain form, labelled gzip: the app would try to inflate the kept
    // body.
    let done = b.post(
        "/.stepgate/pin",
        FORM,
        form.as_bytes(),
        &[("Content-Encoding", "gzip")],
    );
    assert_eq!(done.status, 201, "the kept request went on: {}", done.body);
    let got = app.settled_to("/settings");
    assert_eq!(got.len(), 1, "{got:?}");
    let r = &got[0];
    assert_eq!(r.method, "POST");
    assert_eq!(r.body, body, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.header("content-encoding"), None, "{:?}", r.headers);
    assert_eq!(r.header("content-type"), Some(FORM));
    assert_eq!(r.header("content-length"), Some("18"));
}

// ---------------------------------------------------------------------------
// 11. LoginRadius's reserved first segment, as servers read it
// ---------------------------------------------------------------------------

#[test]
fn identity_spelled_as_servers_read_it_is_never_forwarded() {
    let app = App::start();
    let g = Gateway::start_in_front_of(
        &app.url(),
        GatewayOptions {
            policy: POLICY.to_string(),
            extra_config: format!("api:\n  secret: \"{API_SECRET}\"\n  loginradius_root: true\n"),
            ..Default::default()
        },
    );
    let c = client();
    let at = g.token("alice", &["--email", EMAIL]);
    let pin = r#"{"PIN":"2580"}"#;
    for target in [
        "/identity./v2/auth/x",
        "/%C4%B1dentity/v2/x",
        "/identity%20/v2/x",
        "/IDENTITY%2E/v2/auth/x",
    ] {
        let request = format!(
            "POST {target} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nAuthorization: Bearer {at}\r\nAccept: application/json\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{pin}",
            g.port,
            pin.len()
        );
        let (status, head, text) = raw(g.port, request.as_bytes());
        assert_eq!(
            status, 404,
            "{target}: answered by stepgate: {head}\n{text}"
        );
        // stepgate's own answer: a LoginRadius-shaped error, or (for the
        // spellings its API router does not take as `/identity`) its HTML
        // "no page at this address".
        let lr = serde_json::from_str::<Value>(&text).is_ok_and(|v| v["ErrorCode"].is_u64());
        assert!(
            lr || text.contains("stepgate has no page at this address"),
            "{target}: answered by stepgate: {text}"
        );
    }
    assert!(
        app.settled().is_empty(),
        "the app saw none of them: {:?}",
        app.requests()
    );

    // Control: another first segment is the app's.
    let r = bearer(c.post(g.url("/identityx/v2/x")), &at)
        .header("Accept", "application/json")
        .header("Content-Type", JSON)
        .body(pin)
        .send()
        .unwrap();
    let (status, text) = read(r);
    assert_eq!(status, 201, "/identityx is forwarded: {text}");
    assert_eq!(app.settled().len(), 1);
}

// ---------------------------------------------------------------------------
// 12. Taking a kept request frees its quota slot
// ---------------------------------------------------------------------------

#[test]
fn finished_kept_requests_free_their_quota_slots() {
    let app = App::start();
    let g = gateway(&app);
    let c = client();
    let b = Browser {
        g: &g,
        at: alice(&g, &c),
        c,
    };
    // One more than a user may have kept at a time (20), each finished.
    for i in 0..21 {
        let body = format!("theme=dark&n={i}");
        let a = b.post("/settings", FORM, body.as_bytes(), &[]);
        let pin_url = kept_pin_url(&a, &format!("POST number {}", i + 1));
        let page = b.get(&pin_url);
        assert_eq!(page.status, 200, "{pin_url}: {}", page.body);
        let form = form_of(&page.body, "/.stepgate/pin", &[("pin", PIN)]);
        let done = b.post("/.stepgate/pin", FORM, form.as_bytes(), &[]);
        assert_eq!(done.status, 201, "number {}: {}", i + 1, done.body);
    }
    let got = app.settled_to("/settings");
    assert_eq!(got.len(), 21);
    assert_eq!(got[20].body, b"theme=dark&n=20");
}
