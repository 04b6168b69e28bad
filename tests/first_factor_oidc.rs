//! First factor from a real OpenID provider (npm `oidc-provider`, started on
//! loopback): stepgate's own OIDC sign-in (authorization code + PKCE, state
//! bound to the browser, nonce, ID-token checks, logout that ends the
//! session on the server) and RFC 7662 introspection of its opaque tokens.

mod common;

use std::time::Duration;

use common::oidc::{jwt_claims, Provider, INTROSPECT_CLIENT_ID, INTROSPECT_SECRET};
use common::*;
use reqwest::blocking::Client;
use serde_json::Value;

const POLICY: &str = r#"
default: authenticated
rules:
  - name: public
    match: { path: "/public/**" }
    require: none
  - name: admin
    match: { path: "/admin/**" }
    require: step_up
    step_up: { methods: [pin], max_age: 5m }
"#;

/// A browser: keeps cookies, does not follow redirects by itself.
fn browser() -> Client {
    Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .cookie_store(true)
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

fn location(r: &reqwest::blocking::Response) -> String {
    let l = header(r, "location");
    assert!(
        !l.is_empty(),
        "a redirect: {} {:?}",
        r.status(),
        r.headers()
    );
    reqwest::Url::parse(r.url().as_str())
        .unwrap()
        .join(&l)
        .unwrap()
        .to_string()
}

/// Follow redirects from `url` until an answer that is not one (or one
/// whose target starts with `stop_at`), returning it and its URL.
fn follow(
    c: &Client,
    mut url: String,
    stop_at: Option<&str>,
) -> (reqwest::blocking::Response, String) {
    for _ in 0..15 {
        let r = c.get(&url).header("Accept", "text/html").send().unwrap();
        if !r.status().is_redirection() {
            return (r, url);
        }
        let next = location(&r);
        if stop_at.is_some_and(|p| next.starts_with(p)) {
            return (r, url);
        }
        url = next;
    }
    panic!("too many redirects from {url}");
}

struct Setup {
    provider: Provider,
    g: Gateway,
    _dir: tempfile::TempDir,
}

fn oidc_setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let callback = format!("http://127.0.0.1:{port}/.stepgate/oidc/callback");
    let provider = Provider::start_with(
        dir.path(),
        &[&callback],
        &[
            "--post-logout-redirect-uri",
            &format!("http://127.0.0.1:{port}/"),
        ],
    );
    let secret = dir.path().join("oidc.secret");
    std::fs::write(&secret, &provider.client_secret).unwrap();
    let g = Gateway::start_with(GatewayOptions {
        policy: POLICY.into(),
        port: Some(port),
        first_factor_extra: format!(
            "  oidc:\n    issuer: \"{}\"\n    client_id: \"{}\"\n    client_secret_file: \"{}\"\n    scopes: [openid, email, profile]\n",
            provider.issuer,
            provider.client_id,
            secret.display()
        ),
        extra_config: format!("public_url: \"http://127.0.0.1:{port}\"\n"),
        ..Default::default()
    });
    Setup {
        provider,
        g,
        _dir: dir,
    }
}

/// Sign in as `login` in browser `c`, starting from `path` on the gateway:
/// through stepgate to the provider's form and back. Returns the final
/// answer of the gateway (after the callback's redirect was followed).
fn sign_in(s: &Setup, c: &Client, path: &str, login: &str) -> reqwest::blocking::Response {
    let (form, form_url) = follow(c, s.g.url(path), None);
    assert_eq!(form.status(), 200, "the provider's sign-in form");
    let html = form.text().unwrap();
    let r = s.provider.login_form(c, &html, &form_url, login, "pw");
    assert!(
        r.status().is_redirection(),
        "signed in at the provider: {}",
        r.status()
    );
    let (done, _) = follow(c, location(&r), None);
    done
}

