//! Transaction binding and the kept request, end to end over real sockets:
//! the real `stepgate serve` in front of a real app that records every
//! request it gets (`tests/fixtures/transfer_app.py`), a real SMTP server
//! for the emailed codes, a real Redis shared by two gateways, a real
//! headless Chromium, and the real CLI.
//!
//! - A browser's form or JSON POST (also chunked) to a bound `max_age: 0`
//!   rule is kept; the step-up pages show the bound values (escaped); the
//!   PIN (or email code) POST becomes that request, which reaches the app
//!   once, byte for byte, and the app's answer is the answer, with the
//!   step-up cookie; a replay is refused (410). Only the session that sent
//!   it can finish it; a first-time user sets up a PIN on the way; rules
//!   without `bind` keep bodies too.
//! - Any gateway sharing the store can finish a kept request, once (also
//!   when both try at the same moment); the store holds it sealed.
//! - Over the API the step-up approves exactly the values it names; other
//!   values, a second use, an unbound token and ambiguous requests are
//!   refused; validate and the assertion carry the documented digest; an
//!   emailed code approves what its mail showed.
//! - Bodies that are not kept (too large, uploads) say so on the page where
//!   the PIN is entered, and nothing is replayed.
//! - A POST-only rule's challenge offers that rule's factors.
//! - `explain` and `policy lint` know `bind`.

mod common;

use common::api::{api, api_secret_config, bearer, API_SECRET};
use common::redis::{redis_store, require_redis, Redis};
use common::smtp::SmtpServer;
use common::transfer::*;
use common::*;

use std::path::PathBuf;
use std::process::{Command, Stdio};

use base64::Engine as _;
use reqwest::blocking::{Client, Response};
use serde_json::{json, Value};
use sha2::Digest as _;

const PIN: &str = "2580";
const EMAIL: &str = "alice@x.test";

const POLICY: &str = r#"
default: authenticated
rules:
  - name: demo-login
    match: { path: "/demo/login" }
    require: none
  - name: transfer
    match: { path: "/transfer", methods: [POST] }
    require: step_up
    step_up:
      methods: [pin, email_otp]
      max_age: 0
      bind: ["amount", "to"]
  - name: settings
    match: { path: "/settings", methods: [POST] }
    require: step_up
    step_up: { methods: [pin], max_age: 0 }
  - name: profile
    match: { path: "/profile", methods: [POST] }
    require: step_up
    step_up: { methods: [pin, email_otp], max_age: 0 }
"#;

const FORM: &str = "application/x-www-form-urlencoded";
/// The transfer a browser sends (the memo is not bound).
const FORM_BODY: &str = "amount=100&to=bob&memo=rent+%26+bills";
/// Where it sends it: a query the app reads too.
const TARGET: &str = "/transfer?channel=web&ref=a%2Fb";

// ---------------------------------------------------------------------------
// The recording app
// ---------------------------------------------------------------------------

/// A gateway with `POLICY` in front of `app`, and `extra` config.
fn gateway(app: &App, extra: &str) -> Gateway {
    Gateway::start_in_front_of(
        &app.url(),
        GatewayOptions {
            policy: POLICY.to_string(),
            extra_config: extra.to_string(),
            ..Default::default()
        },
    )
}

// ---------------------------------------------------------------------------
// A browser over HTTP
// ---------------------------------------------------------------------------

/// What a response said, read once.
struct Answer {
    status: u16,
    location: String,
    headers: reqwest::header::HeaderMap,
    su: Option<String>,
    body: String,
}

fn answer(r: Response) -> Answer {
    let location = header(&r, "location");
    let su = set_cookie(&r, "stepgate_su");
    Answer {
        status: r.status().as_u16(),
        location,
        headers: r.headers().clone(),
        su,
        body: r.text().unwrap(),
    }
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// A signed-in user's browser (Accept: text/html, the first-factor cookie).
struct Browser<'a> {
    g: &'a Gateway,
    c: Client,
    at: String,
    /// More cookies sent along (`name=value; …`), e.g. the step-up cookie.
    more: String,
}

impl<'a> Browser<'a> {
    /// `sub` with a fresh login and `EMAIL`, and the PIN set up.
    fn new(g: &'a Gateway, sub: &str) -> Browser<'a> {
        let at = g.token(sub, &["--email", EMAIL]);
        let c = client();
        enroll_pin(g, &c, &at, PIN);
        Browser {
            g,
            c,
            at,
            more: String::new(),
        }
    }

    /// The same user and session on gateway `g`.
    fn on(&self, g: &'a Gateway) -> Browser<'a> {
        Browser {
            g,
            c: client(),
            at: self.at.clone(),
            more: self.more.clone(),
        }
    }

    /// The same browser sending the step-up cookie `su` too.
    fn with_step_up(&self, su: &str) -> Browser<'a> {
        Browser {
            more: format!("; stepgate_su={su}"),
            ..self.on(self.g)
        }
    }

    /// Another session of the same user (a new login, its own `sid`).
    fn another_session(&self, sub: &str) -> Browser<'a> {
        Browser {
            at: self.g.token(sub, &["--email", EMAIL]),
            ..self.on(self.g)
        }
    }

    fn cookie(&self) -> String {
        format!("access_token={}{}", self.at, self.more)
    }

    fn get(&self, path: &str) -> Answer {
        answer(
            self.c
                .get(self.g.url(path))
                .header("Cookie", self.cookie())
                .header("Accept", "text/html")
                .send()
                .unwrap(),
        )
    }

    /// A POST of exactly `body` with this content type.
    fn post(&self, path: &str, content_type: &str, body: impl Into<Vec<u8>>) -> Answer {
        answer(
            self.c
                .post(self.g.url(path))
                .header("Cookie", self.cookie())
                .header("Accept", "text/html")
                .header("Content-Type", content_type)
                .body(body.into())
                .send()
                .unwrap(),
        )
    }

    /// A POST of `body` with `Transfer-Encoding: chunked`.
    fn post_chunked(&self, path: &str, content_type: &str, body: Vec<u8>) -> Answer {
        answer(
            self.c
                .post(self.g.url(path))
                .header("Cookie", self.cookie())
                .header("Accept", "text/html")
                .header("Content-Type", content_type)
                .body(reqwest::blocking::Body::new(std::io::Cursor::new(body)))
                .send()
                .unwrap(),
        )
    }

    /// Submit the form of `page` that posts to `action` as a browser would:
    /// its hidden fields as the page has them, and `fields`.
    fn submit(&self, page: &str, action: &str, fields: &[(&str, &str)]) -> Answer {
        self.post(action, FORM, form_of(page, action, fields))
    }
}

