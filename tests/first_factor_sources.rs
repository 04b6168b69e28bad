//! First-factor sources besides JWTs, over real processes: an unmodified
//! legacy app's own session (`session_check`), a fronting SSO proxy's header
//! (`trusted_header`). Each with the step-up, the headers and the assertion.

mod common;

use std::process::Command;
use std::time::Duration;

use base64::Engine;
use common::*;
use serde_json::{json, Value};

const POLICY: &str = r#"
default: authenticated
rules:
  - name: login
    match: { path: "/login" }
    require: none
  - name: logout
    match: { path: "/logout", methods: [POST] }
    require: none
  - name: admin
    match: { path: "/admin/**" }
    require: step_up
    step_up: { methods: [pin], max_age: 5m }
"#;

/// The legacy app (tests/fixtures/legacy_app.py) on a free port.
fn legacy_app(dir: &std::path::Path) -> (Proc, u16) {
    let port = free_port();
    let p = spawn(
        Command::new("python3")
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/fixtures/legacy_app.py"
            ))
            .args(["--port", &port.to_string()]),
        dir.join(format!("legacy-{port}.log")),
    );
    wait_for_port(port, Duration::from_secs(10));
    (p, port)
}

fn session_check_gateway(app: u16, cache: &str) -> Gateway {
    Gateway::start_in_front_of(
        &format!("http://127.0.0.1:{app}"),
        GatewayOptions {
            policy: POLICY.into(),
            first_factor_extra: format!(
                "  session_check:\n    url: \"http://127.0.0.1:{app}/api/whoami\"\n    cookies: [\"LEGACYSESS\"]\n    user: \"/user/id\"\n    email: \"/user/email\"\n    auth_time: \"/user/login_at\"\n    cache: {cache}\n"
            ),
            ..Default::default()
        },
    )
}

fn header_in(echo: &Value, name: &str) -> Option<String> {
    echo["headers"]
        .as_array()?
        .iter()
        .find(|h| h[0].as_str().is_some_and(|n| n.eq_ignore_ascii_case(name)))
        .map(|h| h[1].as_str().unwrap().to_string())
}

/// The claims of an assertion (its signature is checked by tests/assertion.rs).
fn assertion_claims(token: &str) -> Value {
    let payload = token.split('.').nth(1).expect("a JWT");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .unwrap();
    serde_json::from_slice(&bytes).unwrap()
}

fn sign_in_on_the_app(g: &Gateway, c: &reqwest::blocking::Client, user: &str) -> String {
    let r = c
        .post(g.url("/login"))
        .form(&[("user", user), ("password", "pw")])
        .send()
        .unwrap();
    assert_eq!(
        r.status(),
        302,
        "the app's own login page, through stepgate"
    );
    let cookie = set_cookie(&r, "LEGACYSESS").expect("the app's session cookie");
    format!("LEGACYSESS={cookie}")
}

fn whoami_count(app: u16) -> u64 {
    let v: Value = client()
        .get(format!("http://127.0.0.1:{app}/test/whoami_count"))
        .send()
        .unwrap()
        .json()
        .unwrap();
    v["count"].as_u64().unwrap()
}