#[test]
fn a_browser_signs_in_through_the_provider_steps_up_with_a_pin_and_logs_out() {
    let s = oidc_setup();
    let c = browser();

    // An API client without credentials still gets 401, not a redirect.
    let r = client()
        .get(s.g.url("/home"))
        .header("Accept", "application/json")
        .send()
        .unwrap();
    assert_eq!(r.status(), 401);

    let r = c
        .get(s.g.url("/home"))
        .header("Accept", "text/html")
        .send()
        .unwrap();
    assert!(r.status().is_redirection(), "{}", r.status());
    assert!(
        header(&r, "location").starts_with("/.stepgate/oidc/start"),
        "{}",
        header(&r, "location")
    );

    let done = sign_in(&s, &c, "/home", "alice");
    assert_eq!(done.status(), 200, "back on the page that was wanted");
    assert!(done.url().path().ends_with("/home"), "{}", done.url());
    let echo: Value = c.get(s.g.url("/home")).send().unwrap().json().unwrap();
    assert_eq!(echoed(&echo, "x-stepgate-user").as_deref(), Some("alice"));
    assert_eq!(
        echoed(&echo, "x-stepgate-email").as_deref(),
        Some("alice@example.test")
    );
    let claims = jwt_claims(&echoed(&echo, "x-stepgate-assertion").unwrap());
    assert_eq!(claims["ff"], "oidc", "{claims}");
    assert!(
        s.provider.count("token") >= 1,
        "the code was exchanged at the token endpoint"
    );

    // The login is fresh (the ID token's auth_time): a PIN can be set up, then used.
    let page = c
        .get(s.g.url("/.stepgate/pin/setup?return_to=/admin/x"))
        .header("Accept", "text/html")
        .send()
        .unwrap();
    assert_eq!(
        page.status(),
        200,
        "enrollment is offered after a fresh OIDC sign-in"
    );
    let csrf = csrf_of(&page.text().unwrap());
    let r = c
        .post(s.g.url("/.stepgate/pin/setup"))
        .form(&[
            ("pin", "4812"),
            ("pin_confirm", "4812"),
            ("csrf", &csrf),
            ("return_to", "/admin/x"),
        ])
        .send()
        .unwrap();
    assert_eq!(r.status(), 303, "PIN enrolled");
    let r = c
        .get(s.g.url("/admin/x"))
        .header("Accept", "text/html")
        .send()
        .unwrap();
    assert!(
        r.status().is_redirection(),
        "the protected route asks for the step-up"
    );
    assert!(header(&r, "location").starts_with("/.stepgate/challenge"));
    let page = c
        .get(s.g.url("/.stepgate/pin?return_to=/admin/x"))
        .header("Accept", "text/html")
        .send()
        .unwrap();
    let csrf = csrf_of(&page.text().unwrap());
    let r = c
        .post(s.g.url("/.stepgate/pin"))
        .form(&[("pin", "4812"), ("csrf", &csrf), ("return_to", "/admin/x")])
        .send()
        .unwrap();
    assert_eq!(r.status(), 303);
    let r = c.get(s.g.url("/admin/x")).send().unwrap();
    assert_eq!(r.status(), 200, "stepped up on the OIDC session");
    let echo: Value = r.json().unwrap();
    assert_eq!(echoed(&echo, "x-stepgate-amr").as_deref(), Some("pin"));
    assert!(
        !echoed(&echo, "cookie")
            .unwrap_or_default()
            .contains("stepgate_session"),
        "stepgate's session cookie is not forwarded"
    );

    // Logout: to the provider's end-session page, the cookie cleared (that
    // the session also ends on the server is the next test).
    let r = c.get(s.g.url("/.stepgate/logout")).send().unwrap();
    assert!(r.status().is_redirection());
    let to = header(&r, "location");
    assert!(
        to.starts_with(&s.provider.issuer),
        "to the provider's end-session page: {to}"
    );
    assert!(
        header_all(&r, "set-cookie")
            .iter()
            .any(|c| c.starts_with("stepgate_session=;")),
        "the cookie is cleared"
    );
    let (bye, _) = follow(&c, to, None);
    assert_eq!(bye.status(), 200, "the provider's logout confirmation");
    assert!(s.provider.count("end_session") >= 1);
}

fn header_all(r: &reqwest::blocking::Response, name: &str) -> Vec<String> {
    r.headers()
        .get_all(name)
        .iter()
        .map(|v| v.to_str().unwrap().to_string())
        .collect()
}

/// Sign `login` in at the provider from `/home` and stop right before the
/// callback: its URL, with the code and state.
fn callback_url(s: &Setup, c: &Client, login: &str) -> String {
    let (form, form_url) = follow(c, s.g.url("/home"), None);
    let html = form.text().unwrap();
    let r = s.provider.login_form(c, &html, &form_url, login, "pw");
    let (last, _) = follow(c, location(&r), Some(&s.g.url("/.stepgate/oidc/callback")));
    location(&last)
}