/// The bound value a page shows for `name` (`<dd id="confirm-NAME">`).
fn confirmed(page: &str, name: &str) -> Option<String> {
    let marker = format!("id=\"confirm-{name}\">");
    let i = page.find(&marker)? + marker.len();
    Some(unescape(&page[i..][..page[i..].find("</dd>")?]))
}

/// The challenge a kept POST of `body` to `TARGET` was sent to: checks the
/// redirect and that nothing reached the app; returns (location, kept id).
fn keep(b: &Browser, app: &App, content_type: &str, body: &[u8]) -> (String, String) {
    keep_sent(b, app, content_type, body, false)
}

/// `keep`, the body sent `chunked` (no Content-Length) or not.
fn keep_sent(
    b: &Browser,
    app: &App,
    content_type: &str,
    body: &[u8],
    chunked: bool,
) -> (String, String) {
    let before = app.to("/transfer").len();
    let a = match chunked {
        true => b.post_chunked(TARGET, content_type, body.to_vec()),
        false => b.post(TARGET, content_type, body.to_vec()),
    };
    assert_eq!(
        a.status, 303,
        "a browser's bound POST is sent to the challenge:\n{}",
        a.body
    );
    assert!(
        a.location.starts_with("/.stepgate/challenge?"),
        "location: {}",
        a.location
    );
    assert_eq!(
        param(&a.location, "return_to").as_deref(),
        Some(TARGET),
        "{}",
        a.location
    );
    assert_eq!(
        param(&a.location, "method").as_deref(),
        Some("POST"),
        "{}",
        a.location
    );
    let id = param(&a.location, "kept")
        .filter(|k| !k.is_empty())
        .unwrap_or_else(|| panic!("the request is kept: {}", a.location));
    assert!(param(&a.location, "resend").is_none(), "{}", a.location);
    assert_eq!(
        app.settled_to("/transfer").len(),
        before,
        "nothing reached the app before the step-up"
    );
    (a.location, id)
}

/// A step-up page shows amount 100 to bob and says the request is kept.
fn assert_shows_transfer(page: &Answer, what: &str) {
    assert_eq!(page.status, 200, "{what}:\n{}", page.body);
    assert!(
        page.body.contains("id=\"confirm\""),
        "{what}: the values confirmed:\n{}",
        page.body
    );
    assert_eq!(
        confirmed(&page.body, "amount").as_deref(),
        Some("100"),
        "{what}:\n{}",
        page.body
    );
    assert_eq!(
        confirmed(&page.body, "to").as_deref(),
        Some("bob"),
        "{what}:\n{}",
        page.body
    );
    assert!(
        page.body.contains("id=\"kept\""),
        "{what}: says the request is kept:\n{}",
        page.body
    );
}

/// The app's answer to the replayed request, once: the step-up POST's
/// answer is the app's (201, its header and body) with the step-up cookie;
/// the app saw exactly the kept request.
fn assert_replayed_once(
    done: &Answer,
    app: &App,
    content_type: &str,
    body: &[u8],
    amr: &str,
) -> Seen {
    assert_eq!(
        done.status, 201,
        "the step-up POST is answered by the app:\n{}",
        done.body
    );
    assert_eq!(done.header("x-app"), Some("transfer-app"));
    assert!(done.body.contains("Transfer received"), "{}", done.body);
    assert!(done.body.contains("<p id=\"count\">1</p>"), "{}", done.body);
    assert!(
        done.su.is_some(),
        "the step-up cookie comes with the app's answer: {:?}",
        done.headers
    );
    assert!(
        done.headers
            .get_all("set-cookie")
            .iter()
            .any(|v| v.to_str().unwrap().starts_with("app_seen=1")),
        "the app's own cookie too: {:?}",
        done.headers
    );
    let got = app.settled_to("/transfer");
    assert_eq!(got.len(), 1, "the app got the request once: {got:?}");
    let r = &got[0];
    assert_eq!(r.method, "POST");
    assert_eq!(r.path, TARGET, "path and query as sent");
    assert_eq!(r.header("content-type"), Some(content_type));
    assert_eq!(r.headers_named("content-type"), 1);
    assert_eq!(
        r.body,
        body,
        "the body byte for byte: {}",
        String::from_utf8_lossy(&r.body)
    );
    assert_eq!(
        r.header("content-length"),
        Some(body.len().to_string().as_str())
    );
    assert_eq!(r.header("x-stepgate-user"), Some("alice"));
    assert_eq!(r.header("x-stepgate-rule"), Some("transfer"));
    assert_eq!(r.header("x-stepgate-amr"), Some(amr));
    let cookie = r.header("cookie").unwrap_or_default();
    assert!(
        !cookie.contains("stepgate_su"),
        "the step-up token is not forwarded: {cookie}"
    );
    r.clone()
}

/// The same step-up POST once more: 410, and the app sees nothing more.
fn assert_replay_refused(b: &Browser, app: &App, action: &str, form: &[(String, String)]) {
    let body = form_urlencoded::Serializer::new(String::new())
        .extend_pairs(form)
        .finish();
    let again = b.post(action, FORM, body);
    assert_eq!(
        again.status, 410,
        "a kept request goes on once:\n{}",
        again.body
    );
    assert!(
        again.body.contains("This form is no longer waiting"),
        "{}",
        again.body
    );
    assert_eq!(
        app.settled_to("/transfer").len(),
        1,
        "the replay reached nothing"
    );
}

/// The fields of a form as a browser posts them.
fn posted(page: &str, action: &str, fields: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut form = hidden_fields(page, action);
    for (k, v) in fields {
        form.push((k.to_string(), v.to_string()));
    }
    form
}

fn post_fields(b: &Browser, action: &str, form: &[(String, String)]) -> Answer {
    let body = form_urlencoded::Serializer::new(String::new())
        .extend_pairs(form)
        .finish();
    b.post(action, FORM, body)
}