#[test]
fn an_unmodified_apps_own_session_is_the_first_factor_and_gets_a_pin_step_up() {
    let dir = tempfile::tempdir().unwrap();
    let (_app, app) = legacy_app(dir.path());
    let g = session_check_gateway(app, "2s");
    let c = client();

    // Signed out: API clients get 401, nothing reaches the app.
    let r = c
        .get(g.url("/home"))
        .header("Accept", "application/json")
        .send()
        .unwrap();
    assert_eq!(r.status(), 401);

    let cookie = sign_in_on_the_app(&g, &c, "alice");
    let before = whoami_count(app);
    for _ in 0..5 {
        let r = c
            .get(g.url("/home"))
            .header("Cookie", &cookie)
            .send()
            .unwrap();
        assert_eq!(r.status(), 200, "the app's session admits the user");
        let echo: Value = r.json().unwrap();
        assert_eq!(
            echo["user"], "alice",
            "the app still sees its own session cookie"
        );
        assert_eq!(
            header_in(&echo, "X-Stepgate-User").as_deref(),
            Some("alice")
        );
        assert_eq!(
            header_in(&echo, "X-Stepgate-Email").as_deref(),
            Some("alice@legacy.test")
        );
        let claims = assertion_claims(&header_in(&echo, "X-Stepgate-Assertion").unwrap());
        assert_eq!(claims["ff"], "session_check", "{claims}");
        assert_eq!(claims["sub"], "alice");
    }
    assert_eq!(
        whoami_count(app) - before,
        1,
        "one check for five requests within the cache period"
    );

    // The PIN: enrolled on stepgate's page with the app's session (its login is fresh).
    let page = c
        .get(g.url("/.stepgate/pin/setup?return_to=/admin/x"))
        .header("Cookie", &cookie)
        .header("Accept", "text/html")
        .send()
        .unwrap();
    assert_eq!(page.status(), 200, "the enrollment form is offered");
    let csrf = csrf_of(&page.text().unwrap());
    let r = c
        .post(g.url("/.stepgate/pin/setup"))
        .header("Cookie", &cookie)
        .header("Accept", "text/html")
        .form(&[
            ("pin", "4812"),
            ("pin_confirm", "4812"),
            ("csrf", &csrf),
            ("return_to", "/admin/x"),
        ])
        .send()
        .unwrap();
    assert_eq!(r.status(), 303, "enrollment succeeds");

    // A protected route asks for the step-up; the API step-up with the same cookie opens it.
    let r = c
        .get(g.url("/admin/x"))
        .header("Cookie", &cookie)
        .header("Accept", "application/json")
        .send()
        .unwrap();
    assert_eq!(r.status(), 401);
    assert!(header(&r, "www-authenticate").contains("insufficient_user_authentication"));
    // The JSON API never takes a cookie as the user (a cross-site page could
    // send it): the step-up of a cookie session is the browser's page.
    let r = c
        .put(g.url("/.stepgate/api/stepup/pin"))
        .header("Cookie", &cookie)
        .json(&json!({"PIN": "4812"}))
        .send()
        .unwrap();
    assert_eq!(r.status(), 401, "no API step-up on a cookie alone");
    let page = c
        .get(g.url("/.stepgate/pin?return_to=/admin/x"))
        .header("Cookie", &cookie)
        .header("Accept", "text/html")
        .send()
        .unwrap();
    assert_eq!(page.status(), 200, "the PIN page is offered");
    let csrf = csrf_of(&page.text().unwrap());
    let r = c
        .post(g.url("/.stepgate/pin"))
        .header("Cookie", &cookie)
        .header("Accept", "text/html")
        .form(&[("pin", "4812"), ("csrf", &csrf), ("return_to", "/admin/x")])
        .send()
        .unwrap();
    assert_eq!(r.status(), 303, "PIN step-up on the app's session");
    let su = set_cookie(&r, "stepgate_su").expect("the step-up cookie");
    let both = format!("{cookie}; stepgate_su={su}");
    let r = c
        .get(g.url("/admin/x"))
        .header("Cookie", &both)
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    let echo: Value = r.json().unwrap();
    assert_eq!(header_in(&echo, "X-Stepgate-Amr").as_deref(), Some("pin"));
    assert!(
        !header_in(&echo, "Cookie")
            .unwrap_or_default()
            .contains("stepgate_su"),
        "stepgate's cookie stays with stepgate; the app's own session cookie goes on"
    );

    // A new login on the app is a new session: the old step-up does not carry over.
    let other = sign_in_on_the_app(&g, &c, "alice");
    let r = c
        .get(g.url("/admin/x"))
        .header("Cookie", format!("{other}; stepgate_su={su}"))
        .header("Accept", "application/json")
        .send()
        .unwrap();
    assert_eq!(
        r.status(),
        401,
        "the step-up is bound to the app session it was made on"
    );

    // Signing out on the app ends stepgate's view of the session within the cache period.
    let r = c
        .post(g.url("/logout"))
        .header("Cookie", &cookie)
        .send()
        .unwrap();
    assert_eq!(r.status(), 302);
    std::thread::sleep(Duration::from_millis(2500));
    let r = c
        .get(g.url("/home"))
        .header("Cookie", &cookie)
        .header("Accept", "application/json")
        .send()
        .unwrap();
    assert_eq!(
        r.status(),
        401,
        "signed out on the app: not admitted any more"
    );
}