/// The session cookie stepgate set on the callback, read off the answer.
fn session_from_callback(s: &Setup, c: &Client, login: &str) -> String {
    let (form, form_url) = follow(c, s.g.url("/home"), None);
    let html = form.text().unwrap();
    let r = s.provider.login_form(c, &html, &form_url, login, "pw");
    let (cb, _) = follow(c, location(&r), Some(&s.g.url("/home")));
    assert!(
        cb.url().path().ends_with("/.stepgate/oidc/callback"),
        "{}",
        cb.url()
    );
    set_cookie(&cb, "stepgate_session").expect("stepgate's session cookie")
}

#[test]
fn logout_ends_the_session_on_the_server_so_a_saved_cookie_is_refused() {
    let s = oidc_setup();
    let c = browser();
    let session = session_from_callback(&s, &c, "bob");
    let saved = format!("stepgate_session={session}");
    let r = client()
        .get(s.g.url("/home"))
        .header("Cookie", &saved)
        .send()
        .unwrap();
    assert_eq!(r.status(), 200, "the cookie opens the app");
    let r = client()
        .get(s.g.url("/.stepgate/logout"))
        .header("Cookie", &saved)
        .send()
        .unwrap();
    assert!(r.status().is_redirection());
    let r = client()
        .get(s.g.url("/home"))
        .header("Cookie", &saved)
        .header("Accept", "application/json")
        .send()
        .unwrap();
    assert_eq!(
        r.status(),
        401,
        "a saved copy of the cookie is refused after logout"
    );
}

#[test]
fn a_callback_carried_to_another_browser_or_replayed_is_refused() {
    let s = oidc_setup();
    let a = browser();
    // Its URL (code and state) is what leaks.
    let callback = callback_url(&s, &a, "carol");
    assert!(
        callback.contains("code=") && callback.contains("state="),
        "{callback}"
    );

    let b = browser();
    let r = b
        .get(&callback)
        .header("Accept", "text/html")
        .send()
        .unwrap();
    assert_eq!(r.status(), 400, "another browser cannot finish the sign-in");
    assert!(set_cookie(&r, "stepgate_session").is_none());
    assert!(r.text().unwrap().contains("another browser"));

    // The state is single use: taken by the first try, the real browser must start again.
    let r = a
        .get(&callback)
        .header("Accept", "text/html")
        .send()
        .unwrap();
    assert_eq!(r.status(), 400);
    assert!(r.text().unwrap().contains("already used"));

    // A forged state is nothing.
    let r = a
        .get(s.g.url("/.stepgate/oidc/callback?code=x&state=forged"))
        .send()
        .unwrap();
    assert_eq!(r.status(), 400);
}

/// A provider that stops answering between the sign-in and the callback is
/// an outage (503, try again), not a refused sign-in, and signs nobody in.
#[test]
fn a_provider_that_is_down_at_the_callback_is_a_503_not_a_refusal() {
    let s = oidc_setup();
    let a = browser();
    let callback = callback_url(&s, &a, "carol");
    let Setup { provider, g, _dir } = s;
    drop(provider);
    let r = a
        .get(&callback)
        .header("Accept", "text/html")
        .send()
        .unwrap();
    assert_eq!(r.status(), 503);
    assert_eq!(header(&r, "retry-after"), "5");
    assert!(set_cookie(&r, "stepgate_session").is_none());
    let page = r.text().unwrap();
    assert!(page.contains("does not answer"), "{page}");
    assert!(
        page.contains("href=\"&#x2f;home\""),
        "try again from the page wanted: {page}"
    );
    assert!(g
        .log()
        .contains("OIDC provider did not answer the callback"));
}

/// Every started sign-in keeps a record until it ends or expires, before
/// anyone proved anything: one client address may start 120 a minute, so
/// nobody can fill the store with them.
#[test]
fn sign_ins_started_from_one_address_are_bounded() {
    let s = oidc_setup();
    let c = client();
    let start = s.g.url("/.stepgate/oidc/start?return_to=/home");
    for i in 0..120 {
        let r = c.get(&start).send().unwrap();
        assert!(r.status().is_redirection(), "start {i}: {}", r.status());
    }
    let r = c.get(&start).send().unwrap();
    assert_eq!(r.status(), 429);
    let wait: u64 = header(&r, "retry-after").parse().unwrap();
    assert!((1..=60).contains(&wait), "{wait}");
    assert!(r.text().unwrap().contains("Too many sign-ins"));
}