/// Keep a POST, step up with the PIN, check the one replay and the refused
/// second one.
fn kept_through_the_pin(content_type: &str, body: &[u8], chunked: bool) {
    let app = App::start();
    let g = gateway(&app, "");
    let b = Browser::new(&g, "alice");
    let (challenge, id) = keep_sent(&b, &app, content_type, body, chunked);

    let page = b.get(&challenge);
    assert_shows_transfer(&page, "the challenge page");
    let pin_link = format!("/.stepgate/pin?{}", challenge.split_once('?').unwrap().1);
    let page = b.get(&pin_link);
    assert_shows_transfer(&page, "the PIN page");
    // A wrong PIN: the page again, still carrying the kept request.
    let wrong = b.submit(&page.body, "/.stepgate/pin", &[("pin", "9999")]);
    assert_eq!(wrong.status, 401, "{}", wrong.body);
    assert!(wrong.body.contains("id=\"error\""), "{}", wrong.body);
    assert_eq!(confirmed(&wrong.body, "amount").as_deref(), Some("100"));
    assert!(
        app.settled_to("/transfer").is_empty(),
        "a wrong PIN sends nothing"
    );
    let form = posted(&wrong.body, "/.stepgate/pin", &[("pin", PIN)]);
    assert!(
        form.iter().any(|(k, v)| k == "kept" && *v == id),
        "the PIN form carries the kept id: {form:?}"
    );
    let done = post_fields(&b, "/.stepgate/pin", &form);
    let seen = assert_replayed_once(&done, &app, content_type, body, "pin");
    let assertion = seen.header("x-stepgate-assertion").expect("an assertion");
    assert_eq!(
        claims(assertion)["txn"],
        json!({
            "digest": documented_digest("100", "bob"),
            "fields": ["amount", "to"],
            "values": {"amount": "100", "to": "bob"},
        }),
        "the replayed request's assertion says what was approved"
    );
    assert_replay_refused(&b, &app, "/.stepgate/pin", &form);
}

// ---------------------------------------------------------------------------
// 1. The kept request over HTTP
// ---------------------------------------------------------------------------

#[test]
fn a_kept_form_reaches_the_app_once_after_the_pin() {
    kept_through_the_pin(FORM, FORM_BODY.as_bytes(), false);
}

#[test]
fn a_kept_json_body_reaches_the_app_once_after_the_pin() {
    kept_through_the_pin(
        "application/json; charset=utf-8",
        br#"{"amount": 100, "to": "bob", "memo": {"text": "rent & bills"}}"#,
        false,
    );
}

#[test]
fn a_kept_chunked_body_reaches_the_app_once_with_its_length() {
    kept_through_the_pin(FORM, FORM_BODY.as_bytes(), true);
}

#[test]
fn a_kept_form_reaches_the_app_once_after_the_emailed_code() {
    let smtp = SmtpServer::start();
    let app = App::start();
    let g = gateway(
        &app,
        &format!("{}email_otp:\n  resend_cooldown: 0s\n", smtp.mail_config()),
    );
    let b = Browser::new(&g, "alice");
    let body = FORM_BODY.as_bytes();
    let (challenge, id) = keep(&b, &app, FORM, body);
    let page = b.get(&challenge);
    assert_shows_transfer(&page, "the challenge page");
    assert!(page.body.contains("id=\"factor-email\""), "{}", page.body);

    let carry = challenge.split_once('?').unwrap().1;
    let page = b.get(&format!("/.stepgate/email?{carry}"));
    assert_shows_transfer(&page, "the address page");
    let sent = b.submit(&page.body, "/.stepgate/email/send", &[("email", EMAIL)]);
    assert_eq!(sent.status, 303, "the code is sent:\n{}", sent.body);
    assert!(
        sent.location.starts_with("/.stepgate/email/verify?"),
        "{}",
        sent.location
    );
    assert_eq!(
        param(&sent.location, "kept").as_deref(),
        Some(id.as_str()),
        "{}",
        sent.location
    );
    let page = b.get(&sent.location);
    assert_shows_transfer(&page, "the code page");

    let mails = smtp.wait_for_messages(1);
    let mail = &mails[0];
    let text = mail.part("text/plain").expect("a text part");
    assert!(
        text.contains("You are confirming:")
            && text.contains("amount: 100")
            && text.contains("to: bob"),
        "the mail shows what the code approves:\n{text}"
    );
    let html = mail.part("text/html").unwrap_or_default();
    assert!(
        html.contains("100") && html.contains("bob"),
        "the HTML part shows the values too:\n{html}"
    );
    let code = mail.code();

    let form = posted(&page.body, "/.stepgate/email/verify", &[("otp", &code)]);
    assert!(
        form.iter().any(|(k, v)| k == "kept" && *v == id),
        "the code form carries the kept id: {form:?}"
    );
    let done = post_fields(&b, "/.stepgate/email/verify", &form);
    assert_replayed_once(&done, &app, FORM, body, "otp");
    assert_replay_refused(&b, &app, "/.stepgate/email/verify", &form);
}

#[test]
fn a_kept_request_is_finished_only_by_the_session_that_sent_it() {
    let app = App::start();
    let g = gateway(&app, "");
    let alice = Browser::new(&g, "alice");
    let (challenge, id) = keep(&alice, &app, FORM, FORM_BODY.as_bytes());
    let pin_page = format!("/.stepgate/pin?{}", challenge.split_once('?').unwrap().1);

    // Another user, and another session of the same user, with the right
    // PIN and a valid form of their own, naming alice's kept request.
    let bob = Browser::new(&g, "bob");
    let alice_elsewhere = alice.another_session("alice");
    for (who, b) in [
        ("another user", &bob),
        ("another session", &alice_elsewhere),
    ] {
        let page = b.get(&pin_page);
        assert_eq!(page.status, 410, "{who} cannot see it:\n{}", page.body);
        let own = b.get("/.stepgate/pin?return_to=%2Ftransfer");
        assert_eq!(own.status, 200, "{who}: {}", own.body);
        let mut form = posted(&own.body, "/.stepgate/pin", &[("pin", PIN)]);
        form.push(("kept".into(), id.clone()));
        let r = post_fields(b, "/.stepgate/pin", &form);
        assert_eq!(r.status, 410, "{who} cannot finish it:\n{}", r.body);
        assert!(
            app.settled_to("/transfer").is_empty(),
            "{who}: nothing sent"
        );
    }

    // It is still waiting for alice's own session.
    let page = alice.get(&pin_page);
    assert_shows_transfer(&page, "the PIN page");
    let done = alice.submit(&page.body, "/.stepgate/pin", &[("pin", PIN)]);
    assert_replayed_once(&done, &app, FORM, FORM_BODY.as_bytes(), "pin");
}