#[test]
fn only_the_named_cookies_go_to_the_app_s_check_and_a_dead_app_fails_closed() {
    let dir = tempfile::tempdir().unwrap();
    let (app_proc, app) = legacy_app(dir.path());
    let g = session_check_gateway(app, "1s");
    let c = client();
    let cookie = sign_in_on_the_app(&g, &c, "carol");
    // A forged session cookie is refused by the app, so by stepgate.
    let r = c
        .get(g.url("/home"))
        .header("Cookie", "LEGACYSESS=forged")
        .header("Accept", "application/json")
        .send()
        .unwrap();
    assert_eq!(r.status(), 401);
    // Other cookies are not a session: a JWT-cookie-free request with only them is signed out.
    let r = c
        .get(g.url("/home"))
        .header("Cookie", "OTHER=1")
        .header("Accept", "application/json")
        .send()
        .unwrap();
    assert_eq!(r.status(), 401);
    drop(app_proc);
    std::thread::sleep(Duration::from_millis(1500));
    let r = c
        .get(g.url("/home"))
        .header("Cookie", &cookie)
        .header("Accept", "application/json")
        .send()
        .unwrap();
    assert_eq!(
        r.status(),
        503,
        "the app cannot say who is signed in: closed, not open"
    );
    let body: Value = r.json().unwrap();
    assert_eq!(body["error"], "temporarily_unavailable");
    assert!(
        body["error_description"]
            .as_str()
            .unwrap()
            .contains("session_check"),
        "{body}"
    );
    let page = c
        .get(g.url("/home"))
        .header("Cookie", &cookie)
        .header("Accept", "text/html")
        .send()
        .unwrap();
    assert_eq!(page.status(), 503);
    assert!(page.text().unwrap().contains("Temporarily unavailable"));
}

/// The app's session cookie is a credential: sent twice with two values
/// (a browser holding it for two Paths, or someone adding another user's),
/// the app might act on the one stepgate did not check (Django keeps the
/// last, PHP the first). The first is the one checked, and the only one
/// the app receives, in every spelling.
#[test]
fn an_apps_session_cookie_sent_twice_reaches_the_app_only_as_the_copy_checked() {
    let dir = tempfile::tempdir().unwrap();
    let (_app, app) = legacy_app(dir.path());
    let g = session_check_gateway(app, "1s");
    let c = client();
    let carol = sign_in_on_the_app(&g, &c, "carol");
    let dave = sign_in_on_the_app(&g, &c, "dave");
    let dave_value = dave.strip_prefix("LEGACYSESS=").unwrap();
    let cases: Vec<(&str, Vec<Vec<u8>>, &str)> = vec![
        (
            "one header",
            vec![format!("{carol}; a=1; {dave}").into_bytes()],
            "carol",
        ),
        (
            "two headers",
            vec![dave.clone().into_bytes(), carol.clone().into_bytes()],
            "dave",
        ),
        (
            "a space before `=`",
            vec![format!("{carol}; LEGACYSESS ={dave_value}").into_bytes()],
            "carol",
        ),
        (
            "a header with a byte that is not UTF-8",
            vec![
                [b"x=\xe9; ".as_slice(), dave.as_bytes()].concat(),
                carol.clone().into_bytes(),
            ],
            "dave",
        ),
    ];
    for (what, values, user) in cases {
        let mut rb = c.get(g.url("/home")).header("Accept", "application/json");
        for v in &values {
            rb = rb.header(
                "Cookie",
                reqwest::header::HeaderValue::from_bytes(v).unwrap(),
            );
        }
        let r = rb.send().unwrap();
        let status = r.status();
        let echo: Value = r.json().unwrap_or_default();
        assert_eq!(status, 200, "{what}: {echo}");
        assert_eq!(
            header_in(&echo, "x-stepgate-user").as_deref(),
            Some(user),
            "{what}"
        );
        assert_eq!(
            echo["user"], user,
            "{what}: the app acts for the user stepgate judged"
        );
        let cookies: Vec<&str> = echo["headers"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|h| {
                h[0].as_str()
                    .is_some_and(|n| n.eq_ignore_ascii_case("cookie"))
            })
            .map(|h| h[1].as_str().unwrap())
            .collect();
        let sessions = cookies
            .iter()
            .map(|c| c.matches("LEGACYSESS").count())
            .sum::<usize>();
        assert_eq!(
            sessions, 1,
            "{what}: one session cookie reaches the app: {cookies:?}"
        );
    }
    // The other cookies are kept.
    let r = c
        .get(g.url("/home"))
        .header("Cookie", format!("{carol}; a=1; {dave}"))
        .header("Accept", "application/json")
        .send()
        .unwrap();
    let echo: Value = r.json().unwrap();
    assert!(
        header_in(&echo, "cookie").unwrap().contains("a=1"),
        "{echo}"
    );
}