fn introspection_gateway(p: &Provider, dir: &std::path::Path, cache: &str) -> Gateway {
    let secret = dir.join("introspect.secret");
    std::fs::write(&secret, INTROSPECT_SECRET).unwrap();
    Gateway::start_with(GatewayOptions {
        policy: POLICY.into(),
        first_factor_extra: format!(
            "  introspection:\n    url: \"{}/token/introspection\"\n    client_id: \"{INTROSPECT_CLIENT_ID}\"\n    client_secret_file: \"{}\"\n    cache: {cache}\n    timeout: 2s\n",
            p.issuer,
            secret.display()
        ),
        ..Default::default()
    })
}

/// The provider answers `Carla@example.test` for the user `Carla`: the
/// address is the user's, in any case, so an email code may go to it (no
/// mail server here, so "not configured" instead of "not in the profile").
#[test]
fn an_introspected_address_in_mixed_case_is_the_users_for_email_codes() {
    let dir = tempfile::tempdir().unwrap();
    let p = Provider::start(dir.path(), &["http://127.0.0.1:9/cb"]);
    let g = introspection_gateway(&p, dir.path(), "30s");
    let c = client();
    let at = p.mint_token("Carla", 600);
    let trigger: Value = c
        .get(g.url("/.stepgate/api/stepup/trigger"))
        .bearer_auth(&at)
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(
        trigger["Email"],
        serde_json::json!(["carla@example.test"]),
        "{trigger}"
    );
    for spelling in ["Carla@example.test", "carla@example.test"] {
        let r = c
            .get(g.url(&format!(
                "/.stepgate/api/stepup/otp/email?emailid={spelling}"
            )))
            .bearer_auth(&at)
            .send()
            .unwrap();
        let status = r.status();
        let body: Value = r.json().unwrap();
        assert_eq!(status, 501, "{spelling}: {body}");
    }
}

#[test]
fn opaque_tokens_are_introspected_once_per_cache_period_and_inactive_ones_refused() {
    let dir = tempfile::tempdir().unwrap();
    let p = Provider::start(dir.path(), &["http://127.0.0.1:9/cb"]);
    let g = introspection_gateway(&p, dir.path(), "30s");
    let c = client();
    let at = p.mint_token("dave", 600);
    p.reset_counts();
    for _ in 0..10 {
        let r = c
            .get(g.url("/home"))
            .header("Authorization", format!("Bearer {at}"))
            .send()
            .unwrap();
        assert_eq!(r.status(), 200, "an active opaque token admits its user");
        let echo: Value = r.json().unwrap();
        assert_eq!(echoed(&echo, "x-stepgate-user").as_deref(), Some("dave"));
        let claims = jwt_claims(&echoed(&echo, "x-stepgate-assertion").unwrap());
        assert_eq!(claims["ff"], "introspection");
    }
    assert_eq!(
        p.count("introspection"),
        1,
        "ten requests, one question to the IdP"
    );

    // From the cookie too.
    let r = c
        .get(g.url("/home"))
        .header("Cookie", format!("access_token={at}"))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);

    // Unknown and revoked tokens: inactive.
    let r = c
        .get(g.url("/home"))
        .header("Authorization", "Bearer not-a-token")
        .header("Accept", "application/json")
        .send()
        .unwrap();
    assert_eq!(r.status(), 401);
    let other = p.mint_token("erin", 600);
    p.revoke(&other);
    let r = c
        .get(g.url("/home"))
        .header("Authorization", format!("Bearer {other}"))
        .header("Accept", "application/json")
        .send()
        .unwrap();
    assert_eq!(r.status(), 401, "a revoked token is inactive");

    // An expired one.
    let short = p.mint_token("frank", 1);
    std::thread::sleep(Duration::from_millis(2100));
    let r = c
        .get(g.url("/home"))
        .header("Authorization", format!("Bearer {short}"))
        .header("Accept", "application/json")
        .send()
        .unwrap();
    assert_eq!(r.status(), 401, "an expired token");

    // The public route never asks.
    let before = p.count("introspection");
    let r = c
        .get(g.url("/public/x"))
        .header("Authorization", "Bearer whatever")
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(p.count("introspection"), before);
}