#[test]
fn bound_values_are_shown_escaped_and_unreadable_browser_requests_are_refused() {
    let app = App::start();
    let g = gateway(&app, "");
    let b = Browser::new(&g, "alice");
    let body = b"amount=100&to=%3Cb%20id%3D%22x%22%3Ebob%3C%2Fb%3E";
    let (challenge, _) = keep(&b, &app, FORM, body);
    let page = b.get(&format!(
        "/.stepgate/pin?{}",
        challenge.split_once('?').unwrap().1
    ));
    assert_eq!(page.status, 200, "{}", page.body);
    assert_eq!(
        confirmed(&page.body, "to").as_deref(),
        Some("<b id=\"x\">bob</b>"),
        "{}",
        page.body
    );
    assert!(
        !page.body.contains("<b id=\"x\">"),
        "the value is escaped:\n{}",
        page.body
    );

    // What the app could read two ways, or not at all, is refused: not
    // kept, not sent.
    let refused: &[(&str, &str, &[u8])] = &[
        ("the amount twice", FORM, b"amount=100&to=bob&amount=100000"),
        (
            "an upload",
            "multipart/form-data; boundary=XyZ",
            b"--XyZ\r\nContent-Disposition: form-data; name=\"amount\"\r\n\r\n100\r\n--XyZ--\r\n",
        ),
    ];
    for (what, ct, body) in refused {
        let a = b.post(TARGET, ct, body.to_vec());
        assert_eq!(a.status, 400, "{what}:\n{}", a.body);
        assert!(a.location.is_empty(), "{what}: {}", a.location);
        assert!(
            a.body.contains("cannot be confirmed"),
            "{what}:\n{}",
            a.body
        );
    }
    assert!(app.settled_to("/transfer").is_empty());
}

#[test]
fn a_first_time_user_sets_up_a_pin_and_the_kept_request_still_goes_on() {
    let app = App::start();
    let g = gateway(&app, "");
    // No PIN yet: a fresh login, so setup is offered.
    let b = Browser {
        g: &g,
        c: client(),
        at: g.token("alice", &["--email", EMAIL]),
        more: String::new(),
    };
    let (challenge, id) = keep(&b, &app, FORM, FORM_BODY.as_bytes());
    let carry = challenge.split_once('?').unwrap().1;
    let to_setup = b.get(&format!("/.stepgate/pin?{carry}"));
    assert_eq!(to_setup.status, 303, "{}", to_setup.body);
    assert!(
        to_setup.location.starts_with("/.stepgate/pin/setup?"),
        "{}",
        to_setup.location
    );
    assert_eq!(
        param(&to_setup.location, "kept"),
        Some(id.clone()),
        "{}",
        to_setup.location
    );
    let setup = b.get(&to_setup.location);
    assert_shows_transfer(&setup, "the setup page");
    let set = b.submit(
        &setup.body,
        "/.stepgate/pin/setup",
        &[("pin", PIN), ("pin_confirm", PIN)],
    );
    assert_eq!(set.status, 303, "{}", set.body);
    assert_eq!(param(&set.location, "kept"), Some(id), "{}", set.location);
    let page = b.get(&set.location);
    assert_shows_transfer(&page, "the PIN page after setup");
    let done = b.submit(&page.body, "/.stepgate/pin", &[("pin", PIN)]);
    assert_replayed_once(&done, &app, FORM, FORM_BODY.as_bytes(), "pin");
}