/// A user judged by another credential (a bearer token here; a PIN-login
/// session alike) may not bring the app's session of someone else: the app
/// acts on its own cookie. The app is asked whose it is.
#[test]
fn another_users_app_session_beside_a_judged_token_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (_app, app) = legacy_app(dir.path());
    let g = session_check_gateway(app, "1s");
    let c = client();
    let carol_session = sign_in_on_the_app(&g, &c, "carol");
    let get = |token: &str, cookie: &str| {
        c.get(g.url("/home"))
            .bearer_auth(token)
            .header("Cookie", cookie)
            .header("Accept", "application/json")
            .send()
            .unwrap()
    };
    let alice = g.token("alice", &[]);
    let r = get(&alice, &carol_session);
    assert_eq!(r.status(), 401);
    assert!(
        header(&r, "www-authenticate").contains("two_users")
            || r.text().unwrap().contains("two_users"),
        "the reason is named"
    );
    // Carol's own token with her own session is one user.
    let carol = g.token("carol", &[]);
    let r = get(&carol, &carol_session);
    assert_eq!(r.status(), 200);
    let echo: Value = r.json().unwrap();
    assert_eq!(
        header_in(&echo, "x-stepgate-user").as_deref(),
        Some("carol")
    );
    // A session the app does not know is nobody's: the token decides, and
    // the app itself answers (it sends the unknown session to its login).
    let r = get(&alice, "LEGACYSESS=forged");
    assert_eq!(r.status(), 302, "forwarded to the app");
    assert!(
        header(&r, "location").contains("login"),
        "the app's own answer"
    );
}

fn trusted_header_gateway(trusted: &str, metrics: &str) -> Gateway {
    Gateway::start_with(GatewayOptions {
        first_factor_extra:
            "  trusted_header:\n    user: \"Remote-User\"\n    email: \"Remote-Email\"\n".into(),
        extra_config: format!("trusted_proxies: [\"{trusted}\"]\n{metrics}"),
        ..Default::default()
    })
}

#[test]
fn a_trusted_sso_proxys_header_names_the_user_and_nobody_elses_does() {
    let (metrics, mport) = common::metrics::metrics_config();
    let g = trusted_header_gateway("127.0.0.1/32", &metrics);
    let c = client();
    let r = c
        .get(g.url("/home"))
        .header("X-Request-Id", "ff-trusted-1")
        .header("Remote-User", "bob")
        .header("Remote-Email", "bob@sso.test")
        .send()
        .unwrap();
    assert_eq!(
        r.status(),
        200,
        "from a trusted peer the header is the first factor"
    );
    let echo: Value = r.json().unwrap();
    assert_eq!(header_in(&echo, "X-Stepgate-User").as_deref(), Some("bob"));
    assert_eq!(
        header_in(&echo, "X-Stepgate-Email").as_deref(),
        Some("bob@sso.test")
    );
    let claims = assertion_claims(&header_in(&echo, "X-Stepgate-Assertion").unwrap());
    assert_eq!(claims["ff"], "trusted_header");
    assert_eq!(
        common::metrics::metric(
            mport,
            "stepgate_forwarded_by_source_total{source=\"trusted_header\"}"
        ),
        1.0
    );
    // The access log names the source too.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let line = loop {
        let found = g
            .log()
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .find(|l| l["request_id"] == "ff-trusted-1");
        match found {
            Some(l) => break l,
            None if std::time::Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(50))
            }
            None => panic!("no access line:\n{}", g.log()),
        }
    };
    assert_eq!(
        (line["user"].as_str(), line["ff"].as_str()),
        (Some("bob"), Some("trusted_header")),
        "{line}"
    );

    // The same header from a peer that is not a trusted proxy: stripped, not believed.
    let g = trusted_header_gateway("10.0.0.0/8", "");
    let r = c
        .get(g.url("/home"))
        .header("Remote-User", "bob")
        .header("Accept", "application/json")
        .send()
        .unwrap();
    assert_eq!(r.status(), 401, "an untrusted Remote-User is nobody");
    let alice = g.token("alice", &[]);
    let r = c
        .get(g.url("/home"))
        .header("Authorization", format!("Bearer {alice}"))
        .header("Remote-User", "bob")
        .header("remote_user", "bob")
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    let echo: Value = r.json().unwrap();
    assert_eq!(
        header_in(&echo, "X-Stepgate-User").as_deref(),
        Some("alice")
    );
    assert_eq!(
        header_in(&echo, "Remote-User"),
        None,
        "the app never sees a forged Remote-User"
    );
    assert_eq!(header_in(&echo, "remote_user"), None);
    let claims = assertion_claims(&header_in(&echo, "X-Stepgate-Assertion").unwrap());
    assert_eq!(claims["ff"], "jwt");
}