#[test]
fn a_dead_idp_fails_closed_and_a_wrong_client_secret_is_not_an_open_door() {
    let dir = tempfile::tempdir().unwrap();
    let p = Provider::start(dir.path(), &["http://127.0.0.1:9/cb"]);
    let at = p.mint_token("gina", 600);
    // A gateway with a wrong client secret: the IdP refuses it, stepgate refuses the user.
    let wrong = dir.path().join("wrong.secret");
    std::fs::write(&wrong, "not-the-secret").unwrap();
    let bad = Gateway::start_with(GatewayOptions {
        first_factor_extra: format!(
            "  introspection:\n    url: \"{}/token/introspection\"\n    client_id: \"{INTROSPECT_CLIENT_ID}\"\n    client_secret_file: \"{}\"\n",
            p.issuer,
            wrong.display()
        ),
        ..Default::default()
    });
    let r = client()
        .get(bad.url("/home"))
        .header("Authorization", format!("Bearer {at}"))
        .header("Accept", "application/json")
        .send()
        .unwrap();
    assert_eq!(r.status(), 503, "the IdP does not accept stepgate: closed");

    let g = introspection_gateway(&p, dir.path(), "1s");
    let r = client()
        .get(g.url("/home"))
        .header("Authorization", format!("Bearer {at}"))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    drop(p);
    std::thread::sleep(Duration::from_millis(1200));
    let r = client()
        .get(g.url("/home"))
        .header("Authorization", format!("Bearer {at}"))
        .header("Accept", "application/json")
        .send()
        .unwrap();
    assert_eq!(r.status(), 503, "the IdP is down: closed, with a reason");
    let body: Value = r.json().unwrap();
    assert!(
        body["error_description"]
            .as_str()
            .unwrap()
            .contains("introspection"),
        "{body}"
    );
    let m = client()
        .get(g.url("/home"))
        .header("Authorization", format!("Bearer {at}"))
        .header("Accept", "text/html")
        .send()
        .unwrap();
    assert_eq!(m.status(), 503);
}

/// The same sign-in in a real headless Chromium: the provider's form typed
/// in, the PIN set up and used on stepgate's pages, then logout at both ends.
#[test]
fn chromium_signs_in_at_the_provider_steps_up_and_logs_out() {
    use common::browser::{submit_pin, upstream_header};
    let b = common::webdriver::Browser::start();
    let s = oidc_setup();
    b.goto(&s.g.url("/home"));
    b.wait_for_url("the provider's sign-in form", |u| {
        u.starts_with(&s.provider.issuer)
    });
    let login = b.find("input[name=login]");
    b.send_keys(&login, "hana");
    b.send_keys(&b.find("input[name=password]"), "pw");
    b.click(&b.find("button[type=submit]"));
    b.wait_for_url("back on the app", |u| u == s.g.url("/home"));
    assert_eq!(
        upstream_header(&b, "x-stepgate-user").as_deref(),
        Some("hana")
    );

    // A fresh OIDC sign-in may set up a PIN; the protected page then asks for it.
    b.goto(&s.g.url("/admin/x"));
    b.wait_for_url("the PIN setup page", |u| {
        path_of(&s.g, u).starts_with("/.stepgate/pin/setup")
    });
    b.send_keys(&b.find("#pin"), "2580");
    b.send_keys(&b.find("#pin_confirm"), "2580");
    b.click(&b.find("#submit"));
    b.wait_for_url("the PIN page", |u| {
        path_of(&s.g, u).starts_with("/.stepgate/pin?")
    });
    submit_pin(&b, "2580");
    b.wait_for_url("the protected page", |u| u == s.g.url("/admin/x"));
    assert_eq!(
        upstream_header(&b, "x-stepgate-amr").as_deref(),
        Some("pin")
    );

    // Logout: stepgate's session ends, then the provider's (its confirmation page).
    b.goto(&s.g.url("/.stepgate/logout"));
    b.wait_for_url("the provider's logout page", |u| {
        u.starts_with(&s.provider.issuer)
    });
    b.click(&b.find("button[name=logout]"));
    // Back to the gateway's `/`, which needs a user: signed out at both ends,
    // so the provider asks for a sign-in again.
    b.wait_for_url("signed out everywhere: the provider asks again", |u| {
        u.starts_with(&format!("{}/interaction/", s.provider.issuer))
    });
    assert!(
        b.cookie("stepgate_session").is_none(),
        "the session cookie is gone"
    );
    b.find("input[name=login]");
}