#[test]
fn a_rule_without_bind_keeps_a_form_or_json_body_too() {
    let app = App::start();
    let g = gateway(&app, "");
    let b = Browser::new(&g, "alice");
    for (path, ct, body) in [
        ("/settings", FORM, &b"theme=dark&lang=en"[..]),
        ("/profile", "application/json", &br#"{"name":"Alice"}"#[..]),
    ] {
        let a = b.post(path, ct, body.to_vec());
        assert_eq!(a.status, 303, "{path}: {}", a.body);
        let id = param(&a.location, "kept").unwrap_or_else(|| panic!("kept: {}", a.location));
        let page = b.get(&format!(
            "/.stepgate/pin?{}",
            a.location.split_once('?').unwrap().1
        ));
        assert_eq!(page.status, 200, "{path}: {}", page.body);
        assert!(page.body.contains("id=\"kept\""), "{path}: {}", page.body);
        assert!(
            !page.body.contains("id=\"confirm\""),
            "nothing bound: {}",
            page.body
        );
        let form = posted(&page.body, "/.stepgate/pin", &[("pin", PIN)]);
        assert!(
            form.iter().any(|(k, v)| k == "kept" && *v == id),
            "{form:?}"
        );
        let done = post_fields(&b, "/.stepgate/pin", &form);
        assert_eq!(done.status, 201, "{path}: {}", done.body);
        let got = app.settled_to(path);
        assert_eq!(got.len(), 1, "{path}: once");
        assert_eq!(got[0].body, body, "{path}");
        assert_eq!(got[0].header("content-type"), Some(ct), "{path}");
        assert_eq!(got[0].header("x-stepgate-rule"), Some(&path[1..]), "{path}");
        let again = post_fields(&b, "/.stepgate/pin", &form);
        assert_eq!(again.status, 410, "{path}: {}", again.body);
        assert_eq!(app.settled_to(path).len(), 1, "{path}: still once");
    }
}

// ---------------------------------------------------------------------------
// 2. Any gateway on the store finishes a kept request, once
// ---------------------------------------------------------------------------

#[test]
fn a_request_kept_on_one_gateway_is_finished_on_another_once() {
    require_redis();
    let rdir = tempfile::tempdir().unwrap();
    let redis = Redis::start(rdir.path(), &[]);
    let app = App::start();
    let on_redis = || {
        Gateway::start_in_front_of(
            &app.url(),
            GatewayOptions {
                policy: POLICY.to_string(),
                store: redis_store(&redis.url(), ""),
                ..Default::default()
            },
        )
    };
    let a = on_redis();
    let b = on_redis();
    let on_a = Browser::new(&a, "alice");
    let on_b = on_a.on(&b);
    let body = FORM_BODY.as_bytes();
    let (challenge, id) = keep(&on_a, &app, FORM, body);

    // The store holds it sealed.
    for key in redis.keys() {
        let v = redis.cli(&["GET", &key]);
        assert!(
            !v.contains("amount=100") && !v.contains("bob"),
            "the store sees no plaintext ({key}): {v}"
        );
    }

    let page = on_b.get(&format!(
        "/.stepgate/pin?{}",
        challenge.split_once('?').unwrap().1
    ));
    assert_shows_transfer(&page, "the PIN page on the other gateway");
    let form = posted(&page.body, "/.stepgate/pin", &[("pin", PIN)]);
    assert!(form.iter().any(|(k, v)| k == "kept" && *v == id));
    let done = post_fields(&on_b, "/.stepgate/pin", &form);
    assert_replayed_once(&done, &app, FORM, body, "pin");
    // Neither gateway replays it again.
    assert_replay_refused(&on_a, &app, "/.stepgate/pin", &form);
    assert_replay_refused(&on_b, &app, "/.stepgate/pin", &form);

    // The step-up (max_age: 0) was used by that request: sending the same
    // transfer again to A with its cookie needs a new step-up.
    let su = done.su.as_deref().unwrap();
    let again = on_a.with_step_up(su).post(TARGET, FORM, body.to_vec());
    assert_eq!(
        again.status, 303,
        "used up, on every gateway:\n{}",
        again.body
    );
    assert!(
        again.location.starts_with("/.stepgate/challenge?"),
        "{}",
        again.location
    );
    assert_eq!(app.settled_to("/transfer").len(), 1);

    // Another transfer kept, its PIN form sent to both gateways at once:
    // one of them replays it, the other finds it gone.
    let (challenge, _) = keep(&on_a, &app, FORM, b"amount=100&to=bob&memo=second");
    let page = on_a.get(&format!(
        "/.stepgate/pin?{}",
        challenge.split_once('?').unwrap().1
    ));
    assert_shows_transfer(&page, "the second PIN page");
    let form = posted(&page.body, "/.stepgate/pin", &[("pin", PIN)]);
    let statuses: Vec<u16> = std::thread::scope(|s| {
        let racers: Vec<_> = [&on_a, &on_b]
            .into_iter()
            .map(|b| {
                let form = form.clone();
                s.spawn(move || post_fields(b, "/.stepgate/pin", &form).status)
            })
            .collect();
        racers.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut sorted = statuses.clone();
    sorted.sort();
    assert_eq!(sorted, vec![201, 410], "exactly one replay: {statuses:?}");
    let got = app.settled_to("/transfer");
    assert_eq!(got.len(), 2, "the second transfer once: {got:?}");
    assert_eq!(got[1].body, b"amount=100&to=bob&memo=second");
}

// ---------------------------------------------------------------------------
// 3. Binding over the API
// ---------------------------------------------------------------------------

/// `base64url(SHA-256([["amount","100"],["to","bob"]]))`, as documented.
fn documented_digest(amount: &str, to: &str) -> String {
    let json = serde_json::to_string(&json!([["amount", amount], ["to", to]])).unwrap();
    assert_eq!(
        json,
        format!("[[\"amount\",\"{amount}\"],[\"to\",\"{to}\"]]")
    );
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(sha2::Sha256::digest(json.as_bytes()))
}

/// An API client's request to a bound rule.
fn api_request(
    g: &Gateway,
    c: &Client,
    at: &str,
    su: Option<&str>,
    target: &str,
    content_type: &str,
    body: &str,
) -> Response {
    let mut rb = bearer(c.post(g.url(target)), at)
        .header("Accept", "application/json")
        .header("Content-Type", content_type)
        .body(body.to_string());
    if let Some(su) = su {
        rb = rb.header("X-Stepgate-Token", su);
    }
    rb.send().unwrap()
}

/// 401 (RFC 9470) naming the bound fields and these values.
fn assert_challenged(r: Response, binding: Value, what: &str) {
    let status = r.status().as_u16();
    let www = header(&r, "www-authenticate");
    let text = r.text().unwrap();
    assert_eq!(status, 401, "{what}: {text}");
    assert!(
        www.contains("insufficient_user_authentication"),
        "{what}: {www}"
    );
    let v: Value = serde_json::from_str(&text).expect("a JSON body");
    assert_eq!(
        v["error"], "insufficient_user_authentication",
        "{what}: {v}"
    );
    assert_eq!(v["bind"], json!(["amount", "to"]), "{what}: {v}");
    assert_eq!(v["binding"], binding, "{what}: {v}");
}

fn assert_refused_400(r: Response, what: &str) {
    let status = r.status().as_u16();
    let text = r.text().unwrap();
    assert_eq!(status, 400, "{what} is refused: {text}");
    let v: Value = serde_json::from_str(&text).unwrap_or_else(|_| panic!("{what}: JSON: {text}"));
    assert_eq!(v["error"], "invalid_request", "{what}: {v}");
}

/// The claims of a JWT (not verified here; tests/assertion.rs does that).
fn claims(jwt: &str) -> Value {
    let payload = jwt.split('.').nth(1).expect("a JWT");
    serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .unwrap(),
    )
    .unwrap()
}

#[test]
fn an_api_step_up_approves_exactly_the_values_it_names() {
    let app = App::start();
    let g = gateway(&app, &api_secret_config());
    let c = client();
    let at = g.token("alice", &["--email", EMAIL]);
    enroll_pin(&g, &c, &at, PIN);
    let bob_100 = json!({"amount": "100", "to": "bob"});
    let form = |body: &str| (FORM, body.to_string());

    // Without a step-up: the challenge names what to approve.
    let (ct, body) = form("amount=100&to=bob&memo=x");
    assert_challenged(
        api_request(&g, &c, &at, None, "/transfer", ct, &body),
        bob_100.clone(),
        "no step-up",
    );

    // The step-up approving amount 100 to bob.
    let su = api_pin_token(&g, &c, &at, PIN, Some(bob_100.clone()));
    let v = c
        .post(api(&g, "/stepup/validate"))
        .header("Authorization", format!("Bearer {API_SECRET}"))
        .json(&json!({"secondfactorvalidationtoken": su, "Uid": "alice"}))
        .send()
        .unwrap();
    let v: Value = v.json().unwrap();
    assert_eq!(v["IsValid"], true, "{v}");
    assert_eq!(v["IsBound"], true, "{v}");
    assert_eq!(
        v["Binding"]["Digest"],
        documented_digest("100", "bob"),
        "the documented digest: {v}"
    );
    assert_eq!(v["Binding"]["Fields"], json!(["amount", "to"]), "{v}");

    // It admits that transfer, once.
    let r = api_request(&g, &c, &at, Some(&su), "/transfer", ct, &body);
    assert_eq!(r.status(), 201, "admitted: {}", r.text().unwrap());
    let got = app.to("/transfer");
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].body, body.as_bytes(), "forwarded as read");
    let assertion = got[0]
        .header("x-stepgate-assertion")
        .expect("an assertion upstream");
    let txn = &claims(assertion)["txn"];
    assert_eq!(
        *txn,
        json!({
            "digest": documented_digest("100", "bob"),
            "fields": ["amount", "to"],
            "values": {"amount": "100", "to": "bob"},
        }),
        "the assertion's txn claim: {}",
        claims(assertion)
    );
    assert_challenged(
        api_request(&g, &c, &at, Some(&su), "/transfer", ct, &body),
        bob_100.clone(),
        "the same token again (max_age: 0)",
    );

    // Other values need their own step-up.
    let su = api_pin_token(&g, &c, &at, PIN, Some(bob_100.clone()));
    assert_challenged(
        api_request(
            &g,
            &c,
            &at,
            Some(&su),
            "/transfer",
            FORM,
            "amount=101&to=bob",
        ),
        json!({"amount": "101", "to": "bob"}),
        "another amount",
    );
    assert_challenged(
        api_request(
            &g,
            &c,
            &at,
            Some(&su),
            "/transfer",
            FORM,
            "amount=100&to=mallory",
        ),
        json!({"amount": "100", "to": "mallory"}),
        "another recipient",
    );
    assert_challenged(
        api_request(&g, &c, &at, Some(&su), "/transfer", FORM, "amount=100"),
        json!({"amount": "100", "to": null}),
        "a missing recipient",
    );
    // Whatever the app could read two ways is refused.
    let ambiguous: &[(&str, &str, &str, &str)] = &[
        (
            "the amount twice",
            "/transfer",
            FORM,
            "amount=100&amount=100&to=bob",
        ),
        (
            "the amount twice, differently",
            "/transfer",
            FORM,
            "amount=100&to=bob&amount=1000",
        ),
        (
            "the amount in the query and the body",
            "/transfer?amount=100",
            FORM,
            "amount=100&to=bob",
        ),
        (
            "another case of the name",
            "/transfer",
            FORM,
            "amount=100&Amount=9999&to=bob",
        ),
        (
            "a JSON key twice",
            "/transfer",
            "application/json",
            r#"{"amount":"100","to":"bob","to":"mallory"}"#,
        ),
        (
            "a body neither form nor JSON",
            "/transfer",
            "text/plain",
            "amount=100&to=bob",
        ),
    ];
    for (what, target, ct, body) in ambiguous {
        assert_refused_400(api_request(&g, &c, &at, Some(&su), target, ct, body), what);
    }
    assert_eq!(
        app.to("/transfer").len(),
        1,
        "none of those reached the app"
    );
    // The same values in JSON are the same approval (the token is unused).
    let r = api_request(
        &g,
        &c,
        &at,
        Some(&su),
        "/transfer",
        "application/json",
        r#"{"to":"bob","amount":100}"#,
    );
    assert_eq!(
        r.status(),
        201,
        "the same values as JSON: {}",
        r.text().unwrap()
    );
    assert_eq!(app.to("/transfer").len(), 2);

    // An unbound step-up does not approve a bound transfer.
    let plain = api_pin_token(&g, &c, &at, PIN, None);
    assert_challenged(
        api_request(
            &g,
            &c,
            &at,
            Some(&plain),
            "/transfer",
            FORM,
            "amount=100&to=bob",
        ),
        bob_100,
        "an unbound step-up",
    );
    assert_eq!(app.settled_to("/transfer").len(), 2);
}

/// The code of the one new mail since `seen` mails.
fn next_code(smtp: &SmtpServer, seen: usize) -> (String, String) {
    let mails = smtp.wait_for_messages(seen + 1);
    let m = &mails[seen];
    (
        m.code(),
        m.part("text/plain").unwrap_or_default().to_string(),
    )
}

#[test]
fn an_emailed_code_approves_what_its_mail_showed_over_the_api_too() {
    let smtp = SmtpServer::start();
    let app = App::start();
    let g = gateway(
        &app,
        &format!(
            "{}email_otp:\n  resend_cooldown: 0s\n{}",
            smtp.mail_config(),
            api_secret_config()
        ),
    );
    let b = Browser::new(&g, "alice");
    let c = client();
    let validate = |su: &str| -> Value {
        c.post(api(&g, "/stepup/validate"))
            .header("Authorization", format!("Bearer {API_SECRET}"))
            .json(&json!({"secondfactorvalidationtoken": su, "Uid": "alice"}))
            .send()
            .unwrap()
            .json()
            .unwrap()
    };
    let verify = |code: &str, binding: Value| -> Response {
        bearer(c.put(api(&g, "/stepup/otp/email")), &b.at)
            .json(&json!({"OTP": code, "Binding": binding}))
            .send()
            .unwrap()
    };

    // A code sent without values (GET) showed the user nothing to confirm,
    // so it approves no values: refused before the code is spent (found by
    // an attacker's review: it approved whatever `Binding` was named).
    let r = bearer(c.get(api(&g, "/stepup/otp/email")), &b.at)
        .send()
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().unwrap());
    let (unbound, _) = next_code(&smtp, 0);
    let r = verify(&unbound, json!({"amount": "1000000", "to": "mallory"}));
    assert_eq!(r.status(), 400);
    let v: Value = r.json().unwrap();
    assert!(
        v["Description"]
            .as_str()
            .is_some_and(|d| d.contains("POST /.stepgate/api/stepup/otp/email")),
        "{v}"
    );
    // An API client asks for a code for the values: its mail shows them,
    // and the code approves exactly those.
    let r = bearer(c.post(api(&g, "/stepup/otp/email")), &b.at)
        .json(&json!({"EmailId": EMAIL, "Binding": {"amount": "100", "to": "bob"}}))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().unwrap());
    let (code, text) = next_code(&smtp, 1);
    assert!(
        text.contains("amount: 100") && text.contains("to: bob"),
        "{text}"
    );
    let r = verify(&code, json!({"amount": "100", "to": "bob"}));
    let v: Value = r.json().unwrap();
    let su = v["SecondFactorValidationToken"]
        .as_str()
        .unwrap_or_else(|| panic!("a token: {v}"))
        .to_string();
    assert_eq!(
        validate(&su)["Binding"]["Digest"],
        documented_digest("100", "bob")
    );
    assert_challenged(
        api_request(
            &g,
            &c,
            &b.at,
            Some(&su),
            "/transfer",
            FORM,
            "amount=100&to=mallory",
        ),
        json!({"amount": "100", "to": "mallory"}),
        "another recipient",
    );
    let r = api_request(
        &g,
        &c,
        &b.at,
        Some(&su),
        "/transfer",
        FORM,
        "amount=100&to=bob",
    );
    assert_eq!(r.status(), 201, "{}", r.text().unwrap());
    assert_eq!(app.to("/transfer").len(), 1);

    // A code mailed for a kept transfer (its mail shows 100 to bob) used
    // over the API naming other values approves what the mail showed.
    let (challenge, _) = keep(&b, &app, FORM, FORM_BODY.as_bytes());
    let carry = challenge.split_once('?').unwrap().1;
    let page = b.get(&format!("/.stepgate/email?{carry}"));
    let sent = b.submit(&page.body, "/.stepgate/email/send", &[("email", EMAIL)]);
    assert_eq!(sent.status, 303, "{}", sent.body);
    let (code, text) = next_code(&smtp, 2);
    assert!(
        text.contains("amount: 100") && text.contains("to: bob"),
        "{text}"
    );
    let r = verify(&code, json!({"amount": "1000000", "to": "mallory"}));
    let status = r.status().as_u16();
    let v: Value = r.json().unwrap();
    if status == 200 {
        let su = v["SecondFactorValidationToken"]
            .as_str()
            .unwrap()
            .to_string();
        assert_eq!(
            validate(&su)["Binding"]["Digest"],
            documented_digest("100", "bob"),
            "the code approves what its mail showed: {v}"
        );
        assert_challenged(
            api_request(
                &g,
                &c,
                &b.at,
                Some(&su),
                "/transfer",
                FORM,
                "amount=1000000&to=mallory",
            ),
            json!({"amount": "1000000", "to": "mallory"}),
            "what the mail did not show",
        );
    }
    assert_eq!(app.settled_to("/transfer").len(), 1, "mallory got nothing");
}

// ---------------------------------------------------------------------------
// 4. What is not kept
// ---------------------------------------------------------------------------

/// A browser's POST of `body` to the unbound `path` is not kept
/// (`resend=why`) and the page where the PIN is entered says it must be
/// sent again; after the step-up the browser goes back to `path` and
/// nothing is replayed. `/settings` accepts the PIN only (the challenge
/// goes straight on to the PIN page), `/profile` the PIN or a code (the
/// challenge page offers both).
fn not_kept(path: &str, content_type: &str, body: Vec<u8>, why: &str) {
    let app = App::start();
    let g = gateway(&app, "");
    let b = Browser::new(&g, "alice");
    let a = b.post(path, content_type, body);
    assert_eq!(a.status, 303, "{}", a.body);
    assert!(
        a.location.starts_with("/.stepgate/challenge?"),
        "{}",
        a.location
    );
    assert_eq!(
        param(&a.location, "resend").as_deref(),
        Some(why),
        "{}",
        a.location
    );
    assert!(param(&a.location, "kept").is_none(), "{}", a.location);
    assert_eq!(param(&a.location, "return_to").as_deref(), Some(path));
    assert_eq!(param(&a.location, "method").as_deref(), Some("POST"));

    let says_send_again = |html: &str| html.contains("id=\"not-kept\"") && html.contains("again");
    let challenge = b.get(&a.location);
    let pin_url = match challenge.status {
        303 => challenge.location.clone(),
        200 => {
            assert!(
                says_send_again(&challenge.body),
                "the challenge page says the form was not kept ({why}):\n{}",
                challenge.body
            );
            let marker = "id=\"factor-pin\" href=\"";
            let i = challenge.body.find(marker).expect("a PIN link") + marker.len();
            unescape(&challenge.body[i..][..challenge.body[i..].find('"').unwrap()])
        }
        s => panic!("the challenge: {s}\n{}", challenge.body),
    };
    let page = b.get(&pin_url);
    assert_eq!(page.status, 200, "{pin_url}: {}", page.body);
    assert!(
        page.body.contains("action=\"/.stepgate/pin\""),
        "the PIN page: {}",
        page.body
    );
    assert!(!page.body.contains("id=\"kept\""), "{}", page.body);
    let notice_on_pin_page = says_send_again(&page.body);
    let pin_page = page.body.clone();

    let done = b.submit(&page.body, "/.stepgate/pin", &[("pin", PIN)]);
    assert_eq!(done.status, 303, "{}", done.body);
    assert_eq!(done.location, path);
    assert!(done.su.is_some());
    assert!(
        app.settled_to(path).is_empty(),
        "nothing was replayed: {:?}",
        app.to(path)
    );
    assert!(
        notice_on_pin_page,
        "the PIN page ({pin_url}, reached from {}) says the form was not kept ({why}) and must be sent again:\n{pin_page}",
        a.location
    );
}

#[test]
fn a_form_over_64_kib_is_not_kept_and_must_be_sent_again() {
    let mut body = b"theme=dark&blob=".to_vec();
    body.resize(65 * 1024, b'x');
    // PIN only: the challenge goes straight on to the PIN page.
    not_kept("/settings", FORM, body, "large");
}

#[test]
fn an_upload_is_not_kept_and_must_be_sent_again() {
    let body = "--XyZ\r\nContent-Disposition: form-data; name=\"avatar\"; filename=\"a.png\"\r\nContent-Type: image/png\r\n\r\nPNGDATA\r\n--XyZ--\r\n";
    let ct = "multipart/form-data; boundary=XyZ";
    // PIN or a code: the challenge page offers both.
    not_kept("/profile", ct, body.into(), "upload");
}

// ---------------------------------------------------------------------------
// 5. A POST-only rule's factors
// ---------------------------------------------------------------------------

#[test]
fn the_challenge_for_a_post_offers_the_post_rules_factors() {
    let app = App::start();
    let g = gateway(&app, "");
    let b = Browser::new(&g, "alice");
    let (challenge, id) = keep(&b, &app, FORM, FORM_BODY.as_bytes());
    for url in [
        challenge.clone(),
        "/.stepgate/challenge?return_to=%2Ftransfer&method=POST".to_string(),
    ] {
        let page = b.get(&url);
        assert_eq!(
            page.status, 200,
            "two factors: a choice ({url}): {}",
            page.location
        );
        assert!(
            page.body.contains("id=\"factor-pin\"") && page.body.contains("id=\"factor-email\""),
            "both factors of the POST rule are offered ({url}):\n{}",
            page.body
        );
    }
    // The links carry the kept request along.
    let page = b.get(&challenge);
    for factor in ["pin", "email"] {
        let marker = format!("id=\"factor-{factor}\" href=\"");
        let i = page.body.find(&marker).expect("the factor link") + marker.len();
        let href = unescape(&page.body[i..][..page.body[i..].find('"').unwrap()]);
        assert!(href.starts_with(&format!("/.stepgate/{factor}?")), "{href}");
        assert_eq!(param(&href, "kept"), Some(id.clone()), "{href}");
        assert_eq!(param(&href, "return_to").as_deref(), Some(TARGET), "{href}");
    }
}

// ---------------------------------------------------------------------------
// 6. A real browser fills in a real form
// ---------------------------------------------------------------------------

#[test]
fn chromium_fills_in_a_transfer_confirms_with_the_pin_and_the_app_gets_it_once() {
    use common::browser::{screenshot_as, submit_pin};
    let browser = common::webdriver::Browser::start();
    let app = App::start();
    let g = gateway(&app, "");
    let at = g.token("alice", &["--email", EMAIL]);
    enroll_pin(&g, &client(), &at, PIN);
    let s = &browser;

    s.goto(&g.url(&format!("/demo/login?token={at}")));
    s.wait_for_url("the transfer form", |u| path_of(&g, u) == "/form");
    s.send_keys(&s.find("#amount"), "100");
    s.send_keys(&s.find("#to"), "bob");
    s.click(&s.find("#send"));
    s.wait_for_url("the challenge", |u| {
        path_of(&g, u).starts_with("/.stepgate/challenge?")
    });
    let at_challenge = s.current_url();
    assert!(
        param(&at_challenge, "kept").is_some(),
        "kept: {at_challenge}"
    );
    assert_eq!(s.text_of("#confirm-amount").as_deref(), Some("100"));
    assert_eq!(s.text_of("#confirm-to").as_deref(), Some("bob"));
    s.find("#kept");
    screenshot_as(s, "transaction-1-challenge");
    assert!(app.to("/transfer").is_empty());

    s.click(&s.find("#factor-pin"));
    s.wait_for_url("the PIN page", |u| {
        path_of(&g, u).starts_with("/.stepgate/pin?")
    });
    assert_eq!(s.text_of("#confirm-amount").as_deref(), Some("100"));
    assert_eq!(s.text_of("#confirm-to").as_deref(), Some("bob"));
    screenshot_as(s, "transaction-2-pin");
    submit_pin(s, PIN);
    let got = s.find("#got");
    assert_eq!(s.text(&got), "Transfer received");
    screenshot_as(s, "transaction-3-app");
    assert_eq!(s.text_of("#count").as_deref(), Some("1"));
    assert_eq!(s.text_of("#method").as_deref(), Some("POST"));
    assert_eq!(s.text_of("#path").as_deref(), Some("/transfer?channel=web"));
    assert_eq!(s.text_of("#body").as_deref(), Some(FORM_BODY));
    let seen = app.settled_to("/transfer");
    assert_eq!(seen.len(), 1, "the app got the form once: {seen:?}");
    assert_eq!(seen[0].body, FORM_BODY.as_bytes());
    assert_eq!(seen[0].header("content-type"), Some(FORM));
    assert_eq!(seen[0].header("x-stepgate-amr"), Some("pin"));
}

// ---------------------------------------------------------------------------
// 7. The CLI
// ---------------------------------------------------------------------------

/// A config with one bound rule of this `max_age`, in a new directory.
fn cli_setup(max_age: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.yaml");
    std::fs::write(
        &policy,
        format!(
            "default: authenticated\nrules:\n  - name: transfer\n    match: {{ path: \"/transfer\", methods: [POST] }}\n    require: step_up\n    step_up:\n      methods: [pin, email_otp]\n      max_age: {max_age}\n      bind: [\"amount\", \"to\"]\n"
        ),
    )
    .unwrap();
    let config = cli_config(&dir, &policy);
    (dir, config)
}

/// A config in `dir` with the policy file `policy`.
fn cli_config(dir: &tempfile::TempDir, policy: &std::path::Path) -> PathBuf {
    let config = dir.path().join("gateway.yaml");
    std::fs::write(
        &config,
        format!(
            "listen: \"127.0.0.1:{}\"\nupstream: \"http://127.0.0.1:9\"\npolicy: \"{}\"\nfirst_factor:\n  cookie: access_token\n  jwt:\n    algorithms: [HS256]\n    secret: \"{FIRST_FACTOR_SECRET}\"\nsigning:\n  secret: \"{SIGNING_SECRET}\"\nstore:\n  kind: memory\n",
            free_port(),
            policy.display()
        ),
    )
    .unwrap();
    config
}

fn cli(args: &[&str], config: &PathBuf) -> (i32, String, String) {
    let rest_from = if args[0] == "policy" { 2 } else { 1 };
    let mut cmd = Command::new(BIN);
    cmd.args(&args[..rest_from])
        .arg("-c")
        .arg(config)
        .args(&args[rest_from..]);
    let out = cmd.stdin(Stdio::null()).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn explain_shows_the_bound_fields_and_lint_warns_of_a_long_max_age() {
    let (_d, config) = cli_setup("0");
    let (code, out, err) = cli(&["explain", "POST", "/transfer"], &config);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("`transfer`"), "{out}");
    assert!(out.contains("bound to: amount, to"), "{out}");
    let (code, out, err) = cli(&["explain", "POST", "/transfer", "--json"], &config);
    assert_eq!(code, 0, "{err}");
    let v: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["rule"], "transfer", "{v}");
    assert_eq!(v["bind"], json!(["amount", "to"]), "{v}");
    assert_eq!(v["max_age_secs"], 0, "{v}");
    // A GET is not bound (the rule is POST only).
    let (_, out, _) = cli(&["explain", "GET", "/transfer", "--json"], &config);
    let v: Value = serde_json::from_str(out.trim()).unwrap();
    assert!(v.get("bind").is_none(), "{v}");

    // max_age 0 and 60s: clean; 10 minutes: a warning naming the fields.
    for max_age in ["0", "60s"] {
        let (_d, config) = cli_setup(max_age);
        let (code, out, err) = cli(&["policy", "lint", "--deny-warnings"], &config);
        assert_eq!(code, 0, "max_age {max_age}: {out}{err}");
        assert!(!out.contains("warning"), "max_age {max_age}: {out}");
    }
    let (_d, config) = cli_setup("10m");
    let (code, out, err) = cli(&["policy", "lint"], &config);
    assert_eq!(code, 0, "a warning alone does not fail: {err}");
    let line = out
        .lines()
        .find(|l| l.contains("warning") && l.contains("`transfer`"))
        .unwrap_or_else(|| panic!("a warning for the bound rule:\n{out}{err}"));
    assert!(
        line.contains("amount, to") && line.contains("600"),
        "{line}"
    );
    let (code, _, _) = cli(&["policy", "lint", "--deny-warnings"], &config);
    assert_eq!(code, 1);

    // The example banking policy binds its transfers.
    let dir = tempfile::tempdir().unwrap();
    let banking = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("policies/banking.yaml");
    let config = cli_config(&dir, &banking);
    let (code, out, err) = cli(&["explain", "POST", "/transfers/new", "--json"], &config);
    assert_eq!(code, 0, "{err}");
    let v: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["rule"], "transfer", "{v}");
    assert_eq!(v["bind"], json!(["amount", "to"]), "{v}");
    assert_eq!(v["max_age_secs"], 0, "{v}");
}
